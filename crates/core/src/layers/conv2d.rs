//! Conv2d: a 2-D convolution (cross-correlation, as PyTorch's `nn.Conv2d`)
//! over NCHW images, lowered to im2col and one GEMM per image.
//!
//! Shapes: `x` is `[N, C, H, W]`, `weight` is `[O, C, kh, kw]` (PyTorch's
//! layout, so PyTorch weights load as they are), `bias` (optional) is `[O]`,
//! `y` is `[N, O, oh, ow]` with `oh = (H + 2·ph − dh·(kh − 1) − 1) / sh + 1`
//! (and the same for the width).
//!
//! Per image, `cols = im2col(x)` is `(C·kh·kw) × (oh·ow)` and
//! `y = W · cols + b`, with `W` viewed as the `O × (C·kh·kw)` matrix. The
//! backward pass is `∂W += g · colsᵀ`, `∂b += Σ g`, `∂x = col2im(Wᵀ · g)`.

use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::{Input, Inputs, Layer, Weight};
use crate::{Error, Result, Rng, Tensor};
use cranelora_graph::{Conv2dParams, NodeId, Op, Shape};
use cranelora_kernels::gemm::{gemm_alloc, MatMut, MatRef, Rhs};
use cranelora_kernels::im2col::{col2im, im2col, Conv2dGeometry};
use cranelora_kernels::Scalar;

const KIND: &str = "Conv2d";

/// Stride, padding and dilation of a [`Conv2d`], each (vertical, horizontal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dOptions {
    /// Step between output positions; positive.
    pub stride: (usize, usize),
    /// Zeros added on each side of the input.
    pub padding: (usize, usize),
    /// Spacing between kernel taps; positive.
    pub dilation: (usize, usize),
}

impl Default for Conv2dOptions {
    /// Stride 1, no padding, dilation 1 (PyTorch's defaults).
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

impl From<Conv2dOptions> for Conv2dParams {
    /// The graph op's parameters: the same stride, padding and dilation.
    fn from(o: Conv2dOptions) -> Self {
        Conv2dParams {
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
        }
    }
}

/// What `backward` needs from a training-mode forward.
#[derive(Clone, Debug)]
struct Cache<T> {
    /// The geometry of one image.
    geom: Conv2dGeometry,
    /// Batch size.
    batch: usize,
    /// `batch` column matrices, each `(C·kh·kw) × (oh·ow)`, back to back.
    cols: Vec<T>,
}

/// A 2-D convolution layer over NCHW input.
#[derive(Clone, Debug)]
pub struct Conv2d<T> {
    weight: Weight<T>,
    bias: Option<Weight<T>>,
    options: Conv2dOptions,
    training: bool,
    cache: Option<Cache<T>>,
}

impl<T: Scalar> Conv2d<T> {
    /// A layer initialized as PyTorch's `nn.Conv2d`: weight and bias uniform
    /// in `±1/√(C·kh·kw)`.
    ///
    /// # Errors
    /// [`Error::Config`] if a channel count or kernel size is zero, or a
    /// stride or dilation is zero.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        let fan_in = in_channels * kernel.0 * kernel.1;
        if fan_in == 0 || out_channels == 0 {
            return Err(Error::config(
                KIND,
                format!(
                    "channels and kernel must be positive, got {in_channels}→{out_channels} \
                     with kernel {kernel:?}"
                ),
            ));
        }
        let bound = 1.0 / (fan_in as f64).sqrt();
        let shape = [out_channels, in_channels, kernel.0, kernel.1];
        let w = Tensor::random_uniform(&shape, -bound, bound, rng);
        let b = bias.then(|| Tensor::random_uniform(&[out_channels], -bound, bound, rng));
        Self::from_weights(w, b, options)
    }

