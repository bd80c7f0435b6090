//! The two graph rewrites of a serving model, applied to the Serving-mode
//! export of a template model (adapters of rank R, scaling 1, at every slot).
//!
//! - [`single`]: DoRA's per-feature scale `P.lora_dora_scale = m / ‖W̃ +
//!   s·A·B‖` becomes a Parameter computed once per bound adapter, so the
//!   norm (a product of fan_in·fan_out·R per layer) leaves the call path:
//!
//!   ```text
//!   P.lora_dora_scale = div(P.lora_magnitude, P.lora_dora_norm)  ──►  parameter{"P.lora_dora_scale"}
//!   ```
//! - [`mixed`]: each row of the batch takes its own adapter. With
//!   `ids = input{"adapter_ids"}` (i64 `[R]`, −1 = none) and the adapters'
//!   weights stacked along a new first axis (N slots):
//!
//!   ```text
//!   P.lora_xa  = matmul(x, A)      ──►  gather_matmul(x, P.lora_a_stack [N, in, R], ids)
//!   P.lora_xab = matmul(xa, B)     ──►  gather_matmul(xa, P.lora_b_stack [N, R, out], ids)
//!   P.lora_bias                    ──►  gather_matmul(1 [R, 1], P.lora_bias_stack [N, 1, out], ids)
//!   P.lora_dora_scale              ──►  gather_matmul(1 [R, 1], P.lora_dora_scale_stack [N, 1, out], ids) + 1
//!   ```
//!   The scale stack holds `scale − 1`, so a row without adapter (a zero
//!   gathered row) gets the scale 1. The base product is untouched: it runs
//!   once for the whole batch.
//!
//! Merged layers ([`super::AdapterStrategy`]) are the compiler's rewrite
//! (`plan.rs`), run when the single function is compiled.
//!
//! Both end with dead-code elimination that also drops the Parameters no
//! longer read (`P.lora_magnitude`, the single A and B).

use super::adapters::LayerSlot;
use crate::{Error, Result};
use cranelora_graph::passes::{DeadCodeElim, Pass};
use cranelora_graph::{DType, Graph, NodeId, Op, TensorData};

/// The name of the mixed graph's id input.
pub const ADAPTER_IDS: &str = "adapter_ids";

fn err(path: &str, reason: String) -> Error {
    Error::Adapter {
        adapter: path.to_string(),
        reason,
    }
}

/// The live node named `name`.
fn named(g: &Graph, name: &str) -> Option<NodeId> {
    g.node_ids()
        .into_iter()
        .find(|&id| g.node(id).and_then(|n| n.name.as_deref()) == Some(name))
}

/// The Parameter node called `name`.
fn parameter(g: &Graph, name: &str) -> Option<NodeId> {
    g.node_ids().into_iter().find(|&id| {
        g.node(id)
            .is_some_and(|n| matches!(&n.op, Op::Parameter { name: p } if p == name))
    })
}

fn required(g: &Graph, name: &str, path: &str) -> Result<NodeId> {
    named(g, name).ok_or_else(|| {
        err(
            path,
            format!("the serving graph has no node `{name}` (not a LoRA adapter export?)"),
        )
    })
}

fn dce(g: &mut Graph) -> Result<()> {
    let pass = DeadCodeElim {
        keep_parameters: false,
    };
    pass.run(g)?;
    Ok(())
}

/// DoRA scales as Parameters (module docs).
///
/// # Errors
/// [`Error::Adapter`] if a DoRA slot's scale node is missing.
pub fn single(g: &mut Graph, slots: &[LayerSlot]) -> Result<()> {
    for s in slots.iter().filter(|s| s.dora_base.is_some()) {
        let name = s.param("lora_dora_scale");
        let old = required(g, &name, &s.path)?;
        let p = g.named(name.clone()).parameter(&name, [s.fan_out], s.dtype);
        g.replace_uses(old, p)?;
    }
    dce(g)
}

