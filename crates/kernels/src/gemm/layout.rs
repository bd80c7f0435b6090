//! Strided batch entries: products whose operands and outputs are heads of
//! a `[batch, seq, heads, d]` tensor, read and written in place.
//!
//! Attention splits `[b, s, h·d]` into heads `[b, h, s, d]` and merges them
//! back; with a [`StridedLayout`] the batched product reads each head
//! `A_i`/`B_i` through its row and column strides and writes each `C_i`
//! with a row stride, so neither transpose is copied.

use crate::{KernelError, Result};

/// Where the entries of a [`Batch`](super::Batch) lie when they are not
/// contiguous row-major matrices.
///
/// Built once (e.g. at JIT compile time): [`StridedLayout::new`] works out
/// whether the outputs `C_i` are pairwise disjoint, which
/// [`gemm_batched`](super::gemm_batched) needs to write them from several
/// threads; outputs it cannot prove disjoint are written one entry after
/// the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StridedLayout {
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) a: (usize, usize),
    pub(super) b: (usize, usize),
    pub(super) c_row: usize,
    pub(super) c: Vec<usize>,
    pub(super) c_disjoint: bool,
}

impl StridedLayout {
    /// Entries whose `A_i` (m×k) has row/column strides `a`, `B_i` (k×n)
    /// strides `b` (both at the batch's offsets), and whose `C_i` (m×n)
    /// starts at `c[i]` with rows `c_row` apart and consecutive columns.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] if `c_row < n` with more than one row
    /// (the rows of an output would overlap).
    pub fn new(
        (m, n): (usize, usize),
        a: (usize, usize),
        b: (usize, usize),
        c_row: usize,
        c: Vec<usize>,
    ) -> Result<Self> {
        if c_row < n && m > 1 {
            return Err(KernelError::Geometry {
                what: "strided batch output",
                message: format!("row stride {c_row} < {n} columns: rows would overlap"),
            });
        }
        let c_disjoint = outputs_disjoint(m, n, c_row, &c);
        Ok(Self {
            m,
            n,
            a,
            b,
            c_row,
            c,
            c_disjoint,
        })
    }

    /// Row and column strides of every `A_i`.
    pub fn a_strides(&self) -> (usize, usize) {
        self.a
    }

    /// Row and column strides of every `B_i`.
    pub fn b_strides(&self) -> (usize, usize) {
        self.b
    }

    /// Whether no two outputs share an element (then entries run in parallel).
    pub fn outputs_disjoint(&self) -> bool {
        self.c_disjoint
    }

    /// One past the last element of `C` an entry writes.
    pub(super) fn c_end(&self) -> usize {
        let span = if self.m == 0 || self.n == 0 {
            0
        } else {
            // Saturating: an end past usize::MAX fails the length check.
            (self.m - 1)
                .saturating_mul(self.c_row)
                .saturating_add(self.n)
        };
        self.c
            .iter()
            .map(|&o| o.saturating_add(span))
            .max()
            .unwrap_or(0)
    }
}

