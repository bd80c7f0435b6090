//! Softmax fused with what attention puts around it, in one row pass.
//!
//! Attention computes `probs = where(any, softmax(where(keep, c·QKᵀ, fill)), 0)`
//! (crates/core `attention_export.rs`): a scale, a mask select, the softmax
//! and a select zeroing the rows that see no key — four passes over the
//! `[b, h, s, s]` scores. A last-axis float Softmax `S` is matched with
//!
//! ```text
//! x = Scale(c, scores)              optional, only read by the next node
//! x = Where(cond, x, fill)          optional, only read by S
//! S = Softmax(x, last axis)
//! y = Where(cond2, S, other)        optional, S's only reader
//! ```
//!
//! (at least one optional node present; `cond`, `fill`, `cond2`, `other`
//! any nodes of the Softmax's dtype broadcastable to its shape, read in
//! place through stride-0 dims — the `[b, 1, 1, s]` padding mask is never
//! broadcast to the scores' shape). The pattern runs as one helper call
//! (`runtime::softmax_fused`) at the step of its last node: each row is
//! scaled and selected into the output, normalized there like the plain
//! softmax (same max, exp, sum, division), then selected again — the same
//! operations in the same order as the separate nodes, so the results
//! equal the unfused code's. The absorbed nodes get no buffer and no step.

