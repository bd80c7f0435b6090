//! The interpreter on reductions, normalizations, data movement, matmul,
//! gather / scatter-add and convolutions, against hand-computed values or
//! direct loops, in f32 and f64; and its run-time errors.

use crate::common;

use common::{as_dtype, check, dot, f32s, f64s, i64s, run, try_run, Rng};
use cranelora_graph::{
    interpret, Bindings, Conv2dParams, DType, Error, Graph, ReduceKind, TensorData, Value,
};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

fn x234() -> Value {
    f64s(&[2, 3, 4], &(0..24).map(f64::from).collect::<Vec<_>>())
}

#[test]
fn reduce_sum_mean_max_with_and_without_keepdims() {
    for d in FLOATS {
        let x = as_dtype(&x234(), d);
        let sum = run(std::slice::from_ref(&x), |g, x| {
            g.reduce(x[0], ReduceKind::Sum, &[0, 2], false)
        });
        check(&sum, &[3], &[60.0, 92.0, 124.0], 0.0);
        let mean = run(std::slice::from_ref(&x), |g, x| {
            g.reduce(x[0], ReduceKind::Mean, &[1], true)
        });
        check(
            &mean,
            &[2, 1, 4],
            &[4.0, 5.0, 6.0, 7.0, 16.0, 17.0, 18.0, 19.0],
            1e-6,
        );
        let max = run(&[x], |g, x| g.reduce(x[0], ReduceKind::Max, &[2], true));
        check(&max, &[2, 3, 1], &[3.0, 7.0, 11.0, 15.0, 19.0, 23.0], 0.0);
    }
    let nan = f64s(&[3], &[1.0, f64::NAN, 2.0]);
    let max = run(&[nan], |g, x| g.reduce(x[0], ReduceKind::Max, &[0], false));
    assert!(max.to_f64_vec()[0].is_nan(), "max propagates NaN");
    let ids = i64s(&[2, 2], &[1, 2, 3, -4]);
    let sum = run(&[ids], |g, x| {
        g.reduce(x[0], ReduceKind::Sum, &[0, 1], false)
    });
    assert_eq!(sum, i64s(&[], &[2]));
}

#[test]
fn softmax_is_stable_for_large_values_and_nan_for_all_minus_infinity_rows() {
    for d in FLOATS {
        let x = as_dtype(&f64s(&[2, 3], &[1000.0, 1001.0, 1002.0, -1.0, 0.0, 1.0]), d);
        let out = run(&[x], |g, x| g.softmax(x[0], 1));
        let e = [(-2.0f64).exp(), (-1.0f64).exp(), 1.0];
        let s: f64 = e.iter().sum();
        let row = [e[0] / s, e[1] / s, e[2] / s];
        check(
            &out,
            &[2, 3],
            &[row[0], row[1], row[2], row[0], row[1], row[2]],
            1e-6,
        );
    }
    // Along axis 0.
    let x = f64s(&[2, 2], &[0.0, 5.0, 0.0, 5.0]);
    let out = run(&[x], |g, x| g.softmax(x[0], 0));
    check(&out, &[2, 2], &[0.5, 0.5, 0.5, 0.5], 1e-15);
    let inf = f64::NEG_INFINITY;
    let x = f64s(&[2, 2], &[inf, inf, inf, 0.0]);
    let out = run(&[x], |g, x| g.softmax(x[0], 1)).to_f64_vec();
    assert!(out[0].is_nan() && out[1].is_nan(), "{out:?}");
    assert_eq!(&out[2..], &[0.0, 1.0]);
}

