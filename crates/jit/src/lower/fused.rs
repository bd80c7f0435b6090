//! Loop fusion: a group of elementwise nodes of one shape as one loop nest.
//!
//! The graph crate's `plan_fusion` (crates/graph/src/passes/fuse.rs) groups
//! elementwise, Broadcast and row-wise nodes of equal shape. [`loop_groups`]
//! keeps of each group the runs of consecutive members this file can emit
//! in one loop: elementwise ops that are not views, and Broadcast (read
//! through stride-0 dims instead of copied). A run of two or more is
//! a [`LoopGroup`], and so is a single elementwise node reading the plan's
//! anchor product (a GEMM epilogue candidate); everything else is lowered
//! node by node.
//!
//! [`lower_group`] emits one loop nest over the group's shape: each
//! iteration loads the group's **inputs** (operands from outside the group,
//! read broadcast with stride-0 dims: a per-row bias, a scalar), computes
//! every member in registers in order, and stores only the group's
//! **outputs** (members used outside the group, or graph outputs); the
//! memory plan gives the other members no buffer. When every member and
//! input is f32 (or every one f64) and every op has a vector form, the
//! innermost dim runs on f32x4 / f64x2 with a scalar tail
//! (`Lowerer::nest_vector`); otherwise the whole nest is scalar. A single
//! elementwise node is lowered as a group of one.
//!
//! [`schedule`] orders the steps (a group is one step) topologically: the
//! plan guarantees that contracting a group leaves the graph acyclic, and
//! a run of consecutive members of a group keeps that property.
//!
//! A group records the `MatMul` / `Conv2d` its first member consumes as
//! `anchor` (from the plan). The anchor is lowered as its own step today;
//! the field is where a GEMM epilogue will take the group from.

use super::elementwise::{kernel_func, scalar, vector, vector_capable, vector_flags, vector_type};
use super::loops::{broadcast_strides, contiguous, Access};
use super::{clif_type, flags, Lowerer};
use crate::memory::is_view;
use crate::Result;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use cranelora_graph::passes::FusionPlan;
use cranelora_graph::{DType, Graph, NodeId, Op};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Elementwise nodes of one shape computed in one loop nest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopGroup {
    /// The members, operands before users.
    pub nodes: Vec<NodeId>,
    /// The members stored to memory (used outside the group or graph
    /// outputs), in `nodes` order.
    pub outputs: Vec<NodeId>,
    /// The product the plan made this group's anchor, when the group starts
    /// at the anchor's only user (lowered separately for now).
    pub anchor: Option<NodeId>,
}

impl LoopGroup {
    /// A group of one node.
    pub fn single(id: NodeId) -> Self {
        Self {
            nodes: vec![id],
            outputs: vec![id],
            anchor: None,
        }
    }
}

/// One step of the execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A node lowered on its own.
    Node(NodeId),
    /// The loop group with this index.
    Group(usize),
}

/// Whether `id` can be a member of a loop group: elementwise ops that are
/// not views, and Broadcast (its operand is read with stride-0 dims, so the
/// broadcast copy is never made).
fn loopable(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id).expect("internal: live node");
    let op = &node.op;
    (op.is_elementwise() && !is_view(op) || matches!(op, Op::Broadcast { .. }))
        && node.shape.numel() > 0
}

/// The loop groups of `plan` (see the module docs); the nodes of `taken`
/// (lowered by another pattern) are left out, ending a run like any node
/// that is not loopable.
pub fn loop_groups(g: &Graph, plan: &FusionPlan, taken: &HashSet<NodeId>) -> Vec<LoopGroup> {
    let mut out = Vec::new();
    for group in &plan.groups {
        // The anchor's only user is the group's first member.
        let reads_anchor =
            |run: &[NodeId]| group.anchor.filter(|&a| g.operands(run[0]).contains(&a));
        let mut run: Vec<NodeId> = Vec::new();
        for &id in &group.nodes {
            if loopable(g, id) && !taken.contains(&id) {
                run.push(id);
                continue;
            }
            if let Some(grp) = keep(g, std::mem::take(&mut run), reads_anchor) {
                out.push(grp);
            }
        }
        if let Some(grp) = keep(g, run, reads_anchor) {
            out.push(grp);
        }
    }
    out
}

