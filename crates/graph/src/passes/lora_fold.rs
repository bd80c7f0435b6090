//! LoRA folding: a base product plus a low-rank update of constant weights
//! becomes one product with the update folded into the weight, computed
//! once, here, as a new Constant (the "jit-folded" mode).
//!
//! - Requires: a graph that passes [`verify`](crate::verify()); W, A, B
//!   must be Constant nodes. **A Parameter anywhere among W, A, B stops the
//!   fold**: Serving and Training graphs keep their adapters swappable.
//! - Guarantees: each matched branch is gone (its nodes are removed unless
//!   used elsewhere) and the result is computed by one product; the new
//!   weight is computed by the interpreter from the old constants.
//! - Tolerance: folding reorders the sums. With the exact sums equal, the
//!   folded result differs from the original by rounding only, about
//!   `k·ε·(|x|·(|W| + |s|·|A|·|B|))` per element (k the reduction length,
//!   ε the dtype's epsilon): a relative 1e-5 or so for f32 layers of a few
//!   hundred inputs, 1e-13 for f64. The tests use `rtol = 1e-4` (f32) and
//!   `1e-10` (f64) against the largest output.
//!
//! Rules, with s the product of the Scale nodes on the branch (outside
//! the B product and between A and B), x and ids matched by node identity:
//!
//! ```text
//! x·W + s·((x·A)·B)                      → x·(W + s·A·B)
//! (x·W + b) + s·((x·A)·B)                → x·(W + s·A·B) + b   (any Add order)
//! x·W + (b + s·((x·A)·B))                → x·(W + s·A·B) + b   (any Add order)
//! conv(x, W) + s·conv₁ₓ₁(conv(x, A), B)  → conv(x, W + s·B∘A)   (B∘A[o,c,…] = Σᵣ B[o,r]·A[r,c,…])
//! gather(W, ids) + s·(gather(A, ids)·B)  → gather(W + s·A·B, ids)
//! (x·W)⊙c, c a constant row [.., n]     → x·(W⊙c)             (DoRA's m/n)
//! ```
//!
//! **DoRA.** A DoRA layer computes `(m/n)⊙(x·W + s·(x·A)·B)` with `n` the
//! column norms of `V = W + s·A·B`. With all weights constant, constant
//! folding turns `m/n` into a constant row `c` (its subgraph has only
//! constant operands), the first rule turns the inner sum into `x·V`, and
//! the last rule gives `x·(V⊙c)` — PEFT's merged DoRA weight. With a
//! Parameter magnitude or adapter nothing folds.

use super::const_fold::evaluate_with;
use super::{constant, push_like, sweep, Changed, Pass};
use crate::{Conv2dParams, Graph, NodeId, Op, Result};
use std::sync::Arc;

/// Folds constant LoRA (and DoRA) updates into their base weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoraFold;

/// The product whose constant weight absorbs the update.
#[derive(Clone, Copy, Debug)]
enum Base {
    /// x·W, W [k, n].
    Dense { x: NodeId, w: NodeId },
    /// conv(x, W), W [O, C, kh, kw].
    Conv {
        x: NodeId,
        w: NodeId,
        params: Conv2dParams,
    },
    /// gather(W, ids), W [V, D].
    Embed { ids: NodeId, w: NodeId },
}

/// A matched fold: the base, the update's constants and scales, the bias.
struct Fold {
    base: Base,
    a: NodeId,
    b: NodeId,
    scales: Vec<f64>,
    bias: Option<NodeId>,
}

impl Pass for LoraFold {
    fn name(&self) -> &'static str {
        "lora_fold"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::default();
        for id in g.topo_order()? {
            let Some(op) = g.node(id).map(|n| n.op.clone()) else {
                continue; // swept by an earlier fold
            };
            let before = g.len();
            let by = match op {
                Op::Add => match match_add(g, id) {
                    Some(fold) => apply(g, id, &fold)?,
                    None => None,
                },
                Op::Mul => column_scale(g, id)?,
                _ => None,
            };
            let Some(by) = by else { continue };
            changed.added += g.len() - before;
            changed.rewritten += 1;
            g.replace_uses(id, by)?;
            changed.removed += sweep(g, id);
        }
        Ok(changed)
    }
}

