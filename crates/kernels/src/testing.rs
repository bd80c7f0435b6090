//! The one closeness check every cranelora test uses.
//!
//! `actual` is close to `expected` when `max|a − e| ≤ atol + rtol·max|e|`
//! over all elements: one tolerance scaled by the magnitude of the whole
//! reference, so that entries near zero are not judged by a relative error
//! they cannot have. NaN is never close to anything unless the caller asks
//! for NaN to equal NaN ([`Nan::Equal`]).

use crate::Scalar;

/// How NaN in the expected values is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nan {
    /// Any NaN is a mismatch.
    Mismatch,
    /// NaN matches NaN at the same position (and nothing else).
    Equal,
}

/// Checks closeness and says why not: the worst element, its index and both values.
///
/// # Errors
/// A message naming the lengths if they differ, or the worst element and the
/// bound it exceeds.
pub fn check_close<T: Scalar>(
    actual: &[T],
    expected: &[T],
    rtol: f64,
    atol: f64,
    nan: Nan,
) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "length mismatch: actual has {}, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let scale = expected
        .iter()
        .map(|e| e.to_f64_exact().abs())
        .filter(|e| e.is_finite())
        .fold(0.0, f64::max);
    let bound = atol + rtol * scale;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a.to_f64_exact(), e.to_f64_exact());
        let diff = match (a.is_nan(), e.is_nan()) {
            (true, true) if nan == Nan::Equal => 0.0,
            (false, false) if a == e => 0.0, // also equal infinities
            (false, false) => (a - e).abs(),
            _ => f64::INFINITY,
        };
        if worst.is_none_or(|(_, d)| diff > d) {
            worst = Some((i, diff));
        }
    }
    match worst {
        Some((i, d)) if d.is_nan() || d > bound => Err(format!(
            "not close: element {i}: actual {} vs expected {} (|diff| = {d:e} > {bound:e} = {atol:e} + {rtol:e}·{scale:e})",
            actual[i], expected[i]
        )),
        _ => Ok(()),
    }
}

/// Panics unless `max|a − e| ≤ atol + rtol·max|e|`; NaN never matches.
///
/// # Panics
/// With the message of [`check_close`] when the values are not close.
#[track_caller]
pub fn assert_close<T: Scalar>(actual: &[T], expected: &[T], rtol: f64, atol: f64) {
    if let Err(msg) = check_close(actual, expected, rtol, atol, Nan::Mismatch) {
        panic!("{msg}");
    }
}

/// The f64 reference of a vector-math function, for accuracy tests of the
/// kernels and of code generated from the same coefficients: libm where it
/// has the function, otherwise the definition in a form without
/// cancellation (erfc for the GELU tails), and the functions' limits at
/// ±∞ (where the formula would give ∞·0).
pub fn math_reference(f: crate::math::Func, x: f64) -> f64 {
    use crate::math::Func;
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    let sigmoid = |v: f64| {
        if v >= 0.0 {
            1.0 / (1.0 + libm::exp(-v))
        } else {
            let e = libm::exp(v);
            e / (1.0 + e)
        }
    };
    let gelu_v = |x: f64| 2.0 * (2.0 / PI).sqrt() * (x + 0.044715 * x * x * x);
    let cdf = |x: f64| 0.5 * libm::erfc(-x * FRAC_1_SQRT_2);
    let limit = |lo: f64, hi: f64| if x < 0.0 { lo } else { hi };
    match f {
        Func::Exp => libm::exp(x),
        Func::Log => libm::log(x),
        Func::Tanh => libm::tanh(x),
        Func::Erf => libm::erf(x),
        Func::Sigmoid => sigmoid(x),
        _ if x.is_infinite() => match f {
            Func::Silu | Func::GeluErf | Func::GeluTanh => limit(-0.0, x),
            _ => limit(0.0, 1.0),
        },
        Func::Silu => x * sigmoid(x),
        Func::GeluErf => x * cdf(x),
        Func::GeluTanh => x * sigmoid(gelu_v(x)),
        Func::GeluErfGrad => cdf(x) + x * libm::exp(-0.5 * x * x) / (2.0 * PI).sqrt(),
        Func::GeluTanhGrad => {
            // Beyond ±1e4 the derivative is 0 or 1 to far below f64
            // precision; the clamp avoids 0·∞ in the formula below.
            let x = x.clamp(-1e4, 1e4);
            let v = gelu_v(x);
            let dv = 2.0 * (2.0 / PI).sqrt() * (1.0 + 3.0 * 0.044715 * x * x);
            sigmoid(v) + x * sigmoid(v) * sigmoid(-v) * dv
        }
    }
}

/// `len` values uniform in `[lo, hi)` from a xorshift64 stream started at
/// `seed` (non-zero): deterministic data for examples and probes, without
/// a random-number crate.
pub fn uniform(len: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (s >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_scales_with_the_largest_reference() {
        assert!(check_close(&[100.0f64, 1e-3], &[100.0, 0.0], 1e-5, 0.0, Nan::Mismatch).is_ok());
        assert!(check_close(&[100.0f64, 1e-2], &[100.0, 0.0], 1e-5, 0.0, Nan::Mismatch).is_err());
    }

    #[test]
    fn nan_matches_only_when_asked() {
        let x = [f64::NAN, 1.0];
        assert!(check_close(&x, &x, 0.0, 0.0, Nan::Mismatch).is_err());
        assert!(check_close(&x, &x, 0.0, 0.0, Nan::Equal).is_ok());
        assert!(check_close(&[1.0f32], &[f32::NAN], 1.0, 1.0, Nan::Equal).is_err());
    }

    #[test]
    fn infinities_match_themselves_only() {
        assert!(check_close(&[f32::INFINITY], &[f32::INFINITY], 0.0, 0.0, Nan::Mismatch).is_ok());
        assert!(check_close(&[f32::MAX], &[f32::INFINITY], 1.0, 1.0, Nan::Mismatch).is_err());
    }

    #[test]
    fn length_mismatch_is_reported() {
        let err = check_close(&[1.0f32], &[1.0, 2.0], 0.0, 0.0, Nan::Mismatch).unwrap_err();
        assert!(err.contains("length"), "{err}");
    }
}
