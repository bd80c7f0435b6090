//! The benchmark workloads of `WORKLOADS.md`, built exactly: every benchmark
//! of ours (criterion and `cranelora bench`) measures these.
//!
//! Weights are random normal scaled by 1/√fan_in with a fixed seed; LoRA A
//! (`in × r`) and B (`r × out`) are random and non-zero; α = 2r, so the
//! scaling is 2.

use cranelora_core::layers::{Dense, LayerNorm, MultiHeadAttention, Residual, Sequential};
use cranelora_core::lora::{LoraAdapter, LoraConfig, LoraInit};
use cranelora_core::{Activation, Layer, Result, Rng, Tensor};
use cranelora_kernels::Scalar;

/// The seed every workload is built from.
pub const SEED: u64 = 2024;

/// A dense layer with weights N(0, 1/fan_in) and bias N(0, 1/fan_in).
fn dense<T: Scalar>(i: usize, o: usize, act: Activation, rng: &mut Rng) -> Result<Dense<T>> {
    let std = 1.0 / (i as f64).sqrt();
    let w = Tensor::random_normal(&[i, o], 0.0, std, rng);
    let b = Tensor::random_normal(&[o], 0.0, std, rng);
    Dense::from_weights(w, Some(b), act)
}

/// Wraps `layer` in an adapter of rank `r`, α = 2r, A and B random non-zero
/// (N(0, 1/fan_in) for A, N(0, 1/r) for B).
fn adapt<T: Scalar>(layer: Dense<T>, r: usize, rng: &mut Rng) -> Result<LoraAdapter<T>> {
    let (i, o) = (layer.in_features(), layer.out_features());
    let cfg = LoraConfig::new(r)
        .with_alpha(2.0 * r as f64)
        .with_init(LoraInit::Random)
        .with_seed(rng.next_u64());
    let mut a = LoraAdapter::wrap(layer, cfg)?;
    let lora = a.lora_layer_mut();
    lora.a_mut().set_value(Tensor::random_normal(
        &[i, r],
        0.0,
        1.0 / (i as f64).sqrt(),
        rng,
    ))?;
    lora.b_mut().set_value(Tensor::random_normal(
        &[r, o],
        0.0,
        1.0 / (r as f64).sqrt(),
        rng,
    ))?;
    Ok(a)
}

/// A stack of dense layers `sizes[0] → sizes[1] → …`, `act` after every
/// layer but the last, each wrapped in a rank-`r` adapter; children `fc0`, `fc1`, ….
fn lora_mlp<T: Scalar>(
    sizes: &[usize],
    act: Activation,
    r: usize,
    seed: u64,
) -> Result<Sequential<T>> {
    let mut rng = Rng::new(seed);
    let mut model = Sequential::new();
    let n = sizes.len() - 1;
    for (k, io) in sizes.windows(2).enumerate() {
        let a = if k + 1 < n { act } else { Activation::Identity };
        let layer = dense(io[0], io[1], a, &mut rng)?;
        model.push(&format!("fc{k}"), adapt(layer, r, &mut rng)?)?;
    }
    model.set_training(false);
    Ok(model)
}

/// W1 lora-mlp: 4 dense 1024→1024, GELU (tanh form) after the first 3, LoRA
/// rank 16 on every layer; and its input, batch 64.
///
/// # Errors
/// Never for these sizes; the builders return `Result`.
pub fn w1<T: Scalar>() -> Result<(Sequential<T>, Tensor<T>)> {
    let model = lora_mlp(&[1024; 5], Activation::GeluTanh, 16, SEED)?;
    let x = Tensor::random_normal(&[64, 1024], 0.0, 1.0, &mut Rng::new(SEED + 1));
    Ok((model, x))
}

/// W2 tiny-latency: dense 64→64→64→10, ReLU between, LoRA rank 4 on each;
/// and its input, batch 1.
///
/// # Errors
/// Never for these sizes.
pub fn w2<T: Scalar>() -> Result<(Sequential<T>, Tensor<T>)> {
    let model = lora_mlp(&[64, 64, 64, 10], Activation::Relu, 4, SEED + 2)?;
    let x = Tensor::random_normal(&[1, 64], 0.0, 1.0, &mut Rng::new(SEED + 3));
    Ok((model, x))
}

