//! Exporting a model as a computation [`Graph`]: the bridge from eager
//! layers to the interpreter and the JIT.
//!
//! Every layer implements [`Layer::export_graph`], which appends the nodes
//! of its eval-mode forward to a graph through an [`ExportContext`]. The
//! context carries the layer's path (so node names say where a node came
//! from) and the [`ExportOptions`], which decide per weight whether it is a
//! Constant (baked in) or a Parameter (bound at run time):
//!
//! | mode | Parameters |
//! |---|---|
//! | [`ExportMode::Inference`] | none: every weight is a Constant, so LoRA folding can fire |
//! | [`ExportMode::Training`] | the trainable weights |
//! | [`ExportMode::Serving`] | the adapter weights (`lora_a`, `lora_b`, `lora_bias`, `lora_magnitude`) |
//!
//! plus per-weight overrides by full path. A Parameter is named by the
//! weight's full path as [`Layer::named_weights`] reports it
//! (`fc1.base_layer.weight`), so [`bindings_for`] builds the bindings from
//! the model itself. Other nodes are named `<layer path>.<suffix>`
//! (`fc1.matmul`, `fc1.lora_xa`); the nodes of a LoRA branch are all named
//! `<adapter path>.lora_…`, which is what `to_dot` clusters on.
//!
//! Inputs ([`InputSpec`]) are float activations (the model's dtype), i64
//! ids, and attention masks, which are **i64 `[batch, keys]` tensors with
//! Hugging Face's `attention_mask` convention**: non-zero = attend, 0 =
//! masked ([`mask_to_data`] converts a [`Mask`]).
//!
//! The graph is the eval-mode forward: Dropout is the identity (training
//! dropout is not exported).
//!
//! ```
//! use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
//! use cranelora_core::export::{tensor_from_data, ExportMode, ExportOptions};
//! use cranelora_core::layers::Dense;
//! use cranelora_core::{Activation, Input, Layer, Rng, Tensor};
//! use cranelora_graph::interpret;
//!
//! let mut fc = Dense::<f64>::new(3, 2, true, Activation::Tanh, &mut Rng::new(1))?;
//! let x = Tensor::random_normal(&[4, 3], 0.0, 1.0, &mut Rng::new(2));
//! let inputs = [Input::Float(&x)];
//! let graph = export_model(&fc, &input_specs(&inputs), &ExportOptions::new(ExportMode::Training))?;
//! let out = interpret(&graph, &input_values(&inputs), &bindings_for(&fc, &graph)?)?;
//! fc.set_training(false);
//! let expected = fc.forward(&inputs)?;
//! let got = tensor_from_data::<f64>(&out[0])?;
//! cranelora_core::testing::assert_tensor_close(&got, &expected, 1e-12, 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::layer::{join, Input, Layer, Weight};
use crate::{Error, IdTensor, Mask, Result, Tensor};
use cranelora_graph::{jit_lowerable, Bindings, DType, Graph, NodeId, Op, TensorData};
use cranelora_kernels::Scalar;
use std::collections::HashMap;

/// Which weights an export turns into Parameters (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// Every weight is a Constant.
    #[default]
    Inference,
    /// Trainable weights are Parameters, frozen ones Constants.
    Training,
    /// Adapter weights are Parameters, the base Constant: adapters swap without recompiling.
    Serving,
}

/// How one weight enters the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightBinding {
    /// Baked in as a Constant node.
    Constant,
    /// A Parameter node bound at run time under the weight's full path.
    Parameter,
}

/// The mode and per-weight overrides of an export.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportOptions {
    /// The default binding of each weight.
    pub mode: ExportMode,
    /// Bindings by full weight path (`fc1.lora_a`), taking precedence over the mode.
    pub overrides: HashMap<String, WeightBinding>,
}

impl ExportOptions {
    /// Options with `mode` and no overrides.
    pub fn new(mode: ExportMode) -> Self {
        Self {
            mode,
            overrides: HashMap::new(),
        }
    }

    /// Adds an override for the weight at full path `path`.
    pub fn with_override(mut self, path: &str, binding: WeightBinding) -> Self {
        self.overrides.insert(path.to_string(), binding);
        self
    }

    /// The binding of the weight at `path`, given whether it trains and
    /// whether it belongs to a LoRA adapter.
    pub fn binding(&self, path: &str, trainable: bool, is_adapter: bool) -> WeightBinding {
        if let Some(&b) = self.overrides.get(path) {
            return b;
        }
        let parameter = match self.mode {
            ExportMode::Inference => false,
            ExportMode::Training => trainable,
            ExportMode::Serving => is_adapter,
        };
        if parameter {
            WeightBinding::Parameter
        } else {
            WeightBinding::Constant
        }
    }
}

