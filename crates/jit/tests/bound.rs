//! Calls that reuse checked Parameter pointers: `CompiledGraph::bind`
//! (`BoundGraph`, bindings resolved once) and `run_into`'s per-state cache
//! (keyed by `Bindings`' stamp). Results against the interpreter with the
//! bindings as they are at each call, so a stale pointer — after an insert,
//! a remove, a clone or a switch to other bindings — shows up as a wrong
//! value or a missing error.

use crate::common;

use common::{assert_same, data};
use cranelora_graph::{interpret, DType, Graph, TensorData};
use cranelora_jit::{compile, Bindings, CompiledGraph, Error, JitOptions};
use std::sync::Arc;

/// `relu(x·W + s·(x·A)·B)`, x [3, 16], W [16, 12], rank 2: the base product
/// a GEMM call (inline products off) or inline (default), the adapter inline.
fn graph(d: DType) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [3, 16], d);
    let w = g.parameter("w", [16, 12], d);
    let a = g.parameter("lora_a", [16, 2], d);
    let b = g.parameter("lora_b", [2, 12], d);
    let xw = g.matmul(x, w).expect("xw");
    let xa = g.matmul(x, a).expect("xa");
    let xab = g.matmul(xa, b).expect("xab");
    let xab = g.scale(xab, 0.5).expect("s");
    let y = g.add(xw, xab).expect("y");
    let y = g.relu(y).expect("relu");
    g.set_outputs(&[y]).expect("outputs");
    g
}

fn bindings(d: DType, seed: u64) -> Bindings {
    let mut b = Bindings::new();
    for (i, (name, shape)) in [("w", [16, 12]), ("lora_a", [16, 2]), ("lora_b", [2, 12])]
        .into_iter()
        .enumerate()
    {
        b.insert(name, data(&shape, d, seed * 10 + i as u64, false))
            .expect("bind");
    }
    b
}

fn tol(d: DType) -> f64 {
    if d == DType::F32 {
        1e-5
    } else {
        1e-12
    }
}

/// The interpreter's output for `b` as it is now.
fn expected(g: &Graph, x: &[TensorData], b: &Bindings) -> TensorData {
    interpret(g, x, &b.to_map()).expect("interpreter").remove(0)
}

fn compiled(g: &Graph, inline: bool) -> CompiledGraph {
    let macs = if inline { 2048 } else { 0 };
    compile(g, &JitOptions::default().with_inline_matmul_macs(macs)).expect("compile")
}

fn run_into_follows_every_change_of_its_bindings(d: DType) {
    let g = graph(d);
    let x = [data(&[3, 16], d, 1, false)];
    for inline in [false, true] {
        let c = compiled(&g, inline);
        let (mut b1, b2) = (bindings(d, 1), bindings(d, 2));
        let mut out = c.run(&x, &b1).expect("run");
        // Alternating bindings, then the same ones twice (the cached path).
        for b in [&b2, &b1, &b1, &b2, &b2] {
            c.run_into(&x, b, &mut out).expect("run");
            assert_same(&out[0], &expected(&g, &x, b), tol(d), tol(d));
        }
        // A new value for a Parameter after a cached call.
        c.run_into(&x, &b1, &mut out).expect("warm");
        b1.insert("lora_b", data(&[2, 12], d, 99, false))
            .expect("bind");
        c.run_into(&x, &b1, &mut out).expect("run");
        assert_same(&out[0], &expected(&g, &x, &b1), tol(d), tol(d));
        // A clone outlives the original it was cached from.
        let b3 = b1.clone();
        c.run_into(&x, &b1, &mut out).expect("warm");
        drop(b1);
        c.run_into(&x, &b3, &mut out).expect("run");
        assert_same(&out[0], &expected(&g, &x, &b3), tol(d), tol(d));
        // Bad bindings after a cached call are still errors naming them.
        let mut b4 = b3.clone();
        c.run_into(&x, &b4, &mut out).expect("warm");
        b4.insert("w", data(&[12, 16], d, 5, false)).expect("bind");
        let e = c.run_into(&x, &b4, &mut out).expect_err("wrong shape");
        assert!(
            matches!(&e, Error::Mismatch { what: "parameter", name, .. } if name == "w"),
            "{e}"
        );
        b4.remove("w");
        let e = c.run_into(&x, &b4, &mut out).expect_err("missing");
        assert!(
            matches!(&e, Error::MissingBinding { name } if name == "w"),
            "{e}"
        );
    }
}

