//! Concurrency and the checks made before entering native code (the
//! compile/drop cycles are in `code_memory.rs`, a process of their own).

use crate::common;

use common::data;
use cranelora_graph::{DType, Graph, Op, TensorData};
use cranelora_jit::{compile, lowerable, Bindings, CompiledGraph, Error, JitOptions};
use std::sync::Arc;

/// y = softmax(gelu(x·w + b)) with w a Parameter and an index lookup.
fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [8, 33], DType::F32);
    let w = g.parameter("w", [33, 17], DType::F32);
    let b = g.input("b", [17], DType::F32);
    let y = g.matmul(x, w).expect("mm");
    let y = g.add(y, b).expect("add");
    let y = g.gelu(y).expect("gelu");
    let y = g.softmax(y, 1).expect("softmax");
    g.set_outputs(&[y]).expect("node");
    g
}

fn bindings() -> Bindings {
    let mut b = Bindings::new();
    b.insert("w", data(&[33, 17], DType::F32, 1, false))
        .expect("contiguous");
    b
}

fn inputs() -> Vec<TensorData> {
    vec![
        data(&[8, 33], DType::F32, 2, false),
        data(&[17], DType::F32, 3, false),
    ]
}

#[test]
fn four_threads_times_a_thousand_calls_give_identical_results() {
    let c = Arc::new(compile(&graph(), &JitOptions::default()).expect("compile"));
    let b = Arc::new(bindings());
    let reference = c.run(&inputs(), &b).expect("run");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (c, b, r) = (Arc::clone(&c), Arc::clone(&b), reference.clone());
            std::thread::spawn(move || {
                let ins = inputs();
                let mut out = r.clone();
                for _ in 0..1000 {
                    c.run_into(&ins, &b, &mut out).expect("run");
                    assert_eq!(out, r);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}

#[test]
fn compiled_graph_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CompiledGraph>();
}

/// The error of `r`, which must be a [`Error::Mismatch`] or
/// [`Error::NotContiguous`]: (what, name).
fn named(r: Result<impl std::fmt::Debug, Error>) -> (&'static str, String) {
    match r {
        Err(Error::Mismatch { what, name, .. } | Error::NotContiguous { what, name }) => {
            (what, name)
        }
        other => panic!("expected a buffer error, got {other:?}"),
    }
}

#[test]
fn wrong_buffers_are_errors_naming_them_before_the_call() {
    let c = compile(&graph(), &JitOptions::default()).expect("compile");
    let b = bindings();
    let mut ins = inputs();
    ins[0] = data(&[8, 32], DType::F32, 1, false); // shape (hence length)
    assert_eq!(named(c.run(&ins, &b)), ("input", "x".into()));
    ins[0] = data(&[8, 33], DType::F64, 1, false); // dtype
    assert_eq!(named(c.run(&ins, &b)), ("input", "x".into()));
    ins[0] = data(&[33, 8], DType::F32, 1, false);
    if let TensorData::F32(a) = &mut ins[0] {
        a.swap_axes(0, 1); // [8, 33], column-major
    }
    assert_eq!(named(c.run(&ins, &b)), ("input", "x".into()));
    let mut ins = inputs();
    ins[1] = data(&[17], DType::I64, 1, false);
    let err = c.run(&ins, &b).expect_err("i64 bias");
    assert!(err.to_string().contains("\"b\""), "{err}");
    assert!(matches!(
        c.run(&inputs()[..1], &b),
        Err(Error::Count { .. })
    ));
    match c.run(&inputs(), &Bindings::new()) {
        Err(Error::MissingBinding { name }) => assert_eq!(name, "w"),
        other => panic!("{other:?}"),
    }
    let mut wrong = Bindings::new();
    wrong
        .insert("w", data(&[17, 33], DType::F32, 1, false))
        .expect("contiguous");
    assert_eq!(named(c.run(&inputs(), &wrong)), ("parameter", "w".into()));
    let mut t = data(&[17, 33], DType::F32, 1, false);
    if let TensorData::F32(a) = &mut t {
        a.swap_axes(0, 1);
    }
    assert!(matches!(
        Bindings::new().insert("w", t),
        Err(Error::NotContiguous { .. })
    ));
    let mut outs = vec![TensorData::full(&[8, 16].into(), 0.0, DType::F32)];
    let err = c.run_into(&inputs(), &b, &mut outs);
    assert_eq!(named(err), ("output", "0".into()));
}

#[test]
fn out_of_range_ids_are_errors_from_the_generated_code() {
    for bad in [6i64, -1, i64::MIN] {
        let mut g = Graph::new();
        let table = g.input("table", [6, 5], DType::F32);
        let ids = g.input("ids", [3], DType::I64);
        let y = g
            .named("emb.gather")
            .push(Op::Gather, &[table, ids])
            .expect("gather");
        let u = g.input("u", [3, 5], DType::F32);
        let s = g.scatter_add(u, ids, 6).expect("scatter");
        g.set_outputs(&[y, s]).expect("nodes");
        let c = compile(&g, &JitOptions::default()).expect("compile");
        let idv = TensorData::i64([3], vec![0, bad, 2]).expect("3");
        let ins = [
            data(&[6, 5], DType::F32, 1, false),
            idv,
            data(&[3, 5], DType::F32, 2, false),
        ];
        match c.run(&ins, &Bindings::new()) {
            Err(Error::IndexOutOfRange { node, index, bound }) => {
                assert_eq!((index, bound), (bad, 6));
                assert_eq!(node.name.as_deref(), Some("emb.gather"));
            }
            other => panic!("expected an index error, got {other:?}"),
        }
    }
}

#[test]
fn lowerable_equals_the_graph_crates_list() {
    use cranelora_graph::{Conv2dParams, ReduceKind, Shape};
    let p = Conv2dParams::default();
    let ops = [
        Op::Input { name: "x".into() },
        Op::Constant(Arc::new(TensorData::scalar(1.0, DType::F32))),
        Op::Parameter { name: "p".into() },
        Op::MatMul,
        Op::Add,
        Op::Sub,
        Op::Mul,
        Op::Div,
        Op::Max,
        Op::Min,
        Op::Pow,
        Op::Eq,
        Op::Ne,
        Op::Lt,
        Op::Le,
        Op::Gt,
        Op::Ge,
        Op::Where,
        Op::Sign,
        Op::Neg,
        Op::Relu,
        Op::Gelu,
        Op::GeluTanh,
        Op::GeluGrad,
        Op::GeluTanhGrad,
        Op::Tanh,
        Op::Sigmoid,
        Op::Silu,
        Op::Exp,
        Op::Log,
        Op::Sqrt,
        Op::Rsqrt,
        Op::Erf,
        Op::Abs,
        Op::Recip,
        Op::Scale(2.0),
        Op::Cast(DType::I64),
        Op::StopGradient,
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![0],
            keepdims: false,
        },
        Op::Broadcast {
            shape: Shape::from([2]),
        },
        Op::Softmax { axis: 0 },
        Op::LayerNorm {
            axis: 0,
            eps: 1e-5,
            affine: false,
        },
        Op::Reshape {
            shape: Shape::from([2]),
        },
        Op::Transpose { perm: vec![0] },
        Op::Slice {
            ranges: vec![0..1, 0..2][..1].to_vec(),
        },
        Op::Pad {
            pads: vec![(0, 1)],
            value: 0.0,
        },
        Op::Concat { axis: 0 },
        Op::Gather,
        Op::GatherMatMul,
        Op::ScatterAdd { rows: 2 },
        Op::Conv2d(p),
        Op::Conv2dInputGrad {
            params: p,
            input_size: (3, 3),
        },
        Op::Conv2dWeightGrad {
            params: p,
            kernel: (1, 1),
        },
    ];
    for op in &ops {
        assert_eq!(lowerable(op), cranelora_graph::jit_lowerable(op), "{op}");
    }
    // The list holds every variant of Op: `variant` is an exhaustive match,
    // so a new op does not compile here until it is numbered (and listed).
    let mut seen: Vec<usize> = ops.iter().map(variant).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..OPS).collect::<Vec<_>>(),
        "an op is missing from the list"
    );
}

