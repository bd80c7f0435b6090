//! Elementwise ops: one loop nest per node, operands read broadcast. The
//! plain float arithmetic of [`vectorizable`] and the transcendental
//! functions run their innermost dim on f32x4 / f64x2 with a scalar tail
//! (`Lowerer::nest_vector`); the rest is scalar.
//!
//! Arithmetic, comparisons, Where, sign/abs/relu, sqrt and casts are emitted
//! inline with the interpreter's exact rules (NaN-propagating max/min by
//! selects, masks as 1/0 of the operands' dtype, saturating float→i64 casts
//! as Rust's `as`). The functions of `kernels::math` (exp, log, tanh, erf,
//! sigmoid, SiLU, both GELUs and their derivatives) are emitted inline by
//! [`super::math`] from the kernels' coefficient table; Pow calls Rust's
//! `powf` through a helper per element (its special cases are IEEE's).

use super::{clif_type, Lowerer};
use crate::Result;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelora_graph::{DType, NodeId, Op};
use cranelora_kernels::math::Func;

/// The kernels function an op is, if it is one.
pub(crate) fn kernel_func(op: &Op) -> Option<Func> {
    Some(match op {
        Op::Exp => Func::Exp,
        Op::Log => Func::Log,
        Op::Tanh => Func::Tanh,
        Op::Erf => Func::Erf,
        Op::Sigmoid => Func::Sigmoid,
        Op::Silu => Func::Silu,
        Op::Gelu => Func::GeluErf,
        Op::GeluTanh => Func::GeluTanh,
        Op::GeluGrad => Func::GeluErfGrad,
        Op::GeluTanhGrad => Func::GeluTanhGrad,
        _ => return None,
    })
}

/// Lowers an elementwise node: a loop group of one.
pub(crate) fn lower(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    super::fused::lower_group(l, &super::fused::LoopGroup::single(id))
}

/// Whether `op` has a vector form ([`vector`] or [`super::math`]).
pub(crate) fn vector_capable(op: &Op) -> bool {
    vectorizable(op) || kernel_func(op).is_some()
}

/// The 128-bit vector type of a float dtype and its lane count.
pub(crate) fn vector_type(d: DType) -> Option<(Type, usize)> {
    match d {
        DType::F32 => Some((types::F32X4, 4)),
        DType::F64 => Some((types::F64X2, 2)),
        DType::I64 => None,
    }
}

/// Flags of vector loads and stores: in bounds, not necessarily 16-byte aligned.
pub(crate) fn vector_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Whether [`vector`] computes `op` exactly as [`scalar`] does, lane by lane
/// (float operands of one dtype). Max and Min use the scalar rule's
/// compares and selects, not `fmax`/`fmin` (which order −0 < +0).
fn vectorizable(op: &Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Max
            | Op::Min
            | Op::Eq
            | Op::Ne
            | Op::Lt
            | Op::Le
            | Op::Gt
            | Op::Ge
            | Op::Where
            | Op::Sign
            | Op::Neg
            | Op::Abs
            | Op::Sqrt
            | Op::Rsqrt
            | Op::Recip
            | Op::Scale(_)
            | Op::Relu
    )
}

