//! One building method per op on [`Graph`], each a thin wrapper over
//! [`Graph::push`] that checks and infers the shape and dtype.
//!
//! Every method returns `Result<NodeId>`; the error names the node (the name
//! given by [`Graph::named`] just before), the op and the operand shapes.
//! Semantics of each op are on its [`Op`] variant.

use crate::{Conv2dParams, DType, Graph, NodeId, Op, ReduceKind, Result, Shape, TensorData};
use std::ops::Range;
use std::sync::Arc;

/// Generates `fn $name(&mut self, a, b) -> Result<NodeId>` for binary ops.
macro_rules! binary {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {$(
        $(#[$doc])*
        ///
        /// # Errors
        /// As [`Graph::push`].
        pub fn $name(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
            self.push(Op::$op, &[a, b])
        }
    )*};
}

/// Generates `fn $name(&mut self, x) -> Result<NodeId>` for unary ops.
macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {$(
        $(#[$doc])*
        ///
        /// # Errors
        /// As [`Graph::push`].
        pub fn $name(&mut self, x: NodeId) -> Result<NodeId> {
            self.push(Op::$op, &[x])
        }
    )*};
}

impl Graph {
    /// A per-call input of this shape and dtype, named `name` (node and op),
    /// appended to [`Graph::inputs`].
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> NodeId {
        let op = Op::Input { name: name.into() };
        self.push_declared(op, shape.into(), dtype)
    }

    /// A weight bound at run time under `name` (node and op).
    pub fn parameter(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> NodeId {
        let op = Op::Parameter { name: name.into() };
        self.push_declared(op, shape.into(), dtype)
    }

    /// A constant holding `data`.
    ///
    /// # Errors
    /// As [`Graph::push`] (only for a pending name's sake; a constant always builds).
    pub fn constant(&mut self, data: impl Into<Arc<TensorData>>) -> Result<NodeId> {
        self.push(Op::Constant(data.into()), &[])
    }

    /// A rank-0 constant `x` of `dtype`.
    ///
    /// # Errors
    /// As [`Graph::constant`].
    pub fn scalar(&mut self, x: f64, dtype: DType) -> Result<NodeId> {
        self.constant(TensorData::scalar(x, dtype))
    }

    binary! {
        /// a [..., m, k] · b [..., k, n] → [..., m, n], batch dims broadcast.
        matmul => MatMul;
        /// a + b, broadcasting.
        add => Add;
        /// a − b, broadcasting.
        sub => Sub;
        /// a · b, broadcasting.
        mul => Mul;
        /// a / b, broadcasting.
        div => Div;
        /// max(a, b), broadcasting, NaN-propagating.
        max => Max;
        /// min(a, b), broadcasting, NaN-propagating.
        min => Min;
        /// a^b, broadcasting.
        pow => Pow;
        /// Mask a = b.
        equal => Eq;
        /// Mask a ≠ b.
        not_equal => Ne;
        /// Mask a < b.
        less => Lt;
        /// Mask a ≤ b.
        less_equal => Le;
        /// Mask a > b.
        greater => Gt;
        /// Mask a ≥ b.
        greater_equal => Ge;
        /// table [V, D] rows at ids i64 [S...] → [S..., D].
        gather => Gather;
    }

    unary! {
        /// Sign of x.
        sign => Sign;
        /// −x.
        neg => Neg;
        /// max(x, 0).
        relu => Relu;
        /// Exact (erf) GELU.
        gelu => Gelu;
        /// Tanh-approximated GELU.
        gelu_tanh => GeluTanh;
        /// Derivative of the exact GELU.
        gelu_grad => GeluGrad;
        /// Derivative of the tanh GELU.
        gelu_tanh_grad => GeluTanhGrad;
        /// tanh x.
        tanh => Tanh;
        /// Logistic sigmoid.
        sigmoid => Sigmoid;
        /// x·sigmoid(x).
        silu => Silu;
        /// eˣ.
        exp => Exp;
        /// ln x.
        log => Log;
        /// √x.
        sqrt => Sqrt;
        /// 1/√x.
        rsqrt => Rsqrt;
        /// erf x.
        erf => Erf;
        /// |x|.
        abs => Abs;
        /// 1/x.
        recip => Recip;
        /// x, with no gradient.
        stop_gradient => StopGradient;
    }

    /// `a` where `cond ≠ 0`, else `b`; all three broadcast.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.push(Op::Where, &[cond, a, b])
    }

    /// x [R, K] times the stacked weights w [N, K, M] selected per row by
    /// ids i64 [R] → [R, M]; id −1 gives a zero row ([`Op::GatherMatMul`]).
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn gather_matmul(&mut self, x: NodeId, w: NodeId, ids: NodeId) -> Result<NodeId> {
        self.push(Op::GatherMatMul, &[x, w, ids])
    }

    /// s·x.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn scale(&mut self, x: NodeId, s: f64) -> Result<NodeId> {
        self.push(Op::Scale(s), &[x])
    }

    /// x converted to `dtype`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn cast(&mut self, x: NodeId, dtype: DType) -> Result<NodeId> {
        self.push(Op::Cast(dtype), &[x])
    }

    /// Sum, mean or max over `axes` (sorted and deduplicated here).
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn reduce(
        &mut self,
        x: NodeId,
        kind: ReduceKind,
        axes: &[usize],
        keepdims: bool,
    ) -> Result<NodeId> {
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        let op = Op::Reduce {
            kind,
            axes,
            keepdims,
        };
        self.push(op, &[x])
    }

    /// x broadcast to `shape`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn broadcast(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId> {
        let shape = shape.into();
        self.push(Op::Broadcast { shape }, &[x])
    }

    /// Softmax along `axis`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        self.push(Op::Softmax { axis }, &[x])
    }

    /// Layer norm over axes `axis..rank`, with optional (γ, β) of shape `x.shape[axis..]`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn layer_norm(
        &mut self,
        x: NodeId,
        affine: Option<(NodeId, NodeId)>,
        axis: usize,
        eps: f64,
    ) -> Result<NodeId> {
        let op = Op::LayerNorm {
            axis,
            eps,
            affine: affine.is_some(),
        };
        match affine {
            Some((gamma, beta)) => self.push(op, &[x, gamma, beta]),
            None => self.push(op, &[x]),
        }
    }

    /// x with its elements in `shape`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId> {
        let shape = shape.into();
        self.push(Op::Reshape { shape }, &[x])
    }

    /// x with axes permuted (output axis i = input axis `perm[i]`).
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn transpose(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        let perm = perm.to_vec();
        self.push(Op::Transpose { perm }, &[x])
    }

    /// `x[ranges]`, one range per axis.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn slice(&mut self, x: NodeId, ranges: &[Range<usize>]) -> Result<NodeId> {
        let ranges = ranges.to_vec();
        self.push(Op::Slice { ranges }, &[x])
    }

    /// x padded with `value`, `(before, after)` per axis.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn pad(&mut self, x: NodeId, pads: &[(usize, usize)], value: f64) -> Result<NodeId> {
        let pads = pads.to_vec();
        self.push(Op::Pad { pads, value }, &[x])
    }

    /// `xs` joined along `axis`.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        self.push(Op::Concat { axis }, xs)
    }

    /// updates [S..., D] added into the rows `ids` [S...] of a `rows × D` zero matrix.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn scatter_add(&mut self, updates: NodeId, ids: NodeId, rows: usize) -> Result<NodeId> {
        self.push(Op::ScatterAdd { rows }, &[updates, ids])
    }

    /// x [N, C, H, W] ⋆ w [O, C, kh, kw] → [N, O, oh, ow].
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn conv2d(&mut self, x: NodeId, w: NodeId, params: Conv2dParams) -> Result<NodeId> {
        self.push(Op::Conv2d(params), &[x, w])
    }

    /// The input gradient of a conv2d whose input was `input_size` (H, W).
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn conv2d_input_grad(
        &mut self,
        dy: NodeId,
        w: NodeId,
        params: Conv2dParams,
        input_size: (usize, usize),
    ) -> Result<NodeId> {
        let op = Op::Conv2dInputGrad { params, input_size };
        self.push(op, &[dy, w])
    }

    /// The weight gradient of a conv2d with a `kernel` (kh, kw) filter.
    ///
    /// # Errors
    /// As [`Graph::push`].
    pub fn conv2d_weight_grad(
        &mut self,
        x: NodeId,
        dy: NodeId,
        params: Conv2dParams,
        kernel: (usize, usize),
    ) -> Result<NodeId> {
        let op = Op::Conv2dWeightGrad { params, kernel };
        self.push(op, &[x, dy])
    }
}
