//! Every lowered op against the interpreter, f32 and f64 (and i64 where
//! defined), over shapes with sizes not divisible by 4, size 1, scalars and
//! broadcasting corners.

use crate::common;

use common::{check, data, positive};
use cranelora_graph::{Bindings, Conv2dParams, DType, Graph, Op, ReduceKind, TensorData};

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

/// Exact-rule ops get 0 tolerance; f32 transcendental ops use the kernels (bit-identical).
fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-6,
        _ => 1e-14,
    }
}

fn binary_case(op: Op, d: DType, a: &[usize], b: &[usize], seed: u64) {
    let mut g = Graph::new();
    let x = g.input("a", a.to_vec(), d);
    let y = g.input("b", b.to_vec(), d);
    let z = g.push(op.clone(), &[x, y]).expect("valid");
    g.set_outputs(&[z]).expect("node");
    let ins = if matches!(op, Op::Pow) {
        [positive(a, d, seed), data(b, d, seed + 1, false)]
    } else {
        [data(a, d, seed, true), data(b, d, seed + 1, true)]
    };
    check(&g, &ins, &Bindings::new(), 0.0);
}

const SHAPES: [(&[usize], &[usize]); 7] = [
    (&[5, 3], &[5, 3]),
    (&[5, 3], &[3]),
    (&[1, 3], &[4, 1]),
    (&[7], &[]),
    (&[1], &[1]),
    (&[2, 1, 5], &[3, 1]),
    (&[], &[6, 1, 1]),
];

#[test]
fn jit_matches_interp_on_binary_ops() {
    use Op::*;
    for op in [Add, Sub, Mul, Div, Max, Min, Pow, Eq, Ne, Lt, Le, Gt, Ge] {
        for d in FLOATS {
            for (i, (a, b)) in SHAPES.iter().enumerate() {
                binary_case(op.clone(), d, a, b, i as u64);
            }
        }
    }
    for op in [Add, Sub, Mul, Max, Min, Eq, Ne, Lt, Le, Gt, Ge] {
        for (i, (a, b)) in SHAPES.iter().enumerate() {
            binary_case(op.clone(), DType::I64, a, b, i as u64);
        }
    }
}

#[test]
fn jit_matches_interp_on_unary_ops() {
    use Op::*;
    let ops = [
        Sign,
        Neg,
        Relu,
        Gelu,
        GeluTanh,
        GeluGrad,
        GeluTanhGrad,
        Tanh,
        Sigmoid,
        Silu,
        Exp,
        Log,
        Sqrt,
        Rsqrt,
        Erf,
        Abs,
        Recip,
        Scale(0.3),
        StopGradient,
    ];
    for op in ops {
        for d in FLOATS {
            for (i, s) in [&[][..], &[1], &[7], &[3, 5], &[2, 3, 9]]
                .iter()
                .enumerate()
            {
                let mut g = Graph::new();
                let x = g.input("x", s.to_vec(), d);
                let y = g.push(op.clone(), &[x]).expect("valid");
                g.set_outputs(&[y]).expect("node");
                check(&g, &[data(s, d, i as u64, true)], &Bindings::new(), 0.0);
            }
        }
    }
    for op in [Sign, Neg, Abs] {
        let mut g = Graph::new();
        let x = g.input("x", [9], DType::I64);
        let y = g.push(op, &[x]).expect("valid");
        g.set_outputs(&[y]).expect("node");
        let v = TensorData::i64([9], vec![i64::MIN, -3, -1, 0, 1, 2, i64::MAX, 7, -8]).expect("9");
        check(&g, &[v], &Bindings::new(), 0.0);
    }
}

#[test]
fn jit_matches_interp_on_where_and_cast() {
    for c in [DType::F32, DType::F64, DType::I64] {
        for d in [DType::F32, DType::F64, DType::I64] {
            let mut g = Graph::new();
            let cond = g.input("c", [4, 1], c);
            let a = g.input("a", [3], d);
            let b = g.input("b", [4, 3], d);
            let w = g.select(cond, a, b).expect("valid");
            let cast = g.cast(b, c).expect("valid");
            g.set_outputs(&[w, cast]).expect("nodes");
            let ins = [
                data(&[4, 1], c, 1, true),
                data(&[3], d, 2, true),
                data(&[4, 3], d, 3, true),
            ];
            check(&g, &ins, &Bindings::new(), 0.0);
        }
    }
}

