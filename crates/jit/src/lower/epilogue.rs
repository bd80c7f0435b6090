//! GEMM epilogues taken from loop groups.
//!
//! A loop group ([`super::fused`]) whose `anchor` is a MatMul and whose
//! members are exactly
//!
//! ```text
//! t = mm + bias[n]          (bias a vector over the output columns, or a
//!                            Broadcast of one that is a member of the group)
//! t = act(t)                optional: Relu, Gelu, GeluTanh, Silu, Tanh, Sigmoid
//! t = t + r                 optional: a residual of the product's shape
//! ```
//!
//! with only the last one used outside the group, is not lowered as a loop:
//! the product's helper call applies the same steps to each output block
//! while it is still in cache ([`cranelora_kernels::gemm::Epilogue`], the
//! kernels' vector math, on the threads that computed the block) and writes
//! the group's output directly. The MatMul then has no buffer of its own and
//! runs at the group's step (its operands are all computed earlier, since
//! they were before its own step). The epilogue computes the same
//! operations in the same order as the loop (bias add, then the function
//! from the same coefficient table, then the residual add), so results equal
//! the unfused code's (tested in `tests/fusion.rs`).
//!
//! Not taken (the group stays a loop): any other member (a LoRA branch's
//! scale and add, a second activation), a bias of another shape or dtype,
//! an intermediate member read outside the group, products of integers.

use super::fused::LoopGroup;
use super::linalg::EpilogueOperands;
use cranelora_graph::{DType, Graph, NodeId, Op};
use cranelora_kernels::gemm::{Activation, EpilogueSpec};
use cranelora_kernels::math::Func;
use std::collections::HashMap;

/// A group lowered as its product's epilogue.
#[derive(Clone, Debug)]
pub struct EpilogueGroup {
    /// The MatMul (the group's anchor).
    pub matmul: NodeId,
    /// What the epilogue does and its operands; `dest` is the group's output.
    pub operands: EpilogueOperands,
}

/// The groups of `groups` (by index) that become epilogues.
pub fn plan(g: &Graph, groups: &[LoopGroup]) -> HashMap<usize, EpilogueGroup> {
    let found = groups.iter().enumerate();
    found
        .filter_map(|(gi, grp)| Some((gi, match_group(g, grp)?)))
        .collect()
}

/// The epilogue `grp` is, if it is one (module docs).
fn match_group(g: &Graph, grp: &LoopGroup) -> Option<EpilogueGroup> {
    let mm = grp.anchor?;
    let node = g.node(mm)?;
    let float = matches!(node.dtype, DType::F32 | DType::F64);
    let first = *grp.nodes.first()?;
    let only_user = g.users(mm).iter().all(|&u| u == first);
    if !matches!(node.op, Op::MatMul) || !float || !only_user || g.outputs().contains(&mm) {
        return None;
    }
    let n = *node.shape.dims().last()?;
    let mut members = grp.nodes.iter().copied().peekable();
    let mut spec = EpilogueSpec::NONE;
    let mut ops = EpilogueOperands::default();
    // Broadcast members feeding the bias add, consumed with it.
    let mut consumed_broadcast = None;
    let bias_add = members.next()?;
    let bias = added_to(g, bias_add, mm)?;
    let bias = match g.node(bias)?.op {
        Op::Broadcast { .. } if grp.nodes.contains(&bias) => {
            consumed_broadcast = Some(bias);
            *g.operands(bias).first()?
        }
        _ => bias,
    };
    let b = g.node(bias)?;
    if b.shape.numel() != n || *b.shape.dims().last()? != n || b.dtype != node.dtype {
        return None;
    }
    if grp.nodes.contains(&bias) {
        return None;
    }
    spec.bias = true;
    ops.bias = Some(bias);
    let mut last = bias_add;
    if let Some(act) = members.peek().and_then(|&m| activation(g, m, last)) {
        spec.activation = Some(act);
        last = members.next()?;
    }
    if let Some(&m) = members.peek() {
        let r = added_to(g, m, last)?;
        let rn = g.node(r)?;
        if rn.shape != node.shape || rn.dtype != node.dtype || grp.nodes.contains(&r) || r == mm {
            return None;
        }
        spec.residual = Some(1.0);
        ops.residual = Some(r);
        last = members.next()?;
    }
    let rest: Vec<NodeId> = members.filter(|&m| Some(m) != consumed_broadcast).collect();
    if !rest.is_empty() || grp.outputs != [last] {
        return None;
    }
    ops.spec = spec;
    ops.dest = Some(last);
    Some(EpilogueGroup {
        matmul: mm,
        operands: ops,
    })
}

/// The other operand of `add` if it is `Add(x, other)` or `Add(other, x)`
/// with `other != x`.
fn added_to(g: &Graph, add: NodeId, x: NodeId) -> Option<NodeId> {
    if !matches!(g.node(add)?.op, Op::Add) {
        return None;
    }
    match g.operands(add)[..] {
        [a, b] if a == x && b != x => Some(b),
        [a, b] if b == x && a != x => Some(a),
        _ => None,
    }
}

/// The epilogue activation of node `id` if it applies one to `x`.
fn activation(g: &Graph, id: NodeId, x: NodeId) -> Option<Activation> {
    if g.operands(id) != [x] {
        return None;
    }
    Some(match g.node(id)?.op {
        Op::Relu => Activation::Relu,
        Op::Gelu => Activation::Func(Func::GeluErf),
        Op::GeluTanh => Activation::Func(Func::GeluTanh),
        Op::Silu => Activation::Func(Func::Silu),
        Op::Tanh => Activation::Func(Func::Tanh),
        Op::Sigmoid => Activation::Func(Func::Sigmoid),
        _ => return None,
    })
}
