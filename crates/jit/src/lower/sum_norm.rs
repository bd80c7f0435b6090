//! A LayerNorm over a sum of embedding lookups, in one row pass.
//!
//! A BERT-family embedding block is `LayerNorm(word[ids] + type[types] +
//! position)`: two Gathers, two Adds and the norm — as separate steps, the
//! gathers copy rows into two `[b, s, d]` buffers, a single-threaded loop
//! adds them and the position rows into a third, and the norm reads that.
//! A last-axis float LayerNorm `N` is matched with
//!
//! ```text
//! x = Add(Add(…Add(t0, t1)…), tk)   a chain of Adds, each read only by the next
//! N = LayerNorm(x[, γ, β])          over the last axis
//! ```
//!
//! where each term `t` is either a `Gather(table [V, d], ids)` read only by
//! the chain (its rows are read from the table, never copied), or any node
//! of the norm's dtype broadcastable to its shape; at least one term must
//! be a Gather and at most [`MAX_TERMS`] terms are taken (otherwise nothing
//! is fused: a LayerNorm after a product's residual add, for one, stays
//! with the GEMM epilogue that computes that add). The chain's Adds must
//! have the norm's shape (no broadcasting inside the chain) and each may
//! take the chain from either operand (IEEE addition is commutative).
//!
//! The pattern runs as one helper call (`cranelora_sum_norm_{f32,f64}`) at
//! the norm's step: the generated code first checks every id against its
//! table's rows exactly as the Gather lowering does (same error, naming the
//! Gather), then the helper, over the kernels' pool, sums each row's terms
//! left to right into the output row — the interpreter's `((t0 + t1) + t2)`
//! — and normalizes it in place with the plain LayerNorm's row code. The
//! absorbed nodes get no buffer and no step.

use super::index::checked_ids;
use super::Lowerer;
use crate::runtime::{SumNormPlan, SumTerm};
use crate::Result;
use cranelift_codegen::ir::{InstBuilder, StackSlotData, StackSlotKind};
use cranelora_graph::{DType, Graph, NodeId, Op};
use std::collections::{HashMap, HashSet};

/// The most terms one call takes.
pub const MAX_TERMS: usize = crate::runtime::SUM_NORM_MAX_TERMS;

/// One term of the sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// A node read through broadcast strides.
    Dense(NodeId),
    /// Rows `table[ids[r]]` of the Gather `node`.
    Gather {
        /// The Gather (absorbed).
        node: NodeId,
        /// Its table `[V, d]`.
        table: NodeId,
        /// Its ids (the norm's row dims).
        ids: NodeId,
    },
}

/// One matched pattern.
#[derive(Clone, Debug)]
pub struct FusedSumNorm {
    /// The LayerNorm (its buffer receives the result).
    pub norm: NodeId,
    /// The terms in summation order.
    pub terms: Vec<Term>,
    /// γ and β when affine.
    pub affine: Option<(NodeId, NodeId)>,
    /// The norm's epsilon.
    pub eps: f64,
    /// The nodes the call stands for (Gathers, Adds, the norm last).
    pub nodes: Vec<NodeId>,
}

/// The fused norms of `g`, by their LayerNorm.
pub fn plan(g: &Graph, order: &[NodeId]) -> HashMap<NodeId, FusedSumNorm> {
    order
        .iter()
        .filter_map(|&id| match_norm(g, id))
        .map(|f| (f.norm, f))
        .collect()
}

/// Every node of `fused`.
pub fn members(fused: &HashMap<NodeId, FusedSumNorm>) -> HashSet<NodeId> {
    fused
        .values()
        .flat_map(|f| f.nodes.iter().copied())
        .collect()
}

/// Whether `id` has the dtype and dims given and is read only by `user`.
fn only_for(g: &Graph, id: NodeId, user: NodeId, dtype: DType, dims: &[usize]) -> bool {
    g.node(id)
        .is_some_and(|n| n.dtype == dtype && n.shape.dims() == dims)
        && g.users(id) == [user]
        && !g.outputs().contains(&id)
}

/// `t` as a Gather term of the norm's `dims` when it is one read only by `add`.
fn gather_term(g: &Graph, t: NodeId, add: NodeId, dims: &[usize], dtype: DType) -> Option<Term> {
    let node = g.node(t)?;
    if !matches!(node.op, Op::Gather) || !only_for(g, t, add, dtype, dims) {
        return None;
    }
    let [table, ids] = g.operands(t)[..] else {
        return None;
    };
    let (tn, idn) = (g.node(table)?, g.node(ids)?);
    let rows = &dims[..dims.len() - 1];
    let fits = tn.dtype == dtype
        && matches!(tn.shape.dims(), [_, d] if *d == dims[dims.len() - 1])
        && idn.dtype == DType::I64
        && idn.shape.dims() == rows;
    fits.then_some(Term::Gather {
        node: t,
        table,
        ids,
    })
}

