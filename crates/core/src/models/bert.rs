//! [`BertModel`]: a BERT-family encoder (BERT, MiniLM, …) built from core
//! layers and loaded from a Hugging Face checkpoint folder.
//!
//! The layer tree mirrors transformers' `BertModel` module for module, so a
//! weight's path is its key in `model.safetensors` and LoRA targets are
//! PEFT module paths:
//!
//! ```text
//! embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
//! encoder.layer.<i>.attention.self.{query, key, value}
//! encoder.layer.<i>.attention.output.{dense, LayerNorm}
//! encoder.layer.<i>.intermediate.dense
//! encoder.layer.<i>.output.{dense, LayerNorm}
//! pooler.dense                                   (when the checkpoint has it)
//! ```
//!
//! Forward inputs: [`Input::Ids`] `input_ids` `[batch, seq]`, optionally a
//! second [`Input::Ids`] `token_type_ids` (zeros when absent) and an
//! [`Input::Mask`] `attention_mask` `[batch, seq]` (padded keys are hidden
//! from every query). The output is `last_hidden_state` `[batch, seq, d]`.
//! The graph export takes the same inputs ([`BertModel::input_specs`]).
//!
//! ```no_run
//! use cranelora_core::models::{l2_normalize, mean_pool, BertModel};
//! use cranelora_core::{IdTensor, Input, Layer, Mask};
//! # fn main() -> cranelora_core::Result<()> {
//! let mut model = BertModel::<f32>::from_pretrained("all-MiniLM-L6-v2".as_ref())?;
//! let ids = IdTensor::from_vec(vec![101, 7592, 2088, 102], &[1, 4])?;
//! let mask = Mask::from_ids(&[1, 1, 1, 1], &[1, 4])?;
//! let h = model.forward(&[Input::Ids(&ids), Input::Mask(&mask)])?;
//! let embedding = l2_normalize(&mean_pool(&h, &mask)?)?;
//! # Ok(())
//! # }
//! ```

