//! Algebraic simplification: local rewrites that remove or merge ops.
//!
//! - Requires: a graph that passes [`verify`](crate::verify()).
//! - Guarantees: none of the rules below matches any live node; results are
//!   exactly unchanged except (a) `x + 0 → x` and `Σ over no axes → x` keep
//!   a −0 that the original turned into +0 (equal values), and (b) merging
//!   scales rounds `a·b` once instead of rounding twice: at most 2 ulp of
//!   the result per merge (and an intermediate overflow the original had
//!   may disappear).
//! - A binary identity (`x·1`, `x+0`, …) fires only when the result has x's
//!   shape and dtype: a constant that broadcasts x up is not an identity.
//! - Not rewritten, on purpose: `x·0 → 0` (NaN·0 and ∞·0 are NaN),
//!   `x − x → 0` (∞ − ∞), `x/x → 1`, `cast(cast(x))` (f64→f32→f64 rounds),
//!   and StopGradient (identity forward, but autodiff needs it).
//!
//! Nodes are visited operands first, and each rule looks at its operands,
//! so chains collapse in one run:
//!
//! ```text
//! %1 = scale{2.0}(%0)
//! %2 = scale{3.0}(%1)            ──►   %5 = scale{6.0}(%0)
//! %3 = transpose{[1, 0]}(%2)           outputs: %5
//! %4 = transpose{[1, 0]}(%3)
//! outputs: %4
//! ```

use super::{constant, push_like, replace, Changed, Pass};
use crate::{Graph, NodeId, Op, Result};

/// Local algebraic rewrites.
#[derive(Clone, Copy, Debug, Default)]
pub struct Simplify;

/// What a rule replaces a node with.
enum Rewrite {
    /// An existing node.
    Use(NodeId),
    /// A new node computing this op on these operands.
    New(Op, Vec<NodeId>),
}

impl Pass for Simplify {
    fn name(&self) -> &'static str {
        "simplify"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed> {
        let mut changed = Changed::default();
        for id in g.topo_order()? {
            if g.node(id).is_none() {
                continue; // swept by an earlier rewrite
            }
            let by = match rewrite(g, id) {
                Some(Rewrite::Use(x)) => x,
                Some(Rewrite::New(op, operands)) => {
                    changed.added += 1;
                    push_like(g, id, op, &operands)?
                }
                None => continue,
            };
            changed.rewritten += 1;
            changed.removed += replace(g, id, by)?;
        }
        Ok(changed)
    }
}