/// What kind of value a graph input carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Float activations of the model's dtype.
    Float,
    /// i64 ids (embedding lookups).
    Ids,
    /// An i64 attention mask, `[batch, keys]`, non-zero = attend.
    Mask,
}

/// One graph input: its name, shape and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// The Input node's name.
    pub name: String,
    /// The fixed shape.
    pub shape: Vec<usize>,
    /// What it carries.
    pub kind: InputKind,
}

impl InputSpec {
    /// A float input.
    pub fn float(name: &str, shape: &[usize]) -> Self {
        Self::new(name, shape, InputKind::Float)
    }

    /// An id input.
    pub fn ids(name: &str, shape: &[usize]) -> Self {
        Self::new(name, shape, InputKind::Ids)
    }

    /// An attention-mask input, `[batch, keys]`.
    pub fn mask(name: &str, shape: &[usize]) -> Self {
        Self::new(name, shape, InputKind::Mask)
    }

    fn new(name: &str, shape: &[usize], kind: InputKind) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind,
        }
    }

    /// The input's dtype in a graph of a `T` model.
    pub fn dtype<T: Scalar>(&self) -> DType {
        match self.kind {
            InputKind::Float => T::DTYPE,
            InputKind::Ids | InputKind::Mask => DType::I64,
        }
    }
}

/// A graph-side input of a layer: the mirror of [`Input`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeInput {
    /// Float activations.
    Float(NodeId),
    /// i64 ids.
    Ids(NodeId),
    /// An i64 attention mask, `[batch, keys]`, non-zero = attend.
    Mask(NodeId),
}

/// Accessors over a layer's [`NodeInput`]s, as [`crate::layer::Inputs`] for `forward`.
#[derive(Clone, Copy, Debug)]
pub struct NodeInputs<'s> {
    inputs: &'s [NodeInput],
    kind: &'static str,
}

impl<'s> NodeInputs<'s> {
    /// Wraps the inputs of a layer of kind `kind`.
    pub fn new(inputs: &'s [NodeInput], kind: &'static str) -> Self {
        Self { inputs, kind }
    }

    fn missing(&self, what: &str) -> Error {
        Error::MissingInput {
            path: String::new(),
            kind: self.kind.to_string(),
            what: what.to_string(),
        }
    }

    /// The `n`-th float input.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if there are fewer than `n + 1`.
    pub fn float(&self, n: usize) -> Result<NodeId> {
        let mut floats = self.inputs.iter().filter_map(|i| match i {
            NodeInput::Float(id) => Some(*id),
            _ => None,
        });
        floats
            .nth(n)
            .ok_or_else(|| self.missing(&format!("float input #{n}")))
    }

    /// The first id input.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if there is none.
    pub fn ids(&self) -> Result<NodeId> {
        let mut ids = self.inputs.iter().filter_map(|i| match i {
            NodeInput::Ids(id) => Some(*id),
            _ => None,
        });
        ids.next().ok_or_else(|| self.missing("id input"))
    }

    /// The first mask, if any.
    pub fn mask(&self) -> Option<NodeId> {
        self.inputs.iter().find_map(|i| match i {
            NodeInput::Mask(id) => Some(*id),
            _ => None,
        })
    }

    /// The masks only (what a container passes on after the first child).
    pub fn masks(&self) -> Vec<NodeInput> {
        let masks = self
            .inputs
            .iter()
            .filter(|i| matches!(i, NodeInput::Mask(_)));
        masks.copied().collect()
    }
}

/// The state of one export: the graph being built, the current layer path,
/// the options, and the weight nodes emitted so far (one per weight path, so
/// a weight read twice — e.g. by DoRA's norm — is one node).
#[derive(Debug)]
pub struct ExportContext<'g> {
    graph: &'g mut Graph,
    path: String,
    options: &'g ExportOptions,
    weights: HashMap<String, NodeId>,
}

impl<'g> ExportContext<'g> {
    /// A context at the root path (`""`) that appends to `graph`.
    pub fn new(graph: &'g mut Graph, options: &'g ExportOptions) -> Self {
        Self {
            graph,
            path: String::new(),
            options,
            weights: HashMap::new(),
        }
    }

    /// The graph being built.
    pub fn graph(&mut self) -> &mut Graph {
        self.graph
    }

    /// The current layer path (`""` at the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The options.
    pub fn options(&self) -> &ExportOptions {
        self.options
    }

    /// `<path>.<suffix>`, or `suffix` at the root.
    pub fn node_name(&self, suffix: &str) -> String {
        join(&self.path, suffix)
    }

    /// The graph with the next node named `<path>.<suffix>`: `ctx.named("matmul").matmul(x, w)?`.
    pub fn named(&mut self, suffix: &str) -> &mut Graph {
        let name = self.node_name(suffix);
        self.graph.named(name)
    }

