//! Every pass before vs after on hand-built graphs: each rule fires and the
//! interpreter's results are kept — exactly for DCE, CSE, simplification
//! without scale merging and constant folding; within `rtol` for LoRA
//! folding (f64: 1e-10, f32: 1e-4) and scale merging (1e-15 in f64) — plus
//! the pass manager's pipeline, report, verification and idempotence.

use crate::common;

use common::{f32s, f64s, i64s, Rng};
use cranelora_graph::passes::{
    plan_fusion, Changed, ConstFold, Cse, DeadCodeElim, LoraFold, Pass, PassManager, PassOptions,
    Simplify,
};
use cranelora_graph::{
    interpret, to_dot_with, Bindings, Conv2dParams, DType, Error, Graph, NodeId, Op, ReduceKind,
    TensorData, Value,
};
use cranelora_kernels::testing::{check_close, Nan};
use std::sync::Arc;

/// Runs `g` before and after `transform` on the same values and asserts
/// every output is within `rtol` (NaN matching NaN); returns what changed.
fn check_pass(
    g: &Graph,
    inputs: &[Value],
    bindings: &Bindings,
    rtol: f64,
    transform: impl FnOnce(&mut Graph) -> Changed,
) -> (Graph, Changed) {
    let before = interpret(g, inputs, bindings).expect("the original runs");
    let mut after_g = g.clone();
    let changed = transform(&mut after_g);
    cranelora_graph::verify(&after_g).expect("the pass leaves a valid graph");
    let after = interpret(&after_g, inputs, bindings).expect("the transformed graph runs");
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((a.shape(), a.dtype()), (b.shape(), b.dtype()));
        check_close(&a.to_f64_vec(), &b.to_f64_vec(), rtol, 0.0, Nan::Equal)
            .unwrap_or_else(|e| panic!("{e}\nbefore:\n{g}\nafter:\n{after_g}"));
    }
    (after_g, changed)
}

/// [`check_pass`] for one pass.
fn check_one(g: &Graph, inputs: &[Value], pass: &dyn Pass, rtol: f64) -> (Graph, Changed) {
    check_pass(g, inputs, &Bindings::new(), rtol, |g| {
        pass.run(g).expect("the pass runs")
    })
}

fn count(g: &Graph, pred: impl Fn(&Op) -> bool) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| pred(&g.node(id).expect("live").op))
        .count()
}

fn matmuls(g: &Graph) -> usize {
    count(g, |op| matches!(op, Op::MatMul))
}

fn constant(g: &mut Graph, rng: &mut Rng, shape: &[usize]) -> NodeId {
    g.constant(rng.value(shape)).expect("constant")
}

// ---------------------------------------------------------------- DCE, CSE

#[test]
fn dce_removes_dead_nodes_and_keeps_results_exactly() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F64);
    let _unused = g.input("unused", [1], DType::F64);
    let e = g.exp(x).expect("exp");
    let dead = g.tanh(e).expect("tanh");
    g.neg(dead).expect("neg");
    let y = g.sigmoid(e).expect("sigmoid");
    g.set_outputs(&[y]).expect("y is a node");
    let mut rng = Rng(1);
    let inputs = [rng.value(&[2, 3]), rng.value(&[1])];
    let (after, changed) = check_one(&g, &inputs, &DeadCodeElim::default(), 0.0);
    assert_eq!(changed.removed, 2);
    assert_eq!(after.len(), 4);
}

#[test]
fn cse_merges_identical_subtrees_and_keeps_results_exactly() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F64);
    let a = g.scale(x, 0.5).expect("scale");
    let b = g.scale(x, 0.5).expect("scale");
    let c = g.scale(x, -0.5).expect("a different attribute");
    let (ea, eb) = (g.exp(a).expect("exp"), g.exp(b).expect("exp"));
    let s = g.add(ea, eb).expect("add");
    let y = g.mul(s, c).expect("mul");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [Rng(2).value(&[2, 3])];
    let (after, changed) = check_one(&g, &inputs, &Cse, 0.0);
    assert_eq!(changed.removed, 2, "scale and exp merged once each");
    assert_eq!(after.len(), 6);
}

