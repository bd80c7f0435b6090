//! GatherMatMul: `out[r] = x[r]·w[ids[r]]` (zero rows for id −1), the
//! grouped low-rank product of mixed-adapter batches (S-LoRA / Punica's
//! SGMV).
//!
//! The lowering is one helper call. The helper groups the rows by id with a
//! counting sort (ids are checked first: an id outside `−1..N` stores
//! (node, id, N) in the status words and returns `INDEX_OUT_OF_RANGE`
//! before anything is written), then runs ONE kernels GEMM per group:
//! `rows_g × K · K × M`. A group whose rows are consecutive (the batch is
//! sorted by adapter, as a serving scheduler arranges it) multiplies in
//! place; otherwise its rows are gathered into scratch, multiplied and
//! scattered back. Everything lives in the arena's scratch area, so a call
//! allocates nothing.

use super::Lowerer;
use crate::runtime::{INDEX_OUT_OF_RANGE, KERNEL_ERROR, OK};
use crate::Result;
use cranelift_codegen::ir::types;
use cranelora_graph::{DType, Graph, NodeId};
use cranelora_kernels::gemm::{gemm, workspace_len, MatMut, MatRef, Rhs};
use cranelora_kernels::Scalar;

/// The dims of one GatherMatMul and the layout of its scratch area.
#[derive(Debug)]
pub struct GatherMatMulPlan {
    /// Rows R of x, ids and out.
    pub rows: usize,
    /// Inner dimension K.
    pub k: usize,
    /// Columns M of out.
    pub m: usize,
    /// Stacked matrices N.
    pub stack: usize,
    /// Element offsets (in T) in the scratch area of the gathered x rows
    /// (R·K), the gathered out rows (R·M) and the GEMM workspace.
    pub xs: usize,
    /// See `xs`.
    pub os: usize,
    /// See `xs`.
    pub ws: usize,
    /// GEMM workspace elements.
    pub ws_len: usize,
}

const ALIGN: usize = crate::memory::ALIGN;

/// `n` elements of `size` bytes, rounded up to whole 64-byte lines, in bytes.
fn lines(n: usize, size: usize) -> usize {
    (n * size).next_multiple_of(ALIGN)
}

/// The plan of node `id` (a GatherMatMul of `g`).
pub(crate) fn plan(g: &Graph, id: NodeId) -> GatherMatMulPlan {
    let node = g.node(id).expect("internal: live node");
    let dims = |i: usize| super::operand_dims(g, id, i);
    let (x, w) = (dims(0), dims(1));
    let (rows, k, stack, m) = (x[0], x[1], w[0], w[2]);
    let size = node.dtype.size_bytes();
    // Scratch: group counts (N + 2 words) and the row permutation (R words),
    // then the gathered x, the gathered out and the GEMM workspace.
    let index_bytes = lines((stack + 2 + rows) * 8, 1);
    let xs = index_bytes / size;
    let os = xs + lines(rows * k, size) / size;
    let ws = os + lines(rows * m, size) / size;
    let ws_len = match node.dtype {
        DType::F64 => workspace_len::<f64>(rows, m, k, false),
        _ => workspace_len::<f32>(rows, m, k, false),
    };
    GatherMatMulPlan {
        rows,
        k,
        m,
        stack,
        xs,
        os,
        ws,
        ws_len,
    }
}

/// Scratch bytes node `id` needs (the memory plan's scratch area).
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let p = plan(g, id);
    let size = g.node(id).expect("internal: live node").dtype.size_bytes();
    (p.ws + p.ws_len) * size
}

/// Lowers a GatherMatMul to one helper call (module docs).
pub(crate) fn lower(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let d = l.node_of(id).dtype;
    let p = Box::new(plan(l.graph, id));
    let addr = &*p as *const GatherMatMulPlan as usize;
    l.plans.gather_matmul.push(p);
    let name = match d {
        DType::F64 => "cranelora_gather_matmul_f64",
        _ => "cranelora_gather_matmul_f32",
    };
    let ops = l.graph.operands(id);
    let plan = l.iconst_ptr(addr);
    let (x, w, ids, out) = (l.addr(ops[0]), l.addr(ops[1]), l.addr(ops[2]), l.addr(id));
    let scratch = l.scratch();
    let status = l.args.status;
    let ptr = l.ptr;
    let args = [plan, x, w, ids, out, scratch, status];
    let r = l.call(name, &[ptr; 7], &[types::I32], &args)?;
    l.check_status(id, r[0]);
    Ok(())
}

