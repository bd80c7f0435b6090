//! Stochastic gradient descent updates, plain and with momentum (PyTorch's
//! `torch.optim.SGD` without dampening or weight decay).

use super::{weight_update, ParamUpdate, UpdateKind};
use crate::{Graph, NodeId, Result};

/// p ← p − lr·g for each trained Parameter.
pub(super) fn sgd(
    graph: &mut Graph,
    params: &[(String, NodeId)],
    grads: &[NodeId],
    lr: f64,
) -> Result<Vec<ParamUpdate>> {
    let mut updates = Vec::new();
    for ((name, p), &g) in params.iter().zip(grads) {
        let step = graph.named(format!("sgd({name}).step")).scale(g, lr)?;
        let new = graph.named(format!("update({name})")).sub(*p, step)?;
        updates.push(weight_update(name, *p, new));
    }
    Ok(updates)
}

/// The momentum settings of [`super::Optimizer::SgdMomentum`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Momentum {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
}

/// b ← μ·b + g; p ← p − lr·(g + μ·b) with Nesterov, p ← p − lr·b without.
/// The buffer b is the Parameter `sgd.momentum.<name>` (zero before the
/// first step, which makes the first b equal g as in PyTorch). Weights
/// come first in the returned list, then the buffers.
pub(super) fn sgd_momentum(
    graph: &mut Graph,
    params: &[(String, NodeId)],
    grads: &[NodeId],
    m: Momentum,
) -> Result<Vec<ParamUpdate>> {
    let mut weights = Vec::new();
    let mut state = Vec::new();
    for ((name, p), &g) in params.iter().zip(grads) {
        let node = graph
            .node(*p)
            .expect("internal: trained Parameters are live");
        let (shape, dtype) = (node.shape.clone(), node.dtype);
        let at = |what: &str| format!("sgd({name}).{what}");
        let buf_name = format!("sgd.momentum.{name}");
        let buf = graph.parameter(&buf_name, shape, dtype);
        let kept = graph.named(at("momentum")).scale(buf, m.momentum)?;
        let new_buf = graph.named(format!("update({buf_name})")).add(kept, g)?;
        let direction = if m.nesterov {
            let ahead = graph.named(at("nesterov")).scale(new_buf, m.momentum)?;
            graph.named(at("nesterov")).add(g, ahead)?
        } else {
            new_buf
        };
        let step = graph.named(at("step")).scale(direction, m.lr)?;
        let new_p = graph.named(format!("update({name})")).sub(*p, step)?;
        weights.push(weight_update(name, *p, new_p));
        state.push(ParamUpdate {
            parameter: buf_name,
            node: buf,
            new_value: new_buf,
            kind: UpdateKind::OptimizerState,
        });
    }
    weights.extend(state);
    Ok(weights)
}
