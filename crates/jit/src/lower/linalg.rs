//! MatMul and the convolutions: one call each to a runtime helper running
//! the kernels crate's GEMM (the same as eager and the interpreter), with
//! its plan (dims, batch offsets, prepacked weights) built here at compile
//! time and its workspace in the arena's scratch area.

use super::heads::{self, HeadLayouts};
use super::Lowerer;
use crate::runtime::{ConvKind, ConvPlan, MatMulPlan};
use crate::Result;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelora_graph::{DType, Graph, NodeId, Op, TensorData};
use cranelora_kernels::gemm::{
    batched_workspace_len, EpilogueSpec, MatRef, PackedRhs, StridedLayout,
};
use cranelora_kernels::Scalar;

/// Whether operand `b` of a MatMul is a 2-D constant, packed at compile time.
pub(crate) fn packable(g: &Graph, b: NodeId) -> bool {
    g.node(b)
        .is_some_and(|n| matches!(n.op, Op::Constant(_)) && n.shape.rank() == 2)
}

/// Element offsets of each batch entry's A and B (contiguous operands),
/// broadcast to the output's batch dims.
pub(crate) fn batch_offsets(a: &[usize], b: &[usize], out: &[usize]) -> Vec<(usize, usize)> {
    let batch = &out[..out.len() - 2];
    let oa = strided_batch_offsets(a, &heads::contiguous_strides(a), batch);
    let ob = strided_batch_offsets(b, &heads::contiguous_strides(b), batch);
    oa.into_iter().zip(ob).collect()
}

/// Element offset of each batch entry of an operand whose dims have
/// `strides`, broadcast to the output's batch dims `batch` (size-1 and
/// missing dims repeat).
fn strided_batch_offsets(dims: &[usize], strides: &[usize], batch: &[usize]) -> Vec<usize> {
    let own = &dims[..dims.len() - 2];
    let lead = batch.len() - own.len();
    let step: Vec<usize> = (0..batch.len())
        .map(|d| match d.checked_sub(lead) {
            Some(o) if own[o] != 1 => strides[o],
            _ => 0,
        })
        .collect();
    let count: usize = batch.iter().product();
    (0..count)
        .map(|mut i| {
            let mut off = 0;
            for d in (0..batch.len()).rev() {
                off += (i % batch[d]) * step[d];
                i /= batch[d];
            }
            off
        })
        .collect()
}

/// The prepacked B of a MatMul whose right operand is a 2-D constant,
/// read in place when `typed` gives its row-major values (no copy, no f64
/// round trip).
fn packed_rhs<T: Scalar>(
    g: &Graph,
    b: NodeId,
    typed: impl Fn(&TensorData) -> Option<&[T]>,
) -> Option<PackedRhs<T>> {
    let node = g.node(b)?;
    let Op::Constant(data) = &node.op else {
        return None;
    };
    if !packable(g, b) {
        return None;
    }
    let (k, n) = (node.shape.dims()[0], node.shape.dims()[1]);
    let converted: Vec<T>;
    let values = match typed(data) {
        Some(values) => values,
        None => {
            converted = data
                .to_f64_vec()
                .into_iter()
                .map(T::from_f64_lossy)
                .collect();
            &converted
        }
    };
    Some(PackedRhs::pack(MatRef::new(values, k, n).ok()?))
}

