//! The blocks of a BERT encoder, each a container of core layers whose
//! child names are Hugging Face's module names, so that a weight's path is
//! its key in `model.safetensors` and a LoRA target is addressed by its
//! PEFT module path (`encoder.layer.0.attention.self.query`).
//!
//! ```text
//! BertEmbeddings   LayerNorm(word_embeddings[ids] + position_embeddings[0..L] + token_type_embeddings[types])
//! BertAttention    output(self(x, mask), x)                 self: MultiHeadAttention (query/key/value)
//! AddNorm          LayerNorm(residual + dense(h))           HF BertSelfOutput / BertOutput
//! BertLayer        a = attention(x, mask);  output(intermediate.dense(a), a)
//! ```
//!
//! `self` is a [`MultiHeadAttention`] whose own output projection is the
//! identity (child `self.output`, no weights): BERT applies that projection
//! in `attention.output.dense`, before its residual LayerNorm.
//!
//! The blocks are inference layers: their `backward` is an
//! [`Error::Unsupported`] (training a BERT end to end is not implemented).

use crate::export::{ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer};
use crate::layers::MultiHeadAttention;
use crate::{Activation, ActivationLayer, Error, IdTensor, Result, Rng, Tensor};
use cranelora_graph::{DType, NodeId, Op, TensorData};
use cranelora_kernels::Scalar;

/// Named boxed children and the mode: the state every block shares.
#[derive(Debug)]
pub(super) struct Children<T> {
    names: Vec<&'static str>,
    layers: Vec<Box<dyn Layer<T>>>,
    pub(super) training: bool,
}

impl<T: Scalar> Clone for Children<T> {
    fn clone(&self) -> Self {
        Self {
            names: self.names.clone(),
            layers: self.layers.clone(),
            training: self.training,
        }
    }
}

impl<T: Scalar> Children<T> {
    pub(super) fn new(children: Vec<(&'static str, Box<dyn Layer<T>>)>) -> Self {
        let (names, layers) = children.into_iter().unzip();
        Self {
            names,
            layers,
            training: false,
        }
    }

    /// Child `i`'s forward, its errors prefixed with its name.
    pub(super) fn forward(&mut self, i: usize, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let name = self.names[i];
        self.layers[i].forward(inputs).map_err(|e| e.at(name))
    }

    /// Child `i`'s graph export under its name.
    pub(super) fn export(
        &self,
        i: usize,
        ctx: &mut ExportContext<'_>,
        inputs: &[NodeInput],
    ) -> Result<NodeId> {
        let layer = &self.layers[i];
        ctx.child(self.names[i], |ctx| layer.export_graph(ctx, inputs))
    }

    pub(super) fn list(&self) -> Vec<(&str, &dyn Layer<T>)> {
        self.names
            .iter()
            .zip(&self.layers)
            .map(|(n, l)| (*n, l.as_ref()))
            .collect()
    }

    pub(super) fn list_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
        self.names
            .iter()
            .copied()
            .zip(self.layers.iter_mut())
            .collect()
    }

    pub(super) fn all_jit(&self) -> bool {
        self.layers.iter().all(|l| l.supports_jit())
    }
}

/// The error of `backward` on an inference block.
pub(super) fn no_training(kind: &str) -> Error {
    Error::Unsupported {
        path: String::new(),
        kind: kind.to_string(),
        what: "backward: BERT blocks are inference layers (training is not implemented)".into(),
    }
}

