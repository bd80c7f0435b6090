//! GEMM epilogues taken from loop groups.
//!
//! A loop group ([`super::fused`]) whose single output is
//!
//! ```text
//! out = act(((x·W + s·(XA·B))·c + b)) + r
//! ```
//!
//! is not lowered as a loop: the product `x·W` runs at the group's step with
//! a [`cranelora_kernels::gemm::Epilogue`] that applies the other steps to
//! each output block while it is in cache (on the threads that computed it)
//! and writes the group's output directly. Every step is optional:
//!
//! - the **LoRA term** `s·(XA·B)`: a MatMul of `XA` (the product's shape
//!   with `r` columns: `x·A` of the LoRA branch, computed earlier by its own
//!   step into an arena buffer) by a 2-D `B` `[r, n]`, with `r` below the
//!   base product's depth and at most [`MAX_RANK`], scaled by Scale nodes
//!   and / or Muls by a one-element operand (a constant, folded into the
//!   plan, or one runtime value: an Input, a Parameter, a computed scalar).
//!   That MatMul and its scaling are computed inside the call and get no
//!   buffer. The product may also be a `GatherMatMul(XA, B_stack [N, r, n],
//!   ids)` (a mixed-adapter batch, `serve/rewrite.rs`): each row then adds
//!   its own adapter's term (`EpilogueSpec::lora_stack`), so a batch
//!   sorted by adapter keeps its GEMM epilogue (activation included). With two unscaled products in the sum (a LoRA branch whose
//!   scaling 1 was simplified away), the one of smaller depth is the term;
//! - a **column scale** `c` (`n` elements: DoRA's `m/‖W + s·A·B‖`) by which
//!   `x·W` and the LoRA term are multiplied, with the bias outside;
//! - a **bias** `b` (`n` elements, or a Broadcast member of the group of one);
//! - an **activation** (ReLU, GELU erf/tanh, SiLU, tanh, sigmoid);
//! - a **residual** `r` of the product's shape, added after the activation;
//! - the activation's **derivative** at the pre-activation as a second
//!   output: a group whose outputs are `act(pre)` (or the sum after it) and
//!   `GeluGrad(pre)` / `GeluTanhGrad(pre)` of the same `pre` — what a
//!   training step's forward keeps for its backward — writes both
//!   (`EpilogueSpec::act_grad`), the derivative from the block in cache.
//!
//! The sums may come in any association and operand order (the graph has
//! `(x·W + b) + s·XA·B`; the kernel adds the LoRA term first, then the
//! bias: a reassociation within the products' tolerance). At least one step
//! beyond the product is always there (a group has a member besides the
//! product: a lone bias add is a group of one, `fused::keep`).
//!
//! Only taken when every value the call stands for other than the output
//! (and the derivative) has no reader outside it and is not a graph output
//! (a training graph that keeps the pre-activation itself or `XA·B` for the
//! backward: then nothing is fused),
//! and every member of the group is one of them. Nodes of the LoRA branch
//! outside the group (its scaling lowered as a single node, or a loop group
//! of its own) are *absorbed*: their steps are dropped and their members
//! computed by the call ([`EpilogueGroup::absorbed`]). Not taken: a second
//! bias (a LoRA bias on top of the base bias), a scaled base product, a
//! bias inside the column scale, per-row scales (mixed-batch DoRA and
//! LoRA bias), a batched `B`, products of integers.

use super::fused::LoopGroup;
use super::linalg::EpilogueOperands;
use cranelora_graph::{DType, Graph, NodeId, Op};
use cranelora_kernels::gemm::Activation;
use cranelora_kernels::math::Func;
use std::collections::{HashMap, HashSet};

/// The largest LoRA rank taken into an epilogue: the kernels' epilogue adds
/// the term with `r` vector passes over each output block, which beats a
/// separate thin GEMM plus two passes over memory only for small ranks.
pub const MAX_RANK: usize = 64;

/// A group lowered as its product's epilogue.
#[derive(Clone, Debug)]
pub struct EpilogueGroup {
    /// The base product `x·W`.
    pub matmul: NodeId,
    /// What the epilogue does and its operands; `dest` is the group's output.
    pub operands: EpilogueOperands,
    /// Every node the call computes other than the group's own members: the
    /// base product, the LoRA term's `XA·B` and its scaling, the members of
    /// absorbed loop groups (unordered). None has a buffer.
    pub absorbed: Vec<NodeId>,
    /// Loop groups all of whose members are in `absorbed` (their steps are
    /// dropped).
    pub absorbed_groups: Vec<usize>,
}

