//! Softmax and LayerNorm: one call each to a row kernel in runtime.rs
//! (mirroring the interpreter, exp from the kernels' vector math), with the
//! row geometry in a plan built here.

use super::Lowerer;
use crate::runtime::RowPlan;
use crate::Result;
use cranelora_graph::{DType, NodeId};

fn push_plan(l: &mut Lowerer<'_>, plan: RowPlan) -> usize {
    let plan = Box::new(plan);
    let addr = &*plan as *const RowPlan as usize;
    l.plans.rows.push(plan);
    addr
}

/// Softmax along `axis`: rows of `dims[axis]` elements `inner` apart.
pub(crate) fn softmax(l: &mut Lowerer<'_>, id: NodeId, axis: usize) -> Result<()> {
    let node = l.node_of(id);
    let dims = node.shape.dims();
    let plan = RowPlan {
        outer: dims[..axis].iter().product(),
        len: dims[axis],
        inner: dims[axis + 1..].iter().product(),
        eps: 0.0,
    };
    let name = match node.dtype {
        DType::F64 => "cranelora_softmax_f64",
        _ => "cranelora_softmax_f32",
    };
    let addr = push_plan(l, plan);
    let plan = l.iconst_ptr(addr);
    let x = l.addr(l.graph.operands(id)[0]);
    let out = l.addr(id);
    let ptr = l.ptr;
    l.call(name, &[ptr; 3], &[], &[plan, x, out])?;
    Ok(())
}

/// LayerNorm over the axes `axis..`, optionally affine.
pub(crate) fn layer_norm(
    l: &mut Lowerer<'_>,
    id: NodeId,
    axis: usize,
    eps: f64,
    affine: bool,
) -> Result<()> {
    let node = l.node_of(id);
    let dims = node.shape.dims();
    let plan = RowPlan {
        outer: dims[..axis].iter().product(),
        len: dims[axis..].iter().product(),
        inner: 1,
        eps,
    };
    let name = match node.dtype {
        DType::F64 => "cranelora_layer_norm_f64",
        _ => "cranelora_layer_norm_f32",
    };
    let addr = push_plan(l, plan);
    let plan = l.iconst_ptr(addr);
    let ops = l.graph.operands(id);
    let x = l.addr(ops[0]);
    let (gamma, beta) = if affine {
        (l.addr(ops[1]), l.addr(ops[2]))
    } else {
        (l.iconst_ptr(0), l.iconst_ptr(0))
    };
    let out = l.addr(id);
    let ptr = l.ptr;
    l.call(name, &[ptr; 5], &[], &[plan, x, gamma, beta, out])?;
    Ok(())
}
