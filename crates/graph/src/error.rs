//! The one error type of the graph crate.
//!
//! Every variant that concerns a node carries a [`NodeDesc`] (its id, once it
//! has one, and its name), the op, and the operand shapes or dtypes involved,
//! so a message says where in a model the problem is.

use crate::{DType, NodeId, Shape};
use cranelora_kernels::KernelError;
use std::fmt;

/// Which node an error is about: its id (absent while it is being built) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDesc {
    /// The node's id; `None` for a node that failed to be built.
    pub id: Option<NodeId>,
    /// The node's name (its layer path), if it has one.
    pub name: Option<String>,
}

impl NodeDesc {
    /// A description of a node with this id and name.
    pub fn new(id: Option<NodeId>, name: Option<String>) -> Self {
        Self { id, name }
    }
}

impl fmt::Display for NodeDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "node {id}")?,
            None => f.write_str("new node")?,
        }
        match &self.name {
            Some(name) => write!(f, " {name:?}"),
            None => f.write_str(" (unnamed)"),
        }
    }
}

/// One broken invariant found by [`verify`](crate::verify()).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The node at fault, or `None` for a graph-level problem.
    pub node: Option<NodeDesc>,
    /// The node's op (`name{attrs}`), empty for graph-level problems.
    pub op: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{node} ({}): {}", self.op, self.message),
            None => write!(f, "graph: {}", self.message),
        }
    }
}

/// Everything the graph crate can refuse.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// Operand shapes (or op attributes such as axes) that the op does not accept.
    #[error("{node}: {op}: operand shapes {}: {reason}", list(shapes))]
    Shape {
        /// The node being built or checked.
        node: NodeDesc,
        /// The op, with its attributes.
        op: String,
        /// The operands' shapes, in operand order.
        shapes: Vec<Shape>,
        /// What is wrong.
        reason: String,
    },
    /// Operand dtypes that the op does not accept.
    #[error("{node}: {op}: operand dtypes {}: {reason}", list(dtypes))]
    DType {
        /// The node being built or checked.
        node: NodeDesc,
        /// The op, with its attributes.
        op: String,
        /// The operands' dtypes, in operand order.
        dtypes: Vec<DType>,
        /// What is wrong.
        reason: String,
    },
    /// The wrong number of operands.
    #[error("{node}: {op} takes {expected} operand(s), got {actual}")]
    Arity {
        /// The node being built or checked.
        node: NodeDesc,
        /// The op, with its attributes.
        op: String,
        /// The operand count the op takes.
        expected: crate::Arity,
        /// The operand count given.
        actual: usize,
    },
    /// A `NodeId` that is not (or no longer) a node of this graph.
    #[error("{node}: {id} is not a node of this graph")]
    UnknownNode {
        /// The node that referred to it (or the node asked about).
        node: NodeDesc,
        /// The unknown id.
        id: NodeId,
    },
    /// The graph has a cycle through this node.
    #[error("{node}: the graph has a cycle through this node")]
    Cycle {
        /// A node on the cycle.
        node: NodeDesc,
    },
    /// [`verify`](crate::verify()) found broken invariants; all of them are listed.
    #[error("graph verification failed:\n{}", lines(.0))]
    Verify(Vec<Violation>),
    /// `interpret` was given the wrong number of inputs.
    #[error("the graph has {expected} input(s), {actual} were given")]
    InputCount {
        /// The graph's input count.
        expected: usize,
        /// The number given.
        actual: usize,
    },
    /// A Parameter with no value in the bindings.
    #[error("parameter {name:?} has no binding")]
    MissingBinding {
        /// The Parameter's name.
        name: String,
    },
    /// An input or binding whose shape or dtype differs from its node's.
    #[error(
        "{what} {name:?}: expected {}{}, got {}{}",
        expected_dtype,
        expected_shape,
        actual_dtype,
        actual_shape
    )]
    ValueMismatch {
        /// `input` or `parameter`.
        what: &'static str,
        /// The Input's or Parameter's name.
        name: String,
        /// The node's shape.
        expected_shape: Shape,
        /// The node's dtype.
        expected_dtype: DType,
        /// The given value's shape.
        actual_shape: Shape,
        /// The given value's dtype.
        actual_dtype: DType,
    },
    /// An index (gather or scatter-add id) outside `0..bound`.
    #[error("{node}: {op}: index {index} is out of range 0..{bound}")]
    IndexOutOfRange {
        /// The gather or scatter-add node.
        node: NodeDesc,
        /// The op, with its attributes.
        op: String,
        /// The offending index.
        index: i64,
        /// The number of rows of the table.
        bound: usize,
    },
    /// A kernel refused its arguments.
    #[error("{node}: {op}: kernel error: {source}")]
    Kernel {
        /// The node being run.
        node: NodeDesc,
        /// The op, with its attributes.
        op: String,
        /// The kernel's error (boxed: it is large and rare).
        source: Box<KernelError>,
    },
    /// Tensor data whose length does not match its shape.
    #[error("tensor data: shape {shape} needs {expected} elements, got {actual}")]
    DataLength {
        /// The requested shape.
        shape: Shape,
        /// Elements the shape has.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
}

/// Result of the graph crate's fallible functions.
pub type Result<T> = std::result::Result<T, Error>;

fn list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

fn lines(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
    parts.join("\n")
}
