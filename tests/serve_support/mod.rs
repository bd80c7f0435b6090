//! The models, servers and thread harness of the serving tests
//! (`serve.rs`, `serve_formats.rs`, `serve_race.rs`).
#![allow(dead_code)] // each test crate uses a part

use cranelora::core::export::InputSpec;
use cranelora::core::layers::{Dense, Sequential};
use cranelora::core::lora::{LoraAdapter, LoraConfig};
use cranelora::core::{Activation, Layer, Rng, Tensor};
use cranelora::jit::serve::AdapterServer;
use cranelora::kernels::Scalar;
use cranelora::serving::{compile_server, ServingConfig};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub const SIZES: [usize; 3] = [12, 20, 10];
pub const ROWS: usize = 6;

/// The base layers: fixed weights for every model of a test.
pub fn base<T: Scalar>() -> Vec<Dense<T>> {
    let mut rng = Rng::new(7);
    let acts = [Activation::GeluTanh, Activation::Identity];
    (0..2)
        .map(|k| {
            let (i, o) = (SIZES[k], SIZES[k + 1]);
            let w = Tensor::random_normal(&[i, o], 0.0, 1.0 / (i as f64).sqrt(), &mut rng);
            let b = Tensor::random_normal(&[o], 0.0, 0.1, &mut rng);
            Dense::from_weights(w, Some(b), acts[k]).expect("dense")
        })
        .collect()
}

/// The base model with an adapter of `cfg` on both layers, random non-zero
/// A, B, LoRA bias and DoRA magnitude from `seed`.
pub fn adapted<T: Scalar>(cfg: LoraConfig, seed: u64) -> Sequential<T> {
    let mut rng = Rng::new(seed);
    let mut model = Sequential::new();
    for (k, layer) in base::<T>().into_iter().enumerate() {
        let (i, o, r) = (SIZES[k], SIZES[k + 1], cfg.rank);
        let mut a = LoraAdapter::wrap(layer, cfg).expect("adapter");
        let l = a.lora_layer_mut();
        l.a_mut()
            .set_value(Tensor::random_normal(&[i, r], 0.0, 0.5, &mut rng))
            .expect("A");
        l.b_mut()
            .set_value(Tensor::random_normal(&[r, o], 0.0, 0.5, &mut rng))
            .expect("B");
        if let Some(b) = l.bias_mut() {
            b.set_value(Tensor::random_normal(&[o], 0.0, 0.3, &mut rng))
                .expect("bias");
        }
        if let Some(m) = l.magnitude_mut() {
            let scale = Tensor::random_normal(&[o], 1.0, 0.2, &mut rng);
            let v: Vec<T> = m
                .value()
                .to_vec()
                .iter()
                .zip(scale.to_vec())
                .map(|(&a, b)| a * b)
                .collect();
            m.set_value(Tensor::from_vec(v, &[o]).expect("m"))
                .expect("magnitude");
        }
        model.push(&format!("fc{k}"), a).expect("push");
    }
    model.set_training(false);
    model
}

pub fn plain<T: Scalar>() -> Sequential<T> {
    let mut model = Sequential::new();
    for (k, layer) in base::<T>().into_iter().enumerate() {
        model.push(&format!("fc{k}"), layer).expect("push");
    }
    model.set_training(false);
    model
}

pub fn input<T: Scalar>() -> Tensor<T> {
    Tensor::random_normal(&[ROWS, SIZES[0]], 0.0, 1.0, &mut Rng::new(99))
}

pub fn eager<T: Scalar>(model: &mut Sequential<T>, x: &Tensor<T>) -> Vec<f64> {
    let y = model.forward_float(x).expect("eager forward");
    y.to_vec().iter().map(|v| v.to_f64_exact()).collect()
}

pub fn server<T: Scalar>(cfg: &ServingConfig) -> AdapterServer {
    server_for_rows::<T>(cfg, ROWS)
}

pub fn server_for_rows<T: Scalar>(cfg: &ServingConfig, rows: usize) -> AdapterServer {
    let template = adapted::<T>(LoraConfig::new(2), 1);
    let spec = InputSpec::float("x", &[rows, SIZES[0]]);
    compile_server(&template, &[spec], cfg).expect("compiles")
}

pub fn tol<T: Scalar>() -> f64 {
    if T::DTYPE == cranelora::graph::DType::F32 {
        2e-5
    } else {
        1e-12
    }
}

/// Runs `write(0)`, `write(1)`, … on one thread while `callers` threads
/// each run `call` once, starting after the first write (so the calls
/// overlap writing however the threads are scheduled); returns how many
/// writes ran.
pub fn while_writing(
    callers: usize,
    write: impl Fn(usize) + Send + 'static,
    call: impl Fn() + Send + Sync + 'static,
) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                write(n);
                n += 1;
                writes.store(n, Ordering::Release);
            }
            n
        })
    };
    let call = Arc::new(call);
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let (call, writes) = (Arc::clone(&call), Arc::clone(&writes));
            std::thread::spawn(move || {
                while writes.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                call();
            })
        })
        .collect();
    for c in callers {
        c.join().expect("caller");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer")
}
