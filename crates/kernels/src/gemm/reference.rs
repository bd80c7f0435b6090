//! The plain triple loop every optimized kernel is tested against.

use super::{MatMut, MatRef};
use crate::Scalar;

/// `C ← α·A·B + β·C` by definition (i-p-j order so the inner loop streams rows).
pub(crate) fn gemm<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    beta: T,
    c: &mut MatMut<'_, T>,
) {
    for i in 0..a.rows() {
        let row = c.row_mut(i);
        if beta == T::zero() {
            row.iter_mut().for_each(|x| *x = T::zero());
        } else if beta != T::one() {
            row.iter_mut().for_each(|x| *x *= beta);
        }
        for p in 0..a.cols() {
            let s = alpha * a.at(i, p);
            for (j, x) in row.iter_mut().enumerate() {
                *x += s * b.at(p, j);
            }
        }
    }
}
