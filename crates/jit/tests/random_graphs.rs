//! Random small DAGs (proptest) through the JIT and the interpreter.
//!
//! Every node has a shape broadcastable to [4, 3] (`[4, 3]`, `[3]`, `[4, 1]`,
//! `[1, 3]`, `[]`), so any two nodes can be combined. 32 node kinds:
//! elementwise arithmetic and transcendental ops, Where of a comparison,
//! sum / max / mean reductions, softmax, layer norm, a constant matmul and
//! data movement (slice, broadcast, transpose, concat, pad). The same
//! graphs with two Parameters, two of whose outputs replace them, run as
//! training steps through `Trainer` (in-place updates, `inplace.rs`).
//! Cases: 300 by default, `CRANELORA_PROPTEST_CASES=n` (or proptest's own
//! `PROPTEST_CASES=n`) to change.

use crate::common;

use common::{assert_same, data};
use cranelora_graph::{
    interpret, Bindings, DType, Graph, NodeId, Op, ReduceKind, Result, TensorData,
};
use cranelora_jit::{compile, JitOptions, Trainer};
use proptest::prelude::*;

/// Builds the graph described by `steps` (op selector, operand selectors).
fn build(steps: &[(u8, u8, u8)], d: DType) -> Graph {
    let mut g = Graph::new();
    let mut pool: Vec<NodeId> = vec![g.input("x", [4, 3], d), g.input("y", [3], d)];
    grow(&mut g, &mut pool, steps, d);
    let n = pool.len();
    g.set_outputs(&[pool[n - 1], pool[n / 2]]).expect("nodes");
    g
}

/// Appends the nodes of `steps` to `pool`, operands drawn from the pool.
fn grow(g: &mut Graph, pool: &mut Vec<NodeId>, steps: &[(u8, u8, u8)], d: DType) {
    let w = g.constant(data(&[3, 3], d, 99, false)).expect("constant");
    for &(op, a, b) in steps {
        let x = pool[a as usize % pool.len()];
        let y = pool[b as usize % pool.len()];
        let node = match op % 32 {
            0..16 => arithmetic(g, op % 16, x, y, w, a),
            _ => structural(g, op % 32, x, a, b),
        };
        pool.push(node.expect("shapes broadcast"));
    }
}

/// A training-step-like graph: Parameters p [4, 3] and q [3] join the
/// inputs in the pool; outputs are [new p, new q, last, middle] (updates
/// first, so an end copy from a Parameter comes after the copies into
/// them in output order), the new
/// values picked among the pool's nodes of the right shape (p or q
/// themselves, an input, any computed node) by `pick`.
fn build_updating(steps: &[(u8, u8, u8)], d: DType, pick: (u8, u8)) -> Graph {
    let mut g = Graph::new();
    let mut pool: Vec<NodeId> = vec![
        g.input("x", [4, 3], d),
        g.input("y", [3], d),
        g.parameter("p", [4, 3], d),
        g.parameter("q", [3], d),
    ];
    grow(&mut g, &mut pool, steps, d);
    let of = |dims: &[usize], i: u8| {
        let fits: Vec<NodeId> = pool
            .iter()
            .copied()
            .filter(|&n| self::dims(&g, n) == dims)
            .collect();
        fits[i as usize % fits.len()]
    };
    let (new_p, new_q) = (of(&[4, 3], pick.0), of(&[3], pick.1));
    let n = pool.len();
    g.set_outputs(&[new_p, new_q, pool[n - 1], pool[n / 2]])
        .expect("nodes");
    g
}

fn dims(g: &Graph, x: NodeId) -> Vec<usize> {
    g.node(x).expect("node").shape.dims().to_vec()
}

/// Arithmetic, transcendental, reduction, softmax, matmul and Where nodes.
fn arithmetic(g: &mut Graph, op: u8, x: NodeId, y: NodeId, w: NodeId, a: u8) -> Result<NodeId> {
    let dims = dims(g, x);
    let mut unary = |op: Op| g.push(op, &[x]);
    match op {
        0 => g.add(x, y),
        1 => g.sub(x, y),
        2 => g.mul(x, y),
        3 => g.push(Op::Max, &[x, y]),
        4 => g.push(Op::Min, &[x, y]),
        5 => g.div(x, y),
        6 => unary(Op::Neg),
        7 => unary(Op::Relu),
        8 => unary(Op::Tanh),
        9 => unary(Op::GeluTanh),
        10 => unary(Op::Scale(0.5)),
        11 if dims.len() == 2 => g.reduce(x, ReduceKind::Sum, &[(a % 2) as usize], true),
        12 if dims.len() == 2 => g.softmax(x, 1),
        13 if dims == [4, 3] => g.matmul(x, w),
        14 => {
            let lt = g.push(Op::Lt, &[x, y])?;
            g.select(lt, x, y)
        }
        _ => unary(Op::Sigmoid),
    }
}

