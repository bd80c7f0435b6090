//! W2 written by hand: plain Rust, shapes as constants, fixed arrays, no
//! allocation in [`forward`], adapters unmerged — the practical limit for
//! shape-specialized code.

use anyhow::{ensure, Context, Result};
use cranelora_core::layers::Sequential;
use cranelora_core::Layer;

/// Input features.
pub const IN: usize = 64;
/// Hidden features.
pub const HIDDEN: usize = 64;
/// Output features.
pub const OUT: usize = 10;
/// LoRA rank.
pub const R: usize = 4;

/// One dense layer with a LoRA adapter: `W` is `I × O`, `A` `I × R`, `B` `R × O`.
#[derive(Clone, Debug)]
pub struct LoraDense<const I: usize, const O: usize> {
    w: [[f32; O]; I],
    b: [f32; O],
    a: [[f32; R]; I],
    bb: [[f32; O]; R],
    scaling: f32,
}

impl<const I: usize, const O: usize> LoraDense<I, O> {
    /// y = act(x·W + b + s·(x·A)·B), ReLU when `relu`.
    #[inline(always)]
    fn forward(&self, x: &[f32; I], relu: bool, y: &mut [f32; O]) {
        *y = self.b;
        let mut xa = [0.0f32; R];
        for ((xi, wrow), arow) in x.iter().zip(&self.w).zip(&self.a) {
            for (yo, wo) in y.iter_mut().zip(wrow) {
                *yo += xi * wo;
            }
            for (t, ar) in xa.iter_mut().zip(arow) {
                *t += xi * ar;
            }
        }
        for (t, brow) in xa.iter().zip(&self.bb) {
            let t = self.scaling * t;
            for (yo, bo) in y.iter_mut().zip(brow) {
                *yo += t * bo;
            }
        }
        if relu {
            for v in y.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }

    fn from_layer(model: &Sequential<f32>, path: &str) -> Result<Self> {
        let adapter = model
            .child(path)?
            .as_lora_adapter()
            .with_context(|| format!("{path} is not a LoRA adapter"))?;
        let base = adapter.base_layer().weights();
        ensure!(base.len() == 2, "{path}: expected a weight and a bias");
        let lora = adapter.lora_layer();
        let mut l = Self {
            w: [[0.0; O]; I],
            b: [0.0; O],
            a: [[0.0; R]; I],
            bb: [[0.0; O]; R],
            scaling: lora.scaling(),
        };
        fill(&mut l.w, &base[0].value().to_vec(), path)?;
        fill(
            std::slice::from_mut(&mut l.b),
            &base[1].value().to_vec(),
            path,
        )?;
        fill(&mut l.a, &lora.a().value().to_vec(), path)?;
        fill(&mut l.bb, &lora.b().value().to_vec(), path)?;
        Ok(l)
    }
}

fn fill<const N: usize>(rows: &mut [[f32; N]], v: &[f32], path: &str) -> Result<()> {
    ensure!(
        v.len() == rows.len() * N,
        "{path}: a weight has {} values, expected {}",
        v.len(),
        rows.len() * N
    );
    for (row, chunk) in rows.iter_mut().zip(v.chunks_exact(N)) {
        row.copy_from_slice(chunk);
    }
    Ok(())
}

/// W2's weights in fixed arrays.
#[derive(Clone, Debug)]
pub struct W2Weights {
    fc0: LoraDense<IN, HIDDEN>,
    fc1: LoraDense<HIDDEN, HIDDEN>,
    fc2: LoraDense<HIDDEN, OUT>,
}

impl W2Weights {
    /// Copies the weights of W2's model (`workloads::w2`).
    ///
    /// # Errors
    /// If the model is not W2 (missing adapters, other shapes).
    pub fn from_model(model: &Sequential<f32>) -> Result<Box<Self>> {
        Ok(Box::new(Self {
            fc0: LoraDense::from_layer(model, "fc0")?,
            fc1: LoraDense::from_layer(model, "fc1")?,
            fc2: LoraDense::from_layer(model, "fc2")?,
        }))
    }
}

/// W2's forward, batch 1: 64 → 64 (ReLU) → 64 (ReLU) → 10.
#[inline(never)]
pub fn forward(w: &W2Weights, x: &[f32; IN], y: &mut [f32; OUT]) {
    let mut h0 = [0.0f32; HIDDEN];
    let mut h1 = [0.0f32; HIDDEN];
    w.fc0.forward(x, true, &mut h0);
    w.fc1.forward(&h0, true, &mut h1);
    w.fc2.forward(&h1, false, y);
}
