//! Sentence embeddings with a BERT-family encoder: the batch in
//! ([`EncodedBatch`], from token ids or from text with [`tokenize`]), the
//! model eager or JIT-compiled, mean pooling and L2 normalization out, as
//! sentence-transformers computes them for all-MiniLM-L6-v2 and its kin.
//!
//! The JIT compiles one function per `(batch, sequence)` shape bucket. The
//! sequence is padded up to a multiple of [`SEQ_BUCKET`] (at most
//! `max_position_embeddings`) with pad tokens the attention mask hides, and
//! the batch up to the next power of two (multiples of [`BATCH_BUCKET`]
//! above it) with one-token filler rows that are dropped again, so inputs
//! of varying length and count reuse a few compiled functions; the
//! [`Embedder`] keeps the [`CACHE_CAPACITY`] most recently used ones.
//! Padding keys are masked and rows never mix, so the real tokens' states
//! do not depend on the bucket (up to rounding in the softmax sums).
//!
//! ```no_run
//! use cranelora::embed::{tokenize, Embedder, Engine};
//! use cranelora::core::models::BertModel;
//! # fn main() -> anyhow::Result<()> {
//! let dir = std::path::Path::new("all-MiniLM-L6-v2");
//! let model = BertModel::<f32>::from_pretrained(dir)?;
//! let tok = tokenize::load_tokenizer(&dir.join("tokenizer.json"), model.config())?;
//! let batch = tokenize::encode(&tok, &["a cat".into(), "a dog".into()])?;
//! let mut embedder = Embedder::new(model, Engine::Jit { fold_lora: true })?;
//! let out = embedder.embed(&batch)?;
//! println!("{:?}", out.embeddings.shape());
//! # Ok(())
//! # }
//! ```

pub mod tokenize;

use anyhow::{bail, Context, Result};
use cranelora_core::export::{bindings_for, export_model, ExportMode, ExportOptions};
use cranelora_core::lora::merge_all;
use cranelora_core::models::{l2_normalize, mean_pool, BertModel};
use cranelora_core::{IdTensor, Input, Layer, Mask, Tensor};
use cranelora_graph::TensorData;
use cranelora_jit::{compile, Bindings, CompiledGraph, JitOptions};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sequences are padded up to a multiple of this many tokens before the JIT runs them.
pub const SEQ_BUCKET: usize = 16;
/// Batches are padded up to the next power of two up to this many rows, and
/// to a multiple of it above, before the JIT runs them.
pub const BATCH_BUCKET: usize = 8;
/// How many compiled shapes an [`Embedder`] keeps.
pub const CACHE_CAPACITY: usize = 4;

/// A batch of token ids `[batch, seq]` with its token types and attention mask
/// (1 = real token), as a Hugging Face tokenizer returns them.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedBatch {
    /// `input_ids`.
    pub input_ids: IdTensor,
    /// `token_type_ids` (0 for the first segment, 1 for the second).
    pub token_type_ids: IdTensor,
    /// `attention_mask` (1 = real token, 0 = padding).
    pub attention_mask: IdTensor,
}

impl EncodedBatch {
    /// A batch from its three tensors, checked to be `[batch, seq]` alike.
    ///
    /// # Errors
    /// If a tensor is not 2-D or the shapes differ (naming the tensor).
    pub fn new(
        input_ids: IdTensor,
        token_type_ids: IdTensor,
        attention_mask: IdTensor,
    ) -> Result<Self> {
        if input_ids.shape().len() != 2 {
            bail!(
                "input_ids must be [batch, seq], got {:?}",
                input_ids.shape()
            );
        }
        for (name, t) in [
            ("token_type_ids", &token_type_ids),
            ("attention_mask", &attention_mask),
        ] {
            if t.shape() != input_ids.shape() {
                bail!(
                    "{name} has shape {:?}, input_ids {:?}",
                    t.shape(),
                    input_ids.shape()
                );
            }
        }
        Ok(Self {
            input_ids,
            token_type_ids,
            attention_mask,
        })
    }