    /// Runs `f` with the path extended by the child `name`; an error from
    /// `f` gets `name` prefixed to its path ([`Error::at`]), as in `forward`.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn child<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let saved = self.path.len();
        self.path = join(&self.path, name);
        let result = f(self);
        self.path.truncate(saved);
        result.map_err(|e| e.at(name))
    }

    /// The node of the weight `w` of the layer at the current path: a
    /// Parameter named by its full path, or a Constant of its value, as the
    /// options decide; `is_adapter` marks LoRA weights (for [`ExportMode::Serving`]).
    ///
    /// # Errors
    /// Only a graph error (none is expected).
    pub fn weight<T: Scalar>(&mut self, w: &Weight<T>, is_adapter: bool) -> Result<NodeId> {
        let path = join(&self.path, w.name());
        if let Some(&id) = self.weights.get(&path) {
            return Ok(id);
        }
        let id = match self.options.binding(&path, w.trainable(), is_adapter) {
            WeightBinding::Parameter => self.graph.parameter(&path, w.value().shape(), T::DTYPE),
            WeightBinding::Constant => {
                let data = tensor_to_data(w.value());
                self.graph.named(path.clone()).constant(data)?
            }
        };
        self.weights.insert(path, id);
        Ok(id)
    }

    /// A Constant named `<path>.<suffix>` holding `data`.
    ///
    /// # Errors
    /// Only a graph error (none is expected).
    pub fn constant(&mut self, suffix: &str, data: TensorData) -> Result<NodeId> {
        Ok(self.named(suffix).constant(data)?)
    }

    /// The dims of a node.
    ///
    /// # Errors
    /// [`Error::Graph`] if `id` is not a node of the graph.
    pub fn dims(&self, id: NodeId) -> Result<Vec<usize>> {
        match self.graph.node(id) {
            Some(node) => Ok(node.shape.dims().to_vec()),
            None => Err(cranelora_graph::Error::UnknownNode {
                node: self.graph.desc(id),
                id,
            }
            .into()),
        }
    }
}

/// Exports `layer` as a graph with one Input per spec (in order, with the
/// dtypes of [`InputSpec::dtype`]) and the layer's output as its single
/// output. The graph is verified.
///
/// # Errors
/// [`Error::Unsupported`] naming the path of a layer that cannot be
/// exported; the layer's shape errors (as its `forward` would report them);
/// [`Error::Graph`] for a graph the verifier rejects (e.g. two inputs with
/// one name).
pub fn export_model<T: Scalar>(
    layer: &dyn Layer<T>,
    input_specs: &[InputSpec],
    options: &ExportOptions,
) -> Result<Graph> {
    let mut graph = Graph::new();
    let inputs: Vec<NodeInput> = input_specs
        .iter()
        .map(|s| {
            let id = graph.input(&s.name, s.shape.as_slice(), s.dtype::<T>());
            match s.kind {
                InputKind::Float => NodeInput::Float(id),
                InputKind::Ids => NodeInput::Ids(id),
                InputKind::Mask => NodeInput::Mask(id),
            }
        })
        .collect();
    let output = layer.export_graph(&mut ExportContext::new(&mut graph, options), &inputs)?;
    graph.set_outputs(&[output])?;
    cranelora_graph::verify(&graph)?;
    Ok(graph)
}

/// The value of every Parameter of `graph`, taken from `layer.named_weights()`.
///
/// # Errors
/// [`Error::Weight`] for a Parameter that names no weight of `layer`.
pub fn bindings_for<T: Scalar>(layer: &dyn Layer<T>, graph: &Graph) -> Result<Bindings> {
    let weights: HashMap<String, Tensor<T>> = layer.named_weights().into_iter().collect();
    let mut bindings = Bindings::new();
    for id in graph.node_ids() {
        if let Some(Op::Parameter { name }) = graph.node(id).map(|n| &n.op) {
            let value = weights.get(name).ok_or_else(|| Error::Weight {
                name: name.clone(),
                problem: "a graph parameter that is not a weight of this model".into(),
            })?;
            bindings.insert(name.clone(), tensor_to_data(value));
        }
    }
    Ok(bindings)
}

/// Whether the JIT lowers every op in `ops`: what `supports_jit` asks of
/// the ops a layer's export emits.
pub fn lowerable(ops: &[Op]) -> bool {
    ops.iter().all(jit_lowerable)
}

