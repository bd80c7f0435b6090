//! Shapes and the shape/dtype inference of every op.
//!
//! [`infer`] is the single definition of which operands an op accepts and
//! what it produces; graph building and the verifier both call it.

use crate::{Arity, DType, Op, ReduceKind};
use std::fmt;

mod ops;

/// The dims of a tensor, outermost first; `[]` is a scalar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape with these dims.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Self(dims.into())
    }

    /// The rank-0 shape `[]`.
    pub fn scalar() -> Self {
        Self(Vec::new())
    }

    /// The dims.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// The number of dims.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Self(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Self(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Self(dims.to_vec())
    }
}

/// The numpy broadcast of two shapes: aligned on the right, each pair of
/// dims equal or one of them 1. `None` if they do not broadcast.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.rank().max(b.rank());
    let dim = |s: &Shape, i: usize| {
        let pad = rank - s.rank();
        if i < pad {
            1
        } else {
            s.0[i - pad]
        }
    };
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let (x, y) = (dim(a, i), dim(b, i));
        out.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return None,
        });
    }
    Some(Shape(out))
}

/// Why an op refused its operands; graph building adds the node context.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum InferError {
    Arity(Arity, usize),
    Shape(String),
    DType(String),
}

type Inferred = Result<Option<(Shape, DType)>, InferError>;

fn shape_err<T>(reason: impl Into<String>) -> Result<T, InferError> {
    Err(InferError::Shape(reason.into()))
}

fn dtype_err<T>(reason: impl Into<String>) -> Result<T, InferError> {
    Err(InferError::DType(reason.into()))
}

fn float(d: DType) -> Result<DType, InferError> {
    if d.is_float() {
        Ok(d)
    } else {
        dtype_err(format!("needs f32 or f64, got {d}"))
    }
}

fn same_dtype(ins: &[(&Shape, DType)]) -> Result<DType, InferError> {
    let d = ins[0].1;
    match ins.iter().find(|(_, e)| *e != d) {
        Some((_, e)) => dtype_err(format!("operands must share a dtype, got {d} and {e}")),
        None => Ok(d),
    }
}

fn broadcast_all(shapes: &[&Shape]) -> Result<Shape, InferError> {
    let mut out = shapes[0].clone();
    for s in &shapes[1..] {
        out = match broadcast_shapes(&out, s) {
            Some(b) => b,
            None => return shape_err(format!("{out} and {s} do not broadcast")),
        };
    }
    Ok(out)
}

