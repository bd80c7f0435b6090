//! Attention heads split and merged without copies.
//!
//! Multi-head attention reshapes a `[b, s, h·d]` projection to
//! `[b, s, h, d]`, transposes it to heads `[b, h, s, d]` (and the keys once
//! more to `[b, h, d, s]`), multiplies per head, and transposes the context
//! `[b, h, s, d]` back to `[b, s, h, d]`. Each Transpose used to be a
//! strided copy loop. Here:
//!
//! - **read in place**: a Transpose that is not a graph output and whose
//!   every user is a float MatMul, or another such Transpose, is a *view*:
//!   no code and no buffer (it shares its operand's, `memory.rs`); each
//!   product reads it through the permuted strides of that buffer
//!   ([`operand_strides`]) — the kernels' batched GEMM takes a
//!   [`StridedLayout`](cranelora_kernels::gemm::StridedLayout), and packing
//!   reads a strided panel as cheaply as a contiguous one;
//! - **written in place**: a float MatMul whose only user is a Transpose
//!   that keeps the last axis last (a head merge) has no buffer of its own:
//!   it runs at its own step and writes each product's rows, `row stride`
//!   apart, straight into the Transpose's buffer, in the Transpose's
//!   (row-major) layout; the Transpose emits nothing.
//!
//! Both keep the values bit for bit: the same products over the same
//! elements, only addressed differently.

use cranelora_graph::{DType, Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// The head layouts of one graph.
#[derive(Clone, Debug, Default)]
pub struct HeadLayouts {
    /// Transposes read in place by the products using them.
    pub views: HashSet<NodeId>,
    /// MatMul → the Transpose whose buffer it writes in place.
    pub merged: HashMap<NodeId, NodeId>,
}

impl HeadLayouts {
    /// The layouts of `g`, whose nodes are `order` (topological); only
    /// products for which `strided` holds (those lowered to a plain GEMM
    /// call, not inline or inside an epilogue) read or write in place.
    pub fn plan(g: &Graph, order: &[NodeId], strided: impl Fn(NodeId) -> bool) -> Self {
        let mut views = HashSet::new();
        let float_matmul = |id: NodeId| {
            strided(id)
                && g.node(id).is_some_and(|n| {
                    matches!(n.op, Op::MatMul) && matches!(n.dtype, DType::F32 | DType::F64)
                })
        };
        for &id in order.iter().rev() {
            let Some(node) = g.node(id) else { continue };
            let users = g.users(id);
            let reads_in_place = matches!(node.op, Op::Transpose { .. })
                && !g.outputs().contains(&id)
                && !users.is_empty()
                && users.iter().all(|&u| float_matmul(u) || views.contains(&u));
            if reads_in_place {
                views.insert(id);
            }
        }
        let mut merged = HashMap::new();
        for &id in order {
            if !float_matmul(id) || g.outputs().contains(&id) {
                continue;
            }
            let users = g.users(id);
            let [t] = users[..] else { continue };
            let Some(tn) = g.node(t) else { continue };
            let Op::Transpose { perm } = &tn.op else {
                continue;
            };
            let keeps_rows = perm.last().is_some_and(|&p| p + 1 == perm.len());
            if keeps_rows && !views.contains(&t) && tn.shape.numel() > 0 {
                merged.insert(id, t);
            }
        }
        Self { views, merged }
    }

    /// The Transposes written by their MatMul (they emit nothing).
    pub fn merged_transposes(&self) -> HashSet<NodeId> {
        self.merged.values().copied().collect()
    }
}

/// Row-major strides of `dims`, in elements.
pub(crate) fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// The node whose buffer `id` reads and the strides of `id`'s dims in it:
/// through the view Transposes of `heads`, `id`'s own contiguous strides
/// otherwise.
pub(crate) fn operand_strides(g: &Graph, heads: &HeadLayouts, id: NodeId) -> (NodeId, Vec<usize>) {
    let mut perms: Vec<&[usize]> = Vec::new();
    let mut base = id;
    while heads.views.contains(&base) {
        let Some(Op::Transpose { perm }) = g.node(base).map(|n| &n.op) else {
            break;
        };
        perms.push(perm);
        base = g.operands(base)[0];
    }
    let dims = g.node(base).expect("internal: live node").shape.dims();
    let mut strides = contiguous_strides(dims);
    for perm in perms.iter().rev() {
        strides = perm.iter().map(|&p| strides[p]).collect();
    }
    (base, strides)
}

/// The strides of a merged MatMul's output dims in its Transpose's buffer.
pub(crate) fn merged_output_strides(g: &Graph, t: NodeId) -> Vec<usize> {
    let node = g.node(t).expect("internal: live node");
    let Op::Transpose { perm } = &node.op else {
        unreachable!("internal: a merged MatMul writes a Transpose")
    };
    let ts = contiguous_strides(node.shape.dims());
    let mut out = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        out[p] = ts[i];
    }
    out
}
