//! The compiler's side of [`AdapterStrategy`]: finding the runtime-bound
//! adapted layers of a graph and merging the ones the strategy chooses.
//! [`compile`](crate::compile) runs [`apply`] before the graph passes and
//! keeps the choices in [`CompileReport::adapters`](crate::CompileReport).
//!
//! - Requires: LoRA branches as the core crate exports them — per layer
//!   `P`, nodes `P.lora_xab` (the branch's second product), `P.lora_scale`
//!   (s·branch) and the Parameters `P.lora_a` `[fan_in, r]`, `P.lora_b`
//!   `[r, fan_out]` (or, in a mixed-batch graph, `P.lora_a_stack`
//!   `[N, fan_in, r]`). A layer whose A or B is a Constant is not
//!   runtime-bound (LoRA folding handles it) and is not listed.
//! - Guarantees: a merged layer reads its base weight from the Parameter
//!   `P.base_layer.weight` `[fan_in, fan_out]` instead of the Constant W
//!   (returned in [`LayerChoice::base`]); its branch is replaced by zeros
//!   (Simplify then removes the `+ 0`), so the branch's nodes and its A, B
//!   Parameters are gone. Bound to `W + s·A·B`, the graph computes what the
//!   unmerged one computes with A, B bound, up to rounding.
//!
//! ```text
//! P.base_layer.matmul = matmul(x, W)    ──►  matmul(x, parameter{"P.base_layer.weight"})
//! P.lora_scale = scale(x·A·B)           ──►  zeros
//! gather(W, ids) (Embedding)            ──►  gather(parameter{"P.base_layer.weight"}, ids)
//! ```

use super::strategy::{choose, AdaptedLayer, AdapterStrategy, BranchKind, LayerChoice};
use crate::Result;
use cranelora_graph::{Graph, NodeId, Op, TensorData};
use std::collections::HashMap;
use std::sync::Arc;

/// A layer found in the graph, with the nodes a merge rewrites.
struct Found {
    layer: AdaptedLayer,
    /// The base product (`x·W` or `gather(W, ids)`), W's operand position and W.
    base: Option<(NodeId, usize, NodeId)>,
    /// `P.lora_scale`.
    scale: Option<NodeId>,
}

/// The runtime-bound adapted layers of `g` and the strategy's choice for
/// each, without changing the graph (what [`compile`](crate::compile) would
/// do; `cranelora graph --passes` prints it).
pub fn plan(g: &Graph, strategy: &AdapterStrategy) -> Vec<LayerChoice> {
    plan_found(g, &find(g), strategy)
}

fn plan_found(g: &Graph, found: &[Found], strategy: &AdapterStrategy) -> Vec<LayerChoice> {
    let layers: Vec<AdaptedLayer> = found.iter().map(|f| f.layer.clone()).collect();
    choose(&layers, strategy)
        .into_iter()
        .zip(found)
        .map(|((merged, reason), f)| LayerChoice {
            path: f.layer.path.clone(),
            merged,
            reason,
            base: merged.then(|| base_data(g, f)).flatten(),
        })
        .collect()
}

/// [`plan`], then the merges it chose (module docs).
///
/// # Errors
/// Graph errors from the rewrite (none for an exported graph).
pub(crate) fn apply(g: &mut Graph, strategy: &AdapterStrategy) -> Result<Vec<LayerChoice>> {
    let found = find(g);
    let choices = plan_found(g, &found, strategy);
    for (c, f) in choices.iter().zip(&found) {
        if let (true, Some(base), Some(scale)) = (c.merged, f.base, f.scale) {
            merge(g, &f.layer, base, scale)?;
        }
    }
    Ok(choices)
}

/// The constant W of a mergeable layer.
fn base_data(g: &Graph, f: &Found) -> Option<Arc<TensorData>> {
    let (_, _, w) = f.base?;
    match &g.node(w)?.op {
        Op::Constant(data) => Some(Arc::clone(data)),
        _ => None,
    }
}

/// Every node named `P.lora_xab` whose A and B are Parameters, in graph order.
fn find(g: &Graph) -> Vec<Found> {
    let mut names = HashMap::new();
    let mut params = HashMap::new();
    for id in g.node_ids() {
        let Some(n) = g.node(id) else { continue };
        if let Some(name) = &n.name {
            names.entry(name.clone()).or_insert(id);
        }
        if let Op::Parameter { name } = &n.op {
            params.insert(name.clone(), id);
        }
    }
    let mut out = Vec::new();
    for id in g.node_ids() {
        let Some(path) = g
            .node(id)
            .and_then(|n| n.name.as_deref())
            .and_then(|n| n.strip_suffix(".lora_xab"))
        else {
            continue;
        };
        if let Some(f) = found(g, path, id, &names, &params) {
            out.push(f);
        }
    }
    out
}

