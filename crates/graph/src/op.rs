//! The closed set of graph operations and their metadata.
//!
//! [`Op`] is one flat enum: every `match` over it (interpreter, shape
//! inference, verifier, autodiff, lowering) is exhaustive, so a new op is a
//! compile error everywhere it must be handled. The set is closed under
//! differentiation: the vector-Jacobian product of every op is a small graph
//! of ops from this same set (e.g. Gather ↔ ScatterAdd, Conv2d →
//! Conv2dInputGrad + Conv2dWeightGrad, Gelu → GeluGrad, Max → comparisons
//! and Where), so autodiff never needs a new op.
//!
//! Conventions shared by all ops (details in `docs/graph-ir.md`):
//! - Operands of an op have equal dtypes unless stated; there is no implicit
//!   promotion (use [`Op::Cast`]).
//! - "Broadcasting" is numpy's: shapes are aligned on the right, and each
//!   pair of dims must be equal or one of them 1.
//! - Axes are `usize` in `0..rank` (no negative axes).
//! - Comparisons produce masks in the operands' dtype: 1 for true, 0 for
//!   false; NaN compares unequal to everything (so `Ne` is 1, the others 0).
//! - i64 arithmetic wraps (two's complement).

use crate::{DType, Shape, TensorData};
use cranelora_kernels::im2col::Conv2dGeometry;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The number of operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many.
    Fixed(usize),
    /// This many or more ([`Op::Concat`]).
    AtLeast(usize),
}

impl Arity {
    /// Whether `n` operands are acceptable.
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Fixed(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Fixed(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// The reduction of [`Op::Reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    /// Sum (0 over an empty axis); i64 wraps.
    Sum,
    /// Arithmetic mean (NaN over an empty axis); floats only.
    Mean,
    /// Maximum, propagating NaN (−∞, or `i64::MIN`, over an empty axis).
    Max,
}

impl ReduceKind {
    /// `sum`, `mean` or `max`.
    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "sum",
            ReduceKind::Mean => "mean",
            ReduceKind::Max => "max",
        }
    }
}

/// Stride, zero padding and dilation of a 2-D convolution, each (vertical, horizontal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output positions; positive.
    pub stride: (usize, usize),
    /// Zeros added on each side of the input.
    pub padding: (usize, usize),
    /// Spacing between kernel taps; positive.
    pub dilation: (usize, usize),
}

