//! Small matrix products emitted inline as register-blocked vector code.
//!
//! A call into the runtime GEMM (`cranelora_matmul_{f32,f64}` →
//! `kernels::gemm`) costs a fixed few hundred nanoseconds — plan checks,
//! epilogue retyping, packing — which dominates a product like W2's
//! `1×64 · 64×64` or its LoRA terms `1×64 · 64×4`, `1×4 · 4×64`. A MatMul
//! whose total multiply-adds (`batch·m·k·n`) are at most
//! [`crate::JitOptions::inline_matmul_macs`] and whose output has at most
//! [`MAX_BLOCKS`] register blocks is instead emitted here, with no call:
//!
//! - the output is cut into blocks of `MR` rows × `NR` vectors (f32x4 /
//!   f64x2; `MR = min(m, 4)`, `NR = 8 / MR`), each accumulated in registers
//!   over the whole depth `k` and stored once;
//! - per depth step: one scalar of each A row splat, `NR` vector loads of
//!   the B row, `MR·NR` `fma` (one rounding; `fmul` + `fadd` on a host
//!   without FMA, where Cranelift would call libm per lane);
//! - a block with fewer than 8 accumulators splits the depth into `S`
//!   interleaved partial sums (step `p` goes to set `p mod S`, the sets are
//!   added in order at the end), so that ~8 independent FMA chains hide the
//!   FMA latency (a `1×64 · 64×4` product is otherwise one chain of 64);
//! - n not a multiple of the lane count: when `n ≥ lanes` the last vector
//!   starts at `n − lanes` and overlaps the one before; the overlapped
//!   columns are written twice, the last store winning. Both writes are
//!   the column's dot product, but when the two vectors fall in blocks
//!   with different depth splits they may differ in summation order (and
//!   so in the last bits): the result is deterministic and within the
//!   tested dot-product bound, not bitwise the other vector's. When `n < lanes` the
//!   block is scalar (same blocking, `f32`/`f64` accumulators);
//! - the depth loop runs `U` steps per iteration (`U` a multiple of `S`,
//!   at least 2) with the block's A and B pointers and accumulators as block
//!   parameters; the remaining `k mod U` steps, or all of them when there
//!   is only one iteration, are straight-line code (unrolling the whole
//!   depth measured 2× slower for `1×64·64×64`: the long blocks spill);
//! - batch entries (broadcast batch dims included) are unrolled with their
//!   element offsets fixed at compile time.
//!
//! The right operand is read where it lives: a Constant at its embedded
//! address, a Parameter through the parameter table, an intermediate in the
//! arena. Results are the exact product up to rounding: each output is a
//! sum over `k` in a fixed order different from the kernels' GEMM (tested
//! against the interpreter within the usual `γ_k` bound in
//! `tests/small_matmul.rs`).

use super::elementwise::{vector_flags, vector_type};
use super::linalg::batch_offsets;
use super::{clif_type, Lowerer};
use crate::Result;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{BlockArg, InstBuilder, Type, Value};
use cranelift_module::Module;
use cranelora_graph::{DType, Graph, NodeId, Op};

/// Default of [`crate::JitOptions::inline_matmul_macs`]: products of at
/// most this many multiply-adds are emitted inline. Measured (docs/jit.md
/// "Small products inline"): inline is 2–3× faster than the call up to
/// 640 MACs (`1×64·64×10`) and ~0.8× at 4096 (`1×64·64×64`, where the
/// AVX-512 GEMM's 4× wider vectors pay for the call).
pub const DEFAULT_INLINE_MACS: usize = 2048;

/// At most this many register blocks per inline product (bounds the code
/// size: each block is one depth loop).
pub const MAX_BLOCKS: usize = 64;

/// Accumulator registers a block aims for (x86-64 has 16 xmm registers:
/// 8 accumulators, the B vectors and the A splats).
const TARGET_ACCS: usize = 8;