/// The rows of the batch: every slot's branch must be `x·A·B` with x `[rows, in]`.
fn batch_rows(g: &Graph, slots: &[LayerSlot]) -> Result<usize> {
    let mut rows = None;
    for s in slots {
        let xa = required(g, &s.param("lora_xa"), &s.path)?;
        let x = g.operands(xa)[0];
        let dims = g
            .node(x)
            .map(|n| n.shape.dims().to_vec())
            .unwrap_or_default();
        let is_matmul = matches!(g.node(xa).map(|n| &n.op), Some(Op::MatMul));
        if !is_matmul || dims.len() != 2 || rows.is_some_and(|r| r != dims[0]) {
            let why = format!(
                "mixed batches need x·A·B on [rows, in] inputs with one row count; `{}` gets {dims:?}",
                s.path
            );
            return Err(err(&s.path, why));
        }
        rows = Some(dims[0]);
    }
    rows.ok_or_else(|| err("", "the model has no adapted layer".into()))
}

/// The mixed-batch graph for `capacity` adapter slots (module docs).
///
/// # Errors
/// [`Error::Adapter`] for a slot whose branch is not `x·A·B` on a 2-D input.
pub fn mixed(g: &mut Graph, slots: &[LayerSlot], capacity: usize) -> Result<()> {
    let rows = batch_rows(g, slots)?;
    let ids = g.input(ADAPTER_IDS, [rows], DType::I64);
    let d = slots[0].dtype;
    let one = g.constant(TensorData::full(&[rows, 1].into(), 1.0, d))?;
    for s in slots {
        let xa = required(g, &s.param("lora_xa"), &s.path)?;
        let xab = required(g, &s.param("lora_xab"), &s.path)?;
        let x = g.operands(xa)[0];
        let fo = s.fan_out;
        let a = g.parameter(&s.param("lora_a_stack"), [capacity, s.fan_in, s.rank], d);
        let b = g.parameter(&s.param("lora_b_stack"), [capacity, s.rank, fo], d);
        let new_xa = g.named(s.param("lora_xa")).gather_matmul(x, a, ids)?;
        let new_xab = g.named(s.param("lora_xab")).gather_matmul(new_xa, b, ids)?;
        g.replace_uses(xab, new_xab)?;
        if s.bias {
            let old = param_of(g, s, "lora_bias")?;
            let stack = g.parameter(&s.param("lora_bias_stack"), [capacity, 1, fo], d);
            let per_row = g.named(s.param("lora_bias_rows"));
            let per_row = per_row.gather_matmul(one, stack, ids)?;
            replace_broadcast(g, old, per_row)?;
        }
        if s.dora_base.is_some() {
            let old = param_of(g, s, "lora_dora_scale")?;
            let stack = g.parameter(&s.param("lora_dora_scale_stack"), [capacity, 1, fo], d);
            let rows_name = s.param("lora_dora_scale_rows");
            let delta = g.named(rows_name.clone()).gather_matmul(one, stack, ids)?;
            let unit = g.constant(TensorData::scalar(1.0, d))?;
            let per_row = g.named(rows_name).add(delta, unit)?;
            replace_broadcast(g, old, per_row)?;
        }
    }
    dce(g)
}

fn param_of(g: &Graph, s: &LayerSlot, suffix: &str) -> Result<NodeId> {
    parameter(g, &s.param(suffix)).ok_or_else(|| {
        let why = format!("the serving graph has no Parameter `{}`", s.param(suffix));
        err(&s.path, why)
    })
}

/// Makes every user of the `[out]` node `old` read the `[rows, out]` node
/// `new` instead. Its users must be broadcasting elementwise ops whose
/// result is already `[rows, out]`; each is rebuilt on `new` (same op and
/// name) and takes the old user's place.
fn replace_broadcast(g: &mut Graph, old: NodeId, new: NodeId) -> Result<()> {
    let new_shape = g.node(new).map(|n| n.shape.clone());
    for user in g.users(old) {
        let node = g.node(user).expect("internal: live user").clone();
        if !node.op.is_elementwise() || Some(&node.shape) != new_shape.as_ref() {
            let why = format!(
                "a per-feature adapter vector is read by {} `{}` of shape {}, not a [rows, out] elementwise op",
                node.op,
                node.name.as_deref().unwrap_or("?"),
                node.shape
            );
            return Err(err(&g.desc(old).to_string(), why));
        }
        let args: Vec<NodeId> = g
            .operands(user)
            .iter()
            .map(|&o| if o == old { new } else { o })
            .collect();
        let rebuilt = match node.name {
            Some(n) => g.named(n).push(node.op, &args)?,
            None => g.push(node.op, &args)?,
        };
        g.replace_uses(user, rebuilt)?;
    }
    Ok(())
}