use super::heads::contiguous_strides;
use super::Lowerer;
use crate::runtime::{Bcast, SoftmaxPlan};
use crate::Result;
use cranelora_graph::{DType, Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// One matched pattern.
#[derive(Clone, Debug)]
pub struct FusedSoftmax {
    /// The scores read.
    pub x: NodeId,
    /// The Scale's factor.
    pub scale: Option<f64>,
    /// The first Where's condition and fill.
    pub mask: Option<(NodeId, NodeId)>,
    /// The Softmax.
    pub softmax: NodeId,
    /// The last Where's condition and other operand.
    pub post: Option<(NodeId, NodeId)>,
    /// The nodes the call stands for, operands first; the last one is the
    /// node written.
    pub nodes: Vec<NodeId>,
}

impl FusedSoftmax {
    /// The node whose buffer receives the result.
    pub fn dest(&self) -> NodeId {
        *self.nodes.last().expect("internal: at least the softmax")
    }
}

/// The fused softmaxes of `g`, by the node they write.
pub fn plan(g: &Graph, order: &[NodeId]) -> HashMap<NodeId, FusedSoftmax> {
    order
        .iter()
        .filter_map(|&id| match_softmax(g, id))
        .map(|f| (f.dest(), f))
        .collect()
}

/// Every node of `fused` (the calls' members: kept out of loop groups).
pub fn members(fused: &HashMap<NodeId, FusedSoftmax>) -> HashSet<NodeId> {
    fused
        .values()
        .flat_map(|f| f.nodes.iter().copied())
        .collect()
}

/// Whether `id` is a float node of `dtype` whose only reader is `user`.
fn only_for(g: &Graph, id: NodeId, user: NodeId, dtype: DType) -> bool {
    g.node(id).is_some_and(|n| n.dtype == dtype)
        && g.users(id) == [user]
        && !g.outputs().contains(&id)
}

/// Whether `id` broadcasts to `dims` with dtype `dtype`.
fn broadcastable(g: &Graph, id: NodeId, dims: &[usize], dtype: DType) -> bool {
    g.node(id).is_some_and(|n| {
        let d = n.shape.dims();
        n.dtype == dtype
            && d.len() <= dims.len()
            && d.iter()
                .rev()
                .zip(dims.iter().rev())
                .all(|(&a, &b)| a == b || a == 1)
    })
}

fn match_softmax(g: &Graph, s: NodeId) -> Option<FusedSoftmax> {
    let node = g.node(s)?;
    let dims = node.shape.dims();
    let dtype = node.dtype;
    let last_axis = matches!(node.op, Op::Softmax { axis } if axis + 1 == dims.len());
    if !last_axis || !matches!(dtype, DType::F32 | DType::F64) || node.shape.numel() == 0 {
        return None;
    }
    let same_shape = |id: NodeId| g.node(id).is_some_and(|n| n.shape == node.shape);
    let mut nodes = vec![s];
    let mut x = g.operands(s)[0];
    let mut mask = None;
    if matches!(g.node(x)?.op, Op::Where) && only_for(g, x, s, dtype) {
        let [cond, a, fill] = g.operands(x)[..] else {
            return None;
        };
        if same_shape(a)
            && cond != a
            && fill != a
            && broadcastable(g, cond, dims, dtype)
            && broadcastable(g, fill, dims, dtype)
        {
            mask = Some((cond, fill));
            nodes.insert(0, x);
            x = a;
        }
    }
    let mut scale = None;
    if let Op::Scale(c) = g.node(x)?.op {
        let reader = nodes[0];
        if only_for(g, x, reader, dtype) && same_shape(g.operands(x)[0]) {
            scale = Some(c);
            nodes.insert(0, x);
            x = g.operands(x)[0];
        }
    }
    let mut post = None;
    if let [w] = g.users(s)[..] {
        let ops = g.operands(w);
        let is_post = matches!(g.node(w)?.op, Op::Where)
            && ops.len() == 3
            && ops[1] == s
            && ops[0] != s
            && ops[2] != s
            && same_shape(w)
            && !g.outputs().contains(&s)
            && broadcastable(g, ops[0], dims, dtype)
            && broadcastable(g, ops[2], dims, dtype);
        if is_post {
            post = Some((ops[0], ops[2]));
            nodes.push(w);
        }
    }
    if nodes.len() == 1 {
        return None;
    }
    Some(FusedSoftmax {
        x,
        scale,
        mask,
        softmax: s,
        post,
        nodes,
    })
}

/// Whether `f` may overwrite its scores `x` (the memory plan then gives
/// its output `x`'s buffer when that buffer dies here): `x` is read only by
/// the call's first node, as its data operand, and is not a graph output.
/// Each row is then read into itself before anything else touches it, so
/// the values are those of the separate buffers.
pub fn may_run_in_place(g: &Graph, f: &FusedSoftmax) -> bool {
    let selects = [f.mask, f.post].into_iter().flatten();
    g.users(f.x) == [f.nodes[0]]
        && !g.outputs().contains(&f.x)
        && selects.flat_map(|(c, o)| [c, o]).all(|n| n != f.x)
}

/// How operand `id` is read over the rows of `dims`: the strides of the
/// row dims and of the last axis (0 where it is broadcast).
pub(crate) fn bcast(g: &Graph, id: NodeId, dims: &[usize]) -> Bcast {
    let own = g.node(id).expect("internal: live node").shape.dims();
    let strides = contiguous_strides(own);
    let lead = dims.len() - own.len();
    let at = |d: usize| match d.checked_sub(lead) {
        Some(o) if own[o] != 1 => strides[o],
        _ => 0,
    };
    Bcast {
        rows: (0..dims.len() - 1).map(at).collect(),
        last: at(dims.len() - 1),
        len: own.iter().product(),
    }
}

/// Lowers `f` to one helper call at the current step.
pub(crate) fn lower(l: &mut Lowerer<'_>, f: &FusedSoftmax) -> Result<()> {
    let node = l.node_of(f.softmax);
    let dims = node.shape.dims().to_vec();
    let g = l.graph;
    let pair =
        |p: Option<(NodeId, NodeId)>| p.map(|(c, o)| (bcast(g, c, &dims), bcast(g, o, &dims)));
    let plan = Box::new(SoftmaxPlan {
        row_dims: dims[..dims.len() - 1].to_vec(),
        len: dims[dims.len() - 1],
        scale: f.scale,
        mask: pair(f.mask),
        post: pair(f.post),
    });
    let addr = &*plan as *const SoftmaxPlan as usize;
    l.plans.softmax.push(plan);
    let name = match node.dtype {
        DType::F64 => "cranelora_softmax_fused_f64",
        _ => "cranelora_softmax_fused_f32",
    };
    let plan = l.iconst_ptr(addr);
    let x = l.addr(f.x);
    let mut args = vec![plan, x];
    for p in [f.mask, f.post] {
        match p {
            Some((c, o)) => {
                args.push(l.addr(c));
                args.push(l.addr(o));
            }
            None => {
                args.push(l.iconst_ptr(0));
                args.push(l.iconst_ptr(0));
            }
        }
    }
    args.push(l.addr(f.dest()));
    let ptr = l.ptr;
    l.call(name, &vec![ptr; args.len()], &[], &args)?;
    Ok(())
}
