//! The fused softmax row pass (`lower/softmax.rs`): scale, mask select,
//! softmax and row select of attention in one pass over each row.

use super::{for_row_blocks, normalize_row};
use cranelora_kernels::Scalar;

/// How an operand broadcast to the softmax's shape is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bcast {
    /// Stride of each row dim (0 where broadcast).
    pub rows: Vec<usize>,
    /// Stride along the softmax axis (0 where broadcast).
    pub last: usize,
    /// Elements of the operand.
    pub len: usize,
}

impl Bcast {
    /// Offset of row `r` (row dims `dims`, row-major).
    pub(super) fn row_offset(&self, dims: &[usize], mut r: usize) -> usize {
        // A scalar (a fill, a zero) or a row broadcast to every row: no
        // divisions (they were a visible share of the masked softmax rows).
        if self.rows.iter().all(|&s| s == 0) {
            return 0;
        }
        let mut off = 0;
        for d in (0..dims.len()).rev() {
            off += (r % dims[d]) * self.rows[d];
            r /= dims[d];
        }
        off
    }
}

/// `where(post, softmax(where(mask, scale·x, fill)), other)` over the last axis.
#[derive(Debug)]
pub struct SoftmaxPlan {
    /// The dims before the softmax axis.
    pub row_dims: Vec<usize>,
    /// The softmax axis' extent.
    pub len: usize,
    /// The factor applied to `x` first.
    pub scale: Option<f64>,
    /// The first select's condition and fill.
    pub mask: Option<(Bcast, Bcast)>,
    /// The last select's condition and other operand.
    pub post: Option<(Bcast, Bcast)>,
}

/// A select's two operands over one row.
struct Select<'a, T> {
    cond: &'a [T],
    other: &'a [T],
    plan: &'a (Bcast, Bcast),
}

impl<T: Scalar> Select<'_, T> {
    /// `out[j] = truthy(cond) ? out[j] : other` along row `r`.
    fn apply(&self, dims: &[usize], r: usize, out: &mut [T]) {
        let (c, o) = self.plan;
        let cb = c.row_offset(dims, r);
        let n = out.len();
        // The interpreter's truth value: nonzero, NaN included.
        let pick = |keep: T, m: T, alt: T| if m != T::zero() { keep } else { alt };
        // A contiguous condition (an attention mask along the keys) with a
        // broadcast or contiguous `other`: branch-free loops over slices,
        // which the compiler vectorizes.
        match (c.last, o.last) {
            // One condition for the whole row (rows with no visible key);
            // a NaN condition is truthy, and `NaN == 0` is false.
            (0, _) => {
                if self.cond[cb] == T::zero() {
                    let ob = o.row_offset(dims, r);
                    for (j, y) in out.iter_mut().enumerate() {
                        *y = self.other[ob + j * o.last];
                    }
                }
            }
            (1, 0) => {
                let alt = self.other[o.row_offset(dims, r)];
                let cond = &self.cond[cb..cb + n];
                out.iter_mut()
                    .zip(cond)
                    .for_each(|(y, &m)| *y = pick(*y, m, alt));
            }
            (1, 1) => {
                let ob = o.row_offset(dims, r);
                let (cond, other) = (&self.cond[cb..cb + n], &self.other[ob..ob + n]);
                out.iter_mut()
                    .zip(cond.iter().zip(other))
                    .for_each(|(y, (&m, &a))| *y = pick(*y, m, a));
            }
            _ => {
                let ob = o.row_offset(dims, r);
                for (j, y) in out.iter_mut().enumerate() {
                    *y = pick(*y, self.cond[cb + j * c.last], self.other[ob + j * o.last]);
                }
            }
        }
    }
}

/// The operands of one call, as slices.
pub(super) struct Operands<'a, T> {
    /// The scores; `None` when they are in the output already (in place).
    pub x: Option<&'a [T]>,
    pub mask: Option<(&'a [T], &'a [T])>,
    pub post: Option<(&'a [T], &'a [T])>,
}