    /// A layer with the given weights: `weight` is `[O, C, kh, kw]`, `bias` `[O]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `weight` is not 4-D with positive sizes or `bias`
    /// does not have `O` elements; [`Error::Config`] for a zero stride or dilation.
    pub fn from_weights(
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
        options: Conv2dOptions,
    ) -> Result<Self> {
        let s = weight.shape();
        if s.len() != 4 || s.contains(&0) {
            return Err(Error::shape(
                KIND,
                "weight",
                "[out, in, kh, kw] with positive sizes",
                s,
            ));
        }
        if let Some(b) = &bias {
            if b.shape() != [s[0]] {
                return Err(Error::shape(KIND, "bias", format!("[{}]", s[0]), b.shape()));
            }
        }
        let (st, dl) = (options.stride, options.dilation);
        if st.0 == 0 || st.1 == 0 || dl.0 == 0 || dl.1 == 0 {
            return Err(Error::config(
                KIND,
                format!("stride {st:?} and dilation {dl:?} must be positive"),
            ));
        }
        Ok(Self {
            weight: Weight::new("weight", weight),
            bias: bias.map(|b| Weight::new("bias", b)),
            options,
            training: true,
            cache: None,
        })
    }

    /// Input channels `C`.
    pub fn in_channels(&self) -> usize {
        self.weight.value().shape()[1]
    }

    /// Output channels `O`.
    pub fn out_channels(&self) -> usize {
        self.weight.value().shape()[0]
    }

    /// Kernel size `(kh, kw)`.
    pub fn kernel(&self) -> (usize, usize) {
        let s = self.weight.value().shape();
        (s[2], s[3])
    }

    /// Stride (vertical, horizontal).
    pub fn stride(&self) -> (usize, usize) {
        self.options.stride
    }

    /// Zero padding on each side (vertical, horizontal).
    pub fn padding(&self) -> (usize, usize) {
        self.options.padding
    }

    /// Dilation (vertical, horizontal).
    pub fn dilation(&self) -> (usize, usize) {
        self.options.dilation
    }

    /// Stride, padding and dilation together.
    pub fn options(&self) -> Conv2dOptions {
        self.options
    }

    /// The `[O, C, kh, kw]` weight.
    pub fn weight(&self) -> &Weight<T> {
        &self.weight
    }

    /// The `[O, C, kh, kw]` weight, mutably.
    pub fn weight_mut(&mut self) -> &mut Weight<T> {
        &mut self.weight
    }

    /// The `[O]` bias, if any.
    pub fn bias(&self) -> Option<&Weight<T>> {
        self.bias.as_ref()
    }

    /// The `[O]` bias, mutably, if any.
    pub fn bias_mut(&mut self) -> Option<&mut Weight<T>> {
        self.bias.as_mut()
    }

    /// The geometry of one image of `x`, checked.
    fn geometry(&self, s: &[usize]) -> Result<Conv2dGeometry> {
        let c = self.in_channels();
        if s.len() != 4 || s[1] != c {
            return Err(Error::shape(KIND, "input", format!("[N, {c}, H, W]"), s));
        }
        let geom = Conv2dGeometry {
            channels: c,
            height: s[2],
            width: s[3],
            kernel: self.kernel(),
            stride: self.options.stride,
            padding: self.options.padding,
            dilation: self.options.dilation,
        };
        geom.validate()
            .map_err(|e| Error::shape(KIND, "input", format!("[N, {c}, H, W] where {e}"), s))?;
        Ok(geom)
    }

    /// The output gradient's shape check against the cached forward.
    fn check_grad(&self, cache: &Cache<T>, g: &Tensor<T>) -> Result<()> {
        let (oh, ow) = cache.geom.output_size();
        let expected = [cache.batch, self.out_channels(), oh, ow];
        if g.shape() != expected {
            return Err(Error::shape(
                KIND,
                "output gradient",
                format!("{expected:?}"),
                g.shape(),
            ));
        }
        Ok(())
    }
}

/// Row-major contiguous elements of `t` (borrowed when already contiguous).
fn standard<T: Scalar>(t: &Tensor<T>) -> ndarray::CowArray<'_, T, ndarray::IxDyn> {
    t.array().as_standard_layout()
}

fn slice<'a, T>(a: &'a ndarray::CowArray<'_, T, ndarray::IxDyn>) -> &'a [T] {
    a.as_slice()
        .expect("internal: standard layout is contiguous")
}

