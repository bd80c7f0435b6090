//! LayerNorm over the last axis, as PyTorch's `nn.LayerNorm(dim)`.
//!
//! Shapes: `x` is `[.., dim]`, `weight` (γ) and `bias` (β) are `[dim]`
//! (present with `elementwise_affine`), `y` is `[.., dim]`. Each row is
//! normalized by its own mean and *biased* variance (divided by `dim`):
//!
//! ```text
//! μ = mean(x),  σ² = mean((x − μ)²),  x̂ = (x − μ)/√(σ² + ε),  y = γ ⊙ x̂ + β
//! ```
//!
//! Backward, per row with `ĝ = γ ⊙ g` and `r = 1/√(σ² + ε)`:
//! `∂x = r·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))`, `∂γ = Σ_rows g ⊙ x̂`, `∂β = Σ_rows g`.

use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer, Weight};
use crate::{Error, Result, Tensor};
use cranelora_graph::{NodeId, Op};
use cranelora_kernels::math::reduce;
use cranelora_kernels::Scalar;

const KIND: &str = "LayerNorm";

/// What `backward` needs: the normalized input and each row's `1/√(σ² + ε)`.
#[derive(Clone, Debug)]
struct Cache<T> {
    xhat: Tensor<T>,
    rstd: Vec<T>,
}

/// Layer normalization over the last axis.
#[derive(Clone, Debug)]
pub struct LayerNorm<T> {
    dim: usize,
    eps: f64,
    /// γ and β, when elementwise-affine.
    affine: Option<(Weight<T>, Weight<T>)>,
    training: bool,
    cache: Option<Cache<T>>,
}

impl<T: Scalar> LayerNorm<T> {
    /// A layer normalizing rows of `dim` values, with γ = 1 and β = 0 when
    /// `elementwise_affine` (PyTorch's initialization; its default `eps` is 1e-5).
    ///
    /// # Errors
    /// [`Error::Config`] if `dim` is zero or `eps` is negative or not finite.
    pub fn new(dim: usize, eps: f64, elementwise_affine: bool) -> Result<Self> {
        if dim == 0 {
            return Err(Error::config(KIND, "dim must be positive"));
        }
        let affine = elementwise_affine.then(|| (Tensor::ones(&[dim]), Tensor::zeros(&[dim])));
        Self::build(dim, eps, affine)
    }

    /// An affine layer with the given γ (`weight`) and β (`bias`), both `[dim]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the shapes are not `[dim]` with the same positive
    /// `dim`; [`Error::Config`] for a bad `eps`.
    pub fn from_weights(weight: Tensor<T>, bias: Tensor<T>, eps: f64) -> Result<Self> {
        let dim = match weight.shape() {
            [d] if *d > 0 => *d,
            s => return Err(Error::shape(KIND, "weight", "[dim] with dim > 0", s)),
        };
        if bias.shape() != [dim] {
            return Err(Error::shape(KIND, "bias", format!("[{dim}]"), bias.shape()));
        }
        Self::build(dim, eps, Some((weight, bias)))
    }

    fn build(dim: usize, eps: f64, affine: Option<(Tensor<T>, Tensor<T>)>) -> Result<Self> {
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::config(
                KIND,
                format!("eps must be finite and ≥ 0, got {eps}"),
            ));
        }
        Ok(Self {
            dim,
            eps,
            affine: affine.map(|(w, b)| (Weight::new("weight", w), Weight::new("bias", b))),
            training: true,
            cache: None,
        })
    }

    /// The normalized shape, `[dim]` (PyTorch's `normalized_shape`).
    pub fn normalized_shape(&self) -> [usize; 1] {
        [self.dim]
    }

    /// The ε added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether the layer has γ and β.
    pub fn elementwise_affine(&self) -> bool {
        self.affine.is_some()
    }

    /// γ, `[dim]`, if affine.
    pub fn weight(&self) -> Option<&Weight<T>> {
        self.affine.as_ref().map(|(w, _)| w)
    }

    /// β, `[dim]`, if affine.
    pub fn bias(&self) -> Option<&Weight<T>> {
        self.affine.as_ref().map(|(_, b)| b)
    }

    fn check(&self, what: &str, t: &Tensor<T>) -> Result<()> {
        if t.shape().last() != Some(&self.dim) {
            return Err(Error::shape(
                KIND,
                what,
                format!("[.., {}]", self.dim),
                t.shape(),
            ));
        }
        Ok(())
    }

    /// x̂ (same shape as `x`) and each row's `1/√(σ² + ε)`.
    fn normalize(&self, x: &Tensor<T>) -> (Tensor<T>, Vec<T>) {
        let eps = T::from_f64_lossy(self.eps);
        let mut xhat = x.clone().into_contiguous();
        let data = xhat
            .as_slice_mut()
            .expect("internal: contiguous after into_contiguous");
        let mut rstd = Vec::with_capacity(data.len() / self.dim);
        for row in data.chunks_mut(self.dim) {
            // The kernels' vector row sums (reassociated), as the JIT's.
            let (mean, var) = reduce::moments(row);
            let r = T::one() / (var + eps).sqrt();
            row.iter_mut().for_each(|v| *v = (*v - mean) * r);
            rstd.push(r);
        }
        (xhat, rstd)
    }
}

