//! Embedding: a lookup table from token ids to vectors, as PyTorch's `nn.Embedding`.
//!
//! Shapes: the ids are an [`IdTensor`](crate::IdTensor) of any shape `[..]`
//! (passed as [`Input::Ids`]), `weight` is `[vocab, dim]`, the output is
//! `[.., dim]`: row `ids[p]` of the table for every position `p`.
//!
//! The backward pass scatters (adds) each output-gradient row into the
//! table gradient at its id, so an id that occurs several times gets the sum.
//! The ids are not differentiable: `backward` returns `Ok(None)`. The row of
//! `padding_idx`, if set, never receives a gradient (PyTorch's behaviour).

use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer, Weight};
use crate::{Error, IdTensor, Result, Rng, Tensor};
use cranelora_graph::{NodeId, Op};
use cranelora_kernels::Scalar;

const KIND: &str = "Embedding";

/// A `[vocab, dim]` lookup table.
#[derive(Clone, Debug)]
pub struct Embedding<T> {
    weight: Weight<T>,
    padding_idx: Option<usize>,
    training: bool,
    /// The ids of the last training-mode forward.
    cache: Option<IdTensor>,
}

impl<T: Scalar> Embedding<T> {
    /// A table initialized as PyTorch's `nn.Embedding`: every entry normal(0, 1),
    /// the `padding_idx` row (if any) zero.
    ///
    /// # Errors
    /// [`Error::Config`] if a size is zero or `padding_idx ≥ num_embeddings`.
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        padding_idx: Option<usize>,
        rng: &mut Rng,
    ) -> Result<Self> {
        if num_embeddings == 0 || embedding_dim == 0 {
            return Err(Error::config(
                KIND,
                format!("sizes must be positive, got {num_embeddings}×{embedding_dim}"),
            ));
        }
        let mut w = Tensor::random_normal(&[num_embeddings, embedding_dim], 0.0, 1.0, rng);
        if let Some(p) = padding_idx.filter(|&p| p < num_embeddings) {
            w.array_mut()
                .index_axis_mut(ndarray::Axis(0), p)
                .fill(T::zero());
        }
        Self::from_weights(w, padding_idx)
    }

    /// A table with the given `[vocab, dim]` weight (used as is, also its
    /// `padding_idx` row).
    ///
    /// # Errors
    /// [`Error::Shape`] if `weight` is not 2-D with positive sizes;
    /// [`Error::Config`] if `padding_idx ≥ vocab`.
    pub fn from_weights(weight: Tensor<T>, padding_idx: Option<usize>) -> Result<Self> {
        let s = weight.shape();
        if s.len() != 2 || s.contains(&0) {
            return Err(Error::shape(
                KIND,
                "weight",
                "[vocab, dim] with vocab, dim > 0",
                s,
            ));
        }
        if let Some(p) = padding_idx.filter(|&p| p >= s[0]) {
            return Err(Error::config(
                KIND,
                format!("padding_idx {p} is outside the vocabulary 0..{}", s[0]),
            ));
        }
        Ok(Self {
            weight: Weight::new("weight", weight),
            padding_idx,
            training: true,
            cache: None,
        })
    }

    /// Vocabulary size (rows of the table).
    pub fn num_embeddings(&self) -> usize {
        self.weight.value().shape()[0]
    }

    /// Vector size (columns of the table).
    pub fn embedding_dim(&self) -> usize {
        self.weight.value().shape()[1]
    }

    /// The id whose row gets no gradient, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }

    /// The `[vocab, dim]` table.
    pub fn weight(&self) -> &Weight<T> {
        &self.weight
    }

    /// The `[vocab, dim]` table, mutably.
    pub fn weight_mut(&mut self) -> &mut Weight<T> {
        &mut self.weight
    }

    /// The ids as row indices, or [`Error::IdOutOfRange`] at the first bad one.
    fn rows(&self, ids: &IdTensor) -> Result<Vec<usize>> {
        let vocab = self.num_embeddings();
        ids.array()
            .iter()
            .enumerate()
            .map(|(position, &id)| match usize::try_from(id) {
                Ok(row) if row < vocab => Ok(row),
                _ => Err(Error::IdOutOfRange {
                    path: String::new(),
                    kind: KIND.into(),
                    id,
                    position,
                    vocab,
                }),
            })
            .collect()
    }

    /// `[.., dim]`: the output shape for ids of shape `[..]`.
    fn output_shape(&self, ids: &IdTensor) -> Vec<usize> {
        let mut shape = ids.shape().to_vec();
        shape.push(self.embedding_dim());
        shape
    }
}