impl<T: Scalar> Layer<T> for Conv2d<T> {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn forward(&mut self, inputs: &[Input<'_, T>]) -> Result<Tensor<T>> {
        let x = Inputs::new(inputs, KIND).float(0)?;
        let geom = self.geometry(x.shape())?;
        let (batch, o) = (x.shape()[0], self.out_channels());
        let (k, l) = (geom.col_rows(), geom.col_cols());
        let (xs, ws) = (standard(x), standard(self.weight.value()));
        let (xs, ws) = (slice(&xs), slice(&ws));
        let mut cols = vec![T::zero(); batch * k * l];
        let mut out = vec![T::zero(); batch * o * l];
        for n in 0..batch {
            let image = &xs[n * geom.image_len()..(n + 1) * geom.image_len()];
            let c = &mut cols[n * k * l..(n + 1) * k * l];
            im2col(&geom, image, c)?;
            // y_n (O × L) = W (O × K) · cols_n (K × L)
            gemm_alloc(
                T::one(),
                MatRef::new(ws, o, k)?,
                Rhs::Mat(MatRef::new(c, k, l)?),
                T::zero(),
                MatMut::new(&mut out[n * o * l..(n + 1) * o * l], o, l)?,
            )?;
        }
        if let Some(b) = &self.bias {
            for (row, &bv) in out.chunks_mut(l).zip(b.value().array().iter().cycle()) {
                row.iter_mut().for_each(|v| *v += bv);
            }
        }
        self.cache = self.training.then_some(Cache { geom, batch, cols });
        let (oh, ow) = geom.output_size();
        Tensor::from_vec(out, &[batch, o, oh, ow])
    }

    fn backward(&mut self, grad_output: &Tensor<T>) -> Result<Option<Tensor<T>>> {
        let cache = self.cache.as_ref().ok_or_else(|| Error::NoForwardCache {
            path: String::new(),
            kind: KIND.into(),
        })?;
        self.check_grad(cache, grad_output)?;
        let (geom, batch) = (cache.geom, cache.batch);
        let (o, k, l) = (self.out_channels(), geom.col_rows(), geom.col_cols());
        let gs = standard(grad_output);
        let gs = slice(&gs);
        if self.weight.trainable() {
            let mut dw = vec![T::zero(); o * k];
            for n in 0..batch {
                // ∂W (O × K) += g_n (O × L) · cols_nᵀ (L × K)
                gemm_alloc(
                    T::one(),
                    MatRef::new(&gs[n * o * l..(n + 1) * o * l], o, l)?,
                    Rhs::Mat(MatRef::new(&cache.cols[n * k * l..(n + 1) * k * l], k, l)?.t()),
                    T::one(),
                    MatMut::new(&mut dw, o, k)?,
                )?;
            }
            let dw = Tensor::from_vec(dw, self.weight.value().shape())?;
            self.weight.accumulate_grad(&dw)?;
        }
        if let Some(b) = self.bias.as_mut().filter(|b| b.trainable()) {
            // ∂b_o = Σ over images and positions of g
            b.accumulate_grad(&grad_output.sum_axes(&[0, 2, 3], false)?)?;
        }
        let ws = standard(self.weight.value());
        let ws = slice(&ws);
        let mut dx = vec![T::zero(); batch * geom.image_len()];
        let mut dcols = vec![T::zero(); k * l];
        for n in 0..batch {
            // ∂cols_n (K × L) = Wᵀ (K × O) · g_n (O × L), folded back by col2im
            gemm_alloc(
                T::one(),
                MatRef::new(ws, o, k)?.t(),
                Rhs::Mat(MatRef::new(&gs[n * o * l..(n + 1) * o * l], o, l)?),
                T::zero(),
                MatMut::new(&mut dcols, k, l)?,
            )?;
            let image = &mut dx[n * geom.image_len()..(n + 1) * geom.image_len()];
            col2im(&geom, &dcols, image)?;
        }
        let shape = [batch, geom.channels, geom.height, geom.width];
        Tensor::from_vec(dx, &shape).map(Some)
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
            self.cache = None;
        }
    }

    fn reset_own_state(&mut self) {
        self.cache = None;
    }

    fn clone_box(&self) -> Box<dyn Layer<T>> {
        Box::new(self.clone())
    }

