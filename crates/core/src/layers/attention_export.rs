//! The graph export of [`MultiHeadAttention`]: its eval-mode forward as
//! graph nodes, step for step (see `attention.rs` for the math).
//!
//! Masks are graph inputs: the padding mask is an i64 `[batch, seq_k]`
//! input (non-zero = attend), the causal mask a constant `[seq, seq_k]`.
//! Hidden scores are replaced (Where) by the dtype's lowest finite value
//! rather than −∞, so softmax and its gradient stay finite; a query row
//! with no visible key — which the graph softmax would make uniform — is
//! then set to zero (Where on "the row keeps some key"), which is the eager
//! layer's definition, so its context vector is zero.

use super::MultiHeadAttention;
use crate::export::{self, ExportContext, NodeInput, NodeInputs};
use crate::layer::Layer;
use crate::{Error, Result, Tensor};
use cranelora_graph::{DType, NodeId, Op, ReduceKind, Shape, TensorData};
use cranelora_kernels::Scalar;

const KIND: &str = "MultiHeadAttention";

/// The ops the attention itself (not its projections) emits.
pub(super) fn own_ops_lowerable() -> bool {
    let any = Shape::scalar();
    let reduce = Op::Reduce {
        kind: ReduceKind::Max,
        axes: vec![3],
        keepdims: true,
    };
    export::lowerable(&[
        Op::Reshape { shape: any },
        Op::Transpose { perm: vec![] },
        Op::MatMul,
        Op::Scale(1.0),
        Op::Softmax { axis: 3 },
        Op::Where,
        Op::Mul,
        Op::Ne,
        Op::Cast(DType::F32),
        Op::Slice { ranges: vec![] },
        reduce,
    ])
}

/// `[batch, seq]` of a `[batch, seq, d]` input, checked as `forward` checks it.
fn check<T: Scalar>(
    mha: &MultiHeadAttention<T>,
    what: &str,
    dims: &[usize],
    batch: Option<usize>,
) -> Result<(usize, usize)> {
    let d = mha.embed_dim();
    match *dims {
        [b, s, last] if last == d && batch.is_none_or(|batch| batch == b) => Ok((b, s)),
        _ => {
            let b = batch.map_or("batch".to_string(), |b| b.to_string());
            Err(Error::shape(KIND, what, format!("[{b}, seq, {d}]"), dims))
        }
    }
}

/// The projection child `name` applied to `x`, its output checked to keep `x`'s shape.
fn project<T: Scalar>(
    mha: &MultiHeadAttention<T>,
    ctx: &mut ExportContext<'_>,
    name: &str,
    x: NodeId,
) -> Result<NodeId> {
    let child = mha.child(name)?;
    let y = ctx.child(name, |ctx| child.export_graph(ctx, &[NodeInput::Float(x)]))?;
    let (xd, yd) = (ctx.dims(x)?, ctx.dims(y)?);
    if yd != xd {
        let (what, expected) = (format!("{name} output"), format!("{xd:?}"));
        return Err(Error::shape(KIND, &what, expected, &yd));
    }
    Ok(y)
}

/// `[b, s, h·dh]` → `[b, h, s, dh]` (nodes `<path>.<name>_split`, `<path>.<name>_heads`).
fn split_heads(ctx: &mut ExportContext<'_>, name: &str, t: NodeId, h: usize) -> Result<NodeId> {
    let [b, s, d]: [usize; 3] = ctx.dims(t)?.try_into().map_err(|d: Vec<usize>| {
        Error::shape(KIND, &format!("{name} output"), "[batch, seq, d]", &d)
    })?;
    let split = ctx
        .named(&format!("{name}_split"))
        .reshape(t, [b, s, h, d / h])?;
    let heads = ctx.named(&format!("{name}_heads"));
    Ok(heads.transpose(split, &[0, 2, 1, 3])?)
}

/// The keep mask (1 = attend) in the float dtype, broadcastable to the
/// scores `[b, h, sq, sk]`, or `None` when nothing is hidden.
fn keep_mask<T: Scalar>(
    mha: &MultiHeadAttention<T>,
    ctx: &mut ExportContext<'_>,
    mask: Option<NodeId>,
    (batch, sq, sk): (usize, usize, usize),
) -> Result<Option<NodeId>> {
    let dtype = T::DTYPE;
    let padding = match mask {
        None => None,
        Some(m) => {
            let mask_dtype = ctx.graph().node(m).map_or(DType::I64, |n| n.dtype);
            let zero = ctx.constant("mask_zero", TensorData::scalar(0.0, mask_dtype))?;
            let nonzero = ctx.named("mask_keep").not_equal(m, zero)?;
            let nonzero = ctx.named("mask_cast").cast(nonzero, dtype)?;
            Some(
                ctx.named("mask_reshape")
                    .reshape(nonzero, [batch, 1, 1, sk])?,
            )
        }
    };
    let causal = if mha.causal() {
        // Key j is hidden from query i when j > i (top-left aligned).
        let keep = (0..sq * sk).map(|p| {
            if p % sk <= p / sk {
                T::one()
            } else {
                T::zero()
            }
        });
        let keep = Tensor::<T>::from_vec(keep.collect(), &[sq, sk])?;
        Some(ctx.constant("causal_mask", export::tensor_to_data(&keep))?)
    } else {
        None
    };
    Ok(match (padding, causal) {
        (Some(p), Some(c)) => Some(ctx.named("keep").mul(p, c)?),
        (p, c) => p.or(c),
    })
}

