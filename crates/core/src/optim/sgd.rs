//! SGD with optional momentum, Nesterov momentum and L2 weight decay,
//! following PyTorch's `torch.optim.SGD` (dampening 0):
//! `g ← g + λw; v ← μv + g; w ← w − lr·(nesterov ? g + μv : v)`.

use super::{for_each_trainable, Optimizer, OptimizerState};
use crate::layer::Layer;
use crate::Result;
use cranelora_kernels::Scalar;

/// Stochastic gradient descent.
#[derive(Clone, Debug)]
pub struct Sgd<T> {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    state: OptimizerState<T>,
}

impl<T: Scalar> Sgd<T> {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
            state: OptimizerState::default(),
        }
    }

    /// Sets the momentum μ.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Uses Nesterov momentum.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Sets the L2 weight decay λ (added to the gradient).
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Changes the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

impl<T: Scalar> Optimizer<T> for Sgd<T> {
    fn step(&mut self, model: &mut dyn Layer<T>) -> Result<()> {
        let c = |v: f64| T::from_f64_lossy(v);
        let (lr, mu, wd, nesterov) = (
            c(self.lr),
            c(self.momentum),
            c(self.weight_decay),
            self.nesterov,
        );
        let slots = usize::from(self.momentum != 0.0);
        for_each_trainable(model, &mut self.state, slots, &mut |w, bufs| {
            let mut g = w.grad().clone();
            if wd != T::zero() {
                g.array_mut()
                    .zip_mut_with(w.value().array(), |g, &w| *g += wd * w);
            }
            if let Some(v) = bufs.first_mut() {
                v.array_mut()
                    .zip_mut_with(g.array(), |v, &g| *v = mu * *v + g);
                if nesterov {
                    g.array_mut().zip_mut_with(v.array(), |g, &v| *g += mu * v);
                } else {
                    g = v.clone();
                }
            }
            w.value_mut()
                .array_mut()
                .zip_mut_with(g.array(), |w, &g| *w -= lr * g);
        })?;
        self.state.step += 1;
        Ok(())
    }

    fn state(&self) -> OptimizerState<T> {
        self.state.clone()
    }

    fn load_state(&mut self, state: OptimizerState<T>) {
        self.state = state;
    }
}
