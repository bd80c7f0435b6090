//! The `cranelora demo` task (the library side; the command line, the
//! graph export, the agreement checks and the timing table are in
//! `src/demo_cmd.rs`).
//!
//! The model ([`demo_base`]): `fc_in` Dense 8 → 32 (GELU, tanh form),
//! `attn` a [`Residual`] around a 4-head [`MultiHeadAttention`] over the
//! sequence, `norm` a [`LayerNorm`], `head` Dense 32 → 4; input
//! `[batch, seq, 8]` uniform in [−1, 1].
//!
//! The task ([`run_demo`]): a *teacher* is the base model plus a known
//! low-rank update (LoRA with random A and B on `fc_in`, `query`, `value`
//! and `head`); the *student* is the same base with fresh adapters (B = 0,
//! so it starts as the base). Only the student's adapters train (Adam), on
//! the MSE against the teacher's outputs; since the update is exactly
//! representable, the held-out loss falls towards zero.
//!
//! [`demo_mlp`] is the older MLP kept for `cranelora graph --model mlp`.

use cranelora_core::layers::{Dense, LayerNorm, MultiHeadAttention, Residual, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit, LoraReport};
use cranelora_core::loss::mse;
use cranelora_core::optim::Adam;
use cranelora_core::train::train_step;
use cranelora_core::{Activation, Input, Layer, Result, Rng, Tensor};

/// Input features per sequence position.
pub const FEATURES: usize = 8;
/// Model width.
pub const WIDTH: usize = 32;
/// Attention heads.
pub const HEADS: usize = 4;
/// Outputs per sequence position.
pub const OUTPUTS: usize = 4;
/// The layers that get adapters.
pub const TARGETS: [&str; 4] = ["fc_in", "query", "value", "head"];

/// Settings of the demo run.
#[derive(Clone, Copy, Debug)]
pub struct DemoConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Sequences per mini-batch.
    pub batch: usize,
    /// Training sequences.
    pub samples: usize,
    /// Positions per sequence.
    pub seq: usize,
    /// LoRA rank of the student (the teacher's update has this rank too).
    pub rank: usize,
    /// Seed of data and weights.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch: 32,
            samples: 512,
            seq: 8,
            rank: 4,
            seed: 7,
        }
    }
}

/// What [`run_demo`] reports while it trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// One mini-batch step done, with its loss.
    Step(f32),
    /// An epoch done: `(epoch, mean train MSE, held-out MSE)`.
    Epoch(usize, f32, f32),
}

/// The trained student and a held-out batch to check and time it on.
#[derive(Clone, Debug)]
pub struct Demo {
    /// The student: base frozen, adapters trained, in inference mode.
    pub model: Sequential<f32>,
    /// What `apply_lora` did to the student.
    pub lora: LoraReport,
    /// Held-out inputs `[n, seq, 8]`.
    pub x_test: Tensor<f32>,
    /// Held-out MSE before training (the student starts as the base).
    pub initial_test_mse: f32,
}

/// The demo's base model (no adapters), in inference mode.
///
/// # Errors
/// Never for these sizes; the builders return `Result`.
pub fn demo_base(rng: &mut Rng) -> Result<Sequential<f32>> {
    let mut model = Sequential::new()
        .with(
            "fc_in",
            Dense::new(FEATURES, WIDTH, true, Activation::GeluTanh, rng)?,
        )?
        .with(
            "attn",
            Residual::new(MultiHeadAttention::new(WIDTH, HEADS, rng)?),
        )?
        .with("norm", LayerNorm::new(WIDTH, 1e-5, true)?)?
        .with(
            "head",
            Dense::new(WIDTH, OUTPUTS, true, Activation::Identity, rng)?,
        )?;
    model.set_training(false);
    Ok(model)
}

