//! Row reductions against plain scalar references, on every instruction
//! set of the host, f32 and f64, with NaN and ±∞ inputs.

use super::super::Func;
use super::*;

const LENS: [usize; 7] = [0, 1, 15, 16, 17, 128, 383];

/// Deterministic values in about [−scale, scale] (a Weyl sequence).
fn values<T: Scalar>(n: usize, seed: u64, scale: f64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let u = ((i + 1) * 0x9E37_79B9 + seed * 0x85EB_CA6B) % 1_000_003;
            T::from_f64_lossy((u as f64 / 500_001.5 - 1.0) * scale)
        })
        .collect()
}

/// The interpreter's max: the first NaN wins, −∞ when empty.
fn max_ref<T: Scalar>(x: &[T]) -> T {
    x.iter().fold(T::neg_infinity(), |m, &v| {
        if m.is_nan() || !(v.is_nan() || v > m) {
            m
        } else {
            v
        }
    })
}

/// `|got − Σ terms| ≤ n·ε·Σ|terms|` (the sum evaluated in f64).
fn assert_sum<T: Scalar>(got: T, terms: impl Iterator<Item = f64>, what: &str) {
    let (mut s, mut a, mut n) = (0.0, 0.0, 0.0);
    for t in terms {
        (s, a, n) = (s + t, a + t.abs(), n + 1.0);
    }
    let err = (got.to_f64_exact() - s).abs();
    assert!(
        err <= (n + 2.0) * T::EPSILON_F64 * a,
        "{what}: got {got}, want {s}"
    );
}

fn each_case<T: Scalar>(check: impl Fn(Isa, &[T], &str)) {
    for isa in Isa::available() {
        for n in LENS {
            for seed in 0..3 {
                let x = values::<T>(n, seed, 10.0);
                check(
                    isa,
                    &x,
                    &format!("{} {:?} n={n} seed={seed}", isa.name(), T::DTYPE),
                );
            }
        }
    }
}

fn max_matches_reference<T: Scalar>() {
    each_case::<T>(|isa, x, what| {
        let got = reduce_with(isa, Row::Max(x));
        assert_eq!(got, max_ref(x), "{what}");
        for (pos, special) in [
            (0, T::nan()),
            (x.len() / 2, T::nan()),
            (x.len().max(1) - 1, T::infinity()),
        ]
        .into_iter()
        .chain([
            (x.len() / 3, T::neg_infinity()),
            (x.len().max(1) - 1, T::nan()),
        ]) {
            if x.is_empty() {
                break;
            }
            let mut y = x.to_vec();
            y[pos] = special;
            let got = reduce_with(isa, Row::Max(&y));
            let want = max_ref(&y);
            assert!(
                got == want || got.is_nan() && want.is_nan(),
                "{what} {special} at {pos}: {got} vs {want}"
            );
        }
    });
}

#[test]
fn max_matches_reference_f32() {
    max_matches_reference::<f32>();
}

#[test]
fn max_matches_reference_f64() {
    max_matches_reference::<f64>();
}

#[test]
fn max_of_all_infinite_and_empty_rows() {
    for isa in Isa::available() {
        let inf = [f32::NEG_INFINITY; 17];
        assert_eq!(reduce_with(isa, Row::Max(&inf[..])), f32::NEG_INFINITY);
        assert_eq!(reduce_with(isa, Row::Max(&[] as &[f64])), f64::NEG_INFINITY);
        let mixed = [f64::INFINITY, f64::NEG_INFINITY, 1.0];
        assert_eq!(reduce_with(isa, Row::Max(&mixed[..])), f64::INFINITY);
    }
}

fn sums_match_reference<T: Scalar>() {
    each_case::<T>(|isa, x, what| {
        let f = |v: &T| v.to_f64_exact();
        assert_sum(reduce_with(isa, Row::Sum(x)), x.iter().map(f), what);
        let c = T::from_f64_lossy(0.75);
        let dev = |v: &T| (f(v) - 0.75) * (f(v) - 0.75);
        assert_sum(reduce_with(isa, Row::SqDev(x, c)), x.iter().map(dev), what);
    });
}