/// Row `r` of the plan into `out`.
fn row<T: Scalar>(p: &SoftmaxPlan, ops: &Operands<'_, T>, r: usize, out: &mut [T]) {
    // The masked-out entries are computed too, then replaced by the fill.
    if !scale_and_mask(p, ops, r, out) {
        scale(p, ops, r, out);
        if let (Some((cond, other)), Some(plan)) = (ops.mask, &p.mask) {
            Select { cond, other, plan }.apply(&p.row_dims, r, out);
        }
    }
    normalize_row(out);
    if let (Some((cond, other)), Some(plan)) = (ops.post, &p.post) {
        Select { cond, other, plan }.apply(&p.row_dims, r, out);
    }
}

/// `out = scale·x` (or `x`) along row `r`.
fn scale<T: Scalar>(p: &SoftmaxPlan, ops: &Operands<'_, T>, r: usize, out: &mut [T]) {
    match (ops.x, p.scale) {
        (Some(x), s) => {
            let x = &x[r * p.len..(r + 1) * p.len];
            match s {
                Some(s) => {
                    let s = T::from_f64_lossy(s);
                    out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * s);
                }
                None => out.copy_from_slice(x),
            }
        }
        (None, Some(s)) => {
            let s = T::from_f64_lossy(s);
            out.iter_mut().for_each(|o| *o *= s);
        }
        (None, None) => {}
    }
}

/// Attention's usual first pass in one sweep instead of two: `out[j] =
/// cond[j] ≠ 0 ? scale·x[j] : fill` for a condition contiguous along the
/// row (a padding mask over the keys) and one fill per row; the same
/// product and the same pick as [`scale`] then [`Select::apply`]. Returns
/// false (nothing written) for any other layout.
fn scale_and_mask<T: Scalar>(
    p: &SoftmaxPlan,
    ops: &Operands<'_, T>,
    r: usize,
    out: &mut [T],
) -> bool {
    let (Some((cond, other)), Some((c, o))) = (ops.mask, &p.mask) else {
        return false;
    };
    if (c.last, o.last) != (1, 0) {
        return false;
    }
    let (cb, ob) = (c.row_offset(&p.row_dims, r), o.row_offset(&p.row_dims, r));
    let (cond, fill, n) = (&cond[cb..cb + out.len()], other[ob], out.len());
    let s = p.scale.map_or(T::one(), T::from_f64_lossy);
    // The interpreter's truth value: nonzero, NaN included.
    let pick = |keep: T, m: T| if m != T::zero() { keep } else { fill };
    match (ops.x, p.scale) {
        (Some(x), Some(_)) => out
            .iter_mut()
            .zip(cond.iter().zip(&x[r * n..(r + 1) * n]))
            .for_each(|(y, (&m, &v))| *y = pick(v * s, m)),
        (Some(x), None) => out
            .iter_mut()
            .zip(cond.iter().zip(&x[r * n..(r + 1) * n]))
            .for_each(|(y, (&m, &v))| *y = pick(v, m)),
        (None, Some(_)) => out
            .iter_mut()
            .zip(cond)
            .for_each(|(y, &m)| *y = pick(*y * s, m)),
        (None, None) => out
            .iter_mut()
            .zip(cond)
            .for_each(|(y, &m)| *y = pick(*y, m)),
    }
    true
}

/// Every row of the plan, split over the pool's threads when large.
pub(super) fn run<T: Scalar>(p: &SoftmaxPlan, ops: &Operands<'_, T>, out: &mut [T]) {
    let len = p.len;
    // ~20 operations per element decide whether threads pay off.
    for_row_blocks(out, len, 20, &|first, out| {
        for (i, o) in out.chunks_exact_mut(len).enumerate() {
            row(p, ops, first + i, o);
        }
    });
}