/// The fold matching the Add node `id`, in any of the association orders.
fn match_add(g: &Graph, id: NodeId) -> Option<Fold> {
    let ops = g.operands(id);
    for (u, v) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        // base + Δ
        if let Some(fold) = base_and_delta(g, u, v, None) {
            return Some(fold);
        }
        // (base + b) + Δ
        if let Some([u1, u2]) = add_operands(g, u) {
            for (base, bias) in [(u1, u2), (u2, u1)] {
                if let Some(fold) = base_and_delta(g, base, v, Some(bias)) {
                    return Some(fold);
                }
            }
        }
        // base + (b + Δ)
        if let Some([v1, v2]) = add_operands(g, v) {
            for (delta, bias) in [(v1, v2), (v2, v1)] {
                if let Some(fold) = base_and_delta(g, u, delta, Some(bias)) {
                    return Some(fold);
                }
            }
        }
    }
    None
}

fn add_operands(g: &Graph, id: NodeId) -> Option<[NodeId; 2]> {
    match g.node(id)?.op {
        Op::Add => g.operands(id).try_into().ok(),
        _ => None,
    }
}

fn base_and_delta(g: &Graph, base: NodeId, delta: NodeId, bias: Option<NodeId>) -> Option<Fold> {
    let base = match_base(g, base)?;
    let (a, b, scales) = match_delta(g, delta, base)?;
    Some(Fold {
        base,
        a,
        b,
        scales,
        bias,
    })
}

/// The base product at `id`, if its weight is a Constant.
fn match_base(g: &Graph, id: NodeId) -> Option<Base> {
    let ops = g.operands(id);
    let base = match g.node(id)?.op {
        // x·W
        Op::MatMul => Base::Dense {
            x: ops[0],
            w: ops[1],
        },
        // conv(x, W)
        Op::Conv2d(params) => Base::Conv {
            x: ops[0],
            w: ops[1],
            params,
        },
        // gather(W, ids)
        Op::Gather => Base::Embed {
            ids: ops[1],
            w: ops[0],
        },
        _ => return None,
    };
    let (Base::Dense { w, .. } | Base::Conv { w, .. } | Base::Embed { w, .. }) = base;
    constant(g, w)?;
    Some(base)
}

/// Scale nodes from `id` down: the first non-Scale node and the scales met.
fn strip_scales(g: &Graph, mut id: NodeId, scales: &mut Vec<f64>) -> Option<NodeId> {
    while let Op::Scale(s) = g.node(id)?.op {
        scales.push(s);
        id = g.operands(id)[0];
    }
    Some(id)
}

/// The low-rank update `s·(h·B)`, `h = x·A` (or its conv / gather form) at
/// `id` for this base: (A, B, scales) if A and B are Constants.
fn match_delta(g: &Graph, id: NodeId, base: Base) -> Option<(NodeId, NodeId, Vec<f64>)> {
    let mut scales = Vec::new();
    let outer = strip_scales(g, id, &mut scales)?;
    let [h, b] = <[NodeId; 2]>::try_from(g.operands(outer)).ok()?;
    let inner = strip_scales(g, h, &mut scales)?;
    let [p, q] = <[NodeId; 2]>::try_from(g.operands(inner)).ok()?;
    let (outer_op, inner_op) = (&g.node(outer)?.op, &g.node(inner)?.op);
    let a = match (base, outer_op, inner_op) {
        // (x·A)·B
        (Base::Dense { x, .. }, Op::MatMul, Op::MatMul) if p == x => q,
        // conv₁ₓ₁(conv(x, A), B), A with the base's geometry
        (Base::Conv { x, params, .. }, Op::Conv2d(pb), Op::Conv2d(pa))
            if p == x && *pa == params && *pb == Conv2dParams::default() && is_1x1(g, b) =>
        {
            q
        }
        // gather(A, ids)·B
        (Base::Embed { ids, .. }, Op::MatMul, Op::Gather) if q == ids => p,
        _ => return None,
    };
    constant(g, a)?;
    constant(g, b)?;
    Some((a, b, scales))
}

