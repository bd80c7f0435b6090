//! The graph: a petgraph `StableGraph` of [`Node`]s behind a small API.
//!
//! Edges run from operand to user and carry the operand position, so a node
//! may use the same operand twice (`x·x`). Node ids survive removals, which
//! lets passes rewrite a graph in place. petgraph never appears in the
//! public API: nodes are named by the [`NodeId`] newtype.

use crate::shape::{infer, InferError};
use crate::{DType, Error, NodeDesc, Op, Result, Shape};
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::fmt;

/// A node of one [`Graph`]; it stays valid until that node is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex);

impl NodeId {
    /// The node's index, as shown in dumps (`%3`).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}

/// One operation in a graph with its output type and provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What the node computes.
    pub op: Op,
    /// The output shape.
    pub shape: Shape,
    /// The output element type.
    pub dtype: DType,
    /// The layer path it came from (`encoder.layer.0.attention.self.query.lora_a`).
    pub name: Option<String>,
}

/// A computation DAG with listed inputs and outputs.
///
/// Build it with the per-op methods (`g.matmul(x, w)?`, see `builder.rs`),
/// which infer and check shapes and dtypes. [`Graph::named`] names the next
/// node built.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    inner: StableGraph<Node, usize>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
    pending_name: Option<String>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.inner.node_count()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.inner.node_count() == 0
    }

    /// The node, if `id` is a node of this graph.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.inner.node_weight(id.0)
    }

    /// The node, or [`Error::UnknownNode`].
    pub(crate) fn get(&self, id: NodeId) -> Result<&Node> {
        self.node(id).ok_or(Error::UnknownNode {
            node: NodeDesc::new(None, None),
            id,
        })
    }

    /// A description of the node for error messages.
    pub fn desc(&self, id: NodeId) -> NodeDesc {
        NodeDesc::new(Some(id), self.node(id).and_then(|n| n.name.clone()))
    }

    /// All node ids, in increasing index order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.inner.node_indices().map(NodeId).collect()
    }

    /// The operands of `id` in position order (empty for an unknown id).
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(usize, NodeId)> = self
            .inner
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The operand positions of `id`'s incoming edges, sorted (for the verifier).
    pub(crate) fn operand_positions(&self, id: NodeId) -> Vec<usize> {
        let mut p: Vec<usize> = self
            .inner
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| *e.weight())
            .collect();
        p.sort_unstable();
        p
    }

    /// The nodes that use `id`, each once, in increasing index order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self
            .inner
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        u.sort();
        u.dedup();
        u
    }

    /// The Input nodes, in the order `interpret` takes their values.
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    /// The output nodes, in the order `interpret` returns their values.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Sets the outputs.
    ///
    /// # Errors
    /// [`Error::UnknownNode`] if an id is not a node of this graph.
    pub fn set_outputs(&mut self, outputs: &[NodeId]) -> Result<()> {
        for &id in outputs {
            self.get(id)?;
        }
        self.outputs = outputs.to_vec();
        Ok(())
    }

    /// Names the next node built (by `push` or any per-op method), which
    /// consumes the name whether building succeeds or fails:
    /// `g.named("fc1.lora_a").matmul(x, a)?`.
    pub fn named(&mut self, name: impl Into<String>) -> &mut Self {
        self.pending_name = Some(name.into());
        self
    }

    /// Renames a node.
    ///
    /// # Errors
    /// [`Error::UnknownNode`] if `id` is not a node of this graph.
    pub fn set_name(&mut self, id: NodeId, name: Option<String>) -> Result<()> {
        let node = self.inner.node_weight_mut(id.0);
        let node = node.ok_or(Error::UnknownNode {
            node: NodeDesc::new(None, name.clone()),
            id,
        })?;
        node.name = name;
        Ok(())
    }

    /// Adds a node computing `op` on `operands`, with its shape and dtype inferred.
    ///
    /// Input and Parameter declare their type: build them with
    /// [`Graph::input`] and [`Graph::parameter`].
    ///
    /// # Errors
    /// [`Error::UnknownNode`], [`Error::Arity`], [`Error::Shape`] or
    /// [`Error::DType`], naming the node (its pending name), the op and the
    /// operand shapes and dtypes.
    pub fn push(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId> {
        let name = self.pending_name.take();
        let desc = NodeDesc::new(None, name.clone());
        let mut ins = Vec::with_capacity(operands.len());
        for &id in operands {
            let n = self.node(id).ok_or(Error::UnknownNode {
                node: desc.clone(),
                id,
            })?;
            ins.push((&n.shape, n.dtype));
        }
        let (shape, dtype) = match infer(&op, &ins) {
            Ok(Some(typed)) => typed,
            Ok(None) => {
                let reason = "input and parameter nodes declare their type: use Graph::input or \
                              Graph::parameter";
                return Err(infer_error(
                    desc,
                    &op,
                    &ins,
                    InferError::Shape(reason.into()),
                ));
            }
            Err(e) => return Err(infer_error(desc, &op, &ins, e)),
        };
        let node = Node {
            op,
            shape,
            dtype,
            name,
        };
        Ok(self.insert(node, operands))
    }

    /// Adds a node of a declared type with no operands (Input, Parameter).
    pub(crate) fn push_declared(&mut self, op: Op, shape: Shape, dtype: DType) -> NodeId {
        self.pending_name = None;
        let name = match &op {
            Op::Input { name } | Op::Parameter { name } => Some(name.clone()),
            _ => None,
        };
        let node = Node {
            op,
            shape,
            dtype,
            name,
        };
        self.insert(node, &[])
    }

    fn insert(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let is_input = matches!(node.op, Op::Input { .. });
        let id = NodeId(self.inner.add_node(node));
        for (pos, operand) in operands.iter().enumerate() {
            self.inner.add_edge(operand.0, id.0, pos);
        }
        if is_input {
            self.inputs.push(id);
        }
        id
    }

    /// Adds `node` with these operands without any check, and without
    /// listing it as an input: for tests of the verifier only.
    #[doc(hidden)]
    pub fn push_unchecked(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = NodeId(self.inner.add_node(node));
        for (pos, operand) in operands.iter().enumerate() {
            self.inner.add_edge(operand.0, id.0, pos);
        }
        id
    }

    /// Adds an edge `from → to` at `position` without any check: for tests
    /// of the verifier only (it can make a cycle).
    #[doc(hidden)]
    pub fn add_edge_unchecked(&mut self, from: NodeId, to: NodeId, position: usize) {
        self.inner.add_edge(from.0, to.0, position);
    }

    /// Removes a node and its edges. The input and output lists are left as
    /// they are; [`verify`](crate::verify()) reports an id listed there that
    /// is gone. Other ids stay valid; the removed id may be reused by a
    /// node added later (petgraph's `StableGraph` recycles vacant slots).
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.inner.remove_node(id.0)
    }

    /// Makes every user of `old` other than `new` itself, and every output
    /// slot holding `old`, use `new` (so `new` may be computed from `old`).
    ///
    /// # Errors
    /// [`Error::UnknownNode`] for an unknown id, [`Error::Shape`] if the two
    /// nodes' shapes or dtypes differ (results would change type).
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) -> Result<()> {
        let (a, b) = (self.get(old)?, self.get(new)?);
        if (&a.shape, a.dtype) != (&b.shape, b.dtype) {
            return Err(Error::Shape {
                node: self.desc(old),
                op: format!("replace_uses by {new}"),
                shapes: vec![a.shape.clone(), b.shape.clone()],
                reason: format!(
                    "types differ: {}{} vs {}{}",
                    a.dtype, a.shape, b.dtype, b.shape
                ),
            });
        }
        let uses: Vec<_> = self
            .inner
            .edges_directed(old.0, Direction::Outgoing)
            .filter(|e| e.target() != new.0)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, user, pos) in uses {
            self.inner.remove_edge(edge);
            self.inner.add_edge(new.0, user, pos);
        }
        for out in self.outputs.iter_mut().filter(|o| **o == old) {
            *out = new;
        }
        Ok(())
    }

    /// Every node, operands before users: a depth-first post-order from the
    /// nodes in index order, operands in position order, so the order is
    /// the same for the same graph.
    ///
    /// # Errors
    /// [`Error::Cycle`] naming a node on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        // 0: unvisited, 1: on the current path, 2: done.
        let bound = self.inner.node_bound();
        let mut state = vec![0u8; bound];
        let mut order = Vec::with_capacity(self.len());
        for root in self.node_ids() {
            if state[root.index()] != 0 {
                continue;
            }
            let mut stack = vec![(root, 0usize)];
            state[root.index()] = 1;
            while let Some((id, next)) = stack.pop() {
                let ops = self.operands(id);
                match ops.get(next) {
                    Some(&op) => {
                        stack.push((id, next + 1));
                        match state[op.index()] {
                            0 => {
                                state[op.index()] = 1;
                                stack.push((op, 0));
                            }
                            1 => {
                                return Err(Error::Cycle {
                                    node: self.desc(op),
                                })
                            }
                            _ => {}
                        }
                    }
                    None => {
                        state[id.index()] = 2;
                        order.push(id);
                    }
                }
            }
        }
        Ok(order)
    }
}

/// Adds the node context to an inference error.
pub(crate) fn infer_error(
    node: NodeDesc,
    op: &Op,
    ins: &[(&Shape, DType)],
    e: InferError,
) -> Error {
    let op_s = op.to_string();
    match e {
        InferError::Arity(expected, actual) => Error::Arity {
            node,
            op: op_s,
            expected,
            actual,
        },
        InferError::Shape(reason) => Error::Shape {
            node,
            op: op_s,
            shapes: ins.iter().map(|(s, _)| (*s).clone()).collect(),
            reason,
        },
        InferError::DType(reason) => Error::DType {
            node,
            op: op_s,
            dtypes: ins.iter().map(|(_, d)| *d).collect(),
            reason,
        },
    }
}