/// The groups of `groups` (by index) that become epilogues; a group whose
/// base product is not a GEMM call (`gemm_call` false: an inline product)
/// is left a loop before its absorbed groups are taken.
pub fn plan(
    g: &Graph,
    groups: &[LoopGroup],
    gemm_call: impl Fn(NodeId) -> bool,
) -> HashMap<usize, EpilogueGroup> {
    let group_of: HashMap<NodeId, usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, grp)| grp.nodes.iter().map(move |&n| (n, gi)))
        .collect();
    let mut taken: HashSet<usize> = HashSet::new();
    let mut out = HashMap::new();
    for gi in 0..groups.len() {
        if taken.contains(&gi) {
            continue;
        }
        let Some(e) = match_group(g, groups, gi, &group_of) else {
            continue;
        };
        if !gemm_call(e.matmul) || e.absorbed_groups.iter().any(|a| taken.contains(a)) {
            continue;
        }
        taken.insert(gi);
        taken.extend(e.absorbed_groups.iter().copied());
        out.insert(gi, e);
    }
    out
}

/// A LoRA term `factor · runtime · (XA·B)` found in a sum.
#[derive(Clone, Copy, Debug)]
struct Lora {
    product: NodeId,
    factor: f64,
    runtime: Option<NodeId>,
}

/// The terms of a sum (module docs), and the nodes matched on the way.
#[derive(Debug, Default)]
struct Terms {
    /// Unscaled products of the output's shape.
    products: Vec<NodeId>,
    /// Scaled products (LoRA terms).
    loras: Vec<Lora>,
    /// `n`-element vectors.
    biases: Vec<NodeId>,
    /// `terms · c` for an `n`-element `c`.
    scaled: Vec<(NodeId, Terms)>,
}

/// The matcher of one group: the graph, the group, the loop group of each
/// member node, the output's geometry and the nodes matched so far (all
/// computed by the call; unordered).
struct Matcher<'g> {
    g: &'g Graph,
    grp: &'g LoopGroup,
    grouped: &'g HashMap<NodeId, usize>,
    dims: Vec<usize>,
    dtype: DType,
    matched: Vec<NodeId>,
}

/// The epilogue `grp` is, if it is one (module docs).
fn match_group(
    g: &Graph,
    groups: &[LoopGroup],
    gi: usize,
    group_of: &HashMap<NodeId, usize>,
) -> Option<EpilogueGroup> {
    let grp = &groups[gi];
    let (last, grad) = group_outputs(g, grp)?;
    let out = g.node(last)?;
    if !matches!(out.dtype, DType::F32 | DType::F64) {
        return None;
    }
    let mut m = Matcher {
        g,
        grp,
        grouped: group_of,
        dims: out.shape.dims().to_vec(),
        dtype: out.dtype,
        matched: Vec::new(),
    };
    let mut ops = m.output(last)?;
    if let Some(d) = grad {
        m.derivative(d, &mut ops.0)?;
    }
    let matmul = ops.1;
    let matched = std::mem::take(&mut m.matched);
    let others = m.check_closed(&matched, &[Some(last), grad], &ops.0)?;
    let mut absorbed_groups: Vec<usize> = others
        .iter()
        .filter_map(|n| group_of.get(n).copied())
        .collect();
    absorbed_groups.retain(|&o| o != gi);
    absorbed_groups.sort_unstable();
    absorbed_groups.dedup();
    let covered = |o: &usize| groups[*o].nodes.iter().all(|n| matched.contains(n));
    if !absorbed_groups.iter().all(covered) {
        return None;
    }
    Some(EpilogueGroup {
        matmul,
        operands: ops.0,
        absorbed: others,
        absorbed_groups,
    })
}

/// The group's output and its activation-derivative output, if any: a
/// group with one output, its last node; or two outputs, one of them a
/// `GeluGrad` / `GeluTanhGrad` (checked against the activation by
/// [`Matcher::derivative`]).
fn group_outputs(g: &Graph, grp: &LoopGroup) -> Option<(NodeId, Option<NodeId>)> {
    let is_grad = |n: &NodeId| {
        matches!(
            g.node(*n).map(|n| &n.op),
            Some(Op::GeluGrad | Op::GeluTanhGrad)
        )
    };
    match grp.outputs[..] {
        [out] if grp.nodes.last() == Some(&out) => Some((out, None)),
        [a, b] => match (is_grad(&a), is_grad(&b)) {
            (false, true) => Some((a, Some(b))),
            (true, false) => Some((b, Some(a))),
            _ => None,
        },
        _ => None,
    }
}

