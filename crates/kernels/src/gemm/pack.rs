//! Packing operands into the microkernels' panel order.
//!
//! `A` goes into rows `lda` elements apart (`lda ≥ kc`, a constant of the
//! kernel family): element `(i, p)` at `i·lda + p`, so packing a row-major
//! `A` is one copy per row. `B` goes into micro-panels of `nr` columns:
//! panel `q` starts at `q·kc·nr` and holds element `(p, j)` at `p·nr + j`,
//! zero-padded past the last column. Both copy from any strided view, with
//! a contiguous fast path for the common layouts.

use super::MatRef;
use std::ops::Range;

/// Elements [`pack_a`] writes for `rows` rows.
pub(super) fn packed_a_len(rows: usize, lda: usize) -> usize {
    rows * lda
}

/// Elements [`pack_b`] writes for `cols` columns of depth `kc`.
pub(super) fn packed_b_len(cols: usize, kc: usize, nr: usize) -> usize {
    cols.div_ceil(nr) * nr * kc
}

/// Packs `a[rows, ks]` into `out`, row `i` at `i·lda`.
pub(super) fn pack_a<E: Copy>(
    a: MatRef<'_, E>,
    rows: Range<usize>,
    ks: Range<usize>,
    lda: usize,
    out: &mut [E],
) {
    let kc = ks.len();
    if a.row_stride == 1 && a.col_stride != 1 {
        // Column-major A (a transposed view): read each column contiguously.
        for p in 0..kc {
            let start = (ks.start + p) * a.col_stride + rows.start;
            for (i, &x) in a.data[start..start + rows.len()].iter().enumerate() {
                out[i * lda + p] = x;
            }
        }
        return;
    }
    for (i, dst) in out.chunks_mut(lda).take(rows.len()).enumerate() {
        let r = rows.start + i;
        if a.col_stride == 1 {
            let start = r * a.row_stride + ks.start;
            dst[..kc].copy_from_slice(&a.data[start..start + kc]);
        } else {
            for (p, x) in dst[..kc].iter_mut().enumerate() {
                *x = a.at(r, ks.start + p);
            }
        }
    }
}

/// Packs `b[ks, cols]` into `out` as micro-panels of `nr` columns.
pub(super) fn pack_b<E: Copy + Default>(
    b: MatRef<'_, E>,
    ks: Range<usize>,
    cols: Range<usize>,
    nr: usize,
    out: &mut [E],
) {
    let kc = ks.len();
    let panel_len = kc * nr;
    if b.col_stride == 1 {
        // Row-major B: stream each source row once, scattering nr-wide
        // pieces to the panels (rows of B may be pages apart).
        for p in 0..kc {
            let start = (ks.start + p) * b.row_stride;
            let src = &b.data[start + cols.start..start + cols.end];
            for (q, piece) in src.chunks(nr).enumerate() {
                let row = &mut out[q * panel_len + p * nr..q * panel_len + (p + 1) * nr];
                row[..piece.len()].copy_from_slice(piece);
                row[piece.len()..].fill(E::default());
            }
        }
        return;
    }
    for (q, j0) in cols.clone().step_by(nr).enumerate() {
        let width = nr.min(cols.end - j0);
        let dst = &mut out[q * panel_len..(q + 1) * panel_len];
        for j in 0..width {
            for (p, row) in dst.chunks_exact_mut(nr).enumerate() {
                row[j] = b.at(ks.start + p, j0 + j);
            }
        }
        dst.chunks_exact_mut(nr)
            .for_each(|row| row[width..].fill(E::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(len: usize) -> Vec<f32> {
        (0..len).map(|x| x as f32).collect()
    }

    #[test]
    fn pack_a_copies_rows_at_lda_from_any_layout() {
        let data = iota(12); // 3×4 row-major
        let a = MatRef::new(&data, 3, 4).expect("fits");
        let mut out = vec![-1.0; packed_a_len(2, 3)];
        pack_a(a, 1..3, 1..3, 3, &mut out);
        // Rows 1 and 2, columns 1 and 2; the padding column is untouched.
        assert_eq!(out, [5.0, 6.0, -1.0, 9.0, 10.0, -1.0]);
        let t: Vec<f32> = (0..12).map(|x| data[(x % 3) * 4 + x / 3]).collect();
        let col_major = MatRef::new(&t, 4, 3).expect("fits").t();
        let mut out_t = vec![-1.0; out.len()];
        pack_a(col_major, 1..3, 1..3, 3, &mut out_t);
        assert_eq!(out_t, out);
        let strided = MatRef::with_strides(&data, 3, 2, 4, 2).expect("fits");
        let mut out_s = vec![-1.0; packed_a_len(1, 2)];
        pack_a(strided, 2..3, 0..2, 2, &mut out_s);
        assert_eq!(out_s, [8.0, 10.0]);
    }

    #[test]
    fn pack_b_zero_pads_and_agrees_across_layouts() {
        let data = iota(15); // 3×5 row-major
        let b = MatRef::new(&data, 3, 5).expect("fits");
        let mut row_major = vec![-1.0; packed_b_len(5, 3, 4)];
        pack_b(b, 0..3, 0..5, 4, &mut row_major);
        assert_eq!(&row_major[..8], &[0.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(&row_major[12..16], &[4.0, 0.0, 0.0, 0.0]);
        let t = iota(15); // its transpose stored column-major: a 5×3 row-major, viewed as .t()
        let bt: Vec<f32> = (0..15).map(|x| t[(x % 3) * 5 + x / 3]).collect();
        let view = MatRef::new(&bt, 5, 3).expect("fits").t();
        let mut col_major = vec![-1.0; row_major.len()];
        pack_b(view, 0..3, 0..5, 4, &mut col_major);
        assert_eq!(col_major, row_major);
        let strided = MatRef::with_strides(&data, 3, 3, 5, 2).expect("fits");
        let mut out = vec![-1.0; packed_b_len(3, 3, 4)];
        pack_b(strided, 0..3, 0..3, 4, &mut out);
        assert_eq!(&out[..4], &[0.0, 2.0, 4.0, 0.0]);
    }
}