/// Softmax over the keys with hidden scores excluded; rows with no visible key are zero.
fn masked_softmax<T: Scalar>(
    ctx: &mut ExportContext<'_>,
    scores: NodeId,
    keep: Option<NodeId>,
    padding: bool,
) -> Result<NodeId> {
    let Some(keep) = keep else {
        return Ok(ctx.named("softmax").softmax(scores, 3)?);
    };
    let dtype = T::DTYPE;
    let lowest = match dtype {
        DType::F32 => f64::from(f32::MIN),
        _ => f64::MIN,
    };
    let lowest = ctx.constant("mask_fill", TensorData::scalar(lowest, dtype))?;
    let masked = ctx.named("masked_scores").select(keep, scores, lowest)?;
    let probs = ctx.named("softmax").softmax(masked, 3)?;
    if !padding {
        // The causal mask alone always leaves key 0 visible.
        return Ok(probs);
    }
    let any = ctx.named("row_has_keys");
    let any = any.reduce(keep, ReduceKind::Max, &[3], true)?;
    let zero = ctx.constant("zero", TensorData::scalar(0.0, dtype))?;
    Ok(ctx.named("probs").select(any, probs, zero)?)
}

/// [`MultiHeadAttention`]'s eval-mode forward as graph nodes.
pub(super) fn export<T: Scalar>(
    mha: &MultiHeadAttention<T>,
    ctx: &mut ExportContext<'_>,
    inputs: &[NodeInput],
) -> Result<NodeId> {
    let inp = NodeInputs::new(inputs, KIND);
    let x = inp.float(0)?;
    let (batch, sq) = check(mha, "input", &ctx.dims(x)?, None)?;
    let src = inp.float(1).unwrap_or(x);
    let (_, sk) = check(mha, "key/value input", &ctx.dims(src)?, Some(batch))?;
    let mask = inp.mask();
    if let Some(m) = mask {
        let dims = ctx.dims(m)?;
        if dims != [batch, sk] {
            let expected = format!("[{batch}, {sk}] (batch, keys)");
            return Err(Error::shape(KIND, "mask", expected, &dims));
        }
    }
    let h = mha.num_heads();
    let [q, k, v] = if mha.is_fused() {
        if src != x {
            let msg = "the fused (in_proj) form is self-attention only: one float input";
            return Err(Error::config(KIND, msg));
        }
        project_fused(mha, ctx, x)?
    } else {
        [
            project(mha, ctx, "query", x)?,
            project(mha, ctx, "key", src)?,
            project(mha, ctx, "value", src)?,
        ]
    };
    let q = split_heads(ctx, "query", q, h)?;
    let k = split_heads(ctx, "key", k, h)?;
    let v = split_heads(ctx, "value", v, h)?;
    // scores = Q·Kᵀ/√dh  [b, h, sq, sk]
    let kt = ctx.named("key_t").transpose(k, &[0, 1, 3, 2])?;
    let scores = ctx.named("scores").matmul(q, kt)?;
    let scale = 1.0 / (mha.head_dim() as f64).sqrt();
    let scores = ctx.named("scores_scaled").scale(scores, scale)?;
    let keep = keep_mask(mha, ctx, mask, (batch, sq, sk))?;
    let probs = masked_softmax::<T>(ctx, scores, keep, mask.is_some())?;
    // context = P·V, heads merged back: [b, h, sq, dh] → [b, sq, d]
    let context = ctx.named("context").matmul(probs, v)?;
    let context = ctx
        .named("context_heads")
        .transpose(context, &[0, 2, 1, 3])?;
    let merged = ctx.named("context_merge");
    let merged = merged.reshape(context, [batch, sq, mha.embed_dim()])?;
    project(mha, ctx, mha.output_name(), merged)
}

/// `in_proj(x)` (`[b, s, 3d]`) sliced into Q, K, V (`<path>.q_slice`, …).
fn project_fused<T: Scalar>(
    mha: &MultiHeadAttention<T>,
    ctx: &mut ExportContext<'_>,
    x: NodeId,
) -> Result<[NodeId; 3]> {
    let child = mha.child("in_proj")?;
    let qkv = ctx.child("in_proj", |ctx| {
        child.export_graph(ctx, &[NodeInput::Float(x)])
    })?;
    let (xd, yd) = (ctx.dims(x)?, ctx.dims(qkv)?);
    let d = mha.embed_dim();
    if yd.len() != 3 || yd[..2] != xd[..2] || yd[2] != 3 * d {
        let expected = format!("[{}, {}, {}]", xd[0], xd[1], 3 * d);
        return Err(Error::shape(KIND, "in_proj output", expected, &yd));
    }
    let mut part = |i: usize, name: &str| -> Result<NodeId> {
        let ranges = [0..yd[0], 0..yd[1], i * d..(i + 1) * d];
        Ok(ctx.named(name).slice(qkv, &ranges)?)
    };
    Ok([
        part(0, "q_slice")?,
        part(1, "k_slice")?,
        part(2, "v_slice")?,
    ])
}