/// The layer at `path` whose branch ends in `xab`, if its adapter is runtime-bound.
fn found(
    g: &Graph,
    path: &str,
    xab: NodeId,
    names: &HashMap<String, NodeId>,
    params: &HashMap<String, NodeId>,
) -> Option<Found> {
    let p = |suffix: &str| params.get(&format!("{path}.{suffix}")).copied();
    let dims = |id: NodeId| g.node(id).map(|n| n.shape.dims().to_vec());
    let xab_node = g.node(xab)?;
    let scale = names.get(&format!("{path}.lora_scale")).copied();
    let mut private_branch = false;
    let (kind, fan_in, rank) = match (p("lora_a"), p("lora_b"), p("lora_a_stack")) {
        (Some(a), Some(b), _) => {
            let &[i, r] = dims(a)?.as_slice() else {
                return None;
            };
            let xa = g.operands(xab)[0];
            let kind = match (&xab_node.op, g.node(xa).map(|n| &n.op)) {
                (Op::Conv2d(_), _) => BranchKind::Conv2d,
                (_, Some(Op::Gather)) => BranchKind::Embedding,
                _ => BranchKind::Linear,
            };
            let only = |id: NodeId, user: Option<NodeId>| user.is_some_and(|u| g.users(id) == [u]);
            private_branch =
                only(a, Some(xa)) && only(b, Some(xab)) && only(xa, Some(xab)) && only(xab, scale);
            (kind, i, r)
        }
        (_, _, Some(stack)) => {
            let &[_, i, r] = dims(stack)?.as_slice() else {
                return None;
            };
            (BranchKind::Mixed, i, r)
        }
        _ => return None, // constant adapter weights: LoRA folding's job
    };
    let fan_out = xab_node.shape.dims().last().copied().unwrap_or(0);
    let fan_out = match kind {
        BranchKind::Conv2d => xab_node.shape.dims().get(1).copied().unwrap_or(0),
        _ => fan_out,
    };
    let xa = g.operands(xab)[0];
    // The branch input: x of x·A, ids of gather(A, ids).
    let x = match kind {
        BranchKind::Embedding => g.operands(xa).get(1).copied(),
        _ => g.operands(xa).first().copied(),
    }?;
    let x_len = g.node(x)?.shape.numel();
    let rows = match kind {
        BranchKind::Embedding => x_len,
        _ => x_len / fan_in.max(1),
    };
    let base = base_product(g, path, kind, x, fan_in, fan_out);
    let dora = names.contains_key(&format!("{path}.lora_dora_scale"))
        || p("lora_dora_scale_stack").is_some()
        || p("lora_magnitude").is_some();
    let layer = AdaptedLayer {
        path: path.to_string(),
        kind,
        fan_in,
        fan_out,
        rank,
        rows,
        dtype: xab_node.dtype,
        dora,
        constant_base: base.is_some(),
        private_branch,
    };
    Some(Found { layer, base, scale })
}

/// The base product of a Linear (`x·W`) or Embedding (`gather(W, ids)`)
/// layer with W a Constant `[fan_in, fan_out]`: the one user of `x` of that
/// form, preferring one named under `P.base_layer`.
fn base_product(
    g: &Graph,
    path: &str,
    kind: BranchKind,
    x: NodeId,
    fan_in: usize,
    fan_out: usize,
) -> Option<(NodeId, usize, NodeId)> {
    let (op_ok, w_pos, x_pos): (fn(&Op) -> bool, usize, usize) = match kind {
        BranchKind::Linear => (|op| matches!(op, Op::MatMul), 1, 0),
        BranchKind::Embedding => (|op| matches!(op, Op::Gather), 0, 1),
        BranchKind::Conv2d | BranchKind::Mixed => return None,
    };
    let candidates: Vec<(NodeId, usize, NodeId)> = g
        .users(x)
        .into_iter()
        .filter_map(|u| {
            let n = g.node(u)?;
            let ops = g.operands(u);
            let w = *ops.get(w_pos)?;
            let wn = g.node(w)?;
            let fits = op_ok(&n.op)
                && ops.get(x_pos) == Some(&x)
                && matches!(wn.op, Op::Constant(_))
                && wn.shape.dims() == [fan_in, fan_out];
            fits.then_some((u, w_pos, w))
        })
        .collect();
    let prefix = format!("{path}.base_layer.");
    let named = candidates.iter().find(|(u, _, _)| {
        g.node(*u)
            .and_then(|n| n.name.as_deref())
            .is_some_and(|n| n.starts_with(&prefix))
    });
    match (named, candidates.as_slice()) {
        (Some(c), _) => Some(*c),
        (None, [only]) => Some(*only),
        _ => None,
    }
}

/// Merges one layer: W → `P.base_layer.weight`, the branch → zeros.
fn merge(
    g: &mut Graph,
    l: &AdaptedLayer,
    (base, w_pos, _w): (NodeId, usize, NodeId),
    scale: NodeId,
) -> Result<()> {
    let name = format!("{}.base_layer.weight", l.path);
    let p = g
        .named(name.clone())
        .parameter(&name, [l.fan_in, l.fan_out], l.dtype);
    let node = g
        .node(base)
        .expect("internal: a found node is live")
        .clone();
    let mut args = g.operands(base);
    args[w_pos] = p;
    let rebuilt = match node.name {
        Some(n) => g.named(n).push(node.op, &args)?,
        None => g.push(node.op, &args)?,
    };
    g.replace_uses(base, rebuilt)?;
    sweep(g, base);
    let s = g.node(scale).expect("internal: a found node is live");
    let zeros = TensorData::full(&s.shape.clone(), 0.0, s.dtype);
    let zeros = g.named(format!("{}.lora_merged", l.path)).constant(zeros)?;
    g.replace_uses(scale, zeros)?;
    sweep(g, scale);
    Ok(())
}

/// Removes `id` if nothing uses it, then its operands that become unused
/// (Parameters included: the merged branch's A and B).
fn sweep(g: &mut Graph, id: NodeId) {
    let mut stack = vec![id];
    while let Some(id) = stack.pop() {
        let dead = g
            .node(id)
            .is_some_and(|n| !matches!(n.op, Op::Input { .. }))
            && g.users(id).is_empty()
            && !g.outputs().contains(&id);
        if dead {
            let operands = g.operands(id);
            g.remove_node(id);
            stack.extend(operands);
        }
    }
}
