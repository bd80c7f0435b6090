//! In-place updates: graph outputs whose values replace Parameter buffers
//! (training steps, see `train.rs`), placed in the memory plan.
//!
//! The memory plan (`memory.rs`) knows nothing of updates: a computed
//! output lives in its output slot (`Loc::Output(k)`), any other output is
//! copied into its slot at the end. A compiled graph with updates runs in
//! two ways: as a plain graph (`run` / `run_into`: every output slot is a
//! caller's buffer), or updating ([`crate::Trainer`]): the output slot of
//! update `k` is the bound buffer of its Parameter. So a node computed in
//! its update's slot stores the new value straight into the Parameter's
//! buffer, which is only correct if no read of the old value comes after.
//! [`place_updates`] checks that for every such node and moves the node to
//! a fresh arena buffer (copied into the slot at the end) when it does not
//! hold. The rule, with `s` the writer's step in the execution order (a
//! step is one node, or one fused loop group, see `lower/fused.rs`):
//!
//! - every node reading the Parameter's buffer (directly or through a view)
//!   runs before step `s`, except nodes of step `s` itself, which may read
//!   it only if they are elementwise and read it directly (not through a
//!   view) at the writer's shape: element `i` of the output then depends on
//!   element `i` of the old value only, read before it is written — true of
//!   every elementwise lowering, scalar or vector, and of a fused group,
//!   whose iterations load all their inputs before storing any output and
//!   whose members all have the group's shape. A step that is not purely
//!   elementwise (a GEMM with its epilogue, which writes C before reading
//!   the residual; a fused softmax, which writes the row before its
//!   selects read) allows no same-step reader;
//! - no output is copied from the Parameter's buffer at the end (the end
//!   copies run after every node).
//!
//! The end copies themselves run in [`end_copies`] order: copies from
//! Parameter buffers first (they read old values), then the rest (which may
//! write updated Parameters). A copy from a Parameter's buffer while that
//! Parameter is replaced by another copy from a Parameter buffer (updates
//! that swap Parameters) has no order that is always correct and is
//! rejected.

use crate::memory::{is_view, Loc, MemoryPlan, Slot, ALIGN};
use crate::{Error, Result, Spec};
use cranelora_graph::{Graph, NodeId};
use std::collections::HashMap;

/// One update of a compiled graph: output `output` replaces the buffer of
/// Parameter `parameter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The graph output holding the new value.
    pub output: usize,
    /// The Parameter (binding name) it replaces.
    pub parameter: String,
    /// `true`: the generated code stores the new value straight into the
    /// Parameter's buffer; `false`: it is computed elsewhere (an arena
    /// buffer, a constant, another buffer) and copied at the end of the call.
    pub in_place: bool,
    /// The Parameter's index in the compiled graph's parameter list, if the
    /// optimized graph reads it.
    pub(crate) param: Option<usize>,
}

/// Checks `updates` (output index, Parameter name) against the optimized
/// graph `g` and places their writers in `plan` (module docs).
///
/// # Errors
/// [`Error::Update`] for an output index out of range, a Parameter updated
/// twice or by two outputs, a dtype or shape differing from the
/// Parameter's, or a swap of Parameters.
pub(crate) fn place_updates(
    g: &Graph,
    steps: &[Vec<NodeId>],
    plan: &mut MemoryPlan,
    params: &[Spec],
    updates: &[(usize, String)],
) -> Result<Vec<Update>> {
    let outputs = g.outputs();
    let mut placed: Vec<Update> = Vec::with_capacity(updates.len());
    for (k, name) in updates {
        let err = |reason: String| Error::Update {
            output: *k,
            parameter: name.clone(),
            reason,
        };
        let Some(&id) = outputs.get(*k) else {
            return Err(err(format!("the graph has {} outputs", outputs.len())));
        };
        if placed
            .iter()
            .any(|u| u.output == *k || &u.parameter == name)
        {
            return Err(err("the output or the parameter is already updated".into()));
        }
        let param = params.iter().position(|p| &p.name == name);
        let node = g.node(id).expect("internal: outputs are live");
        if let Some(p) = param.map(|i| &params[i]) {
            if (&p.shape, p.dtype) != (&node.shape, node.dtype) {
                return Err(err(format!(
                    "the new value is {}{} but the parameter is {}{}",
                    node.dtype, node.shape, p.dtype, p.shape
                )));
            }
        }
        let mut in_place = false;
        if plan.locs.get(&id) == Some(&Loc::Output(*k)) {
            let step = steps
                .iter()
                .position(|s| s.contains(&id))
                .expect("internal: the steps list every output");
            in_place = param.is_none_or(|i| writable(g, steps, plan, id, step, Loc::Param(i)));
            if !in_place {
                relocate(plan, g, id, *k, step, steps.len());
            }
        }
        placed.push(Update {
            output: *k,
            parameter: name.clone(),
            in_place,
            param,
        });
    }
    check_no_swap(g, plan, &placed)?;
    Ok(placed)
}