/// Whether the conv weight `id` has a 1×1 kernel.
fn is_1x1(g: &Graph, id: NodeId) -> bool {
    g.node(id)
        .is_some_and(|n| n.shape.dims().get(2..) == Some(&[1, 1][..]))
}

/// Builds the folded replacement of the Add node `id`; `None` (and nothing
/// added) if the weights' shapes do not fit a fold.
fn apply(g: &mut Graph, id: NodeId, fold: &Fold) -> Result<Option<NodeId>> {
    let (Base::Dense { w, .. } | Base::Conv { w, .. } | Base::Embed { w, .. }) = fold.base;
    let data = |n: NodeId| {
        constant(g, n)
            .expect("internal: matched as a constant")
            .clone()
    };
    let weights = [data(w), data(fold.a), data(fold.b)];
    let conv = matches!(fold.base, Base::Conv { .. });
    let Ok(folded) = evaluate_with(&weights, |m, ids| update(m, ids, &fold.scales, conv)) else {
        return Ok(None); // shapes that do not fold (e.g. a batched A)
    };
    if folded.shape() != weights[0].shape() {
        return Ok(None);
    }
    let new_w = push_like(g, w, Op::Constant(Arc::new(folded)), &[])?;
    let product = match fold.base {
        Base::Dense { x, .. } => push_like(g, id, Op::MatMul, &[x, new_w])?,
        Base::Conv { x, params, .. } => push_like(g, id, Op::Conv2d(params), &[x, new_w])?,
        Base::Embed { ids, .. } => push_like(g, id, Op::Gather, &[new_w, ids])?,
    };
    let by = match fold.bias {
        Some(bias) => push_like(g, id, Op::Add, &[product, bias])?,
        None => product,
    };
    Ok(keep_if_same_type(g, id, by))
}

/// W + s·A·B (conv: W + s·B∘A) on a small graph over the constants [W, A, B].
fn update(m: &mut Graph, ids: &[NodeId], scales: &[f64], conv: bool) -> Result<NodeId> {
    let [w, a, b] = [ids[0], ids[1], ids[2]];
    let mut ab = if conv {
        // B [O, r, 1, 1] · A [r, C, kh, kw] as matrices, back to W's shape
        // (the verifier made all three rank 4).
        let dims = |n: NodeId| m.node(n).expect("internal: a live node").shape.clone();
        let (bd, ad, wd) = (dims(b), dims(a), dims(w));
        let b2 = m.reshape(b, [bd.dims()[0], bd.dims()[1]])?;
        let a2 = m.reshape(a, [ad.dims()[0], ad.dims()[1..].iter().product()])?;
        let prod = m.matmul(b2, a2)?;
        m.reshape(prod, wd)?
    } else {
        m.matmul(a, b)?
    };
    for &s in scales {
        ab = m.scale(ab, s)?;
    }
    m.add(w, ab)
}