#[test]
fn jit_matches_interp_on_reductions() {
    for d in [DType::F32, DType::F64, DType::I64] {
        for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
            if kind == ReduceKind::Mean && d == DType::I64 {
                continue;
            }
            for axes in [&[0usize][..], &[1], &[2], &[0, 2], &[0, 1, 2]] {
                for keep in [false, true] {
                    let mut g = Graph::new();
                    let x = g.input("x", [3, 5, 7], d);
                    let y = g.reduce(x, kind, axes, keep).expect("valid");
                    g.set_outputs(&[y]).expect("node");
                    check(
                        &g,
                        &[data(&[3, 5, 7], d, 4, false)],
                        &Bindings::new(),
                        tol(d),
                    );
                }
            }
        }
    }
}

#[test]
fn jit_matches_interp_on_softmax_and_layer_norm() {
    for d in FLOATS {
        for axis in 0..3 {
            let mut g = Graph::new();
            let x = g.input("x", [3, 5, 7], d);
            let y = g.softmax(x, axis).expect("valid");
            g.set_outputs(&[y]).expect("node");
            check(
                &g,
                &[data(&[3, 5, 7], d, 5, false)],
                &Bindings::new(),
                tol(d),
            );
        }
        for axis in 1..3 {
            for affine in [false, true] {
                let mut g = Graph::new();
                let x = g.input("x", [3, 5, 7], d);
                let inner = [5usize, 7][axis - 1..].to_vec();
                let gb = affine.then(|| {
                    (
                        g.input("g", inner.clone(), d),
                        g.input("b", inner.clone(), d),
                    )
                });
                let y = g.layer_norm(x, gb, axis, 1e-5).expect("valid");
                g.set_outputs(&[y]).expect("node");
                let mut ins = vec![data(&[3, 5, 7], d, 6, false)];
                if affine {
                    ins.push(data(&inner, d, 7, false));
                    ins.push(data(&inner, d, 8, false));
                }
                check(&g, &ins, &Bindings::new(), tol(d));
            }
        }
    }
}

#[test]
fn jit_matches_interp_on_large_last_axis_softmax() {
    // Large enough for the row kernel to split rows over the pool; odd row
    // count and length; special values (±0, ±∞, NaN) in some rows.
    for d in FLOATS {
        for (rows, len) in [(131, 1031), (8 * 12 * 128, 128)] {
            let mut g = Graph::new();
            let x = g.input("x", [rows, len], d);
            let y = g.softmax(x, 1).expect("valid");
            g.set_outputs(&[y]).expect("node");
            let specials = rows == 131;
            check(
                &g,
                &[data(&[rows, len], d, 11, specials)],
                &Bindings::new(),
                tol(d),
            );
        }
    }
}

#[test]
fn jit_matches_interp_on_data_movement() {
    for d in [DType::F32, DType::F64, DType::I64] {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3, 5], d);
        let r = g.reshape(x, [6, 5]).expect("reshape");
        let t = g.transpose(x, &[2, 0, 1]).expect("transpose");
        let s = g.slice(x, &[1..2, 0..3, 1..4]).expect("slice");
        let p = g.pad(x, &[(1, 0), (0, 2), (3, 1)], -7.0).expect("pad");
        let y = g.input("y", [2, 1, 5], d);
        let c = g.concat(&[x, y, x], 1).expect("concat");
        let b = g.broadcast(y, [4, 2, 3, 5]).expect("broadcast");
        let e = g.exp(x).ok();
        let _ = e;
        g.set_outputs(&[r, t, s, p, c, b, x]).expect("nodes");
        let ins = [data(&[2, 3, 5], d, 9, true), data(&[2, 1, 5], d, 10, true)];
        check(&g, &ins, &Bindings::new(), 0.0);
    }
}

#[test]
fn jit_matches_interp_on_gather_and_scatter_add() {
    for d in FLOATS {
        let mut g = Graph::new();
        let table = g.input("table", [6, 5], d);
        let ids = g.input("ids", [2, 3], DType::I64);
        let y = g.push(Op::Gather, &[table, ids]).expect("gather");
        let u = g.input("u", [2, 3, 5], d);
        let s = g.scatter_add(u, ids, 6).expect("scatter");
        g.set_outputs(&[y, s]).expect("nodes");
        let idv = TensorData::i64([2, 3], vec![0, 5, 2, 2, 1, 5]).expect("6");
        let ins = [
            data(&[6, 5], d, 11, true),
            idv,
            data(&[2, 3, 5], d, 12, false),
        ];
        check(&g, &ins, &Bindings::new(), tol(d));
    }
}