/// `run` as a group when it is one: two or more nodes, or a single
/// elementwise node reading the plan's anchor (a product's lone bias add or
/// residual add: a GEMM epilogue candidate, `lower/epilogue.rs`; lowered
/// by the same loop code as a single node when it is not taken).
fn keep(
    g: &Graph,
    run: Vec<NodeId>,
    reads_anchor: impl Fn(&[NodeId]) -> Option<NodeId>,
) -> Option<LoopGroup> {
    let anchor = run.first().and_then(|_| reads_anchor(&run));
    let single_epilogue = run.len() == 1
        && anchor.is_some()
        && !matches!(g.node(run[0]).map(|n| &n.op), Some(Op::Broadcast { .. }));
    (run.len() >= 2 || single_epilogue).then(|| finish(g, run, anchor))
}

/// A run with its outputs.
fn finish(g: &Graph, nodes: Vec<NodeId>, anchor: Option<NodeId>) -> LoopGroup {
    let inside: HashSet<NodeId> = nodes.iter().copied().collect();
    let outputs = nodes
        .iter()
        .copied()
        .filter(|&n| g.outputs().contains(&n) || g.users(n).iter().any(|u| !inside.contains(u)))
        .collect();
    LoopGroup {
        nodes,
        outputs,
        anchor,
    }
}

