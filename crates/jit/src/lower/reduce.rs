//! Reduce: the output is filled with the identity, then one loop nest over
//! the input folds each element into its output element (stride 0 on the
//! reduced axes), in row-major input order. Over a single axis this is the
//! interpreter's fold order exactly; over several it differs only in the
//! order of the partial sums (≈ n·ε relative). Mean divides by the count at
//! the end, as the interpreter does.

use super::elementwise::{constant, scalar};
use super::loops::{contiguous, Access};
use super::{clif_type, flags, Lowerer};
use crate::Result;
use cranelift_codegen::ir::InstBuilder;
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