/// The [`Layer`] methods every block delegates to its `c: Children<T>`.
macro_rules! container_methods {
    ($own_ops:expr) => {
        fn backward(&mut self, _grad: &Tensor<T>) -> Result<Option<Tensor<T>>> {
            Err(no_training(self.kind()))
        }
        fn supports_training(&self) -> bool {
            false
        }
        fn children(&self) -> Vec<(&str, &dyn Layer<T>)> {
            self.c.list()
        }
        fn children_mut(&mut self) -> Vec<(&str, &mut Box<dyn Layer<T>>)> {
            self.c.list_mut()
        }
        fn is_training(&self) -> bool {
            self.c.training
        }
        fn set_own_training(&mut self, training: bool) {
            self.c.training = training;
        }
        fn reset_own_state(&mut self) {}
        fn clone_box(&self) -> Box<dyn Layer<T>> {
            Box::new(self.clone())
        }
        fn supports_jit(&self) -> bool {
            $crate::export::lowerable($own_ops) && self.c.all_jit()
        }
    };
}
pub(super) use container_methods;

/// The id inputs of a call, in order.
pub(super) fn id_inputs<'a, T>(inputs: &[Input<'a, T>]) -> Vec<&'a IdTensor> {
    let ids = inputs.iter().filter_map(|i| match i {
        Input::Ids(t) => Some(*t),
        _ => None,
    });
    ids.collect()
}

/// The id inputs of an export, in order.
pub(super) fn id_nodes(inputs: &[NodeInput]) -> Vec<NodeId> {
    let ids = inputs.iter().filter_map(|i| match i {
        NodeInput::Ids(id) => Some(*id),
        _ => None,
    });
    ids.collect()
}

const EMB: &str = "BertEmbeddings";

fn missing_ids() -> Error {
    Error::MissingInput {
        path: String::new(),
        kind: EMB.into(),
        what: "id input (input_ids)".into(),
    }
}

/// Word + position + token-type embeddings, then LayerNorm. Inputs: ids
/// `[batch, seq]`, optionally token types `[batch, seq]` (second id input;
/// zeros when absent, as transformers). Output `[batch, seq, d]`.
#[derive(Clone, Debug)]
pub struct BertEmbeddings<T: Scalar> {
    c: Children<T>,
    max_positions: usize,
}

impl<T: Scalar> BertEmbeddings<T> {
    /// A block from its four children (any layer: LoRA may wrap them).
    pub fn new(
        word: Box<dyn Layer<T>>,
        position: Box<dyn Layer<T>>,
        token_type: Box<dyn Layer<T>>,
        norm: Box<dyn Layer<T>>,
        max_positions: usize,
    ) -> Self {
        let c = Children::new(vec![
            ("word_embeddings", word),
            ("position_embeddings", position),
            ("token_type_embeddings", token_type),
            ("LayerNorm", norm),
        ]);
        Self { c, max_positions }
    }

    /// `[batch, seq]` of the ids, checked against the token types and the position table.
    fn check(&self, ids: &[usize], types: Option<&[usize]>) -> Result<(usize, usize)> {
        let [b, l] = *ids else {
            return Err(Error::shape(EMB, "input_ids", "[batch, seq]", ids));
        };
        if let Some(t) = types.filter(|t| *t != ids) {
            return Err(Error::shape(
                EMB,
                "token_type_ids",
                format!("[{b}, {l}]"),
                t,
            ));
        }
        if l > self.max_positions {
            let msg = format!(
                "sequence length {l} exceeds max_position_embeddings {}",
                self.max_positions
            );
            return Err(Error::config(EMB, msg));
        }
        Ok((b, l))
    }
}

