//! Random small DAGs (proptest) through the JIT and the interpreter.
//!
//! Every node has a shape broadcastable to [4, 3] (`[4, 3]`, `[3]`, `[4, 1]`,
//! `[1, 3]`, `[]`), so any two nodes can be combined. Cases: 300 by default,
//! `CRANELORA_PROPTEST_CASES=n` (or proptest's own `PROPTEST_CASES=n`) to
//! change.

mod common;

use common::{assert_same, data};
use cranelora_graph::{interpret, Bindings, DType, Graph, NodeId, Op, ReduceKind, TensorData};
use cranelora_jit::{compile, JitOptions};
use proptest::prelude::*;

/// Builds the graph described by `steps` (op selector, operand selectors).
fn build(steps: &[(u8, u8, u8)], d: DType) -> Graph {
    let mut g = Graph::new();
    let mut pool: Vec<NodeId> = vec![g.input("x", [4, 3], d), g.input("y", [3], d)];
    let w = g.constant(data(&[3, 3], d, 99, false)).expect("constant");
    for &(op, a, b) in steps {
        let x = pool[a as usize % pool.len()];
        let y = pool[b as usize % pool.len()];
        let dims = g.node(x).expect("node").shape.dims().to_vec();
        let unary = |g: &mut Graph, op: Op| g.push(op, &[x]);
        let node = match op % 16 {
            0 => g.add(x, y),
            1 => g.sub(x, y),
            2 => g.mul(x, y),
            3 => g.push(Op::Max, &[x, y]),
            4 => g.push(Op::Min, &[x, y]),
            5 => g.div(x, y),
            6 => unary(&mut g, Op::Neg),
            7 => unary(&mut g, Op::Relu),
            8 => unary(&mut g, Op::Tanh),
            9 => unary(&mut g, Op::GeluTanh),
            10 => unary(&mut g, Op::Scale(0.5)),
            11 if dims.len() == 2 => g.reduce(x, ReduceKind::Sum, &[(a % 2) as usize], true),
            12 if dims.len() == 2 => g.softmax(x, 1),
            13 if dims == [4, 3] => g.matmul(x, w),
            14 => {
                let lt = g.push(Op::Lt, &[x, y]).expect("lt");
                g.select(lt, x, y)
            }
            _ => unary(&mut g, Op::Sigmoid),
        };
        pool.push(node.expect("shapes broadcast"));
    }
    let n = pool.len();
    g.set_outputs(&[pool[n - 1], pool[n / 2]]).expect("nodes");
    g
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
}