impl Default for Conv2dParams {
    /// Stride 1, no padding, dilation 1.
    fn default() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

impl Conv2dParams {
    /// The kernels' geometry for one `channels × height × width` image and a `kernel`-sized filter.
    pub fn geometry(
        &self,
        channels: usize,
        (height, width): (usize, usize),
        kernel: (usize, usize),
    ) -> Conv2dGeometry {
        Conv2dGeometry {
            channels,
            height,
            width,
            kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        }
    }
}

/// One graph operation. Operands are listed in order after the name; shapes
/// in brackets. Every op's output shape and dtype follow from its operands'
/// (inference lives in `shape.rs`), except Input and Parameter, which declare theirs.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Per-call data, the `i`-th value passed to `interpret` for the `i`-th graph input.
    Input {
        /// The input's name (also the node's name).
        name: String,
    },
    /// A tensor baked into the graph; shared behind `Arc`, so cloning a graph is cheap.
    Constant(Arc<TensorData>),
    /// A named weight whose value is bound at run time (`Bindings`).
    Parameter {
        /// The binding's name (also the node's name).
        name: String,
    },
    /// (a [..., m, k], b [..., k, n]) → [..., m, n]; batch dims broadcast; floats; rank ≥ 2.
    MatMul,
    /// a + b, broadcasting.
    Add,
    /// a − b, broadcasting.
    Sub,
    /// a · b, broadcasting.
    Mul,
    /// a / b, broadcasting; floats (IEEE: x/0 = ±∞, 0/0 = NaN).
    Div,
    /// max(a, b), broadcasting; NaN if either is NaN.
    Max,
    /// min(a, b), broadcasting; NaN if either is NaN.
    Min,
    /// a^b (`powf`), broadcasting; floats.
    Pow,
    /// Mask of a = b, broadcasting; 1/0 in the operands' dtype.
    Eq,
    /// Mask of a ≠ b, broadcasting; 1 where either is NaN.
    Ne,
    /// Mask of a < b, broadcasting.
    Lt,
    /// Mask of a ≤ b, broadcasting.
    Le,
    /// Mask of a > b, broadcasting.
    Gt,
    /// Mask of a ≥ b, broadcasting.
    Ge,
    /// (cond, a, b) → a where cond ≠ 0 (NaN is ≠ 0) else b; all three broadcast; cond any dtype.
    Where,
    /// −1, 0 or 1 by the sign of x (±0 → 0 with its sign kept, NaN → NaN).
    Sign,
    /// −x.
    Neg,
    /// max(x, 0), with relu(NaN) = NaN; floats.
    Relu,
    /// x·Φ(x) = x/2·(1 + erf(x/√2)), the exact GELU; floats.
    Gelu,
    /// x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the tanh GELU; floats.
    GeluTanh,
    /// d/dx of Gelu: Φ(x) + x·φ(x); floats.
    GeluGrad,
    /// d/dx of GeluTanh; floats.
    GeluTanhGrad,
    /// tanh x; floats.
    Tanh,
    /// 1 / (1 + e⁻ˣ); floats.
    Sigmoid,
    /// x·sigmoid(x); floats.
    Silu,
    /// eˣ; floats.
    Exp,
    /// ln x (NaN for x < 0, −∞ at 0); floats.
    Log,
    /// √x (NaN for x < 0); floats.
    Sqrt,
    /// 1/√x (∞ at +0); floats.
    Rsqrt,
    /// erf x; floats.
    Erf,
    /// |x| (i64 wraps at `i64::MIN`).
    Abs,
    /// 1/x; floats.
    Recip,
    /// s·x with the constant s rounded to the node's dtype; floats.
    Scale(f64),
    /// Conversion to the dtype: float→i64 truncates toward 0, saturating, NaN → 0 (Rust `as`).
    Cast(DType),
    /// x unchanged; autodiff passes no gradient through it.
    StopGradient,
    /// Sum, mean or max over `axes` (strictly increasing); `keepdims` leaves them as size 1.
    Reduce {
        /// Which reduction.
        kind: ReduceKind,
        /// The reduced axes, strictly increasing.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// x broadcast (numpy rules) to exactly `shape`.
    Broadcast {
        /// The target shape.
        shape: Shape,
    },
    /// exp(x − max)/Σexp(x − max) along `axis`; floats; a row of all −∞ (or with +∞, NaN) is NaN.
    Softmax {
        /// The normalized axis.
        axis: usize,
    },
    /// (x[, γ, β]) → (x − mean)/√(var + eps)·γ + β over axes `axis..` (biased var); γ, β: [axis..].
    LayerNorm {
        /// First normalized axis; all later axes are normalized too.
        axis: usize,
        /// Added to the variance.
        eps: f64,
        /// Whether γ and β are operands 1 and 2.
        affine: bool,
    },
    /// The same elements (row-major order) in `shape`; element counts equal.
    Reshape {
        /// The new shape.
        shape: Shape,
    },
    /// Axes permuted: output axis i is input axis `perm[i]`.
    Transpose {
        /// A permutation of `0..rank`.
        perm: Vec<usize>,
    },
    /// x[r₀, r₁, …]: one `start..end` range per axis, step 1.
    Slice {
        /// One range per axis, `start ≤ end ≤ dim`.
        ranges: Vec<Range<usize>>,
    },
    /// x with `(before, after)` elements of `value` added per axis (cast to the dtype with `as`).
    Pad {
        /// One (before, after) pair per axis.
        pads: Vec<(usize, usize)>,
        /// The fill value.
        value: f64,
    },
    /// Operands joined along `axis`; other dims equal; at least one operand.
    Concat {
        /// The joined axis.
        axis: usize,
    },
    /// (table [V, D], ids i64 [S...]) → [S..., D], row `ids[s]` of table; ids outside 0..V: error.
    Gather,
    /// (updates [S..., D], ids i64 [S...]) → [rows, D]: `updates[s]` summed into row `ids[s]`.
    ScatterAdd {
        /// Rows V of the result.
        rows: usize,
    },
    /// (x [R, K], w [N, K, M], ids i64 [R]) → [R, M]: row `r` is `x[r]·w[ids[r]]`,
    /// a zero row where `ids[r] = −1`; other ids outside 0..N: error; floats.
    /// Mixed-adapter batches (each row its own LoRA adapter) are built from it.
    GatherMatMul,
    /// (x [N, C, H, W], w [O, C, kh, kw]) → [N, O, oh, ow], cross-correlation as PyTorch; floats.
    Conv2d(Conv2dParams),
    /// (dy [N, O, oh, ow], w [O, C, kh, kw]) → [N, C, H, W]: Conv2d's input gradient col2im(wᵀ·dy).
    Conv2dInputGrad {
        /// The convolution's parameters.
        params: Conv2dParams,
        /// The convolution input's (H, W), which stride makes ambiguous.
        input_size: (usize, usize),
    },
    /// (x [N, C, H, W], dy [N, O, oh, ow]) → [O, C, kh, kw], the weight gradient of Conv2d.
    Conv2dWeightGrad {
        /// The convolution's parameters.
        params: Conv2dParams,
        /// The kernel's (kh, kw).
        kernel: (usize, usize),
    },
}

impl Op {
    /// How many operands the op takes.
    pub fn arity(&self) -> Arity {
        use Op::*;
        match self {
            Input { .. } | Constant(_) | Parameter { .. } => Arity::Fixed(0),
            Sign | Neg | Relu | Gelu | GeluTanh | GeluGrad | GeluTanhGrad | Tanh | Sigmoid
            | Silu | Exp | Log | Sqrt | Rsqrt | Erf | Abs | Recip | Scale(_) | Cast(_)
            | StopGradient => Arity::Fixed(1),
            Reduce { .. }
            | Broadcast { .. }
            | Softmax { .. }
            | Reshape { .. }
            | Transpose { .. }
            | Slice { .. }
            | Pad { .. } => Arity::Fixed(1),
            LayerNorm { affine, .. } => Arity::Fixed(if *affine { 3 } else { 1 }),
            MatMul | Add | Sub | Mul | Div | Max | Min | Pow | Eq | Ne | Lt | Le | Gt | Ge => {
                Arity::Fixed(2)
            }
            Gather | ScatterAdd { .. } => Arity::Fixed(2),
            Conv2d(_) | Conv2dInputGrad { .. } | Conv2dWeightGrad { .. } => Arity::Fixed(2),
            Where | GatherMatMul => Arity::Fixed(3),
            Concat { .. } => Arity::AtLeast(1),
        }
    }