impl<T: Scalar> Layer<T> for BertEmbeddings<T> {
    fn kind(&self) -> &'static str {
        EMB
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let ids = id_inputs(inputs);
        let Some(&input_ids) = ids.first() else {
            return Err(missing_ids());
        };
        let types = ids.get(1).copied();
        let (b, l) = self.check(input_ids.shape(), types.map(IdTensor::shape))?;
        let zeros = IdTensor::from_vec(vec![0; b * l], &[b, l])?;
        let positions = IdTensor::from_vec((0..l as i64).collect(), &[l])?;
        let word = self.c.forward(0, &[Input::Ids(input_ids)])?;
        let pos = self.c.forward(1, &[Input::Ids(&positions)])?;
        let typ = self.c.forward(2, &[Input::Ids(types.unwrap_or(&zeros))])?;
        // Summed in transformers' order: (word + token_type) + position.
        let sum = word.add(&typ)?.add(&pos)?;
        self.c.forward(3, &[Input::Float(&sum)])
    }

    container_methods!(&[Op::Add, Op::Gather]);

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let ids = id_nodes(inputs);
        let Some(&input_ids) = ids.first() else {
            return Err(missing_ids());
        };
        let dims = ctx.dims(input_ids)?;
        let types_dims = match ids.get(1) {
            Some(&t) => Some(ctx.dims(t)?),
            None => None,
        };
        let (b, l) = self.check(&dims, types_dims.as_deref())?;
        let types = match ids.get(1) {
            Some(&t) => t,
            None => {
                let zeros = TensorData::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[b, l])));
                ctx.constant("token_type_ids", zeros)?
            }
        };
        let positions = ndarray::Array1::from_iter(0..l as i64).into_dyn();
        let positions = ctx.constant("position_ids", TensorData::I64(positions))?;
        debug_assert_eq!(
            ctx.graph().node(positions).map(|n| n.dtype),
            Some(DType::I64)
        );
        let word = self.c.export(0, ctx, &[NodeInput::Ids(input_ids)])?;
        let pos = self.c.export(1, ctx, &[NodeInput::Ids(positions)])?;
        let typ = self.c.export(2, ctx, &[NodeInput::Ids(types)])?;
        let sum = ctx.named("add_type").add(word, typ)?;
        let sum = ctx.named("add_position").add(sum, pos)?;
        self.c.export(3, ctx, &[NodeInput::Float(sum)])
    }
}

const ADD_NORM: &str = "AddNorm";

/// `LayerNorm(residual + dense(h))` (Hugging Face's `BertSelfOutput` and
/// `BertOutput`). Inputs: `h` (first float), `residual` (second float).
#[derive(Clone, Debug)]
pub struct AddNorm<T: Scalar> {
    c: Children<T>,
}

impl<T: Scalar> AddNorm<T> {
    /// A block with children `dense` and `LayerNorm`.
    pub fn new(dense: Box<dyn Layer<T>>, norm: Box<dyn Layer<T>>) -> Self {
        let c = Children::new(vec![("dense", dense), ("LayerNorm", norm)]);
        Self { c }
    }
}

impl<T: Scalar> Layer<T> for AddNorm<T> {
    fn kind(&self) -> &'static str {
        ADD_NORM
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let inp = Inputs::new(inputs, ADD_NORM);
        let (h, residual) = (inp.float(0)?, inp.float(1)?);
        let y = self.c.forward(0, &[Input::Float(h)])?;
        if y.shape() != residual.shape() {
            let expected = format!("the residual's shape {:?}", residual.shape());
            return Err(Error::shape(ADD_NORM, "dense output", expected, y.shape()));
        }
        let sum = y.add(residual)?;
        self.c.forward(1, &[Input::Float(&sum)])
    }

    container_methods!(&[Op::Add]);

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let inp = NodeInputs::new(inputs, ADD_NORM);
        let (h, residual) = (inp.float(0)?, inp.float(1)?);
        let y = self.c.export(0, ctx, &[NodeInput::Float(h)])?;
        let (yd, rd) = (ctx.dims(y)?, ctx.dims(residual)?);
        if yd != rd {
            let expected = format!("the residual's shape {rd:?}");
            return Err(Error::shape(ADD_NORM, "dense output", expected, &yd));
        }
        let sum = ctx.named("add").add(y, residual)?;
        self.c.export(1, ctx, &[NodeInput::Float(sum)])
    }
}

const ATTN: &str = "BertAttention";

/// Self-attention then [`AddNorm`]: children `self` (a [`MultiHeadAttention`]
/// with an identity output projection) and `output`. Inputs: `x`
/// `[batch, seq, d]` and an optional padding mask `[batch, seq]`.
#[derive(Clone, Debug)]
pub struct BertAttention<T: Scalar> {
    c: Children<T>,
}