#[test]
fn layer_norm_normalizes_trailing_axes_with_affine() {
    for d in FLOATS {
        let x = as_dtype(&f64s(&[2, 2], &[1.0, 3.0, -2.0, 2.0]), d);
        let gamma = as_dtype(&f64s(&[2], &[2.0, 1.0]), d);
        let beta = as_dtype(&f64s(&[2], &[0.5, -0.5]), d);
        let eps = 1e-5;
        let out = run(&[x.clone(), gamma, beta], |g, x| {
            g.layer_norm(x[0], Some((x[1], x[2])), 1, eps)
        });
        // Row 1: mean 2, var 1; row 2: mean 0, var 4.
        let (r1, r2) = (1.0 / (1.0f64 + eps).sqrt(), 2.0 / (4.0f64 + eps).sqrt());
        check(
            &out,
            &[2, 2],
            &[-2.0 * r1 + 0.5, r1 - 0.5, -2.0 * r2 + 0.5, r2 - 0.5],
            1e-6,
        );
        let plain = run(&[x], |g, x| g.layer_norm(x[0], None, 0, 0.0));
        // All four: mean 1, var (0 + 4 + 9 + 1)/4 = 3.5.
        let s = 3.5f64.sqrt();
        check(&plain, &[2, 2], &[0.0, 2.0 / s, -3.0 / s, 1.0 / s], 1e-6);
    }
}

#[test]
fn reshape_transpose_slice_pad_concat_broadcast() {
    let x = x234();
    let r = run(std::slice::from_ref(&x), |g, x| g.reshape(x[0], [4, 6]));
    assert_eq!(r.to_f64_vec(), x.to_f64_vec());
    let t = run(std::slice::from_ref(&x), |g, x| {
        g.transpose(x[0], &[2, 0, 1])
    });
    let direct = x.as_f64().expect("f64").view().permuted_axes(vec![2, 0, 1]);
    assert_eq!(t.shape().dims(), &[4, 2, 3]);
    assert_eq!(t.to_f64_vec(), direct.iter().copied().collect::<Vec<_>>());
    let s = run(std::slice::from_ref(&x), |g, x| {
        g.slice(x[0], &[1..2, 0..3, 2..4])
    });
    check(&s, &[1, 3, 2], &[14.0, 15.0, 18.0, 19.0, 22.0, 23.0], 0.0);
    let small = f64s(&[1, 2], &[1.0, 2.0]);
    let p = run(std::slice::from_ref(&small), |g, x| {
        g.pad(x[0], &[(1, 0), (0, 2)], -1.0)
    });
    check(
        &p,
        &[2, 4],
        &[-1.0, -1.0, -1.0, -1.0, 1.0, 2.0, -1.0, -1.0],
        0.0,
    );
    let other = f64s(&[2, 2], &[3.0, 4.0, 5.0, 6.0]);
    let c = run(&[small.clone(), other], |g, x| g.concat(&[x[0], x[1]], 0));
    check(&c, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.0);
    let b = run(&[small], |g, x| g.broadcast(x[0], [2, 1, 2]));
    check(&b, &[2, 1, 2], &[1.0, 2.0, 1.0, 2.0], 0.0);
    let ids = i64s(&[3], &[7, 8, 9]);
    let p = run(&[ids], |g, x| g.pad(x[0], &[(1, 1)], 0.0));
    assert_eq!(p, i64s(&[5], &[0, 7, 8, 9, 0]));
}

/// Naive matmul of row-major [b, m, k] · [b, k, n].
fn naive_matmul(a: &[f64], b: &[f64], (batch, m, k, n): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for p in 0..batch {
        for i in 0..m {
            for j in 0..n {
                c[(p * m + i) * n + j] = (0..k)
                    .map(|l| a[(p * m + i) * k + l] * b[(p * k + l) * n + j])
                    .sum();
            }
        }
    }
    c
}

#[test]
fn matmul_2d_and_batched_with_broadcast_batch() {
    let mut rng = Rng(7);
    for d in FLOATS {
        let tol = if d == DType::F32 { 1e-5 } else { 1e-13 };
        let (a, b) = (rng.value(&[3, 4]), rng.value(&[4, 5]));
        let out = run(&[as_dtype(&a, d), as_dtype(&b, d)], |g, x| {
            g.matmul(x[0], x[1])
        });
        let want = naive_matmul(&a.to_f64_vec(), &b.to_f64_vec(), (1, 3, 4, 5));
        check(&out, &[3, 5], &want, tol);
        // [2, 1, 3, 4] · [3, 4, 2] → [2, 3, 3, 2]: b's batch broadcast over a's.
        let (a, b) = (rng.value(&[2, 1, 3, 4]), rng.value(&[3, 4, 2]));
        let out = run(&[as_dtype(&a, d), as_dtype(&b, d)], |g, x| {
            g.matmul(x[0], x[1])
        });
        let bb = b
            .as_f64()
            .expect("f64")
            .broadcast(vec![2, 3, 4, 2])
            .expect("broadcasts");
        let ab = a
            .as_f64()
            .expect("f64")
            .broadcast(vec![2, 3, 3, 4])
            .expect("broadcasts");
        let (av, bv): (Vec<f64>, Vec<f64>) =
            (ab.iter().copied().collect(), bb.iter().copied().collect());
        check(
            &out,
            &[2, 3, 3, 2],
            &naive_matmul(&av, &bv, (6, 3, 4, 2)),
            tol,
        );
    }
}

