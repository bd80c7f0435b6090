//! Dense: `y = act(x·W + b)`, with the pre-activation exposed, and
//! FullyConnected, its activation-free form.
//!
//! Shapes: `x` is `[.., in]` (any number of leading axes), `W` (`weight`)
//! is `in × out`, `b` (`bias`, optional) is `[out]`, `y` is `[.., out]`.
//! PyTorch's `nn.Linear` stores its weight `out × in`: load it transposed.
//!
//! The pre-activation `x·W + b` is available on its own
//! ([`Dense::forward_pre`], [`Dense::backward_pre`]) so that a LoRA adapter
//! can add its low-rank delta before the activation, which is what makes a
//! merged adapter exact.

use crate::activation::Activation;
use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{weight_diagnostics, Diagnostics, Input, Inputs, Layer, Weight};
use crate::{Error, Result, Rng, Tensor};
use cranelora_graph::{NodeId, Op};
use cranelora_kernels::Scalar;

/// A dense (affine) layer with an optional activation.
#[derive(Clone, Debug)]
pub struct Dense<T> {
    weight: Weight<T>,
    bias: Option<Weight<T>>,
    activation: Activation,
    training: bool,
    /// Training-mode cache: the input and the pre-activation.
    cache: Option<(Tensor<T>, Tensor<T>)>,
    /// Input of the last training-mode `forward_pre` (for `backward_pre`).
    pre_input: Option<Tensor<T>>,
}

impl<T: Scalar> Dense<T> {
    /// A layer initialized as PyTorch's `nn.Linear`: `W` and `b` uniform in
    /// `±1/√in` (Kaiming-uniform with a = √5).
    ///
    /// # Errors
    /// [`Error::Config`] if `inputs` or `outputs` is zero.
    pub fn new(
        inputs: usize,
        outputs: usize,
        bias: bool,
        activation: Activation,
        rng: &mut Rng,
    ) -> Result<Self> {
        if inputs == 0 || outputs == 0 {
            return Err(Error::config(
                "Dense",
                format!("sizes must be positive, got {inputs}→{outputs}"),
            ));
        }
        let bound = 1.0 / (inputs as f64).sqrt();
        let w = Tensor::random_uniform(&[inputs, outputs], -bound, bound, rng);
        let b = bias.then(|| Tensor::random_uniform(&[outputs], -bound, bound, rng));
        Self::from_weights(w, b, activation)
    }

