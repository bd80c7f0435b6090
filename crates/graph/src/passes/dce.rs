//! Dead-code elimination: removes every node no output depends on.
//!
//! - Requires: a graph that passes [`verify`](crate::verify()).
//! - Guarantees: every remaining node is an Input, a kept Parameter, or
//!   reaches an output; results are exactly unchanged (no arithmetic
//!   moves).
//! - Inputs always stay: they are the call signature, and `interpret` and
//!   the JIT take one value per Input whether it is used or not.
//! - Unused Parameters stay by default ([`DeadCodeElim::keep_parameters`]):
//!   they are the binding signature, so a caller that binds a whole adapter
//!   set keeps working whichever passes ran, and an unused Parameter costs
//!   nothing at run time. `keep_parameters: false` removes them too.
//!
//! ```text
//! %0 = input{"x"}             %0 = input{"x"}
//! %1 = exp(%0)        ──►     %2 = neg(%0)
//! %2 = neg(%0)                outputs: %2
//! outputs: %2
//! ```

use super::{Changed, Pass};
use crate::{Graph, NodeId, Op, Result};

/// Removes nodes that no output depends on.
#[derive(Clone, Copy, Debug)]
pub struct DeadCodeElim {
    /// Keep Parameter nodes even when unused (default `true`).
    pub keep_parameters: bool,
}

impl Default for DeadCodeElim {
    fn default() -> Self {
        Self {
            keep_parameters: true,
        }
    }
}

impl Pass for DeadCodeElim {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut live = vec![false; g.node_ids().last().map_or(0, |id| id.index() + 1)];
        let mut stack: Vec<NodeId> = g.outputs().to_vec();
        while let Some(id) = stack.pop() {
            // An id that is not a node (a broken output list) marks nothing.
            if let Some(seen) = live.get_mut(id.index()) {
                if !std::mem::replace(seen, true) {
                    stack.extend(g.operands(id));
                }
            }
        }
        let mut changed = Changed::default();
        for id in g.node_ids() {
            let kept = match g.node(id).map(|n| &n.op) {
                Some(Op::Input { .. }) => true,
                Some(Op::Parameter { .. }) => self.keep_parameters,
                _ => false,
            };
            if !live[id.index()] && !kept {
                g.remove_node(id);
                changed.removed += 1;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn dce_removes_unreachable_nodes_and_keeps_the_signature() {
        let mut g = Graph::new();
        let x = g.input("x", [2], DType::F32);
        let unused = g.input("unused", [2], DType::F32);
        let p = g.parameter("p", [2], DType::F32);
        let dead = g.exp(x).expect("float");
        g.mul(dead, p).expect("same shapes");
        let y = g.neg(x).expect("neg");
        g.set_outputs(&[y]).expect("y is a node");
        let changed = DeadCodeElim::default().run(&mut g).expect("valid graph");
        assert_eq!(changed.removed, 2);
        assert!(g.node(unused).is_some() && g.node(p).is_some());
        let strict = DeadCodeElim {
            keep_parameters: false,
        };
        assert_eq!(strict.run(&mut g).expect("valid graph").removed, 1);
        assert!(g.node(p).is_none());
        crate::verify(&g).expect("still valid");
    }
}
