//! Sentence embeddings from token states, as sentence-transformers
//! computes them for the BERT family: `Pooling(mean)` then `Normalize`.
//!
//! ```text
//! mean[b] = Σ_t h[b, t] · mask[b, t] / max(Σ_t mask[b, t], 1e-9)
//! emb[b]  = mean[b] / max(‖mean[b]‖₂, 1e-12)
//! ```

use crate::{Error, Mask, Result, Tensor};
use cranelora_kernels::Scalar;

/// The mask-weighted mean over the sequence of `h` `[batch, seq, d]` with
/// the padding mask `[batch, seq]` (`true` = real token): `[batch, d]`. A
/// row without real tokens is zero (sentence-transformers clamps the count
/// at 1e-9).
///
/// # Errors
/// [`Error::Shape`] if `h` is not 3-D or the mask is not `[batch, seq]`.
pub fn mean_pool<T: Scalar>(h: &Tensor<T>, mask: &Mask) -> Result<Tensor<T>> {
    let &[b, s, d] = h.shape() else {
        return Err(Error::shape(
            "mean_pool",
            "hidden states",
            "[batch, seq, d]",
            h.shape(),
        ));
    };
    if mask.shape() != [b, s] {
        return Err(Error::shape(
            "mean_pool",
            "mask",
            format!("[{b}, {s}]"),
            mask.shape(),
        ));
    }
    // Row slices of a standard-layout copy (none is made when `h` is
    // contiguous, the usual case): each token's `d` values are added to the
    // f64 sums in one pass the compiler vectorizes, instead of `b·s·d`
    // indexed (bounds-checked) reads. Same sums in the same order.
    let h = h.array().as_standard_layout();
    let h = h.as_slice().expect("internal: standard layout");
    let keep = mask.array();
    let mut out = vec![T::zero(); b * d];
    let mut sum = vec![0.0f64; d];
    for (bi, row) in out.chunks_mut(d.max(1)).enumerate() {
        // Accumulated in f64, then rounded once.
        sum.fill(0.0);
        let mut count = 0.0f64;
        for t in (0..s).filter(|&t| keep[[bi, t]]) {
            count += 1.0;
            let token = &h[(bi * s + t) * d..(bi * s + t + 1) * d];
            for (acc, v) in sum.iter_mut().zip(token) {
                *acc += v.to_f64_exact();
            }
        }
        let count = count.max(1e-9);
        for (o, acc) in row.iter_mut().zip(&sum) {
            *o = T::from_f64_lossy(acc / count);
        }
    }
    Tensor::from_vec(out, &[b, d])
}

/// Each row of `x` `[batch, d]` divided by its L2 norm (at least 1e-12, as
/// `torch.nn.functional.normalize`).
///
/// # Errors
/// [`Error::Shape`] if `x` is not 2-D.
pub fn l2_normalize<T: Scalar>(x: &Tensor<T>) -> Result<Tensor<T>> {
    let &[_, d] = x.shape() else {
        return Err(Error::shape(
            "l2_normalize",
            "input",
            "[batch, d]",
            x.shape(),
        ));
    };
    let mut out = x.clone().into_contiguous();
    let data = out.as_slice_mut().expect("internal: contiguous");
    for row in data.chunks_mut(d.max(1)) {
        let norm = row
            .iter()
            .map(|v| v.to_f64_exact().powi(2))
            .sum::<f64>()
            .sqrt();
        let scale = 1.0 / norm.max(1e-12);
        row.iter_mut()
            .for_each(|v| *v = T::from_f64_lossy(v.to_f64_exact() * scale));
    }
    Ok(out)
}

