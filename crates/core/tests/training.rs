//! A 2-layer MLP learns a fixed synthetic regression, in f32 and f64.

use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::loss::mse;
use cranelora_core::optim::Adam;
use cranelora_core::train::train_step;
use cranelora_core::{Activation, Input, Layer, Rng, Tensor};
use cranelora_kernels::Scalar;

/// Targets y = sin(2x₀) + x₁·x₂ − 0.5·x₃²: smooth, nonlinear, and unlearnable by a
/// linear model (whose best MSE here is the targets' variance, about 0.6).
fn task<T: Scalar>(n: usize, seed: u64) -> (Tensor<T>, Tensor<T>) {
    let x = Tensor::<f64>::random_uniform(&[n, 4], -1.0, 1.0, &mut Rng::new(seed));
    let xv = x.to_vec();
    let y: Vec<f64> = xv
        .chunks(4)
        .map(|r| (2.0 * r[0]).sin() + r[1] * r[2] - 0.5 * r[3] * r[3])
        .collect();
    (
        x.cast(),
        Tensor::<f64>::from_vec(y, &[n, 1])
            .expect("n targets")
            .cast(),
    )
}

fn learns<T: Scalar>() -> (f64, f64) {
    let mut rng = Rng::new(11);
    let mut model = Sequential::<T>::new()
        .with(
            "fc1",
            Dense::new(4, 32, true, Activation::Tanh, &mut rng).unwrap(),
        )
        .unwrap()
        .with(
            "fc2",
            Dense::new(32, 1, true, Activation::Identity, &mut rng).unwrap(),
        )
        .unwrap();
    let (x, y) = task::<T>(256, 5);
    let mut opt = Adam::new(0.01);
    let loss = |p: &Tensor<T>| mse(p, &y);
    let first = train_step(&mut model, &mut opt, &[Input::Float(&x)], &loss).unwrap();
    let mut last = first;
    for _ in 0..400 {
        last = train_step(&mut model, &mut opt, &[Input::Float(&x)], &loss).unwrap();
    }
    // Held-out data from the same distribution: the fit generalizes.
    let (xt, yt) = task::<T>(256, 6);
    model.set_training(false);
    let test = mse(&model.forward_float(&xt).unwrap(), &yt).unwrap().value;
    assert!(last.to_f64_exact() < first.to_f64_exact());
    (last.to_f64_exact(), test.to_f64_exact())
}

#[test]
fn mlp_learns_synthetic_regression_f64() {
    let (train, test) = learns::<f64>();
    assert!(train < 0.01 && test < 0.02, "train {train}, test {test}");
}

#[test]
fn mlp_learns_synthetic_regression_f32() {
    let (train, test) = learns::<f32>();
    assert!(train < 0.01 && test < 0.02, "train {train}, test {test}");
}
