//! The `Layer<T>` trait: the contract every layer, container and adapter keeps.
//!
//! # The contract
//!
//! - **Inputs.** [`Layer::forward`] takes a slice of [`Input`]s: float
//!   activations, i64 ids, attention masks. A layer reads the kinds it
//!   needs ([`Inputs`] has the accessors) and ignores masks it has no use
//!   for, so a container can pass a mask along to every child.
//! - **Modes.** In training mode (the default) `forward` caches what
//!   `backward` needs; in eval mode it caches nothing, and Dropout is the
//!   identity. [`Layer::set_training`] switches a whole subtree.
//! - **Gradients.** [`Layer::backward`] takes ∂L/∂output of the last
//!   training-mode forward, returns ∂L/∂input for the layer's first float
//!   input (`None` when it has none, e.g. Embedding), and *adds* the
//!   parameter gradients to each trainable weight's gradient buffer. Frozen
//!   weights get no gradient (and cost no work). [`Layer::zero_grad`] clears.
//! - **Weights.** Each layer owns named [`Weight`]s, each with a
//!   `trainable` flag, and named children. A weight's full name is its
//!   layer's path plus its own name: `encoder.layer.0.attention.query.weight`.
//! - **The flat parameter vector** ([`Layer::parameters`],
//!   [`Layer::set_parameters`], [`Layer::gradients`],
//!   [`Layer::parameter_count`]) holds the *trainable* weights only, in a
//!   fixed depth-first post-order: each child's weights, children in
//!   declaration order, then the layer's own weights in declaration order
//!   (each row-major). A LoRA adapter's base layer is its child and its
//!   LoRA matrices its own weights, so its vector is base (when trainable)
//!   then LoRA, the seed's packing order.
//!   [`Layer::named_weights`] lists every weight, trainable or not, in the
//!   same order.
//! - **The tree.** [`Layer::children`] / [`Layer::children_mut`] expose the
//!   named children; [`Layer::child`], [`Layer::child_mut`] and
//!   [`Layer::replace_child`] address a descendant by dotted path, and
//!   [`visit`] walks every layer with its path. This is how LoRA wraps
//!   layers by path and how weights are loaded by name.
//! - **Export.** [`Layer::export_graph`] appends the eval-mode forward to a
//!   computation graph ([`crate::export`]); [`Layer::supports_jit`] says
//!   whether that graph is one the JIT compiles.

use crate::export::{ExportContext, NodeInput};
use crate::lora::{LoraAdapter, LoraTarget};
use crate::{Error, IdTensor, Result, Tensor};
use cranelora_kernels::Scalar;
use std::collections::HashMap;

/// One input of a forward call.
#[derive(Debug)]
pub enum Input<'a, T> {
    /// Float activations.
    Float(&'a Tensor<T>),
    /// Integer ids (embedding lookups).
    Ids(&'a IdTensor),
    /// An attention mask.
    Mask(&'a Mask),
}

// Manual impls: the derive would require `T: Copy`, but only references are copied.
impl<T> Clone for Input<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Input<'_, T> {}

/// A boolean mask: `true` where attention is allowed (a real token, a
/// visible position), `false` where it is masked out — Hugging Face's
/// `attention_mask` convention (1 = keep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    keep: ndarray::ArrayD<bool>,
}

impl Mask {
    /// A mask from row-major booleans.
    ///
    /// # Errors
    /// [`Error::Length`] if `keep.len()` is not the product of `shape`.
    pub fn from_vec(keep: Vec<bool>, shape: &[usize]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        let len = keep.len();
        let keep = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), keep).map_err(|_| {
            Error::Length {
                path: String::new(),
                what: format!("mask of shape {shape:?}"),
                expected,
                actual: len,
            }
        })?;
        Ok(Self { keep })
    }

    /// A padding mask from Hugging Face's `attention_mask` ids (non-zero = keep).
    ///
    /// # Errors
    /// [`Error::Length`] if the length does not match the shape.
    pub fn from_ids(ids: &[i64], shape: &[usize]) -> Result<Self> {
        Self::from_vec(ids.iter().map(|&v| v != 0).collect(), shape)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.keep.shape()
    }

    /// The booleans.
    pub fn array(&self) -> &ndarray::ArrayD<bool> {
        &self.keep
    }
}

/// Accessors over a forward call's inputs, reporting missing ones with the layer's kind.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'s, 'a, T> {
    inputs: &'s [Input<'a, T>],
    kind: &'static str,
}