use super::bert_config::BertConfig;
use super::bert_layers::{
    container_methods, id_inputs, id_nodes, layer_norm, no_training, AddNorm, BertAttention,
    BertEmbeddings, BertLayer, Children,
};
use crate::export::{ExportContext, InputSpec, NodeInput, NodeInputs};
use crate::io::{load_tensors, parse_safetensors_except, Naming};
use crate::layer::{Input, Inputs, Layer};
use crate::layers::{Dense, Embedding, Sequential};
use crate::{Activation, Error, Result, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;
use std::collections::BTreeMap;
use std::path::Path;

const KIND: &str = "BertModel";
/// The prefix of the encoder's keys in task checkpoints (`BertForMaskedLM`, …).
const BERT_PREFIX: &str = "bert.";
/// Integer buffers transformers saves next to the weights and does not need.
const BUFFERS: [&str; 2] = ["embeddings.position_ids", "embeddings.token_type_ids"];

/// A BERT encoder: embeddings, `num_hidden_layers` × [`BertLayer`], and an
/// optional pooler (see the module docs).
#[derive(Clone, Debug)]
pub struct BertModel<T: Scalar> {
    c: Children<T>,
    config: BertConfig,
    pooler: bool,
}

/// A `Dense(in → out, act)` with zero weights (filled by loading).
fn zero_dense<T: Scalar>(i: usize, o: usize, act: Activation) -> Result<Box<dyn Layer<T>>> {
    let dense = Dense::from_weights(Tensor::zeros(&[i, o]), Some(Tensor::zeros(&[o])), act)?;
    Ok(Box::new(dense))
}

fn zero_embedding<T: Scalar>(rows: usize, d: usize) -> Result<Box<dyn Layer<T>>> {
    Ok(Box::new(Embedding::from_weights(
        Tensor::zeros(&[rows, d]),
        None,
    )?))
}

impl<T: Scalar> BertModel<T> {
    /// The encoder `config` describes, with zero weights (LayerNorm γ = 1),
    /// in eval mode; `pooler` adds `pooler.dense`.
    ///
    /// # Errors
    /// [`Error::Config`] for inconsistent sizes.
    pub fn new(config: &BertConfig, pooler: bool) -> Result<Self> {
        config.validate()?;
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let embeddings = BertEmbeddings::new(
            zero_embedding(config.vocab_size, d)?,
            zero_embedding(config.max_position_embeddings, d)?,
            zero_embedding(config.type_vocab_size, d)?,
            layer_norm(d, eps)?,
            config.max_position_embeddings,
        );
        let mut layers = Sequential::new();
        for i in 0..config.num_hidden_layers {
            let attention =
                BertAttention::new(d, config.num_attention_heads, eps, &mut zero_dense)?;
            let ffn = config.intermediate_size;
            let mut intermediate = Sequential::new();
            intermediate.push_boxed("dense", zero_dense(d, ffn, config.hidden_act)?)?;
            let output = AddNorm::new(
                zero_dense(ffn, d, Activation::Identity)?,
                layer_norm(d, eps)?,
            );
            let layer = BertLayer::new(attention, Box::new(intermediate), output);
            layers.push(&i.to_string(), layer)?;
        }
        let encoder = Sequential::new().with("layer", layers)?;
        let mut children: Vec<(&'static str, Box<dyn Layer<T>>)> = vec![
            ("embeddings", Box::new(embeddings)),
            ("encoder", Box::new(encoder)),
        ];
        if pooler {
            let mut dense = Sequential::new();
            dense.push_boxed("dense", zero_dense(d, d, Activation::Tanh)?)?;
            children.push(("pooler", Box::new(dense)));
        }
        let mut model = Self {
            c: Children::new(children),
            config: config.clone(),
            pooler,
        };
        model.set_training(false);
        Ok(model)
    }

    /// The model of a Hugging Face folder: `config.json` and `model.safetensors`
    /// (with or without the `bert.` prefix; the pooler when the file has it).
    ///
    /// # Errors
    /// As [`BertConfig::from_file`] and [`BertModel::load_weights_file`].
    pub fn from_pretrained(dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let path = dir.join("model.safetensors");
        let tensors = read_bert_weights::<T>(&path)?;
        let pooler = tensors.contains_key("pooler.dense.weight");
        // Before allocating the model: sizes a (damaged or hostile) config
        // states must be roughly backed by the file, else `new` could try to
        // allocate far more than the checkpoint holds. Within twice the
        // file's size the model is built and `load_tensors` names each
        // missing or mis-shaped key precisely.
        let held: usize = tensors.values().map(Tensor::len).sum();
        match config.parameter_count(pooler) {
            Some(n) if n <= held.saturating_mul(2) => {}
            implied => {
                let implied = implied.map_or("more than usize::MAX".into(), |n| n.to_string());
                return Err(Error::Io {
                    path: dir.join("config.json").display().to_string(),
                    message: format!(
                        "its sizes imply {implied} weights but {} holds {held}",
                        path.display()
                    ),
                });
            }
        }
        let mut model = Self::new(&config, pooler)?;
        load_tensors(&mut model, &tensors, Naming::PyTorch, true, &path)?;
        Ok(model)
    }

    /// Loads a `model.safetensors` into this model: every weight must be in
    /// the file with its Hugging Face shape (linear weights `out × in`), and
    /// every float key of the file must be a weight of the model.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file and the key: a missing, extra or
    /// mis-shaped key, a non-float tensor other than the `position_ids` /
    /// `token_type_ids` buffers, a damaged file. The model is unchanged on error.
    pub fn load_weights_file(&mut self, path: &Path) -> Result<()> {
        let tensors = read_bert_weights::<T>(path)?;
        load_tensors(self, &tensors, Naming::PyTorch, true, path)
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Whether the model has `pooler.dense`.
    pub fn has_pooler(&self) -> bool {
        self.pooler
    }

    /// BERT's pooled output `tanh(pooler.dense(h[:, 0]))` `[batch, d]` of a
    /// `last_hidden_state` `[batch, seq, d]` (not a sentence embedding: see
    /// [`super::mean_pool`]).
    ///
    /// # Errors
    /// [`Error::Config`] without a pooler; [`Error::Shape`] for a bad `h`.
    pub fn pooled_output(&mut self, h: &Tensor<T>) -> Result<Tensor<T>> {
        if !self.pooler {
            return Err(Error::config(
                KIND,
                "the checkpoint has no pooler (pooler.dense)",
            ));
        }
        let d = self.config.hidden_size;
        if !matches!(h.shape(), &[_, s, dd] if s > 0 && dd == d) {
            return Err(Error::shape(
                KIND,
                "last_hidden_state",
                format!("[batch, seq>0, {d}]"),
                h.shape(),
            ));
        }
        let first = h.array().index_axis(ndarray::Axis(1), 0).to_owned();
        self.c
            .forward(2, &[Input::Float(&Tensor::from_array(first))])
    }

    /// The graph inputs of an export for `[batch, seq]`: `input_ids`,
    /// `token_type_ids` (ids) and `attention_mask` (mask), in that order.
    pub fn input_specs(batch: usize, seq: usize) -> Vec<InputSpec> {
        vec![
            InputSpec::ids("input_ids", &[batch, seq]),
            InputSpec::ids("token_type_ids", &[batch, seq]),
            InputSpec::mask("attention_mask", &[batch, seq]),
        ]
    }
}

impl<T: Scalar> Layer<T> for BertModel<T> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let ids: Vec<Input<'_, T>> = id_inputs(inputs).into_iter().map(Input::Ids).collect();
        let h = self.c.forward(0, &ids)?;
        if let Some(m) = Inputs::new(inputs, KIND).mask() {
            let expected = &h.shape()[..2];
            if m.shape() != expected {
                return Err(Error::shape(
                    KIND,
                    "attention_mask",
                    format!("{expected:?}"),
                    m.shape(),
                ));
            }
        }
        let mut next = vec![Input::Float(&h)];
        next.extend(Inputs::new(inputs, KIND).masks());
        self.c.forward(1, &next)
    }

    container_methods!(&[]);

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let ids: Vec<NodeInput> = id_nodes(inputs).into_iter().map(NodeInput::Ids).collect();
        let h = self.c.export(0, ctx, &ids)?;
        let mut next = vec![NodeInput::Float(h)];
        next.extend(NodeInputs::new(inputs, KIND).masks());
        self.c.export(1, ctx, &next)
    }
}

/// The float tensors of a BERT `model.safetensors`, keyed as `BertModel`
/// names them: the `bert.` prefix of task checkpoints stripped (keys
/// outside it, the task heads, are left out), integer buffers skipped.
///
/// # Errors
/// [`Error::Io`] naming the file (and key) for an unreadable or damaged
/// file or a non-float tensor that is not a known buffer.
pub fn read_bert_weights<T: Scalar>(path: &Path) -> Result<BTreeMap<String, Tensor<T>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    let is_buffer = |k: &str| {
        let k = k.strip_prefix(BERT_PREFIX).unwrap_or(k);
        BUFFERS.contains(&k)
    };
    let tensors = parse_safetensors_except::<T>(&bytes, path, is_buffer)?;
    let prefixed = tensors.keys().any(|k| k.starts_with(BERT_PREFIX));
    if !prefixed {
        return Ok(tensors);
    }
    let strip = |(k, v): (String, Tensor<T>)| Some((k.strip_prefix(BERT_PREFIX)?.to_string(), v));
    Ok(tensors.into_iter().filter_map(strip).collect())
}
