//! Errors of the kernels crate.

/// What a kernel refused to do, with the offending sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A matrix view does not fit in its buffer.
    #[error("{what}: a {rows}×{cols} view with strides ({row_stride}, {col_stride}) needs {needed} elements, the buffer has {len}")]
    BufferTooSmall {
        /// Which operand.
        what: &'static str,
        /// Rows of the view.
        rows: usize,
        /// Columns of the view.
        cols: usize,
        /// Distance between consecutive rows.
        row_stride: usize,
        /// Distance between consecutive columns.
        col_stride: usize,
        /// Elements the view addresses.
        needed: usize,
        /// Elements the buffer has.
        len: usize,
    },
    /// Operand shapes that do not chain (`a` is m×k, `b` must be k×n, `c` m×n).
    #[error("gemm: shapes do not chain: a is {a:?}, b is {b:?}, c is {c:?}")]
    GemmShape {
        /// Rows and columns of `a`.
        a: (usize, usize),
        /// Rows and columns of `b`.
        b: (usize, usize),
        /// Rows and columns of `c`.
        c: (usize, usize),
    },
    /// Caller-provided workspace shorter than the kernel needs.
    #[error("{what}: workspace has {len} elements, {needed} are needed")]
    Workspace {
        /// Which kernel.
        what: &'static str,
        /// Elements needed.
        needed: usize,
        /// Elements provided.
        len: usize,
    },
    /// A buffer whose length does not match the shape it is used with.
    #[error("{what}: expected {expected} elements, got {actual}")]
    Length {
        /// Which operand.
        what: &'static str,
        /// Elements expected.
        expected: usize,
        /// Elements provided.
        actual: usize,
    },
    /// A geometry that produces no valid output (e.g. kernel larger than the padded input).
    #[error("{what}: {message}")]
    Geometry {
        /// Which kernel.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Result of a kernel call.
pub type Result<T> = std::result::Result<T, KernelError>;