impl<T: Scalar> Layer<T> for Embedding<T> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let ids = Inputs::new(inputs, KIND).ids()?;
        let rows = self.rows(ids)?;
        let table = self.weight.value().array();
        let mut out = Vec::with_capacity(rows.len() * self.embedding_dim());
        for &r in &rows {
            out.extend(table.index_axis(ndarray::Axis(0), r).iter().copied());
        }
        self.cache = self.training.then(|| ids.clone());
        Tensor::from_vec(out, &self.output_shape(ids))
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let ids = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: KIND.into(),
        })?;
        let expected = self.output_shape(ids);
        if grad_output.shape() != expected.as_slice() {
            return Err(Error::shape(
                KIND,
                "output gradient",
                format!("{expected:?}"),
                grad_output.shape(),
            ));
        }
        if !self.weight.trainable() {
            return Ok(None);
        }
        let dim = self.embedding_dim();
        let g = grad_output.reshape(&[ids.len(), dim])?;
        let mut dw = Tensor::<T>::zeros(self.weight.value().shape());
        for (&id, grow) in ids.array().iter().zip(g.array().outer_iter()) {
            // The ids were checked in forward; the padding row stays zero.
            let row = usize::try_from(id).expect("internal: ids were checked in forward");
            if Some(row) != self.padding_idx {
                let mut drow = dw.array_mut().index_axis_mut(ndarray::Axis(0), row);
                drow += &grow;
            }
        }
        self.weight.accumulate_grad(&dw)?;
        Ok(None)
    }

    fn weights(&self) -> Vec<&Weight<T>> {
        vec![&self.weight]
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        vec![&mut self.weight]
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.cache = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn as_lora_target(&self) -> Option<&dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn as_lora_target_mut(&mut self) -> Option<&mut dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn supports_jit(&self) -> bool {
        export::lowerable(&[Op::Gather])
    }

    /// `gather(table, ids)` (node `<path>.gather`); ids outside the table
    /// are a run-time error of the graph, as of `forward`.
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let ids = NodeInputs::new(inputs, KIND).ids()?;
        let table = ctx.weight(&self.weight, false)?;
        Ok(ctx.named("gather").gather(table, ids)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_tensor_close, check_gradients, GradCheck};

    fn table() -> Tensor<f64> {
        // Row r is [r, 10r + 1, -r].
        let data = (0..5)
            .flat_map(|r| [r as f64, 10.0 * r as f64 + 1.0, -(r as f64)])
            .collect();
        Tensor::from_vec(data, &[5, 3]).unwrap()
    }

    #[test]
    fn forward_picks_rows_for_ids_of_any_shape() {
        let mut e = Embedding::from_weights(table(), None).unwrap();
        let ids = IdTensor::from_vec(vec![4, 0, 2, 2], &[2, 2]).unwrap();
        let y = e.forward(&[Input::Ids(&ids)]).unwrap();
        let expected = Tensor::from_vec(
            vec![
                4.0, 41.0, -4.0, 0.0, 1.0, 0.0, 2.0, 21.0, -2.0, 2.0, 21.0, -2.0,
            ],
            &[2, 2, 3],
        )
        .unwrap();
        assert_tensor_close(&y, &expected, 0.0, 0.0);
        let mut e32 = Embedding::<f32>::from_weights(table().cast(), None).unwrap();
        let y32 = e32.forward(&[Input::Ids(&ids)]).unwrap();
        assert_tensor_close(&y32, &expected.cast(), 0.0, 0.0);
    }

    #[test]
    fn table_gradient_matches_finite_differences() {
        let mut e = Embedding::<f64>::new(6, 4, None, &mut Rng::new(1)).unwrap();
        let ids = IdTensor::from_vec(vec![1, 5, 1, 0, 3, 5], &[2, 3]).unwrap();
        check_gradients(&mut e, &[Input::Ids(&ids)], GradCheck::default()).unwrap();
    }

    #[test]
    fn repeated_ids_accumulate_and_padding_row_gets_no_gradient() {
        let mut e = Embedding::<f64>::new(4, 2, Some(0), &mut Rng::new(2)).unwrap();
        assert_eq!(e.weight().value().to_vec()[..2], [0.0, 0.0]);
        let ids = IdTensor::from_vec(vec![2, 0, 2, 3, 0], &[5]).unwrap();
        let y = e.forward(&[Input::Ids(&ids)]).unwrap();
        assert!(e.backward(&Tensor::ones(y.shape())).unwrap().is_none());
        // Row 0 (padding) nothing, row 1 unused, row 2 twice, row 3 once.
        let expected = vec![0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 1.0];
        assert_eq!(e.weight().grad().to_vec(), expected);
        // A second backward adds to the gradient.
        e.backward(&Tensor::ones(y.shape())).unwrap();
        assert_eq!(e.weight().grad().to_vec()[4], 4.0);
    }

    #[test]
    fn out_of_range_ids_name_the_position() {
        let mut e = Embedding::<f32>::new(3, 2, None, &mut Rng::new(3)).unwrap();
        for (bad, pos) in [(3, 2), (-1, 1)] {
            let mut v = vec![0, 1, 2, 0];
            v[pos] = bad;
            let ids = IdTensor::from_vec(v, &[2, 2]).unwrap();
            let err = e.forward(&[Input::Ids(&ids)]).unwrap_err();
            assert_eq!(
                err,
                Error::IdOutOfRange {
                    path: String::new(),
                    kind: "Embedding".into(),
                    id: bad,
                    position: pos,
                    vocab: 3,
                }
            );
        }
        let x = Tensor::zeros(&[2]);
        assert!(matches!(
            e.forward(&[Input::Float(&x)]),
            Err(Error::MissingInput { .. })
        ));
    }

    #[test]
    fn bad_configuration_and_gradient_shapes_are_errors() {
        let mut rng = Rng::new(4);
        assert!(Embedding::<f32>::new(0, 2, None, &mut rng).is_err());
        assert!(matches!(
            Embedding::<f32>::new(3, 2, Some(3), &mut rng),
            Err(Error::Config { .. })
        ));
        assert!(Embedding::<f32>::from_weights(Tensor::zeros(&[3]), None).is_err());
        let mut e = Embedding::<f64>::new(3, 2, None, &mut rng).unwrap();
        let ids = IdTensor::from_vec(vec![0, 1], &[2]).unwrap();
        e.forward(&[Input::Ids(&ids)]).unwrap();
        let msg = e.backward(&Tensor::ones(&[2, 3])).unwrap_err().to_string();
        assert!(msg.contains("Embedding") && msg.contains("[2, 2]"), "{msg}");
        e.set_training(false);
        e.forward(&[Input::Ids(&ids)]).unwrap();
        assert!(matches!(
            e.backward(&Tensor::ones(&[2, 2])),
            Err(Error::NoForwardCache { .. })
        ));
    }
}