/// The plan of a MatMul of element type T: operands read through the view
/// Transposes of `heads`, the output written into its merge Transpose's
/// layout when `heads` says so (`lower/heads.rs`).
fn matmul_plan<T: Scalar>(
    g: &Graph,
    heads: &HeadLayouts,
    id: NodeId,
    workspace: usize,
    packed: Option<PackedRhs<T>>,
    epilogue: EpilogueSpec,
) -> Result<MatMulPlan<T>> {
    let ops = g.operands(id);
    let dims = |n: NodeId| g.node(n).expect("internal: live node").shape.dims();
    let (a, b, out) = (dims(ops[0]), dims(ops[1]), dims(id));
    let (base_a, sa) = heads::operand_strides(g, heads, ops[0]);
    let (base_b, sb) = heads::operand_strides(g, heads, ops[1]);
    let (r, ra, rb) = (out.len(), a.len(), b.len());
    let (m, k, n) = (a[ra - 2], a[ra - 1], b[rb - 1]);
    let batch = &out[..r - 2];
    let (oa, ob) = (
        strided_batch_offsets(a, &sa, batch),
        strided_batch_offsets(b, &sb, batch),
    );
    let sc = match heads.merged.get(&id) {
        Some(&t) => heads::merged_output_strides(g, t),
        None => heads::contiguous_strides(out),
    };
    let strided = (sa[ra - 2], sa[ra - 1]) != (k, 1)
        || (sb[rb - 2], sb[rb - 1]) != (n, 1)
        || sc != heads::contiguous_strides(out);
    let layout = if strided {
        let c = strided_batch_offsets(out, &sc, batch);
        let l = StridedLayout::new(
            (m, n),
            (sa[ra - 2], sa[ra - 1]),
            (sb[rb - 2], sb[rb - 1]),
            sc[r - 2],
            c,
        );
        Some(l.map_err(|e| crate::Error::Unsupported {
            op: format!("MatMul output layout ({e})"),
            node: g.desc(id),
        })?)
    } else {
        None
    };
    let numel = |n: NodeId| g.node(n).expect("internal: live node").shape.numel();
    Ok(MatMulPlan {
        m,
        k,
        n,
        batch: oa.into_iter().zip(ob).collect(),
        packed,
        lens: (numel(base_a), numel(base_b)),
        workspace,
        epilogue,
        layout,
    })
}

/// Scratch bytes a MatMul's helper needs: the workspace of the whole
/// batch ([`batched_workspace_len`]), so small entries can run on several
/// threads at once.
pub(crate) fn matmul_scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let node = g.node(id).expect("internal: live node");
    let ops = g.operands(id);
    let dims = |i: usize| super::operand_dims(g, id, i);
    let (a, b, out) = (dims(0), dims(1), node.shape.dims());
    let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
    let count = out[..out.len() - 2].iter().product();
    let packed = packable(g, ops[1]);
    let elems = match node.dtype {
        DType::F64 => batched_workspace_len::<f64>(count, m, n, k, packed),
        _ => batched_workspace_len::<f32>(count, m, n, k, packed),
    };
    elems * node.dtype.size_bytes()
}

/// The operands of a MatMul epilogue: the nodes whose buffers the helper
/// reads for each step of `spec` (see [`MatMulPlan`] for their shapes).
#[derive(Clone, Debug, Default)]
pub struct EpilogueOperands {
    /// What the epilogue does.
    pub spec: EpilogueSpec,
    /// `X·A` of the LoRA term, `(batch·m) × r` elements.
    pub lora_xa: Option<NodeId>,
    /// The adapter's `B`, `r × n`; with `lora_ids`, the stack of N
    /// adapters' `B`, `[N, r, n]`.
    pub lora_b: Option<NodeId>,
    /// Per-row adapter ids (i64, `batch·m`, −1 = none) choosing each row's
    /// block of `lora_b` (`spec.lora_stack`: a mixed-adapter batch).
    pub lora_ids: Option<NodeId>,
    /// A runtime factor of the LoRA term (one element), multiplying the
    /// constant `s` of `spec.lora`; none: `s` alone.
    pub lora_scale: Option<NodeId>,
    /// Per-column scale, `n` elements.
    pub col_scale: Option<NodeId>,
    /// Per-column bias, `n` elements.
    pub bias: Option<NodeId>,
    /// Residual, `(batch·m) × n` elements.
    pub residual: Option<NodeId>,
    /// The node whose buffer receives the activation's derivative at the
    /// pre-activation (`spec.act_grad`: a training forward's `GeluGrad` /
    /// `GeluTanhGrad` of the same pre-activation), `(batch·m) × n`.
    pub act_grad: Option<NodeId>,
    /// The node whose buffer receives the result (the last node the
    /// epilogue stands for, see `lower/epilogue.rs`); the MatMul's own
    /// buffer when `None`.
    pub dest: Option<NodeId>,
}

pub use super::small_matmul::is_inline_product;