/// The number of variants of [`Op`].
const OPS: usize = 53;

/// A distinct number per variant of [`Op`], by an exhaustive match.
fn variant(op: &Op) -> usize {
    use Op::*;
    match op {
        Input { .. } => 0,
        Constant(_) => 1,
        Parameter { .. } => 2,
        MatMul => 3,
        Add => 4,
        Sub => 5,
        Mul => 6,
        Div => 7,
        Max => 8,
        Min => 9,
        Pow => 10,
        Eq => 11,
        Ne => 12,
        Lt => 13,
        Le => 14,
        Gt => 15,
        Ge => 16,
        Where => 17,
        Sign => 18,
        Neg => 19,
        Relu => 20,
        Gelu => 21,
        GeluTanh => 22,
        GeluGrad => 23,
        GeluTanhGrad => 24,
        Tanh => 25,
        Sigmoid => 26,
        Silu => 27,
        Exp => 28,
        Log => 29,
        Sqrt => 30,
        Rsqrt => 31,
        Erf => 32,
        Abs => 33,
        Recip => 34,
        Scale(_) => 35,
        Cast(_) => 36,
        StopGradient => 37,
        Reduce { .. } => 38,
        Broadcast { .. } => 39,
        Softmax { .. } => 40,
        LayerNorm { .. } => 41,
        Reshape { .. } => 42,
        Transpose { .. } => 43,
        Slice { .. } => 44,
        Pad { .. } => 45,
        Concat { .. } => 46,
        Gather => 47,
        ScatterAdd { .. } => 48,
        Conv2d(_) => 49,
        Conv2dInputGrad { .. } => 50,
        Conv2dWeightGrad { .. } => 51,
        GatherMatMul => 52,
    }
}

#[test]
fn compile_reports_phases_and_the_memory_plan() {
    let o = JitOptions {
        dump_clif: true,
        inline_matmul_macs: 0, // the product through the GEMM and its epilogue
        ..JitOptions::default()
    };
    let c = compile(&graph(), &o).expect("compile");
    let r = c.report();
    let clif = r.clif.as_deref().expect("dumped");
    assert!(clif.contains("call"), "helpers are called");
    assert_eq!(
        r.matmul_epilogues, 1,
        "bias add and GELU run in the product's epilogue"
    );
    let unfused = compile(&graph(), &o.with_fusion(false)).expect("compile");
    let clif = unfused.report().clif.as_deref().expect("dumped");
    assert!(
        clif.contains("f32x4"),
        "unfused, the bias add runs on f32x4 vectors"
    );
    assert!(r.total() >= r.codegen);
    assert_eq!(c.arena_bytes(), r.memory.arena_bytes);
    assert!(r.memory.to_string().contains("arena"));
}