/// One vector of `op`'s results for the ops of [`vectorizable`].
pub(crate) fn vector(l: &mut Lowerer<'_>, op: &Op, d: DType, vt: Type, a: &[Value]) -> Value {
    let splat = |l: &mut Lowerer<'_>, x: f64| {
        let c = constant(l, d, x);
        l.b.ins().splat(vt, c)
    };
    match op {
        Op::Add => l.b.ins().fadd(a[0], a[1]),
        Op::Sub => l.b.ins().fsub(a[0], a[1]),
        Op::Mul => l.b.ins().fmul(a[0], a[1]),
        Op::Div => l.b.ins().fdiv(a[0], a[1]),
        Op::Neg => l.b.ins().fneg(a[0]),
        Op::Abs => l.b.ins().fabs(a[0]),
        Op::Sqrt => l.b.ins().sqrt(a[0]),
        Op::Rsqrt => {
            let s = l.b.ins().sqrt(a[0]);
            let one = splat(l, 1.0);
            l.b.ins().fdiv(one, s)
        }
        Op::Recip => {
            let one = splat(l, 1.0);
            l.b.ins().fdiv(one, a[0])
        }
        Op::Scale(s) => {
            let s = splat(l, *s);
            l.b.ins().fmul(a[0], s)
        }
        // fmax propagates NaN and gives +0 for ±0 against +0: relu exactly.
        Op::Relu => {
            let zero = splat(l, 0.0);
            l.b.ins().fmax(a[0], zero)
        }
        // As the scalar rule: a if a is NaN, else b if b is NaN or b > a (< a), else a.
        Op::Max | Op::Min => {
            let cc = match op {
                Op::Max => FloatCC::UnorderedOrGreaterThan,
                _ => FloatCC::UnorderedOrLessThan,
            };
            let take_b = lane_mask(l, vt, cc, a[1], a[0]);
            let r = l.b.ins().bitselect(take_b, a[1], a[0]);
            let a_nan = lane_mask(l, vt, FloatCC::Unordered, a[0], a[0]);
            l.b.ins().bitselect(a_nan, a[0], r)
        }
        Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let cc = match op {
                Op::Eq => FloatCC::Equal,
                Op::Ne => FloatCC::NotEqual,
                Op::Lt => FloatCC::LessThan,
                Op::Le => FloatCC::LessThanOrEqual,
                Op::Gt => FloatCC::GreaterThan,
                _ => FloatCC::GreaterThanOrEqual,
            };
            let m = lane_mask(l, vt, cc, a[0], a[1]);
            let one = splat(l, 1.0);
            l.b.ins().band(m, one)
        }
        // cond ≠ 0, NaN included.
        Op::Where => {
            let zero = splat(l, 0.0);
            let m = lane_mask(l, vt, FloatCC::NotEqual, a[0], zero);
            l.b.ins().bitselect(m, a[1], a[2])
        }
        // 1 if x > 0, −1 if x < 0, else x itself (±0, NaN).
        Op::Sign => {
            let (zero, one, minus) = (splat(l, 0.0), splat(l, 1.0), splat(l, -1.0));
            let gt = lane_mask(l, vt, FloatCC::GreaterThan, a[0], zero);
            let lt = lane_mask(l, vt, FloatCC::LessThan, a[0], zero);
            let r = l.b.ins().bitselect(lt, minus, a[0]);
            l.b.ins().bitselect(gt, one, r)
        }
        _ => unreachable!("internal: {op} is not vectorizable"),
    }
}

/// `a cc b` per lane as an all-ones / all-zeros mask of the float vector type.
fn lane_mask(l: &mut Lowerer<'_>, vt: Type, cc: FloatCC, a: Value, b: Value) -> Value {
    let m = l.b.ins().fcmp(cc, a, b);
    l.b.ins().bitcast(vt, MemFlagsData::new(), m)
}

/// A float or integer constant of the dtype.
pub(crate) fn constant(l: &mut Lowerer<'_>, d: DType, x: f64) -> Value {
    match d {
        DType::F32 => l.b.ins().f32const(x as f32),
        DType::F64 => l.b.ins().f64const(x),
        DType::I64 => l.b.ins().iconst(types::I64, x as i64),
    }
}

/// 1 or 0 of the dtype by the flag `c`: a comparison mask.
fn mask(l: &mut Lowerer<'_>, d: DType, c: Value) -> Value {
    let one = constant(l, d, 1.0);
    let zero = constant(l, d, 0.0);
    l.b.ins().select(c, one, zero)
}

/// The comparison `a cc b` as a flag, for float or integer operands.
fn compare(l: &mut Lowerer<'_>, d: DType, fcc: FloatCC, icc: IntCC, a: Value, b: Value) -> Value {
    if d.is_float() {
        l.b.ins().fcmp(fcc, a, b)
    } else {
        l.b.ins().icmp(icc, a, b)
    }
}

