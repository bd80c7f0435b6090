//! The `minilm` benchmark: a whole BERT-family encoder (all-MiniLM-L6-v2:
//! 6 layers, d = 384, 12 heads, FFN 1536) on a batch of 8 × 128 tokens,
//! eager versus JIT, in sentences per second.
//!
//! The batch is deterministic token ids (no tokenizer needed): `[CLS]`, 126
//! ids drawn from the vocabulary, `[SEP]`, with the last rows padded so the
//! attention mask is exercised (row `i` has `128 − 8·i` real tokens). Both
//! engines run [`Embedder::embed`] (encoder, mean pooling, normalization);
//! the JIT's compile time is reported apart and not timed.

use super::{measure, Stats};
use crate::embed::{Embedder, EncodedBatch, Engine};
use anyhow::{Context, Result};
use cranelora_core::models::BertModel;
use cranelora_core::IdTensor;
use std::path::Path;
use std::time::Duration;

/// The benchmark's batch size.
pub const BATCH: usize = 8;
/// The benchmark's sequence length.
pub const SEQ: usize = 128;

/// One engine's result.
#[derive(Clone, Debug)]
pub struct MinilmResult {
    /// `eager` or `jit`.
    pub engine: &'static str,
    /// Time per batch.
    pub stats: Stats,
    /// Compile time (JIT only).
    pub compile: Option<Duration>,
}

impl MinilmResult {
    /// Sentences per second at the median time per batch.
    pub fn sentences_per_second(&self) -> f64 {
        BATCH as f64 / self.stats.median.as_secs_f64()
    }
}

/// The deterministic `[BATCH, SEQ]` batch for a vocabulary of `vocab` ids.
///
/// # Errors
/// Only on an internal shape error.
pub fn batch(vocab: usize) -> Result<EncodedBatch> {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    let mut state = 0x2545_f491_u64;
    for row in 0..BATCH {
        let real = SEQ - 8 * row;
        for t in 0..SEQ {
            // A small LCG: reproducible ids away from the special tokens (ids < 1000).
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let word = 1000 + (state >> 33) as usize % vocab.saturating_sub(1000).max(1);
            let id = match t {
                0 => 101,
                t if t + 1 == real => 102,
                t if t < real => word,
                _ => 0,
            };
            ids.push(id as i64);
            mask.push(i64::from(t < real));
        }
    }
    let shape = [BATCH, SEQ];
    EncodedBatch::new(
        IdTensor::from_vec(ids, &shape)?,
        IdTensor::from_vec(vec![0; BATCH * SEQ], &shape)?,
        IdTensor::from_vec(mask, &shape)?,
    )
}

/// Runs the benchmark on the model folder `dir`, about `target` per engine;
/// returns eager then JIT, after checking that they agree.
///
/// # Errors
/// If the model cannot be loaded or run, or the engines disagree by more
/// than 1e-4 on an embedding.
pub fn run(dir: &Path, target: Duration) -> Result<Vec<MinilmResult>> {
    let model = BertModel::<f32>::from_pretrained(dir)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let b = batch(model.config().vocab_size)?;
    let mut results = Vec::new();
    let mut outputs = Vec::new();
    for (name, engine) in [
        ("eager", Engine::Eager),
        ("jit", Engine::Jit { fold_lora: true }),
    ] {
        let mut e = Embedder::new(model.clone(), engine)?;
        outputs.push(e.embed(&b)?.embeddings);
        let compile = e.compiles().first().map(|c| c.1);
        let stats = measure(target, &mut || e.embed(&b).map(|_| ()))?;
        results.push(MinilmResult {
            engine: name,
            stats,
            compile,
        });
    }
    let diff = outputs[0]
        .to_vec()
        .iter()
        .zip(outputs[1].to_vec())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    anyhow::ensure!(diff <= 1e-4, "eager and JIT embeddings differ by {diff}");
    Ok(results)
}