fn match_norm(g: &Graph, n: NodeId) -> Option<FusedSumNorm> {
    let node = g.node(n)?;
    let dims = node.shape.dims();
    let Op::LayerNorm { axis, eps, affine } = node.op else {
        return None;
    };
    let dtype = node.dtype;
    if axis + 1 != dims.len()
        || !matches!(dtype, DType::F32 | DType::F64)
        || node.shape.numel() == 0
    {
        return None;
    }
    let ops = g.operands(n);
    let (leaves, mut nodes) = chain(g, ops[0], n, dtype, dims)?;
    if leaves.len() > MAX_TERMS {
        return None;
    }
    let mut out = Vec::with_capacity(leaves.len());
    for (t, add) in leaves {
        let term = match gather_term(g, t, add, dims, dtype) {
            Some(term) => term,
            None if broadcastable(g, t, dims, dtype) => Term::Dense(t),
            None => return None,
        };
        out.push(term);
    }
    let gathers: Vec<NodeId> = out
        .iter()
        .filter_map(|t| match *t {
            Term::Gather { node, .. } => Some(node),
            Term::Dense(_) => None,
        })
        .collect();
    if gathers.is_empty() {
        return None;
    }
    nodes.splice(0..0, gathers);
    nodes.push(n);
    Some(FusedSumNorm {
        norm: n,
        terms: out,
        affine: affine.then(|| (ops[1], ops[2])),
        eps,
        nodes,
    })
}

/// A chain's leaves, each with the Add that reads it.
type Leaves = Vec<(NodeId, NodeId)>;

/// The Add chain ending in `top` (read only by `reader`): its leaves in
/// summation order, each with the Add that reads it, and the Adds from the
/// bottom up; `None` unless `top` is such an Add.
fn chain(
    g: &Graph,
    top: NodeId,
    reader: NodeId,
    dtype: DType,
    dims: &[usize],
) -> Option<(Leaves, Vec<NodeId>)> {
    let is_link = |x: NodeId, user: NodeId| {
        g.node(x).is_some_and(|n| matches!(n.op, Op::Add)) && only_for(g, x, user, dtype, dims)
    };
    if !is_link(top, reader) {
        return None;
    }
    // Walk down from the top; leaves collected last first.
    let (mut leaves, mut adds, mut cur) = (Vec::new(), Vec::new(), top);
    loop {
        adds.push(cur);
        let [a, b] = g.operands(cur)[..] else {
            return None;
        };
        if a != b && is_link(a, cur) {
            leaves.push((b, cur));
            cur = a;
        } else if a != b && is_link(b, cur) {
            leaves.push((a, cur));
            cur = b;
        } else {
            leaves.extend([(b, cur), (a, cur)]);
            break;
        }
    }
    leaves.reverse();
    adds.reverse();
    Some((leaves, adds))
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

/// Lowers `f`: the id checks, then one helper call at the current step.
pub(crate) fn lower(l: &mut Lowerer<'_>, f: &FusedSumNorm) -> Result<()> {
    let g = l.graph;
    let node = l.node_of(f.norm);
    let dims = node.shape.dims().to_vec();
    let len = dims[dims.len() - 1];
    let mut terms = Vec::with_capacity(f.terms.len());
    for t in &f.terms {
        terms.push(match *t {
            Term::Dense(id) => SumTerm::Dense(super::softmax::bcast(g, id, &dims)),
            Term::Gather { node, table, ids } => {
                let rows = l.node_of(table).shape.dims()[0];
                checked_ids(l, node, ids, rows)?;
                SumTerm::Gather { table_rows: rows }
            }
        });
    }
    let plan = Box::new(SumNormPlan {
        rows: dims[..dims.len() - 1].iter().product(),
        row_dims: dims[..dims.len() - 1].to_vec(),
        len,
        eps: f.eps,
        terms,
        affine: f.affine.is_some(),
    });
    let addr = &*plan as *const SumNormPlan as usize;
    l.plans.sum_norm.push(plan);
    // The operands' addresses (data and ids of each term, then γ and β) in
    // a stack array the helper reads.
    let mut ptrs = Vec::with_capacity(2 * f.terms.len() + 2);
    for t in &f.terms {
        match *t {
            Term::Dense(id) => ptrs.extend([l.addr(id), l.iconst_ptr(0)]),
            Term::Gather { table, ids, .. } => ptrs.extend([l.addr(table), l.addr(ids)]),
        }
    }
    match f.affine {
        Some((gamma, beta)) => ptrs.extend([l.addr(gamma), l.addr(beta)]),
        None => ptrs.extend([l.iconst_ptr(0), l.iconst_ptr(0)]),
    }
    let word = l.ptr.bytes();
    let slot = l.b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        word * ptrs.len() as u32,
        3,
    ));
    let ptr = l.ptr;
    for (i, &p) in ptrs.iter().enumerate() {
        l.b.ins()
            .stack_store(ptr, p, slot, (i as u32 * word) as i32);
    }
    let array = l.b.ins().stack_addr(ptr, slot, 0);
    let name = match node.dtype {
        DType::F64 => "cranelora_sum_norm_f64",
        _ => "cranelora_sum_norm_f32",
    };
    let plan = l.iconst_ptr(addr);
    let out = l.addr(f.norm);
    l.call(name, &[ptr; 3], &[], &[plan, array, out])?;
    Ok(())
}
