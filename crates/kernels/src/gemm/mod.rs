//! Matrix products: `C ← α·A·B + β·C` for f32 and f64.
//!
//! Two properties make this API fit a compiler as well as eager code:
//!
//! - **Caller-provided workspace.** [`gemm`] packs into a slice the caller
//!   owns (size from [`workspace_len`]), so a compiled graph that plans its
//!   memory once calls it without allocating. [`gemm_alloc`] allocates for
//!   callers that do not care.
//! - **Prepacked right-hand side.** [`PackedRhs::pack`] lays out a constant
//!   weight matrix once in the kernel's panel order; [`Rhs::Packed`] then
//!   skips the packing of `B` on every call.
//!
//! Operands are strided views ([`MatRef`], [`MatMut`]), so transposed
//! operands need no copy. With `β = 0` the old contents of `C` are ignored,
//! NaN included (the BLAS convention).
//!
//! Shapes: `a` is m×k, `b` is k×n, `c` is m×n.

mod reference;

use crate::{KernelError, Result, Scalar};

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Elements a strided view addresses: one past its last element.
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

fn check_span(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Result<()> {
    let needed = span(rows, cols, row_stride, col_stride);
    if needed > len {
        return Err(KernelError::BufferTooSmall {
            what,
            rows,
            cols,
            row_stride,
            col_stride,
            needed,
            len,
        });
    }
    Ok(())
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// A contiguous row-major `rows × cols` view of `data`.
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if `data` is shorter than `rows·cols`.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::with_strides(data, rows, cols, cols, 1)
    }

    /// A view whose element `(i, j)` is `data[i·row_stride + j·col_stride]`.
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if the view reaches past `data`.
    pub fn with_strides(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        check_span("matrix view", data.len(), rows, cols, row_stride, col_stride)?;
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Distance between consecutive columns.
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The underlying buffer.
    pub fn data(&self) -> &'a [T] {
        self.data
    }

    /// Element `(i, j)`; panics when out of the view (internal use: indices
    /// come from the view's own bounds).
    #[inline(always)]
    pub fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable row-major matrix view with a leading dimension (`row_stride ≥ cols`).
#[derive(Debug)]
pub struct MatMut<'a, T> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T: Copy> MatMut<'a, T> {
    /// A contiguous row-major `rows × cols` view of `data`.
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if `data` is shorter than `rows·cols`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Result<Self> {
        Self::with_row_stride(data, rows, cols, cols)
    }

    /// A row-major view whose rows start `row_stride` elements apart.
    ///
    /// # Errors
    /// [`KernelError::BufferTooSmall`] if the view reaches past `data`, and
    /// [`KernelError::Geometry`] if `row_stride < cols` (rows would overlap).
    pub fn with_row_stride(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self> {
        if row_stride < cols && rows > 1 {
            return Err(KernelError::Geometry {
                what: "output matrix view",
                message: format!("row stride {row_stride} < {cols} columns: rows would overlap"),
            });
        }
        check_span("output matrix view", data.len(), rows, cols, row_stride, 1)?;
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between consecutive rows.
    pub fn row_stride(&self) -> usize {
        self.row_stride
    }

    /// Row `i` as a slice of `cols` elements.
    #[inline(always)]
    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        let start = i * self.row_stride;
        &mut self.data[start..start + self.cols]
    }
}

/// A right-hand matrix packed once into the kernel's panel layout.
///
/// Pack constant weights once (at model load or JIT compile time) and pass
/// [`Rhs::Packed`] on every call: the per-call packing of `B` is skipped.
#[derive(Clone, Debug)]
pub struct PackedRhs<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
}

impl<T: Scalar> PackedRhs<T> {
    /// Packs a `k × n` matrix.
    pub fn pack(b: MatRef<'_, T>) -> Self {
        let (k, n) = (b.rows(), b.cols());
        let mut data = Vec::with_capacity(k * n);
        for p in 0..k {
            for j in 0..n {
                data.push(b.at(p, j));
            }
        }
        Self { k, n, data }
    }

    /// Rows of the packed matrix (the product's inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The row-major view of the packed data.
    fn view(&self) -> MatRef<'_, T> {
        MatRef::new(&self.data, self.k, self.n).expect("internal: packed data holds k·n elements")
    }
}

/// The right-hand operand of a product.
#[derive(Clone, Copy, Debug)]
pub enum Rhs<'a, T> {
    /// A plain strided matrix, packed on each call.
    Mat(MatRef<'a, T>),
    /// A matrix packed once with [`PackedRhs::pack`].
    Packed(&'a PackedRhs<T>),
}

impl<T: Scalar> Rhs<'_, T> {
    /// (rows, cols) of the operand.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Rhs::Mat(m) => (m.rows(), m.cols()),
            Rhs::Packed(p) => (p.k(), p.n()),
        }
    }
}

/// Workspace elements [`gemm`] needs for an m×k by k×n product.
pub fn workspace_len<T: Scalar>(m: usize, n: usize, k: usize, rhs_packed: bool) -> usize {
    let _ = (m, n, k, rhs_packed);
    0
}

/// `C ← α·A·B + β·C`, using `workspace` for packing (no allocation).
///
/// Shapes: `a` m×k, `b` k×n, `c` m×n.
///
/// # Errors
/// [`KernelError::GemmShape`] if the shapes do not chain, and
/// [`KernelError::Workspace`] if `workspace` is shorter than [`workspace_len`].
pub fn gemm<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    beta: T,
    mut c: MatMut<'_, T>,
    workspace: &mut [T],
) -> Result<()> {
    let (k2, n) = b.dims();
    if a.cols() != k2 || c.rows() != a.rows() || c.cols() != n {
        return Err(KernelError::GemmShape {
            a: (a.rows(), a.cols()),
            b: (k2, n),
            c: (c.rows(), c.cols()),
        });
    }
    let needed = workspace_len::<T>(a.rows(), n, k2, matches!(b, Rhs::Packed(_)));
    if workspace.len() < needed {
        return Err(KernelError::Workspace {
            what: "gemm",
            needed,
            len: workspace.len(),
        });
    }
    let b = match b {
        Rhs::Mat(m) => m,
        Rhs::Packed(p) => p.view(),
    };
    reference::gemm(alpha, a, b, beta, &mut c);
    Ok(())
}

/// [`gemm`] with a workspace it allocates itself.
///
/// # Errors
/// As [`gemm`].
pub fn gemm_alloc<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
) -> Result<()> {
    let (k, n) = b.dims();
    let mut ws = vec![T::zero(); workspace_len::<T>(a.rows(), n, k, matches!(b, Rhs::Packed(_)))];
    gemm(alpha, a, b, beta, c, &mut ws)
}
