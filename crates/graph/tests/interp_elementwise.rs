//! The interpreter on elementwise ops: hand-computed values, broadcasting,
//! NaN rules, masks, casts, in f32 and f64.

use crate::common;

use common::{as_dtype, check, f32s, f64s, i64s, run};
use cranelora_graph::{DType, Graph, NodeId, Op, Result};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

fn tol(d: DType) -> f64 {
    if d == DType::F32 {
        1e-6
    } else {
        1e-14
    }
}

/// Runs the binary op on a [2, 3] and a [3] operand (broadcast over rows).
fn binary(op: Op, d: DType) -> cranelora_graph::Value {
    let a = as_dtype(&f64s(&[2, 3], &[1.0, -2.0, 3.0, 4.0, 0.5, -6.0]), d);
    let b = as_dtype(&f64s(&[3], &[2.0, 2.0, -1.0]), d);
    run(&[a, b], |g, x| g.push(op, &[x[0], x[1]]))
}

#[test]
fn arithmetic_broadcasts_a_row_over_a_matrix() {
    for d in FLOATS {
        let t = tol(d);
        check(
            &binary(Op::Add, d),
            &[2, 3],
            &[3.0, 0.0, 2.0, 6.0, 2.5, -7.0],
            t,
        );
        check(
            &binary(Op::Sub, d),
            &[2, 3],
            &[-1.0, -4.0, 4.0, 2.0, -1.5, -5.0],
            t,
        );
        check(
            &binary(Op::Mul, d),
            &[2, 3],
            &[2.0, -4.0, -3.0, 8.0, 1.0, 6.0],
            t,
        );
        check(
            &binary(Op::Div, d),
            &[2, 3],
            &[0.5, -1.0, -3.0, 2.0, 0.25, 6.0],
            t,
        );
        check(
            &binary(Op::Max, d),
            &[2, 3],
            &[2.0, 2.0, 3.0, 4.0, 2.0, -1.0],
            t,
        );
        check(
            &binary(Op::Min, d),
            &[2, 3],
            &[1.0, -2.0, -1.0, 2.0, 0.5, -6.0],
            t,
        );
        let pow = [1.0, 4.0, 1.0 / 3.0, 16.0, 0.25, -1.0 / 6.0];
        check(&binary(Op::Pow, d), &[2, 3], &pow, t);
    }
}

#[test]
fn broadcasting_stretches_both_operands() {
    // [2, 1] + [1, 3] → [2, 3]
    let a = f64s(&[2, 1], &[10.0, 20.0]);
    let b = f64s(&[1, 3], &[1.0, 2.0, 3.0]);
    let out = run(&[a, b], |g, x| g.add(x[0], x[1]));
    check(&out, &[2, 3], &[11.0, 12.0, 13.0, 21.0, 22.0, 23.0], 0.0);
    // A scalar broadcasts to anything.
    let a = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let s = f32s(&[], &[0.5]);
    let out = run(&[a, s], |g, x| g.mul(x[0], x[1]));
    check(&out, &[2, 2], &[0.5, 1.0, 1.5, 2.0], 0.0);
}

