//! Strided matrix views: the operands of [`gemm`](super::gemm).
//!
//! A view checks at construction that every element it addresses lies in
//! its buffer, so the kernels index it without further checks of their own.

use crate::{KernelError, Result};

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
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
        check_span(
            "matrix view",
            data.len(),
            rows,
            cols,
            row_stride,
            col_stride,
        )?;
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

impl<'a, T> MatRef<'a, T> {
    /// The same view over `data`, the same buffer seen as another type.
    pub(super) fn retype<U>(self, data: &'a [U]) -> MatRef<'a, U> {
        debug_assert_eq!(data.len(), self.data.len());
        MatRef {
            data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// A mutable row-major matrix view with a leading dimension (`row_stride ≥ cols`).
#[derive(Debug)]
pub struct MatMut<'a, T> {
    pub(super) data: &'a mut [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: usize,
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