#[test]
fn cse_merges_one_arc_but_not_equal_contents_in_two_arcs() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F64);
    let data = Arc::new(f64s(&[2], &[1.0, 2.0]));
    let c1 = g.constant(data.clone()).expect("constant");
    let c2 = g.constant(data.clone()).expect("same Arc");
    let c3 = g
        .constant(f64s(&[2], &[1.0, 2.0]))
        .expect("equal data, new Arc");
    let a = g.add(x, c1).expect("add");
    let b = g.add(x, c2).expect("add");
    let c = g.add(x, c3).expect("add");
    let ab = g.mul(a, b).expect("mul");
    let y = g.mul(ab, c).expect("mul");
    g.set_outputs(&[y]).expect("y is a node");
    let (after, changed) = check_one(&g, &[f64s(&[2], &[3.0, 4.0])], &Cse, 0.0);
    // c2 merges into c1, then x + c2 into x + c1; c3 and x + c3 stay.
    assert_eq!(changed.removed, 2);
    assert!(after.node(c1).is_some() && after.node(c2).is_none() && after.node(c3).is_some());
    assert!(after.node(c).is_some());
}

// ---------------------------------------------------------------- simplify

type Build = fn(&mut Graph, NodeId) -> NodeId;

/// (rule, builder on x: f64[2, 3], nodes left after simplify + DCE).
fn simplify_cases() -> Vec<(&'static str, Build, usize)> {
    fn k(g: &mut Graph, v: f64) -> NodeId {
        g.scalar(v, DType::F64).expect("scalar")
    }
    vec![
        (
            "x·1",
            |g, x| {
                let o = k(g, 1.0);
                g.mul(x, o).expect("mul")
            },
            1,
        ),
        (
            "1·x",
            |g, x| {
                let o = k(g, 1.0);
                g.mul(o, x).expect("mul")
            },
            1,
        ),
        (
            "x+0",
            |g, x| {
                let z = k(g, 0.0);
                g.add(x, z).expect("add")
            },
            1,
        ),
        (
            "0+x",
            |g, x| {
                let z = k(g, -0.0);
                g.add(z, x).expect("add")
            },
            1,
        ),
        (
            "x−0",
            |g, x| {
                let z = k(g, 0.0);
                g.sub(x, z).expect("sub")
            },
            1,
        ),
        (
            "x/1",
            |g, x| {
                let o = k(g, 1.0);
                g.div(x, o).expect("div")
            },
            1,
        ),
        (
            "x^1",
            |g, x| {
                let o = k(g, 1.0);
                g.pow(x, o).expect("pow")
            },
            1,
        ),
        (
            "−(−x)",
            |g, x| {
                let n = g.neg(x).expect("neg");
                g.neg(n).expect("neg")
            },
            1,
        ),
        ("1·x scale", |g, x| g.scale(x, 1.0).expect("scale"), 1),
        (
            "b·(a·x)",
            |g, x| {
                let s = g.scale(x, 3.0).expect("s");
                g.scale(s, 0.25).expect("s")
            },
            2,
        ),
        (
            "cast to own dtype",
            |g, x| g.cast(x, DType::F64).expect("cast"),
            1,
        ),
        (
            "identity transpose",
            |g, x| g.transpose(x, &[0, 1]).expect("t"),
            1,
        ),
        (
            "transpose∘transpose = id",
            |g, x| {
                let t = g.transpose(x, &[1, 0]).expect("t");
                g.transpose(t, &[1, 0]).expect("t")
            },
            1,
        ),
        (
            "transpose∘transpose composed",
            |g, x| {
                let r = g.reshape(x, [1, 2, 3]).expect("r");
                let t = g.transpose(r, &[1, 2, 0]).expect("t");
                g.transpose(t, &[0, 2, 1]).expect("t")
            },
            3,
        ),
        (
            "identity reshape",
            |g, x| g.reshape(x, [2, 3]).expect("r"),
            1,
        ),
        (
            "reshape∘reshape",
            |g, x| {
                let r = g.reshape(x, [6]).expect("r");
                g.reshape(r, [3, 2]).expect("r")
            },
            2,
        ),
        (
            "reshape∘reshape = id",
            |g, x| {
                let r = g.reshape(x, [6]).expect("r");
                g.reshape(r, [2, 3]).expect("r")
            },
            1,
        ),
        (
            "identity broadcast",
            |g, x| g.broadcast(x, [2, 3]).expect("b"),
            1,
        ),
        (
            "full slice",
            |g, x| g.slice(x, &[0..2, 0..3]).expect("s"),
            1,
        ),
        (
            "zero pad",
            |g, x| g.pad(x, &[(0, 0), (0, 0)], 7.0).expect("p"),
            1,
        ),
        (
            "one-operand concat",
            |g, x| g.concat(&[x], 1).expect("c"),
            1,
        ),
        (
            "reduce over no axes",
            |g, x| g.reduce(x, ReduceKind::Max, &[], true).expect("r"),
            1,
        ),
    ]
}

