//! Sequential: named children applied in order.
//!
//! The first child receives every input of the call; each later child
//! receives the previous output as its float input plus every mask of the
//! call, so an attention mask reaches each block of an encoder.

use crate::export::{ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer};
use crate::{Error, Result, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;

/// Named layers applied one after another.
#[derive(Debug)]
pub struct Sequential<T> {
    layers: Vec<(String, Box<dyn Layer<T>>)>,
    training: bool,
}

// Manual: a derive would not see that `Box<dyn Layer<T>>` is Clone for `T: Scalar`.
impl<T: Scalar> Clone for Sequential<T> {
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            training: self.training,
        }
    }
}

impl<T: Scalar> Default for Sequential<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Scalar> Sequential<T> {
    /// An empty container in training mode.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            training: true,
        }
    }

    /// Appends a child named `name`.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is empty, contains a dot, or is taken.
    pub fn push(&mut self, name: &str, layer: impl Layer<T> + 'static) -> Result<()> {
        self.push_boxed(name, Box::new(layer))
    }

    /// Appends a boxed child named `name`.
    ///
    /// # Errors
    /// As [`Sequential::push`].
    pub fn push_boxed(&mut self, name: &str, mut layer: Box<dyn Layer<T>>) -> Result<()> {
        if name.is_empty() || name.contains('.') {
            return Err(Error::config(
                "Sequential",
                format!("child name `{name}` must be non-empty and contain no dot"),
            ));
        }
        if self.layers.iter().any(|(n, _)| n == name) {
            return Err(Error::config(
                "Sequential",
                format!("a child is already named `{name}`"),
            ));
        }
        layer.set_training(self.training);
        self.layers.push((name.to_string(), layer));
        Ok(())
    }

    /// [`Sequential::push`] in builder style.
    ///
    /// # Errors
    /// As [`Sequential::push`].
    pub fn with(mut self, name: &str, layer: impl Layer<T> + 'static) -> Result<Self> {
        self.push(name, layer)?;
        Ok(self)
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<T: Scalar> Layer<T> for Sequential<T> {
    fn kind(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let masks: Vec<Input<'_, T>> = Inputs::new(inputs, "Sequential").masks().collect();
        let mut h: Option<Tensor<T>> = None;
        for (name, layer) in &mut self.layers {
            let out = match &h {
                None => layer.forward(inputs),
                Some(x) => {
                    let mut next = vec![Input::Float(x)];
                    next.extend(masks.iter().copied());
                    layer.forward(&next)
                }
            };
            h = Some(out.map_err(|e| e.at(name))?);
        }
        match h {
            Some(y) => Ok(y),
            None => Inputs::new(inputs, "Sequential").float(0).cloned(),
        }
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let mut g = grad_output.clone();
        for (i, (name, layer)) in self.layers.iter_mut().enumerate().rev() {
            match layer.backward(&g).map_err(|e| e.at(name))? {
                Some(dx) => g = dx,
                None if i == 0 => return Ok(None),
                None => {
                    return Err(Error::config(
                        "Sequential",
                        format!("child `{name}` has no float input to differentiate but is not the first child"),
                    ))
                }
            }
        }
        Ok(Some(g))
    }

    fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
        self.layers
            .iter()
            .map(|(n, l)| (n.as_str(), l.as_ref()))
            .collect()
    }

    fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        self.layers
            .iter_mut()
            .map(|(n, l)| (n.as_str(), l))
            .collect()
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
    }

    fn reset_own_state(&mut self) {}

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        self.layers.iter().all(|(_, l)| l.supports_jit())
    }

    /// The children's graphs chained as `forward` chains them.
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let masks = NodeInputs::new(inputs, "Sequential").masks();
        let mut h: Option<NodeId> = None;
        for (name, layer) in &self.layers {
            let next = match h {
                None => inputs.to_vec(),
                Some(x) => std::iter::once(NodeInput::Float(x))
                    .chain(masks.iter().copied())
                    .collect(),
            };
            h = Some(ctx.child(name, |ctx| layer.export_graph(ctx, &next))?);
        }
        match h {
            Some(y) => Ok(y),
            None => NodeInputs::new(inputs, "Sequential").float(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::visit;
    use crate::layers::{Dense, Dropout, Residual};
    use crate::testing::{check_gradients, GradCheck};
    use crate::{Activation, ActivationLayer, Rng};

    fn mlp(rng: &mut Rng) -> Sequential<f64> {
        Sequential::new()
            .with(
                "fc1",
                Dense::new(3, 5, true, Activation::Tanh, rng).unwrap(),
            )
            .unwrap()
            .with(
                "block",
                Residual::new(Dense::new(5, 5, true, Activation::Silu, rng).unwrap()),
            )
            .unwrap()
            .with("act", ActivationLayer::new(Activation::GeluTanh))
            .unwrap()
            .with(
                "fc2",
                Dense::new(5, 2, false, Activation::Identity, rng).unwrap(),
            )
            .unwrap()
    }

    #[test]
    fn gradients_through_sequential_and_residual_match_finite_differences() {
        let mut m = mlp(&mut Rng::new(1));
        let x = Tensor::random_normal(&[4, 3], 0.0, 1.0, &mut Rng::new(2));
        check_gradients(&mut m, &[Input::Float(&x)], GradCheck::default()).unwrap();
    }

    #[test]
    fn paths_parameter_order_and_round_trip() {
        let mut m = mlp(&mut Rng::new(1));
        assert_eq!(
            m.layer_paths(),
            ["fc1", "block", "block.inner", "act", "fc2"]
        );
        let names: Vec<String> = m.named_weights().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "fc1.weight",
                "fc1.bias",
                "block.inner.weight",
                "block.inner.bias",
                "fc2.weight"
            ]
        );
        assert_eq!(m.parameter_count(), 15 + 5 + 25 + 5 + 10);
        // The flat vector is the named weights concatenated in that order.
        let flat: Vec<f64> = m
            .named_weights()
            .iter()
            .flat_map(|(_, t)| t.to_vec())
            .collect();
        assert_eq!(m.parameters(), flat);
        let doubled: Vec<f64> = flat.iter().map(|v| 2.0 * v).collect();
        m.set_parameters(&doubled).unwrap();
        assert_eq!(m.parameters(), doubled);
        assert!(matches!(
            m.set_parameters(&doubled[1..]),
            Err(Error::Length { .. })
        ));
        assert_eq!(m.parameters(), doubled, "a failed set changes nothing");
    }

    #[test]
    fn freezing_by_path_shrinks_the_parameter_vector() {
        let mut m = mlp(&mut Rng::new(1));
        m.child_mut("block.inner").unwrap().set_trainable(false);
        assert_eq!(m.parameter_count(), 15 + 5 + 10);
        assert_eq!(m.total_parameter_count(), 60);
        let before = m.child("block.inner").unwrap().named_weights();
        let x = Tensor::random_normal(&[4, 3], 0.0, 1.0, &mut Rng::new(2));
        let y = m.forward_float(&x).unwrap();
        m.backward(&Tensor::ones(y.shape())).unwrap();
        m.update_parameters(0.1);
        assert_eq!(m.child("block.inner").unwrap().named_weights(), before);
    }

    #[test]
    fn replace_child_by_path_and_visit() {
        let mut m = mlp(&mut Rng::new(1));
        let new = Dense::new(5, 5, false, Activation::Relu, &mut Rng::new(9)).unwrap();
        let old = m.replace_child("block.inner", Box::new(new)).unwrap();
        assert_eq!(old.kind(), "Dense");
        assert_eq!(m.child("block.inner").unwrap().total_parameter_count(), 25);
        let err = m
            .replace_child("block.nope", Box::new(Dropout::new(0.1, 0).unwrap()))
            .unwrap_err();
        assert!(
            matches!(&err, Error::NoSuchLayer { available, .. } if available.contains(&"block.inner".to_string())),
            "{err}"
        );
        let mut seen = Vec::new();
        visit(&m, &mut |p, l| seen.push(format!("{p}:{}", l.kind())));
        assert_eq!(seen[0], ":Sequential");
        assert_eq!(seen[3], "block.inner:Dense");
    }

    #[test]
    fn errors_name_the_full_path() {
        let mut outer = Sequential::<f64>::new()
            .with("encoder", mlp(&mut Rng::new(1)))
            .unwrap();
        let err = outer.forward_float(&Tensor::zeros(&[2, 4])).unwrap_err();
        assert_eq!(err.path(), Some("encoder.fc1"), "{err}");
        assert!(err.to_string().contains("[2, 4]"), "{err}");
        assert!(Sequential::<f32>::new()
            .with("a.b", ActivationLayer::new(Activation::Relu))
            .is_err());
        let dup = Sequential::<f32>::new()
            .with("a", ActivationLayer::new(Activation::Relu))
            .unwrap();
        assert!(dup
            .with("a", ActivationLayer::new(Activation::Relu))
            .is_err());
    }

    #[test]
    fn load_weights_by_name_checks_names_and_shapes() {
        use std::collections::HashMap;
        let mut m = mlp(&mut Rng::new(1));
        let src = mlp(&mut Rng::new(2));
        let map: HashMap<String, Tensor<f64>> = src.named_weights().into_iter().collect();
        m.load_weights(&map, true).unwrap();
        assert_eq!(m.parameters(), src.parameters());
        let mut missing = map.clone();
        missing.remove("fc2.weight");
        let err = m.load_weights(&missing, true).unwrap_err();
        assert!(err.to_string().contains("fc2.weight"), "{err}");
        let mut bad = map.clone();
        bad.insert("fc1.bias".into(), Tensor::zeros(&[4]));
        let err = m.load_weights(&bad, false).unwrap_err();
        assert!(
            err.to_string().contains("fc1.bias") && err.to_string().contains("[4]"),
            "{err}"
        );
        let mut extra = map;
        extra.insert("fc3.weight".into(), Tensor::zeros(&[1]));
        assert!(m.load_weights(&extra, true).is_err());
        assert!(m.load_weights(&extra, false).is_ok());
    }

    #[test]
    fn clone_box_is_deep_and_eval_mode_reaches_children() {
        let mut m = mlp(&mut Rng::new(1));
        let copy = m.clone_box();
        m.set_parameters(&vec![0.0; m.parameter_count()]).unwrap();
        assert_ne!(copy.parameters(), m.parameters());
        m.set_training(false);
        assert!(!m.child("block.inner").unwrap().is_training());
        let y = m.forward_float(&Tensor::ones(&[1, 3])).unwrap();
        assert!(m.backward(&y).is_err());
    }
}
