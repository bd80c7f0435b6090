//! Constant folding: a node whose operands are all Constants becomes a
//! Constant holding its value.
//!
//! - Requires: a graph that passes [`verify`](crate::verify()).
//! - Guarantees: no foldable node is left (a node is foldable when all its
//!   operands are Constants, its result has at most
//!   [`ConstFold::max_elements`] elements, and evaluating it succeeds);
//!   results are exactly unchanged, because the value is computed by the
//!   interpreter itself, on a one-node graph.
//! - The size limit keeps folding from blowing up memory: a `Broadcast` of a
//!   bias to a whole activation's shape, say, is left to run time.
//! - A node whose evaluation fails (a constant Gather with an id out of
//!   range) is left in place, so the error still happens at run time.
//! - Parameters are never folded: they are bound at run time.
//!
//! Nodes are visited operands first, so chains fold in one run:
//!
//! ```text
//! %0 = constant{f32[2] [1.0, 2.0]}
//! %1 = scale{2.0}(%0)          ──►   %3 = constant{f32[2] [3.0, 5.0]}
//! %2 = constant{f32[] [1.0]}
//! %3 = add(%1, %2)
//! ```

use super::{push_like, sweep, Changed, Pass};
use crate::{interpret, Bindings, Graph, NodeId, Op, Result, TensorData};
use std::sync::Arc;

/// Folds nodes whose operands are all Constants.
#[derive(Clone, Copy, Debug)]
pub struct ConstFold {
    /// The largest result, in elements, that is folded (default 2²⁰: 4 MiB
    /// of f32, e.g. a transposed 1024×1024 weight).
    pub max_elements: usize,
}

impl Default for ConstFold {
    fn default() -> Self {
        Self {
            max_elements: 1 << 20,
        }
    }
}

impl Pass for ConstFold {
    fn name(&self) -> &'static str {
        "const_fold"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::default();
        for id in g.topo_order()? {
            let Some(value) = self.fold(g, id) else {
                continue;
            };
            let folded = push_like(g, id, Op::Constant(Arc::new(value)), &[])?;
            g.replace_uses(id, folded)?;
            changed.added += 1;
            changed.rewritten += 1;
            changed.removed += sweep(g, id);
        }
        Ok(changed)
    }
}

impl ConstFold {
    /// The value of `id` if it is foldable.
    fn fold(&self, g: &Graph, id: NodeId) -> Option<TensorData> {
        let node = g.node(id)?;
        let leaf = matches!(
            node.op,
            Op::Input { .. } | Op::Parameter { .. } | Op::Constant(_)
        );
        if leaf || node.shape.numel() > self.max_elements {
            return None;
        }
        let operands = g.operands(id);
        let data: Vec<Arc<TensorData>> = operands
            .iter()
            .map(|&o| super::constant(g, o).cloned())
            .collect::<Option<_>>()?;
        evaluate(node.op.clone(), &data).ok()
    }
}

/// `op` applied to constant operands, by the interpreter on a one-node graph.
///
/// # Errors
/// As [`evaluate_with`].
pub(super) fn evaluate(op: Op, operands: &[Arc<TensorData>]) -> Result<TensorData> {
    evaluate_with(operands, |g, ids| g.push(op, ids))
}

/// The value of the small graph `build` adds on top of constant nodes
/// holding `operands`, computed by the interpreter (so passes that compute
/// new constants never need an evaluator of their own).
///
/// # Errors
/// A build error from `build`, or as [`interpret`] (e.g. a Gather id out of range).
pub(super) fn evaluate_with(
    operands: &[Arc<TensorData>],
    build: impl FnOnce(&mut Graph, &[NodeId]) -> Result<NodeId>,
) -> Result<TensorData> {
    let mut g = Graph::new();
    let ids = operands
        .iter()
        .map(|d| g.constant(d.clone()))
        .collect::<Result<Vec<_>>>()?;
    let out = build(&mut g, &ids)?;
    g.set_outputs(&[out])?;
    let mut values = interpret(&g, &[], &Bindings::new())?;
    Ok(values.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn chain() -> (Graph, NodeId) {
        let mut g = Graph::new();
        let c = g
            .constant(TensorData::f32([2], vec![1.0, 2.0]).expect("2"))
            .expect("constant");
        let s = g.scale(c, 2.0).expect("float");
        let one = g.scalar(1.0, DType::F32).expect("scalar");
        let y = g.add(s, one).expect("broadcast");
        g.set_outputs(&[y]).expect("y is a node");
        (g, y)
    }

    #[test]
    fn const_fold_folds_a_chain_into_one_constant() {
        let (mut g, _) = chain();
        let changed = ConstFold::default().run(&mut g).expect("valid graph");
        assert_eq!((changed.rewritten, g.len()), (2, 1));
        let out = g.outputs()[0];
        let data = super::super::constant(&g, out).expect("a constant");
        assert_eq!(data.to_f64_vec(), vec![3.0, 5.0]);
    }

    #[test]
    fn const_fold_respects_the_size_limit() {
        let (mut g, _) = chain();
        let small = ConstFold { max_elements: 1 };
        assert!(!small.run(&mut g).expect("valid graph").any());
        assert_eq!(g.len(), 4);
    }
}