/// `base` with rank-`rank` adapters on [`TARGETS`] (base frozen); `init`
/// and `seed` as [`LoraConfig`].
///
/// # Errors
/// If the rank does not fit a target layer.
pub fn with_adapters(
    base: &Sequential<f32>,
    rank: usize,
    init: LoraInit,
    seed: u64,
) -> Result<(Sequential<f32>, LoraReport)> {
    let mut model = base.clone();
    let lora = LoraConfig::new(rank)
        .with_alpha(2.0 * rank as f64)
        .with_init(init)
        .with_seed(seed);
    let report = apply_lora(&mut model, &ApplyConfig::new(&TARGETS, lora))?;
    model.set_training(false);
    Ok((model, report))
}

/// `n` sequences of `seq` positions, features uniform in [−1, 1], and the
/// teacher's outputs on them.
///
/// # Errors
/// Any error of the teacher's forward (none is expected).
pub fn synthetic_task(
    teacher: &mut Sequential<f32>,
    n: usize,
    seq: usize,
    seed: u64,
) -> Result<(Tensor<f32>, Tensor<f32>)> {
    let x = Tensor::<f32>::random_uniform(&[n, seq, FEATURES], -1.0, 1.0, &mut Rng::new(seed));
    teacher.set_training(false);
    let y = teacher.forward_float(&x)?;
    Ok((x, y))
}

/// Builds the teacher and the student, then fine-tunes the student's
/// adapters for `cfg.epochs`, telling `progress` each step and epoch.
///
/// # Errors
/// Any error of the layers or the optimizer (none is expected on this task).
pub fn run_demo(cfg: DemoConfig, progress: &mut dyn FnMut(Progress)) -> Result<Demo> {
    let mut rng = Rng::new(cfg.seed);
    let base = demo_base(&mut rng)?;
    let (mut teacher, _) = with_adapters(&base, cfg.rank, LoraInit::Random, cfg.seed + 1)?;
    let (mut model, lora) = with_adapters(&base, cfg.rank, LoraInit::Default, cfg.seed + 2)?;
    let (x, y) = synthetic_task(&mut teacher, cfg.samples, cfg.seq, cfg.seed + 3)?;
    let (x_test, y_test) = synthetic_task(&mut teacher, 64, cfg.seq, cfg.seed + 4)?;
    let test_mse = |m: &mut Sequential<f32>| -> Result<f32> {
        m.set_training(false);
        Ok(mse(&m.forward_float(&x_test)?, &y_test)?.value)
    };
    let initial_test_mse = test_mse(&mut model)?;
    let mut opt = Adam::new(1e-2);
    let batches = cfg.samples.div_ceil(cfg.batch);
    for epoch in 0..cfg.epochs {
        let mut total = 0.0;
        for b in 0..batches {
            let rows = b * cfg.batch..((b + 1) * cfg.batch).min(cfg.samples);
            let xb = rows_of(&x, rows.clone())?;
            let yb = rows_of(&y, rows)?;
            let loss = |p: &Tensor<f32>| mse(p, &yb);
            let l = train_step(&mut model, &mut opt, &[Input::Float(&xb)], &loss)?;
            total += l;
            progress(Progress::Step(l));
        }
        let test = test_mse(&mut model)?;
        progress(Progress::Epoch(epoch, total / batches as f32, test));
    }
    model.set_training(false);
    Ok(Demo {
        model,
        lora,
        x_test,
        initial_test_mse,
    })
}

/// The older demo MLP: 8 → 64 (GELU, tanh form) → 64 (GELU) → 1.
///
/// # Errors
/// Never for these sizes.
pub fn demo_mlp(rng: &mut Rng) -> Result<Sequential<f32>> {
    Sequential::new()
        .with("fc1", Dense::new(8, 64, true, Activation::GeluTanh, rng)?)?
        .with("fc2", Dense::new(64, 64, true, Activation::GeluTanh, rng)?)?
        .with("head", Dense::new(64, 1, true, Activation::Identity, rng)?)
}

/// Rows `range` (along the first axis) of a contiguous tensor.
fn rows_of(t: &Tensor<f32>, range: std::ops::Range<usize>) -> Result<Tensor<f32>> {
    let row: usize = t.shape()[1..].iter().product();
    let data = t.as_slice().expect("internal: demo tensors are contiguous");
    let mut shape = t.shape().to_vec();
    shape[0] = range.len();
    Tensor::from_vec(data[range.start * row..range.end * row].to_vec(), &shape)
}
