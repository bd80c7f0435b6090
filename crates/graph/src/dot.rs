//! Graphviz pictures of a graph.
//!
//! Each node is a box labelled with its id and op, its dtype and shape, and
//! its name. Nodes of a LoRA branch — whose name contains `.lora_` or has a
//! path segment `lora` or `lora_*` — are drawn inside one cluster per
//! adapter, labelled with the adapter path (the name before that segment),
//! so the low-rank branch of each adapted layer is visible at a glance.
//! Inputs are drawn as houses, Parameters in blue, Constants in grey, and
//! outputs with a double border. [`to_dot_with`] also draws the groups of
//! a [`FusionPlan`] as clusters. Edges are labelled with the operand
//! position where a node has more than one operand.

use crate::passes::FusionPlan;
use crate::{Graph, NodeId, Op};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// The adapter path of a LoRA node name: the part before `.lora_…` or before
/// a `lora` / `lora_*` path segment; `None` for names outside LoRA branches.
///
/// `encoder.layer.0.query.lora_a` → `encoder.layer.0.query`; `lora_b` → ``.
pub fn lora_adapter_path(name: &str) -> Option<&str> {
    let mut start = 0;
    for segment in name.split('.') {
        if segment == "lora" || segment.starts_with("lora_") {
            return Some(name[..start].trim_end_matches('.'));
        }
        start += segment.len() + 1;
    }
    None
}

/// The graph in Graphviz DOT syntax.
pub fn to_dot(graph: &Graph) -> String {
    to_dot_with(graph, &FusionPlan::default())
}

/// [`to_dot`] with each fusion group of `plan` (of at least two nodes,
/// counting its anchor) drawn as a cluster labelled `fusion N`; a node in
/// such a cluster is drawn there rather than in its LoRA cluster.
pub fn to_dot_with(graph: &Graph, plan: &FusionPlan) -> String {
    let mut out = String::from("digraph cranelora {\n");
    out.push_str("  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    let fused = fusion_clusters(graph, plan, &mut out);
    let mut clusters: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for id in graph
        .node_ids()
        .into_iter()
        .filter(|id| !fused.contains(id))
    {
        let name = graph.node(id).and_then(|n| n.name.as_deref());
        match name.and_then(lora_adapter_path) {
            Some(path) => clusters.entry(path).or_default().push(id),
            None => out.push_str(&node_stmt(graph, id, "  ")),
        }
    }
    for (i, (path, ids)) in clusters.iter().enumerate() {
        let label = if path.is_empty() { "(root)" } else { path };
        let _ = writeln!(out, "  subgraph cluster_lora_{i} {{");
        let _ = writeln!(out, "    label=\"LoRA {}\";", escape(label));
        out.push_str("    style=dashed; color=darkorange;\n");
        for &id in ids {
            out.push_str(&node_stmt(graph, id, "    "));
        }
        out.push_str("  }\n");
    }
    for id in graph.node_ids() {
        let operands = graph.operands(id);
        for (pos, op) in operands.iter().enumerate() {
            let (a, b) = (op.index(), id.index());
            match operands.len() {
                1 => writeln!(out, "  n{a} -> n{b};"),
                _ => writeln!(out, "  n{a} -> n{b} [label=\"{pos}\"];"),
            }
            .expect("internal: writing to a String cannot fail");
        }
    }
    out.push_str("}\n");
    out
}

/// Writes one cluster per fusion group of two or more nodes; returns their nodes.
fn fusion_clusters(graph: &Graph, plan: &FusionPlan, out: &mut String) -> HashSet<NodeId> {
    let mut fused = HashSet::new();
    for (i, group) in plan.groups.iter().enumerate() {
        let ids: Vec<NodeId> = group.anchor.iter().chain(&group.nodes).copied().collect();
        if ids.len() < 2 || ids.iter().any(|&id| graph.node(id).is_none()) {
            continue;
        }
        let _ = writeln!(out, "  subgraph cluster_fusion_{i} {{");
        let _ = writeln!(out, "    label=\"fusion {i}\";");
        out.push_str("    style=filled; color=lightyellow;\n");
        for &id in &ids {
            out.push_str(&node_stmt(graph, id, "    "));
        }
        out.push_str("  }\n");
        fused.extend(ids);
    }
    fused
}

/// `n3 [label="%3 matmul\nf32[4, 16]\nfc1"];`
fn node_stmt(graph: &Graph, id: NodeId, indent: &str) -> String {
    let node = graph.node(id).expect("internal: node_ids lists live nodes");
    let mut label = format!(
        "{id} {}\\n{}{}",
        escape(&node.op.to_string()),
        node.dtype,
        node.shape
    );
    if let Some(name) = &node.name {
        let _ = write!(label, "\\n{}", escape(name));
    }
    let mut style = match node.op {
        Op::Input { .. } => ", shape=house".to_string(),
        Op::Parameter { .. } => ", color=blue".to_string(),
        Op::Constant(_) => ", color=gray50".to_string(),
        _ => String::new(),
    };
    if graph.outputs().contains(&id) {
        style.push_str(", peripheries=2");
    }
    format!("{indent}n{} [label=\"{label}\"{style}];\n", id.index())
}

/// Escapes a string for a double-quoted DOT label.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_path_is_the_prefix_before_the_lora_segment() {
        let q = "encoder.layer.0.attention.self.query.lora_a";
        assert_eq!(
            lora_adapter_path(q),
            Some("encoder.layer.0.attention.self.query")
        );
        assert_eq!(lora_adapter_path("fc1.lora.A"), Some("fc1"));
        assert_eq!(lora_adapter_path("lora_b"), Some(""));
        assert_eq!(lora_adapter_path("fc1.weight"), None);
        assert_eq!(lora_adapter_path("explorer.loraxyz"), None);
    }
}