/// Lowers a MatMul: inline vector code when it is small
/// ([`is_inline_product`], `lower/small_matmul.rs`), else one helper call
/// (writing into its merge Transpose's buffer when it has one,
/// `lower/heads.rs`).
pub(crate) fn matmul(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    if is_inline_product(l.graph, id, l.inline_macs) {
        return super::small_matmul::lower(l, id);
    }
    let ops = EpilogueOperands {
        dest: l.heads.merged.get(&id).copied(),
        ..EpilogueOperands::default()
    };
    matmul_with_epilogue(l, id, &ops)
}

/// Lowers MatMul `id` followed by the epilogue `ep` to one helper call:
/// the node's buffer receives `epilogue(a·b)`.
///
/// This is the entry point for fusing MatMul → Add(bias) → activation
/// (→ Add(residual)) patterns: the caller checks the pattern (shapes,
/// dtypes, that the operand nodes are computed before `id`, and that the
/// fused nodes have no other readers) and then lowers only `id` here.
///
/// # Errors
/// [`JitError::Unsupported`] if a step of `ep.spec` has no operand node.
pub(crate) fn matmul_with_epilogue(
    l: &mut Lowerer<'_>,
    id: NodeId,
    ep: &EpilogueOperands,
) -> Result<()> {
    let spec = ep.spec;
    let needed = [
        (spec.lora.is_some(), ep.lora_xa),
        (spec.lora.is_some(), ep.lora_b),
        (spec.lora_stack.is_some(), ep.lora_ids),
        (spec.col_scale, ep.col_scale),
        (spec.bias, ep.bias),
        (spec.residual.is_some(), ep.residual),
        (spec.act_grad, ep.act_grad),
    ];
    if needed.iter().any(|(on, node)| *on && node.is_none()) {
        return Err(crate::Error::Unsupported {
            op: "MatMul epilogue without its operand".into(),
            node: l.graph.desc(id),
        });
    }
    let d = l.node_of(id).dtype;
    let ws = crate::memory::scratch_bytes(l.graph, id) / d.size_bytes();
    let ops = l.graph.operands(id);
    let (name, plan, packed) = match d {
        DType::F64 => {
            let b = packed_rhs(l.graph, ops[1], |d| d.as_f64()?.as_slice());
            let p = Box::new(matmul_plan::<f64>(l.graph, l.heads, id, ws, b, spec)?);
            let packed = p.packed.is_some();
            let addr = &*p as *const MatMulPlan<f64> as usize;
            l.plans.matmul_f64.push(p);
            ("cranelora_matmul_f64", addr, packed)
        }
        _ => {
            let b = packed_rhs(l.graph, ops[1], |d| d.as_f32()?.as_slice());
            let p = Box::new(matmul_plan::<f32>(l.graph, l.heads, id, ws, b, spec)?);
            let packed = p.packed.is_some();
            let addr = &*p as *const MatMulPlan<f32> as usize;
            l.plans.matmul_f32.push(p);
            ("cranelora_matmul_f32", addr, packed)
        }
    };
    let packed_slot = match packed {
        true => None,
        false => packed_param_slot(l, ops[1]),
    };
    let plan = l.iconst_ptr(plan);
    let a = l.addr(ops[0]);
    let b = if packed {
        l.iconst_ptr(0)
    } else {
        l.addr(ops[1])
    };
    let c = l.addr(ep.dest.unwrap_or(id));
    let scratch = l.scratch();
    let mut args = vec![plan, a, b, c, scratch];
    let operands = [
        ep.lora_xa,
        ep.lora_b,
        ep.col_scale,
        ep.bias,
        ep.residual,
        ep.lora_scale.filter(|_| spec.lora.is_some()),
        ep.lora_ids.filter(|_| spec.lora_stack.is_some()),
        ep.act_grad.filter(|_| spec.act_grad),
    ];
    for node in operands {
        let v = match node {
            Some(n) => l.addr(n),
            None => l.iconst_ptr(0),
        };
        args.push(v);
    }
    let packed_b = match packed_slot {
        // The slot's pointer follows the output pointers (`compiled.rs`).
        Some(j) => {
            let off = (l.graph.outputs().len() + j) * l.ptr.bytes() as usize;
            let off = i32::try_from(off).map_err(|_| crate::Error::Unsupported {
                op: "a pointer table over 2 GiB".into(),
                node: l.graph.desc(id),
            })?;
            let table = l.args.outputs;
            l.b.ins().load(l.ptr, super::flags(), table, off)
        }
        None => l.iconst_ptr(0),
    };
    args.push(packed_b);
    let ptr = l.ptr;
    let r = l.call(name, &vec![ptr; args.len()], &[types::I32], &args)?;
    l.check_status(id, r[0]);
    Ok(())
}

