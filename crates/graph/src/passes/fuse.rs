//! Fusion grouping: which nodes the JIT may compute in one loop nest.
//!
//! - Requires: a graph that passes [`verify`](crate::verify()).
//! - Guarantees: the graph is not changed (no new op kinds: the plan is a
//!   side table the JIT reads and the interpreter ignores); every fusible
//!   node is in exactly one group; contracting each group (with its anchor)
//!   to one node leaves the graph acyclic.
//!
//! Rules:
//!
//! 1. **Fusible** nodes are the elementwise ops ([`Op::is_elementwise`]),
//!    `Broadcast`, `Softmax` along the last axis and `LayerNorm` (both
//!    row-wise: one row at a time, inside the same loop over rows).
//! 2. All members of a group have the same shape — the group's loop
//!    shape. Smaller operands (a bias `[n]`) are read broadcast from
//!    outside the group.
//! 3. Nodes are visited operands first. A fusible node joins the group of
//!    its first operand (in operand order) that is in a group of its shape,
//!    unless another operand outside that group depends on it through
//!    nodes outside it (joining would make the group both before and after
//!    that operand: a cycle).
//! 4. Otherwise it starts a group. If one of its operands is a `MatMul` or
//!    `Conv2d` of the same shape, used only by this node and not a graph
//!    output, that product is the group's **anchor**: the group is its
//!    epilogue (bias, activation, residual add, scale), computed on the
//!    product's tile before it is stored.
//! 5. A member used outside its group, or a graph output, is a group
//!    **output** (materialized); the others live only inside the loop. A
//!    group can have several outputs (a residual stream read by the next
//!    layer and by its own epilogue).
//!
//! ```text
//! %2 = matmul(%0, %1)                    group 0 (anchor %2):
//! %4 = add(%2, %3)          ──►            nodes [%4, %5, %7], outputs [%7]
//! %5 = gelu(%4)
//! %7 = add(%5, %6)
//! ```

use crate::{Graph, NodeId, Op, Result, Shape};
use std::collections::{BTreeSet, HashMap};

/// Nodes the JIT computes together: an optional anchor product and the
/// elementwise / row-wise nodes of its epilogue or loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FusionGroup {
    /// The `MatMul` or `Conv2d` whose epilogue this group is, if any (not
    /// listed in `nodes`).
    pub anchor: Option<NodeId>,
    /// The members, operands before users; all have the same shape.
    pub nodes: Vec<NodeId>,
    /// The members whose values leave the group (used outside it, or graph
    /// outputs), in `nodes` order; never empty.
    pub outputs: Vec<NodeId>,
}

/// The fusion groups of one graph, valid until the graph changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FusionPlan {
    /// The groups, in the order their first member appears in the graph's
    /// topological order.
    pub groups: Vec<FusionGroup>,
}

impl FusionPlan {
    /// The index of the group that `id` is a member or the anchor of.
    pub fn group_of(&self, id: NodeId) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.anchor == Some(id) || g.nodes.contains(&id))
    }
}

/// Groups the fusible nodes of `g` by the rules of the [module docs](self).
///
/// # Errors
/// [`Error::Cycle`](crate::Error::Cycle) for a cyclic graph.
pub fn plan_fusion(g: &Graph) -> Result<FusionPlan> {
    let mut groups: Vec<(FusionGroup, Shape)> = Vec::new();
    // The group of each member and anchor.
    let mut group_of: HashMap<NodeId, usize> = HashMap::new();
    // The groups each node depends on, its own included.
    let mut depends: HashMap<NodeId, BTreeSet<usize>> = HashMap::new();
    for id in g.topo_order()? {
        let node = g.node(id).expect("internal: topo_order lists live nodes");
        let operands = g.operands(id);
        let mut deps: BTreeSet<usize> = BTreeSet::new();
        for o in &operands {
            deps.extend(depends[o].iter().copied());
        }
        if fusible(&node.op, &node.shape) {
            let joined = operands.iter().find_map(|&p| {
                let gi = *group_of.get(&p)?;
                let fits = groups[gi].1 == node.shape && groups[gi].0.anchor != Some(p);
                let acyclic = operands
                    .iter()
                    .all(|q| group_of.get(q) == Some(&gi) || !depends[q].contains(&gi));
                (fits && acyclic).then_some(gi)
            });
            let gi = joined.unwrap_or_else(|| {
                let anchor = operands.iter().copied().find(|&p| is_anchor(g, p, id));
                if let Some(a) = anchor {
                    group_of.insert(a, groups.len());
                }
                let group = FusionGroup {
                    anchor,
                    ..FusionGroup::default()
                };
                groups.push((group, node.shape.clone()));
                groups.len() - 1
            });
            groups[gi].0.nodes.push(id);
            group_of.insert(id, gi);
            deps.insert(gi);
        }
        depends.insert(id, deps);
    }
    let mut plan = FusionPlan {
        groups: groups.into_iter().map(|(group, _)| group).collect(),
    };
    for (gi, group) in plan.groups.iter_mut().enumerate() {
        group.outputs = group
            .nodes
            .iter()
            .copied()
            .filter(|&n| {
                g.outputs().contains(&n) || g.users(n).iter().any(|u| group_of.get(u) != Some(&gi))
            })
            .collect();
    }
    Ok(plan)
}

/// Rule 1: elementwise, broadcast, and row-wise ops.
fn fusible(op: &Op, shape: &Shape) -> bool {
    match op {
        Op::Broadcast { .. } | Op::LayerNorm { .. } => true,
        Op::Softmax { axis } => axis + 1 == shape.rank(),
        op => op.is_elementwise(),
    }
}

/// Rule 4: `p` is a product whose only use is `user`, of `user`'s shape.
fn is_anchor(g: &Graph, p: NodeId, user: NodeId) -> bool {
    let (Some(pn), Some(un)) = (g.node(p), g.node(user)) else {
        return false;
    };
    matches!(pn.op, Op::MatMul | Op::Conv2d(_))
        && pn.shape == un.shape
        && g.users(p) == [user]
        && !g.outputs().contains(&p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn epilogue_of_a_matmul_is_one_anchored_group() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3], DType::F32);
        let w = g.parameter("w", [3, 3], DType::F32);
        let b = g.parameter("b", [3], DType::F32);
        let mm = g.matmul(x, w).expect("mm");
        let z = g.add(mm, b).expect("bias");
        let h = g.gelu(z).expect("gelu");
        let y = g.add(h, x).expect("residual");
        g.set_outputs(&[y]).expect("y is a node");
        let plan = plan_fusion(&g).expect("acyclic");
        let expected = FusionGroup {
            anchor: Some(mm),
            nodes: vec![z, h, y],
            outputs: vec![y],
        };
        assert_eq!(plan.groups, vec![expected]);
        assert_eq!(plan.group_of(mm), Some(0));
    }

    #[test]
    fn a_member_feeding_a_product_is_an_output_and_no_cycle_forms() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 2], DType::F32);
        let e = g.exp(x).expect("exp");
        let t = g.transpose(e, &[1, 0]).expect("transpose");
        let y = g.add(e, t).expect("add");
        g.set_outputs(&[y]).expect("y is a node");
        let plan = plan_fusion(&g).expect("acyclic");
        assert_eq!(plan.groups.len(), 2, "{plan:?}");
        assert_eq!(plan.groups[0].outputs, vec![e]);
    }
}