    /// Whether each output element depends only on the (broadcast) operand
    /// elements at the same position: the ops a fusion pass may chain.
    pub fn is_elementwise(&self) -> bool {
        use Op::*;
        match self {
            Add | Sub | Mul | Div | Max | Min | Pow | Eq | Ne | Lt | Le | Gt | Ge | Where => true,
            Sign | Neg | Relu | Gelu | GeluTanh | GeluGrad | GeluTanhGrad | Tanh | Sigmoid
            | Silu | Exp | Log | Sqrt | Rsqrt | Erf | Abs | Recip | Scale(_) | Cast(_)
            | StopGradient => true,
            Input { .. }
            | Constant(_)
            | Parameter { .. }
            | MatMul
            | Reduce { .. }
            | Broadcast { .. }
            | Softmax { .. }
            | LayerNorm { .. }
            | Reshape { .. }
            | Transpose { .. }
            | Slice { .. }
            | Pad { .. }
            | Concat { .. }
            | Gather
            | ScatterAdd { .. }
            | GatherMatMul
            | Conv2d(_)
            | Conv2dInputGrad { .. }
            | Conv2dWeightGrad { .. } => false,
        }
    }

    /// The op's name in snake case, as in dumps and error messages (`matmul`, `gelu_tanh`).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Constant(_) => "constant",
            Op::Parameter { .. } => "parameter",
            Op::MatMul => "matmul",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Max => "max",
            Op::Min => "min",
            Op::Pow => "pow",
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Le => "le",
            Op::Gt => "gt",
            Op::Ge => "ge",
            Op::Where => "where",
            Op::Sign => "sign",
            Op::Neg => "neg",
            Op::Relu => "relu",
            Op::Gelu => "gelu",
            Op::GeluTanh => "gelu_tanh",
            Op::GeluGrad => "gelu_grad",
            Op::GeluTanhGrad => "gelu_tanh_grad",
            Op::Tanh => "tanh",
            Op::Sigmoid => "sigmoid",
            Op::Silu => "silu",
            Op::Exp => "exp",
            Op::Log => "log",
            Op::Sqrt => "sqrt",
            Op::Rsqrt => "rsqrt",
            Op::Erf => "erf",
            Op::Abs => "abs",
            Op::Recip => "recip",
            Op::Scale(_) => "scale",
            Op::Cast(_) => "cast",
            Op::StopGradient => "stop_gradient",
            Op::Reduce { .. } => "reduce",
            Op::Broadcast { .. } => "broadcast",
            Op::Softmax { .. } => "softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::GatherMatMul => "gather_matmul",
            Op::Conv2d(_) => "conv2d",
            Op::Conv2dInputGrad { .. } => "conv2d_input_grad",
            Op::Conv2dWeightGrad { .. } => "conv2d_weight_grad",
        }
    }
}