/// The packed-weight slot of `b` when it is a 2-D Parameter (a bound
/// weight the caller may pass packed, `Bindings::insert_packed`).
fn packed_param_slot(l: &mut Lowerer<'_>, b: NodeId) -> Option<usize> {
    let node = l.graph.node(b)?;
    if !matches!(node.op, Op::Parameter { .. }) || node.shape.rank() != 2 {
        return None;
    }
    let Some(&crate::memory::Loc::Param(i)) = l.locs.get(&b) else {
        return None;
    };
    let slots = &mut l.plans.packed_params;
    Some(slots.iter().position(|&p| p == i).unwrap_or_else(|| {
        slots.push(i);
        slots.len() - 1
    }))
}

/// Calls a `(plan, p, p, p, scratch) -> i32` helper and checks its status.
fn call_checked(l: &mut Lowerer<'_>, id: NodeId, name: &'static str, args: &[Value]) -> Result<()> {
    let ptr = l.ptr;
    let r = l.call(name, &[ptr; 5], &[types::I32], args)?;
    l.check_status(id, r[0]);
    Ok(())
}

/// The plan of a Conv2d, Conv2dInputGrad or Conv2dWeightGrad node.
pub(crate) fn conv_dims(g: &Graph, id: NodeId) -> ConvPlan {
    let node = g.node(id).expect("internal: live node");
    let dims = |i: usize| super::operand_dims(g, id, i);
    let (x, y, out) = (dims(0), dims(1), node.shape.dims().to_vec());
    // (kind, params, [N, C, H, W] of the conv input, O, (kh, kw))
    let (kind, params, input, o, kernel) = match &node.op {
        Op::Conv2d(p) => (ConvKind::Forward, *p, x.clone(), y[0], (y[2], y[3])),
        Op::Conv2dInputGrad { params, .. } => (
            ConvKind::InputGrad,
            *params,
            out.clone(),
            y[0],
            (y[2], y[3]),
        ),
        Op::Conv2dWeightGrad { params, kernel } => {
            (ConvKind::WeightGrad, *params, x.clone(), y[1], *kernel)
        }
        _ => unreachable!("internal: called for convolutions"),
    };
    let geom = params.geometry(input[1], (input[2], input[3]), kernel);
    let size = node.dtype.size_bytes();
    let col = (geom.col_rows() * geom.col_cols()).next_multiple_of(crate::memory::ALIGN / size);
    ConvPlan {
        kind,
        geom,
        batch: input[0],
        out_channels: o,
        lens: (x.iter().product(), y.iter().product(), out.iter().product()),
        col_elems: col,
        workspace: 0,
        rows: geom.col_rows(),
        cols: geom.col_cols(),
    }
}

/// Lowers a convolution (or gradient) to one helper call.
pub(crate) fn conv(l: &mut Lowerer<'_>, id: NodeId) -> Result<()> {
    let d = l.node_of(id).dtype;
    let mut plan = conv_dims(l.graph, id);
    let total = crate::memory::scratch_bytes(l.graph, id) / d.size_bytes();
    plan.workspace = total - plan.col_elems;
    let plan = Box::new(plan);
    let addr = &*plan as *const ConvPlan as usize;
    l.plans.conv.push(plan);
    let name = match d {
        DType::F64 => "cranelora_conv_f64",
        _ => "cranelora_conv_f32",
    };
    let ops = l.graph.operands(id);
    let plan = l.iconst_ptr(addr);
    let x = l.addr(ops[0]);
    let y = l.addr(ops[1]);
    let out = l.addr(id);
    let scratch = l.scratch();
    call_checked(l, id, name, &[plan, x, y, out, scratch])
}