impl<T: Scalar> BertAttention<T> {
    /// A block with `heads` heads over width `d`, its projections from
    /// `dense(in, out)` (query, key, value, then `output.dense`).
    ///
    /// # Errors
    /// [`Error::Config`] if `heads` does not divide `d`.
    pub fn new(
        d: usize,
        heads: usize,
        eps: f64,
        dense: &mut impl FnMut(usize, usize, Activation) -> Result<Box<dyn Layer<T>>>,
    ) -> Result<Self> {
        let mut mha = MultiHeadAttention::new(d, heads, &mut Rng::new(0))?;
        for name in ["query", "key", "value"] {
            mha.replace_child(name, dense(d, d, Activation::Identity)?)?;
        }
        let identity = ActivationLayer::<T>::new(Activation::Identity);
        mha.replace_child("output", Box::new(identity))?;
        let output = AddNorm::new(dense(d, d, Activation::Identity)?, layer_norm(d, eps)?);
        let c = Children::new(vec![("self", Box::new(mha)), ("output", Box::new(output))]);
        Ok(Self { c })
    }
}

/// A `[dim]` LayerNorm with γ = 1, β = 0.
pub(super) fn layer_norm<T: Scalar>(dim: usize, eps: f64) -> Result<Box<dyn Layer<T>>> {
    Ok(Box::new(crate::layers::LayerNorm::<T>::new(
        dim, eps, true,
    )?))
}

impl<T: Scalar> Layer<T> for BertAttention<T> {
    fn kind(&self) -> &'static str {
        ATTN
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let inp = Inputs::new(inputs, ATTN);
        let x = inp.float(0)?;
        // Only x and the masks: a second float input would make it cross-attention.
        let mut self_inputs = vec![Input::Float(x)];
        self_inputs.extend(inp.masks());
        let context = self.c.forward(0, &self_inputs)?;
        self.c
            .forward(1, &[Input::Float(&context), Input::Float(x)])
    }

    container_methods!(&[]);

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let inp = NodeInputs::new(inputs, ATTN);
        let x = inp.float(0)?;
        let mut self_inputs = vec![NodeInput::Float(x)];
        self_inputs.extend(inp.masks());
        let context = self.c.export(0, ctx, &self_inputs)?;
        let out_inputs = [NodeInput::Float(context), NodeInput::Float(x)];
        self.c.export(1, ctx, &out_inputs)
    }
}

const LAYER: &str = "BertLayer";

/// One post-LayerNorm encoder layer: children `attention`
/// ([`BertAttention`]), `intermediate` (a container with child `dense`,
/// `d → intermediate` with the activation) and `output` ([`AddNorm`],
/// `intermediate → d`). Inputs: `x` `[batch, seq, d]`, optional padding mask.
#[derive(Clone, Debug)]
pub struct BertLayer<T: Scalar> {
    c: Children<T>,
}

impl<T: Scalar> BertLayer<T> {
    /// A layer from its three children.
    pub fn new(
        attention: BertAttention<T>,
        intermediate: Box<dyn Layer<T>>,
        output: AddNorm<T>,
    ) -> Self {
        let c = Children::new(vec![
            ("attention", Box::new(attention) as Box<dyn Layer<T>>),
            ("intermediate", intermediate),
            ("output", Box::new(output)),
        ]);
        Self { c }
    }
}

impl<T: Scalar> Layer<T> for BertLayer<T> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let a = self.c.forward(0, inputs)?;
        let h = self.c.forward(1, &[Input::Float(&a)])?;
        self.c.forward(2, &[Input::Float(&h), Input::Float(&a)])
    }

    container_methods!(&[]);

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let a = self.c.export(0, ctx, inputs)?;
        let h = self.c.export(1, ctx, &[NodeInput::Float(a)])?;
        self.c
            .export(2, ctx, &[NodeInput::Float(h), NodeInput::Float(a)])
    }
}
