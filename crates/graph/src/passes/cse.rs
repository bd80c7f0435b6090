//! Common-subexpression elimination: merges nodes computing the same op on
//! the same operands.
//!
//! - Requires: a graph that passes [`verify`](crate::verify()).
//! - Guarantees: no two live nodes have the same op (attributes included)
//!   and the same operands; results are exactly unchanged.
//! - Ops are compared by their full text (`scale{0.5}`, `transpose{[1, 0]}`),
//!   which prints every attribute exactly (`-0.0` and `0.0` differ), so two
//!   nodes merge only when they compute bit-identical results.
//! - Constants are compared by `Arc` identity ([`Arc::ptr_eq`]), never by
//!   content: hashing a large weight would cost more than it saves, and two
//!   weights that happen to be equal (e.g. zero-initialized LoRA B) stay
//!   distinct, so a later pass can still tell them apart. A constant shared
//!   behind one `Arc` merges.
//! - Inputs and Parameters never merge (each is its own signature entry).
//! - Operands of the commutative ops Add, Mul, Max, Min, Eq and Ne are
//!   compared as a sorted pair, so `a + b` and `b + a` merge.
//!
//! Nodes are visited operands first, so merges cascade in one run:
//!
//! ```text
//! %2 = exp(%0)                %2 = exp(%0)
//! %3 = exp(%0)        ──►     %4 = add(%2, %2)
//! %4 = add(%2, %3)
//! ```

use super::{Changed, Pass};
use crate::{Graph, NodeId, Op, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Merges nodes with equal ops and equal operands.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cse;

/// What makes two nodes' ops the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum OpKey {
    /// A constant's `Arc` address: equal keys are `Arc::ptr_eq` (the graph
    /// holds every `Arc` for the whole run, so an address is never reused).
    Constant(usize),
    /// Any other op by its exact text.
    Other(String),
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut seen: HashMap<(OpKey, Vec<NodeId>), NodeId> = HashMap::new();
        let mut changed = Changed::default();
        for id in g.topo_order()? {
            let node = g.node(id).expect("internal: topo_order lists live nodes");
            let op_key = match &node.op {
                Op::Input { .. } | Op::Parameter { .. } => continue,
                Op::Constant(data) => OpKey::Constant(Arc::as_ptr(data) as usize),
                op => OpKey::Other(op.to_string()),
            };
            let mut operands = g.operands(id);
            if commutative(&node.op) {
                operands.sort();
            }
            match seen.get(&(op_key.clone(), operands.clone())) {
                Some(&first) => {
                    // Same op on the same operands: same type, same values.
                    g.replace_uses(id, first)?;
                    g.remove_node(id);
                    changed.removed += 1;
                    changed.rewritten += 1;
                }
                None => {
                    seen.insert((op_key, operands), id);
                }
            }
        }
        Ok(changed)
    }
}

/// Whether swapping the two operands never changes the result.
fn commutative(op: &Op) -> bool {
    matches!(op, Op::Add | Op::Mul | Op::Max | Op::Min | Op::Eq | Op::Ne)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, TensorData};

    #[test]
    fn cse_merges_identical_and_commuted_nodes() {
        let mut g = Graph::new();
        let x = g.input("x", [2], DType::F32);
        let y = g.input("y", [2], DType::F32);
        let (e1, e2) = (g.exp(x).expect("float"), g.exp(x).expect("float"));
        let a = g.add(e1, y).expect("add");
        let b = g.add(y, e2).expect("add");
        let out = g.mul(a, b).expect("mul");
        g.set_outputs(&[out]).expect("out is a node");
        let changed = Cse.run(&mut g).expect("valid graph");
        assert_eq!(changed.removed, 2);
        assert_eq!(g.operands(out), vec![a, a]);
    }

    #[test]
    fn cse_compares_constants_by_arc_identity() {
        let mut g = Graph::new();
        let data = Arc::new(TensorData::f32([2], vec![1.0, 2.0]).expect("2"));
        let shared = (g.constant(data.clone()), g.constant(data.clone()));
        let copy = g.constant(TensorData::clone(&data)).expect("constant");
        let (c1, c2) = (shared.0.expect("constant"), shared.1.expect("constant"));
        let s = g.add(c1, c2).expect("add");
        let out = g.add(s, copy).expect("add");
        g.set_outputs(&[out]).expect("out is a node");
        assert_eq!(Cse.run(&mut g).expect("valid graph").removed, 1);
        assert!(g.node(c1).is_some() && g.node(c2).is_none() && g.node(copy).is_some());
    }
}