/// The graph inputs that mirror a forward call's inputs: floats named `x`,
/// `x1`, …, ids `ids`, `ids1`, …, masks `mask`, `mask1`, … in call order.
pub fn input_specs<T: Scalar>(inputs: &[Input<'_, T>]) -> Vec<InputSpec> {
    let mut counts = [0usize; 3];
    let mut name = |k: usize, base: &str| {
        let n = counts[k];
        counts[k] += 1;
        if n == 0 {
            base.to_string()
        } else {
            format!("{base}{n}")
        }
    };
    inputs
        .iter()
        .map(|i| match i {
            Input::Float(t) => InputSpec::float(&name(0, "x"), t.shape()),
            Input::Ids(t) => InputSpec::ids(&name(1, "ids"), t.shape()),
            Input::Mask(m) => InputSpec::mask(&name(2, "mask"), m.shape()),
        })
        .collect()
}

/// The values to pass to `interpret` for a graph exported with [`input_specs`].
pub fn input_values<T: Scalar>(inputs: &[Input<'_, T>]) -> Vec<TensorData> {
    let value = |i: &Input<'_, T>| match i {
        Input::Float(t) => tensor_to_data(t),
        Input::Ids(t) => ids_to_data(t),
        Input::Mask(m) => mask_to_data(m),
    };
    inputs.iter().map(value).collect()
}

/// A tensor as graph data of dtype `T::DTYPE` (exact).
pub fn tensor_to_data<T: Scalar>(t: &Tensor<T>) -> TensorData {
    match T::DTYPE {
        DType::F32 => TensorData::F32(t.array().mapv(|v| v.to_f64_exact() as f32)),
        DType::F64 => TensorData::F64(t.array().mapv(|v| v.to_f64_exact())),
        DType::I64 => unreachable!("internal: Scalar is f32 or f64"),
    }
}

/// Graph data of dtype `T::DTYPE` as a tensor (exact).
///
/// # Errors
/// [`Error::Config`] if the data has another dtype.
pub fn tensor_from_data<T: Scalar>(d: &TensorData) -> Result<Tensor<T>> {
    let from = |x: f64| T::from_f64_lossy(x);
    match d {
        TensorData::F32(a) if T::DTYPE == DType::F32 => {
            Ok(Tensor::from_array(a.mapv(|v| from(f64::from(v)))))
        }
        TensorData::F64(a) if T::DTYPE == DType::F64 => Ok(Tensor::from_array(a.mapv(from))),
        _ => Err(Error::config(
            "export",
            format!("{} data cannot become a {} tensor", d.dtype(), T::DTYPE),
        )),
    }
}

/// Ids as i64 graph data.
pub fn ids_to_data(ids: &IdTensor) -> TensorData {
    TensorData::I64(ids.array().clone())
}

/// A mask as i64 graph data: 1 = attend, 0 = masked.
pub fn mask_to_data(mask: &Mask) -> TensorData {
    TensorData::I64(mask.array().mapv(i64::from))
}

/// The error of a layer whose export is not implemented.
pub(crate) fn unsupported(kind: &str) -> Error {
    Error::Unsupported {
        path: String::new(),
        kind: kind.to_string(),
        what: "no graph export is implemented for this layer".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_overrides_decide_the_binding() {
        use WeightBinding::{Constant, Parameter};
        let inf = ExportOptions::new(ExportMode::Inference);
        assert_eq!(inf.binding("fc.weight", true, true), Constant);
        let train = ExportOptions::new(ExportMode::Training);
        assert_eq!(train.binding("fc.weight", true, false), Parameter);
        assert_eq!(train.binding("fc.weight", false, true), Constant);
        let serve = ExportOptions::new(ExportMode::Serving).with_override("fc.lora_b", Constant);
        assert_eq!(serve.binding("fc.lora_a", false, true), Parameter);
        assert_eq!(serve.binding("fc.lora_b", false, true), Constant);
        assert_eq!(serve.binding("fc.base_layer.weight", true, false), Constant);
    }

    #[test]
    fn child_paths_nest_and_prefix_errors() {
        let (mut g, opts) = (Graph::new(), ExportOptions::default());
        let mut ctx = ExportContext::new(&mut g, &opts);
        let err = ctx
            .child("encoder", |ctx| {
                ctx.child("0", |ctx| {
                    assert_eq!(ctx.node_name("matmul"), "encoder.0.matmul");
                    Err::<(), _>(unsupported("Custom"))
                })
            })
            .unwrap_err();
        assert_eq!(err.path(), Some("encoder.0"));
        assert_eq!(ctx.path(), "");
        assert_eq!(ctx.node_name("act"), "act");
    }

    #[test]
    fn tensors_round_trip_through_graph_data() {
        let t = Tensor::<f32>::from_vec(vec![1.5, -2.0, 0.1], &[3]).unwrap();
        let d = tensor_to_data(&t);
        assert_eq!(d.dtype(), DType::F32);
        assert_eq!(tensor_from_data::<f32>(&d).unwrap(), t);
        assert!(tensor_from_data::<f64>(&d).is_err());
        let m = Mask::from_vec(vec![true, false], &[1, 2]).unwrap();
        assert_eq!(mask_to_data(&m).to_f64_vec(), vec![1.0, 0.0]);
    }
}
