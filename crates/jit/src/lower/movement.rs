//! Data movement: Broadcast, Transpose, Slice, Pad, Concat and the final
//! copies of outputs, each one strided copy loop nest. Elements are moved
//! as integers of their width, so every bit pattern (NaN payloads, −0)
//! arrives unchanged. Reshape and StopGradient are views (memory.rs) and
//! emit nothing.

use super::elementwise::constant;
use super::loops::{broadcast_strides, contiguous, Access};
use super::{flags, Lowerer};
use crate::Result;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelora_graph::{DType, NodeId};
use std::ops::Range;

/// The integer type that moves one element of `d`.
fn word(d: DType) -> Type {
    match d.size_bytes() {
        4 => types::I32,
        _ => types::I64,
    }
}

/// Copies over `dims`, reading `src` and writing `dst` at their strides.
fn copy(l: &mut Lowerer<'_>, d: DType, dims: &[usize], src: Access, dst: Access) -> Result<()> {
    let t = word(d);
    l.nest(dims, &[src, dst], &mut |l, p| {
        let v = l.b.ins().load(t, flags(), p[0], 0);
        l.b.ins().store(flags(), v, p[1], 0);
        Ok(())
    })
}

/// An access to a whole buffer of `dims` with its own row-major strides.
fn dense(base: Value, dims: &[usize], d: DType) -> Access {
    Access {
        base,
        strides: contiguous(dims),
        offset: 0,
        size: d.size_bytes() as i64,
    }
}

/// The operand's dims and dtype, and the node's.
fn types_of(l: &Lowerer<'_>, id: NodeId) -> (Vec<usize>, Vec<usize>, DType) {
    let node = l.node_of(id);
    let x = l.node_of(l.graph.operands(id)[0]);
    (
        x.shape.dims().to_vec(),
        node.shape.dims().to_vec(),
        node.dtype,
    )
}

/// x broadcast to the node's shape.
pub(crate) fn broadcast(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let (xd, od, d) = types_of(l, id);
    let x = l.addr(l.graph.operands(id)[0]);
    let out = l.addr(id);
    let mut src = dense(x, &xd, d);
    src.strides = broadcast_strides(&xd, &od);
    copy(l, d, &od, src, dense(out, &od, d))
}

/// Output axis i is input axis perm[i].
pub(crate) fn transpose(l: &mut Lowerer<'_>, id: NodeId, perm: &[usize]) -> Result<()> {
    let (xd, od, d) = types_of(l, id);
    let x = l.addr(l.graph.operands(id)[0]);
    let out = l.addr(id);
    let own = contiguous(&xd);
    let mut src = dense(x, &xd, d);
    src.strides = perm.iter().map(|&p| own[p]).collect();
    copy(l, d, &od, src, dense(out, &od, d))
}

/// x[r₀, r₁, …].
pub(crate) fn slice(l: &mut Lowerer<'_>, id: NodeId, ranges: &[Range<usize>]) -> Result<()> {
    let (xd, od, d) = types_of(l, id);
    let x = l.addr(l.graph.operands(id)[0]);
    let out = l.addr(id);
    let mut src = dense(x, &xd, d);
    src.offset = ranges
        .iter()
        .zip(&src.strides)
        .map(|(r, &s)| r.start as i64 * s)
        .sum();
    copy(l, d, &od, src, dense(out, &od, d))
}

/// Fills the output with `value`, then copies x into its interior.
pub(crate) fn pad(
    l: &mut Lowerer<'_>,
    id: NodeId,
    pads: &[(usize, usize)],
    value: f64,
) -> Result<()> {
    let (xd, od, d) = types_of(l, id);
    let x = l.addr(l.graph.operands(id)[0]);
    let out = l.addr(id);
    let fill = constant(l, d, value);
    l.nest(&od, &[dense(out, &od, d)], &mut |l, p| {
        l.b.ins().store(flags(), fill, p[0], 0);
        Ok(())
    })?;
    let mut dst = dense(out, &od, d);
    dst.offset = pads
        .iter()
        .zip(&dst.strides)
        .map(|(p, &s)| p.0 as i64 * s)
        .sum();
    copy(l, d, &xd, dense(x, &xd, d), dst)
}

/// Each operand copied into its range of `axis`.
pub(crate) fn concat(l: &mut Lowerer<'_>, id: NodeId, axis: usize) -> Result<()> {
    let node = l.node_of(id);
    let (od, d) = (node.shape.dims().to_vec(), node.dtype);
    let out = l.addr(id);
    let out_strides = contiguous(&od);
    let mut start = 0usize;
    for o in l.graph.operands(id) {
        let xd = l.node_of(o).shape.dims().to_vec();
        let x = l.addr(o);
        let mut dst = dense(out, &od, d);
        dst.offset = start as i64 * out_strides[axis];
        copy(l, d, &xd, dense(x, &xd, d), dst)?;
        start += xd[axis];
    }
    Ok(())
}

/// Copies the value of output `id` into output buffer `i`.
pub(crate) fn copy_to_output(l: &mut Lowerer<'_>, id: NodeId, i: usize) -> Result<()> {
    let node = l.node_of(id);
    let (dims, d) = (node.shape.dims().to_vec(), node.dtype);
    let src = l.addr(id);
    let dst =
        l.b.ins()
            .load(l.ptr, flags(), l.args.outputs, (i * 8) as i32);
    copy(l, d, &dims, dense(src, &dims, d), dense(dst, &dims, d))
}