/// The buffers of one call, as slices (the runtime helper builds them).
pub(crate) struct Buffers<'a, T> {
    pub x: &'a [T],
    pub w: &'a [T],
    pub ids: &'a [i64],
    pub out: &'a mut [T],
    /// The start of the scratch area: `stack + 2 + rows` words.
    pub index: &'a mut [usize],
    /// The rest of the scratch area, from element offset `xs` to `ws + ws_len`.
    pub scratch: &'a mut [T],
    pub status: &'a mut [i64; 4],
}

/// Runs the plan on checked buffers; returns the ABI status.
pub(crate) fn run<T: Scalar>(p: &GatherMatMulPlan, b: Buffers<'_, T>) -> i32 {
    if let Some(&bad) = b.ids.iter().find(|&&i| i < -1 || i >= p.stack as i64) {
        b.status[1] = bad;
        b.status[2] = p.stack as i64;
        return INDEX_OUT_OF_RANGE;
    }
    // Counting sort of the rows by id + 1 (bucket 0: no adapter).
    let (starts, perm) = b.index.split_at_mut(p.stack + 2);
    starts.fill(0);
    for &i in b.ids {
        starts[(i + 2) as usize] += 1;
    }
    for g in 1..starts.len() {
        starts[g] += starts[g - 1];
    }
    // starts[b] is bucket b's start; placing a row advances it, so after
    // this loop starts[b] is bucket b's end, i.e. bucket b + 1's start.
    for (r, &i) in b.ids.iter().enumerate() {
        let slot = &mut starts[(i + 1) as usize];
        perm[*slot] = r;
        *slot += 1;
    }
    let (m, k) = (p.m, p.k);
    for &r in &perm[..starts[0]] {
        b.out[r * m..(r + 1) * m].fill(T::zero());
    }
    let (head, ws) = b.scratch.split_at_mut(p.ws - p.xs);
    let ws = &mut ws[..p.ws_len];
    let (xs, os) = head.split_at_mut(p.os - p.xs);
    for g in 0..p.stack {
        let rows = &perm[starts[g]..starts[g + 1]];
        let wg = &b.w[g * k * m..(g + 1) * k * m];
        let ok = match (rows.first(), rows.last()) {
            (Some(&first), Some(&last)) if last - first + 1 == rows.len() => {
                // Consecutive rows: multiply in place.
                let x = &b.x[first * k..(last + 1) * k];
                let out = &mut b.out[first * m..(last + 1) * m];
                product(x, wg, out, rows.len(), k, m, ws)
            }
            (Some(_), _) => grouped(rows, b.x, wg, b.out, (xs, os), (k, m), ws),
            _ => Ok(()),
        };
        if ok.is_err() {
            return KERNEL_ERROR;
        }
    }
    OK
}

/// `out (n×m) = x (n×k) · w (k×m)`.
fn product<T: Scalar>(
    x: &[T],
    w: &[T],
    out: &mut [T],
    n: usize,
    k: usize,
    m: usize,
    ws: &mut [T],
) -> cranelora_kernels::Result<()> {
    let a = MatRef::new(x, n, k)?;
    let b = MatRef::new(w, k, m)?;
    gemm(
        T::one(),
        a,
        Rhs::Mat(b),
        T::zero(),
        MatMut::new(out, n, m)?,
        ws,
    )
}

/// The rows `rows` of x gathered, multiplied by `w` and scattered into out.
fn grouped<T: Scalar>(
    rows: &[usize],
    x: &[T],
    w: &[T],
    out: &mut [T],
    (xs, os): (&mut [T], &mut [T]),
    (k, m): (usize, usize),
    ws: &mut [T],
) -> cranelora_kernels::Result<()> {
    let n = rows.len();
    for (i, &r) in rows.iter().enumerate() {
        xs[i * k..(i + 1) * k].copy_from_slice(&x[r * k..(r + 1) * k]);
    }
    product(&xs[..n * k], w, &mut os[..n * m], n, k, m, ws)?;
    for (i, &r) in rows.iter().enumerate() {
        out[r * m..(r + 1) * m].copy_from_slice(&os[i * m..(i + 1) * m]);
    }
    Ok(())
}