/// Whether the outputs (rectangles of `m` rows × `n` columns in a grid of
/// rows `c_row` wide, at offsets `c`) are pairwise disjoint. Conservative:
/// `true` only when every output stays within its grid columns and any two
/// whose columns meet have the same columns and rows at least `m` apart
/// (heads merged into `[b, s, h·d]` are of this kind).
fn outputs_disjoint(m: usize, n: usize, c_row: usize, c: &[usize]) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    let row_width = c_row.max(1);
    let mut rects: Vec<(usize, usize)> =
        c.iter().map(|&o| (o % row_width, o / row_width)).collect();
    if m > 1 && rects.iter().any(|&(col, _)| col.saturating_add(n) > c_row) {
        return false;
    }
    if m == 1 {
        // One row each: intervals [o, o + n) of the flat buffer.
        let mut starts: Vec<usize> = c.to_vec();
        starts.sort_unstable();
        return starts.windows(2).all(|w| w[0].saturating_add(n) <= w[1]);
    }
    rects.sort_unstable();
    rects.windows(2).all(|w| {
        let ((c0, r0), (c1, r1)) = (w[0], w[1]);
        if c0 == c1 {
            r0.saturating_add(m) <= r1
        } else {
            c0.saturating_add(n) <= c1
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::Rng;
    use super::super::{
        batched_workspace_len, gemm_batched, reference, Batch, BatchRhs, Epilogue, MatMut, MatRef,
    };
    use super::*;
    use crate::testing::{check_close, Nan};
    use crate::{pool, Scalar};

    /// Attention's two products on heads of `[b, s, h·d]` buffers, read and
    /// written in place: `S_i = Q_i·K_iᵀ` (B read transposed) into a
    /// `[b, h, s, s]` buffer, then `C_i = S_i·V_i` merged into `[b, s, h·d]`,
    /// against the reference product of copied heads.
    fn check_heads<T: Scalar>(seed: u64, (b, s, h, d): (usize, usize, usize, usize)) {
        let mut rng = Rng(seed);
        let mut random =
            |len: usize| -> Vec<T> { (0..len).map(|_| T::from_f64_lossy(rng.unit())).collect() };
        let (q, k, v) = (
            random(b * s * h * d),
            random(b * s * h * d),
            random(b * s * h * d),
        );
        let width = h * d;
        let heads: Vec<(usize, usize)> = (0..b)
            .flat_map(|bi| (0..h).map(move |hi| (bi, hi)))
            .collect();
        let head_at = |&(bi, hi): &(usize, usize)| bi * s * width + hi * d;
        let offsets: Vec<(usize, usize)> = heads.iter().map(|e| (head_at(e), head_at(e))).collect();
        // Scores: A_i = Q head (s×d, strides (width, 1)), B_i = K headᵀ (d×s, strides (1, width)).
        let scores_layout = StridedLayout::new(
            (s, s),
            (width, 1),
            (1, width),
            s,
            (0..heads.len()).map(|i| i * s * s).collect(),
        )
        .expect("valid");
        let batch = Batch {
            m: s,
            n: s,
            k: d,
            offsets: &offsets,
            layout: Some(&scores_layout),
        };
        let mut scores = vec![T::nan(); heads.len() * s * s];
        let mut ws = vec![T::nan(); batched_workspace_len::<T>(heads.len(), s, s, d, false)];
        gemm_batched(
            &batch,
            &q,
            BatchRhs::Entries(&k),
            &mut scores,
            &mut ws,
            &Epilogue::none(),
        )
        .expect("valid batch");
        // Context merged: A_i = S_i (contiguous), B_i = V head (s×d), C_i at the head's place.
        let ctx_layout = StridedLayout::new(
            (s, d),
            (s, 1),
            (width, 1),
            width,
            heads.iter().map(head_at).collect(),
        )
        .expect("valid");
        assert!(ctx_layout.outputs_disjoint());
        let ctx_offsets: Vec<(usize, usize)> = heads
            .iter()
            .enumerate()
            .map(|(i, e)| (i * s * s, head_at(e)))
            .collect();
        let batch = Batch {
            m: s,
            n: d,
            k: s,
            offsets: &ctx_offsets,
            layout: Some(&ctx_layout),
        };
        let mut ctx = vec![T::nan(); b * s * width];
        let mut ws = vec![T::nan(); batched_workspace_len::<T>(heads.len(), s, d, s, false)];
        gemm_batched(
            &batch,
            &scores,
            BatchRhs::Entries(&v),
            &mut ctx,
            &mut ws,
            &Epilogue::none(),
        )
        .expect("valid batch");
        let (mut want_scores, mut want_ctx) =
            (vec![T::zero(); scores.len()], vec![T::zero(); ctx.len()]);
        for (i, e) in heads.iter().enumerate() {
            let o = head_at(e);
            let qi = MatRef::with_strides(&q[o..], s, d, width, 1).expect("fits");
            let ki = MatRef::with_strides(&k[o..], s, d, width, 1)
                .expect("fits")
                .t();
            let vi = MatRef::with_strides(&v[o..], s, d, width, 1).expect("fits");
            let mut si =
                MatMut::new(&mut want_scores[i * s * s..(i + 1) * s * s], s, s).expect("fits");
            reference::gemm(T::one(), qi, ki, T::zero(), &mut si);
            let si = MatRef::new(&want_scores[i * s * s..(i + 1) * s * s], s, s).expect("fits");
            let mut ci = MatMut::with_row_stride(&mut want_ctx[o..], s, d, width).expect("fits");
            reference::gemm(T::one(), si, vi, T::zero(), &mut ci);
        }
        let tol = 16.0 * (s + d) as f64 * T::EPSILON_F64;
        check_close(&scores, &want_scores, tol, tol, Nan::Mismatch)
            .unwrap_or_else(|e| panic!("scores {b}×{s}×{h}×{d}: {e}"));
        check_close(
            &ctx,
            &want_ctx,
            tol * s as f64,
            tol * s as f64,
            Nan::Mismatch,
        )
        .unwrap_or_else(|e| panic!("context {b}×{s}×{h}×{d}: {e}"));
    }

    #[test]
    fn strided_heads_match_the_reference_f32_f64() {
        // Small entries (spread over the pool's threads) and, last, entries
        // above the threading threshold (one after the other, each split).
        let shapes = [
            (1, 1, 1, 1),
            (2, 5, 3, 4),
            (2, 17, 3, 9),
            (1, 33, 2, 64),
            (1, 128, 2, 64),
        ];
        for (i, shape) in shapes.into_iter().enumerate() {
            check_heads::<f32>(0x1234_5678 + i as u64, shape);
            check_heads::<f64>(0x8765_4321 + i as u64, shape);
        }
        const { assert!(2 * 128 * 128 * 64 >= pool::PARALLEL_MIN_FLOPS) };
    }

    /// Dense outputs (rows `n` apart, or one row) at offsets out of order
    /// and with gaps are written in place by the pool's tasks: each entry
    /// equals its reference product and the gaps keep their values.
    fn check_dense_outputs<T: Scalar>(seed: u64, (m, n, k): (usize, usize, usize)) {
        let mut rng = Rng(seed);
        let mut random =
            |len: usize| -> Vec<T> { (0..len).map(|_| T::from_f64_lossy(rng.unit())).collect() };
        let count = 7;
        // A_i read transposed (strides (1, m)), B_i row-major; C_i in reverse
        // order, one row apart.
        let (a, b) = (random(count * m * k), random(count * k * n));
        let offsets: Vec<(usize, usize)> = (0..count).map(|i| (i * m * k, i * k * n)).collect();
        let c_at: Vec<usize> = (0..count).map(|i| (count - 1 - i) * (m + 1) * n).collect();
        let layout = StridedLayout::new((m, n), (1, m), (n, 1), n, c_at.clone()).expect("valid");
        assert!(layout.outputs_disjoint());
        let batch = Batch {
            m,
            n,
            k,
            offsets: &offsets,
            layout: Some(&layout),
        };
        let sentinel = T::from_f64_lossy(-7.5);
        let mut c = vec![sentinel; count * (m + 1) * n];
        let mut ws = vec![T::nan(); batched_workspace_len::<T>(count, m, n, k, false)];
        gemm_batched(
            &batch,
            &a,
            BatchRhs::Entries(&b),
            &mut c,
            &mut ws,
            &Epilogue::none(),
        )
        .expect("valid batch");
        let mut want = vec![sentinel; c.len()];
        for (i, &at) in c_at.iter().enumerate() {
            let ai = MatRef::with_strides(&a[i * m * k..], m, k, 1, m).expect("fits");
            let bi = MatRef::new(&b[i * k * n..(i + 1) * k * n], k, n).expect("fits");
            let mut ci = MatMut::new(&mut want[at..at + m * n], m, n).expect("fits");
            reference::gemm(T::one(), ai, bi, T::zero(), &mut ci);
        }
        let tol = 16.0 * k as f64 * T::EPSILON_F64;
        check_close(&c, &want, tol, tol, Nan::Mismatch)
            .unwrap_or_else(|e| panic!("dense outputs {m}×{n}×{k}: {e}"));
    }

    #[test]
    fn dense_strided_outputs_are_written_in_place_f32_f64() {
        for (i, shape) in [(5, 6, 3), (1, 9, 4), (16, 33, 8)].into_iter().enumerate() {
            check_dense_outputs::<f32>(0x0dd5_eed0 + i as u64, shape);
            check_dense_outputs::<f64>(0x5eed_0dd0 + i as u64, shape);
        }
    }

    #[test]
    fn a_layout_for_another_batch_is_an_error() {
        let l = StridedLayout::new((2, 2), (2, 1), (2, 1), 2, vec![0]).expect("valid");
        let batch = Batch {
            m: 2,
            n: 2,
            k: 2,
            offsets: &[(0, 0), (4, 4)],
            layout: Some(&l),
        };
        let (x, mut c) = (vec![0.0f64; 8], vec![0.0f64; 8]);
        let mut ws = vec![0.0f64; batched_workspace_len::<f64>(2, 2, 2, 2, false)];
        let err = gemm_batched(
            &batch,
            &x,
            BatchRhs::Entries(&x),
            &mut c,
            &mut ws,
            &Epilogue::none(),
        );
        assert!(matches!(err, Err(KernelError::Geometry { .. })), "{err:?}");
    }

    #[test]
    fn head_merge_outputs_are_disjoint() {
        // [b=2, h=3, s=4, d=5] written into [b, s, h·d]: entry (b, h) at b·s·h·d + h·d.
        let c: Vec<usize> = (0..2)
            .flat_map(|b| (0..3).map(move |h| b * 4 * 15 + h * 5))
            .collect();
        let l = StridedLayout::new((4, 5), (5, 1), (5, 1), 15, c).expect("valid");
        assert!(l.outputs_disjoint());
        assert_eq!(l.c_end(), 120);
    }

    #[test]
    fn overlapping_outputs_are_detected() {
        // Two entries one row apart overlap in 3 of their 4 rows.
        let l = StridedLayout::new((4, 5), (5, 1), (5, 1), 15, vec![0, 15]).expect("valid");
        assert!(!l.outputs_disjoint());
        // Columns that partly overlap.
        let l = StridedLayout::new((4, 5), (5, 1), (5, 1), 15, vec![0, 3]).expect("valid");
        assert!(!l.outputs_disjoint());
        // One-row entries.
        let l = StridedLayout::new((1, 5), (5, 1), (5, 1), 5, vec![0, 5, 9]).expect("valid");
        assert!(!l.outputs_disjoint());
        let l = StridedLayout::new((1, 5), (5, 1), (5, 1), 5, vec![10, 0, 5]).expect("valid");
        assert!(l.outputs_disjoint());
    }

    /// Offsets or strides whose ends pass usize::MAX are refused by the
    /// length checks (they must not wrap to a small, "valid" end).
    #[test]
    fn offsets_past_usize_max_are_an_error() {
        // (m, n, k, A strides, C offsets): a C offset, then an A stride, too far.
        let cases = [
            (1, 4, 1, (1, 1), vec![0, usize::MAX - 2]),
            (2, 2, 2, (usize::MAX / 2, 1), vec![0, 4]),
        ];
        for (m, n, k, sa, c_offsets) in cases {
            let l = StridedLayout::new((m, n), sa, (n, 1), n, c_offsets).expect("valid shape");
            let batch = Batch {
                m,
                n,
                k,
                offsets: &[(0, 0), (0, 0)],
                layout: Some(&l),
            };
            let (a, b) = (vec![1.0f32; m * k], vec![1.0f32; k * n]);
            let mut c = vec![0.0f32; 2 * m * n];
            let mut ws = vec![0.0f32; batched_workspace_len::<f32>(2, m, n, k, false)];
            let rhs = BatchRhs::Entries(&b);
            let err = gemm_batched(&batch, &a, rhs, &mut c, &mut ws, &Epilogue::none());
            assert!(matches!(err, Err(KernelError::Length { .. })), "{err:?}");
        }
    }

    #[test]
    fn overlapping_rows_are_an_error() {
        let err = StridedLayout::new((2, 5), (5, 1), (5, 1), 4, vec![0]);
        assert!(matches!(err, Err(KernelError::Geometry { .. })), "{err:?}");
    }
}