    /// A layer with the given weights: `weight` is `in × out`, `bias` `[out]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `weight` is not 2-D with positive sizes or `bias`
    /// does not have `out` elements.
    pub fn from_weights(
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
        activation: Activation,
    ) -> Result<Self> {
        let s = weight.shape();
        if s.len() != 2 || s[0] == 0 || s[1] == 0 {
            return Err(Error::shape(
                "Dense",
                "weight",
                "[in, out] with in, out > 0",
                s,
            ));
        }
        if let Some(b) = &bias {
            if b.shape() != [s[1]] {
                return Err(Error::shape(
                    "Dense",
                    "bias",
                    format!("[{}]", s[1]),
                    b.shape(),
                ));
            }
        }
        Ok(Self {
            weight: Weight::new("weight", weight),
            bias: bias.map(|b| Weight::new("bias", b)),
            activation,
            training: true,
            cache: None,
            pre_input: None,
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.value().shape()[0]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.value().shape()[1]
    }

    /// The activation applied after the affine map.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The `in × out` weight.
    pub fn weight(&self) -> &Weight<T> {
        &self.weight
    }

    /// The `in × out` weight, mutably.
    pub fn weight_mut(&mut self) -> &mut Weight<T> {
        &mut self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Weight<T>> {
        self.bias.as_ref()
    }

    /// The bias, mutably, if any.
    pub fn bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.bias.as_mut()
    }

    fn check_input(&self, x: &Tensor<T>) -> Result<()> {
        if x.ndim() == 0 || x.shape()[x.ndim() - 1] != self.in_features() {
            return Err(Error::shape(
                "Dense",
                "input",
                format!("[.., {}]", self.in_features()),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// The pre-activation `x·W + b`; caches `x` in training mode for [`Dense::backward_pre`].
    ///
    /// # Errors
    /// [`Error::Shape`] if the last axis of `x` is not `in`.
    pub fn forward_pre(&mut self, x: &Tensor<T>) -> Result<Tensor<T>> {
        self.check_input(x)?;
        let mut y = x.matmul(self.weight.value())?;
        if let Some(b) = &self.bias {
            y.add_assign(b.value())?;
        }
        self.pre_input = self.training.then(|| x.clone());
        Ok(y)
    }

    /// Backpropagates ∂L/∂pre through `x·W + b`: accumulates ∂L/∂W = xᵀ·g and
    /// ∂L/∂b = Σ g (when trainable), returns ∂L/∂x = g·Wᵀ.
    ///
    /// # Errors
    /// [`Error::NoForwardCache`] without a training-mode `forward_pre`, or a
    /// gradient whose shape is not `[.., out]` matching the input.
    pub fn backward_pre(&mut self, grad_pre: &Tensor<T>) -> Result<Tensor<T>> {
        let x = self
            .pre_input
            .as_ref()
            .ok_or_else(|| Error::NoForwardCache {
                path: String::new(),
                kind: "Dense".into(),
            })?;
        let mut expected = x.shape().to_vec();
        *expected
            .last_mut()
            .expect("internal: input was checked to have an axis") = self.out_features();
        if grad_pre.shape() != expected.as_slice() {
            return Err(Error::shape(
                "Dense",
                "output gradient",
                format!("{expected:?}"),
                grad_pre.shape(),
            ));
        }
        let rows = x.len() / self.in_features();
        let g2 = grad_pre.reshape(&[rows, self.out_features()])?;
        if self.weight.trainable() {
            let x2 = x.reshape(&[rows, self.in_features()])?;
            self.weight.accumulate_grad(&x2.t()?.matmul(&g2)?)?;
        }
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            b.accumulate_grad(&g2.sum_axes(&[0], false)?)?;
        }
        let dx = g2.matmul(&self.weight.value().t()?)?;
        dx.reshape(x.shape())
    }

    /// `act(x·W + b)` as one GEMM whose epilogue adds the bias and applies
    /// the activation to each block of the output while it is in cache
    /// (eval mode: the pre-activation is not kept). ReLU stays a separate
    /// pass, as [`Activation::apply_inplace`] defines it (NaN → 0).
    fn forward_fused(&self, x: &Tensor<T>) -> Result<Tensor<T>> {
        use cranelora_kernels::gemm::{self, Epilogue, MatMut, MatRef, Rhs};
        self.check_input(x)?;
        let (i, o) = (self.in_features(), self.out_features());
        let rows = x.len() / i;
        let contiguous =
            |t: &Tensor<T>| t.as_slice().is_none().then(|| t.clone().into_contiguous());
        let (xc, wc) = (contiguous(x), contiguous(self.weight.value()));
        let xt = xc.as_ref().unwrap_or(x);
        let wt = wc.as_ref().unwrap_or(self.weight.value());
        let xs = xt.as_slice().expect("internal: contiguous tensor");
        let ws = wt.as_slice().expect("internal: contiguous tensor");
        let bias_copy;
        let bias = match &self.bias {
            None => None,
            Some(b) => Some(match b.value().as_slice() {
                Some(s) => s,
                None => {
                    bias_copy = b.value().to_vec();
                    &bias_copy[..]
                }
            }),
        };
        let activation = kernel_activation(self.activation);
        let ep = Epilogue {
            bias,
            activation,
            ..Epilogue::none()
        };
        let mut out = vec![T::zero(); rows * o];
        let mut work = vec![T::zero(); gemm::workspace_len::<T>(rows, o, i, false)];
        gemm::gemm_ep(
            T::one(),
            MatRef::new(xs, rows, i)?,
            Rhs::Mat(MatRef::new(ws, i, o)?),
            T::zero(),
            MatMut::new(&mut out, rows, o)?,
            &mut work,
            &ep,
        )?;
        let mut shape = x.shape().to_vec();
        *shape
            .last_mut()
            .expect("internal: input was checked to have an axis") = o;
        let mut y = Tensor::from_vec(out, &shape)?;
        if activation.is_none() {
            self.activation.apply_inplace(&mut y);
        }
        Ok(y)
    }

    /// Appends the pre-activation `x·W + b` to the graph (nodes
    /// `<path>.matmul` and `<path>.bias_add`): [`Dense::forward_pre`] as a graph.
    ///
    /// # Errors
    /// [`Error::Shape`] if the last axis of `x` is not `in`.
    pub fn export_pre(&self, ctx: &mut ExportContext<'_>, x: NodeId) -> Result<NodeId> {
        let dims = ctx.dims(x)?;
        if dims.last() != Some(&self.in_features()) {
            let expected = format!("[.., {}]", self.in_features());
            return Err(Error::shape("Dense", "input", expected, &dims));
        }
        let w = ctx.weight(&self.weight, false)?;
        let mut y = ctx.named("matmul").matmul(x, w)?;
        if let Some(b) = &self.bias {
            let b = ctx.weight(b, false)?;
            y = ctx.named("bias_add").add(y, b)?;
        }
        Ok(y)
    }
}

/// The GEMM-epilogue form of `act` (`None` for the identity).
fn kernel_activation(act: Activation) -> Option<cranelora_kernels::gemm::Activation> {
    use cranelora_kernels::gemm::Activation as Ep;
    use cranelora_kernels::math::Func;
    let f = match act {
        Activation::Identity => return None,
        Activation::Relu => return Some(Ep::Relu),
        Activation::GeluErf => Func::GeluErf,
        Activation::GeluTanh => Func::GeluTanh,
        Activation::Tanh => Func::Tanh,
        Activation::Sigmoid => Func::Sigmoid,
        Activation::Silu => Func::Silu,
    };
    Some(Ep::Func(f))
}

impl<T: Scalar> Layer<T> for Dense<T> {
    fn kind(&self) -> &'static str {
        "Dense"
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, self.kind()).float(0)?;
        if !self.training {
            // Nothing to cache for backward: one GEMM with the bias and the
            // activation in its epilogue.
            self.cache = None;
            self.pre_input = None;
            return self.forward_fused(x);
        }
        let pre = self.forward_pre(x)?;
        let y = self.activation.apply(&pre);
        self.cache = self.training.then(|| (pre, y.clone()));
        Ok(y)
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let (pre, y) = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
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
        let grad_pre = self.activation.backward(pre, y, grad_output)?;
        self.backward_pre(&grad_pre).map(Some)
    }

    fn weights(&self) -> Vec<&Weight<T>> {
        std::iter::once(&self.weight)
            .chain(self.bias.as_ref())
            .collect()
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        std::iter::once(&mut self.weight)
            .chain(self.bias.as_mut())
            .collect()
    }

    fn is_training(&self) -> bool {
        self.training
    }

    fn set_own_training(&mut self, training: bool) {
        self.training = training;
        if !training {
            self.reset_own_state();
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
        self.pre_input = None;
    }

    fn as_lora_target(&self) -> Option<&dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn as_lora_target_mut(&mut self) -> Option<&mut dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn supports_jit(&self) -> bool {
        let act = self.activation.graph_op();
        export::lowerable(&[Op::MatMul, Op::Add]) && export::lowerable(act.as_slice())
    }

    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, self.kind()).float(0)?;
        let pre = self.export_pre(ctx, x)?;
        self.activation.export(ctx, pre)
    }

    fn diagnostics(&self) -> Diagnostics {
        let mut d = vec![
            ("kind".to_string(), self.kind().to_string()),
            (
                "shape".to_string(),
                format!("{}→{}", self.in_features(), self.out_features()),
            ),
            ("activation".to_string(), self.activation.name().to_string()),
        ];
        d.extend(weight_diagnostics(
            self.parameter_count(),
            self.total_parameter_count(),
            &self.weights(),
        ));
        d
    }
}

/// FullyConnected: the activation-free [`Dense`], `y = x·W + b`.
///
/// The seed library has both DenseLayer and FullyConnectedLayer; here they
/// share one implementation and differ only in that FullyConnected has no
/// activation (and reports its own kind), so code that must know "is this
/// layer purely affine" (e.g. LoRA merge) can tell from the type.
#[derive(Clone, Debug)]
pub struct FullyConnected<T>(Dense<T>);

impl<T: Scalar> FullyConnected<T> {
    /// A layer initialized as PyTorch's `nn.Linear`.
    ///
    /// # Errors
    /// [`Error::Config`] if a size is zero.
    pub fn new(inputs: usize, outputs: usize, bias: bool, rng: &mut Rng) -> Result<Self> {
        Dense::new(inputs, outputs, bias, Activation::Identity, rng)
            .map(Self)
            .map_err(|e| rename(e, "FullyConnected"))
    }

    /// A layer with the given `in × out` weight and `[out]` bias.
    ///
    /// # Errors
    /// As [`Dense::from_weights`].
    pub fn from_weights(weight: Tensor<T>, bias: Option<Tensor<T>>) -> Result<Self> {
        Dense::from_weights(weight, bias, Activation::Identity)
            .map(Self)
            .map_err(|e| rename(e, "FullyConnected"))
    }

    /// The underlying affine map.
    pub fn dense(&self) -> &Dense<T> {
        &self.0
    }

    /// The underlying affine map, mutably.
    pub fn dense_mut(&mut self) -> &mut Dense<T> {
        &mut self.0
    }
}

fn rename(e: Error, kind: &str) -> Error {
    match e {
        Error::Shape {
            path,
            what,
            expected,
            actual,
            ..
        } => Error::Shape {
            path,
            kind: kind.into(),
            what,
            expected,
            actual,
        },
        Error::Config { path, message, .. } => Error::Config {
            path,
            kind: kind.into(),
            message,
        },
        other => other,
    }
}

impl<T: Scalar> Layer<T> for FullyConnected<T> {
    fn kind(&self) -> &'static str {
        "FullyConnected"
    }
    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        self.0
            .forward(inputs)
            .map_err(|e| rename(e, "FullyConnected"))
    }
    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        self.0
            .backward(grad_output)
            .map_err(|e| rename(e, "FullyConnected"))
    }
    fn weights(&self) -> Vec<&Weight<T>> {
        self.0.weights()
    }
    fn weights_mut(&mut self) -> Vec<&mut Weight<T>> {
        self.0.weights_mut()
    }
    fn is_training(&self) -> bool {
        self.0.is_training()
    }
    fn set_own_training(&mut self, training: bool) {
        self.0.set_own_training(training)
    }
    fn reset_own_state(&mut self) {
        self.0.reset_own_state()
    }
    fn as_lora_target(&self) -> Option<&dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn as_lora_target_mut(&mut self) -> Option<&mut dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }
    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }
    fn supports_jit(&self) -> bool {
        self.0.supports_jit()
    }
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        self.0
            .export_graph(ctx, inputs)
            .map_err(|e| rename(e, "FullyConnected"))
    }
    fn diagnostics(&self) -> Diagnostics {
        let mut d = self.0.diagnostics();
        d[0].1 = self.kind().to_string();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_tensor_close, check_gradients, GradCheck};

    fn dense(act: Activation, bias: bool) -> Dense<f64> {
        Dense::new(4, 3, bias, act, &mut Rng::new(1)).unwrap()
    }

    #[test]
    fn forward_is_x_w_plus_b_then_activation() {
        let w = Tensor::from_vec(vec![1.0, -1.0, 0.5, 2.0, 0.0, 1.0], &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![0.5, 0.5, -4.0], &[3]).unwrap();
        let mut d = Dense::from_weights(w, Some(b), Activation::Relu).unwrap();
        let x = Tensor::from_vec(vec![1.0, 2.0], &[1, 2]).unwrap();
        // x·W = [1+4, -1+0, 0.5+2] = [5, -1, 2.5]; + b = [5.5, -0.5, -1.5]; relu.
        let expected = Tensor::from_vec(vec![5.5, 0.0, 0.0], &[1, 3]).unwrap();
        assert_tensor_close(&d.forward_float(&x).unwrap(), &expected, 0.0, 0.0);
    }

    /// The eval-mode forward (one GEMM with bias and activation in its
    /// epilogue) equals the training-mode one (matmul, bias pass, activation pass).
    fn check_fused_forward<T: Scalar>(tol: f64) {
        let acts = [
            Activation::Identity,
            Activation::Relu,
            Activation::GeluErf,
            Activation::GeluTanh,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Silu,
        ];
        let x = Tensor::<T>::random_normal(&[2, 9, 37], 0.0, 1.0, &mut Rng::new(5));
        for act in acts {
            for bias in [true, false] {
                let mut d = Dense::<T>::new(37, 70, bias, act, &mut Rng::new(6)).unwrap();
                d.set_training(true);
                let unfused = d.forward_float(&x).unwrap();
                d.set_training(false);
                let fused = d.forward_float(&x).unwrap();
                assert_eq!(fused.shape(), [2, 9, 70]);
                assert_tensor_close(&fused, &unfused, tol, tol);
            }
        }
    }

    #[test]
    fn eval_forward_fuses_bias_and_activation_f32_f64() {
        check_fused_forward::<f32>(1e-5);
        check_fused_forward::<f64>(1e-13);
    }

    #[test]
    fn gradients_match_finite_differences_for_every_activation() {
        let acts = [
            Activation::Identity,
            Activation::Relu,
            Activation::GeluErf,
            Activation::GeluTanh,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Silu,
        ];
        for act in acts {
            for bias in [true, false] {
                let mut d = dense(act, bias);
                // Leading axes [2, 3] exercise the flattening of batch axes.
                let x = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut Rng::new(2));
                check_gradients(&mut d, &[Input::Float(&x)], GradCheck::default())
                    .unwrap_or_else(|m| panic!("{act:?} bias={bias}: {m}"));
            }
        }
    }

    #[test]
    fn frozen_weights_get_no_gradient() {
        let mut d = dense(Activation::Tanh, true);
        d.weight_mut().set_trainable(false);
        let x = Tensor::random_normal(&[5, 4], 0.0, 1.0, &mut Rng::new(3));
        let y = d.forward_float(&x).unwrap();
        d.backward(&Tensor::ones(y.shape())).unwrap();
        assert!(d.weight().grad().to_vec().iter().all(|&g| g == 0.0));
        assert_eq!(d.parameter_count(), 3);
        assert_eq!(d.gradients().len(), 3);
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_layer_and_shapes() {
        let mut d = dense(Activation::Identity, true);
        let err = d.forward_float(&Tensor::zeros(&[2, 5])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("Dense") && msg.contains("[.., 4]") && msg.contains("[2, 5]"),
            "{msg}"
        );
        d.forward_float(&Tensor::zeros(&[2, 4])).unwrap();
        assert!(d.backward(&Tensor::zeros(&[2, 4])).is_err());
        assert!(Dense::<f32>::from_weights(
            Tensor::zeros(&[2, 3]),
            Some(Tensor::zeros(&[2])),
            Activation::Relu
        )
        .is_err());
        assert!(Dense::<f32>::new(0, 3, true, Activation::Relu, &mut Rng::new(0)).is_err());
    }

    #[test]
    fn eval_mode_caches_nothing() {
        let mut d = dense(Activation::Relu, true);
        d.set_training(false);
        let y = d.forward_float(&Tensor::ones(&[1, 4])).unwrap();
        assert!(matches!(d.backward(&y), Err(Error::NoForwardCache { .. })));
    }

    #[test]
    fn fully_connected_is_dense_without_activation() {
        let mut rng = Rng::new(4);
        let w = Tensor::<f32>::random_normal(&[3, 2], 0.0, 1.0, &mut rng);
        let mut fc = FullyConnected::from_weights(w.clone(), None).unwrap();
        let mut d = Dense::from_weights(w, None, Activation::Identity).unwrap();
        let x = Tensor::random_normal(&[4, 3], 0.0, 1.0, &mut rng);
        assert_eq!(fc.forward_float(&x).unwrap(), d.forward_float(&x).unwrap());
        assert_eq!(fc.kind(), "FullyConnected");
        let err = fc
            .forward_float(&Tensor::zeros(&[4, 2]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FullyConnected"), "{err}");
    }
}