/// Whether MatMul `id` is emitted inline (module docs) when products of at
/// most `max_macs` multiply-adds are. A GEMM epilogue matcher must not
/// take such a product.
pub fn is_inline_product(g: &Graph, id: NodeId, max_macs: usize) -> bool {
    let Some(node) = g.node(id) else {
        return false;
    };
    if !matches!(node.op, Op::MatMul) || !matches!(node.dtype, DType::F32 | DType::F64) {
        return false;
    }
    let Some(s) = Shape::of(g, id) else {
        return false;
    };
    let macs = s.count.saturating_mul(s.m * s.k * s.n);
    // The emitted loads and stores use i32 displacements: every operand and
    // the output must stay below 2 GiB (only a huge threshold reaches this).
    let bytes = |n: NodeId| {
        g.node(n).map_or(usize::MAX, |nd| {
            nd.shape.numel().saturating_mul(nd.dtype.size_bytes())
        })
    };
    let small_buffers = g
        .operands(id)
        .iter()
        .chain([&id])
        .all(|&n| bytes(n) < i32::MAX as usize);
    macs <= max_macs && small_buffers && s.count * blocks_per_entry(s.m, s.n, s.lanes) <= MAX_BLOCKS
}

/// The dims of a MatMul node.
#[derive(Clone, Copy)]
struct Shape {
    /// Batch entries.
    count: usize,
    m: usize,
    k: usize,
    n: usize,
    /// Lanes of the dtype's vector.
    lanes: usize,
}

impl Shape {
    fn of(g: &Graph, id: NodeId) -> Option<Self> {
        let node = g.node(id)?;
        let ops = g.operands(id);
        let a = g.node(*ops.first()?)?.shape.dims();
        let b = g.node(*ops.get(1)?)?.shape.dims();
        let out = node.shape.dims();
        if a.len() < 2 || b.len() < 2 || out.len() < 2 {
            return None;
        }
        Some(Self {
            count: out[..out.len() - 2].iter().product(),
            m: a[a.len() - 2],
            k: a[a.len() - 1],
            n: b[b.len() - 1],
            lanes: vector_type(node.dtype)?.1,
        })
    }
}

/// Rows and vectors per block for `m` rows.
fn blocking(m: usize) -> (usize, usize) {
    let mr = m.clamp(1, 4);
    (mr, TARGET_ACCS / mr)
}

/// The column starts of an output row: full vectors, then one overlapping
/// vector ending at `n` if `n` is not a multiple of `lanes` (module docs);
/// empty when `n < lanes` (scalar columns).
fn vector_columns(n: usize, lanes: usize) -> Vec<usize> {
    if n < lanes {
        return Vec::new();
    }
    let mut cols: Vec<usize> = (0..n / lanes).map(|v| v * lanes).collect();
    if !n.is_multiple_of(lanes) {
        cols.push(n - lanes);
    }
    cols
}

/// Register blocks of one batch entry.
fn blocks_per_entry(m: usize, n: usize, lanes: usize) -> usize {
    let (mr, nr) = blocking(m);
    let row_blocks = m.div_ceil(mr);
    let width = vector_columns(n, lanes).len().max(usize::from(n > 0));
    row_blocks * width.div_ceil(nr)
}

/// One register block: `rows` rows of A (pointer to the first) times the
/// columns `cols` of B, into C.
struct Block {
    rows: usize,
    cols: Vec<usize>,
    /// Vector (`true`) or scalar columns.
    vector: bool,
    /// Byte offsets of the block's first A row, B, and first C row from
    /// the operands' addresses.
    a_off: i64,
    b_off: i64,
    c_off: i64,
}

/// What every block of one product shares.
struct Ctx {
    a: Value,
    b: Value,
    c: Value,
    k: usize,
    n: usize,
    size: i64,
    /// Scalar and vector CLIF types.
    sty: Type,
    vty: Type,
    fma: bool,
}