#[test]
fn gather_and_scatter_add_are_adjoint() {
    let mut rng = Rng(11);
    let table = rng.value(&[5, 3]);
    let ids = i64s(&[2, 2], &[4, 0, 4, 2]);
    let gathered = run(&[table.clone(), ids.clone()], |g, x| g.gather(x[0], x[1]));
    let t = table.to_f64_vec();
    let want: Vec<f64> = [4, 0, 4, 2]
        .iter()
        .flat_map(|&r| t[r * 3..r * 3 + 3].to_vec())
        .collect();
    check(&gathered, &[2, 2, 3], &want, 0.0);
    // ⟨gather(x), y⟩ = ⟨x, scatter_add(y)⟩
    let y = rng.value(&[2, 2, 3]);
    let scattered = run(&[y.clone(), ids], |g, x| g.scatter_add(x[0], x[1], 5));
    assert_eq!(scattered.shape().dims(), &[5, 3]);
    let (lhs, rhs) = (dot(&gathered, &y), dot(&table, &scattered));
    assert!((lhs - rhs).abs() < 1e-12, "{lhs} vs {rhs}");
    // Row 1 and 3 receive nothing; row 4 receives two updates.
    let s = scattered.to_f64_vec();
    assert_eq!(&s[3..6], &[0.0, 0.0, 0.0]);
    let yv = y.to_f64_vec();
    assert!((s[12] - (yv[0] + yv[6])).abs() < 1e-15);
}

/// Direct cross-correlation by its definition, NCHW.
fn naive_conv(x: &[f64], xs: [usize; 4], w: &[f64], ws: [usize; 4], p: &Conv2dParams) -> Vec<f64> {
    let ([n, c, h, wd], [o, _, kh, kw]) = (xs, ws);
    let oh = (h + 2 * p.padding.0 - p.dilation.0 * (kh - 1) - 1) / p.stride.0 + 1;
    let ow = (wd + 2 * p.padding.1 - p.dilation.1 * (kw - 1) - 1) / p.stride.1 + 1;
    let mut out = vec![0.0; n * o * oh * ow];
    for (b, oc, oy, ox) in positions(n, o, oh, ow) {
        let mut acc = 0.0;
        for ic in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let y = (oy * p.stride.0 + i * p.dilation.0) as isize - p.padding.0 as isize;
                    let xx = (ox * p.stride.1 + j * p.dilation.1) as isize - p.padding.1 as isize;
                    if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                        let xv = x[((b * c + ic) * h + y as usize) * wd + xx as usize];
                        acc += xv * w[((oc * c + ic) * kh + i) * kw + j];
                    }
                }
            }
        }
        out[((b * o + oc) * oh + oy) * ow + ox] = acc;
    }
    out
}

/// All (a, b, c, d) in row-major order.
fn positions(a: usize, b: usize, c: usize, d: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut v = Vec::new();
    for i in 0..a {
        for j in 0..b {
            for k in 0..c {
                for l in 0..d {
                    v.push((i, j, k, l));
                }
            }
        }
    }
    v
}

fn conv_params() -> [Conv2dParams; 2] {
    [
        Conv2dParams::default(),
        Conv2dParams {
            stride: (2, 1),
            padding: (1, 2),
            dilation: (1, 2),
        },
    ]
}