#[test]
fn run_into_follows_every_change_of_its_bindings_f32() {
    run_into_follows_every_change_of_its_bindings(DType::F32);
}

#[test]
fn run_into_follows_every_change_of_its_bindings_f64() {
    run_into_follows_every_change_of_its_bindings(DType::F64);
}

fn bound_graph_equals_the_interpreter(d: DType) {
    let g = graph(d);
    for inline in [false, true] {
        let c = Arc::new(compiled(&g, inline));
        let b = Arc::new(bindings(d, 3));
        let mut bound = c.bind(Arc::clone(&b)).expect("bind");
        let mut out = None;
        for seed in 0..4 {
            let x = [data(&[3, 16], d, 20 + seed, seed == 3)];
            let want = expected(&g, &x, &b);
            let out = out.get_or_insert_with(|| bound.run(&x).expect("run"));
            bound.run_into(&x, out).expect("run");
            assert_same(&out[0], &want, tol(d), tol(d));
            assert_eq!(c.run(&x, &b).expect("run"), *out, "bound = run_into");
        }
        assert!(Arc::ptr_eq(bound.bindings(), &b) && Arc::ptr_eq(bound.graph(), &c));
    }
}

#[test]
fn bound_graph_equals_the_interpreter_f32() {
    bound_graph_equals_the_interpreter(DType::F32);
}

#[test]
fn bound_graph_equals_the_interpreter_f64() {
    bound_graph_equals_the_interpreter(DType::F64);
}

/// `bind` checks the Parameters and a bound call its inputs and outputs,
/// each error naming the buffer; the code is never entered with them.
#[test]
fn bind_and_bound_calls_reject_bad_buffers_by_name() {
    let d = DType::F32;
    let c = Arc::new(compiled(&graph(d), true));
    let mut b = bindings(d, 4);
    b.remove("lora_a");
    let e = c.bind(Arc::new(b.clone())).err().expect("missing");
    assert!(
        matches!(&e, Error::MissingBinding { name } if name == "lora_a"),
        "{e}"
    );
    b.insert("lora_a", data(&[16, 2], DType::F64, 1, false))
        .expect("bind");
    let e = c.bind(Arc::new(b)).err().expect("dtype");
    assert!(
        matches!(&e, Error::Mismatch { what: "parameter", name, .. } if name == "lora_a"),
        "{e}"
    );
    let mut bound = c.bind(Arc::new(bindings(d, 4))).expect("bind");
    let x = [data(&[3, 16], d, 1, false)];
    let mut out = bound.run(&x).expect("run");
    let e = bound
        .run_into(&[data(&[4, 16], d, 1, false)], &mut out)
        .expect_err("input shape");
    assert!(
        matches!(&e, Error::Mismatch { what: "input", name, .. } if name == "x"),
        "{e}"
    );
    let e = bound.run_into(&x, &mut []).expect_err("no outputs");
    assert!(
        matches!(
            e,
            Error::Count {
                what: "outputs",
                ..
            }
        ),
        "{e}"
    );
    let mut wrong = [data(&[3, 12], DType::F64, 1, false)];
    let e = bound.run_into(&x, &mut wrong).expect_err("output dtype");
    assert!(matches!(e, Error::Mismatch { what: "output", .. }), "{e}");
    // Still usable after the errors.
    bound.run_into(&x, &mut out).expect("run");
}

/// One `BoundGraph` per thread over one compiled graph: each owns its
/// arena, all agree with the single-threaded result.
#[test]
fn bound_graphs_on_many_threads_agree() {
    let d = DType::F32;
    let g = graph(d);
    let c = Arc::new(compiled(&g, false));
    let b = Arc::new(bindings(d, 6));
    let x = [data(&[3, 16], d, 7, false)];
    let want = c.run(&x, &b).expect("run");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut bound = c.bind(Arc::clone(&b)).expect("bind");
                let mut out = bound.run(&x).expect("run");
                for _ in 0..200 {
                    bound.run_into(&x, &mut out).expect("run");
                    assert_eq!(out, want);
                }
            });
        }
    });
}
