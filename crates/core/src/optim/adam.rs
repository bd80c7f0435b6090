//! Adam and AdamW, following PyTorch's `torch.optim.Adam` / `AdamW`:
//!
//! ```text
//! Adam:  g ← g + λw                       (L2 decay in the gradient)
//! AdamW: w ← w − lr·λ·w                   (decoupled decay)
//! m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
//! w ← w − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
//! ```

use super::{for_each_trainable, Optimizer, OptimizerState};
use crate::layer::Layer;
use crate::Result;
use cranelora_kernels::Scalar;

/// Adam, or AdamW with decoupled weight decay.
#[derive(Clone, Debug)]
pub struct Adam<T> {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    state: OptimizerState<T>,
}

impl<T: Scalar> Adam<T> {
    /// Adam with PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8, no decay.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            state: OptimizerState::default(),
        }
    }

    /// AdamW: decoupled weight decay λ (PyTorch's default λ is 0.01).
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            weight_decay,
            decoupled: true,
            ..Self::new(lr)
        }
    }

    /// Sets β₁ and β₂.
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.betas = (beta1, beta2);
        self
    }

    /// Sets ε.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the weight decay λ (L2 for Adam, decoupled for AdamW).
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

impl<T: Scalar> Optimizer<T> for Adam<T> {
    fn step(&mut self, model: &mut dyn Layer<T>) -> Result<()> {
        let t = self.state.step + 1;
        let c = |v: f64| T::from_f64_lossy(v);
        let (b1, b2) = self.betas;
        let bias1 = c(1.0 - b1.powi(t as i32));
        let bias2 = c(1.0 - b2.powi(t as i32));
        let (lr, eps, wd, decoupled) = (
            c(self.lr),
            c(self.eps),
            c(self.weight_decay),
            self.decoupled,
        );
        let (b1, b2, one) = (c(b1), c(b2), T::one());
        for_each_trainable(model, &mut self.state, 2, &mut |w, bufs| {
            let (m, v) = bufs.split_at_mut(1);
            let (m, v) = (m[0].array_mut(), v[0].array_mut());
            let grad = w.grad().array().clone();
            let value = w.value_mut().array_mut();
            ndarray::Zip::from(value)
                .and(&grad)
                .and(m)
                .and(v)
                .for_each(|w, &g, m, v| {
                    let g = if decoupled { g } else { g + wd * *w };
                    if decoupled {
                        *w -= lr * wd * *w;
                    }
                    *m = b1 * *m + (one - b1) * g;
                    *v = b2 * *v + (one - b2) * g * g;
                    *w -= lr * (*m / bias1) / ((*v / bias2).sqrt() + eps);
                });
        })?;
        self.state.step = t;
        Ok(())
    }

    fn state(&self) -> OptimizerState<T> {
        self.state.clone()
    }

    fn load_state(&mut self, state: OptimizerState<T>) {
        self.state = state;
    }
}