/// Whether node `id`, at `step`, may write the buffer `target` (module docs).
fn writable(
    g: &Graph,
    steps: &[Vec<NodeId>],
    plan: &MemoryPlan,
    id: NodeId,
    step: usize,
    target: Loc,
) -> bool {
    let reads = |o: &NodeId| plan.locs.get(o) == Some(&target);
    if g.outputs().iter().any(reads) {
        return false; // copied from the old value at the end
    }
    let writer = g.node(id).expect("internal: live node");
    // Same-step readers are safe only in a loop group, whose iterations
    // load every operand element before storing it. A step holding a
    // product (a GEMM epilogue: C is written before the residual is read)
    // or a fused softmax (the row is written before its selects read) is not.
    let elementwise_step = steps[step].iter().all(|&n| {
        g.node(n)
            .is_some_and(|nd| nd.op.is_elementwise() || is_view(&nd.op))
    });
    let nodes = steps.iter().enumerate();
    for (s, &n) in nodes.flat_map(|(s, ns)| ns.iter().map(move |n| (s, n))) {
        let node = g.node(n).expect("internal: steps list live nodes");
        if is_view(&node.op) {
            continue; // a view reads nothing; its readers are checked
        }
        for o in g.operands(n) {
            if !reads(&o) {
                continue;
            }
            // Read directly (not through a view, which may permute
            // elements) at the writer's shape.
            let direct = g
                .node(o)
                .is_some_and(|on| on.shape == writer.shape && !is_view(&on.op));
            let ok =
                s < step || (s == step && elementwise_step && node.op.is_elementwise() && direct);
            if !ok {
                return false;
            }
        }
    }
    true
}

/// Moves node `id` (and its views), planned in output slot `k`, to an arena
/// buffer free from `step` to the end of the call; the end copy then moves
/// it into the slot.
fn relocate(plan: &mut MemoryPlan, g: &Graph, id: NodeId, k: usize, step: usize, end: usize) {
    let node = g.node(id).expect("internal: live node");
    let bytes = (node.shape.numel() * node.dtype.size_bytes()).max(1);
    let size = bytes.next_multiple_of(ALIGN);
    // First fit among the buffers live at some step of [step, end].
    let mut busy: Vec<(usize, usize)> = plan
        .slots
        .iter()
        .filter(|s| s.live.1 >= step && s.live.0 <= end)
        .map(|s| (s.offset, s.offset + s.bytes.next_multiple_of(ALIGN)))
        .collect();
    busy.sort_unstable();
    let mut offset = plan.scratch_bytes.next_multiple_of(ALIGN);
    for (start, stop) in busy {
        if start >= offset + size {
            break;
        }
        offset = offset.max(stop);
    }
    plan.arena_bytes = plan.arena_bytes.max(offset + size);
    plan.unshared_bytes += size;
    plan.slots.push(Slot {
        node: id,
        offset,
        bytes,
        live: (step, end),
    });
    for loc in plan.locs.values_mut() {
        if *loc == Loc::Output(k) {
            *loc = Loc::Arena(offset);
        }
    }
}

/// Rejects an output copied at the end from the buffer of a Parameter that
/// an update also replaces by a copy from a Parameter buffer: the copies
/// from Parameter buffers run in output order, so the read could see the
/// new value (module docs).
fn check_no_swap(g: &Graph, plan: &MemoryPlan, updates: &[Update]) -> Result<()> {
    let outputs = g.outputs();
    let update_of = |i: usize| updates.iter().find(|u| u.output == i);
    // The Parameter buffer output `i` is copied from, unless it is its own.
    let source = |i: usize| match plan.locs.get(&outputs[i]) {
        Some(&Loc::Param(j)) if update_of(i).is_none_or(|u| u.param != Some(j)) => Some(j),
        _ => None,
    };
    for i in 0..outputs.len() {
        let Some(j) = source(i) else { continue };
        let clash = updates
            .iter()
            .find(|w| w.param == Some(j) && source(w.output).is_some());
        if let Some(w) = clash {
            return Err(Error::Update {
                output: w.output,
                parameter: w.parameter.clone(),
                reason: format!(
                    "output {i} reads this parameter's old value while its new value is \
                     another parameter's old value (a swap of parameters)"
                ),
            });
        }
    }
    Ok(())
}

/// The outputs copied into their slots at the end of the call, in the order
/// the copies must run: copies from Parameter buffers first.
pub(crate) fn end_copies(outputs: &[NodeId], locs: &HashMap<NodeId, Loc>) -> Vec<usize> {
    let mut copies: Vec<usize> = (0..outputs.len())
        .filter(|&i| locs.get(&outputs[i]) != Some(&Loc::Output(i)))
        .collect();
    copies.sort_by_key(|&i| !matches!(locs.get(&outputs[i]), Some(Loc::Param(_))));
    copies
}