impl<T: Scalar> Layer<T> for LayerNorm<T> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, KIND).float(0)?;
        self.check("input", x)?;
        let (xhat, rstd) = self.normalize(x);
        let y = match &self.affine {
            Some((w, b)) => xhat.mul(w.value())?.add(b.value())?,
            None => xhat.clone(),
        };
        self.cache = self.training.then_some(Cache { xhat, rstd });
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let cache = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: KIND.into(),
        })?;
        if grad_output.shape() != cache.xhat.shape() {
            return Err(Error::shape(
                KIND,
                "output gradient",
                format!("{:?}", cache.xhat.shape()),
                grad_output.shape(),
            ));
        }
        let xhat = &cache.xhat;
        // ĝ = γ ⊙ g: the gradient with respect to x̂.
        let mut ghat = match &mut self.affine {
            Some((w, b)) => {
                let rows: Vec<usize> = (0..xhat.ndim() - 1).collect();
                if w.trainable() {
                    w.accumulate_grad(&grad_output.mul(xhat)?.sum_axes(&rows, false)?)?;
                }
                if b.trainable() {
                    b.accumulate_grad(&grad_output.sum_axes(&rows, false)?)?;
                }
                grad_output.mul(w.value())?
            }
            None => grad_output.clone(),
        }
        .into_contiguous();
        let n = T::from_usize(self.dim).expect("internal: sizes fit in a float");
        let xs = xhat.as_slice().expect("internal: x̂ is contiguous");
        let gs = ghat
            .as_slice_mut()
            .expect("internal: contiguous after into_contiguous");
        let rows = gs.chunks_mut(self.dim).zip(xs.chunks(self.dim));
        for ((g, xr), &r) in rows.zip(&cache.rstd) {
            // ∂x = r·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))
            let mean_g = g.iter().copied().sum::<T>() / n;
            let mean_gx = g.iter().zip(xr).map(|(&a, &b)| a * b).sum::<T>() / n;
            for (gv, &xv) in g.iter_mut().zip(xr) {
                *gv = r * (*gv - mean_g - xv * mean_gx);
            }
        }
        Ok(Some(ghat))
    }

    fn weights(&self) -> Vec<&Weight<T>> {
        self.affine.iter().flat_map(|(w, b)| [w, b]).collect()
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        self.affine.iter_mut().flat_map(|(w, b)| [w, b]).collect()
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.cache = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        export::lowerable(&[Op::LayerNorm {
            axis: 0,
            eps: self.eps,
            affine: self.affine.is_some(),
        }])
    }

    /// One LayerNorm node over the last axis (`<path>.layer_norm`).
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, KIND).float(0)?;
        let dims = ctx.dims(x)?;
        if dims.last() != Some(&self.dim) {
            let expected = format!("[.., {}]", self.dim);
            return Err(Error::shape(KIND, "input", expected, &dims));
        }
        let affine = match &self.affine {
            Some((w, b)) => Some((ctx.weight(w, false)?, ctx.weight(b, false)?)),
            None => None,
        };
        let axis = dims.len() - 1;
        Ok(ctx
            .named("layer_norm")
            .layer_norm(x, affine, axis, self.eps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_tensor_close, check_gradients, GradCheck};
    use crate::Rng;

    #[test]
    fn forward_normalizes_each_row_with_biased_variance() {
        // Row [1, 2, 3, 6]: μ = 3, σ² = (4 + 1 + 0 + 9)/4 = 3.5.
        // Row [0, 0, 2, 2]: μ = 1, σ² = 1.
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 2.0, 2.0], &[2, 4]).unwrap();
        let g = Tensor::from_vec(vec![1.0, 2.0, -1.0, 0.5], &[4]).unwrap();
        let b = Tensor::from_vec(vec![0.0, 1.0, 0.0, -1.0], &[4]).unwrap();
        let eps = 1e-5;
        let mut ln = LayerNorm::from_weights(g.clone(), b.clone(), eps).unwrap();
        let r0 = 1.0 / (3.5f64 + eps).sqrt();
        let r1 = 1.0 / (1.0f64 + eps).sqrt();
        let xhat = vec![-2.0 * r0, -r0, 0.0, 3.0 * r0, -r1, -r1, r1, r1];
        let xhat = Tensor::from_vec(xhat, &[2, 4]).unwrap();
        let expected = xhat.mul(&g).unwrap().add(&b).unwrap();
        assert_tensor_close(&ln.forward_float(&x).unwrap(), &expected, 1e-14, 0.0);
        let mut plain = LayerNorm::<f64>::new(4, eps, false).unwrap();
        assert_tensor_close(&plain.forward_float(&x).unwrap(), &xhat, 1e-14, 0.0);
        let mut ln32 = LayerNorm::<f32>::from_weights(g.cast(), b.cast(), eps).unwrap();
        let y32 = ln32.forward_float(&x.cast()).unwrap();
        assert_tensor_close(&y32, &expected.cast(), 1e-6, 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_affine() {
        let mut rng = Rng::new(1);
        let x = Tensor::random_normal(&[2, 3, 5], 0.0, 1.0, &mut rng);
        let g = Tensor::random_normal(&[5], 1.0, 0.5, &mut rng);
        let b = Tensor::random_normal(&[5], 0.0, 0.5, &mut rng);
        let mut affine = LayerNorm::from_weights(g, b, 1e-5).unwrap();
        check_gradients(&mut affine, &[Input::Float(&x)], GradCheck::default()).unwrap();
        let mut plain = LayerNorm::<f64>::new(5, 1e-5, false).unwrap();
        assert_eq!(plain.parameter_count(), 0);
        check_gradients(&mut plain, &[Input::Float(&x)], GradCheck::default()).unwrap();
    }

    #[test]
    fn weights_are_gamma_then_beta_and_frozen_ones_get_no_gradient() {
        let mut ln = LayerNorm::<f64>::new(3, 1e-5, true).unwrap();
        let names: Vec<String> = ln.named_weights().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["weight", "bias"]);
        assert_eq!(ln.parameters(), vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        ln.weights_mut()[0].set_trainable(false);
        let x = Tensor::from_vec(vec![1.0, 2.0, 4.0], &[1, 3]).unwrap();
        let y = ln.forward_float(&x).unwrap();
        ln.backward(&Tensor::ones(y.shape())).unwrap();
        assert!(ln
            .weight()
            .unwrap()
            .grad()
            .to_vec()
            .iter()
            .all(|&v| v == 0.0));
        assert_eq!(ln.gradients(), vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_shapes_and_configuration_are_errors() {
        let mut ln = LayerNorm::<f32>::new(4, 1e-5, true).unwrap();
        let msg = ln
            .forward_float(&Tensor::zeros(&[2, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("LayerNorm") && msg.contains("[.., 4]"),
            "{msg}"
        );
        assert!(LayerNorm::<f32>::new(0, 1e-5, true).is_err());
        assert!(LayerNorm::<f32>::new(3, -1.0, true).is_err());
        let one = Tensor::<f32>::ones(&[3]);
        assert!(LayerNorm::from_weights(one, Tensor::zeros(&[2]), 1e-5).is_err());
        ln.forward_float(&Tensor::zeros(&[2, 4])).unwrap();
        assert!(ln.backward(&Tensor::zeros(&[4, 2])).is_err());
        ln.set_training(false);
        let y = ln.forward_float(&Tensor::zeros(&[2, 4])).unwrap();
        assert!(matches!(ln.backward(&y), Err(Error::NoForwardCache { .. })));
    }
}
