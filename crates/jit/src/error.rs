//! The jit crate's error type.

use cranelora_graph::{DType, NodeDesc, Shape};

/// Everything compiling or running a graph can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JIT has no lowering for this op (see [`crate::lowerable`]).
    #[error("{node}: the JIT does not lower `{op}`")]
    Unsupported {
        /// The op with its attributes.
        op: String,
        /// The node: id and name.
        node: NodeDesc,
    },
    /// The graph failed verification or a pass failed.
    #[error(transparent)]
    Graph(#[from] cranelora_graph::Error),
    /// Cranelift refused a flag or the IR (verifier errors included).
    #[error("cranelift: {0}")]
    Module(#[from] Box<cranelift_module::ModuleError>),
    /// Cranelift's code generator failed.
    #[error("cranelift codegen: {0}")]
    Codegen(#[from] cranelift_codegen::CodegenError),
    /// A Cranelift setting was refused.
    #[error("cranelift setting: {0}")]
    Setting(#[from] cranelift_codegen::settings::SetError),
    /// `cranelift_native` does not support this host.
    #[error("unsupported host: {0}")]
    UnsupportedHost(String),
    /// A run got the wrong number of inputs or outputs.
    #[error("expected {expected} {what}, got {actual}")]
    Count {
        /// `inputs` or `outputs`.
        what: &'static str,
        /// What the compiled graph takes.
        expected: usize,
        /// What the call passed.
        actual: usize,
    },
    /// An input, binding or output buffer has the wrong dtype or shape.
    #[error(
        "{what} {name:?}: expected {expected_dtype}{expected_shape}, got {actual_dtype}{actual_shape}"
    )]
    Mismatch {
        /// `input`, `parameter` or `output`.
        what: &'static str,
        /// Its name (outputs: their index).
        name: String,
        /// The declared shape.
        expected_shape: Shape,
        /// The declared dtype.
        expected_dtype: DType,
        /// The shape passed.
        actual_shape: Shape,
        /// The dtype passed.
        actual_dtype: DType,
    },
    /// A buffer is not contiguous in row-major order.
    #[error("{what} {name:?} is not a contiguous row-major array")]
    NotContiguous {
        /// `input`, `parameter`, `output` or `constant`.
        what: &'static str,
        /// Its name or index.
        name: String,
    },
    /// No binding for a Parameter of the graph.
    #[error("no binding for parameter {name:?}")]
    MissingBinding {
        /// The Parameter's name.
        name: String,
    },
    /// A Gather / ScatterAdd id outside `0..bound`, caught by the generated code.
    #[error("{node}: id {index} is outside 0..{bound}")]
    IndexOutOfRange {
        /// The node.
        node: NodeDesc,
        /// The offending id.
        index: i64,
        /// The table's row count.
        bound: usize,
    },
    /// An in-place update (a graph output that replaces a Parameter's
    /// buffer, see `train.rs`) that cannot be compiled or bound.
    #[error("update of parameter {parameter:?} by output {output}: {reason}")]
    Update {
        /// The graph output holding the new value.
        output: usize,
        /// The Parameter (binding) it replaces.
        parameter: String,
        /// What is wrong.
        reason: String,
    },
    /// A kernel (GEMM, im2col) called by the generated code failed.
    #[error("{node}: a kernel called by the compiled code failed")]
    Kernel {
        /// The node.
        node: NodeDesc,
    },
    /// A serving adapter that does not fit the compiled model, or an
    /// unknown adapter name (crate::serve).
    #[error("adapter {adapter:?}: {reason}")]
    Adapter {
        /// The adapter's name (or layer path).
        adapter: String,
        /// What is wrong, naming the layer and shapes.
        reason: String,
    },
    /// A value given to `Bindings::insert_packed` that is not a 2-D float
    /// matrix.
    #[error("parameter {name:?} cannot be packed for the GEMM: {reason}")]
    Pack {
        /// The Parameter's name.
        name: String,
        /// Its dtype and shape.
        reason: String,
    },
}

impl From<cranelift_module::ModuleError> for Error {
    fn from(e: cranelift_module::ModuleError) -> Self {
        Self::Module(Box::new(e))
    }
}

/// The jit crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
