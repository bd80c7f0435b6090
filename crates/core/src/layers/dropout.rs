//! Dropout: zeroes each element with probability `p` in training mode and
//! scales the rest by `1/(1−p)` (inverted dropout, as PyTorch); the identity
//! in eval mode. Masks come from the layer's own seeded generator, so a run
//! is reproducible. Exported as the identity (eval mode); training-mode
//! dropout is not exported.

use crate::export::{ExportContext, NodeInput, NodeInputs};
use crate::layer::{Diagnostics, Input, Inputs, Layer};
use crate::{Error, Result, Rng, Tensor};
use cranelora_graph::NodeId;
use cranelora_kernels::Scalar;

/// Inverted dropout with a seeded mask.
#[derive(Clone, Debug)]
pub struct Dropout<T> {
    p: f64,
    rng: Rng,
    training: bool,
    /// The scaled mask (0 or 1/(1−p)) of the last training-mode forward.
    mask: Option<Tensor<T>>,
}

impl<T: Scalar> Dropout<T> {
    /// Dropout with drop probability `p` in `[0, 1)`, masks drawn from `seed`.
    ///
    /// # Errors
    /// [`Error::Config`] if `p` is not in `[0, 1)`.
    pub fn new(p: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config(
                "Dropout",
                format!("probability {p} is not in [0, 1)"),
            ));
        }
        Ok(Self {
            p,
            rng: Rng::new(seed),
            training: true,
            mask: None,
        })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }
}

impl<T: Scalar> Layer<T> for Dropout<T> {
    fn kind(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, self.kind()).float(0)?;
        if !self.training {
            return Ok(x.clone());
        }
        let keep = T::from_f64_lossy(1.0 / (1.0 - self.p));
        let p = self.p;
        let rng = &mut self.rng;
        let mask =
            Tensor::from_array(
                x.array()
                    .map(|_| if rng.uniform() < p { T::zero() } else { keep }),
            );
        let y = x.mul(&mask)?;
        self.mask = Some(mask);
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let mask = self.mask.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: self.kind().into(),
        })?;
        if grad_output.shape() != mask.shape() {
            return Err(Error::shape(
                self.kind(),
                "output gradient",
                format!("{:?}", mask.shape()),
                grad_output.shape(),
            ));
        }
        // y = x ⊙ mask, so ∂L/∂x = ∂L/∂y ⊙ mask.
        grad_output.mul(mask).map(Some)
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.mask = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.mask = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    /// Emits no op: the graph is its input.
    fn supports_jit(&self) -> bool {
        true
    }

    /// The identity: exported graphs are eval-mode forwards, so training-mode
    /// dropout (a random mask per call) is not exported.
    fn export_graph(&self, _ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        NodeInputs::new(inputs, self.kind()).float(0)
    }

    fn diagnostics(&self) -> Diagnostics {
        vec![
            ("kind".into(), self.kind().into()),
            ("p".into(), self.p.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_mode_drops_and_rescales_eval_mode_is_identity() {
        let mut d = Dropout::<f64>::new(0.25, 7).unwrap();
        let x = Tensor::ones(&[100, 100]);
        let y = d.forward_float(&x).unwrap();
        let kept = y.to_vec().iter().filter(|&&v| v != 0.0).count();
        assert!(y.to_vec().iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        // 10 000 Bernoulli(0.75) draws: σ ≈ 43, so ±250 is far beyond noise.
        assert!((7_250..7_750).contains(&kept), "{kept}");
        d.set_training(false);
        assert_eq!(d.forward_float(&x).unwrap(), x);
    }

    #[test]
    fn backward_applies_the_same_mask() {
        // y = x ⊙ m, so ∂(Σ g ⊙ y)/∂x = g ⊙ m: the gradient is zero exactly
        // where the output was dropped and g/(1−p) elsewhere.
        let mut d = Dropout::<f64>::new(0.5, 3).unwrap();
        let x = Tensor::random_normal(&[8, 8], 0.0, 1.0, &mut Rng::new(1));
        let y = d.forward_float(&x).unwrap();
        let g = Tensor::random_normal(&[8, 8], 0.0, 1.0, &mut Rng::new(2));
        let dx = d.backward(&g).unwrap().unwrap();
        for ((&yv, &gv), &dv) in y.to_vec().iter().zip(&g.to_vec()).zip(&dx.to_vec()) {
            let expected = if yv == 0.0 { 0.0 } else { 2.0 * gv };
            assert_eq!(dv, expected);
        }
    }

    #[test]
    fn same_seed_same_masks_and_bad_p_is_an_error() {
        let x = Tensor::<f32>::ones(&[64]);
        let a = Dropout::new(0.3, 9).unwrap().forward_float(&x).unwrap();
        let b = Dropout::new(0.3, 9).unwrap().forward_float(&x).unwrap();
        assert_eq!(a, b);
        assert!(Dropout::<f32>::new(1.0, 0).is_err());
        assert!(Dropout::<f32>::new(-0.1, 0).is_err());
    }
}