/// The execution order: `order` (topological) with each group contracted to
/// one step, placed by Kahn's algorithm (ties by first appearance in
/// `order`). `None` if the contraction has a cycle (then the caller runs
/// without groups).
pub fn schedule(g: &Graph, order: &[NodeId], groups: &[LoopGroup]) -> Option<Vec<Step>> {
    let mut unit_of: HashMap<NodeId, usize> = HashMap::new();
    let mut units: Vec<Step> = Vec::new();
    let group_of: HashMap<NodeId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, grp)| grp.nodes.iter().map(move |&n| (n, gi)))
        .collect();
    let mut group_unit: HashMap<usize, usize> = HashMap::new();
    for &id in order {
        let u = match group_of.get(&id) {
            Some(&gi) => *group_unit.entry(gi).or_insert_with(|| {
                units.push(Step::Group(gi));
                units.len() - 1
            }),
            None => {
                units.push(Step::Node(id));
                units.len() - 1
            }
        };
        unit_of.insert(id, u);
    }
    let mut preds: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); units.len()];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
    for &id in order {
        let u = unit_of[&id];
        for o in g.operands(id) {
            let p = unit_of[&o];
            if p != u && preds[u].insert(p) {
                succs[p].push(u);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..units.len()).filter(|&u| preds[u].is_empty()).collect();
    let mut steps = Vec::with_capacity(units.len());
    while let Some(u) = ready.pop_first() {
        steps.push(units[u]);
        for &s in &succs[u] {
            preds[s].remove(&u);
            if preds[s].is_empty() {
                ready.insert(s);
            }
        }
    }
    (steps.len() == units.len()).then_some(steps)
}

/// The operands of the group's members that come from outside it, each once.
fn group_inputs(g: &Graph, grp: &LoopGroup) -> Vec<NodeId> {
    let mut seen: Vec<NodeId> = Vec::new();
    for &id in &grp.nodes {
        for o in g.operands(id) {
            if !grp.nodes.contains(&o) && !seen.contains(&o) {
                seen.push(o);
            }
        }
    }
    seen
}

/// Emits the group as one loop nest (see the module docs).
pub(crate) fn lower_group(l: &mut Lowerer<'_>, grp: &LoopGroup) -> Result<()> {
    let g = l.graph;
    let first = l.node_of(grp.nodes[0]);
    let dims = first.shape.dims().to_vec();
    let inputs = group_inputs(g, grp);
    let mut accs = Vec::with_capacity(inputs.len() + grp.outputs.len());
    for (i, &o) in inputs.iter().chain(&grp.outputs).enumerate() {
        let on = l.node_of(o);
        let strides = match i < inputs.len() {
            true => broadcast_strides(on.shape.dims(), &dims),
            false => contiguous(&dims),
        };
        let base = l.addr(o);
        accs.push(Access {
            base,
            strides,
            offset: 0,
            size: on.dtype.size_bytes() as i64,
        });
    }
    let d = first.dtype;
    let uniform = grp.nodes.iter().chain(&inputs).all(|&n| dtype(g, n) == d);
    let vectorizable = grp.nodes.iter().all(|&n| {
        let op = &l.node_of(n).op;
        vector_capable(op) || matches!(op, Op::Broadcast { .. })
    });
    let n_in = inputs.len();
    let mut scalar_body = |l: &mut Lowerer<'_>, ptrs: &[Value]| {
        let mut vals: HashMap<NodeId, Value> = HashMap::new();
        for (i, &o) in inputs.iter().enumerate() {
            let v = l.b.ins().load(clif_type(dtype(g, o)), flags(), ptrs[i], 0);
            vals.insert(o, v);
        }
        members_scalar(l, grp, &mut vals)?;
        for (k, o) in grp.outputs.iter().enumerate() {
            l.b.ins().store(flags(), vals[o], ptrs[n_in + k], 0);
        }
        Ok(())
    };
    match vector_type(d) {
        Some((vt, lanes)) if uniform && vectorizable => {
            let mut vector_body = |l: &mut Lowerer<'_>, ptrs: &[Value], unit: &[bool]| {
                let mut vals: HashMap<NodeId, Value> = HashMap::new();
                for (i, &o) in inputs.iter().enumerate() {
                    let v = match unit[i] {
                        true => l.b.ins().load(vt, vector_flags(), ptrs[i], 0),
                        false => {
                            let x = l.b.ins().load(clif_type(d), flags(), ptrs[i], 0);
                            l.b.ins().splat(vt, x)
                        }
                    };
                    vals.insert(o, v);
                }
                members_vector(l, grp, d, vt, &mut vals);
                for (k, o) in grp.outputs.iter().enumerate() {
                    l.b.ins().store(vector_flags(), vals[o], ptrs[n_in + k], 0);
                }
                Ok(())
            };
            l.nest_vector(&dims, &accs, lanes, &mut vector_body, &mut scalar_body)
        }
        _ => l.nest(&dims, &accs, &mut scalar_body),
    }
}

fn dtype(g: &Graph, id: NodeId) -> DType {
    g.node(id).expect("internal: live node").dtype
}

/// Computes every member's scalar value from `vals` (inputs loaded), in order.
fn members_scalar(
    l: &mut Lowerer<'_>,
    grp: &LoopGroup,
    vals: &mut HashMap<NodeId, Value>,
) -> Result<()> {
    let g = l.graph;
    for &id in &grp.nodes {
        let node = l.node_of(id);
        let ops = g.operands(id);
        let args: Vec<Value> = ops.iter().map(|o| vals[o]).collect();
        let r = match kernel_func(&node.op) {
            Some(f) => super::math::emit_scalar(l, f, args[0]),
            // The operand was read broadcast: this element is its value.
            None if matches!(node.op, Op::Broadcast { .. }) => args[0],
            None => {
                let dts: Vec<DType> = ops.iter().map(|&o| dtype(g, o)).collect();
                scalar(l, &node.op, &dts, node.dtype, &args)?
            }
        };
        vals.insert(id, r);
    }
    Ok(())
}