/// The value of one element of `op` from its operands' elements.
pub(crate) fn scalar(
    l: &mut Lowerer<'_>,
    op: &Op,
    dtypes: &[DType],
    out: DType,
    a: &[Value],
) -> Result<Value> {
    let d = dtypes[0];
    let float = d.is_float();
    Ok(match op {
        Op::Add if float => l.b.ins().fadd(a[0], a[1]),
        Op::Add => l.b.ins().iadd(a[0], a[1]),
        Op::Sub if float => l.b.ins().fsub(a[0], a[1]),
        Op::Sub => l.b.ins().isub(a[0], a[1]),
        Op::Mul if float => l.b.ins().fmul(a[0], a[1]),
        Op::Mul => l.b.ins().imul(a[0], a[1]),
        Op::Div => l.b.ins().fdiv(a[0], a[1]),
        // max(a, b): a if a is NaN, else b if b is NaN or b > a, else a.
        Op::Max | Op::Min if float => {
            let cc = match op {
                Op::Max => FloatCC::UnorderedOrGreaterThan,
                _ => FloatCC::UnorderedOrLessThan,
            };
            let take_b = l.b.ins().fcmp(cc, a[1], a[0]);
            let r = l.b.ins().select(take_b, a[1], a[0]);
            let a_nan = l.b.ins().fcmp(FloatCC::Unordered, a[0], a[0]);
            l.b.ins().select(a_nan, a[0], r)
        }
        Op::Max | Op::Min => {
            let cc = match op {
                Op::Max => IntCC::SignedGreaterThan,
                _ => IntCC::SignedLessThan,
            };
            let take_b = l.b.ins().icmp(cc, a[1], a[0]);
            l.b.ins().select(take_b, a[1], a[0])
        }
        Op::Pow => {
            let (name, t) = match d {
                DType::F64 => ("cranelora_pow_f64", types::F64),
                _ => ("cranelora_pow_f32", types::F32),
            };
            l.call(name, &[t, t], &[t], &[a[0], a[1]])?[0]
        }
        // NaN is unordered: only Ne (FloatCC::NotEqual includes unordered) is true.
        Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let (fcc, icc) = match op {
                Op::Eq => (FloatCC::Equal, IntCC::Equal),
                Op::Ne => (FloatCC::NotEqual, IntCC::NotEqual),
                Op::Lt => (FloatCC::LessThan, IntCC::SignedLessThan),
                Op::Le => (FloatCC::LessThanOrEqual, IntCC::SignedLessThanOrEqual),
                Op::Gt => (FloatCC::GreaterThan, IntCC::SignedGreaterThan),
                _ => (FloatCC::GreaterThanOrEqual, IntCC::SignedGreaterThanOrEqual),
            };
            let c = compare(l, d, fcc, icc, a[0], a[1]);
            mask(l, d, c)
        }
        // cond ≠ 0, NaN included (unordered counts as not equal).
        Op::Where => {
            let zero = constant(l, d, 0.0);
            let c = compare(l, d, FloatCC::NotEqual, IntCC::NotEqual, a[0], zero);
            l.b.ins().select(c, a[1], a[2])
        }
        // 1 if x > 0, −1 if x < 0, else x itself (±0, NaN).
        Op::Sign => {
            let zero = constant(l, d, 0.0);
            let one = constant(l, d, 1.0);
            let minus = constant(l, d, -1.0);
            let gt = compare(
                l,
                d,
                FloatCC::GreaterThan,
                IntCC::SignedGreaterThan,
                a[0],
                zero,
            );
            let lt = compare(l, d, FloatCC::LessThan, IntCC::SignedLessThan, a[0], zero);
            let r = l.b.ins().select(lt, minus, a[0]);
            l.b.ins().select(gt, one, r)
        }
        Op::Neg if float => l.b.ins().fneg(a[0]),
        Op::Neg => l.b.ins().ineg(a[0]),
        // x if x > 0 or NaN, else +0.
        Op::Relu => {
            let zero = constant(l, d, 0.0);
            let c = l.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, a[0], zero);
            l.b.ins().select(c, a[0], zero)
        }
        Op::Sqrt => l.b.ins().sqrt(a[0]),
        // Two roundings, as the interpreter's sqrt().recip().
        Op::Rsqrt => {
            let s = l.b.ins().sqrt(a[0]);
            let one = constant(l, d, 1.0);
            l.b.ins().fdiv(one, s)
        }
        Op::Recip => {
            let one = constant(l, d, 1.0);
            l.b.ins().fdiv(one, a[0])
        }
        Op::Abs if float => l.b.ins().fabs(a[0]),
        // Wrapping: |i64::MIN| = i64::MIN.
        Op::Abs => {
            let neg = l.b.ins().ineg(a[0]);
            let lt = l.b.ins().icmp_imm_s(IntCC::SignedLessThan, a[0], 0);
            l.b.ins().select(lt, neg, a[0])
        }
        Op::Scale(s) => {
            let s = constant(l, d, *s);
            l.b.ins().fmul(a[0], s)
        }
        Op::Cast(_) => cast(l, d, out, a[0]),
        Op::StopGradient => a[0],
        _ => unreachable!("internal: {op} is not elementwise"),
    })
}

/// Rust's `as` from `from` to `to`: float→i64 truncates and saturates, NaN → 0.
fn cast(l: &mut Lowerer<'_>, from: DType, to: DType, x: Value) -> Value {
    let ins = l.b.ins();
    match (from, to) {
        _ if from == to => x,
        (DType::F32, DType::F64) => ins.fpromote(types::F64, x),
        (DType::F64, DType::F32) => ins.fdemote(types::F32, x),
        (_, DType::I64) => ins.fcvt_to_sint_sat(types::I64, x),
        (DType::I64, t) => ins.fcvt_from_sint(clif_type(t), x),
        _ => unreachable!("internal: every dtype pair is listed"),
    }
}