impl<'s, 'a, T> Inputs<'s, 'a, T> {
    /// Wraps a forward call's inputs for a layer of kind `kind`.
    pub fn new(inputs: &'s [Input<'a, T>], kind: &'static str) -> Self {
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
    /// [`Error::MissingInput`] if there are fewer than `n + 1` float inputs.
    pub fn float(&self, n: usize) -> Result<&'a Tensor<T>> {
        self.inputs
            .iter()
            .filter_map(|i| match i {
                Input::Float(t) => Some(*t),
                _ => None,
            })
            .nth(n)
            .ok_or_else(|| self.missing(&format!("float input #{n}")))
    }

    /// The first id input.
    ///
    /// # Errors
    /// [`Error::MissingInput`] if there is none.
    pub fn ids(&self) -> Result<&'a IdTensor> {
        self.inputs
            .iter()
            .find_map(|i| match i {
                Input::Ids(t) => Some(*t),
                _ => None,
            })
            .ok_or_else(|| self.missing("id input"))
    }

    /// The first mask, if any.
    pub fn mask(&self) -> Option<&'a Mask> {
        self.inputs.iter().find_map(|i| match i {
            Input::Mask(m) => Some(*m),
            _ => None,
        })
    }

    /// The masks only (what a container passes on to every child after the first).
    pub fn masks(&self) -> impl Iterator<Item = Input<'a, T>> + 's {
        self.inputs
            .iter()
            .filter(|i| matches!(i, Input::Mask(_)))
            .copied()
    }
}

/// A named weight tensor, its accumulated gradient and whether it trains.
#[derive(Clone, Debug)]
pub struct Weight<T> {
    name: String,
    value: Tensor<T>,
    grad: Tensor<T>,
    trainable: bool,
}

impl<T: Scalar> Weight<T> {
    /// A trainable weight with a zero gradient.
    pub fn new(name: &str, value: Tensor<T>) -> Self {
        let grad = Tensor::zeros(value.shape());
        Self {
            name: name.to_string(),
            value,
            grad,
            trainable: true,
        }
    }

    /// The weight's own name (`weight`, `bias`), without the layer path.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value.
    pub fn value(&self) -> &Tensor<T> {
        &self.value
    }

    /// The accumulated gradient (same shape as the value).
    pub fn grad(&self) -> &Tensor<T> {
        &self.grad
    }

    /// Whether the weight is updated by training.
    pub fn trainable(&self) -> bool {
        self.trainable
    }

    /// Freezes (`false`) or unfreezes (`true`) the weight.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }

    /// Replaces the value, keeping the shape.
    ///
    /// # Errors
    /// [`Error::Weight`] naming the weight if the shape differs.
    pub fn set_value(&mut self, value: Tensor<T>) -> Result<()> {
        if value.shape() != self.value.shape() {
            return Err(Error::Weight {
                name: self.name.clone(),
                problem: format!(
                    "shape {:?} does not match the layer's {:?}",
                    value.shape(),
                    self.value.shape()
                ),
            });
        }
        self.value = value;
        Ok(())
    }

    /// Mutable access to the value (for in-place updates; the shape must not change).
    pub fn value_mut(&mut self) -> &mut Tensor<T> {
        &mut self.value
    }

    /// Adds `g` to the gradient if the weight is trainable. Layers call this
    /// from `backward`; `g` must have the weight's shape.
    ///
    /// # Errors
    /// [`Error::Weight`] if `g`'s shape differs (an internal layer bug).
    pub fn accumulate_grad(&mut self, g: &Tensor<T>) -> Result<()> {
        if !self.trainable {
            return Ok(());
        }
        self.grad.add_assign(g).map_err(|_| Error::Weight {
            name: self.name.clone(),
            problem: format!(
                "gradient of shape {:?} for a weight of shape {:?}",
                g.shape(),
                self.value.shape()
            ),
        })
    }

    /// Resets the gradient to zero.
    pub fn zero_grad(&mut self) {
        self.grad.array_mut().fill(T::zero());
    }

    /// `value ← value − lr·grad` (plain SGD) if trainable.
    pub fn sgd_step(&mut self, lr: T) {
        if self.trainable {
            let g = self.grad.array();
            self.value.array_mut().zip_mut_with(g, |w, &g| *w -= lr * g);
        }
    }
}