fn check_axis(axis: usize, rank: usize) -> Result<(), InferError> {
    if axis < rank {
        Ok(())
    } else {
        shape_err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// The output shape and dtype of `op` applied to operands of these shapes
/// and dtypes; `None` for Input and Parameter, whose node declares them.
pub(crate) fn infer(op: &Op, ins: &[(&Shape, DType)]) -> Inferred {
    if !op.arity().accepts(ins.len()) {
        return Err(InferError::Arity(op.arity(), ins.len()));
    }
    let shapes: Vec<&Shape> = ins.iter().map(|(s, _)| *s).collect();
    let x = ins.first().map(|(s, d)| ((*s).clone(), *d));
    // Ops whose output has the first operand's shape and dtype.
    let same = || Ok(x.clone());
    let out = |s: Shape, d: DType| Ok(Some((s, d)));
    match op {
        Op::Input { .. } | Op::Parameter { .. } => Ok(None),
        Op::Constant(data) => out(data.shape(), data.dtype()),
        Op::MatMul => matmul(ins),
        Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min => {
            let d = same_dtype(ins)?;
            out(broadcast_all(&shapes)?, d)
        }
        Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let d = same_dtype(ins)?;
            out(broadcast_all(&shapes)?, d)
        }
        Op::Div | Op::Pow => {
            let d = float(same_dtype(ins)?)?;
            out(broadcast_all(&shapes)?, d)
        }
        Op::Where => {
            let d = same_dtype(&ins[1..])?;
            out(broadcast_all(&shapes)?, d)
        }
        Op::Sign | Op::Neg | Op::Abs | Op::StopGradient => same(),
        Op::Relu | Op::Gelu | Op::GeluTanh | Op::GeluGrad | Op::GeluTanhGrad | Op::Tanh => {
            float(ins[0].1).and_then(|_| same())
        }
        Op::Sigmoid | Op::Silu | Op::Exp | Op::Log | Op::Sqrt | Op::Rsqrt | Op::Erf => {
            float(ins[0].1).and_then(|_| same())
        }
        Op::Recip | Op::Scale(_) => float(ins[0].1).and_then(|_| same()),
        Op::Cast(to) => out(shapes[0].clone(), *to),
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => reduce(ins[0], *kind, axes, *keepdims),
        Op::Broadcast { shape } => match broadcast_shapes(shapes[0], shape) {
            Some(b) if &b == shape => out(b, ins[0].1),
            _ => shape_err(format!("{} does not broadcast to {shape}", shapes[0])),
        },
        Op::Softmax { axis } => {
            float(ins[0].1)?;
            check_axis(*axis, shapes[0].rank())?;
            same()
        }
        Op::LayerNorm { axis, eps, .. } => layer_norm(ins, *axis, *eps),
        Op::Reshape { shape } if shape.numel() == shapes[0].numel() => out(shape.clone(), ins[0].1),
        Op::Reshape { shape } => shape_err(format!(
            "cannot reshape {} ({} elements) to {shape} ({} elements)",
            shapes[0],
            shapes[0].numel(),
            shape.numel()
        )),
        Op::Transpose { perm } => ops::transpose(ins[0], perm),
        Op::Slice { ranges } => ops::slice(ins[0], ranges),
        Op::Pad { pads, .. } => ops::pad(ins[0], pads),
        Op::Concat { axis } => ops::concat(ins, *axis),
        Op::Gather => ops::gather(ins),
        Op::ScatterAdd { rows } => ops::scatter_add(ins, *rows),
        Op::GatherMatMul => ops::gather_matmul(ins),
        Op::Conv2d(p) => ops::conv2d(ins, p),
        Op::Conv2dInputGrad { params, input_size } => {
            ops::conv2d_input_grad(ins, params, *input_size)
        }
        Op::Conv2dWeightGrad { params, kernel } => ops::conv2d_weight_grad(ins, params, *kernel),
    }
}

fn matmul(ins: &[(&Shape, DType)]) -> Inferred {
    let d = float(same_dtype(ins)?)?;
    let (a, b) = (ins[0].0.dims(), ins[1].0.dims());
    if a.len() < 2 || b.len() < 2 {
        return shape_err("both operands need rank ≥ 2 (reshape vectors to matrices)");
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != k2 {
        return shape_err(format!("inner dims differ: {m}×{k} times {k2}×{n}"));
    }
    let (ba, bb) = (
        Shape::from(&a[..a.len() - 2]),
        Shape::from(&b[..b.len() - 2]),
    );
    let Some(batch) = broadcast_shapes(&ba, &bb) else {
        return shape_err(format!("batch dims {ba} and {bb} do not broadcast"));
    };
    let mut dims = batch.0;
    dims.extend([m, n]);
    Ok(Some((Shape(dims), d)))
}

fn reduce((x, d): (&Shape, DType), kind: ReduceKind, axes: &[usize], keepdims: bool) -> Inferred {
    if kind == ReduceKind::Mean {
        float(d)?;
    }
    if axes.windows(2).any(|w| w[0] >= w[1]) {
        return shape_err(format!("axes {axes:?} must be strictly increasing"));
    }
    for &a in axes {
        check_axis(a, x.rank())?;
    }
    let mut dims = Vec::new();
    for (i, &n) in x.dims().iter().enumerate() {
        match (axes.contains(&i), keepdims) {
            (false, _) => dims.push(n),
            (true, true) => dims.push(1),
            (true, false) => {}
        }
    }
    Ok(Some((Shape(dims), d)))
}

fn layer_norm(ins: &[(&Shape, DType)], axis: usize, eps: f64) -> Inferred {
    let (x, d) = ins[0];
    float(same_dtype(ins)?)?;
    check_axis(axis, x.rank())?;
    if !(eps >= 0.0 && eps.is_finite()) {
        return shape_err(format!("eps {eps} must be finite and ≥ 0"));
    }
    let normalized = Shape::from(&x.dims()[axis..]);
    if let Some((s, _)) = ins[1..].iter().find(|(s, _)| **s != normalized) {
        return shape_err(format!("γ and β must have shape {normalized}, got {s}"));
    }
    Ok(Some((x.clone(), d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(d: &[usize]) -> Shape {
        Shape::from(d)
    }

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(
            broadcast_shapes(&s(&[4, 1, 3]), &s(&[5, 1])),
            Some(s(&[4, 5, 3]))
        );
        assert_eq!(broadcast_shapes(&s(&[]), &s(&[2, 3])), Some(s(&[2, 3])));
        assert_eq!(broadcast_shapes(&s(&[0]), &s(&[1])), Some(s(&[0])));
        assert_eq!(broadcast_shapes(&s(&[2, 3]), &s(&[3, 2])), None);
    }

    #[test]
    fn matmul_broadcasts_batch_dims() {
        let (a, b) = (s(&[2, 1, 3, 4]), s(&[5, 4, 6]));
        let got = infer(&Op::MatMul, &[(&a, DType::F32), (&b, DType::F32)]);
        assert_eq!(got, Ok(Some((s(&[2, 5, 3, 6]), DType::F32))));
        let bad = infer(&Op::MatMul, &[(&a, DType::F32), (&a, DType::F32)]);
        assert!(matches!(bad, Err(InferError::Shape(_))), "{bad:?}");
    }

    #[test]
    fn reduce_keeps_or_drops_axes() {
        let x = s(&[2, 3, 4]);
        let op = |keepdims| Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![0, 2],
            keepdims,
        };
        assert_eq!(
            infer(&op(true), &[(&x, DType::I64)]),
            Ok(Some((s(&[1, 3, 1]), DType::I64)))
        );
        assert_eq!(
            infer(&op(false), &[(&x, DType::I64)]),
            Ok(Some((s(&[3]), DType::I64)))
        );
        let mean = Op::Reduce {
            kind: ReduceKind::Mean,
            axes: vec![0],
            keepdims: false,
        };
        assert!(matches!(
            infer(&mean, &[(&x, DType::I64)]),
            Err(InferError::DType(_))
        ));
    }

    #[test]
    fn arity_is_checked_first() {
        let x = s(&[2]);
        assert_eq!(
            infer(&Op::Add, &[(&x, DType::F32)]),
            Err(InferError::Arity(Arity::Fixed(2), 1))
        );
    }
}