#[test]
fn sums_match_reference_f32() {
    sums_match_reference::<f32>();
}

#[test]
fn sums_match_reference_f64() {
    sums_match_reference::<f64>();
}

/// The exponentials are exactly the kernels' exp of `x − shift`; the sum
/// is their sum.
fn exp_sum_matches_map<T: Scalar>() {
    each_case::<T>(|isa, x, what| {
        let shift = T::from_f64_lossy(2.5);
        let diff: Vec<T> = x.iter().map(|&v| v - shift).collect();
        let mut want = vec![T::zero(); x.len()];
        super::super::apply_with(isa, Func::Exp, &diff, &mut want).unwrap();
        let mut got = x.to_vec();
        let total = reduce_with(isa, Row::ExpSum(&mut got, shift));
        assert_eq!(got, want, "{what}");
        assert_sum(total, want.iter().map(|v| v.to_f64_exact()), what);
    });
}

#[test]
fn exp_sum_matches_map_f32() {
    exp_sum_matches_map::<f32>();
}

#[test]
fn exp_sum_matches_map_f64() {
    exp_sum_matches_map::<f64>();
}

/// Within a few ulp (relative) of the divided reference, with
/// values over a wide range so that exp underflows in places.
fn softmax_matches_reference<T: Scalar>() {
    each_case::<T>(|isa, x, what| {
        let x: Vec<T> = x.iter().map(|&v| v * T::from_f64_lossy(5.0)).collect();
        // x − max rounds in T, in the interpreter as here.
        let m = max_ref(&x);
        let e: Vec<f64> = x.iter().map(|&v| (v - m).to_f64_exact().exp()).collect();
        let s: f64 = e.iter().sum();
        let mut got = x.clone();
        reduce_with(isa, Row::Softmax(&mut got));
        // Subnormal results are exact to their last bit only.
        let sub = T::min_positive_value().to_f64_exact() * T::EPSILON_F64;
        for (g, w) in got.iter().zip(&e) {
            let (g, w) = (g.to_f64_exact(), w / s);
            assert!(
                (g - w).abs() <= 4.0 * T::EPSILON_F64 * w + 2.0 * sub,
                "{what}: {g} vs {w}"
            );
        }
    });
}

#[test]
fn softmax_matches_reference_f32() {
    softmax_matches_reference::<f32>();
}

#[test]
fn softmax_matches_reference_f64() {
    softmax_matches_reference::<f64>();
}

/// A NaN or +∞ anywhere, or a row of −∞, makes the whole row NaN (as the
/// interpreter); a −∞ element among finite ones becomes 0.
#[test]
fn softmax_special_rows() {
    for isa in Isa::available() {
        for special in [f32::NAN, f32::INFINITY] {
            let mut x = values::<f32>(17, 1, 3.0);
            x[5] = special;
            reduce_with(isa, Row::Softmax(&mut x));
            assert!(x.iter().all(|v| v.is_nan()), "{} {special}", isa.name());
        }
        let mut x = vec![f64::NEG_INFINITY; 9];
        reduce_with(isa, Row::Softmax(&mut x));
        assert!(x.iter().all(|v| v.is_nan()));
        let mut x = vec![0.0f64, f64::NEG_INFINITY, 0.0];
        reduce_with(isa, Row::Softmax(&mut x));
        assert_eq!(x, [0.5, 0.0, 0.5]);
    }
}

#[test]
fn moments_of_a_known_row() {
    let x: Vec<f64> = (1..=383).map(f64::from).collect();
    let (mean, var) = moments(&x);
    assert_eq!(mean, 192.0);
    // Σ(k − 192)² over k = 1..=383 is 2·Σ_{j=1}^{191} j².
    let want = 2.0 * (191.0 * 192.0 * 383.0 / 6.0) / 383.0;
    assert!((var - want).abs() <= 1e-12 * want, "{var} vs {want}");
    let (m32, v32) = moments(&[2.0f32; 16]);
    assert_eq!((m32, v32), (2.0, 0.0));
    assert!(moments::<f32>(&[]).0.is_nan());
}