/// W3 encoder-block: one post-LayerNorm transformer encoder layer shaped
/// like MiniLM (hidden 384, 12 heads, FFN 1536 with GELU (erf), LayerNorm
/// ε 1e-12), LoRA rank 8 on the query and value projections; and its input,
/// batch 8 × seq 128 × 384.
///
/// Children: `attn` (a [`Residual`] around [`MultiHeadAttention`], so the
/// adapters are `attn.inner.query` and `attn.inner.value`), `attn_norm`,
/// `ffn` (a [`Residual`] around `fc1` 384→1536 GELU, `fc2` 1536→384) and
/// `ffn_norm`.
///
/// # Errors
/// Never for these sizes.
pub fn w3<T: Scalar>() -> Result<(Sequential<T>, Tensor<T>)> {
    let (d, heads, ffn, r) = (384, 12, 1536, 8);
    let mut rng = Rng::new(SEED + 4);
    let mut mha = MultiHeadAttention::new(d, heads, &mut rng)?;
    for name in ["query", "key", "value", "output"] {
        let layer = dense(d, d, Activation::Identity, &mut rng)?;
        let boxed: Box<dyn Layer<T>> = if name == "query" || name == "value" {
            Box::new(adapt(layer, r, &mut rng)?)
        } else {
            Box::new(layer)
        };
        mha.replace_child(name, boxed)?;
    }
    let feed_forward = Sequential::new()
        .with("fc1", dense(d, ffn, Activation::GeluErf, &mut rng)?)?
        .with("fc2", dense(ffn, d, Activation::Identity, &mut rng)?)?;
    let mut model = Sequential::new()
        .with("attn", Residual::new(mha))?
        .with("attn_norm", LayerNorm::new(d, 1e-12, true)?)?
        .with("ffn", Residual::new(feed_forward))?
        .with("ffn_norm", LayerNorm::new(d, 1e-12, true)?)?;
    model.set_training(false);
    let x = Tensor::random_normal(&[8, 128, d], 0.0, 1.0, &mut Rng::new(SEED + 5));
    Ok((model, x))
}

/// W4 train-step: W1 (base frozen, every LoRA A and B trainable), its
/// input, and the fixed MSE target `[64, 1024]`. One step is SGD with
/// [`W4_LR`].
///
/// # Errors
/// Never for these sizes.
pub fn w4<T: Scalar>() -> Result<(Sequential<T>, Tensor<T>, Tensor<T>)> {
    let (model, x) = w1()?;
    let target = Tensor::random_normal(&[64, 1024], 0.0, 1.0, &mut Rng::new(SEED + 6));
    Ok((model, x, target))
}

/// W4's SGD learning rate.
pub const W4_LR: f64 = 1e-3;

/// FLOPs of one W1 forward: 2·M·N·K per product, LoRA products included
/// (`merged` counts the base products only).
pub fn w1_flops(merged: bool) -> f64 {
    let (m, n, k, r) = (64.0, 1024.0, 1024.0, 16.0);
    let base = 2.0 * m * n * k;
    let lora = 2.0 * m * r * k + 2.0 * m * n * r;
    4.0 * if merged { base } else { base + lora }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_flop_counts_match_workloads_md() {
        // WORKLOADS.md: 553.6 MFLOP unmerged, 536.9 merged.
        assert!((w1_flops(false) / 1e6 - 553.6).abs() < 0.1);
        assert!((w1_flops(true) / 1e6 - 536.9).abs() < 0.1);
    }

    #[test]
    fn workloads_have_the_documented_shapes() {
        let (mut m, x) = w2::<f32>().unwrap();
        assert_eq!(m.forward_float(&x).unwrap().shape(), &[1, 10]);
        assert_eq!(
            m.layer_paths().iter().filter(|p| !p.contains('.')).count(),
            3
        );
        let adapter = m.child("fc0").unwrap().as_lora_adapter().unwrap();
        assert_eq!((adapter.rank(), adapter.scaling()), (4, 2.0));
        assert!(adapter
            .lora_layer()
            .b()
            .value()
            .to_vec()
            .iter()
            .all(|&v| v != 0.0));
    }

    #[test]
    fn w3_has_adapters_on_query_and_value_only() {
        let (m, x) = w3::<f32>().unwrap();
        assert_eq!(x.shape(), &[8, 128, 384]);
        for (path, lora) in [
            ("query", true),
            ("key", false),
            ("value", true),
            ("output", false),
        ] {
            let child = m.child(&format!("attn.inner.{path}")).unwrap();
            assert_eq!(
                child.as_lora_adapter().map(|a| a.rank()),
                lora.then_some(8),
                "{path}"
            );
        }
    }
}
