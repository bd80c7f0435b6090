//! Batched products `C_i = A_i·B_i` of one shape, in one call.
//!
//! The JIT's batched MatMul (attention: 96 products of 128×32×128 in W3)
//! used to make one [`gemm`](super::gemm) call per entry; each entry is
//! below the threading threshold, so the whole batch ran on one thread.
//! [`gemm_batched`] instead:
//!
//! - runs **one product** of `(count·m) × k × n` when the entries of `A`
//!   are consecutive and every entry shares one `B` (a 2-D weight applied
//!   to a `[batch, seq, d]` activation), which threads and blocks better
//!   than `count` small ones;
//! - otherwise, when each entry is too small to split, hands **whole
//!   entries** to the pool's threads, each packing into its own part of the
//!   workspace;
//! - otherwise (large entries) runs them in turn, each split over threads.
//!
//! With a [`StridedLayout`] the entries are read through row and column
//! strides and written with a row stride at per-entry offsets (attention
//! heads in place, see `layout.rs`). Such a batch is never one product; its
//! small entries run on the pool's threads when the layout's outputs are
//! disjoint, each computed into the thread's workspace and then copied row
//! by row to its place.

use super::driver::per_thread_len;
use super::{gemm_ep, select, Epilogue, Isa, MatMut, MatRef, PackedRhs, Rhs, StridedLayout};
use crate::{pool, KernelError, Result, Scalar};
use std::sync::Mutex;

/// The shape of a batch and where its entries are.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Rows of each `A_i` and `C_i`.
    pub m: usize,
    /// Columns of each `B_i` and `C_i`.
    pub n: usize,
    /// Columns of `A_i`, rows of `B_i`.
    pub k: usize,
    /// Element offsets of each entry's `A_i` (row-major m×k) and `B_i`
    /// (row-major k×n; ignored with a packed `B`). `C_i` starts at `i·m·n`.
    pub offsets: &'a [(usize, usize)],
    /// Strided entries instead (the offsets above still locate `A_i` and
    /// `B_i`); `None`: contiguous row-major entries.
    pub layout: Option<&'a StridedLayout>,
}

/// The right-hand operands of a batch.
#[derive(Clone, Copy, Debug)]
pub enum BatchRhs<'a, T> {
    /// Row-major `B_i` at the batch's offsets in this buffer.
    Entries(&'a [T]),
    /// One prepacked `B` for every entry.
    Packed(&'a PackedRhs<T>),
}

impl Batch<'_> {
    /// Whether all `A_i` are consecutive and all share one `B`: then the
    /// batch is one `(count·m) × k × n` product.
    fn is_one_product<T>(&self, b: &BatchRhs<'_, T>) -> bool {
        if self.layout.is_some() {
            return false;
        }
        let (m, k) = (self.m, self.k);
        let b0 = self.offsets.first().map_or(0, |o| o.1);
        let same_b = matches!(b, BatchRhs::Packed(_)) || self.offsets.iter().all(|o| o.1 == b0);
        same_b
            && self
                .offsets
                .iter()
                .enumerate()
                .all(|(i, o)| o.0 == i * m * k)
    }

    /// Whether each entry is below the threading threshold.
    fn entries_are_small(&self) -> bool {
        let flops = 2usize
            .saturating_mul(self.m)
            .saturating_mul(self.n)
            .saturating_mul(self.k);
        flops < pool::PARALLEL_MIN_FLOPS
    }

    /// Row and column strides of the `A_i`, the `B_i`, and the row stride of the `C_i`.
    fn strides(&self) -> ((usize, usize), (usize, usize), usize) {
        match self.layout {
            Some(l) => (l.a, l.b, l.c_row),
            None => ((self.k, 1), (self.n, 1), self.n),
        }
    }

    /// Element offset of `C_i`.
    fn c_offset(&self, i: usize) -> usize {
        self.layout.map_or(i * self.m * self.n, |l| l.c[i])
    }
}

/// Elements a strided `rows × cols` view addresses from its start.
fn span(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        // Saturating: a span past usize::MAX fails the length checks
        // instead of wrapping to a small number.
        ((rows - 1).saturating_mul(rs))
            .saturating_add((cols - 1).saturating_mul(cs))
            .saturating_add(1)
    }
}

