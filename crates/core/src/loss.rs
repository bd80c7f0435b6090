//! Losses: each returns the scalar loss and its gradient with respect to
//! the prediction, ready for `Layer::backward`.

use crate::{Error, IdTensor, Result, Tensor};
use cranelora_kernels::Scalar;

/// A loss value and ∂loss/∂prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput<T> {
    /// The scalar loss.
    pub value: T,
    /// Its gradient with respect to the prediction (the prediction's shape).
    pub grad: Tensor<T>,
}

/// Mean squared error `L = mean((ŷ − y)²)` over all elements; `∂L/∂ŷ = 2(ŷ − y)/N`.
///
/// # Errors
/// [`Error::Incompatible`] if the shapes differ, [`Error::Shape`] if empty.
pub fn mse<T: Scalar>(prediction: &Tensor<T>, target: &Tensor<T>) -> Result<LossOutput<T>> {
    if prediction.shape() != target.shape() {
        return Err(Error::Incompatible {
            path: String::new(),
            op: "mse".into(),
            lhs: prediction.shape().to_vec(),
            rhs: target.shape().to_vec(),
        });
    }
    if prediction.is_empty() {
        return Err(Error::shape(
            "mse",
            "prediction",
            "at least one element",
            prediction.shape(),
        ));
    }
    let diff = prediction.sub(target)?;
    let n = T::from_usize(diff.len()).expect("internal: counts fit in a float");
    let value = diff.array().iter().map(|&d| d * d).sum::<T>() / n;
    let two_over_n = (T::one() + T::one()) / n;
    Ok(LossOutput {
        value,
        grad: diff.scale(two_over_n),
    })
}

/// Cross-entropy with logits, averaged over rows: `logits` is `[.., C]`,
/// `targets` holds one class id per row (shape `[..]`);
/// `L = mean(−log softmax(z)[t])` and `∂L/∂z = (softmax(z) − onehot(t))/N`.
/// The log-sum-exp is taken after subtracting each row's maximum, so large
/// logits do not overflow.
///
/// # Errors
/// [`Error::Shape`] if the shapes do not correspond or there are no rows,
/// [`Error::IdOutOfRange`] for a class id outside `0..C`.
pub fn cross_entropy_with_logits<T: Scalar>(
    logits: &Tensor<T>,
    targets: &IdTensor,
) -> Result<LossOutput<T>> {
    let s = logits.shape();
    if s.is_empty() || &s[..s.len() - 1] != targets.shape() || logits.is_empty() {
        return Err(Error::shape(
            "cross_entropy",
            "logits",
            format!(
                "[{}, C] matching targets {:?}, non-empty",
                targets
                    .shape()
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                targets.shape()
            ),
            s,
        ));
    }
    let c = s[s.len() - 1];
    let rows = logits.len() / c;
    let z = logits.clone().into_contiguous();
    let z = z.as_slice().expect("internal: contiguous");
    let n = T::from_usize(rows).expect("internal: counts fit in a float");
    let mut grad = vec![T::zero(); z.len()];
    let mut total = T::zero();
    for (r, &t) in targets.array().iter().enumerate() {
        if t < 0 || t as usize >= c {
            return Err(Error::IdOutOfRange {
                path: String::new(),
                kind: "cross_entropy".into(),
                id: t,
                position: r,
                vocab: c,
            });
        }
        let row = &z[r * c..(r + 1) * c];
        let max = row.iter().copied().fold(T::neg_infinity(), T::max);
        let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
        // −log softmax(z)[t] = log Σ e^(z − max) − (z_t − max)
        total += sum.ln() - (row[t as usize] - max);
        for (j, g) in grad[r * c..(r + 1) * c].iter_mut().enumerate() {
            let p = (row[j] - max).exp() / sum;
            *g = (p - if j == t as usize { T::one() } else { T::zero() }) / n;
        }
    }
    Ok(LossOutput {
        value: total / n,
        grad: Tensor::from_vec(grad, s)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;
    use crate::Rng;

    #[test]
    fn mse_hand_computed() {
        let p = Tensor::from_vec(vec![1.0, 2.0, 4.0], &[3]).unwrap();
        let t = Tensor::from_vec(vec![0.0, 2.0, 1.0], &[3]).unwrap();
        // (1 + 0 + 9)/3 = 10/3; grad = 2·[1, 0, 3]/3.
        let out = mse(&p, &t).unwrap();
        assert_close(&[out.value], &[10.0 / 3.0], 1e-15, 0.0);
        assert_close(&out.grad.to_vec(), &[2.0 / 3.0, 0.0, 2.0], 1e-15, 0.0);
        assert!(mse(&p, &Tensor::zeros(&[2])).is_err());
    }

    #[test]
    fn cross_entropy_hand_computed_and_stable() {
        // Uniform logits over 4 classes: loss = ln 4, grad = (1/4 − onehot)/rows.
        let z = Tensor::from_vec(vec![1000.0f64; 8], &[2, 4]).unwrap();
        let t = IdTensor::from_vec(vec![0, 3], &[2]).unwrap();
        let out = cross_entropy_with_logits(&z, &t).unwrap();
        assert_close(&[out.value], &[4f64.ln()], 1e-14, 0.0);
        let mut g = vec![0.125; 8];
        g[0] = -0.375;
        g[7] = -0.375;
        assert_close(&out.grad.to_vec(), &g, 1e-14, 0.0);
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let z = Tensor::<f64>::random_normal(&[3, 5], 0.0, 2.0, &mut Rng::new(1));
        let t = IdTensor::from_vec(vec![4, 0, 2], &[3]).unwrap();
        let g = cross_entropy_with_logits(&z, &t).unwrap().grad.to_vec();
        let h = 1e-6;
        for i in 0..z.len() {
            let mut zp = z.to_vec();
            zp[i] += h;
            let mut zm = z.to_vec();
            zm[i] -= h;
            let lp = cross_entropy_with_logits(&Tensor::from_vec(zp, &[3, 5]).unwrap(), &t)
                .unwrap()
                .value;
            let lm = cross_entropy_with_logits(&Tensor::from_vec(zm, &[3, 5]).unwrap(), &t)
                .unwrap()
                .value;
            assert_close(&[g[i]], &[(lp - lm) / (2.0 * h)], 1e-6, 1e-9);
        }
    }

    #[test]
    fn cross_entropy_rejects_bad_targets() {
        let z = Tensor::<f32>::zeros(&[2, 3]);
        assert!(matches!(
            cross_entropy_with_logits(&z, &IdTensor::from_vec(vec![0, 3], &[2]).unwrap()),
            Err(Error::IdOutOfRange {
                id: 3,
                position: 1,
                ..
            })
        ));
        assert!(
            cross_entropy_with_logits(&z, &IdTensor::from_vec(vec![0], &[1]).unwrap()).is_err()
        );
    }
}
