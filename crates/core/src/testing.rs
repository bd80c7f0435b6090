//! Test support shared by every crate's tests: tensor closeness and
//! central finite-difference gradient checks.

use crate::layer::{Input, Layer};
use crate::{Rng, Tensor};
use cranelora_kernels::testing::check_close;
pub use cranelora_kernels::testing::{assert_close, Nan};
use cranelora_kernels::Scalar;

/// Panics unless the tensors have the same shape and `max|a − e| ≤ atol + rtol·max|e|`.
///
/// # Panics
/// On a shape mismatch or values that are not close.
#[track_caller]
pub fn assert_tensor_close<T: Scalar>(
    actual: &Tensor<T>,
    expected: &Tensor<T>,
    rtol: f64,
    atol: f64,
) {
    assert_eq!(actual.shape(), expected.shape(), "shape mismatch");
    assert_close(&actual.to_vec(), &expected.to_vec(), rtol, atol);
}

/// Tolerances and sizes of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub step: f64,
    /// Relative tolerance (scaled by the largest numeric gradient).
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Seed of the random projection `R` in `L = Σ R ⊙ y`.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            step: 1e-6,
            rtol: 1e-6,
            atol: 1e-8,
            seed: 42,
        }
    }
}

fn loss(layer: &mut dyn Layer<f64>, inputs: &[Input<'_, f64>], r: &Tensor<f64>) -> f64 {
    let y = layer
        .forward(inputs)
        .expect("forward failed during the gradient check");
    y.mul(r)
        .expect("output shape changed during the gradient check")
        .sum()
}

/// `inputs` with its first float input replaced by `x`.
fn with_float<'a>(inputs: &[Input<'a, f64>], x: &'a Tensor<f64>) -> Vec<Input<'a, f64>> {
    let mut done = false;
    inputs
        .iter()
        .map(|i| match i {
            Input::Float(_) if !done => {
                done = true;
                Input::Float(x)
            }
            other => *other,
        })
        .collect()
}

/// Central finite differences of `L = Σ R ⊙ layer(inputs)` for a fixed random
/// `R`, against the layer's `backward`: ∂L/∂(first float input) (if any)
/// and ∂L/∂(every trainable parameter). The layer must be deterministic in
/// training mode (Dropout is checked by hand instead).
///
/// # Errors
/// A message naming what disagreed (input or parameters) and by how much.
pub fn check_gradients(
    layer: &mut dyn Layer<f64>,
    inputs: &[Input<'_, f64>],
    opts: GradCheck,
) -> Result<(), String> {
    layer.set_training(true);
    layer.zero_grad();
    let y = layer.forward(inputs).map_err(|e| format!("forward: {e}"))?;
    let r = Tensor::random_normal(y.shape(), 0.0, 1.0, &mut Rng::new(opts.seed));
    let dx = layer.backward(&r).map_err(|e| format!("backward: {e}"))?;
    let analytic_params = layer.gradients();

    let x0 = inputs.iter().find_map(|i| match i {
        Input::Float(t) => Some((*t).clone()),
        _ => None,
    });
    if let Some(x0) = x0 {
        let dx = dx.ok_or("backward returned no input gradient for a float input")?;
        let mut numeric = Vec::with_capacity(x0.len());
        for i in 0..x0.len() {
            let mut xp = x0.clone();
            let mut xm = x0.clone();
            xp.array_mut().as_slice_mut().expect("contiguous")[i] += opts.step;
            xm.array_mut().as_slice_mut().expect("contiguous")[i] -= opts.step;
            let lp = loss(layer, &with_float(inputs, &xp), &r);
            let lm = loss(layer, &with_float(inputs, &xm), &r);
            numeric.push((lp - lm) / (2.0 * opts.step));
        }
        check_close(&dx.to_vec(), &numeric, opts.rtol, opts.atol, Nan::Mismatch)
            .map_err(|m| format!("input gradient: {m}"))?;
    }

    let p0 = layer.parameters();
    let mut numeric = Vec::with_capacity(p0.len());
    for i in 0..p0.len() {
        let mut p = p0.clone();
        p[i] = p0[i] + opts.step;
        layer.set_parameters(&p).map_err(|e| e.to_string())?;
        let lp = loss(layer, inputs, &r);
        p[i] = p0[i] - opts.step;
        layer.set_parameters(&p).map_err(|e| e.to_string())?;
        let lm = loss(layer, inputs, &r);
        numeric.push((lp - lm) / (2.0 * opts.step));
    }
    layer.set_parameters(&p0).map_err(|e| e.to_string())?;
    check_close(
        &analytic_params,
        &numeric,
        opts.rtol,
        opts.atol,
        Nan::Mismatch,
    )
    .map_err(|m| format!("parameter gradient: {m}"))
}