#[test]
fn simplify_fires_each_rule_and_keeps_results() {
    let x_value = f64s(&[2, 3], &[1.5, -2.0, f64::NAN, 0.0, -0.0, f64::INFINITY]);
    for (rule, build, left) in simplify_cases() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3], DType::F64);
        let y = build(&mut g, x);
        g.set_outputs(&[y]).expect("y is a node");
        // Scale merging rounds a·b once (exact here: 3·0.25); the rest is exact.
        let (mut after, changed) = check_one(&g, std::slice::from_ref(&x_value), &Simplify, 0.0);
        assert!(changed.rewritten >= 1, "{rule}: no rewrite\n{g}");
        DeadCodeElim::default().run(&mut after).expect("valid");
        assert_eq!(after.len(), left, "{rule}:\n{after}");
        assert!(
            !Simplify.run(&mut after).expect("valid").any(),
            "{rule}: not idempotent"
        );
    }
}

#[test]
fn simplify_composes_transpose_perms() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 4], DType::F64);
    let t = g.transpose(x, &[1, 2, 0]).expect("t");
    let y = g.transpose(t, &[0, 2, 1]).expect("t");
    g.set_outputs(&[y]).expect("y is a node");
    let (after, _) = check_one(&g, &[Rng(3).value(&[2, 3, 4])], &Simplify, 0.0);
    let out = after.outputs()[0];
    assert_eq!(
        after.node(out).expect("live").op,
        Op::Transpose {
            perm: vec![1, 0, 2]
        }
    );
    assert_eq!(after.operands(out), vec![x]);
}

#[test]
fn simplify_leaves_x_times_zero_and_broadcasting_identities() {
    let mut g = Graph::new();
    let x = g.input("x", [3], DType::F64);
    let zero = g.scalar(0.0, DType::F64).expect("scalar");
    let ones = g
        .constant(TensorData::full(&[2, 3].into(), 1.0, DType::F64))
        .expect("ones");
    let xz = g.mul(x, zero).expect("x·0");
    let y = g.mul(xz, ones).expect("broadcasts x up: not an identity");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [f64s(&[3], &[f64::NAN, f64::INFINITY, 2.0])];
    let (_, changed) = check_one(&g, &inputs, &Simplify, 0.0);
    assert!(!changed.any());
    let out = interpret(&g, &inputs, &Bindings::new()).expect("runs");
    assert!(out[0].to_f64_vec()[0].is_nan(), "NaN·0 stays NaN");
}