    fn as_lora_target(&self) -> Option<&dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn as_lora_target_mut(&mut self) -> Option<&mut dyn crate::lora::LoraTarget<T>> {
        Some(self)
    }

    fn supports_jit(&self) -> bool {
        let reshape = Op::Reshape {
            shape: Shape::scalar(),
        };
        export::lowerable(&[Op::Conv2d(self.options.into()), reshape, Op::Add])
    }

    /// `conv2d(x, W)` (node `<path>.conv`), plus the bias as `[O, 1, 1]`
    /// (`<path>.bias_add`).
    fn export_graph(&self, ctx: &mut ExportContext<'_>, inputs: &[NodeInput]) -> Result<NodeId> {
        let x = NodeInputs::new(inputs, KIND).float(0)?;
        self.geometry(&ctx.dims(x)?)?;
        let w = ctx.weight(&self.weight, false)?;
        let mut y = ctx.named("conv").conv2d(x, w, self.options.into())?;
        if let Some(b) = &self.bias {
            let b = ctx.weight(b, false)?;
            let b = ctx
                .named("bias_reshape")
                .reshape(b, [self.out_channels(), 1, 1])?;
            y = ctx.named("bias_add").add(y, b)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_tensor_close, check_gradients, GradCheck};

    type Pair = (usize, usize);

    fn opts(stride: Pair, padding: Pair, dilation: Pair) -> Conv2dOptions {
        Conv2dOptions {
            stride,
            padding,
            dilation,
        }
    }

    /// Cross-correlation straight from its definition:
    /// `y[n,o,oy,ox] = b[o] + Σ_{c,i,j} W[o,c,i,j] · x[n, c, oy·s + i·d − p, ox·s + j·d − p]`.
    fn naive(conv: &Conv2d<f64>, x: &Tensor<f64>) -> Tensor<f64> {
        let (xs, w) = (x.array(), conv.weight().value().array());
        let (n, c, h, wd) = (xs.shape()[0], xs.shape()[1], xs.shape()[2], xs.shape()[3]);
        let (o, (kh, kw)) = (conv.out_channels(), conv.kernel());
        let (s, p, d) = (conv.stride(), conv.padding(), conv.dilation());
        let oh = (h + 2 * p.0 - d.0 * (kh - 1) - 1) / s.0 + 1;
        let ow = (wd + 2 * p.1 - d.1 * (kw - 1) - 1) / s.1 + 1;
        let mut y = ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[n, o, oh, ow]));
        for (idx, v) in y.indexed_iter_mut() {
            let (b, oc, oy, ox) = (idx[0], idx[1], idx[2], idx[3]);
            *v = conv.bias().map_or(0.0, |b| b.value().array()[[oc]]);
            for ci in 0..c {
                for i in 0..kh {
                    for j in 0..kw {
                        let yy = (oy * s.0 + i * d.0) as isize - p.0 as isize;
                        let xx = (ox * s.1 + j * d.1) as isize - p.1 as isize;
                        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < wd {
                            *v += w[[oc, ci, i, j]] * xs[[b, ci, yy as usize, xx as usize]];
                        }
                    }
                }
            }
        }
        Tensor::from_array(y)
    }

    #[test]
    fn forward_matches_direct_convolution_with_stride_padding_dilation() {
        let mut rng = Rng::new(1);
        let o = opts((2, 1), (1, 2), (2, 1));
        let mut conv = Conv2d::<f64>::new(2, 3, (3, 2), o, true, &mut rng).unwrap();
        let x = Tensor::random_normal(&[2, 2, 7, 5], 0.0, 1.0, &mut rng);
        let y = conv.forward_float(&x).unwrap();
        assert_eq!(y.shape(), &[2, 3, 3, 8]);
        assert_tensor_close(&y, &naive(&conv, &x), 1e-12, 0.0);
    }

    #[test]
    fn forward_f32_matches_f64() {
        let mut rng = Rng::new(2);
        let o = opts((2, 2), (1, 1), (2, 2));
        let conv = Conv2d::<f64>::new(2, 2, (2, 3), o, true, &mut rng).unwrap();
        let x = Tensor::random_normal(&[1, 2, 6, 7], 0.0, 1.0, &mut rng);
        let w = conv.weight().value().cast::<f32>();
        let b = conv.bias().map(|b| b.value().cast::<f32>());
        let mut conv32 = Conv2d::<f32>::from_weights(w, b, o).unwrap();
        let y32 = conv32.forward_float(&x.cast()).unwrap();
        assert_tensor_close(&y32, &naive(&conv, &x).cast(), 1e-5, 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences() {
        for bias in [true, false] {
            let mut rng = Rng::new(3);
            let o = opts((2, 1), (1, 1), (2, 1));
            let mut conv = Conv2d::<f64>::new(2, 3, (2, 3), o, bias, &mut rng).unwrap();
            let x = Tensor::random_normal(&[2, 2, 5, 4], 0.0, 1.0, &mut rng);
            check_gradients(&mut conv, &[Input::Float(&x)], GradCheck::default())
                .unwrap_or_else(|m| panic!("bias={bias}: {m}"));
        }
    }

    #[test]
    fn frozen_weight_gets_no_gradient_but_input_gradient_flows() {
        let mut rng = Rng::new(4);
        let mut conv =
            Conv2d::<f64>::new(1, 2, (2, 2), Conv2dOptions::default(), true, &mut rng).unwrap();
        conv.weight_mut().set_trainable(false);
        let x = Tensor::random_normal(&[1, 1, 3, 3], 0.0, 1.0, &mut rng);
        let y = conv.forward_float(&x).unwrap();
        let dx = conv.backward(&Tensor::ones(y.shape())).unwrap().unwrap();
        assert_eq!(dx.shape(), x.shape());
        assert!(conv.weight().grad().to_vec().iter().all(|&g| g == 0.0));
        assert_eq!(conv.gradients(), vec![4.0, 4.0]);
    }

    #[test]
    fn bad_geometry_and_shapes_are_errors_naming_conv2d() {
        let mut rng = Rng::new(5);
        let o = opts((1, 1), (0, 0), (2, 2));
        let mut conv = Conv2d::<f32>::new(2, 3, (3, 3), o, true, &mut rng).unwrap();
        let mut fails = |shape: &[usize], parts: &[&str]| {
            let msg = conv
                .forward_float(&Tensor::zeros(shape))
                .unwrap_err()
                .to_string();
            assert!(parts.iter().all(|p| msg.contains(p)), "{msg}");
        };
        // The dilated kernel is 5×5; a 4×6 input is too short.
        let too_short = [KIND, "[1, 2, 4, 6]", "larger than the padded input"];
        fails(&[1, 2, 4, 6], &too_short);
        fails(&[1, 3, 8, 8], &[KIND, "[N, 2, H, W]", "[1, 3, 8, 8]"]);
        fails(&[2, 8, 8], &[KIND, "[N, 2, H, W]", "[2, 8, 8]"]);
        let zero = opts((0, 1), (0, 0), (1, 1));
        assert!(matches!(
            Conv2d::<f32>::new(1, 1, (1, 1), zero, false, &mut rng),
            Err(Error::Config { .. })
        ));
        assert!(Conv2d::<f32>::new(1, 0, (1, 1), o, false, &mut rng).is_err());
        let w = Tensor::<f32>::zeros(&[3, 2, 1, 1]);
        assert!(Conv2d::from_weights(w, Some(Tensor::zeros(&[2])), o).is_err());
    }

    #[test]
    fn eval_mode_caches_nothing_and_grad_shape_is_checked() {
        let mut rng = Rng::new(6);
        let mut conv =
            Conv2d::<f64>::new(1, 1, (1, 1), Conv2dOptions::default(), true, &mut rng).unwrap();
        let x = Tensor::ones(&[1, 1, 2, 2]);
        conv.forward_float(&x).unwrap();
        assert!(conv.backward(&Tensor::ones(&[1, 1, 2, 3])).is_err());
        conv.set_training(false);
        let y = conv.forward_float(&x).unwrap();
        assert!(matches!(
            conv.backward(&y),
            Err(Error::NoForwardCache { .. })
        ));
    }
}
