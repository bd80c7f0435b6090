//! GatherMatMul (`out[r] = x[r]·w[ids[r]]`, zero rows for id −1): the
//! interpreter against a hand-written triple loop, the JIT against the
//! interpreter (sorted, unsorted and all-empty ids; Constant and Parameter
//! weights), bad ids as errors from both, and the vector-Jacobian product
//! against central finite differences.

use crate::common;

use common::{check, data};
use cranelora_graph::autodiff::grad;
use cranelora_graph::{interpret, Bindings, DType, Graph, ReduceKind, TensorData};
use cranelora_jit::{compile, JitOptions};

/// The definition, written out: Σ_k x[r, k]·w[ids[r], k, m].
fn naive(x: &[f64], w: &[f64], ids: &[i64], (k, m): (usize, usize)) -> Vec<f64> {
    let mut out = vec![0.0; ids.len() * m];
    for (r, &id) in ids.iter().enumerate() {
        if id < 0 {
            continue;
        }
        let n = id as usize;
        for j in 0..m {
            out[r * m + j] = (0..k).map(|q| x[r * k + q] * w[(n * k + q) * m + j]).sum();
        }
    }
    out
}

/// A graph gather_matmul(x [r, k], w [n, k, m], ids [r]) with w a Parameter
/// or a Constant.
fn graph(
    d: DType,
    (r, k, m, n): (usize, usize, usize, usize),
    w_const: Option<TensorData>,
) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [r, k], d);
    let ids = g.input("ids", [r], DType::I64);
    let w = match w_const {
        Some(c) => g.constant(c).expect("constant"),
        None => g.parameter("w", [n, k, m], d),
    };
    let y = g.gather_matmul(x, w, ids).expect("valid");
    g.set_outputs(&[y]).expect("output");
    g
}

const ID_CASES: [&[i64]; 4] = [
    &[0, 0, 1, 1, 1, 2, 2],   // sorted: every group multiplies in place
    &[2, -1, 0, 2, 1, 0, -1], // unsorted with empty rows: gathered groups
    &[-1, -1, -1, -1, -1, -1, -1],
    &[1, 1, 1, 1, 1, 1, 1],
];

#[test]
fn interp_matches_the_definition_and_jit_matches_interp() {
    let (r, k, m, n) = (7, 13, 9, 3);
    for d in [DType::F32, DType::F64] {
        let tol = if d == DType::F32 { 1e-5 } else { 1e-13 };
        let x = data(&[r, k], d, 1, false);
        let w = data(&[n, k, m], d, 2, false);
        for ids in ID_CASES {
            let idt = TensorData::i64([r], ids.to_vec()).expect("ids");
            let inputs = [x.clone(), idt];
            let mut b = Bindings::new();
            b.insert("w".into(), w.clone());
            let g = graph(d, (r, k, m, n), None);
            let got = interpret(&g, &inputs, &b).expect("interp")[0].to_f64_vec();
            let want = naive(&x.to_f64_vec(), &w.to_f64_vec(), ids, (k, m));
            cranelora_kernels::testing::assert_close(&got, &want, tol, tol);
            check(&g, &inputs, &b, tol);
            let gc = graph(d, (r, k, m, n), Some(w.clone()));
            check(&gc, &inputs, &Bindings::new(), tol);
        }
    }
}

#[test]
fn ids_outside_minus_one_to_n_are_errors_naming_the_node() {
    let (r, k, m, n) = (4, 5, 3, 2);
    let g = graph(DType::F32, (r, k, m, n), None);
    let c = compile(&g, &JitOptions::default()).expect("compiles");
    let mut b = Bindings::new();
    b.insert("w".into(), data(&[n, k, m], DType::F32, 3, false));
    let jb = cranelora_jit::Bindings::from_map(&b).expect("bindings");
    let x = data(&[r, k], DType::F32, 4, false);
    for bad in [2, -2, i64::MAX, i64::MIN] {
        let ids = TensorData::i64([r], vec![0, 1, bad, 0]).expect("ids");
        let inputs = [x.clone(), ids];
        let e = interpret(&g, &inputs, &b).expect_err("interp rejects");
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
        let e = c.run(&inputs, &jb).expect_err("jit rejects");
        match e {
            cranelora_jit::Error::IndexOutOfRange { index, bound, .. } => {
                assert_eq!((index, bound), (bad, n));
            }
            other => panic!("expected IndexOutOfRange, got {other}"),
        }
    }
}

