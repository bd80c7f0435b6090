//! Activation functions: the [`Activation`] kind shared by Dense and the
//! graph export, and [`ActivationLayer`], the standalone layer.
//!
//! Transcendental activations run through the shared vectorized kernels
//! (`cranelora_kernels::math`), so eager layers, the interpreter and the JIT
//! evaluate the same approximations.

use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer};
use crate::{Error, Result, Tensor};
use cranelora_graph::{NodeId, Op};
use cranelora_kernels::math::{self, Func};
use cranelora_kernels::Scalar;

/// An elementwise activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// f(x) = x
    #[default]
    Identity,
    /// f(x) = max(x, 0); f'(0) = 0
    Relu,
    /// f(x) = x·Φ(x) = x/2·(1 + erf(x/√2)) (PyTorch `gelu`, HF `gelu`)
    GeluErf,
    /// f(x) = x/2·(1 + tanh(√(2/π)·(x + 0.044715x³))) (HF `gelu_new`)
    GeluTanh,
    /// f(x) = tanh x
    Tanh,
    /// f(x) = 1/(1 + e⁻ˣ)
    Sigmoid,
    /// f(x) = x·σ(x) (also called swish)
    Silu,
}

impl Activation {
    /// The lowercase name (`relu`, `gelu_erf`, …).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
        }
    }

    /// The graph op computing `f`, or `None` for the identity.
    pub fn graph_op(self) -> Option<Op> {
        match self {
            Activation::Identity => None,
            Activation::Relu => Some(Op::Relu),
            Activation::GeluErf => Some(Op::Gelu),
            Activation::GeluTanh => Some(Op::GeluTanh),
            Activation::Tanh => Some(Op::Tanh),
            Activation::Sigmoid => Some(Op::Sigmoid),
            Activation::Silu => Some(Op::Silu),
        }
    }

    /// Appends `f(x)` to the graph as a node named `<path>.act` (the
    /// identity adds no node and returns `x`).
    ///
    /// # Errors
    /// A graph error if `x` is not a float node.
    pub fn export(self, ctx: &mut ExportContext<'_>, x: NodeId) -> Result<NodeId> {
        match self.graph_op() {
            None => Ok(x),
            Some(op) => Ok(ctx.named("act").push(op, &[x])?),
        }
    }

    /// `f(x)` for every element.
    pub fn apply<T: Scalar>(self, x: &Tensor<T>) -> Tensor<T> {
        let mut y = x.clone().into_contiguous();
        self.apply_inplace(&mut y);
        y
    }

    /// `x ← f(x)` in place.
    pub fn apply_inplace<T: Scalar>(self, x: &mut Tensor<T>) {
        match self {
            Activation::Identity => {}
            // max(x, 0) keeping NaN, as the graph's Relu (the spec) does.
            Activation::Relu => x.array_mut().mapv_inplace(|v| {
                if v > T::zero() || v.is_nan() {
                    v
                } else {
                    T::zero()
                }
            }),
            Activation::GeluErf => apply_func(Func::GeluErf, x),
            Activation::GeluTanh => apply_func(Func::GeluTanh, x),
            Activation::Tanh => apply_func(Func::Tanh, x),
            Activation::Sigmoid => apply_func(Func::Sigmoid, x),
            Activation::Silu => apply_func(Func::Silu, x),
        }
    }

    /// ∂L/∂x from ∂L/∂y, given the input `x` and the output `y = f(x)`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if the three shapes differ.
    pub fn backward<T: Scalar>(
        self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        grad: &Tensor<T>,
    ) -> Result<Tensor<T>> {
        if x.shape() != grad.shape() || y.shape() != grad.shape() {
            return Err(Error::Incompatible {
                path: String::new(),
                op: format!("{} backward", self.name()),
                lhs: x.shape().to_vec(),
                rhs: grad.shape().to_vec(),
            });
        }
        let one = T::one();
        let zip = |f: &dyn Fn(T, T) -> T| {
            let mut out = grad.clone();
            ndarray::Zip::from(out.array_mut())
                .and(x.array())
                .and(y.array())
                .for_each(|g, &x, &y| *g *= f(x, y));
            out
        };
        let with_kernel = |f: Func| {
            // f'(x) evaluated by the shared kernel, then multiplied in.
            let mut d = x.clone().into_contiguous();
            apply_func(f, &mut d);
            d.mul(grad)
        };
        Ok(match self {
            Activation::Identity => grad.clone(),
            Activation::Relu => zip(&|x, _| if x > T::zero() { one } else { T::zero() }),
            // tanh' = 1 − y²
            Activation::Tanh => zip(&|_, y| one - y * y),
            // σ' = y(1 − y)
            Activation::Sigmoid => zip(&|_, y| y * (one - y)),
            // (xσ)' = σ + xσ(1 − σ), with σ recomputed by the kernel
            Activation::Silu => {
                let mut s = x.clone().into_contiguous();
                apply_func(Func::Sigmoid, &mut s);
                let mut out = grad.clone();
                ndarray::Zip::from(out.array_mut())
                    .and(x.array())
                    .and(s.array())
                    .for_each(|g, &x, &s| *g *= s + x * s * (one - s));
                out
            }
            Activation::GeluErf => with_kernel(Func::GeluErfGrad)?,
            Activation::GeluTanh => with_kernel(Func::GeluTanhGrad)?,
        })
    }
}

