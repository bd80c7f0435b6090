//! Gather and ScatterAdd: every id is checked against the table's rows in
//! the generated code; an id outside `0..rows` (negative ids compare as
//! huge unsigned numbers) stores (node, id, rows) in the status words and
//! returns [`INDEX_OUT_OF_RANGE`] before any out-of-bounds access.

use super::loops::{contiguous, Access};
use super::{clif_type, flags, Lowerer};
use crate::runtime::INDEX_OUT_OF_RANGE;
use crate::Result;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelora_graph::{DType, NodeId};

/// Loads id number `s` and returns it, leaving the function with an error if
/// it is not in `0..rows`.
fn checked_id(l: &mut Lowerer<'_>, node: NodeId, ids: Value, s: Value, rows: usize) -> Value {
    let off = l.b.ins().imul_imm_s(s, 8);
    let p = l.b.ins().iadd(ids, off);
    let id = l.b.ins().load(types::I64, flags(), p, 0);
    let ok =
        l.b.ins()
            .icmp_imm_u(IntCC::UnsignedLessThan, id, rows as i64);
    let fail = l.b.create_block();
    let cont = l.b.create_block();
    l.b.ins().brif(ok, cont, &[], fail, &[]);
    l.b.switch_to_block(fail);
    l.b.seal_block(fail);
    let st = l.args.status;
    let n = l.b.ins().iconst(types::I64, node.index() as i64);
    let bound = l.b.ins().iconst(types::I64, rows as i64);
    l.b.ins().store(flags(), n, st, 0);
    l.b.ins().store(flags(), id, st, 8);
    l.b.ins().store(flags(), bound, st, 16);
    let code = l.b.ins().iconst(types::I32, i64::from(INDEX_OUT_OF_RANGE));
    l.b.ins().return_(&[code]);
    l.b.switch_to_block(cont);
    l.b.seal_block(cont);
    id
}

/// Checks every id of `ids` (the Gather `node`'s) against `rows`, leaving
/// the function with the Gather's error on the first one out of range; for
/// code that then reads the table rows itself (`sum_norm.rs`).
pub(crate) fn checked_ids(
    l: &mut Lowerer<'_>,
    node: NodeId,
    ids: NodeId,
    rows: usize,
) -> Result<()> {
    let count = l.node_of(ids).shape.numel();
    let ip = l.addr(ids);
    l.counted_loop(count as i64, &mut |l, s| {
        checked_id(l, node, ip, s, rows);
        Ok(())
    })
}

/// Row pointer `base + row·d·size`.
fn row_ptr(l: &mut Lowerer<'_>, base: Value, row: Value, d: usize, size: usize) -> Value {
    let off = l.b.ins().imul_imm_s(row, (d * size) as i64);
    l.b.ins().iadd(base, off)
}

/// out[s] = table[ids[s]] for table [V, D], ids [S...].
pub(crate) fn gather(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let ops = l.graph.operands(id);
    let table = l.node_of(ops[0]);
    let (rows, d, dt) = (table.shape.dims()[0], table.shape.dims()[1], table.dtype);
    let count = l.node_of(ops[1]).shape.numel();
    let (tp, ip, op) = (l.addr(ops[0]), l.addr(ops[1]), l.addr(id));
    let size = dt.size_bytes();
    // Rows of whole 16-byte words (MiniLM's 384 f32) are copied a vector
    // at a time; the bits are moved unchanged either way.
    let (word, wsize) = if (d * size) % 16 == 0 {
        (types::I64X2, 16)
    } else if size == 4 {
        (types::I32, 4)
    } else {
        (types::I64, 8)
    };
    let words = d * size / wsize;
    l.counted_loop(count as i64, &mut |l, s| {
        let row = checked_id(l, id, ip, s, rows);
        let src = row_ptr(l, tp, row, d, size);
        let dst = row_ptr(l, op, s, d, size);
        let accs = [row_access(src, words, wsize), row_access(dst, words, wsize)];
        // Vector words need not be 16-byte aligned (rows of 4 f32).
        let mem = if word.is_vector() {
            super::elementwise::vector_flags()
        } else {
            flags()
        };
        l.nest(&[words], &accs, &mut |l, p| {
            let v = l.b.ins().load(word, mem, p[0], 0);
            l.b.ins().store(mem, v, p[1], 0);
            Ok(())
        })
    })
}

fn row_access(base: Value, d: usize, size: usize) -> Access {
    Access {
        base,
        strides: contiguous(&[d]),
        offset: 0,
        size: size as i64,
    }
}

/// out [rows, D] = 0, then out[ids[s]] += updates[s].
pub(crate) fn scatter_add(l: &mut Lowerer<'_>, id: NodeId, rows: usize) -> Result<()> {
    let ops = l.graph.operands(id);
    let upd = l.node_of(ops[0]);
    let dt: DType = upd.dtype;
    let d = *upd.shape.dims().last().expect("internal: rank ≥ 1");
    let count = l.node_of(ops[1]).shape.numel();
    let (up, ip, op) = (l.addr(ops[0]), l.addr(ops[1]), l.addr(id));
    let size = dt.size_bytes();
    let t = clif_type(dt);
    let zero = super::elementwise::constant(l, dt, 0.0);
    l.nest(
        &[rows * d],
        &[row_access(op, rows * d, size)],
        &mut |l, p| {
            l.b.ins().store(flags(), zero, p[0], 0);
            Ok(())
        },
    )?;
    l.counted_loop(count as i64, &mut |l, s| {
        let row = checked_id(l, id, ip, s, rows);
        let src = row_ptr(l, up, s, d, size);
        let dst = row_ptr(l, op, row, d, size);
        let accs = [row_access(src, d, size), row_access(dst, d, size)];
        l.nest(&[d], &accs, &mut |l, p| {
            let u = l.b.ins().load(t, flags(), p[0], 0);
            let o = l.b.ins().load(t, flags(), p[1], 0);
            let r = l.b.ins().fadd(o, u);
            l.b.ins().store(flags(), r, p[1], 0);
            Ok(())
        })
    })
}