/// Lowers MatMul `id` inline (the caller checked [`is_inline_product`]).
pub(crate) fn lower(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let g = l.graph;
    let node = l.node_of(id);
    let s = Shape::of(g, id).expect("internal: checked by is_inline_product");
    let (vty, _) = vector_type(node.dtype).expect("internal: float product");
    let ops = g.operands(id);
    let dims = |i: usize| super::operand_dims(g, id, i);
    let offsets = batch_offsets(&dims(0), &dims(1), node.shape.dims());
    let ctx = Ctx {
        a: l.addr(ops[0]),
        b: l.addr(ops[1]),
        c: l.addr(id),
        k: s.k,
        n: s.n,
        size: node.dtype.size_bytes() as i64,
        sty: clif_type(node.dtype),
        vty,
        fma: host_has_fma(l),
    };
    let (mr, nr) = blocking(s.m);
    let vcols = vector_columns(s.n, s.lanes);
    let (chunks, vector): (Vec<Vec<usize>>, bool) = if vcols.is_empty() {
        (vec![(0..s.n).collect()], false)
    } else {
        (vcols.chunks(nr).map(<[usize]>::to_vec).collect(), true)
    };
    for (e, &(oa, ob)) in offsets.iter().enumerate() {
        for r0 in (0..s.m).step_by(mr) {
            for cols in &chunks {
                let block = Block {
                    rows: mr.min(s.m - r0),
                    cols: cols.clone(),
                    vector,
                    a_off: ((oa + r0 * s.k) as i64) * ctx.size,
                    b_off: ob as i64 * ctx.size,
                    c_off: ((e * s.m + r0) * s.n) as i64 * ctx.size,
                };
                emit_block(l, &ctx, &block);
            }
        }
    }
    Ok(())
}

/// Whether the host ISA has FMA (else `fma` would be a libm call per lane).
fn host_has_fma(l: &Lowerer<'_>) -> bool {
    let flags = l.module.isa().isa_flags();
    flags
        .iter()
        .any(|f| f.name == "has_fma" && f.as_bool() == Some(true))
}

/// Emits one block: zeroed accumulators, the depth steps (loop and
/// straight-line rest), the partial sums added, the stores.
fn emit_block(l: &mut Lowerer<'_>, cx: &Ctx, blk: &Block) {
    let per_set = blk.rows * blk.cols.len();
    let sets = (TARGET_ACCS / per_set).clamp(1, cx.k.max(1));
    let unroll = sets * 2usize.div_ceil(sets);
    let zero = zero(l, cx, blk.vector);
    let mut accs = vec![zero; sets * per_set];
    let a0 = l.b.ins().iadd_imm_s(cx.a, blk.a_off);
    let b0 = l.b.ins().iadd_imm_s(cx.b, blk.b_off);
    let iterations = cx.k / unroll;
    let (mut pa, mut pb, mut done) = (a0, b0, 0);
    if iterations > 1 {
        (pa, pb, accs) = depth_loop(l, cx, blk, (a0, b0), accs, (unroll, iterations));
        done = iterations * unroll;
    }
    for j in 0..cx.k - done {
        let set = (done + j) % sets;
        step(
            l,
            cx,
            blk,
            (pa, pb),
            j,
            &mut accs[set * per_set..][..per_set],
        );
    }
    let mut total = accs[..per_set].to_vec();
    for set in 1..sets {
        for (t, &x) in total.iter_mut().zip(&accs[set * per_set..][..per_set]) {
            *t = l.b.ins().fadd(*t, x);
        }
    }
    let flags = vector_flags();
    for r in 0..blk.rows {
        for (ci, &col) in blk.cols.iter().enumerate() {
            let off = blk.c_off + ((r * cx.n + col) as i64) * cx.size;
            let v = total[r * blk.cols.len() + ci];
            l.b.ins().store(flags, v, cx.c, i32_offset(off));
        }
    }
}

/// The depth loop: `iterations` × `unroll` steps with the A and B
/// pointers and the accumulators as block parameters (at least one
/// iteration, so a do-while). Returns the pointers and accumulators after it.
fn depth_loop(
    l: &mut Lowerer<'_>,
    cx: &Ctx,
    blk: &Block,
    (a0, b0): (Value, Value),
    accs: Vec<Value>,
    (unroll, iterations): (usize, usize),
) -> (Value, Value, Vec<Value>) {
    let ty = if blk.vector { cx.vty } else { cx.sty };
    let per_set = blk.rows * blk.cols.len();
    let body = l.b.create_block();
    let exit = l.b.create_block();
    for blk_id in [body, exit] {
        l.b.append_block_param(blk_id, l.ptr);
        l.b.append_block_param(blk_id, l.ptr);
        for _ in 0..accs.len() {
            l.b.append_block_param(blk_id, ty);
        }
    }
    let a_end =
        l.b.ins()
            .iadd_imm_s(a0, (iterations * unroll) as i64 * cx.size);
    let args = |vals: &[Value]| vals.iter().map(|&v| BlockArg::from(v)).collect::<Vec<_>>();
    let first: Vec<Value> = [a0, b0].into_iter().chain(accs).collect();
    l.b.ins().jump(body, &args(&first));
    l.b.switch_to_block(body);
    let params = l.b.block_params(body).to_vec();
    let (pa, pb) = (params[0], params[1]);
    let mut accs = params[2..].to_vec();
    let sets = accs.len() / per_set;
    for j in 0..unroll {
        let set = j % sets;
        step(
            l,
            cx,
            blk,
            (pa, pb),
            j,
            &mut accs[set * per_set..][..per_set],
        );
    }
    let na = l.b.ins().iadd_imm_s(pa, unroll as i64 * cx.size);
    let nb = l.b.ins().iadd_imm_s(pb, (unroll * cx.n) as i64 * cx.size);
    let more = l.b.ins().icmp(IntCC::UnsignedLessThan, na, a_end);
    let next: Vec<Value> = [na, nb].into_iter().chain(accs).collect();
    let next = args(&next);
    l.b.ins().brif(more, body, &next, exit, &next);
    l.b.seal_block(body);
    l.b.switch_to_block(exit);
    l.b.seal_block(exit);
    let out = l.b.block_params(exit).to_vec();
    (out[0], out[1], out[2..].to_vec())
}