/// `(x·W)⊙c → x·(W⊙c)` at the Mul node `id`, for a constant W [k, n] and a
/// constant c that only varies along the last axis (shape [.., 1, n] or 1s).
fn column_scale(g: &mut Graph, id: NodeId) -> Result<Option<NodeId>> {
    let ops = g.operands(id);
    for (mm, c) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        let Some(Base::Dense { x, w }) = match_base(g, mm) else {
            continue;
        };
        let Some(c_data) = constant(g, c).cloned() else {
            continue;
        };
        let w_data = constant(g, w)
            .expect("internal: matched as a constant")
            .clone();
        let c_shape = c_data.shape();
        let dims = c_shape.dims();
        let row = dims.iter().rev().skip(1).all(|&d| d == 1);
        if !row
            || w_data.shape().rank() != 2
            || c_shape.rank() > g.node(mm).map_or(0, |n| n.shape.rank())
        {
            continue;
        }
        let last = dims.last().copied().unwrap_or(1);
        let folded = evaluate_with(&[w_data.clone(), c_data], |m, ids| {
            let c_row = m.reshape(ids[1], [last])?;
            m.mul(ids[0], c_row)
        });
        let Ok(folded) = folded else { continue };
        if folded.shape() != w_data.shape() {
            continue;
        }
        let new_w = push_like(g, w, Op::Constant(Arc::new(folded)), &[])?;
        let by = push_like(g, id, Op::MatMul, &[x, new_w])?;
        if let Some(by) = keep_if_same_type(g, id, by) {
            return Ok(Some(by));
        }
    }
    Ok(None)
}

/// `by` if it has `id`'s shape and dtype; otherwise removes it (and the
/// nodes only it used) and returns `None`.
fn keep_if_same_type(g: &mut Graph, id: NodeId, by: NodeId) -> Option<NodeId> {
    let same = match (g.node(id), g.node(by)) {
        (Some(a), Some(b)) => a.shape == b.shape && a.dtype == b.dtype,
        _ => false,
    };
    if same {
        Some(by)
    } else {
        sweep(g, by);
        None
    }
}

/// Shared by the tests: the update data `W + s·A·B` of a dense fold.
#[cfg(test)]
fn dense_update(
    w: &crate::TensorData,
    a: &crate::TensorData,
    b: &crate::TensorData,
    s: f64,
) -> crate::TensorData {
    let weights = [w, a, b].map(|t| Arc::new(t.clone()));
    evaluate_with(&weights, |m, ids| update(m, ids, &[s], false)).expect("shapes fit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, TensorData};

    fn c(g: &mut Graph, shape: &[usize], data: Vec<f64>) -> NodeId {
        let t = TensorData::f64(shape.to_vec(), data).expect("fits");
        g.constant(t).expect("constant")
    }

    #[test]
    fn lora_fold_turns_three_matmuls_into_one() {
        let mut g = Graph::new();
        let x = g.input("x", [1, 2], DType::F64);
        let w = c(&mut g, &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let a = c(&mut g, &[2, 1], vec![1.0, -1.0]);
        let b = c(&mut g, &[1, 2], vec![0.5, 0.25]);
        let xw = g.matmul(x, w).expect("mm");
        let xa = g.matmul(x, a).expect("mm");
        let xab = g.matmul(xa, b).expect("mm");
        let d = g.scale(xab, 2.0).expect("scale");
        let y = g.add(xw, d).expect("add");
        g.set_outputs(&[y]).expect("y is a node");
        let changed = LoraFold.run(&mut g).expect("valid graph");
        assert_eq!(changed.rewritten, 1);
        let out = g.outputs()[0];
        assert_eq!(g.node(out).expect("live").op, Op::MatMul);
        let new_w = constant(&g, g.operands(out)[1]).expect("constant");
        let expected = dense_update(
            &TensorData::f64([2, 2], vec![1.0, 2.0, 3.0, 4.0]).expect("4"),
            &TensorData::f64([2, 1], vec![1.0, -1.0]).expect("2"),
            &TensorData::f64([1, 2], vec![0.5, 0.25]).expect("2"),
            2.0,
        );
        assert_eq!(**new_w, expected);
        assert_eq!(expected.to_f64_vec(), vec![2.0, 2.5, 2.0, 3.5]);
        assert_eq!(g.len(), 3);
    }
}