/// With M = 0 the output is empty, but the ids are still checked (as the
/// interpreter does); with K = 0 every row is zero.
#[test]
fn empty_dims_still_check_ids_and_give_zeros() {
    let ids = |v: i64| TensorData::i64([3], vec![0, v, 1]).expect("ids");
    for (k, m) in [(4, 0), (0, 5)] {
        let g = graph(DType::F64, (3, k, m, 2), None);
        let c = compile(&g, &JitOptions::default()).expect("compiles");
        let mut b = Bindings::new();
        b.insert("w".into(), data(&[2, k, m], DType::F64, 5, false));
        let jb = cranelora_jit::Bindings::from_map(&b).expect("bindings");
        let x = data(&[3, k], DType::F64, 6, false);
        assert!(
            c.run(&[x.clone(), ids(2)], &jb).is_err(),
            "id 2 of 2 (k={k}, m={m})"
        );
        assert!(interpret(&g, &[x.clone(), ids(2)], &b).is_err());
        let out = c.run(&[x.clone(), ids(-1)], &jb).expect("runs");
        assert!(out[0].to_f64_vec().iter().all(|&v| v == 0.0));
        check(&g, &[x, ids(-1)], &b, 0.0);
    }
}

#[test]
fn shape_inference_rejects_mismatched_operands() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 5], DType::F32);
    let ids = g.input("ids", [3], DType::I64);
    let w = g.parameter("w", [2, 5, 3], DType::F32);
    assert!(g.gather_matmul(x, w, ids).is_err(), "3 ids for 4 rows");
    let ids = g.input("ids4", [4], DType::I64);
    let w6 = g.parameter("w6", [2, 6, 3], DType::F32);
    assert!(g.gather_matmul(x, w6, ids).is_err(), "K 5 vs 6");
    let fids = g.input("fids", [4], DType::F32);
    assert!(g.gather_matmul(x, w, fids).is_err(), "float ids");
    assert!(g.gather_matmul(x, w, ids).is_ok());
}

/// L = Σ c ⊙ gather_matmul(x, w, ids): ∂L/∂x and ∂L/∂w from autodiff (run
/// by the JIT) against central differences of L (run by the interpreter).
#[test]
fn gradients_match_finite_differences() {
    let (r, k, m, n) = (5, 4, 3, 3);
    let d = DType::F64;
    let mut g = Graph::new();
    let x = g.input("x", [r, k], d);
    let ids = g.input("ids", [r], DType::I64);
    let w = g.parameter("w", [n, k, m], d);
    let c = g.constant(data(&[r, m], d, 7, false)).expect("c");
    let y = g.gather_matmul(x, w, ids).expect("y");
    let yc = g.mul(y, c).expect("yc");
    let loss = g.reduce(yc, ReduceKind::Sum, &[0, 1], false).expect("loss");
    let grads = grad(&mut g, loss, &[x, w]).expect("grad");
    g.set_outputs(&[loss, grads[0], grads[1]]).expect("outputs");
    let xv = data(&[r, k], d, 8, false);
    let wv = data(&[n, k, m], d, 9, false);
    let idv = TensorData::i64([r], vec![2, -1, 0, 2, 1]).expect("ids");
    let bind = |w: TensorData| {
        let mut b = Bindings::new();
        b.insert("w".into(), w);
        b
    };
    let compiled = compile(&g, &JitOptions::default()).expect("compiles");
    let jb = cranelora_jit::Bindings::from_map(&bind(wv.clone())).expect("b");
    let out = compiled.run(&[xv.clone(), idv.clone()], &jb).expect("runs");
    let loss_at = |xv: &[f64], wv: &[f64]| {
        let xs = TensorData::f64([r, k], xv.to_vec()).expect("x");
        let ws = TensorData::f64([n, k, m], wv.to_vec()).expect("w");
        interpret(&g, &[xs, idv.clone()], &bind(ws)).expect("interp")[0].to_f64_vec()[0]
    };
    let h = 1e-6;
    for (which, (base, analytic)) in [(xv.to_f64_vec(), &out[1]), (wv.to_f64_vec(), &out[2])]
        .into_iter()
        .enumerate()
    {
        let numeric: Vec<f64> = (0..base.len())
            .map(|i| {
                let (mut p, mut q) = (base.clone(), base.clone());
                p[i] += h;
                q[i] -= h;
                let (lp, lq) = if which == 0 {
                    (loss_at(&p, &wv.to_f64_vec()), loss_at(&q, &wv.to_f64_vec()))
                } else {
                    (loss_at(&xv.to_f64_vec(), &p), loss_at(&xv.to_f64_vec(), &q))
                };
                (lp - lq) / (2.0 * h)
            })
            .collect();
        cranelora_kernels::testing::assert_close(&analytic.to_f64_vec(), &numeric, 1e-6, 1e-8);
    }
}