    /// `(batch, seq)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.input_ids.shape()[0], self.input_ids.shape()[1])
    }

    /// The attention mask as a [`Mask`].
    pub fn mask(&self) -> Result<Mask> {
        Ok(Mask::from_ids(
            &self.attention_mask.to_vec(),
            self.attention_mask.shape(),
        )?)
    }

    /// The batch padded on the right to `seq` tokens with `pad_id`, mask 0,
    /// type 0, then below to `rows` rows with filler rows: `pad_id` tokens of
    /// which only the first is real (a row the mask hides entirely would
    /// divide by zero in the softmax); callers drop the filler rows.
    fn padded(&self, rows: usize, seq: usize, pad_id: i64) -> Result<Self> {
        let (b, s) = self.dims();
        let pad = |t: &IdTensor, value: i64, filler_first: i64| -> Result<IdTensor> {
            let v = t.to_vec();
            let real = v
                .chunks(s.max(1))
                .take(b)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(value, seq - s)));
            let filler = (b..rows).flat_map(|_| {
                std::iter::once(filler_first).chain(std::iter::repeat_n(value, seq - 1))
            });
            Ok(IdTensor::from_vec(
                real.chain(filler).collect(),
                &[rows, seq],
            )?)
        };
        Self::new(
            pad(&self.input_ids, pad_id, pad_id)?,
            pad(&self.token_type_ids, 0, 0)?,
            pad(&self.attention_mask, 0, 1)?,
        )
    }
}

/// What [`Embedder::embed`] returns.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `[batch, seq, d]`: the encoder's output (pad positions included).
    pub last_hidden_state: Tensor<f32>,
    /// `[batch, d]`: mean over the real tokens, L2-normalized.
    pub embeddings: Tensor<f32>,
}

/// How the encoder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The eager layers (LoRA adapters unmerged).
    Eager,
    /// The eager layers with every LoRA adapter merged into its base weight.
    EagerMerged,
    /// JIT-compiled per shape bucket: `fold_lora` folds adapters into the
    /// base weights at compile time (every weight a constant); without it
    /// the adapters stay separate low-rank products (adapter weights bound at run time).
    Jit {
        /// Whether the `lora_fold` pass runs.
        fold_lora: bool,
    },
}

/// One compiled shape.
struct Compiled {
    shape: (usize, usize),
    function: CompiledGraph,
    bindings: Bindings,
    /// The output buffer `function` runs into, reused across calls.
    output: TensorData,
}

/// A BERT encoder plus pooling, eager or JIT-compiled with a cache of compiled shapes.
pub struct Embedder {
    model: BertModel<f32>,
    engine: Engine,
    cache: VecDeque<Compiled>,
    compiles: Vec<((usize, usize), Duration)>,
}

