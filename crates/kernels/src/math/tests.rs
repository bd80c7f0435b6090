//! Accuracy against libm in f64, special values, tails, and agreement
//! between instruction sets.

use super::*;
use crate::testing::math_reference;

/// Test inputs, all finite: a dense grid on [−20, 20], a wide grid over the
/// exp range, and ±m·10^k down to subnormals.
fn inputs(dtype: DType) -> Vec<f64> {
    let lin = |lo: f64, hi: f64, n: usize| {
        (0..n).map(move |i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
    };
    let (wide, kmin, kmax) = match dtype {
        DType::F32 => ((-110.0, 95.0), -45, 38),
        _ => ((-750.0, 712.0), -323, 307),
    };
    let mut v: Vec<f64> = lin(-20.0, 20.0, 200_001)
        .chain(lin(wide.0, wide.1, 40_001))
        .collect();
    for k in kmin..=kmax {
        for m in [1.0, 1.7, 3.3, 6.1] {
            let x = m * 10f64.powi(k);
            v.extend([x, -x]);
        }
    }
    if dtype == DType::F32 {
        v.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    v.retain(|x| x.is_finite());
    v
}

fn run(isa: Isa, f: Func, dtype: DType, x: &[f64]) -> Vec<f64> {
    match dtype {
        DType::F32 => {
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut y = vec![0.0f32; x.len()];
            apply_with(isa, f, &x32, &mut y).expect("equal lengths");
            y.into_iter().map(f64::from).collect()
        }
        _ => {
            let mut y = vec![0.0; x.len()];
            apply_with(isa, f, x, &mut y).expect("equal lengths");
            y
        }
    }
}

/// Worst case over `x`: (max err/|ref| where |ref| ≥ 1e-3, the abs term
/// needed on top of `rel`, the input needing it), or an overflow mismatch.
fn measure(isa: Isa, f: Func, dtype: DType, x: &[f64], rel: f64) -> (f64, f64, f64) {
    let y = run(isa, f, dtype, x);
    let (mut max_rel, mut abs, mut worst) = (0.0f64, 0.0f64, 0.0);
    for (&xi, &yi) in x.iter().zip(&y) {
        let r = math_reference(f, xi);
        let rounded = if dtype == DType::F32 {
            r as f32 as f64
        } else {
            r
        };
        if r.is_nan() {
            // Outside the domain (log of a negative number).
            assert!(yi.is_nan(), "{f:?} {dtype} {} at {xi:e}: {yi}", isa.name());
            continue;
        }
        if rounded.is_infinite() {
            assert_eq!(yi, rounded, "{f:?} {dtype} {} at {xi:e}", isa.name());
            continue;
        }
        let err = (yi - r).abs();
        assert!(
            err.is_finite(),
            "{f:?} {dtype} {} at {xi:e}: {yi} vs {r}",
            isa.name()
        );
        if r.abs() >= 1e-3 {
            max_rel = max_rel.max(err / r.abs());
        }
        let need = err - rel * r.abs();
        if need > abs {
            (abs, worst) = (need, xi);
        }
    }
    (max_rel, abs, worst)
}

#[test]
fn every_isa_meets_the_documented_bounds() {
    for dtype in [DType::F32, DType::F64] {
        let x = inputs(dtype);
        for f in Func::ALL {
            let bound = max_error(f, dtype).expect("float dtype");
            for isa in Isa::available() {
                let (_, abs, worst) = measure(isa, f, dtype, &x, bound.rel);
                assert!(
                    abs <= bound.abs,
                    "{f:?} {dtype} {}: needs abs {abs:e} > {:e} at x = {worst:e}",
                    isa.name(),
                    bound.abs
                );
            }
        }
    }
}

/// Prints the measured table the documentation quotes:
/// `cargo test -p cranelora-kernels math::tests::error_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn error_table() {
    for dtype in [DType::F32, DType::F64] {
        let x = inputs(dtype);
        for f in Func::ALL {
            let bound = max_error(f, dtype).expect("float dtype");
            for isa in Isa::available() {
                let (rel, abs, worst) = measure(isa, f, dtype, &x, bound.rel);
                println!(
                    "{dtype} {f:<13?} {:<9} rel(|f|≥1e-3) {rel:.2e}  abs beyond rel {:.1e}: {abs:.2e} at {worst:.3e}",
                    isa.name(),
                    bound.rel
                );
            }
        }
    }
}

#[test]
fn special_values_give_limits() {
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    // (f, f(−∞), f(∞)); every function maps NaN to NaN.
    let limits = [
        (Func::Exp, 0.0, inf),
        (Func::Tanh, -1.0, 1.0),
        (Func::Erf, -1.0, 1.0),
        (Func::Sigmoid, 0.0, 1.0),
        (Func::Silu, 0.0, inf),
        (Func::GeluErf, 0.0, inf),
        (Func::GeluTanh, 0.0, inf),
        (Func::GeluErfGrad, 0.0, 1.0),
        (Func::GeluTanhGrad, 0.0, 1.0),
    ];
    for dtype in [DType::F32, DType::F64] {
        for isa in Isa::available() {
            // Log has no limit at −∞; `log_special_values_and_subnormals`.
            for (f, lo, hi) in limits {
                let y = run(isa, f, dtype, &[-inf, inf, nan, 0.0, -0.0]);
                let at = |i: usize| (y[i], isa.name(), dtype, f);
                assert_eq!(y[0], lo, "{:?}", at(0));
                assert_eq!(y[1], hi, "{:?}", at(1));
                assert!(y[2].is_nan(), "{:?}", at(2));
                let at_zero = math_reference(f, 0.0);
                assert_eq!(y[3], at_zero, "{:?}", at(3));
                assert_eq!(y[4], at_zero, "{:?}", at(4));
                if at_zero == 0.0 {
                    // Odd functions and x·g(x) keep the sign of −0.
                    assert!(y[4].is_sign_negative(), "{:?}", at(4));
                }
            }
        }
    }
}

#[test]
fn exp_below_exp_min_is_positive_zero() {
    // Attention's masked scores (the dtype's lowest value) and everything
    // down to −∞: +0, not −0 or a subnormal, on every path. The first
    // subnormal-range inputs above `exp_min` still follow libm.
    for dtype in [DType::F32, DType::F64] {
        let (lowest, min) = match dtype {
            DType::F32 => (f64::from(f32::MIN), f64::from(coeffs::F32.exp_min)),
            _ => (f64::MIN, coeffs::F64.exp_min),
        };
        let below = [-f64::INFINITY, lowest, -1e30, min - 1.0, min - 1e-3, min];
        for isa in Isa::available() {
            let y = run(isa, Func::Exp, dtype, &below);
            for (x, y) in below.iter().zip(&y) {
                assert_eq!(y.to_bits(), 0, "exp({x}) = {y} on {} {dtype}", isa.name());
            }
            let sub: Vec<f64> = (1..40).map(|i| min + f64::from(i) * 0.5).collect();
            let want: Vec<f64> = sub.iter().map(|&x| math_reference(Func::Exp, x)).collect();
            let got = run(isa, Func::Exp, dtype, &sub);
            for ((x, g), w) in sub.iter().zip(&got).zip(&want) {
                let w = if dtype == DType::F32 {
                    f64::from(*w as f32)
                } else {
                    *w
                };
                // Subnormal results: within one unit of the smallest subnormal.
                let ulp = if dtype == DType::F32 {
                    f64::from(f32::from_bits(1))
                } else {
                    f64::from_bits(1)
                };
                assert!(
                    (g - w).abs() <= ulp.max(2e-7 * w.abs()),
                    "exp({x}) = {g}, libm {w}"
                );
            }
        }
    }
}

#[test]
fn log_special_values_and_subnormals() {
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    for dtype in [DType::F32, DType::F64] {
        let tiny = match dtype {
            DType::F32 => f64::from(f32::from_bits(1)),
            _ => f64::from_bits(1),
        };
        for isa in Isa::available() {
            let y = run(
                isa,
                Func::Log,
                dtype,
                &[inf, -inf, nan, 0.0, -0.0, -1.0, 1.0, tiny],
            );
            let at = |i: usize| (y[i], isa.name(), dtype);
            assert_eq!(y[0], inf, "{:?}", at(0));
            assert!(y[1].is_nan() && y[2].is_nan() && y[5].is_nan(), "{y:?}");
            assert_eq!(y[3], -inf, "{:?}", at(3));
            assert_eq!(y[4], -inf, "{:?}", at(4));
            assert_eq!(y[6].to_bits(), 0, "{:?}", at(6));
            let want = libm::log(tiny);
            assert!(
                (y[7] - want).abs() <= 2e-7 * want.abs(),
                "{:?} vs {want}",
                at(7)
            );
        }
    }
}

#[test]
fn fma_instruction_sets_agree_bit_for_bit() {
    let isas: Vec<Isa> = [Isa::avx512(), Isa::avx2()].into_iter().flatten().collect();
    for dtype in [DType::F32, DType::F64] {
        let x: Vec<f64> = inputs(dtype).into_iter().step_by(7).collect();
        for f in Func::ALL {
            let runs: Vec<Vec<f64>> = isas.iter().map(|&i| run(i, f, dtype, &x)).collect();
            for w in runs.windows(2) {
                let same = w[0]
                    .iter()
                    .zip(&w[1])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{f:?} {dtype}");
            }
        }
    }
}

#[test]
fn tails_and_in_place_match_the_full_vector_path() {
    let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.37 - 11.0).collect();
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v) * 1.01).collect();
    for isa in Isa::available() {
        for f in Func::ALL {
            let mut full = vec![0.0f32; 64];
            apply_with(isa, f, &x, &mut full).expect("equal lengths");
            let mut full64 = vec![0.0f64; 64];
            apply_with(isa, f, &x64, &mut full64).expect("equal lengths");
            for n in 0..40 {
                let mut part = vec![0.0f32; n];
                apply_with(isa, f, &x[..n], &mut part).expect("equal lengths");
                // Bits, so that log's NaNs (negative inputs) compare equal.
                let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits32(&part),
                    bits32(&full[..n]),
                    "{f:?} {} n={n}",
                    isa.name()
                );
                let mut inplace = x64[..n].to_vec();
                apply_inplace_with(isa, f, &mut inplace);
                assert_eq!(
                    bits64(&inplace),
                    bits64(&full64[..n]),
                    "{f:?} {} n={n}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn eval_and_apply_agree_with_portable_and_reject_bad_lengths() {
    let x = [0.3f64, -2.0, 7.5];
    let mut y = [0.0; 3];
    apply_with(Isa::portable(), Func::GeluErf, &x, &mut y).expect("equal lengths");
    assert_eq!(
        y.map(|v| v.to_bits()),
        x.map(|v| eval(Func::GeluErf, v).to_bits())
    );
    let err = apply(Func::Exp, &x, &mut [0.0; 2]);
    assert!(matches!(
        err,
        Err(KernelError::Length {
            expected: 3,
            actual: 2,
            ..
        })
    ));
}

/// gelu_tanh over 64×1024 f32 per instruction set, against libm's tanhf:
/// `cargo test -p cranelora-kernels --release math::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use std::time::Instant;
    let n = 64 * 1024;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32) * 16.0 - 8.0).collect();
    let mut y = vec![0.0f32; n];
    let per_ns = |reps: usize, t: Instant| (reps * n) as f64 / t.elapsed().as_nanos() as f64;
    let reps = 200;
    for f in [Func::GeluTanh, Func::GeluErf, Func::Exp] {
        for isa in Isa::available() {
            apply_with(isa, f, &x, &mut y).expect("equal lengths");
            let t = Instant::now();
            for _ in 0..reps {
                apply_with(isa, f, std::hint::black_box(&x), &mut y).expect("equal lengths");
            }
            println!(
                "{f:?} f32 {:<9} {:.3} elements/ns",
                isa.name(),
                per_ns(reps, t)
            );
        }
    }
    let t = Instant::now();
    for _ in 0..reps {
        for (o, &v) in y.iter_mut().zip(std::hint::black_box(&x)) {
            let u = 0.797_884_6 * (v + 0.044715 * v * v * v);
            *o = 0.5 * v * (1.0 + libm::tanhf(u));
        }
    }
    println!(
        "GeluTanh f32 libm::tanhf {:.3} elements/ns",
        per_ns(reps, t)
    );
}