/// Whether the JIT can lower `op`.
///
/// Exactly what `cranelora_jit` lowers, which today is every op (f32 and
/// f64; i64 where the op is defined on it): see `docs/jit.md`. The match is
/// exhaustive on purpose: a new op must be decided on here. crates/jit's
/// test `lowerable_equals_the_graph_crates_list` keeps this equal to
/// `cranelora_jit::lowerable`, and `compile` returns `Unsupported` exactly
/// where that is `false`.
pub fn jit_lowerable(op: &Op) -> bool {
    use Op::*;
    match op {
        Input { .. } | Constant(_) | Parameter { .. } => true,
        MatMul | Add | Sub | Mul | Div | Max | Min | Pow => true,
        Eq | Ne | Lt | Le | Gt | Ge | Where => true,
        Sign | Neg | Relu | Gelu | GeluTanh | GeluGrad | GeluTanhGrad | Tanh | Sigmoid | Silu
        | Exp | Log | Sqrt | Rsqrt | Erf | Abs | Recip | Scale(_) | Cast(_) | StopGradient => true,
        Reduce { .. } | Broadcast { .. } | Softmax { .. } | LayerNorm { .. } => true,
        Reshape { .. } | Transpose { .. } | Slice { .. } | Pad { .. } | Concat { .. } => true,
        Gather | ScatterAdd { .. } | GatherMatMul => true,
        Conv2d(_) | Conv2dInputGrad { .. } | Conv2dWeightGrad { .. } => true,
    }
}

/// `name` followed by the attributes in braces: `reduce{sum, axes=[1], keepdims}`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        let conv = |p: &Conv2dParams| {
            format!(
                "stride={:?}, padding={:?}, dilation={:?}",
                p.stride, p.padding, p.dilation
            )
        };
        match self {
            Op::Input { name: n } | Op::Parameter { name: n } => write!(f, "{name}{{{n:?}}}"),
            Op::Constant(data) => write!(f, "{name}{{{}}}", data.summary()),
            Op::Scale(s) => write!(f, "{name}{{{s:?}}}"),
            Op::Cast(d) => write!(f, "{name}{{{d}}}"),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let keep = if *keepdims { ", keepdims" } else { "" };
                write!(f, "{name}{{{}, axes={axes:?}{keep}}}", kind.name())
            }
            Op::Broadcast { shape } | Op::Reshape { shape } => write!(f, "{name}{{{shape}}}"),
            Op::Softmax { axis } | Op::Concat { axis } => write!(f, "{name}{{axis={axis}}}"),
            Op::LayerNorm { axis, eps, affine } => {
                let aff = if *affine { ", affine" } else { "" };
                write!(f, "{name}{{axis={axis}, eps={eps:?}{aff}}}")
            }
            Op::Transpose { perm } => write!(f, "{name}{{{perm:?}}}"),
            Op::Slice { ranges } => write!(f, "{name}{{{ranges:?}}}"),
            Op::Pad { pads, value } => write!(f, "{name}{{{pads:?}, value={value:?}}}"),
            Op::ScatterAdd { rows } => write!(f, "{name}{{rows={rows}}}"),
            Op::Conv2d(p) => write!(f, "{name}{{{}}}", conv(p)),
            Op::Conv2dInputGrad { params, input_size } => {
                write!(f, "{name}{{{}, input_size={input_size:?}}}", conv(params))
            }
            Op::Conv2dWeightGrad { params, kernel } => {
                write!(f, "{name}{{{}, kernel={kernel:?}}}", conv(params))
            }
            _ => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_matches_the_op_families() {
        assert_eq!(Op::Where.arity(), Arity::Fixed(3));
        assert_eq!(Op::Concat { axis: 0 }.arity(), Arity::AtLeast(1));
        let ln = |affine| Op::LayerNorm {
            axis: 1,
            eps: 1e-5,
            affine,
        };
        assert_eq!(ln(true).arity(), Arity::Fixed(3));
        assert_eq!(ln(false).arity(), Arity::Fixed(1));
        assert!(Op::Add.is_elementwise() && Op::Cast(DType::F64).is_elementwise());
        assert!(!Op::MatMul.is_elementwise() && !Op::Softmax { axis: 0 }.is_elementwise());
        assert!(Arity::AtLeast(1).accepts(3) && !Arity::Fixed(2).accepts(3));
    }

    #[test]
    fn display_shows_attributes() {
        let r = Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![0, 2],
            keepdims: true,
        };
        assert_eq!(r.to_string(), "reduce{sum, axes=[0, 2], keepdims}");
        assert_eq!(Op::Scale(0.5).to_string(), "scale{0.5}");
        assert_eq!(Op::GeluTanh.to_string(), "gelu_tanh");
        assert_eq!(
            Op::Slice {
                ranges: vec![0..2, 1..3]
            }
            .to_string(),
            "slice{[0..2, 1..3]}"
        );
    }

    #[test]
    fn every_op_is_jit_lowerable() {
        assert!(jit_lowerable(&Op::Conv2d(Conv2dParams::default())));
        assert!(jit_lowerable(&Op::Gather));
    }
}
