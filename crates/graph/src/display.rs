//! A stable text dump of a graph, one line per node, for golden tests and
//! debugging:
//!
//! ```text
//! %0 = input{"x"} -> f32[4, 8]
//! %2 = matmul(%0, %1) -> f32[4, 16] @mlp.fc1
//! outputs: %2
//! ```
//!
//! Nodes appear in [`Graph::topo_order`] (operands first, ties by index), so
//! the dump of the same graph is the same text. The name after `@` is the
//! node's name, left out for Input and Parameter nodes named like their op.

use crate::{Graph, NodeId, Op};
use std::fmt::{self, Write};

/// The dump of `graph`: one line per node, then one line listing the outputs.
pub fn dump(graph: &Graph) -> String {
    let mut out = String::new();
    // A cyclic graph still dumps, in index order, so it can be inspected.
    let order = graph.topo_order().unwrap_or_else(|_| graph.node_ids());
    for id in order {
        out.push_str(&node_line(graph, id));
        out.push('\n');
    }
    let outputs: Vec<String> = graph.outputs().iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "outputs: {}", outputs.join(", "));
    out
}

/// `%2 = matmul(%0, %1) -> f32[4, 16] @mlp.fc1`.
pub fn node_line(graph: &Graph, id: NodeId) -> String {
    let Some(node) = graph.node(id) else {
        return format!("{id} = <removed>");
    };
    let operands: Vec<String> = graph.operands(id).iter().map(ToString::to_string).collect();
    let args = if operands.is_empty() {
        String::new()
    } else {
        format!("({})", operands.join(", "))
    };
    let mut line = format!("{id} = {}{args} -> {}{}", node.op, node.dtype, node.shape);
    let own_name = match &node.op {
        Op::Input { name } | Op::Parameter { name } => Some(name),
        _ => None,
    };
    if let Some(name) = node.name.as_ref().filter(|n| Some(*n) != own_name) {
        let _ = write!(line, " @{name}");
    }
    line
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&dump(self))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Graph};

    #[test]
    fn dump_lists_nodes_operands_types_and_names() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3], DType::F32);
        let w = g.parameter("fc.weight", [3, 4], DType::F32);
        let y = g.named("fc").matmul(x, w).expect("2×3 · 3×4");
        g.set_outputs(&[y]).expect("y is a node");
        let expected = "%0 = input{\"x\"} -> f32[2, 3]\n\
                        %1 = parameter{\"fc.weight\"} -> f32[3, 4]\n\
                        %2 = matmul(%0, %1) -> f32[2, 4] @fc\n\
                        outputs: %2\n";
        assert_eq!(g.to_string(), expected);
    }
}