/// Ordered key → value diagnostics of a layer.
pub type Diagnostics = Vec<(String, String)>;

/// A layer of a model: see the [module documentation](self) for the contract.
///
/// Implementors provide the required methods; everything about the flat
/// parameter vector and the tree is provided on top of [`Layer::weights`],
/// [`Layer::weights_mut`], [`Layer::children`] and [`Layer::children_mut`].
pub trait Layer<T: Scalar>: Send + Sync + std::fmt::Debug {
    /// The layer's kind, e.g. `Dense`.
    fn kind(&self) -> &'static str;

    /// Computes the output. See the module docs for inputs and modes.
    ///
    /// # Errors
    /// On shapes or inputs the layer cannot take, naming the layer path.
    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>>;

    /// Backpropagates ∂L/∂output of the last training-mode forward: adds
    /// parameter gradients, returns ∂L/∂(first float input) or `None`.
    ///
    /// # Errors
    /// [`Error::NoForwardCache`] without a training-mode forward, or a
    /// gradient whose shape is not the output's.
    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>>;

    /// The layer's own weights (not its children's), in declaration order.
    fn weights(&self) -> Vec<&Weight<T>> {
        Vec::new()
    }

    /// The layer's own weights, mutably, in declaration order.
    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        Vec::new()
    }

    /// The named children in order.
    fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
        Vec::new()
    }

    /// The named children in order, as replaceable boxes.
    fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        Vec::new()
    }

    /// Whether this layer (not its children) is in training mode.
    fn is_training(&self) -> bool;

    /// Sets this layer's own mode; [`Layer::set_training`] does the subtree.
    fn set_own_training(&mut self, training: bool);

    /// Drops this layer's own cached forward state.
    fn reset_own_state(&mut self);

    /// A boxed deep copy.
    fn clone_box(&self) -> Box<dyn Layer<T>>;

    /// Whether `backward` is implemented (true for every built-in layer).
    fn supports_training(&self) -> bool {
        true
    }

    /// Whether the layer can be exported as a graph the JIT compiles: true
    /// exactly when [`Layer::export_graph`] is implemented for this layer and
    /// every layer below it, and every op it emits is
    /// [`jit_lowerable`](cranelora_graph::jit_lowerable). The default (no
    /// export) is `false`.
    fn supports_jit(&self) -> bool {
        false
    }

    /// Appends this layer's eval-mode forward to the graph of `ctx`, reading
    /// the graph-side `inputs` as `forward` reads its [`Input`]s, and returns
    /// the output node. Weights become Constants or Parameters as the
    /// context's options decide; nodes are named after `ctx.path()`. See
    /// [`crate::export`].
    ///
    /// # Errors
    /// [`Error::Unsupported`] by default (a layer without an export); the
    /// layer's shape errors, as `forward` would report them.
    fn export_graph(
        &self,
        ctx: &mut ExportContext<'_>,
        inputs: &[NodeInput],
    ) -> Result<cranelora_graph::NodeId> {
        let _ = (ctx, inputs);
        Err(crate::export::unsupported(self.kind()))
    }

    /// Layer-specific diagnostics; the default reports parameter counts and
    /// each own weight's L2 norm.
    fn diagnostics(&self) -> Diagnostics {
        let mut d = vec![("kind".to_string(), self.kind().to_string())];
        d.extend(weight_diagnostics(
            self.parameter_count(),
            self.total_parameter_count(),
            &self.weights(),
        ));
        d
    }

    /// This layer as a LoRA target, if LoRA can wrap it (Dense,
    /// FullyConnected, Conv2d, Embedding).
    fn as_lora_target(&self) -> Option<&dyn LoraTarget<T>> {
        None
    }

    /// This layer as a mutable LoRA target, if LoRA can wrap it.
    fn as_lora_target_mut(&mut self) -> Option<&mut dyn LoraTarget<T>> {
        None
    }

    /// This layer as a LoRA adapter, if it is one (used by `merge_all`).
    fn as_lora_adapter(&self) -> Option<&LoraAdapter<T>> {
        None
    }

    // ---- provided: conveniences, modes and state ---------------------------

    /// `forward` with one float input.
    ///
    /// # Errors
    /// As [`Layer::forward`].
    fn forward_float(&mut self, x: &Tensor<T>) -> Result<Tensor<T>> {
        self.forward(&[Input::Float(x)])
    }

    /// Switches the whole subtree between training (`true`) and eval mode.
    fn set_training(&mut self, training: bool) {
        self.set_own_training(training);
        for (_, c) in self.children_mut() {
            c.set_training(training);
        }
    }

    /// Drops the cached forward state of the whole subtree.
    fn reset_state(&mut self) {
        self.reset_own_state();
        for (_, c) in self.children_mut() {
            c.reset_state();
        }
    }

    // ---- provided: weights and the flat parameter vector -----------------

    /// Calls `f(path, weight)` for every weight of the subtree in parameter order.
    fn for_each_weight(&self, prefix: &str, f: &mut dyn FnMut(&str, &Weight<T>)) {
        for (name, c) in self.children() {
            c.for_each_weight(&join(prefix, name), f);
        }
        for w in self.weights() {
            f(&join(prefix, w.name()), w);
        }
    }

    /// Calls `f(path, weight)` for every weight of the subtree, mutably, in parameter order.
    fn for_each_weight_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Weight<T>)) {
        for (name, c) in self.children_mut() {
            let p = join(prefix, name);
            c.for_each_weight_mut(&p, f);
        }
        for w in self.weights_mut() {
            let path = join(prefix, w.name());
            f(&path, w);
        }
    }

    /// Every weight of the subtree with its full name, trainable or not.
    fn named_weights(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        self.for_each_weight("", &mut |p, w| out.push((p.to_string(), w.value().clone())));
        out
    }

    /// Number of trainable scalars.
    fn parameter_count(&self) -> usize {
        let mut n = 0;
        self.for_each_weight("", &mut |_, w| {
            if w.trainable() {
                n += w.value().len();
            }
        });
        n
    }

    /// Number of scalars in all weights, trainable or not.
    fn total_parameter_count(&self) -> usize {
        let mut n = 0;
        self.for_each_weight("", &mut |_, w| n += w.value().len());
        n
    }

    /// The trainable weights as one flat vector (order: module docs).
    fn parameters(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.parameter_count());
        self.for_each_weight("", &mut |_, w| {
            if w.trainable() {
                out.extend(w.value().array().iter().copied());
            }
        });
        out
    }

    /// The trainable weights' gradients, in the order of [`Layer::parameters`].
    fn gradients(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.parameter_count());
        self.for_each_weight("", &mut |_, w| {
            if w.trainable() {
                out.extend(w.grad().array().iter().copied());
            }
        });
        out
    }

    /// Sets the trainable weights from one flat vector.
    ///
    /// # Errors
    /// [`Error::Length`] if `params` is not [`Layer::parameter_count`] long;
    /// nothing is changed then.
    fn set_parameters(&mut self, params: &[T]) -> Result<()> {
        let expected = self.parameter_count();
        if params.len() != expected {
            return Err(Error::Length {
                path: String::new(),
                what: format!("{} parameter vector", self.kind()),
                expected,
                actual: params.len(),
            });
        }
        let mut offset = 0;
        self.for_each_weight_mut("", &mut |_, w| {
            if w.trainable() {
                let n = w.value().len();
                let src = &params[offset..offset + n];
                w.value_mut()
                    .array_mut()
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &s)| *d = s);
                offset += n;
            }
        });
        Ok(())
    }

    /// One plain SGD step, `w ← w − lr·∂L/∂w`, on every trainable weight.
    /// Gradients are kept; call [`Layer::zero_grad`] before the next backward.
    fn update_parameters(&mut self, lr: T) {
        self.for_each_weight_mut("", &mut |_, w| w.sgd_step(lr));
    }

    /// Resets every gradient in the subtree to zero.
    fn zero_grad(&mut self) {
        self.for_each_weight_mut("", &mut |_, w| w.zero_grad());
    }

    /// Sets the `trainable` flag of every weight in the subtree.
    fn set_trainable(&mut self, trainable: bool) {
        self.for_each_weight_mut("", &mut |_, w| w.set_trainable(trainable));
    }

    /// Loads weights by full name (as [`Layer::named_weights`] names them).
    /// With `strict`, every weight of the model must be given and every
    /// given name must exist. Nothing is changed when an error is returned.
    ///
    /// # Errors
    /// [`Error::Weight`] naming the first unknown, missing or mis-shaped weight.
    fn load_weights(&mut self, weights: &HashMap<String, Tensor<T>>, strict: bool) -> Result<()> {
        let mut known = HashMap::new();
        self.for_each_weight("", &mut |p, w| {
            known.insert(p.to_string(), w.value().shape().to_vec());
        });
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        for name in names {
            match known.get(name) {
                None if strict => {
                    return Err(Error::Weight {
                        name: name.clone(),
                        problem: "not a weight of this model".into(),
                    })
                }
                Some(shape) if shape.as_slice() != weights[name].shape() => {
                    return Err(Error::Weight {
                        name: name.clone(),
                        problem: format!(
                            "shape {:?} given, the model has {shape:?}",
                            weights[name].shape()
                        ),
                    })
                }
                _ => {}
            }
        }
        if strict {
            let mut missing: Vec<&String> =
                known.keys().filter(|k| !weights.contains_key(*k)).collect();
            missing.sort();
            if let Some(name) = missing.first() {
                return Err(Error::Weight {
                    name: (*name).clone(),
                    problem: "missing from the weights given".into(),
                });
            }
        }
        self.for_each_weight_mut("", &mut |p, w| {
            if let Some(v) = weights.get(p) {
                w.set_value(v.clone())
                    .expect("internal: shapes were checked above");
            }
        });
        Ok(())
    }

    // ---- provided: the tree ------------------------------------------------

    /// The descendant at a dotted `path` (relative to this layer).
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`] listing the available paths.
    fn child(&self, path: &str) -> Result<&dyn Layer<T>> {
        for (name, c) in self.children() {
            if path == name {
                return Ok(c);
            }
            if let Some(rest) = path.strip_prefix(name).and_then(|r| r.strip_prefix('.')) {
                if let Ok(found) = c.child(rest) {
                    return Ok(found);
                }
            }
        }
        Err(Error::NoSuchLayer {
            path: path.to_string(),
            available: self.layer_paths(),
        })
    }

    /// The descendant at a dotted `path`, as its replaceable box.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`] listing the available paths.
    fn child_mut(&mut self, path: &str) -> Result<&mut Box<dyn Layer<T>>> {
        if self.child(path).is_err() {
            return Err(Error::NoSuchLayer {
                path: path.to_string(),
                available: self.layer_paths(),
            });
        }
        for (name, c) in self.children_mut() {
            if path == name {
                return Ok(c);
            }
            if let Some(rest) = path.strip_prefix(name).and_then(|r| r.strip_prefix('.')) {
                if c.child(rest).is_ok() {
                    return c.child_mut(rest);
                }
            }
        }
        unreachable!("internal: child() found the path")
    }

    /// Replaces the descendant at `path`, returning the old layer.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`] listing the available paths.
    fn replace_child(&mut self, path: &str, layer: Box<dyn Layer<T>>) -> Result<Box<dyn Layer<T>>> {
        Ok(std::mem::replace(self.child_mut(path)?, layer))
    }

    /// Calls `f(path, layer)` for every descendant (not this layer), parents first.
    fn for_each_descendant(&self, prefix: &str, f: &mut dyn FnMut(&str, &dyn Layer<T>)) {
        for (name, c) in self.children() {
            let p = join(prefix, name);
            f(&p, c);
            c.for_each_descendant(&p, f);
        }
    }

    /// The paths of all descendants, parents first.
    fn layer_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.for_each_descendant("", &mut |p, _| out.push(p.to_string()));
        out
    }
}

impl<T: Scalar> Clone for Box<dyn Layer<T>> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Calls `f(path, layer)` for `root` (path `""`) and every layer below it, parents first.
pub fn visit<T: Scalar>(root: &dyn Layer<T>, f: &mut dyn FnMut(&str, &dyn Layer<T>)) {
    f("", root);
    root.for_each_descendant("", f);
}

/// Parameter counts and the L2 norm of each own weight: the diagnostics every layer shares.
pub fn weight_diagnostics<T: Scalar>(
    trainable: usize,
    total: usize,
    weights: &[&Weight<T>],
) -> Diagnostics {
    let mut d = vec![
        ("trainable_parameters".to_string(), trainable.to_string()),
        ("total_parameters".to_string(), total.to_string()),
    ];
    for w in weights {
        let norm = w
            .value()
            .array()
            .iter()
            .map(|v| v.to_f64_exact().powi(2))
            .sum::<f64>()
            .sqrt();
        d.push((format!("{}.norm", w.name()), format!("{norm:.6}")));
    }
    d
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
