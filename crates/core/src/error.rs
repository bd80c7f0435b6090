//! Errors of cranelora-core.
//!
//! Every error that concerns a layer carries its path in the model tree
//! (`encoder.layer.0.attention.query`). A leaf layer reports with an empty
//! path and its kind; each container that passes the error up prefixes the
//! child's name with [`Error::at`], so the message a user sees names the
//! full path.

use cranelora_kernels::KernelError;

/// What went wrong, with the offending layer path, shapes or values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A tensor whose shape a layer or operation cannot accept.
    #[error(
        "{}{kind}: {what}: expected shape {expected}, got {actual:?}",
        at(path)
    )]
    Shape {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer or operation (`Dense`, `matmul`, …).
        kind: String,
        /// Which tensor.
        what: String,
        /// The accepted shape, e.g. `[*, 64]`.
        expected: String,
        /// The shape received.
        actual: Vec<usize>,
    },
    /// Two shapes that do not combine (broadcasting, matmul).
    #[error("{}{op}: shapes {lhs:?} and {rhs:?} are incompatible", at(path))]
    Incompatible {
        /// Layer path (empty at the root).
        path: String,
        /// Operation.
        op: String,
        /// Left operand's shape.
        lhs: Vec<usize>,
        /// Right operand's shape.
        rhs: Vec<usize>,
    },
    /// A buffer whose length does not match the shape it was given.
    #[error("{}{what}: {expected} elements expected, got {actual}", at(path))]
    Length {
        /// Layer path (empty at the root).
        path: String,
        /// What was being built or set.
        what: String,
        /// Elements expected.
        expected: usize,
        /// Elements provided.
        actual: usize,
    },
    /// A token id outside `0..vocab`.
    #[error(
        "{}{kind}: id {id} at position {position} is out of range 0..{vocab}",
        at(path)
    )]
    IdOutOfRange {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer.
        kind: String,
        /// The id.
        id: i64,
        /// Flat position of the id in the input.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An input a layer needs was not passed.
    #[error("{}{kind}: missing input: {what}", at(path))]
    MissingInput {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer.
        kind: String,
        /// What it needed.
        what: String,
    },
    /// `backward` without a cached forward (eval mode, or no forward yet).
    #[error("{}{kind}: backward called without a training-mode forward", at(path))]
    NoForwardCache {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer.
        kind: String,
    },
    /// A path that names no layer in the tree.
    #[error("no layer at path `{path}`; available: {}", available.join(", "))]
    NoSuchLayer {
        /// The path asked for.
        path: String,
        /// The paths that exist.
        available: Vec<String>,
    },
    /// A weight name not found, or a weight left unset, when loading by name.
    #[error("weight `{name}`: {problem}")]
    Weight {
        /// Full weight path, e.g. `fc1.weight`.
        name: String,
        /// What is wrong (missing, unexpected, shape).
        problem: String,
    },
    /// A configuration value a layer cannot be built with.
    #[error("{}{kind}: invalid configuration: {message}", at(path))]
    Config {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer or object.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A kernel refused its arguments.
    #[error("{}kernel: {source}", at(path))]
    Kernel {
        /// Layer path (empty at the root).
        path: String,
        /// The kernel's error.
        source: KernelError,
    },
    /// A layer that cannot do what was asked (e.g. be exported as a graph).
    #[error("{}{kind}: unsupported: {what}", at(path))]
    Unsupported {
        /// Layer path (empty at the root).
        path: String,
        /// Kind of layer.
        kind: String,
        /// What is not supported.
        what: String,
    },
    /// A file that cannot be read, written or understood (weights, adapters,
    /// configs); the message names the key, the expected and actual shape or
    /// dtype, or the field.
    #[error("file `{path}`: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The graph crate refused a node or a graph while exporting.
    #[error("{}graph: {source}", at(path))]
    Graph {
        /// Layer path (empty at the root).
        path: String,
        /// The graph crate's error (boxed: it is large and rare).
        source: Box<cranelora_graph::Error>,
    },
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("layer `{path}`: ")
    }
}

impl From<KernelError> for Error {
    fn from(source: KernelError) -> Self {
        Error::Kernel {
            path: String::new(),
            source,
        }
    }
}

impl From<cranelora_graph::Error> for Error {
    fn from(source: cranelora_graph::Error) -> Self {
        Error::Graph {
            path: String::new(),
            source: Box::new(source),
        }
    }
}

impl Error {
    /// Prefixes the error's layer path with a child name: what a container
    /// does when an error comes up from its child `name`.
    pub fn at(mut self, name: &str) -> Self {
        if let Some(path) = self.path_mut() {
            *path = if path.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
        }
        self
    }

    /// The layer path the error concerns, if it concerns one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Error::Shape { path, .. }
            | Error::Incompatible { path, .. }
            | Error::Length { path, .. }
            | Error::IdOutOfRange { path, .. }
            | Error::MissingInput { path, .. }
            | Error::NoForwardCache { path, .. }
            | Error::Config { path, .. }
            | Error::Kernel { path, .. }
            | Error::Unsupported { path, .. }
            | Error::Graph { path, .. } => Some(path),
            Error::NoSuchLayer { .. } | Error::Weight { .. } | Error::Io { .. } => None,
        }
    }

    fn path_mut(&mut self) -> Option<&mut String> {
        match self {
            Error::Shape { path, .. }
            | Error::Incompatible { path, .. }
            | Error::Length { path, .. }
            | Error::IdOutOfRange { path, .. }
            | Error::MissingInput { path, .. }
            | Error::NoForwardCache { path, .. }
            | Error::Config { path, .. }
            | Error::Kernel { path, .. }
            | Error::Unsupported { path, .. }
            | Error::Graph { path, .. } => Some(path),
            Error::NoSuchLayer { .. } | Error::Weight { .. } | Error::Io { .. } => None,
        }
    }

    /// A shape error of a leaf layer or operation.
    pub fn shape(kind: &str, what: &str, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape {
            path: String::new(),
            kind: kind.to_string(),
            what: what.to_string(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }

    /// A configuration error of a leaf layer.
    pub fn config(kind: &str, message: impl Into<String>) -> Self {
        Error::Config {
            path: String::new(),
            kind: kind.to_string(),
            message: message.into(),
        }
    }
}

/// Result of a cranelora-core operation.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_builds_the_path_from_the_leaf_up() {
        let e = Error::shape("Dense", "input", "[*, 4]", &[2, 3])
            .at("query")
            .at("attention");
        assert_eq!(e.path(), Some("attention.query"));
        let msg = e.to_string();
        assert!(msg.contains("layer `attention.query`"), "{msg}");
        assert!(msg.contains("[*, 4]") && msg.contains("[2, 3]"), "{msg}");
    }
}