#[test]
fn simplify_merges_scales_within_rounding() {
    let mut g = Graph::new();
    let x = g.input("x", [4], DType::F32);
    let s = g.scale(x, 0.1).expect("scale");
    let y = g.scale(s, 3.3).expect("scale");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [f32s(&[4], &[1.0, -7.5, 1e3, 3.25])];
    // One rounding of a·b instead of two roundings: ≤ 2 ulp of f32.
    let (after, _) = check_one(&g, &inputs, &Simplify, 2.0 * f64::from(f32::EPSILON));
    assert_eq!(count(&after, |op| matches!(op, Op::Scale(_))), 1);
}

// ---------------------------------------------------------------- constant folding

#[test]
fn const_fold_folds_constant_subgraphs_exactly_and_keeps_parameters() {
    let mut g = Graph::new();
    let mut rng = Rng(4);
    let x = g.input("x", [2, 3], DType::F64);
    let p = g.parameter("p", [3], DType::F64);
    let w = constant(&mut g, &mut rng, &[3, 2]);
    let wt = g.transpose(w, &[1, 0]).expect("t");
    let e = g.exp(wt).expect("exp");
    let r = g.reduce(e, ReduceKind::Sum, &[0], false).expect("sum");
    let rp = g.add(r, p).expect("parameter: not folded");
    let y = g.mul(x, rp).expect("mul");
    g.set_outputs(&[y]).expect("y is a node");
    let mut bindings = Bindings::new();
    bindings.insert("p".into(), rng.value(&[3]));
    let (after, changed) = check_pass(&g, &[rng.value(&[2, 3])], &bindings, 0.0, |g| {
        ConstFold::default().run(g).expect("runs")
    });
    assert_eq!(changed.rewritten, 3);
    assert_eq!(after.len(), 5, "x, p, folded constant, add, mul:\n{after}");
}

#[test]
fn const_fold_respects_the_size_limit() {
    let mut g = Graph::new();
    let c = g.scalar(2.0, DType::F64).expect("scalar");
    let big = g.broadcast(c, [4, 4]).expect("16 elements");
    let small = g.neg(c).expect("1 element");
    let y = g.add(big, small).expect("16 elements");
    g.set_outputs(&[y]).expect("y is a node");
    let limited = ConstFold { max_elements: 8 };
    let (after, changed) = check_one(&g, &[], &limited, 0.0);
    assert_eq!(changed.rewritten, 1, "only the 1-element neg folds");
    assert_eq!(count(&after, |op| matches!(op, Op::Broadcast { .. })), 1);
    let (after, _) = check_one(&g, &[], &ConstFold::default(), 0.0);
    assert_eq!(after.len(), 1);
}