/// Workspace elements [`gemm_batched`] needs for `count` m×k by k×n products.
pub fn batched_workspace_len<T: Scalar>(
    count: usize,
    m: usize,
    n: usize,
    k: usize,
    packed: bool,
) -> usize {
    // Each thread's part also holds one m×n output (strided layouts).
    let one = per_thread_len::<T>(select::blocking::<T>(Isa::detect()), m, n, k, packed)
        + m.saturating_mul(n);
    super::workspace_len::<T>(count.saturating_mul(m), n, k, packed)
        .max(super::workspace_len::<T>(m, n, k, packed))
        .max(one.saturating_mul(pool::threads().min(count)))
}

fn out_of_range(what: &'static str, needed: usize, len: usize) -> KernelError {
    KernelError::Length {
        what,
        expected: needed,
        actual: len,
    }
}

/// Checks that every entry lies in its buffer.
fn check<T: Scalar>(batch: &Batch<'_>, a: &[T], b: &BatchRhs<'_, T>, c: &[T]) -> Result<()> {
    let (m, n, k) = (batch.m, batch.n, batch.k);
    let (sa, sb, _) = batch.strides();
    if let Some(l) = batch.layout {
        if (l.m, l.n, l.c.len()) != (m, n, batch.offsets.len()) {
            return Err(KernelError::Geometry {
                what: "gemm_batched layout",
                message: format!(
                    "layout for {} entries of {}×{}, batch has {} of {m}×{n}",
                    l.c.len(),
                    l.m,
                    l.n,
                    batch.offsets.len()
                ),
            });
        }
    }
    let a_end = batch
        .offsets
        .iter()
        .map(|o| o.0.saturating_add(span(m, k, sa)))
        .max()
        .unwrap_or(0);
    if a_end > a.len() {
        return Err(out_of_range("gemm_batched A", a_end, a.len()));
    }
    match b {
        BatchRhs::Entries(b) => {
            let b_end = batch
                .offsets
                .iter()
                .map(|o| o.1.saturating_add(span(k, n, sb)))
                .max()
                .unwrap_or(0);
            if b_end > b.len() {
                return Err(out_of_range("gemm_batched B", b_end, b.len()));
            }
        }
        BatchRhs::Packed(p) if (p.k(), p.n()) != (k, n) => {
            return Err(KernelError::GemmShape {
                a: (m, k),
                b: (p.k(), p.n()),
                c: (m, n),
            });
        }
        BatchRhs::Packed(_) => {}
    }
    let c_len = batch
        .layout
        .map_or(batch.offsets.len() * m * n, StridedLayout::c_end);
    if c_len > c.len() {
        return Err(out_of_range("gemm_batched C", c_len, c.len()));
    }
    Ok(())
}