/// Rows of whole 16-byte words (4 and 12 f32, 2 and 6 f64) are copied a
/// vector at a time, from rows that are not 16-byte aligned (4 f32): the
/// same bits as the interpreter, NaN payloads and −0 included.
#[test]
fn gather_of_vector_wide_rows_copies_the_bits() {
    use cranelora_graph::interpret;
    use cranelora_jit::{compile, JitOptions};
    for d in FLOATS {
        for width in [4, 12] {
            let mut g = Graph::new();
            let table = g.input("table", [7, width], d);
            let ids = g.input("ids", [2, 5], DType::I64);
            let y = g.push(Op::Gather, &[table, ids]).expect("gather");
            g.set_outputs(&[y]).expect("node");
            let mut t = data(&[7, width], d, 13, true);
            let mut v = t.to_f64_vec();
            v[1] = -0.0;
            v[width + 2] = f64::NAN;
            t = match d {
                DType::F32 => TensorData::f32([7, width], v.iter().map(|&x| x as f32).collect()),
                _ => TensorData::f64([7, width], v),
            }
            .expect("table");
            let idv = TensorData::i64([2, 5], vec![1, 0, 6, 3, 1, 5, 2, 4, 0, 6]).expect("10");
            let ins = [t, idv];
            let c = compile(&g, &JitOptions::default()).expect("compiles");
            let got = c.run(&ins, &cranelora_jit::Bindings::new()).expect("runs");
            let want = interpret(&g, &ins, &Default::default()).expect("interp");
            let bits = |t: &TensorData| -> Vec<u64> {
                t.to_f64_vec().iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&got[0]), bits(&want[0]), "{d} width {width}");
            check(&g, &ins, &Bindings::new(), 0.0);
        }
    }
}

#[test]
fn jit_matches_interp_on_matmul() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[3, 5], &[5, 7]),
        (&[1, 1], &[1, 1]),
        (&[2, 3, 4], &[4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[17, 33], &[33, 9]),
    ];
    for d in FLOATS {
        for (i, (a, b)) in cases.iter().enumerate() {
            let mut g = Graph::new();
            let x = g.input("a", a.to_vec(), d);
            let y = g.input("b", b.to_vec(), d);
            let z = g.matmul(x, y).expect("valid");
            // The same product with B a constant: packed at compile time.
            let w = g
                .constant(data(b, d, 20 + i as u64, false))
                .expect("constant");
            let zc = g.matmul(x, w).expect("valid");
            g.set_outputs(&[z, zc]).expect("nodes");
            let ins = [
                data(a, d, i as u64, false),
                data(b, d, 30 + i as u64, false),
            ];
            check(&g, &ins, &Bindings::new(), tol(d) * 10.0);
        }
    }
}

#[test]
fn jit_matches_interp_on_conv2d_and_its_gradients() {
    let p = Conv2dParams {
        stride: (2, 1),
        padding: (1, 2),
        dilation: (1, 2),
    };
    for d in FLOATS {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3, 7, 6], d);
        let w = g.input("w", [4, 3, 3, 2], d);
        let y = g.conv2d(x, w, p).expect("conv");
        let dims = g.node(y).expect("node").shape.dims().to_vec();
        let dy = g.input("dy", dims.clone(), d);
        let dx = g.conv2d_input_grad(dy, w, p, (7, 6)).expect("input grad");
        let dw = g.conv2d_weight_grad(x, dy, p, (3, 2)).expect("weight grad");
        g.set_outputs(&[y, dx, dw]).expect("nodes");
        let ins = [
            data(&[2, 3, 7, 6], d, 40, false),
            data(&[4, 3, 3, 2], d, 41, false),
            data(&dims, d, 42, false),
        ];
        check(&g, &ins, &Bindings::new(), tol(d) * 10.0);
    }
}

#[test]
fn parameters_are_bound_at_call_time() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32);
    let w = g.parameter("w", [3, 3], DType::F32);
    let b = g.parameter("b", [3], DType::F32);
    let y = g.matmul(x, w).expect("mm");
    let y = g.add(y, b).expect("bias");
    let y = g.gelu_tanh(y).expect("gelu");
    g.set_outputs(&[y]).expect("node");
    let mut bindings = Bindings::new();
    bindings.insert("w".into(), data(&[3, 3], DType::F32, 1, false));
    bindings.insert("b".into(), data(&[3], DType::F32, 2, false));
    check(&g, &[data(&[2, 3], DType::F32, 3, false)], &bindings, 1e-6);
}
