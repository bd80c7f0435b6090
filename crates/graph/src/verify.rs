//! The graph verifier: checks every invariant the interpreter, the passes
//! and the JIT rely on, and reports every violation, each with the node's
//! id, name and op.
//!
//! Invariants checked:
//!
//! 1. **Acyclic.** The graph is a DAG (a cycle is reported once, at a node on it).
//! 2. **Operand positions.** A node's incoming edges carry the positions
//!    `0, 1, …, n−1`, each exactly once.
//! 3. **Operand count.** `n` is accepted by the op's [`Arity`](crate::Arity).
//! 4. **Types.** Shape inference (`shape.rs`) accepts the
//!    operands' declared shapes and dtypes and the op's attributes (axes in
//!    range, valid permutation, conv geometry, …), and yields exactly the
//!    node's declared shape and dtype. For a Constant that is its data's
//!    shape and dtype.
//! 5. **Inputs.** Every id in [`Graph::inputs`] is a live Input node, listed
//!    once, and every Input node is listed.
//! 6. **Outputs.** There is at least one output and every id in
//!    [`Graph::outputs`] is a live node.
//! 7. **Unique names.** No two Input nodes share a name, nor two
//!    Parameter nodes (a weight used twice is one node used twice).

use crate::shape::{infer, InferError};
use crate::{DType, Error, Graph, NodeId, Op, Result, Shape, Violation};
use std::collections::{HashMap, HashSet};

/// Checks all invariants of the [module documentation](self).
///
/// # Errors
/// [`Error::Verify`] listing every violation found.
pub fn verify(graph: &Graph) -> Result<()> {
    let violations = violations(graph);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(violations))
    }
}

/// Every violation, in node order then graph-level ones.
pub fn violations(graph: &Graph) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Err(Error::Cycle { node }) = graph.topo_order() {
        let op = node
            .id
            .and_then(|id| graph.node(id))
            .map(|n| n.op.to_string());
        out.push(Violation {
            node: Some(node),
            op: op.unwrap_or_default(),
            message: "is on a cycle".into(),
        });
    }
    for id in graph.node_ids() {
        check_node(graph, id, &mut out);
    }
    check_inputs(graph, &mut out);
    check_outputs(graph, &mut out);
    check_names(graph, &mut out);
    out
}

fn check_node(graph: &Graph, id: NodeId, out: &mut Vec<Violation>) {
    let node = graph.node(id).expect("internal: node_ids lists live nodes");
    let mut report = |message: String| {
        out.push(Violation {
            node: Some(graph.desc(id)),
            op: node.op.to_string(),
            message,
        })
    };
    let positions = graph.operand_positions(id);
    if positions.iter().enumerate().any(|(i, &p)| i != p) {
        report(format!(
            "operand positions {positions:?} are not 0..{}",
            positions.len()
        ));
        return;
    }
    let operands = graph.operands(id);
    let ins: Vec<_> = operands
        .iter()
        .map(|&o| {
            let n = graph.node(o).expect("internal: edges join live nodes");
            (&n.shape, n.dtype)
        })
        .collect();
    match infer(&node.op, &ins) {
        Ok(Some((shape, dtype))) if shape != node.shape || dtype != node.dtype => report(format!(
            "declared {}{}, but its operands give {dtype}{shape}",
            node.dtype, node.shape
        )),
        Ok(_) => {}
        Err(e) => report(reason(&e, &ins)),
    }
}

fn check_inputs(graph: &Graph, out: &mut Vec<Violation>) {
    let mut listed = HashSet::new();
    for &id in graph.inputs() {
        let message = match graph.node(id) {
            None => format!("input {id} is not a node of the graph"),
            Some(n) if !matches!(n.op, Op::Input { .. }) => format!("input {id} is a {}", n.op),
            Some(_) if !listed.insert(id) => format!("input {id} is listed twice"),
            Some(_) => continue,
        };
        out.push(graph_violation(message));
    }
    for id in graph.node_ids() {
        let node = graph.node(id).expect("internal: node_ids lists live nodes");
        if matches!(node.op, Op::Input { .. }) && !listed.contains(&id) {
            out.push(Violation {
                node: Some(graph.desc(id)),
                op: node.op.to_string(),
                message: "is an Input missing from the graph's inputs".into(),
            });
        }
    }
}

fn check_outputs(graph: &Graph, out: &mut Vec<Violation>) {
    if graph.outputs().is_empty() {
        out.push(graph_violation("the graph has no outputs".into()));
    }
    for &id in graph.outputs() {
        if graph.node(id).is_none() {
            out.push(graph_violation(format!(
                "output {id} is not a node of the graph"
            )));
        }
    }
}

fn check_names(graph: &Graph, out: &mut Vec<Violation>) {
    let mut seen: HashMap<(bool, &str), NodeId> = HashMap::new();
    for id in graph.node_ids() {
        let node = graph.node(id).expect("internal: node_ids lists live nodes");
        let key = match &node.op {
            Op::Input { name } => (true, name.as_str()),
            Op::Parameter { name } => (false, name.as_str()),
            _ => continue,
        };
        if let Some(first) = seen.insert(key, id) {
            out.push(Violation {
                node: Some(graph.desc(id)),
                op: node.op.to_string(),
                message: format!("has the same name as {first}"),
            });
        }
    }
}

/// An inference error as a violation message (the node is named by the violation).
fn reason(e: &InferError, ins: &[(&Shape, DType)]) -> String {
    let shapes: Vec<String> = ins.iter().map(|(s, _)| s.to_string()).collect();
    let dtypes: Vec<String> = ins.iter().map(|(_, d)| d.to_string()).collect();
    match e {
        InferError::Arity(expected, actual) => {
            format!("takes {expected} operand(s), got {actual}")
        }
        InferError::Shape(r) => format!("operand shapes ({}): {r}", shapes.join(", ")),
        InferError::DType(r) => format!("operand dtypes ({}): {r}", dtypes.join(", ")),
    }
}

fn graph_violation(message: String) -> Violation {
    Violation {
        node: None,
        op: String::new(),
        message,
    }
}