impl Embedder {
    /// An embedder over `model` (in eval mode) running on `engine`; for
    /// [`Engine::EagerMerged`] the model's LoRA adapters are merged here.
    ///
    /// # Errors
    /// If an adapter cannot be merged.
    pub fn new(mut model: BertModel<f32>, engine: Engine) -> Result<Self> {
        model.set_training(false);
        if engine == Engine::EagerMerged {
            merge_all(&mut model).context("merging the LoRA adapters")?;
        }
        Ok(Self {
            model,
            engine,
            cache: VecDeque::new(),
            compiles: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &BertModel<f32> {
        &self.model
    }

    /// Every compilation so far: the `(batch, seq)` shape and the wall time
    /// of export, passes and code generation together.
    pub fn compiles(&self) -> &[((usize, usize), Duration)] {
        &self.compiles
    }

    /// The sequence length a batch of `seq` tokens runs at under the JIT.
    pub fn bucket(&self, seq: usize) -> usize {
        let max = self.model.config().max_position_embeddings;
        seq.div_ceil(SEQ_BUCKET)
            .max(1)
            .saturating_mul(SEQ_BUCKET)
            .min(max)
            .max(seq)
    }

    /// The number of rows a batch of `batch` rows runs at under the JIT: the
    /// next power of two up to [`BATCH_BUCKET`], a multiple of it above.
    pub fn batch_bucket(&self, batch: usize) -> usize {
        if batch <= BATCH_BUCKET {
            batch.max(1).next_power_of_two()
        } else {
            batch.div_ceil(BATCH_BUCKET) * BATCH_BUCKET
        }
    }

    /// The last hidden state and the sentence embeddings of `batch`.
    ///
    /// # Errors
    /// Bad ids (outside the vocabulary), a sequence longer than the
    /// model's positions, a failed compilation.
    pub fn embed(&mut self, batch: &EncodedBatch) -> Result<Embeddings> {
        let mask = batch.mask()?;
        let h = match self.engine {
            Engine::Eager | Engine::EagerMerged => self.eager(batch, &mask)?,
            Engine::Jit { fold_lora } => self.jit(batch, fold_lora)?,
        };
        let embeddings = l2_normalize(&mean_pool(&h, &mask)?)?;
        Ok(Embeddings {
            last_hidden_state: h,
            embeddings,
        })
    }

    fn eager(&mut self, batch: &EncodedBatch, mask: &Mask) -> Result<Tensor<f32>> {
        let inputs = [
            Input::Ids(&batch.input_ids),
            Input::Ids(&batch.token_type_ids),
            Input::Mask(mask),
        ];
        Ok(self.model.forward(&inputs)?)
    }

    fn jit(&mut self, batch: &EncodedBatch, fold_lora: bool) -> Result<Tensor<f32>> {
        let (b, s) = batch.dims();
        let (rows, seq) = (self.batch_bucket(b), self.bucket(s));
        let padded = batch.padded(rows, seq, self.model.config().pad_token_id as i64)?;
        let d = self.model.config().hidden_size;
        let compiled = self.compiled((rows, seq), fold_lora)?;
        let inputs = [
            TensorData::I64(padded.input_ids.array().clone()),
            TensorData::I64(padded.token_type_ids.array().clone()),
            TensorData::I64(padded.attention_mask.array().clone()),
        ];
        // Into the entry's own buffer: a fresh `[rows, seq, d]` output per
        // call cost page faults and zeroing (docs/jit.md "MiniLM").
        let Compiled {
            function,
            bindings,
            output,
            ..
        } = compiled;
        function.run_into(&inputs, bindings, std::slice::from_mut(output))?;
        let TensorData::F32(h) = &*output else {
            bail!(
                "internal: the encoder's output is {}, not f32",
                output.dtype()
            );
        };
        // Back to the caller's shape in one copy: drop the bucket's filler
        // rows and pad positions.
        let h = h
            .as_slice()
            .context("internal: the encoder's output is not contiguous")?;
        let mut kept = Vec::with_capacity(b * s * d);
        for row in h.chunks(seq * d).take(b) {
            kept.extend_from_slice(&row[..s * d]);
        }
        Ok(Tensor::from_vec(kept, &[b, s, d])?)
    }

    /// The compiled function of `shape`, compiling it (and evicting the
    /// least recently used one) when it is not cached.
    fn compiled(&mut self, shape: (usize, usize), fold_lora: bool) -> Result<&mut Compiled> {
        if let Some(i) = self.cache.iter().position(|c| c.shape == shape) {
            let hit = self.cache.remove(i).expect("internal: index from position");
            self.cache.push_front(hit);
        } else {
            let start = Instant::now();
            let mode = if fold_lora {
                ExportMode::Inference
            } else {
                ExportMode::Serving
            };
            let specs = BertModel::<f32>::input_specs(shape.0, shape.1);
            let graph = export_model(&self.model, &specs, &ExportOptions::new(mode))?;
            let bindings = Bindings::from_map(&bindings_for(&self.model, &graph)?)?;
            let function = compile(&graph, &JitOptions::default().with_lora_fold(fold_lora))
                .with_context(|| format!("compiling the encoder for shape {shape:?}"))?;
            self.compiles.push((shape, start.elapsed()));
            if self.cache.len() == CACHE_CAPACITY {
                self.cache.pop_back();
            }
            let output = function
                .outputs()
                .first()
                .map(|o| TensorData::full(&o.shape, 0.0, o.dtype))
                .context("internal: the encoder graph has no output")?;
            self.cache.push_front(Compiled {
                shape,
                function,
                bindings,
                output,
            });
        }
        Ok(self.cache.front_mut().expect("internal: just inserted"))
    }
}
