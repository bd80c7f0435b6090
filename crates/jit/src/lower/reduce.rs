//! Reduce.
//!
//! **Trailing axes, float** (a row sum / mean / max, the common case): each
//! output element is one row of `inner` contiguous input elements, folded
//! in registers — an f32x4 / f64x2 accumulator over the row's whole
//! vectors, its lanes folded in lane order, then the scalar tail — and
//! stored once. A sum therefore adds `lanes` interleaved partial sums
//! instead of the interpreter's left-to-right fold: the difference is
//! reassociation only, bounded by ≈ (n/lanes + lanes)·ε·Σ|x| (tested at
//! 1e-6 relative in f32, 1e-14 in f64 in `tests/ops.rs`). Max is exact
//! (NaN propagates; only the sign of a zero maximum may differ).
//!
//! **Otherwise**: the output is filled with the identity, then one loop
//! nest over the input folds each element into its output element (stride
//! 0 on the reduced axes), in row-major input order. Over a single axis
//! this is the interpreter's fold order exactly; over several it differs
//! only in the order of the partial sums (≈ n·ε relative).
//!
//! Mean divides by the count at the end, as the interpreter does.

use super::elementwise::{constant, scalar, vector, vector_flags, vector_type};
use super::loops::{contiguous, Access};
use super::{clif_type, flags, Lowerer};
use crate::Result;
use cranelift_codegen::ir::{InstBuilder, Type, Value};
use cranelora_graph::{DType, NodeId, Op, ReduceKind};

/// Lowers a Reduce node.
pub(crate) fn reduce(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let node = l.node_of(id);
    let Op::Reduce { kind, axes, .. } = &node.op else {
        unreachable!("internal: called for Reduce")
    };
    let (kind, d) = (*kind, node.dtype);
    let x = l.graph.operands(id)[0];
    let xd = l.node_of(x).shape.dims().to_vec();
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    let trailing = !sorted.is_empty()
        && sorted
            .iter()
            .enumerate()
            .all(|(i, &a)| a == xd.len() - sorted.len() + i);
    if let (true, Some((vt, lanes))) = (trailing, vector_type(d)) {
        let inner: usize = sorted.iter().map(|&a| xd[a]).product();
        if inner >= lanes {
            return rows(l, id, x, kind, (node.shape.numel(), inner), (vt, lanes));
        }
    }
    // The output's strides seen from the input's axes: kept axes in order.
    let kept: Vec<usize> = (0..xd.len()).filter(|a| !axes.contains(a)).collect();
    let kept_dims: Vec<usize> = kept.iter().map(|&a| xd[a]).collect();
    let kept_strides = contiguous(&kept_dims);
    let mut out_strides = vec![0i64; xd.len()];
    for (k, &a) in kept.iter().enumerate() {
        out_strides[a] = kept_strides[k];
    }
    let size = d.size_bytes() as i64;
    let out = l.addr(id);
    let xa = l.addr(x);
    let init = match (kind, d) {
        (ReduceKind::Max, DType::I64) => l.b.ins().iconst(clif_type(d), i64::MIN),
        (ReduceKind::Max, _) => constant(l, d, f64::NEG_INFINITY),
        _ => constant(l, d, 0.0),
    };
    let out_dims = [node.shape.numel()];
    let dense_out = Access {
        base: out,
        strides: vec![1],
        offset: 0,
        size,
    };
    l.nest(&out_dims, std::slice::from_ref(&dense_out), &mut |l, p| {
        l.b.ins().store(flags(), init, p[0], 0);
        Ok(())
    })?;
    let accs = [
        Access {
            base: xa,
            strides: contiguous(&xd),
            offset: 0,
            size,
        },
        Access {
            base: out,
            strides: out_strides,
            offset: 0,
            size,
        },
    ];
    let fold = match kind {
        ReduceKind::Max => Op::Max,
        _ => Op::Add,
    };
    let t = clif_type(d);
    l.nest(&xd, &accs, &mut |l, p| {
        let v = l.b.ins().load(t, flags(), p[0], 0);
        let acc = l.b.ins().load(t, flags(), p[1], 0);
        let r = scalar(l, &fold, &[d, d], d, &[acc, v])?;
        l.b.ins().store(flags(), r, p[1], 0);
        Ok(())
    })?;
    if kind == ReduceKind::Mean {
        let count: usize = axes.iter().map(|&a| xd[a]).product();
        let n = constant(l, d, count as f64);
        l.nest(&out_dims, &[dense_out], &mut |l, p| {
            let s = l.b.ins().load(t, flags(), p[0], 0);
            let m = l.b.ins().fdiv(s, n);
            l.b.ins().store(flags(), m, p[0], 0);
            Ok(())
        })?;
    }
    Ok(())
}

/// Trailing-axes float reduction: `outer` rows of `inner ≥ lanes` elements,
/// each folded in a vector accumulator (module docs).
fn rows(
    l: &mut Lowerer<'_>,
    id: NodeId,
    x: NodeId,
    kind: ReduceKind,
    (outer, inner): (usize, usize),
    (vt, lanes): (Type, usize),
) -> Result<()> {
    let d = l.node_of(id).dtype;
    let t = clif_type(d);
    let size = d.size_bytes() as i64;
    let fold = match kind {
        ReduceKind::Max => Op::Max,
        _ => Op::Add,
    };
    let (out, xa) = (l.addr(id), l.addr(x));
    let acc_v = l.b.declare_var(vt);
    let acc = l.b.declare_var(t);
    let vec_end = (inner / lanes * lanes) as i64;
    l.counted_loop(outer as i64, &mut |l, row| {
        let off = l.b.ins().imul_imm_s(row, inner as i64 * size);
        let base = l.b.ins().iadd(xa, off);
        let init = match kind {
            ReduceKind::Max => constant(l, d, f64::NEG_INFINITY),
            _ => constant(l, d, 0.0),
        };
        let init_v = l.b.ins().splat(vt, init);
        l.b.def_var(acc_v, init_v);
        l.stepped_loop(0, vec_end, lanes as i64, &mut |l, i| {
            let p = at(l, base, i, size);
            let v = l.b.ins().load(vt, vector_flags(), p, 0);
            let a = l.b.use_var(acc_v);
            let r = vector(l, &fold, d, vt, &[a, v]);
            l.b.def_var(acc_v, r);
            Ok(())
        })?;
        let a = l.b.use_var(acc_v);
        let mut r = l.b.ins().extractlane(a, 0);
        for k in 1..lanes as u8 {
            let lane = l.b.ins().extractlane(a, k);
            r = scalar(l, &fold, &[d, d], d, &[r, lane])?;
        }
        l.b.def_var(acc, r);
        l.stepped_loop(vec_end, inner as i64, 1, &mut |l, i| {
            let p = at(l, base, i, size);
            let v = l.b.ins().load(t, flags(), p, 0);
            let a = l.b.use_var(acc);
            let r = scalar(l, &fold, &[d, d], d, &[a, v])?;
            l.b.def_var(acc, r);
            Ok(())
        })?;
        let mut r = l.b.use_var(acc);
        if kind == ReduceKind::Mean {
            let n = constant(l, d, inner as f64);
            r = l.b.ins().fdiv(r, n);
        }
        let p = at(l, out, row, size);
        l.b.ins().store(flags(), r, p, 0);
        Ok(())
    })
}

/// `base + i·size`.
fn at(l: &mut Lowerer<'_>, base: Value, i: Value, size: i64) -> Value {
    let off = l.b.ins().imul_imm_s(i, size);
    l.b.ins().iadd(base, off)
}
