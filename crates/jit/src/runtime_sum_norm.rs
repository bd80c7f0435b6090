//! The fused sum + LayerNorm row pass (`lower/sum_norm.rs`): a BERT
//! embedding block's lookups, adds and norm in one pass over each row.

use super::{for_row_blocks, row_stats, Bcast};
use cranelora_kernels::Scalar;

/// The most terms one call takes (the operands live in a fixed array: a
/// call allocates nothing).
pub const MAX_TERMS: usize = 8;

/// How one term of the sum is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SumTerm {
    /// Through broadcast strides over the rows and the last axis.
    Dense(Bcast),
    /// Row `ids[r]` of a `[V, len]` table (ids checked by the caller).
    Gather {
        /// The table's rows `V`.
        table_rows: usize,
    },
}

/// `LayerNorm(t0 + t1 + …)` over rows of `len`.
#[derive(Debug)]
pub struct SumNormPlan {
    /// Rows (the product of `row_dims`).
    pub rows: usize,
    /// The dims before the normalized axis.
    pub row_dims: Vec<usize>,
    /// The normalized axis' extent.
    pub len: usize,
    /// Added to the variance.
    pub eps: f64,
    /// The terms, in summation order.
    pub terms: Vec<SumTerm>,
    /// Whether γ and β follow the terms' pointers.
    pub affine: bool,
}

/// A term's data over the whole call.
enum Operand<'a, T> {
    Dense(&'a [T], &'a Bcast),
    Gather(&'a [T], &'a [i64]),
}

impl<T: Scalar> Operand<'_, T> {
    /// `out[j] = term[j]` (`first`) or `out[j] += term[j]` along row `r`.
    fn apply(&self, dims: &[usize], r: usize, out: &mut [T], first: bool) {
        let n = out.len();
        let src = match *self {
            // In range: checked by the generated code before the call.
            Operand::Gather(table, ids) => &table[ids[r] as usize * n..][..n],
            Operand::Dense(data, b) => {
                let base = b.row_offset(dims, r);
                if b.last != 1 {
                    for (j, o) in out.iter_mut().enumerate() {
                        let v = data[base + j * b.last];
                        *o = if first { v } else { *o + v };
                    }
                    return;
                }
                &data[base..base + n]
            }
        };
        if first {
            out.copy_from_slice(src);
        } else {
            out.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
        }
    }
}

/// The helper `cranelora_sum_norm_{f32,f64}`: every row's terms summed left
/// to right into `out`, then normalized in place as [`super::layer_norm`]
/// does (the same statistics and expression), rows split over the pool.
///
/// # Safety
/// `plan` points to a live [`SumNormPlan`]; `ptrs` to `2·terms + 2`
/// pointers: per term its data (a Dense term: the elements its [`Bcast`]
/// gives; a Gather: a `[V, len]` table) and its ids (null for Dense; for a
/// Gather `rows` ids, every one in `0..V`), then γ and β (`len` elements
/// each, or both null when not affine); `out` points to `rows·len`
/// writable elements overlapping none of them.
pub(super) unsafe extern "C" fn run<T: Scalar>(
    plan: *const SumNormPlan,
    ptrs: *const *const u8,
    out: *mut T,
) {
    // SAFETY: the caller's contract above (the compiled code passes the
    // buffers of the matched nodes, whose shapes the plan was built from,
    // after checking every id against its table's rows).
    let (p, ops, affine, out) = unsafe {
        let p = &*plan;
        let ptr = |i: usize| *ptrs.add(i);
        let mut ops: [Option<Operand<'_, T>>; MAX_TERMS] = Default::default();
        for ((i, t), op) in p.terms.iter().enumerate().zip(&mut ops) {
            let data = ptr(2 * i).cast::<T>();
            *op = Some(match t {
                SumTerm::Dense(b) => Operand::Dense(std::slice::from_raw_parts(data, b.len), b),
                &SumTerm::Gather { table_rows } => {
                    let ids = std::slice::from_raw_parts(ptr(2 * i + 1).cast::<i64>(), p.rows);
                    let table = std::slice::from_raw_parts(data, table_rows * p.len);
                    Operand::Gather(table, ids)
                }
            });
        }
        let k = 2 * p.terms.len();
        let (g, b) = (ptr(k).cast::<T>(), ptr(k + 1).cast::<T>());
        let affine = (p.affine && !g.is_null()).then(|| {
            (
                std::slice::from_raw_parts(g, p.len),
                std::slice::from_raw_parts(b, p.len),
            )
        });
        (
            p,
            ops,
            affine,
            std::slice::from_raw_parts_mut(out, p.rows * p.len),
        )
    };
    if p.len == 0 || ops[0].is_none() {
        return;
    }
    let (len, eps) = (p.len, T::from_f64_lossy(p.eps));
    // ~12 operations per element (the adds, two reduction passes, the affine map).
    for_row_blocks(out, len, 12, &|first, out| {
        for (i, dst) in out.chunks_exact_mut(len).enumerate() {
            for (k, op) in ops.iter().map_while(Option::as_ref).enumerate() {
                op.apply(&p.row_dims, first + i, dst, k == 0);
            }
            let (mean, rstd) = row_stats(dst, eps);
            match affine {
                Some((g, b)) => {
                    for ((d, &g), &b) in dst.iter_mut().zip(g).zip(b) {
                        *d = (*d - mean) * rstd * g + b;
                    }
                }
                None => dst.iter_mut().for_each(|d| *d = (*d - mean) * rstd),
            }
        }
    });
}