#[test]
fn const_fold_leaves_a_failing_gather_for_run_time() {
    let mut g = Graph::new();
    let table = g
        .constant(f64s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))
        .expect("table");
    let ids = g.constant(i64s(&[1], &[5])).expect("out of range");
    let y = g.gather(table, ids).expect("types fit");
    g.set_outputs(&[y]).expect("y is a node");
    let mut folded = g.clone();
    assert!(!ConstFold::default().run(&mut folded).expect("runs").any());
    let err = interpret(&folded, &[], &Bindings::new()).unwrap_err();
    assert!(
        matches!(err, Error::IndexOutOfRange { index: 5, .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------- LoRA folding

const S: f64 = 2.0;

/// `act(x·W + b + s·((x·A)·B))` with the bias in the given association;
/// W, A, B Constants unless `params`, when A and B are Parameters.
fn lora_dense(assoc: usize, params: bool) -> (Graph, Vec<Value>, Bindings) {
    let mut rng = Rng(10 + assoc as u64);
    let mut g = Graph::new();
    let x = g.input("x", [3, 8], DType::F64);
    let w = constant(&mut g, &mut rng, &[8, 5]);
    let b = constant(&mut g, &mut rng, &[5]);
    let mut bindings = Bindings::new();
    let (a, lb) = if params {
        bindings.insert("fc.lora_a".into(), rng.value(&[8, 2]));
        bindings.insert("fc.lora_b".into(), rng.value(&[2, 5]));
        (
            g.parameter("fc.lora_a", [8, 2], DType::F64),
            g.parameter("fc.lora_b", [2, 5], DType::F64),
        )
    } else {
        (
            constant(&mut g, &mut rng, &[8, 2]),
            constant(&mut g, &mut rng, &[2, 5]),
        )
    };
    let xw = g.named("fc").matmul(x, w).expect("mm");
    let xa = g.named("fc.lora_a").matmul(x, a).expect("mm");
    let xab = g.named("fc.lora_b").matmul(xa, lb).expect("mm");
    let d = g.named("fc.lora_scale").scale(xab, S).expect("scale");
    let z = match assoc {
        // (x·W + b) + Δ
        0 => {
            let xb = g.add(xw, b).expect("bias");
            g.add(xb, d).expect("add")
        }
        // (x·W + Δ) + b
        1 => {
            let xd = g.add(xw, d).expect("add");
            g.add(xd, b).expect("bias")
        }
        // x·W + (b + Δ)
        2 => {
            let bd = g.add(b, d).expect("add");
            g.add(xw, bd).expect("add")
        }
        // Δ + (b + x·W)
        _ => {
            let bx = g.add(b, xw).expect("add");
            g.add(d, bx).expect("add")
        }
    };
    let y = g.named("act").gelu(z).expect("gelu");
    g.set_outputs(&[y]).expect("y is a node");
    (g, vec![rng.value(&[3, 8])], bindings)
}

#[test]
fn lora_fold_turns_a_dense_layers_three_matmuls_into_one_in_every_association() {
    for assoc in 0..4 {
        let (g, inputs, bindings) = lora_dense(assoc, false);
        assert_eq!(matmuls(&g), 3);
        let (after, changed) = check_pass(&g, &inputs, &bindings, 1e-10, |g| {
            LoraFold.run(g).expect("runs")
        });
        assert_eq!(changed.rewritten, 1, "association {assoc}:\n{g}");
        assert_eq!(matmuls(&after), 1, "association {assoc}:\n{after}");
        assert_eq!(count(&after, |op| matches!(op, Op::Gelu)), 1);
        assert_eq!(count(&after, |op| matches!(op, Op::Scale(_))), 0);
    }
}

#[test]
fn lora_fold_never_folds_parameters() {
    let (mut g, _, _) = lora_dense(0, true);
    assert!(!LoraFold.run(&mut g).expect("runs").any());
    assert_eq!(matmuls(&g), 3);
    // Nor a Parameter base weight with constant adapters.
    let mut g = Graph::new();
    let mut rng = Rng(5);
    let x = g.input("x", [2, 4], DType::F64);
    let w = g.parameter("fc.weight", [4, 4], DType::F64);
    let a = constant(&mut g, &mut rng, &[4, 1]);
    let b = constant(&mut g, &mut rng, &[1, 4]);
    let xw = g.matmul(x, w).expect("mm");
    let xa = g.matmul(x, a).expect("mm");
    let xab = g.matmul(xa, b).expect("mm");
    let y = g.add(xw, xab).expect("add");
    g.set_outputs(&[y]).expect("y is a node");
    assert!(!LoraFold.run(&mut g).expect("runs").any());
}

#[test]
fn lora_fold_in_f32_stays_within_its_stated_tolerance() {
    let mut rng = Rng(6);
    let f32v = |rng: &mut Rng, shape: &[usize]| {
        let v: Vec<f32> = rng
            .vec(shape.iter().product())
            .iter()
            .map(|&x| x as f32)
            .collect();
        f32s(shape, &v)
    };
    let mut g = Graph::new();
    let x = g.input("x", [4, 64], DType::F32);
    let w = g.constant(f32v(&mut rng, &[64, 32])).expect("w");
    let a = g.constant(f32v(&mut rng, &[64, 4])).expect("a");
    let b = g.constant(f32v(&mut rng, &[4, 32])).expect("b");
    let xw = g.matmul(x, w).expect("mm");
    let xa = g.matmul(x, a).expect("mm");
    let xa = g.scale(xa, 0.5).expect("a scale between A and B");
    let xab = g.matmul(xa, b).expect("mm");
    let d = g.scale(xab, 4.0).expect("scale");
    let y = g.add(d, xw).expect("add");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [f32v(&mut rng, &[4, 64])];
    let (after, _) = check_pass(&g, &inputs, &Bindings::new(), 1e-4, |g| {
        LoraFold.run(g).expect("runs")
    });
    assert_eq!(matmuls(&after), 1);
}

#[test]
fn lora_fold_folds_a_conv_branch() {
    let mut rng = Rng(7);
    let mut g = Graph::new();
    let p = Conv2dParams {
        stride: (2, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let x = g.input("x", [2, 3, 6, 5], DType::F64);
    let w = constant(&mut g, &mut rng, &[4, 3, 3, 3]);
    let a = constant(&mut g, &mut rng, &[2, 3, 3, 3]);
    let b = constant(&mut g, &mut rng, &[4, 2, 1, 1]);
    let bias = constant(&mut g, &mut rng, &[4, 1, 1]);
    let xw = g.conv2d(x, w, p).expect("conv");
    let xb = g.add(xw, bias).expect("bias");
    let xa = g.conv2d(x, a, p).expect("conv A");
    let xab = g
        .conv2d(xa, b, Conv2dParams::default())
        .expect("conv 1×1 B");
    let d = g.scale(xab, 0.75).expect("scale");
    let y = g.add(xb, d).expect("add");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [rng.value(&[2, 3, 6, 5])];
    let (after, changed) = check_pass(&g, &inputs, &Bindings::new(), 1e-10, |g| {
        LoraFold.run(g).expect("runs")
    });
    assert_eq!(changed.rewritten, 1);
    assert_eq!(count(&after, |op| matches!(op, Op::Conv2d(_))), 1);
}

#[test]
fn lora_fold_folds_an_embedding_branch() {
    let mut rng = Rng(8);
    let mut g = Graph::new();
    let ids = g.input("ids", [2, 3], DType::I64);
    let w = constant(&mut g, &mut rng, &[10, 4]);
    let a = constant(&mut g, &mut rng, &[10, 2]);
    let b = constant(&mut g, &mut rng, &[2, 4]);
    let base = g.gather(w, ids).expect("gather");
    let ga = g.gather(a, ids).expect("gather A");
    let gab = g.matmul(ga, b).expect("mm");
    let d = g.scale(gab, S).expect("scale");
    let y = g.add(base, d).expect("add");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [i64s(&[2, 3], &[0, 9, 3, 3, 7, 1])];
    let (after, changed) = check_pass(&g, &inputs, &Bindings::new(), 1e-10, |g| {
        LoraFold.run(g).expect("runs")
    });
    assert_eq!(changed.rewritten, 1);
    assert_eq!(count(&after, |op| matches!(op, Op::Gather)), 1);
    assert_eq!(matmuls(&after), 0);
}

#[test]
fn dora_with_constant_weights_folds_to_one_matmul_in_the_pipeline() {
    // z = (m/n)⊙(x·W + s·(x·A)·B), n = column norms of V = W + s·A·B.
    let mut rng = Rng(9);
    let mut g = Graph::new();
    let x = g.input("x", [3, 6], DType::F64);
    let w = constant(&mut g, &mut rng, &[6, 4]);
    let a = constant(&mut g, &mut rng, &[6, 2]);
    let b = constant(&mut g, &mut rng, &[2, 4]);
    let m = constant(&mut g, &mut rng, &[4]);
    let ab = g.matmul(a, b).expect("mm");
    let sab = g.scale(ab, S).expect("scale");
    let v = g.add(w, sab).expect("V");
    let v2 = g.mul(v, v).expect("V²");
    let sum = g.reduce(v2, ReduceKind::Sum, &[0], false).expect("Σ");
    let n = g.sqrt(sum).expect("n");
    let c = g.div(m, n).expect("m/n");
    let xw = g.matmul(x, w).expect("mm");
    let xa = g.matmul(x, a).expect("mm");
    let xab = g.matmul(xa, b).expect("mm");
    let d = g.scale(xab, S).expect("scale");
    let inner = g.add(xw, d).expect("add");
    let y = g.mul(inner, c).expect("DoRA scale");
    g.set_outputs(&[y]).expect("y is a node");
    let inputs = [rng.value(&[3, 6])];
    let (after, _) = check_pass(&g, &inputs, &Bindings::new(), 1e-10, |g| {
        let manager = PassManager::new(PassOptions::default());
        manager.run(g).expect("runs").total()
    });
    assert_eq!(matmuls(&after), 1, "{after}");
    assert_eq!(after.len(), 3, "x, merged weight, matmul:\n{after}");
}

// ---------------------------------------------------------------- fusion

#[test]
fn fusion_groups_a_matmul_bias_gelu_epilogue_and_a_residual_add() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 8], DType::F32);
    let w = g.parameter("fc.weight", [8, 8], DType::F32);
    let b = g.parameter("fc.bias", [8], DType::F32);
    let mm = g.named("fc").matmul(x, w).expect("mm");
    let z = g.named("fc").add(mm, b).expect("bias");
    let h = g.named("act").gelu(z).expect("gelu");
    let r = g.named("residual").add(h, x).expect("residual");
    let sm = g.softmax(r, 1).expect("row softmax");
    let y = g.matmul(sm, w).expect("next layer");
    g.set_outputs(&[y, r]).expect("nodes");
    let plan = plan_fusion(&g).expect("acyclic");
    assert_eq!(plan.groups.len(), 1, "{plan:?}");
    let group = &plan.groups[0];
    assert_eq!(group.anchor, Some(mm));
    assert_eq!(group.nodes, vec![z, h, r, sm]);
    assert_eq!(group.outputs, vec![r, sm]);
    let dot = to_dot_with(&g, &plan);
    assert!(
        dot.contains("subgraph cluster_fusion_0") && dot.contains("fusion 0"),
        "{dot}"
    );
}

// ---------------------------------------------------------------- manager

#[test]
fn pipeline_is_idempotent_and_reports_every_pass() {
    let (mut g, inputs, bindings) = lora_dense(0, false);
    let before = interpret(&g, &inputs, &bindings).expect("runs");
    let options = PassOptions {
        dump: true,
        ..PassOptions::default()
    };
    let manager = PassManager::new(options);
    assert_eq!(
        manager.pass_names(),
        ["simplify", "const_fold", "lora_fold", "cse", "dce"]
    );
    let report = manager.run(&mut g).expect("runs");
    assert!(report.fixed_point, "{report}");
    assert!(report.runs.iter().all(|r| r.dump.is_some()));
    assert_eq!(report.runs.last().map(|r| r.name), Some("fuse"));
    assert!(report.total().any());
    assert_eq!(matmuls(&g), 1);
    let after = interpret(&g, &inputs, &bindings).expect("runs");
    check_close(
        &after[0].to_f64_vec(),
        &before[0].to_f64_vec(),
        1e-10,
        0.0,
        Nan::Mismatch,
    )
    .expect("close");
    let text = cranelora_graph::dump(&g);
    let second = manager.run(&mut g).expect("runs");
    assert!(!second.total().any(), "{second}");
    assert_eq!(second.iterations, 1);
    assert_eq!(cranelora_graph::dump(&g), text);
    assert_eq!(second.fusion, report.fusion);
}

#[test]
fn lora_fold_switch_keeps_the_adapter_unmerged() {
    let (mut g, _, _) = lora_dense(1, false);
    let options = PassOptions {
        lora_fold: false,
        ..PassOptions::default()
    };
    PassManager::new(options).run(&mut g).expect("runs");
    assert_eq!(matmuls(&g), 3);
}

/// A deliberately broken pass: it drops the graph's first output node.
struct Broken;

impl Pass for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn run(&self, g: &mut Graph) -> cranelora_graph::Result<Changed> {
        let out = g.outputs()[0];
        g.remove_node(out);
        Ok(Changed {
            removed: 1,
            ..Changed::default()
        })
    }
}

#[test]
fn manager_verifies_after_each_pass_and_names_the_culprit() {
    let (mut g, _, _) = lora_dense(0, false);
    let manager = PassManager::with_passes(vec![Box::new(Broken)], PassOptions::default());
    let err = manager.run(&mut g).unwrap_err();
    assert!(err.to_string().contains("pass `broken`"), "{err}");
}

// ---------------------------------------------------------------- golden

/// The graph after each pass of the default pipeline that changed it, and
/// the fusion groups, on a small all-constant LoRA dense layer with integer weights (so the folded weight is exact on
/// every machine), against `tests/golden/passes_lora_dense.txt`; `BLESS=1`
/// rewrites it.
#[test]
fn pipeline_dumps_after_each_pass_match_golden() {
    let mut g = Graph::new();
    let c = |g: &mut Graph, shape: &[usize], v: &[f64], name: &str| {
        g.named(name).constant(f64s(shape, v)).expect("constant")
    };
    let x = g.input("x", [2, 2], DType::F64);
    let w = c(&mut g, &[2, 2], &[1.0, 2.0, 3.0, 4.0], "fc.weight");
    let b = c(&mut g, &[2], &[0.5, -0.5], "fc.bias");
    let a = c(&mut g, &[2, 1], &[1.0, -1.0], "fc.lora_a.weight");
    let lb = c(&mut g, &[1, 2], &[2.0, 1.0], "fc.lora_b.weight");
    let one = g.scalar(1.0, DType::F64).expect("scalar");
    let x1 = g.named("fc.input").mul(x, one).expect("x·1");
    let xw = g.named("fc").matmul(x1, w).expect("mm");
    let xb = g.named("fc").add(xw, b).expect("bias");
    let xa = g.named("fc.lora_a").matmul(x1, a).expect("mm");
    let xab = g.named("fc.lora_b").matmul(xa, lb).expect("mm");
    let d = g.named("fc.lora_scale").scale(xab, 0.5).expect("scale");
    let z = g.named("fc").add(xb, d).expect("add");
    let y = g.named("act").gelu(z).expect("gelu");
    g.set_outputs(&[y]).expect("y is a node");
    let options = PassOptions {
        dump: true,
        ..PassOptions::default()
    };
    let report = PassManager::new(options).run(&mut g).expect("runs");
    // The graph after each pass that changed it, then the fusion groups.
    let mut text = String::new();
    for run in report
        .runs
        .iter()
        .filter(|r| r.changed.any() && r.name != "fuse")
    {
        let dump = run.dump.as_deref().expect("dump requested");
        let (i, name, changed) = (run.iteration, run.name, run.changed);
        text.push_str(&format!("## round {i}: {name} ({changed})\n{dump}"));
    }
    let ids = |ids: &[NodeId]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plan = report.fusion.expect("fusion on by default");
    for (i, group) in plan.groups.iter().enumerate() {
        let anchor = group.anchor.map_or("none".into(), |a| a.to_string());
        let (nodes, outs) = (ids(&group.nodes), ids(&group.outputs));
        text.push_str(&format!(
            "## fusion group {i}: anchor {anchor}, nodes [{nodes}], outputs [{outs}]\n"
        ));
    }
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/passes_lora_dense.txt");
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("golden file is writable");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    assert!(
        expected == text,
        "{} differs (BLESS=1 to accept):\n{text}",
        path.display()
    );
}