/// The rewrite of `id` by the first rule that matches, if any.
fn rewrite(g: &Graph, id: NodeId) -> Option<Rewrite> {
    let node = g.node(id)?;
    let ops = g.operands(id);
    let arg = |i: usize| ops[i];
    let op_of = |x: NodeId| &g.node(x).expect("internal: operands are live").op;
    let shape_of = |x: NodeId| g.node(x).expect("internal: operands are live").shape.dims();
    let splat = |x: NodeId, v: f64| is_splat(g, x, v);
    // x may stand for the node when it has the node's shape and dtype.
    let keeps = |x: NodeId| same_type(g, x, id);
    use Rewrite::{New, Use};
    match &node.op {
        // x·1 → x
        Op::Mul if splat(arg(1), 1.0) && keeps(arg(0)) => Some(Use(arg(0))),
        // 1·x → x
        Op::Mul if splat(arg(0), 1.0) && keeps(arg(1)) => Some(Use(arg(1))),
        // x + 0 → x
        Op::Add if splat(arg(1), 0.0) && keeps(arg(0)) => Some(Use(arg(0))),
        // 0 + x → x
        Op::Add if splat(arg(0), 0.0) && keeps(arg(1)) => Some(Use(arg(1))),
        // x − 0 → x
        Op::Sub if splat(arg(1), 0.0) && keeps(arg(0)) => Some(Use(arg(0))),
        // x / 1 → x
        Op::Div if splat(arg(1), 1.0) && keeps(arg(0)) => Some(Use(arg(0))),
        // x ^ 1 → x
        Op::Pow if splat(arg(1), 1.0) && keeps(arg(0)) => Some(Use(arg(0))),
        // −(−x) → x
        Op::Neg if matches!(op_of(arg(0)), Op::Neg) => Some(Use(g.operands(arg(0))[0])),
        // 1·x → x (scale)
        Op::Scale(s) if *s == 1.0 => Some(Use(arg(0))),
        // b·(a·x) → (a·b)·x
        Op::Scale(b) => match op_of(arg(0)) {
            Op::Scale(a) => Some(New(Op::Scale(a * b), g.operands(arg(0)))),
            _ => None,
        },
        // cast_T(x: T) → x
        Op::Cast(to) if *to == g.node(arg(0))?.dtype => Some(Use(arg(0))),
        // transpose_id(x) → x
        Op::Transpose { perm } if is_identity(perm) => Some(Use(arg(0))),
        // transpose_q(transpose_p(x)) → transpose_{p∘q}(x), or x when p∘q = id
        Op::Transpose { perm: q } => match op_of(arg(0)) {
            Op::Transpose { perm: p } => {
                let inner = g.operands(arg(0))[0];
                let composed: Vec<usize> = q.iter().map(|&i| p[i]).collect();
                if is_identity(&composed) {
                    Some(Use(inner))
                } else {
                    Some(New(Op::Transpose { perm: composed }, vec![inner]))
                }
            }
            _ => None,
        },
        // reshape_s(x: s) → x
        Op::Reshape { .. } if keeps(arg(0)) => Some(Use(arg(0))),
        // reshape_t(reshape_s(x)) → reshape_t(x), or x when x has shape t
        Op::Reshape { shape } => match op_of(arg(0)) {
            Op::Reshape { .. } => {
                let inner = g.operands(arg(0))[0];
                if keeps(inner) {
                    Some(Use(inner))
                } else {
                    Some(New(
                        Op::Reshape {
                            shape: shape.clone(),
                        },
                        vec![inner],
                    ))
                }
            }
            _ => None,
        },
        // broadcast_s(x: s) → x
        Op::Broadcast { .. } if keeps(arg(0)) => Some(Use(arg(0))),
        // x[0..d₀, 0..d₁, …] → x
        Op::Slice { ranges } if full_ranges(ranges, shape_of(arg(0))) => Some(Use(arg(0))),
        // pad(x, 0 everywhere) → x
        Op::Pad { pads, .. } if pads.iter().all(|&p| p == (0, 0)) => Some(Use(arg(0))),
        // concat(x) → x
        Op::Concat { .. } if ops.len() == 1 => Some(Use(arg(0))),
        // Σ/mean/max over no axes → x
        Op::Reduce { axes, .. } if axes.is_empty() => Some(Use(arg(0))),
        _ => None,
    }
}

/// Whether `id` is a Constant with every element equal to `v` (−0 equals 0).
fn is_splat(g: &Graph, id: NodeId, v: f64) -> bool {
    constant(g, id).is_some_and(|data| data.to_f64_vec().iter().all(|&e| e == v))
}

/// Whether the two nodes have the same shape and dtype.
fn same_type(g: &Graph, a: NodeId, b: NodeId) -> bool {
    match (g.node(a), g.node(b)) {
        (Some(a), Some(b)) => a.shape == b.shape && a.dtype == b.dtype,
        _ => false,
    }
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

fn full_ranges(ranges: &[std::ops::Range<usize>], dims: &[usize]) -> bool {
    ranges
        .iter()
        .zip(dims)
        .all(|(r, &d)| r.start == 0 && r.end == d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn simplify_merges_scales_and_cancels_transposes() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3], DType::F32);
        let s1 = g.scale(x, 2.0).expect("float");
        let s2 = g.scale(s1, 3.0).expect("float");
        let t1 = g.transpose(s2, &[1, 0]).expect("perm");
        let t2 = g.transpose(t1, &[1, 0]).expect("perm");
        g.set_outputs(&[t2]).expect("t2 is a node");
        let changed = Simplify.run(&mut g).expect("valid graph");
        assert!(changed.any());
        let out = g.outputs()[0];
        assert_eq!(g.node(out).expect("live").op, Op::Scale(6.0));
        assert_eq!(g.operands(out), vec![x]);
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn simplify_keeps_a_broadcasting_identity_and_x_times_zero() {
        let mut g = Graph::new();
        let x = g.input("x", [3], DType::F32);
        let ones = g
            .constant(crate::TensorData::full(&[2, 3].into(), 1.0, DType::F32))
            .expect("constant");
        let zero = g.scalar(0.0, DType::F32).expect("scalar");
        let y = g.mul(x, ones).expect("broadcast");
        let z = g.mul(y, zero).expect("broadcast");
        g.set_outputs(&[z]).expect("z is a node");
        assert!(!Simplify.run(&mut g).expect("valid graph").any());
    }
}