/// Max / mean reductions, data movement (slice, broadcast, transpose,
/// concat, pad), abs, sqrt, ln, erf, SiLU and layer norm; every result is
/// again broadcastable to [4, 3].
fn structural(g: &mut Graph, op: u8, x: NodeId, a: u8, b: u8) -> Result<NodeId> {
    let dims = dims(g, x);
    let rank2 = dims.len() == 2;
    match op {
        16 if rank2 => g.reduce(x, ReduceKind::Max, &[(a % 2) as usize], true),
        17 if rank2 => g.reduce(x, ReduceKind::Mean, &[(b % 2) as usize], true),
        18 if dims == [4, 3] && a.is_multiple_of(2) => {
            g.slice(x, &[0..4, (b % 3) as usize..(b % 3 + 1) as usize])
        }
        18 if dims == [4, 3] => g.slice(x, &[(b % 4) as usize..(b % 4 + 1) as usize, 0..3]),
        19 => g.broadcast(x, [4, 3]),
        20 if rank2 => {
            let t = g.transpose(x, &[1, 0])?;
            let t = g.scale(t, 2.0)?;
            g.transpose(t, &[1, 0])
        }
        21 if dims == [4, 3] => {
            let right = g.slice(x, &[0..4, 1..3])?;
            let left = g.slice(x, &[0..4, 0..1])?;
            g.concat(&[right, left], 1)
        }
        22 if dims == [4, 1] => g.pad(x, &[(0, 0), (1, 1)], 0.5),
        22 if dims == [4, 3] => {
            let s = g.slice(x, &[1..4, 0..2])?;
            g.pad(s, &[(1, 0), (0, 1)], -1.0)
        }
        23 => g.push(Op::Abs, &[x]),
        24 => g.push(Op::Sqrt, &[x]),
        25 => g.push(Op::Log, &[x]),
        26 => g.push(Op::Erf, &[x]),
        27 if !dims.is_empty() => g.layer_norm(x, None, dims.len() - 1, 1e-5),
        _ => g.push(Op::Silu, &[x]),
    }
}

fn cases() -> u32 {
    ["CRANELORA_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_graphs_match_the_interpreter(
        steps in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..12),
        f64_dtype in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let d = if f64_dtype { DType::F64 } else { DType::F32 };
        let g = build(&steps, d);
        let inputs: Vec<TensorData> = vec![data(&[4, 3], d, seed, true), data(&[3], d, seed + 1, true)];
        let expected = interpret(&g, &inputs, &Bindings::new()).expect("interp");
        let rtol = if f64_dtype { 1e-12 } else { 1e-5 };
        for fold in [false, true] {
            let c = compile(&g, &JitOptions::default().with_lora_fold(fold)).expect("compile");
            let out = c.run(&inputs, &cranelora_jit::Bindings::new()).expect("run");
            for (a, e) in out.iter().zip(&expected) {
                assert_same(a, e, rtol, rtol);
            }
        }
    }

    #[test]
    fn random_updating_steps_match_the_interpreter(
        steps in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..12),
        f64_dtype in any::<bool>(),
        seed in 0u64..1000,
        pick in (any::<u8>(), any::<u8>()),
    ) {
        let d = if f64_dtype { DType::F64 } else { DType::F32 };
        let g = build_updating(&steps, d, pick);
        let inputs: Vec<TensorData> = vec![data(&[4, 3], d, seed, true), data(&[3], d, seed + 1, true)];
        let mut reference = Bindings::new();
        reference.insert("p".into(), data(&[4, 3], d, seed + 2, true));
        reference.insert("q".into(), data(&[3], d, seed + 3, true));
        let updates = [(0, "p".to_string()), (1, "q".to_string())];
        let start = cranelora_jit::Bindings::from_map(&reference).expect("bindings");
        let mut t = Trainer::with_updates(&g, &updates, start, &JitOptions::default())
            .expect("p and q differ in shape: no swap");
        let rtol = if f64_dtype { 1e-12 } else { 1e-5 };
        for _ in 0..2 {
            let expected = interpret(&g, &inputs, &reference).expect("interp");
            t.step(&inputs).expect("step");
            for (a, e) in t.outputs().iter().zip(&expected[2..]) {
                assert_same(a, e, rtol, rtol);
            }
            reference.insert("p".into(), expected[0].clone());
            reference.insert("q".into(), expected[1].clone());
            for (name, value) in &reference {
                assert_same(t.bindings().get(name).expect("bound"), value, rtol, rtol);
            }
        }
    }
}