#[test]
fn comparisons_give_masks_in_the_operand_dtype() {
    for d in FLOATS {
        let cases: [(Op, [f64; 6]); 6] = [
            (Op::Eq, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            (Op::Ne, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            (Op::Lt, [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
            (Op::Le, [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
            (Op::Gt, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
            (Op::Ge, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
        ];
        for (op, expected) in cases {
            let out = binary(op, d);
            assert_eq!(out.dtype(), d);
            check(&out, &[2, 3], &expected, 0.0);
        }
    }
    // Equal elements, and i64 masks.
    let a = i64s(&[3], &[1, 2, 3]);
    let b = i64s(&[3], &[1, 5, 3]);
    let out = run(&[a, b], |g, x| g.equal(x[0], x[1]));
    assert_eq!(out, i64s(&[3], &[1, 0, 1]));
}

#[test]
fn nan_rules_max_min_comparisons_relu_sign() {
    let a = f64s(&[3], &[f64::NAN, 1.0, f64::NAN]);
    let b = f64s(&[3], &[1.0, f64::NAN, f64::NAN]);
    for op in [Op::Max, Op::Min, Op::Add] {
        let out = run(&[a.clone(), b.clone()], |g, x| g.push(op, &[x[0], x[1]]));
        assert!(out.to_f64_vec().iter().all(|v| v.is_nan()), "{out:?}");
    }
    let ne = run(&[a.clone(), b.clone()], |g, x| g.not_equal(x[0], x[1]));
    check(&ne, &[3], &[1.0, 1.0, 1.0], 0.0);
    let eq = run(&[a.clone(), a.clone()], |g, x| g.equal(x[0], x[1]));
    check(&eq, &[3], &[0.0, 1.0, 0.0], 0.0);
    let x = f64s(&[5], &[f64::NAN, -0.0, 0.0, -3.0, 2.0]);
    let relu = run(std::slice::from_ref(&x), |g, x| g.relu(x[0])).to_f64_vec();
    assert!(relu[0].is_nan());
    assert_eq!(&relu[1..], &[0.0, 0.0, 0.0, 2.0]);
    let sign = run(&[x], |g, x| g.sign(x[0])).to_f64_vec();
    assert!(sign[0].is_nan());
    assert_eq!(&sign[1..], &[0.0, 0.0, -1.0, 1.0]);
    assert!(sign[1].is_sign_negative(), "sign(−0) keeps the sign");
}

#[test]
fn where_selects_with_broadcast_condition_of_any_dtype() {
    let cond = i64s(&[2, 1], &[1, 0]);
    let a = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = f32s(&[], &[-1.0]);
    let out = run(&[cond, a.clone(), b.clone()], |g, x| {
        g.select(x[0], x[1], x[2])
    });
    check(&out, &[2, 2], &[1.0, 2.0, -1.0, -1.0], 0.0);
    // NaN is nonzero, so it selects `a`.
    let cond = f64s(&[2], &[f64::NAN, 0.0]);
    let a = f64s(&[2], &[5.0, 6.0]);
    let b = f64s(&[2], &[7.0, 8.0]);
    let out = run(&[cond, a, b], |g, x| g.select(x[0], x[1], x[2]));
    check(&out, &[2], &[5.0, 8.0], 0.0);
}

/// libm-free references for the unary ops at a few points.
fn unary_reference(op: &Op, x: f64) -> f64 {
    let erf = |v: f64| cranelora_kernels::math::eval(cranelora_kernels::math::Func::Erf, v);
    let phi = |v: f64| 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
    let pdf = |v: f64| (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let inner = |v: f64| (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    match op {
        Op::Neg => -x,
        Op::Relu => x.max(0.0),
        Op::Gelu => x * phi(x),
        Op::GeluGrad => phi(x) + x * pdf(x),
        Op::GeluTanh => 0.5 * x * (1.0 + inner(x).tanh()),
        Op::GeluTanhGrad => {
            let t = inner(x).tanh();
            let dinner = (2.0 / std::f64::consts::PI).sqrt() * (1.0 + 3.0 * 0.044715 * x * x);
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner
        }
        Op::Tanh => x.tanh(),
        Op::Sigmoid => sigmoid(x),
        Op::Silu => x * sigmoid(x),
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Sqrt => x.sqrt(),
        Op::Rsqrt => 1.0 / x.sqrt(),
        Op::Erf => erf(x),
        Op::Abs => x.abs(),
        Op::Recip => 1.0 / x,
        Op::Scale(s) => s * x,
        Op::StopGradient => x,
        _ => unreachable!("not a unary op"),
    }
}

#[test]
fn unary_ops_match_their_definitions() {
    let ops = [
        Op::Neg,
        Op::Relu,
        Op::Gelu,
        Op::GeluGrad,
        Op::GeluTanh,
        Op::GeluTanhGrad,
        Op::Tanh,
        Op::Sigmoid,
        Op::Silu,
        Op::Exp,
        Op::Erf,
        Op::Abs,
        Op::Scale(-2.5),
        Op::StopGradient,
    ];
    let points = [-3.0, -1.25, -0.5, 0.0, 0.3, 1.0, 2.75];
    let positive = [0.25, 1.0, 2.0, 9.0];
    let positive_ops = [Op::Log, Op::Sqrt, Op::Rsqrt, Op::Recip];
    for d in FLOATS {
        let cases = ops.iter().map(|op| (op, &points[..]));
        let cases = cases.chain(positive_ops.iter().map(|op| (op, &positive[..])));
        for (op, xs) in cases {
            let input = as_dtype(&f64s(&[xs.len()], xs), d);
            let out = run(std::slice::from_ref(&input), |g, x| {
                g.push(op.clone(), &[x[0]])
            });
            // Reference at the input as rounded to the dtype.
            let expected: Vec<f64> = input
                .to_f64_vec()
                .iter()
                .map(|&x| unary_reference(op, x))
                .collect();
            assert_eq!(out.dtype(), d, "{op}");
            check(&out, &[xs.len()], &expected, 4.0 * tol(d));
        }
    }
}

#[test]
fn integer_arithmetic_wraps_and_keeps_i64() {
    let a = i64s(&[3], &[i64::MAX, -4, 7]);
    let b = i64s(&[3], &[1, 3, -2]);
    let add = run(&[a.clone(), b.clone()], |g, x| g.add(x[0], x[1]));
    assert_eq!(add, i64s(&[3], &[i64::MIN, -1, 5]));
    let mul = run(&[a.clone(), b.clone()], |g, x| g.mul(x[0], x[1]));
    assert_eq!(mul, i64s(&[3], &[i64::MAX, -12, -14]));
    let max = run(&[a.clone(), b], |g, x| g.max(x[0], x[1]));
    assert_eq!(max, i64s(&[3], &[i64::MAX, 3, 7]));
    let neg = run(std::slice::from_ref(&a), |g, x| g.neg(x[0]));
    assert_eq!(neg, i64s(&[3], &[-i64::MAX, 4, -7]));
    let sign = run(&[a], |g, x| g.sign(x[0]));
    assert_eq!(sign, i64s(&[3], &[1, -1, 1]));
}

#[test]
fn cast_truncates_saturates_and_maps_nan_to_zero() {
    let x = f64s(&[5], &[1.9, -1.9, f64::NAN, 1e30, 0.1]);
    let out = run(std::slice::from_ref(&x), |g, x| g.cast(x[0], DType::I64));
    assert_eq!(out, i64s(&[5], &[1, -1, 0, i64::MAX, 0]));
    let out = run(&[x], |g, x| g.cast(x[0], DType::F32));
    let v = out.as_f32().expect("f32");
    assert_eq!(v[[0]], 1.9f64 as f32);
    assert!(v[[2]].is_nan() && v[[3]] == 1e30f64 as f32);
    let ids = i64s(&[2], &[3, -7]);
    let out = run(&[ids], |g, x| g.cast(x[0], DType::F64));
    assert_eq!(out, f64s(&[2], &[3.0, -7.0]));
}

#[test]
fn constants_and_chains_evaluate() -> Result<()> {
    // 2·x + 1 through a constant, in f32.
    let x = f32s(&[3], &[0.0, 1.0, 2.0]);
    let out = run(&[x], |g: &mut Graph, x: &[NodeId]| {
        let one = g.scalar(1.0, DType::F32)?;
        let two_x = g.scale(x[0], 2.0)?;
        g.add(two_x, one)
    });
    check(&out, &[3], &[1.0, 3.0, 5.0], 0.0);
    Ok(())
}
