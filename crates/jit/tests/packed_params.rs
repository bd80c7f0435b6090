//! Bound weights packed once (`Bindings::insert_packed`): a product `x·W`
//! whose W is a 2-D Parameter reads the binding's packed copy instead of
//! packing W on every call, with the interpreter's results; a binding
//! replaced or removed never leaves a stale packed copy behind.

use crate::common;

use common::{assert_same, data};
use cranelora_graph::{interpret, DType, Graph, TensorData};
use cranelora_jit::{compile, Bindings, Error, JitOptions};

const ROWS: usize = 64;
const D: usize = 48;

/// `(x·W)·W + relu(x·V + b)`: W read by two products (one packed slot),
/// V by one with a fused bias epilogue, b (1-D) never packed.
fn graph(d: DType) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [ROWS, D], d);
    let w = g.parameter("W", [D, D], d);
    let v = g.parameter("V", [D, D], d);
    let b = g.parameter("b", [D], d);
    let xw = g.matmul(x, w).expect("x·W");
    let xww = g.matmul(xw, w).expect("(x·W)·W");
    let xv = g.matmul(x, v).expect("x·V");
    let bias = g.broadcast(b, [ROWS, D]).expect("b");
    let xvb = g.add(xv, bias).expect("+ b");
    let r = g.relu(xvb).expect("relu");
    let y = g.add(xww, r).expect("sum");
    g.set_outputs(&[y]).expect("outputs");
    g
}

fn values(d: DType, seed: u64) -> cranelora_graph::Bindings {
    let mut m = cranelora_graph::Bindings::new();
    m.insert("W".into(), data(&[D, D], d, seed, false));
    m.insert("V".into(), data(&[D, D], d, seed + 1, false));
    m.insert("b".into(), data(&[D], d, seed + 2, false));
    m
}

/// The bindings of `m`, W and V packed.
fn packed(m: &cranelora_graph::Bindings) -> Bindings {
    let mut b = Bindings::new();
    for (k, v) in m {
        match k.as_str() {
            "b" => b.insert(k.clone(), v.clone()).expect("b"),
            _ => b.insert_packed(k.clone(), v.clone()).expect("packs"),
        }
    }
    b
}

fn tol(d: DType) -> f64 {
    if d == DType::F32 {
        1e-4
    } else {
        1e-11
    }
}

fn packed_weights_match_the_interpreter(d: DType) {
    let g = graph(d);
    let c = compile(&g, &JitOptions::default()).expect("compiles");
    assert!(c.packs("W") && c.packs("V") && !c.packs("b"));
    let xs = [data(&[ROWS, D], d, 1, false)];
    let m = values(d, 10);
    let want = interpret(&g, &xs, &m).expect("interpreter");
    let plain = c
        .run(&xs, &Bindings::from_map(&m).expect("b"))
        .expect("plain");
    let b = packed(&m);
    assert!(b.is_packed("W") && b.is_packed("V") && !b.is_packed("b"));
    let got = c.run(&xs, &b).expect("packed");
    assert_same(&got[0], &want[0], tol(d), tol(d));
    assert_same(&plain[0], &want[0], tol(d), tol(d));
    // A clone shares the packed copies and gives the same bits.
    assert_eq!(c.run(&xs, &b.clone()).expect("clone")[0], got[0]);
}

#[test]
fn packed_weights_match_the_interpreter_f32() {
    packed_weights_match_the_interpreter(DType::F32);
}

#[test]
fn packed_weights_match_the_interpreter_f64() {
    packed_weights_match_the_interpreter(DType::F64);
}

/// Rebinding W with `insert` (new values, no packed copy) or `remove` +
/// `insert_packed` runs with the new values: the old packed copy is gone.
#[test]
fn rebinding_a_packed_weight_drops_its_packed_copy() {
    let d = DType::F32;
    let g = graph(d);
    let c = compile(&g, &JitOptions::default()).expect("compiles");
    let xs = [data(&[ROWS, D], d, 2, false)];
    let (old, new) = (values(d, 20), values(d, 30));
    let mut b = packed(&old);
    b.insert("W", new["W"].clone()).expect("W");
    assert!(!b.is_packed("W") && b.is_packed("V"));
    let mut m = old.clone();
    m.insert("W".into(), new["W"].clone());
    let want = interpret(&g, &xs, &m).expect("interpreter");
    assert_same(&c.run(&xs, &b).expect("run")[0], &want[0], tol(d), tol(d));
    b.remove("V");
    assert!(!b.is_packed("V"));
    b.insert_packed("V", new["V"].clone()).expect("V");
    m.insert("V".into(), new["V"].clone());
    let want = interpret(&g, &xs, &m).expect("interpreter");
    assert_same(&c.run(&xs, &b).expect("run")[0], &want[0], tol(d), tol(d));
}

#[test]
fn only_float_matrices_are_packed() {
    let mut b = Bindings::new();
    let cases = [
        ("v", TensorData::f32([4], vec![1.0; 4]).expect("v")),
        ("ids", TensorData::i64([2, 2], vec![0; 4]).expect("ids")),
        (
            "cube",
            TensorData::f64([2, 2, 2], vec![0.0; 8]).expect("cube"),
        ),
    ];
    for (name, t) in cases {
        let e = b.insert_packed(name, t).expect_err("not packable");
        assert!(
            matches!(&e, Error::Pack { name: n, .. } if n == name),
            "{e}"
        );
        assert!(e.to_string().contains(name), "{e}");
        assert!(!b.contains(name), "a failed insert binds nothing");
    }
}
