//! Optimizers over a model's trainable weights: SGD with momentum, Adam, AdamW.
//!
//! An optimizer keeps its per-weight state (momentum, moments) keyed by the
//! weight's full path (`fc1.weight`), so [`OptimizerState`] can be saved
//! and restored and stays meaningful if the model is rebuilt. Frozen weights
//! are skipped. A step reads the gradients accumulated by `backward`; it
//! does not clear them (call `Layer::zero_grad`).
//!
//! ```
//! use cranelora_core::{optim::{Optimizer, Sgd}, layers::Dense, Activation, Layer, Rng, Tensor};
//! let mut layer = Dense::<f32>::new(2, 1, true, Activation::Identity, &mut Rng::new(0)).unwrap();
//! let mut opt = Sgd::new(0.1).with_momentum(0.9);
//! let y = layer.forward_float(&Tensor::ones(&[1, 2])).unwrap();
//! layer.backward(&Tensor::ones(y.shape())).unwrap();
//! opt.step(&mut layer).unwrap();
//! assert_eq!(opt.state().step, 1);
//! ```

mod adam;
mod sgd;

pub use adam::Adam;
pub use sgd::Sgd;

use crate::layer::{Layer, Weight};
use crate::{Error, Result, Tensor};
use cranelora_kernels::Scalar;
use std::collections::BTreeMap;

/// An optimizer's saveable state: the step count and, per weight path, its buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState<T> {
    /// Steps taken.
    pub step: u64,
    /// Buffers per weight path (SGD: momentum; Adam: first and second moments).
    pub slots: BTreeMap<String, Vec<Tensor<T>>>,
}

impl<T> Default for OptimizerState<T> {
    fn default() -> Self {
        Self {
            step: 0,
            slots: BTreeMap::new(),
        }
    }
}

/// Updates a model's trainable weights from their gradients.
pub trait Optimizer<T: Scalar> {
    /// One update of every trainable weight of `model`.
    ///
    /// # Errors
    /// [`Error::Weight`] if restored state does not fit a weight's shape.
    fn step(&mut self, model: &mut dyn Layer<T>) -> Result<()>;

    /// The current state (a copy).
    fn state(&self) -> OptimizerState<T>;

    /// Replaces the state, e.g. with one saved by [`Optimizer::state`].
    fn load_state(&mut self, state: OptimizerState<T>);
}

/// An update of one weight given its optimizer buffers.
type SlotUpdate<'a, T> = dyn FnMut(&mut Weight<T>, &mut [Tensor<T>]) + 'a;