#[test]
fn conv2d_matches_a_direct_loop() {
    let mut rng = Rng(3);
    for d in FLOATS {
        for p in conv_params() {
            let (x, w) = (rng.value(&[2, 3, 6, 5]), rng.value(&[4, 3, 3, 2]));
            let out = run(&[as_dtype(&x, d), as_dtype(&w, d)], |g, v| {
                g.conv2d(v[0], v[1], p)
            });
            let want = naive_conv(
                &x.to_f64_vec(),
                [2, 3, 6, 5],
                &w.to_f64_vec(),
                [4, 3, 3, 2],
                &p,
            );
            let tol = if d == DType::F32 { 1e-5 } else { 1e-13 };
            check(&out, out.shape().dims(), &want, tol);
        }
    }
}

#[test]
fn conv2d_gradient_ops_are_the_adjoints_of_conv2d() {
    let mut rng = Rng(5);
    for p in conv_params() {
        let (x, w) = (rng.value(&[2, 3, 6, 5]), rng.value(&[4, 3, 3, 2]));
        let y = run(&[x.clone(), w.clone()], |g, v| g.conv2d(v[0], v[1], p));
        let dy = rng.value(y.shape().dims());
        // ⟨conv(x, w), dy⟩ = ⟨x, input_grad(dy, w)⟩ = ⟨w, weight_grad(x, dy)⟩
        let dx = run(&[dy.clone(), w.clone()], |g, v| {
            g.conv2d_input_grad(v[0], v[1], p, (6, 5))
        });
        let dw = run(&[x.clone(), dy.clone()], |g, v| {
            g.conv2d_weight_grad(v[0], v[1], p, (3, 2))
        });
        assert_eq!((dx.shape(), dw.shape()), (x.shape(), w.shape()));
        let lhs = dot(&y, &dy);
        assert!(
            (lhs - dot(&x, &dx)).abs() < 1e-12 * lhs.abs().max(1.0),
            "input grad"
        );
        assert!(
            (lhs - dot(&w, &dw)).abs() < 1e-12 * lhs.abs().max(1.0),
            "weight grad"
        );
        // And in f32, against the f64 results.
        let dx32 = run(
            &[as_dtype(&dy, DType::F32), as_dtype(&w, DType::F32)],
            |g, v| g.conv2d_input_grad(v[0], v[1], p, (6, 5)),
        );
        check(&dx32, &[2, 3, 6, 5], &dx.to_f64_vec(), 1e-5);
    }
}

#[test]
fn run_time_errors_name_what_is_wrong() {
    // Gather ids outside the table.
    let table = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let err = try_run(&[table.clone(), i64s(&[2], &[1, 2])], |g, x| {
        g.named("emb").gather(x[0], x[1])
    })
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::IndexOutOfRange {
                index: 2,
                bound: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("\"emb\""), "{err}");
    let err = try_run(&[table, i64s(&[1], &[-1])], |g, x| g.gather(x[0], x[1])).unwrap_err();
    assert!(
        matches!(err, Error::IndexOutOfRange { index: -1, .. }),
        "{err}"
    );

    // Missing and mismatched bindings, wrong inputs.
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F32);
    let w = g.parameter("w", [2], DType::F32);
    let y = g.mul(x, w).expect("same shapes");
    g.set_outputs(&[y]).expect("y is a node");
    let xv = f32s(&[2], &[1.0, 2.0]);
    let mut b = Bindings::new();
    let err = interpret(&g, std::slice::from_ref(&xv), &b).unwrap_err();
    assert_eq!(err, Error::MissingBinding { name: "w".into() });
    b.insert("w".into(), f64s(&[2], &[1.0, 2.0]));
    let err = interpret(&g, std::slice::from_ref(&xv), &b).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ValueMismatch {
                what: "parameter",
                ..
            }
        ),
        "{err}"
    );
    b.insert("w".into(), f32s(&[2], &[3.0, 4.0]));
    let err = interpret(&g, &[f32s(&[3], &[1.0, 2.0, 3.0])], &b).unwrap_err();
    assert!(
        matches!(err, Error::ValueMismatch { what: "input", .. }),
        "{err}"
    );
    let err = interpret(&g, &[], &b).unwrap_err();
    assert_eq!(
        err,
        Error::InputCount {
            expected: 1,
            actual: 0
        }
    );
    let out = interpret(&g, &[xv], &b).expect("valid call");
    assert_eq!(
        out,
        vec![TensorData::f32([2], vec![3.0, 8.0]).expect("2 elements")]
    );
}