/// The cosine similarity of every pair of rows of `x` `[n, d]`: `[n, n]`.
///
/// # Errors
/// [`Error::Shape`] if `x` is not 2-D.
pub fn cosine_similarity_matrix<T: Scalar>(x: &Tensor<T>) -> Result<Tensor<T>> {
    let unit = l2_normalize(x)?;
    unit.matmul(&unit.t()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_tensor_close;

    #[test]
    fn mean_pool_skips_padding_and_normalize_gives_unit_rows() {
        // Row 0: tokens [1, 2] and [3, 4], the third is padding ([100, 100]).
        let h = Tensor::<f64>::from_vec(
            vec![
                1.0, 2.0, 3.0, 4.0, 100.0, 100.0, 0.0, 0.0, 6.0, 8.0, 9.0, 9.0,
            ],
            &[2, 3, 2],
        )
        .unwrap();
        let mask = Mask::from_vec(vec![true, true, false, false, true, false], &[2, 3]).unwrap();
        let mean = mean_pool(&h, &mask).unwrap();
        let expected = Tensor::from_vec(vec![2.0, 3.0, 6.0, 8.0], &[2, 2]).unwrap();
        assert_tensor_close(&mean, &expected, 1e-15, 0.0);
        let unit = l2_normalize(&mean).unwrap();
        let expected = Tensor::from_vec(vec![2.0, 3.0, 0.6, 0.8], &[2, 2]).unwrap();
        let n = 13f64.sqrt();
        let expected = expected
            .mul(&Tensor::from_vec(vec![1.0 / n, 1.0 / n, 1.0, 1.0], &[2, 2]).unwrap())
            .unwrap();
        assert_tensor_close(&unit, &expected, 1e-15, 0.0);
        let cos = cosine_similarity_matrix(&mean.cast::<f32>()).unwrap();
        assert!((cos.to_vec()[0] - 1.0).abs() < 1e-6);
    }

    /// The definition, one indexed read at a time (the loop `mean_pool` had
    /// before it read row slices).
    fn mean_pool_indexed<T: Scalar>(h: &Tensor<T>, mask: &Mask) -> Vec<T> {
        let (h, keep) = (h.array(), mask.array());
        let (b, s, d) = (h.shape()[0], h.shape()[1], h.shape()[2]);
        let mut out = Vec::new();
        for bi in 0..b {
            let mut sum = vec![0.0f64; d];
            let mut count = 0.0f64;
            for t in (0..s).filter(|&t| keep[[bi, t]]) {
                count += 1.0;
                for (k, acc) in sum.iter_mut().enumerate() {
                    *acc += h[[bi, t, k]].to_f64_exact();
                }
            }
            out.extend(sum.iter().map(|a| T::from_f64_lossy(a / count.max(1e-9))));
        }
        out
    }

    #[test]
    fn mean_pool_matches_the_indexed_definition_bit_for_bit() {
        let mut rng = crate::Rng::new(7);
        let (b, s, d) = (3, 9, 13);
        // Row 0 full, row 1 partly padded (holes too), row 2 fully padded.
        let keep: Vec<bool> = (0..b * s)
            .map(|i| match i / s {
                0 => true,
                1 => i % s < 6 && i % s != 2,
                _ => false,
            })
            .collect();
        let mask = Mask::from_vec(keep, &[b, s]).unwrap();
        let h32 = Tensor::<f32>::random_normal(&[b, s, d], 0.0, 3.0, &mut rng);
        let h64 = Tensor::<f64>::random_normal(&[b, s, d], 0.0, 3.0, &mut rng);
        assert_eq!(
            mean_pool(&h32, &mask).unwrap().to_vec(),
            mean_pool_indexed(&h32, &mask)
        );
        assert_eq!(
            mean_pool(&h64, &mask).unwrap().to_vec(),
            mean_pool_indexed(&h64, &mask)
        );
        // A non-contiguous view ([b, d, s] storage read as [b, s, d]).
        let stored = Tensor::<f64>::random_normal(&[b, d, s], 0.0, 1.0, &mut rng);
        let view = Tensor::from_array(stored.array().clone().permuted_axes(vec![0, 2, 1]));
        assert!(view.as_slice().is_none());
        assert_eq!(
            mean_pool(&view, &mask).unwrap().to_vec(),
            mean_pool_indexed(&view, &mask)
        );
    }

    #[test]
    fn empty_rows_are_zero_and_bad_shapes_are_errors() {
        let h = Tensor::<f32>::ones(&[1, 2, 3]);
        let none = Mask::from_vec(vec![false, false], &[1, 2]).unwrap();
        assert_eq!(mean_pool(&h, &none).unwrap().to_vec(), vec![0.0; 3]);
        assert_eq!(
            l2_normalize(&Tensor::<f32>::zeros(&[1, 3]))
                .unwrap()
                .to_vec(),
            vec![0.0; 3]
        );
        let bad = Mask::from_vec(vec![true; 3], &[1, 3]).unwrap();
        assert!(mean_pool(&h, &bad)
            .unwrap_err()
            .to_string()
            .contains("[1, 2]"));
        assert!(l2_normalize(&h).is_err());
    }
}