/// Computes every member's vector value (type `vt`, dtype `d`) from `vals`.
fn members_vector(
    l: &mut Lowerer<'_>,
    grp: &LoopGroup,
    d: DType,
    vt: Type,
    vals: &mut HashMap<NodeId, Value>,
) {
    let g = l.graph;
    for &id in &grp.nodes {
        let op = &l.node_of(id).op;
        let args: Vec<Value> = g.operands(id).iter().map(|o| vals[o]).collect();
        let r = match kernel_func(op) {
            Some(f) => super::math::emit_vector(l, f, args[0]),
            None if matches!(op, Op::Broadcast { .. }) => args[0],
            None => vector(l, op, d, vt, &args),
        };
        vals.insert(id, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelora_graph::passes::plan_fusion;
    use cranelora_graph::ReduceKind;

    /// e = exp(x), s = sum(e), y = tanh(e) − s: the sum (not fusible) reads
    /// a member of the elementwise chain and feeds a later member.
    fn chain() -> (Graph, [NodeId; 5]) {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3], DType::F32);
        let e = g.exp(x).expect("exp");
        let s = g.reduce(e, ReduceKind::Sum, &[1], true).expect("sum");
        let t = g.tanh(e).expect("tanh");
        let y = g.sub(t, s).expect("sub");
        g.set_outputs(&[y]).expect("node");
        (g, [x, e, s, t, y])
    }

    #[test]
    fn schedule_contracts_groups_in_topological_order() {
        let (g, [x, e, s, t, y]) = chain();
        let plan = plan_fusion(&g).expect("acyclic");
        let groups = loop_groups(&g, &plan, &HashSet::new());
        let order = g.topo_order().expect("acyclic");
        let steps = schedule(&g, &order, &groups).expect("acyclic contraction");
        // Every node appears once, operands' steps before users' steps.
        let step_of = |n: NodeId| {
            steps
                .iter()
                .position(|st| match *st {
                    Step::Node(id) => id == n,
                    Step::Group(gi) => groups[gi].nodes.contains(&n),
                })
                .expect("scheduled")
        };
        for n in [x, e, s, t, y] {
            for o in g.operands(n) {
                // Equal steps: both in one group, computed in order inside it.
                assert!(step_of(o) <= step_of(n), "{o} before {n}");
            }
        }
        // exp feeds the sum outside its group, so it is a stored output.
        let ge = groups.iter().find(|gr| gr.nodes.contains(&e));
        if let Some(gr) = ge {
            assert!(gr.outputs.contains(&e), "{gr:?}");
            assert!(!gr.nodes.contains(&s));
        }
    }

    #[test]
    fn schedule_refuses_a_cyclic_contraction() {
        // {e, y} as one group would have to run both before and after s.
        let (g, [_, e, s, _, y]) = chain();
        let bad = LoopGroup {
            nodes: vec![e, y],
            outputs: vec![e, y],
            anchor: None,
        };
        let order = g.topo_order().expect("acyclic");
        assert!(g.operands(s).contains(&e));
        assert_eq!(schedule(&g, &order, &[bad]), None);
    }

    #[test]
    fn softmax_members_split_a_plan_group_into_runs() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 4], DType::F32);
        let a = g.exp(x).expect("exp");
        let b = g.scale(a, 2.0).expect("scale");
        let sm = g.softmax(b, 1).expect("softmax");
        let c = g.tanh(sm).expect("tanh");
        let d = g.relu(c).expect("relu");
        g.set_outputs(&[d]).expect("node");
        let plan = plan_fusion(&g).expect("acyclic");
        let groups = loop_groups(&g, &plan, &HashSet::new());
        let nodes: Vec<Vec<NodeId>> = groups.iter().map(|gr| gr.nodes.clone()).collect();
        assert_eq!(nodes, vec![vec![a, b], vec![c, d]], "{plan:?}");
        assert_eq!(groups[0].outputs, vec![b]);
    }
}