/// `C_i = A_i·B_i` for every entry of `batch`, then `epilogue` over the
/// stacked `(count·m) × n` output (`C` is overwritten, NaN included).
///
/// # Errors
/// [`KernelError::Length`] if an entry reaches past its buffer,
/// [`KernelError::GemmShape`] for a packed `B` of the wrong shape,
/// [`KernelError::Geometry`] for epilogue operands that do not fit, and
/// [`KernelError::Workspace`] if `workspace` is shorter than one entry needs.
pub fn gemm_batched<T: Scalar>(
    batch: &Batch<'_>,
    a: &[T],
    b: BatchRhs<'_, T>,
    c: &mut [T],
    workspace: &mut [T],
    epilogue: &Epilogue<'_, T>,
) -> Result<()> {
    let (m, n, k, count) = (batch.m, batch.n, batch.k, batch.offsets.len());
    check(batch, a, &b, c)?;
    epilogue.check(count * m, n)?;
    if count == 0 {
        return Ok(());
    }
    let (sa, sb, c_row) = batch.strides();
    let rhs = |bo: usize| -> Result<Rhs<'_, T>> {
        Ok(match b {
            BatchRhs::Entries(b) => Rhs::Mat(MatRef::with_strides(&b[bo..], k, n, sb.0, sb.1)?),
            BatchRhs::Packed(p) => Rhs::Packed(p),
        })
    };
    if batch.is_one_product(&b) {
        let a = MatRef::new(&a[..count * m * k], count * m, k)?;
        let c = MatMut::new(&mut c[..count * m * n], count * m, n)?;
        return gemm_ep(
            T::one(),
            a,
            rhs(batch.offsets[0].1)?,
            T::zero(),
            c,
            workspace,
            epilogue,
        );
    }
    let isa = match b {
        BatchRhs::Packed(p) => p.isa,
        BatchRhs::Entries(_) => Isa::detect(),
    };
    let strided_c = batch.layout.is_some();
    // Entries whose `C_i` is one dense block (rows `n` apart, or one row:
    // attention's score products) are written in place; the others (heads
    // merged into wider rows) go through the thread's workspace.
    let copy_out = batch.layout.is_some_and(|l| m > 1 && l.c_row != n);
    let per = per_thread_len::<T>(
        select::blocking::<T>(isa),
        m,
        n,
        k,
        matches!(b, BatchRhs::Packed(_)),
    ) + if strided_c { m * n } else { 0 };
    // `pool::threads()` may allocate (it asks the OS each time unless set):
    // only ask when entries could run in parallel.
    let may_split = count >= 2
        && batch.entries_are_small()
        && batch.layout.is_none_or(StridedLayout::outputs_disjoint);
    let slots = if may_split {
        pool::threads().min(count).min(workspace.len() / per.max(1))
    } else {
        1
    };
    // Entry i into `c_i` (an m×n view with row stride `row`).
    let entry = |i: usize, c_i: &mut [T], row: usize, ws: &mut [T]| -> Result<()> {
        let (ao, bo) = batch.offsets[i];
        let a_i = MatRef::with_strides(&a[ao..], m, k, sa.0, sa.1)?;
        let c_i = MatMut::with_row_stride(c_i, m, n, row)?;
        gemm_ep(
            T::one(),
            a_i,
            rhs(bo)?,
            T::zero(),
            c_i,
            ws,
            &epilogue.rows(i * m, m),
        )
    };
    if slots < 2 {
        for i in 0..count {
            entry(i, &mut c[batch.c_offset(i)..], c_row, workspace)?;
        }
        return Ok(());
    }
    let c_len = c.len();
    let shared = Shared {
        c: c.as_mut_ptr(),
        ws: workspace.as_mut_ptr(),
    };
    let failed = Mutex::new(None);
    pool::parallel_for_slots(count, slots, &|i, slot| {
        let result = if copy_out {
            // SAFETY: workspace chunk `slot` (slot < slots ≤ workspace.len() /
            // per) is used by one running task at a time (parallel_for_slots'
            // guarantee); nothing of `c` is borrowed.
            let ws = unsafe { shared.ws_part(slot * per, per) };
            let (out, ws) = ws.split_at_mut(m * n);
            entry(i, out, n, ws).map(|()| {
                for (r, row) in out.chunks_exact(n).enumerate() {
                    // SAFETY: row r of entry i lies in `c` (check: c_end ≤
                    // c_len) and no other task writes it (the layout's
                    // outputs are disjoint).
                    let at = batch.c_offset(i) + r * c_row;
                    debug_assert!(at + n <= c_len);
                    unsafe { shared.c_part(at, n) }.copy_from_slice(row);
                }
            })
        } else {
            // SAFETY: entry i's C is the dense block c_offset(i) .. + m·n
            // (rows n apart or a single row), inside c (checked above:
            // i·m·n + m·n without a layout, c_end ≤ c_len with one), and
            // written by task i only: without a layout the blocks tile c,
            // with one the layout's outputs are disjoint (may_split). The
            // workspace chunk `slot` as above.
            let (c_i, ws) = unsafe {
                (
                    shared.c_part(batch.c_offset(i), m * n),
                    shared.ws_part(slot * per, per),
                )
            };
            entry(i, c_i, n, ws)
        };
        if let Err(e) = result {
            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    });
    failed
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(Ok(()), Err)
}

/// The output and workspace as raw pointers, so tasks can take disjoint parts.
struct Shared<T> {
    c: *mut T,
    ws: *mut T,
}

// SAFETY: tasks only make disjoint slices of the two buffers (see the use),
// and the pointers do not outlive the `&mut` borrows they come from.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// `c[at..at + len]`.
    ///
    /// # Safety
    /// The range lies in `c`, and no other live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn c_part(&self, at: usize, len: usize) -> &mut [T] {
        // SAFETY: in bounds and exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.c.add(at), len) }
    }

    /// `ws[at..at + len]`.
    ///
    /// # Safety
    /// The range lies in the workspace, and no other live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn ws_part(&self, at: usize, len: usize) -> &mut [T] {
        // SAFETY: in bounds and exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ws.add(at), len) }
    }
}
