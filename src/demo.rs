//! The `cranelora demo` task: a small MLP trained on a built-in synthetic
//! regression, reporting the loss per epoch.

use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::loss::mse;
use cranelora_core::optim::Adam;
use cranelora_core::train::train_step;
use cranelora_core::{Activation, Input, Layer, Result, Rng, Tensor};

/// Settings of the demo run.
#[derive(Clone, Copy, Debug)]
pub struct DemoConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per mini-batch.
    pub batch: usize,
    /// Training rows.
    pub samples: usize,
    /// Seed of data and weights.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch: 64,
            samples: 2048,
            seed: 7,
        }
    }
}

/// The synthetic task: 8 inputs uniform in [−1, 1], one target
/// `sin(2x₀) + x₁x₂ − 0.5x₃² + 0.3·tanh(x₄ + x₅)`.
pub fn synthetic_regression(n: usize, seed: u64) -> Result<(Tensor<f32>, Tensor<f32>)> {
    let x = Tensor::<f32>::random_uniform(&[n, 8], -1.0, 1.0, &mut Rng::new(seed));
    let y: Vec<f32> = x
        .to_vec()
        .chunks(8)
        .map(|r| (2.0 * r[0]).sin() + r[1] * r[2] - 0.5 * r[3] * r[3] + 0.3 * (r[4] + r[5]).tanh())
        .collect();
    Ok((x, Tensor::from_vec(y, &[n, 1])?))
}

/// The demo's model: 8 → 64 (GELU, tanh form) → 64 (GELU) → 1.
pub fn demo_mlp(rng: &mut Rng) -> Result<Sequential<f32>> {
    Sequential::new()
        .with("fc1", Dense::new(8, 64, true, Activation::GeluTanh, rng)?)?
        .with("fc2", Dense::new(64, 64, true, Activation::GeluTanh, rng)?)?
        .with("head", Dense::new(64, 1, true, Activation::Identity, rng)?)
}

/// Trains the demo model, calling `on_epoch(epoch, train_loss, test_loss)`
/// after each epoch; returns the model.
///
/// # Errors
/// Any error of the layers or the optimizer (none is expected on this task).
pub fn run_demo(
    cfg: DemoConfig,
    on_epoch: &mut dyn FnMut(usize, f32, f32),
) -> Result<Sequential<f32>> {
    let mut rng = Rng::new(cfg.seed);
    let mut model = demo_mlp(&mut rng)?;
    let (x, y) = synthetic_regression(cfg.samples, cfg.seed + 1)?;
    let (xt, yt) = synthetic_regression(512, cfg.seed + 2)?;
    let mut opt = Adam::new(3e-3);
    let batches = cfg.samples.div_ceil(cfg.batch);
    for epoch in 0..cfg.epochs {
        let mut total = 0.0;
        for b in 0..batches {
            let rows = b * cfg.batch..((b + 1) * cfg.batch).min(cfg.samples);
            let xb = rows_of(&x, rows.clone())?;
            let yb = rows_of(&y, rows)?;
            let loss = |p: &Tensor<f32>| mse(p, &yb);
            total += train_step(&mut model, &mut opt, &[Input::Float(&xb)], &loss)?;
        }
        model.set_training(false);
        let test = mse(&model.forward_float(&xt)?, &yt)?.value;
        on_epoch(epoch, total / batches as f32, test);
    }
    Ok(model)
}

/// Rows `range` of a 2-D tensor.
fn rows_of(t: &Tensor<f32>, range: std::ops::Range<usize>) -> Result<Tensor<f32>> {
    let cols = t.shape()[1];
    let data = t.as_slice().expect("internal: demo tensors are contiguous");
    Tensor::from_vec(
        data[range.start * cols..range.end * cols].to_vec(),
        &[range.len(), cols],
    )
}