impl Matcher<'_> {
    /// Takes `grad` (`GeluGrad(pre)` / `GeluTanhGrad(pre)`) as the
    /// derivative output of `ops`, whose activation must be the matching
    /// GELU of the same `pre`.
    fn derivative(&mut self, grad: NodeId, ops: &mut EpilogueOperands) -> Option<()> {
        let want = match self.g.node(grad)?.op {
            Op::GeluGrad => Op::Gelu,
            Op::GeluTanhGrad => Op::GeluTanh,
            _ => return None,
        };
        let act = *self
            .matched
            .iter()
            .find(|&&n| self.g.node(n).is_some_and(|n| n.op == want))?;
        if !self.full(grad) || self.g.operands(grad) != self.g.operands(act) {
            return None;
        }
        ops.spec.act_grad = true;
        ops.act_grad = Some(grad);
        self.matched.push(grad);
        Some(())
    }

    /// `post + r` or `post` (module docs): the operands and the base product.
    fn output(&mut self, last: NodeId) -> Option<(EpilogueOperands, NodeId)> {
        if let Some(mut found) = self.post(last) {
            found.0.dest = Some(last);
            return Some(found);
        }
        self.matched.clear();
        let [a, b] = self.operands_of(last, |op| matches!(op, Op::Add))?;
        for (t, r) in [(a, b), (b, a)] {
            if !self.full(r) || self.grp.nodes.contains(&r) {
                continue;
            }
            if let Some(mut found) = self.post(t) {
                found.0.spec.residual = Some(1.0);
                found.0.residual = Some(r);
                found.0.dest = Some(last);
                self.matched.push(last);
                return Some(found);
            }
            self.matched.clear();
        }
        None
    }

    /// `act(pre)` or `pre`.
    fn post(&mut self, id: NodeId) -> Option<(EpilogueOperands, NodeId)> {
        let act = activation(self.g, id);
        let pre = match act {
            Some(_) => self.g.operands(id)[0],
            None => id,
        };
        let mut terms = Terms::default();
        self.sum(pre, &mut terms)?;
        let mut found = self.resolve(terms)?;
        if act.is_some() {
            found.0.spec.activation = act;
            self.matched.push(id);
        }
        Some(found)
    }

    /// Collects the terms of the sum at `id` into `t`.
    fn sum(&mut self, id: NodeId, t: &mut Terms) -> Option<()> {
        let node = self.g.node(id)?;
        let full = self.full(id);
        if full && matches!(node.op, Op::Add) {
            let [a, b] = self.operands_of(id, |_| true)?;
            self.sum(a, t)?;
            self.sum(b, t)?;
        } else if full && matches!(node.op, Op::MatMul) {
            t.products.push(id);
        } else if full && matches!(node.op, Op::GatherMatMul) {
            // Per-row adapters' x·A·B: always the LoRA term, never the base.
            t.loras.push(Lora {
                product: id,
                factor: 1.0,
                runtime: None,
            });
        } else if full && matches!(node.op, Op::Scale(_) | Op::Mul) {
            if let Some(lora) = self.lora(id) {
                t.loras.push(lora);
                return Some(());
            }
            let (x, c) = self.scaled_operand(id)?;
            let mut inner = Terms::default();
            self.sum(x, &mut inner)?;
            t.scaled.push((c, inner));
        } else {
            let v = self.vector(id, self.n())?;
            t.biases.push(v);
            return Some(());
        }
        self.matched.push(id);
        Some(())
    }

    /// `c·(Scale | Mul by one element)*·(XA·B)`, the chain matched.
    fn lora(&mut self, id: NodeId) -> Option<Lora> {
        let mark = self.matched.len();
        let mut found = Lora {
            product: id,
            factor: 1.0,
            runtime: None,
        };
        let mut cur = id;
        let ok = loop {
            let Some(node) = self.g.node(cur).filter(|_| self.full(cur)) else {
                break false;
            };
            let next = match node.op {
                Op::Scale(c) => {
                    found.factor *= c;
                    self.g.operands(cur)[0]
                }
                Op::Mul => match self.scalar_factor(cur, &mut found) {
                    Some(x) => x,
                    None => break false,
                },
                Op::MatMul | Op::GatherMatMul if cur != id => {
                    found.product = cur;
                    break true;
                }
                _ => break false,
            };
            self.matched.push(cur);
            cur = next;
        };
        if !ok {
            self.matched.truncate(mark);
            return None;
        }
        self.matched.push(found.product);
        Some(found)
    }

    /// Of `Mul(x, s)` with `s` one element: folds a constant `s` into the
    /// factor or records it as the runtime factor; returns `x`.
    fn scalar_factor(&mut self, mul: NodeId, found: &mut Lora) -> Option<NodeId> {
        let (x, s) = self.split(mul, 1)?;
        match &self.g.node(s)?.op {
            Op::Constant(data) => found.factor *= data.to_f64_vec().first()?,
            _ if found.runtime.is_none() => found.runtime = Some(s),
            _ => return None,
        }
        Some(x)
    }

    /// Of `Mul(x, c)` with `c` an `n`-element vector: `(x, c)`.
    fn scaled_operand(&mut self, mul: NodeId) -> Option<(NodeId, NodeId)> {
        self.split(mul, self.n())
    }

    /// Of `Mul(x, v)` or `Mul(v, x)` with `x` of the output's shape and `v`
    /// a `len`-element vector (see [`Self::vector`]): `(x, v's buffer)`.
    fn split(&mut self, mul: NodeId, len: usize) -> Option<(NodeId, NodeId)> {
        let [a, b] = self.operands_of(mul, |op| matches!(op, Op::Mul))?;
        for (x, v) in [(a, b), (b, a)] {
            if self.full(x) && !self.is_grouped_broadcast(x) {
                if let Some(v) = self.vector(v, len) {
                    return Some((x, v));
                }
            }
        }
        None
    }

    /// Whether `id` is a Broadcast member of a loop group.
    fn is_grouped_broadcast(&self, id: NodeId) -> bool {
        let broadcast = self.g.node(id).map(|n| &n.op);
        matches!(broadcast, Some(Op::Broadcast { .. })) && self.grouped.contains_key(&id)
    }

    /// The buffer of an `len`-element vector read by the call at `id`: `id`
    /// itself, or the operand of a Broadcast member of a loop group (which
    /// is then matched: the broadcast is never made).
    fn vector(&mut self, id: NodeId, len: usize) -> Option<NodeId> {
        let member = self.is_grouped_broadcast(id);
        let v = match member {
            true => self.g.operands(id)[0],
            false => id,
        };
        let vn = self.g.node(v)?;
        let fits = vn.shape.numel() == len && vn.shape.dims().last().is_none_or(|&d| d == len);
        if !fits || vn.dtype != self.dtype || self.grp.nodes.contains(&v) {
            return None;
        }
        if member {
            self.matched.push(id);
        }
        Some(v)
    }

    /// The epilogue of a sum's terms (module docs), and its base product.
    fn resolve(&self, t: Terms) -> Option<(EpilogueOperands, NodeId)> {
        let mut ops = EpilogueOperands::default();
        let core = match t.scaled.len() {
            0 => t,
            1 if t.products.is_empty() && t.loras.is_empty() => {
                let (c, inner) = t.scaled.into_iter().next()?;
                if !inner.biases.is_empty() || !inner.scaled.is_empty() {
                    return None;
                }
                ops.spec.col_scale = true;
                ops.col_scale = Some(c);
                Terms {
                    biases: t.biases,
                    ..inner
                }
            }
            _ => return None,
        };
        match core.biases[..] {
            [] => {}
            [b] => {
                ops.spec.bias = true;
                ops.bias = Some(b);
            }
            _ => return None,
        }
        let (base, lora) = match (&core.products[..], &core.loras[..]) {
            ([p], []) => (*p, None),
            ([p], [l]) => (*p, Some(*l)),
            ([p, q], []) => {
                let (base, term) = match self.depth(*q) > self.depth(*p) {
                    true => (*q, *p),
                    false => (*p, *q),
                };
                let unit = Lora {
                    product: term,
                    factor: 1.0,
                    runtime: None,
                };
                (base, Some(unit))
            }
            _ => return None,
        };
        if let Some(l) = lora {
            self.lora_operands(l, base, &mut ops)?;
        }
        Some((ops, base))
    }

    /// Fills the LoRA step of `ops` from `l` after checking its product.
    fn lora_operands(&self, l: Lora, base: NodeId, ops: &mut EpilogueOperands) -> Option<()> {
        let (xa, b, ids) = match self.g.operands(l.product)[..] {
            [xa, b, ids] if matches!(self.g.node(l.product)?.op, Op::GatherMatMul) => {
                (xa, b, Some(ids))
            }
            _ => {
                let [xa, b] = self.operands_of(l.product, |op| matches!(op, Op::MatMul))?;
                (xa, b, None)
            }
        };
        let r = self.depth(l.product);
        let (xn, bn) = (self.g.node(xa)?, self.g.node(b)?);
        let rows = &self.dims[..self.dims.len() - 1];
        let xa_fits = xn.shape.dims().split_last() == Some((&r, rows));
        let b_fits = match (ids, bn.shape.dims()) {
            (Some(_), &[stack, br, bn]) => (br, bn) == (r, self.n()) && stack > 0,
            (None, dims) => dims == [r, self.n()],
            _ => false,
        };
        if !xa_fits || !b_fits || r >= self.depth(base) || r > MAX_RANK || r == 0 {
            return None;
        }
        ops.spec.lora = Some((r, l.factor));
        ops.spec.lora_stack = ids.map(|_| bn.shape.dims()[0]);
        ops.lora_xa = Some(xa);
        ops.lora_b = Some(b);
        ops.lora_ids = ids;
        ops.lora_scale = l.runtime;
        Some(())
    }

    /// Checks that the matched nodes are closed (module docs): each group
    /// member is matched; no matched node but the call's outputs `outs` is
    /// read from outside or is a graph output; no operand the call reads is
    /// matched. Returns the matched nodes outside the group.
    fn check_closed(
        &self,
        matched: &[NodeId],
        outs: &[Option<NodeId>],
        ops: &EpilogueOperands,
    ) -> Option<Vec<NodeId>> {
        let set: HashSet<NodeId> = matched.iter().copied().collect();
        if set.len() != matched.len() || !self.grp.nodes.iter().all(|n| set.contains(n)) {
            return None;
        }
        for &id in matched.iter().filter(|&&id| !outs.contains(&Some(id))) {
            let inside = self.g.users(id).iter().all(|u| set.contains(u));
            if !inside || self.g.outputs().contains(&id) {
                return None;
            }
        }
        let reads = [
            ops.lora_xa,
            ops.lora_b,
            ops.lora_ids,
            ops.lora_scale,
            ops.col_scale,
            ops.bias,
            ops.residual,
        ];
        if reads.iter().flatten().any(|r| set.contains(r)) {
            return None;
        }
        let outside = matched.iter().filter(|n| !self.grp.nodes.contains(n));
        Some(outside.copied().collect())
    }

    /// The output's columns.
    fn n(&self) -> usize {
        *self.dims.last().unwrap_or(&0)
    }

    /// Whether `id` has the output's shape and dtype.
    fn full(&self, id: NodeId) -> bool {
        self.g
            .node(id)
            .is_some_and(|n| n.shape.dims() == self.dims && n.dtype == self.dtype)
    }

    /// The depth (inner dimension) of MatMul `id`.
    fn depth(&self, id: NodeId) -> usize {
        let a = self.g.operands(id)[0];
        self.g
            .node(a)
            .and_then(|n| n.shape.dims().last().copied())
            .unwrap_or(0)
    }

    /// The two operands of `id` if its op satisfies `op`.
    fn operands_of(&self, id: NodeId, op: impl Fn(&Op) -> bool) -> Option<[NodeId; 2]> {
        if !op(&self.g.node(id)?.op) {
            return None;
        }
        self.g.operands(id).try_into().ok()
    }
}

/// The epilogue activation node `id` applies, if any.
fn activation(g: &Graph, id: NodeId) -> Option<Activation> {
    Some(match g.node(id)?.op {
        Op::Relu => Activation::Relu,
        Op::Gelu => Activation::Func(Func::GeluErf),
        Op::GeluTanh => Activation::Func(Func::GeluTanh),
        Op::Silu => Activation::Func(Func::Silu),
        Op::Tanh => Activation::Func(Func::Tanh),
        Op::Sigmoid => Activation::Func(Func::Sigmoid),
        _ => return None,
    })
}
