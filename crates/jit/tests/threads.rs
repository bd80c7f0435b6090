//! Concurrency, compile/drop cycles and the checks made before entering native code.

mod common;

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

#[test]
fn compile_drop_cycles_release_code_memory() {
    // Each cycle maps and frees the JIT's code pages; 300 cycles of a leak
    // would still pass, so also watch the process's mappings where we can.
    let maps = || {
        std::fs::read_to_string("/proc/self/maps")
            .map(|s| s.lines().count())
            .ok()
    };
    let g = graph();
    for _ in 0..20 {
        drop(compile(&g, &JitOptions::default()).expect("compile"));
    }
    let before = maps();
    for _ in 0..300 {
        let c = compile(&g, &JitOptions::default()).expect("compile");
        c.run(&inputs(), &bindings()).expect("run");
    }
    if let (Some(before), Some(after)) = (before, maps()) {
        assert!(
            after < before + 50,
            "mappings grew from {before} to {after}"
        );
    }
}

#[test]
fn wrong_buffers_are_errors_before_the_call() {
    let c = compile(&graph(), &JitOptions::default()).expect("compile");
    let b = bindings();
    let mut ins = inputs();
    ins[0] = data(&[8, 32], DType::F32, 1, false);
    assert!(matches!(
        c.run(&ins, &b),
        Err(Error::Mismatch { what: "input", .. })
    ));
    ins[0] = data(&[8, 33], DType::F64, 1, false);
    assert!(matches!(
        c.run(&ins, &b),
        Err(Error::Mismatch { what: "input", .. })
    ));
    assert!(matches!(
        c.run(&inputs()[..1], &b),
        Err(Error::Count { .. })
    ));
    assert!(matches!(
        c.run(&inputs(), &Bindings::new()),
        Err(Error::MissingBinding { .. })
    ));
    let mut wrong = Bindings::new();
    wrong
        .insert("w", data(&[17, 33], DType::F32, 1, false))
        .expect("contiguous");
    assert!(matches!(
        c.run(&inputs(), &wrong),
        Err(Error::Mismatch {
            what: "parameter",
            ..
        })
    ));
    let mut outs = vec![TensorData::full(&[8, 16].into(), 0.0, DType::F32)];
    let err = c.run_into(&inputs(), &b, &mut outs);
    assert!(matches!(err, Err(Error::Mismatch { what: "output", .. })));
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
}

#[test]
fn compile_reports_phases_and_the_memory_plan() {
    let o = JitOptions {
        dump_clif: true,
        ..JitOptions::default()
    };
    let c = compile(&graph(), &o).expect("compile");
    let r = c.report();
    let clif = r.clif.as_deref().expect("dumped");
    assert!(clif.contains("call"), "helpers are called");
    assert!(clif.contains("f32x4"), "the bias add runs on f32x4 vectors");
    assert!(r.total() >= r.codegen);
    assert_eq!(c.arena_bytes(), r.memory.arena_bytes);
    assert!(r.memory.to_string().contains("arena"));
}