/// Depth step `j` (relative to the pointers `pa`, `pb`) accumulated into
/// one set of `accs` (row-major over rows × columns). The A scalars are
/// loaded (and splat) first, each B vector right before its FMAs, so a B
/// vector is live only while it is used (with one row, its single use lets
/// Cranelift sink the load into the FMA) and 8 accumulators, the splats and
/// the B vector fit the 16 xmm registers.
fn step(
    l: &mut Lowerer<'_>,
    cx: &Ctx,
    blk: &Block,
    (pa, pb): (Value, Value),
    j: usize,
    accs: &mut [Value],
) {
    let flags = vector_flags();
    let ty = if blk.vector { cx.vty } else { cx.sty };
    let a: Vec<Value> = (0..blk.rows)
        .map(|r| {
            let off = ((r * cx.k + j) as i64) * cx.size;
            let a = l.b.ins().load(cx.sty, flags, pa, i32_offset(off));
            match blk.vector {
                true => l.b.ins().splat(cx.vty, a),
                false => a,
            }
        })
        .collect();
    let width = blk.cols.len();
    for (ci, &col) in blk.cols.iter().enumerate() {
        let off = ((j * cx.n + col) as i64) * cx.size;
        let b = l.b.ins().load(ty, flags, pb, i32_offset(off));
        for (r, &a) in a.iter().enumerate() {
            let acc = &mut accs[r * width + ci];
            *acc = if cx.fma {
                l.b.ins().fma(a, b, *acc)
            } else {
                let p = l.b.ins().fmul(a, b);
                l.b.ins().fadd(*acc, p)
            };
        }
    }
}

/// A zero of the block's type.
fn zero(l: &mut Lowerer<'_>, cx: &Ctx, vector: bool) -> Value {
    let z = match cx.sty.bytes() {
        4 => l.b.ins().f32const(0.0),
        _ => l.b.ins().f64const(0.0),
    };
    if vector {
        l.b.ins().splat(cx.vty, z)
    } else {
        z
    }
}

/// A byte offset as a load/store immediate (products here are small, so
/// it always fits).
fn i32_offset(off: i64) -> i32 {
    i32::try_from(off).expect("internal: is_inline_product keeps every buffer below 2 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_columns_overlap_the_last_vector() {
        assert_eq!(vector_columns(10, 4), vec![0, 4, 6]);
        assert_eq!(vector_columns(8, 4), vec![0, 4]);
        assert_eq!(vector_columns(3, 4), Vec::<usize>::new());
        assert_eq!(vector_columns(5, 2), vec![0, 2, 3]);
    }

    #[test]
    fn blocking_keeps_eight_accumulators() {
        assert_eq!(blocking(1), (1, 8));
        assert_eq!(blocking(2), (2, 4));
        assert_eq!(blocking(7), (4, 2));
        // W2's 1×64·64×64 f32: 16 vectors in 2 blocks; 64×10: 3 vectors in 1.
        assert_eq!(blocks_per_entry(1, 64, 4), 2);
        assert_eq!(blocks_per_entry(1, 10, 4), 1);
        assert_eq!(blocks_per_entry(5, 3, 4), 2);
    }
}
