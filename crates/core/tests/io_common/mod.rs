//! Models, inputs and scratch directories shared by the io_* tests.
#![allow(dead_code)]

use cranelora_core::layers::{Conv2d, Conv2dOptions, Dense, Embedding, LayerNorm, Sequential};
use cranelora_core::{Activation, ActivationLayer, IdTensor, Layer, Rng, Tensor};
use cranelora_kernels::Scalar;
use std::path::{Path, PathBuf};

/// A fresh, empty directory under the system temp dir, removed (with its
/// contents) when the guard is dropped, so test runs leave nothing behind.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty [`Scratch`] directory named after `name` and the process.
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("cranelora-io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// fc1 Dense(6→8, ReLU) → ln LayerNorm(8) → fc2 Dense(8→4).
pub fn mlp<T: Scalar>(seed: u64) -> Sequential<T> {
    let mut rng = Rng::new(seed);
    Sequential::new()
        .with(
            "fc1",
            Dense::new(6, 8, true, Activation::Relu, &mut rng).expect("fc1"),
        )
        .and_then(|m| m.with("ln", LayerNorm::new(8, 1e-5, true).expect("ln")))
        .and_then(|m| {
            m.with(
                "fc2",
                Dense::new(8, 4, true, Activation::Identity, &mut rng).expect("fc2"),
            )
        })
        .expect("mlp")
}

/// conv1 Conv2d(2→4, k3, pad 1) → ReLU → conv2 Conv2d(4→3, k3, stride 2).
pub fn convnet<T: Scalar>(seed: u64) -> Sequential<T> {
    let mut rng = Rng::new(seed);
    let opts = |s, p| Conv2dOptions {
        stride: (s, s),
        padding: (p, p),
        dilation: (1, 1),
    };
    Sequential::new()
        .with(
            "conv1",
            Conv2d::new(2, 4, (3, 3), opts(1, 1), true, &mut rng).expect("conv1"),
        )
        .and_then(|m| m.with("relu", ActivationLayer::new(Activation::Relu)))
        .and_then(|m| {
            m.with(
                "conv2",
                Conv2d::new(4, 3, (3, 3), opts(2, 0), true, &mut rng).expect("conv2"),
            )
        })
        .expect("convnet")
}

/// emb Embedding(10, 6) → proj Dense(6→5).
pub fn embnet<T: Scalar>(seed: u64) -> Sequential<T> {
    let mut rng = Rng::new(seed);
    Sequential::new()
        .with("emb", Embedding::new(10, 6, None, &mut rng).expect("emb"))
        .and_then(|m| {
            m.with(
                "proj",
                Dense::new(6, 5, true, Activation::Identity, &mut rng).expect("proj"),
            )
        })
        .expect("embnet")
}

pub fn mlp_input<T: Scalar>() -> Tensor<T> {
    Tensor::random_normal(&[3, 6], 0.0, 1.0, &mut Rng::new(7))
}

pub fn conv_input<T: Scalar>() -> Tensor<T> {
    Tensor::random_normal(&[2, 2, 7, 7], 0.0, 1.0, &mut Rng::new(8))
}

pub fn ids() -> IdTensor {
    IdTensor::from_vec(vec![0, 3, 9, 1, 3, 7, 2, 2, 5, 8], &[2, 5]).expect("ids")
}

/// Moves every trainable weight off its initial value (so a round trip tests real data).
pub fn perturb<T: Scalar>(model: &mut dyn Layer<T>) {
    let p: Vec<T> = model
        .parameters()
        .iter()
        .enumerate()
        .map(|(i, &v)| v * T::from_f64_lossy(1.25) + T::from_f64_lossy(0.03 * (i as f64).sin()))
        .collect();
    model.set_parameters(&p).expect("same length");
}