/// `x ← f(x)` through the shared kernel (contiguous) or one point at a time.
fn apply_func<T: Scalar>(f: Func, x: &mut Tensor<T>) {
    match x.as_slice_mut() {
        Some(s) => math::apply_inplace(f, s),
        None => x.array_mut().mapv_inplace(|v| math::eval(f, v)),
    }
}

/// A standalone activation layer (the seed's ActivationLayer).
#[derive(Clone, Debug)]
pub struct ActivationLayer<T> {
    activation: Activation,
    training: bool,
    cache: Option<(Tensor<T>, Tensor<T>)>,
}

impl<T: Scalar> ActivationLayer<T> {
    /// A layer applying `activation` elementwise.
    pub fn new(activation: Activation) -> Self {
        Self {
            activation,
            training: true,
            cache: None,
        }
    }

    /// The activation function.
    pub fn activation(&self) -> Activation {
        self.activation
    }
}

impl<T: Scalar> Layer<T> for ActivationLayer<T> {
    fn kind(&self) -> &'static str {
        "Activation"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, self.kind()).float(0)?;
        let y = self.activation.apply(x);
        self.cache = self.training.then(|| (x.clone(), y.clone()));
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let (x, y) = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: self.kind().into(),
        })?;
        if grad_output.shape() != y.shape() {
            return Err(Error::shape(
                self.kind(),
                "output gradient",
                format!("{:?}", y.shape()),
                grad_output.shape(),
            ));
        }
        self.activation.backward(x, y, grad_output).map(Some)
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
        export::lowerable(self.activation.graph_op().as_slice())
    }

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, self.kind()).float(0)?;
        self.activation.export(ctx, x)
    }

    fn diagnostics(&self) -> crate::layer::Diagnostics {
        vec![
            ("kind".into(), self.kind().into()),
            ("activation".into(), self.activation.name().into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eager ReLU follows the graph's Relu (the spec): NaN stays NaN, −0 and
    /// negatives become +0, positives pass; in f32 and f64, alone and fused
    /// into an eval-mode Dense's GEMM epilogue.
    fn relu_keeps_nan<T: Scalar>() {
        let nan = T::nan();
        let x = Tensor::from_vec(
            vec![
                nan,
                -T::one(),
                -T::zero(),
                T::one(),
                T::infinity(),
                T::neg_infinity(),
            ],
            &[6],
        )
        .unwrap();
        let y = Activation::Relu.apply(&x);
        let y = y.array().iter().copied().collect::<Vec<T>>();
        assert!(y[0].is_nan());
        assert_eq!(
            &y[1..],
            &[T::zero(), T::zero(), T::one(), T::infinity(), T::zero()]
        );
        assert!(y[2].is_sign_positive());

        let mut dense = crate::layers::Dense::from_weights(
            Tensor::from_vec(vec![T::one(), -T::one()], &[1, 2]).unwrap(),
            None,
            Activation::Relu,
        )
        .unwrap();
        dense.set_training(false);
        let x = Tensor::from_vec(vec![nan, -T::one()], &[2, 1]).unwrap();
        let y = dense.forward(&[crate::layer::Input::Float(&x)]).unwrap();
        let y = y.array().iter().copied().collect::<Vec<T>>();
        assert!(y[0].is_nan() && y[1].is_nan(), "{y:?}");
        assert_eq!(&y[2..], &[T::zero(), T::one()]);
    }

    #[test]
    fn relu_keeps_nan_f32_f64() {
        relu_keeps_nan::<f32>();
        relu_keeps_nan::<f64>();
    }
}