/// Runs `update(path, weight, slots)` on every trainable weight, creating
/// `n_slots` zero buffers for a weight seen for the first time and checking
/// restored buffers against the weight's shape.
fn for_each_trainable<T: Scalar>(
    model: &mut dyn Layer<T>,
    state: &mut OptimizerState<T>,
    n_slots: usize,
    update: &mut SlotUpdate<'_, T>,
) -> Result<()> {
    let mut err = None;
    model.for_each_weight_mut("", &mut |path, w| {
        if !w.trainable() || err.is_some() {
            return;
        }
        let slots = state
            .slots
            .entry(path.to_string())
            .or_insert_with(|| vec![Tensor::zeros(w.value().shape()); n_slots]);
        if slots.len() != n_slots || slots.iter().any(|s| s.shape() != w.value().shape()) {
            err = Some(Error::Weight {
                name: path.to_string(),
                problem: format!(
                    "optimizer state has {} buffers that do not fit shape {:?}",
                    slots.len(),
                    w.value().shape()
                ),
            });
            return;
        }
        update(w, slots);
    });
    err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Dense;
    use crate::testing::assert_close;
    use crate::{Activation, Rng};

    /// A 1×1 layer with weight `w` whose gradient after `backward` is exactly `g`
    /// (x = 1, so ∂L/∂w = x·g = g).
    fn unit(w: f64, g: f64) -> Dense<f64> {
        let mut d = Dense::from_weights(
            Tensor::from_vec(vec![w], &[1, 1]).unwrap(),
            None,
            Activation::Identity,
        )
        .unwrap();
        set_grad(&mut d, g);
        d
    }

    fn set_grad(d: &mut Dense<f64>, g: f64) {
        d.zero_grad();
        d.forward_float(&Tensor::ones(&[1, 1])).unwrap();
        d.backward(&Tensor::from_vec(vec![g], &[1, 1]).unwrap())
            .unwrap();
    }

    #[test]
    fn sgd_momentum_hand_computed() {
        // μ = 0.9, lr = 0.1, g = 1 twice: v1 = 1, w1 = 1 − 0.1; v2 = 1.9, w2 = w1 − 0.19.
        let mut d = unit(1.0, 1.0);
        let mut opt = Sgd::new(0.1).with_momentum(0.9);
        opt.step(&mut d).unwrap();
        assert_close(&d.parameters(), &[0.9], 1e-15, 0.0);
        opt.step(&mut d).unwrap();
        assert_close(&d.parameters(), &[0.71], 1e-15, 0.0);
    }

    #[test]
    fn adam_first_step_moves_by_lr_and_adamw_decays() {
        // Step 1: m̂ = g, v̂ = g², so w ← w − lr·g/(|g| + ε) ≈ w − lr·sign(g).
        let mut d = unit(1.0, 0.5);
        Adam::new(0.1).step(&mut d).unwrap();
        assert_close(
            &d.parameters(),
            &[1.0 - 0.1 * 0.5 / (0.5 + 1e-8)],
            1e-15,
            0.0,
        );
        // AdamW first decays w by lr·λ·w: 1 − 0.1·0.5 = 0.95, then the Adam step.
        let mut d = unit(1.0, 0.5);
        Adam::adamw(0.1, 0.5).step(&mut d).unwrap();
        assert_close(
            &d.parameters(),
            &[0.95 - 0.1 * 0.5 / (0.5 + 1e-8)],
            1e-15,
            0.0,
        );
        // Adam's L2 decay adds λw to the gradient: g = 0.5 + 0.5·1 = 1, still a unit step.
        let mut d = unit(1.0, 0.5);
        Adam::new(0.1).with_weight_decay(0.5).step(&mut d).unwrap();
        assert_close(&d.parameters(), &[1.0 - 0.1 / (1.0 + 1e-8)], 1e-15, 0.0);
    }

    #[test]
    fn restored_state_continues_exactly() {
        let grads = [0.3, -1.2, 0.7, 0.1, -0.4];
        let run = |split: Option<usize>| {
            let mut d =
                Dense::<f64>::new(1, 1, false, Activation::Identity, &mut Rng::new(1)).unwrap();
            let mut opt = Adam::adamw(0.05, 0.01);
            for (i, &g) in grads.iter().enumerate() {
                if split == Some(i) {
                    let saved = opt.state();
                    opt = Adam::adamw(0.05, 0.01);
                    opt.load_state(saved);
                }
                set_grad(&mut d, g);
                opt.step(&mut d).unwrap();
            }
            d.parameters()
        };
        assert_eq!(run(None), run(Some(3)));
    }

    #[test]
    fn frozen_weights_are_not_updated_and_bad_state_is_an_error() {
        let mut d = unit(1.0, 1.0);
        d.set_trainable(false);
        let mut opt = Sgd::new(0.1);
        opt.step(&mut d).unwrap();
        assert_eq!(d.weight().value().to_vec(), vec![1.0]);
        assert!(opt.state().slots.is_empty());
        let mut d = unit(1.0, 1.0);
        let mut opt = Adam::new(0.1);
        let mut bad = OptimizerState::default();
        bad.slots.insert(
            "weight".into(),
            vec![Tensor::zeros(&[2]), Tensor::zeros(&[2])],
        );
        opt.load_state(bad);
        let err = opt.step(&mut d).unwrap_err();
        assert!(
            matches!(&err, Error::Weight { name, .. } if name == "weight"),
            "{err}"
        );
    }
}
