//! The blocked GEMM driver: splits the product over threads, walks the
//! cache blocks, packs, and calls the microkernels.
//!
//! Loop order (BLIS): columns of `C` in blocks of `nc` → depth in blocks of
//! `kc` (pack a `kc × nc` block of `B`, unless prepacked) → rows in blocks of
//! `mc` (pack an `mc × kc` block of `A`) → `nr`-column micro-panels of `B`
//! → `mr`-row micro-panels of `A` → one microkernel call per tile. The first
//! depth block applies the caller's `β`; later ones accumulate.
//!
//! The product is cut into tasks, each a rectangle of `C` (a range of
//! `nr`-column panels, or of `mr`-row panels when `N` is too narrow to
//! split or when `B` is prepacked and `A` is tall: see [`rows_pay_off`]),
//! two per thread; each thread packs into its own slice of the workspace.
//! Column tasks of a short `A` (at most `mc` rows) share one packed copy of
//! it instead (see [`SharedA`]).

use super::epilogue::{add_lora_row, LoraTerm};
use super::kernel::{Elem, Tile};
use super::pack::{pack_a, pack_b, packed_a_len, packed_b_len};
use super::select::{Blocking, Family};
use super::MatRef;
use crate::{pool, Scalar};
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

/// The right-hand operand as the driver sees it.
pub(super) enum BSource<'a, E> {
    /// A strided matrix, packed block by block into the workspace.
    Mat(MatRef<'a, E>),
    /// Micro-panels of `nr` columns over the full depth `k` (see `PackedRhs`).
    Packed(&'a [E]),
}

/// Slack per packing buffer so it can start on a 64-byte boundary.
fn align_slack<E>() -> usize {
    64 / std::mem::size_of::<E>()
}

/// Workspace elements one thread needs.
pub(super) fn per_thread_len<E>(bl: Blocking, m: usize, n: usize, k: usize, packed: bool) -> usize {
    if m == 0 || n == 0 || k == 0 {
        return 0;
    }
    let kc = bl.kc.min(k);
    let a = packed_a_len(bl.mc.min(m), bl.lda);
    let b = if packed {
        0
    } else {
        packed_b_len(bl.nc.min(n), kc, bl.nr)
    };
    a + b + 2 * align_slack::<E>()
}

/// Workspace elements for an m×n×k product on the threads it plans to
/// use: one chunk per thread, plus the packed `A` its column tasks share
/// (see [`SharedA`]).
pub(super) fn workspace_len<E>(bl: Blocking, m: usize, n: usize, k: usize, packed: bool) -> usize {
    let per = per_thread_len::<E>(bl, m, n, k, packed);
    let threads = planned_threads(bl, m, n, k);
    let shared = if per == 0 {
        0
    } else {
        shared_a_len::<E>(&Split::new(bl, m, n, threads, packed), k)
    };
    per * threads + shared
}

/// Threads worth using for an m×n×k product: 1 below the flop threshold,
/// else at most one per micro-panel along the split dimension.
pub(super) fn planned_threads(bl: Blocking, m: usize, n: usize, k: usize) -> usize {
    let flops = 2usize.saturating_mul(m).saturating_mul(n).saturating_mul(k);
    if flops < pool::PARALLEL_MIN_FLOPS {
        return 1;
    }
    let panels = n.div_ceil(bl.nr).max(m.div_ceil(bl.mr));
    pool::threads().min(panels).max(1)
}

/// How the product is cut into rectangles: `tasks` of them, run on at
/// most `parts` threads (each with its own workspace chunk). Two tasks per
/// thread let a thread that starts late (on a busy machine) take less.
struct Split {
    parts: usize,
    tasks: usize,
    by_columns: bool,
    m: usize,
    n: usize,
    bl: Blocking,
}

impl Split {
    fn new(bl: Blocking, m: usize, n: usize, parts: usize, b_packed: bool) -> Self {
        let (col_panels, row_panels) = (n.div_ceil(bl.nr), m.div_ceil(bl.mr));
        let by_columns = if b_packed && rows_pay_off(m, n, parts, row_panels) {
            false
        } else {
            // Splitting columns keeps each thread's B packing disjoint.
            col_panels >= 2 * parts || col_panels >= row_panels
        };
        let panels = if by_columns { col_panels } else { row_panels };
        let parts = parts.min(panels);
        Self {
            parts,
            tasks: if parts > 1 {
                (2 * parts).min(panels)
            } else {
                1
            },
            by_columns,
            m,
            n,
            bl,
        }
    }

    /// Rows and columns of `C` owned by task `t`.
    fn part(&self, t: usize) -> (Range<usize>, Range<usize>) {
        let cut = |len: usize, unit: usize| {
            let units = len.div_ceil(unit);
            let bound = |t: usize| (units * t / self.tasks * unit).min(len);
            bound(t)..bound(t + 1)
        };
        if self.by_columns {
            (0..self.m, cut(self.n, self.bl.nr))
        } else {
            (cut(self.m, self.bl.mr), 0..self.n)
        }
    }
}

/// Whether a product with a prepacked `B` (no `B` packing for the tasks
/// to share) is better cut by rows than by columns on `parts` threads.
///
/// Each cut repeats work on one operand. By columns, every task packs the
/// whole of `A` (its `mc × kc` blocks feed only the task's columns):
/// `tasks − 1` extra copies of m×k. By rows, every thread streams the whole
/// of `B` into its own L2: `parts − 1` extra reads of k×n. Rows win when
/// the first is at least the second (`k` cancels) and there are rows
/// enough for two `mr`-tall tasks per thread. W3's 1024-row products
/// (n = 384 or 1536) go by rows, W1's 64 × 1024 by columns (docs/jit.md,
/// "Task split with prepacked weights", has the measurements).
fn rows_pay_off(m: usize, n: usize, parts: usize, row_panels: usize) -> bool {
    let tasks = 2 * parts;
    parts > 1 && row_panels >= tasks && m * (tasks - 1) >= n * (parts - 1)
}

/// Depth blocks of `A` a [`SharedA`] can track (`k` up to 64·`kc`).
const SHARED_A_BLOCKS: usize = 64;

/// Workspace elements after the per-thread chunks that hold `A` packed
/// once for all tasks of `split`, or 0 when its tasks do not share `A`:
/// they must be column tasks (each needs all of `A`), more than one, and
/// `A` at most one `mc`-row block tall (W1's 64 rows; taller `A` would make
/// the shared copy as large as `A` itself).
fn shared_a_len<E>(split: &Split, k: usize) -> usize {
    let blocks = k.div_ceil(split.bl.kc);
    let shares = split.tasks > 1 && split.by_columns && split.m <= split.bl.mc;
    if shares && (1..=SHARED_A_BLOCKS).contains(&blocks) {
        blocks * packed_a_len(split.m, split.bl.lda) + align_slack::<E>()
    } else {
        0
    }
}

/// Depth block not packed yet.
const EMPTY: u8 = 0;
/// Depth block being packed by the task that claimed it.
const BUSY: u8 = 1;
/// Depth block packed: read-only from now on.
const READY: u8 = 2;

/// `A` (all of its rows) packed once per call for the column tasks, one
/// `m × kc` block per depth block, instead of once per task.
///
/// The first task to reach a depth block claims it and packs it; tasks
/// that find it packed read it. A task that finds it being packed does not
/// wait (its packer may have been preempted on a busy machine): it packs
/// its own copy into its private buffer, as every task did before. W1's
/// 64×1024×1024 products on 2 threads packed the 256 KiB `A` four times
/// per call (`memmove` 4.5 % of samples); now about once.
struct SharedA<E> {
    ptr: *mut E,
    block_len: usize,
    blocks: usize,
    state: [AtomicU8; SHARED_A_BLOCKS],
}

// SAFETY: a block is written only by the task that moved its state from
// EMPTY to BUSY (exclusive), and read only after it was published READY
// with release ordering (and never written again); the buffer outlives the
// call's tasks (`run` borrows it for the whole `parallel_for_slots`).
unsafe impl<E: Send + Sync> Sync for SharedA<E> {}

impl<E> SharedA<E> {
    /// Shares `buf`, which holds `buf.len() / block_len` depth blocks.
    fn new(buf: &mut [E], block_len: usize) -> Self {
        assert!(
            block_len > 0 && buf.len() / block_len <= SHARED_A_BLOCKS,
            "internal: shared A size"
        );
        Self {
            ptr: buf.as_mut_ptr(),
            block_len,
            blocks: buf.len() / block_len,
            state: [const { AtomicU8::new(EMPTY) }; SHARED_A_BLOCKS],
        }
    }

    /// Depth block `b`, packed by `pack` if no task has claimed it yet;
    /// `None` while another task is packing it.
    fn block(&self, b: usize, pack: impl FnOnce(&mut [E])) -> Option<&[E]> {
        if b >= self.blocks {
            return None;
        }
        let state = &self.state[b];
        let mut cur = state.load(Ordering::Acquire);
        if cur == EMPTY {
            match state.compare_exchange(EMPTY, BUSY, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: block `b` lies in the buffer (`b < blocks`);
                    // winning EMPTY → BUSY makes this task its only user
                    // until READY is stored below.
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut(
                            self.ptr.add(b * self.block_len),
                            self.block_len,
                        )
                    };
                    pack(buf);
                    state.store(READY, Ordering::Release);
                    cur = READY;
                }
                Err(now) => cur = now,
            }
        }
        // SAFETY: in the buffer as above; READY was stored (release, read
        // here with acquire) after the block was written, and it is never
        // written again.
        (cur == READY).then(|| unsafe {
            std::slice::from_raw_parts(self.ptr.add(b * self.block_len), self.block_len)
        })
    }
}

/// The output matrix as a raw pointer, so threads can write disjoint tiles.
struct CView<E> {
    ptr: *mut E,
    len: usize,
    rs: usize,
}

// SAFETY: `run` hands each thread a disjoint rectangle of `C`, and the
// view does not outlive the `&mut` borrow it was made from.
unsafe impl<E: Send> Sync for CView<E> {}

impl<E> CView<E> {
    /// Pointer to `C[i, j]` for a tile of `rows × cols`; panics if it would
    /// reach outside the buffer (a broken internal invariant).
    fn tile_ptr(&self, i: usize, j: usize, rows: usize, cols: usize) -> *mut E {
        let last = (i + rows - 1) * self.rs + j + cols;
        assert!(last <= self.len, "internal: tile outside C");
        self.ptr.wrapping_add(i * self.rs + j)
    }

    /// `C[i, j..j + cols]` as a slice; panics if outside the buffer.
    ///
    /// # Safety
    /// The calling thread owns that part of `C` and holds no other
    /// reference to it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, i: usize, j: usize, cols: usize) -> &mut [E] {
        let p = self.tile_ptr(i, j, 1, cols);
        // SAFETY: `tile_ptr` checked the range lies in C; exclusive by contract.
        unsafe { std::slice::from_raw_parts_mut(p, cols) }
    }
}

/// The workspace cut into per-thread chunks.
struct Chunks<E> {
    ptr: *mut E,
    per: usize,
}

// SAFETY: each chunk is handed to one task only (see `chunk`).
unsafe impl<E: Send> Sync for Chunks<E> {}

impl<E> Chunks<E> {
    /// Chunk `t` of the workspace.
    ///
    /// # Safety
    /// `(t + 1)·per` must not exceed the workspace, and no two live
    /// references may be made to the same chunk (each task index once).
    #[allow(clippy::mut_from_ref)]
    unsafe fn chunk(&self, t: usize) -> &mut [E] {
        // SAFETY: in bounds and exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(t * self.per), self.per) }
    }
}

/// The epilogue hook: `post(i, j0, row)` with `row = C[i, j0..j0 + len]`.
pub(super) type PostFn<'f, E> = dyn Fn(usize, usize, &mut [E]) + Sync + 'f;

/// The operands and scalars of one product.
pub(super) struct Problem<'a, E> {
    pub alpha: E,
    pub a: MatRef<'a, E>,
    pub b: BSource<'a, E>,
    pub beta: E,
    pub k: usize,
    /// Called once per finished block row `C[i, j0..j0 + len]` (the epilogue).
    pub post: Option<&'a PostFn<'a, E>>,
    /// The LoRA term of the epilogue, when the driver computes it with the
    /// microkernels (see [`lora_on_microkernels`]); `post` then leaves it out.
    pub lora: Option<LoraTerm<'a, E>>,
}

/// Fewest rows of `C` for which the LoRA term runs on the microkernels:
/// below, a tile would read `LB` once per row as the row step does, and
/// only add packing `XA` and entering the microkernels (W2's one-row
/// products keep the row step; its time did not measurably change either
/// way).
const LORA_PASS_MIN_ROWS: usize = 4;

/// Whether the driver runs `term` on the microkernels: `C += s·XA·LB` on
/// each block of `C` after its last depth block and before `post`, `XA`
/// (m×r) packed like a depth block of `A` and `LB` (r×n, row-major) read
/// in place as micro-panels, so the rank sum costs what a depth-`r` block
/// of the product costs. It needs at least [`LORA_PASS_MIN_ROWS`] rows, a
/// rank of at most one depth block, and `LB` with unit column stride.
/// Columns of a block that do not fill a whole micro-panel are left to
/// [`add_lora_row`].
pub(super) fn lora_on_microkernels<E: Elem>(term: &LoraTerm<'_, E>, bl: Blocking) -> bool {
    let (m, r) = (term.xa.rows(), term.xa.cols());
    r > 0 && r <= bl.kc && term.b.col_stride == 1 && m >= LORA_PASS_MIN_ROWS
}

/// `C ← α·A·B + β·C` with `fam`'s kernels; `c` is m×n at row stride `rs`.
///
/// The caller has checked shapes, that `c` holds the view, and that
/// `workspace` has at least one thread's worth.
pub(super) fn run<E: Elem + Scalar>(
    fam: &Family<E>,
    p: &Problem<'_, E>,
    c: &mut [E],
    (m, n, rs): (usize, usize, usize),
    workspace: &mut [E],
) {
    let packed = matches!(p.b, BSource::Packed(_));
    // The deep family needs more room for `A` (one `k`-deep block); a
    // workspace sized for the regular blocking keeps the regular kernels.
    let fam = match fam.for_product(m, p.k, packed) {
        deep if workspace.len() >= workspace_len::<E>(deep.blocking, m, n, p.k, packed) => deep,
        _ => fam,
    };
    let bl = fam.blocking;
    let per = per_thread_len::<E>(bl, m, n, p.k, packed);
    let threads = planned_threads(bl, m, n, p.k).min(workspace.len() / per.max(1));
    let split = Split::new(bl, m, n, threads.max(1), packed);
    let view = CView {
        ptr: c.as_mut_ptr(),
        len: c.len(),
        rs,
    };
    if split.parts <= 1 {
        block(fam, p, (0..m, 0..n), &view, &mut workspace[..per], None);
        return;
    }
    let (chunks, rest) = workspace.split_at_mut(split.parts * per);
    let shared_len = shared_a_len::<E>(&split, p.k);
    let shared = (shared_len > 0 && rest.len() >= shared_len).then(|| {
        let (buf, _) = take_aligned(rest, shared_len - align_slack::<E>());
        SharedA::new(buf, packed_a_len(m, bl.lda))
    });
    let chunks = Chunks {
        ptr: chunks.as_mut_ptr(),
        per,
    };
    pool::parallel_for_slots(split.tasks, split.parts, &|task, slot| {
        // SAFETY: slot < parts and the chunks hold parts·per elements, and
        // parallel_for_slots never runs two tasks with the same slot at once,
        // so chunk `slot` is in bounds and used by this thread only.
        let ws = unsafe { chunks.chunk(slot) };
        block(fam, p, split.part(task), &view, ws, shared.as_ref());
    });
}

/// Splits off a 64-byte-aligned buffer of `len` elements from the front of `ws`.
fn take_aligned<E>(ws: &mut [E], len: usize) -> (&mut [E], &mut [E]) {
    let off = ws.as_ptr().align_offset(64).min(align_slack::<E>());
    let (_, rest) = ws.split_at_mut(off);
    rest.split_at_mut(len)
}

/// Treats subnormal floating-point inputs as zero on this thread while it
/// lives (x86 MXCSR.DAZ), restoring the previous mode on drop.
///
/// A subnormal operand makes each FMA that reads it take a microcode
/// assist: W1's operands contain some, and its jit-folded forward took
/// ≈ 1.4× the CPU time for it (docs/jit.md, "Subnormal operands"). Their
/// contribution to a product is below 2⁻¹²⁶·|b| per term, far under the
/// product's rounding error; results that underflow still round gradually
/// (FTZ is not set).
pub(super) struct DenormalsAreZero {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl DenormalsAreZero {
    /// MXCSR's denormals-are-zero bit.
    #[cfg(target_arch = "x86_64")]
    const DAZ: u32 = 0x0040;

    pub(super) fn set() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: reading and writing MXCSR only changes how this
            // thread's SSE/AVX arithmetic treats subnormals; the old value
            // is restored on drop (also when a task panics).
            #[allow(deprecated)]
            let saved = unsafe {
                let saved = std::arch::x86_64::_mm_getcsr();
                std::arch::x86_64::_mm_setcsr(saved | Self::DAZ);
                saved
            };
            Self { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self {}
    }
}

impl Drop for DenormalsAreZero {
    fn drop(&mut self) {
        // SAFETY: restores the MXCSR value read in `set` on this thread.
        #[cfg(target_arch = "x86_64")]
        #[allow(deprecated)]
        unsafe {
            std::arch::x86_64::_mm_setcsr(self.saved)
        };
    }
}

/// Computes the rectangle `rows × cols` of `C` single-threaded.
fn block<E: Elem + Scalar>(
    fam: &Family<E>,
    p: &Problem<'_, E>,
    (rows, cols): (Range<usize>, Range<usize>),
    c: &CView<E>,
    ws: &mut [E],
    shared: Option<&SharedA<E>>,
) {
    let _daz = DenormalsAreZero::set();
    let bl = fam.blocking;
    let (a_buf, rest) = take_aligned(ws, packed_a_len(bl.mc.min(rows.len()), bl.lda));
    let b_len = match p.b {
        BSource::Mat(_) => packed_b_len(bl.nc.min(cols.len()), bl.kc.min(p.k), bl.nr),
        BSource::Packed(_) => 0,
    };
    let (b_buf, _) = take_aligned(rest, b_len);
    for jc in cols.clone().step_by(bl.nc) {
        let nc = bl.nc.min(cols.end - jc);
        for pc in (0..p.k).step_by(bl.kc) {
            let kc = bl.kc.min(p.k - pc);
            let panels = match p.b {
                BSource::Mat(b) => {
                    pack_b(b, pc..pc + kc, jc..jc + nc, bl.nr, b_buf);
                    Panels {
                        data: b_buf,
                        stride: kc * bl.nr,
                        rs: bl.nr,
                        cold: false,
                    }
                }
                BSource::Packed(d) => Panels {
                    data: &d[jc / bl.nr * p.k * bl.nr + pc * bl.nr..],
                    stride: p.k * bl.nr,
                    rs: bl.nr,
                    cold: true,
                },
            };
            let beta = if pc == 0 { p.beta } else { E::ONE };
            for ic in rows.clone().step_by(bl.mc) {
                let mc = bl.mc.min(rows.end - ic);
                let pack = |buf: &mut [E]| pack_a(p.a, ic..ic + mc, pc..pc + kc, bl.lda, buf);
                // A shared `A` is all rows in one block (`shared_a_len`).
                let a = match shared.and_then(|s| s.block(pc / bl.kc, pack)) {
                    Some(a) => a,
                    None => {
                        pack(a_buf);
                        &*a_buf
                    }
                };
                let at = Macro {
                    kc,
                    a,
                    b: &panels,
                    origin: (ic, jc),
                    size: (mc, nc),
                };
                at.run(fam, p.alpha, beta, c);
                let last = pc + kc == p.k;
                if let (Some(l), true) = (&p.lora, last) {
                    lora_block(fam, l, a_buf, (ic, jc), (mc, nc), c);
                }
                if let (Some(post), true) = (p.post, last) {
                    for i in ic..ic + mc {
                        // SAFETY: this task owns rows × cols of C, and the
                        // microkernels that wrote it have returned.
                        post(i, jc, unsafe { c.row_mut(i, jc, nc) });
                    }
                }
            }
        }
    }
}

/// The row tiles `(first row, rows)` of an `mc`-row block: as few tiles
/// as `mr` allows, their heights differing by at most one (64 rows with
/// `mr = 12` are four tiles of 11 and two of 10 rather than 12 × 5 and a 4,
/// whose broadcasts and `B` loads feed only a third of the FMAs).
pub(super) fn row_tiles(mc: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = mc.div_ceil(mr);
    (0..tiles).map(move |t| {
        let (start, end) = (t * mc / tiles, (t + 1) * mc / tiles);
        (start, end - start)
    })
}

/// Adds `s·XA·LB` to the `mc × nc` block of `C` at `(ic, jc)`: the whole
/// micro-panels with the microkernels (`XA` packed into `a_buf`, which the
/// block's product no longer needs), the columns past them row by row.
fn lora_block<E: Elem + Scalar>(
    fam: &Family<E>,
    t: &LoraTerm<'_, E>,
    a_buf: &mut [E],
    (ic, jc): (usize, usize),
    (mc, nc): (usize, usize),
    c: &CView<E>,
) {
    if t.ids.is_some() {
        return grouped_lora_block(fam, t, a_buf, (ic, jc), (mc, nc), c);
    }
    let bl = fam.blocking;
    let r = t.xa.cols();
    let full = nc / bl.nr * bl.nr;
    if full > 0 {
        pack_a(t.xa, ic..ic + mc, 0..r, bl.lda, a_buf);
        let lb = t.b.data;
        let panels = Panels {
            data: &lb[jc.min(lb.len())..],
            stride: bl.nr,
            rs: t.b.row_stride,
            cold: false,
        };
        let at = Macro {
            kc: r,
            a: a_buf,
            b: &panels,
            origin: (ic, jc),
            size: (mc, full),
        };
        at.run(fam, t.scale, E::ONE, c);
    }
    if full < nc {
        // SAFETY: this task owns the block's rows and columns of C, and the
        // microkernels that wrote it have returned.
        unsafe { lora_rows(c, ic..ic + mc, (jc + full, nc - full), t) };
    }
}

/// Adds the LoRA term to `len` columns from `j0` of rows `rows` of `C`,
/// one row at a time ([`add_lora_row`]).
///
/// # Safety
/// The calling task must own those rows and columns of `C`, with no other
/// reference to them alive (as for [`CView::row_mut`]).
unsafe fn lora_rows<E: Elem + Scalar>(
    c: &CView<E>,
    rows: Range<usize>,
    (j0, len): (usize, usize),
    t: &LoraTerm<'_, E>,
) {
    for i in rows {
        // SAFETY: the caller owns row `i`'s columns `j0..j0 + len` of C.
        add_lora_row(unsafe { c.row_mut(i, j0, len) }, i, j0, t);
    }
}

/// [`lora_block`] with per-row adapters ([`LoraTerm::ids`]): the block's
/// rows are cut into runs of one id (a batch sorted by adapter has a few
/// long runs); a run of at least [`LORA_PASS_MIN_ROWS`] rows is one
/// one-adapter pass on the microkernels, a shorter one (unsorted rows)
/// takes the row step, and id −1 adds nothing.
fn grouped_lora_block<E: Elem + Scalar>(
    fam: &Family<E>,
    t: &LoraTerm<'_, E>,
    a_buf: &mut [E],
    (ic, jc): (usize, usize),
    (mc, nc): (usize, usize),
    c: &CView<E>,
) {
    let Some(ids) = t.ids else { return };
    let mut start = ic;
    while start < ic + mc {
        let id = ids[start];
        let len = ids[start..ic + mc].iter().take_while(|&&g| g == id).count();
        if let Some(one) = t.of_row(start) {
            if len >= LORA_PASS_MIN_ROWS {
                lora_block(fam, &one, a_buf, (start, jc), (len, nc), c);
            } else {
                // SAFETY: this task owns the block's rows and columns of C,
                // and the microkernels that wrote it have returned.
                unsafe { lora_rows(c, start..start + len, (jc, nc), &one) };
            }
        }
        start += len;
    }
}

/// The `nr`-column micro-panels of `B` for one depth block.
///
/// Panel `q` starts at `q·stride`; its rows are `rs` apart (`nr` when
/// packed; a row-major matrix's row stride when read in place).
struct Panels<'a, E> {
    data: &'a [E],
    stride: usize,
    rs: usize,
    /// A prepacked weight, read from memory (L3/DRAM) once per call:
    /// while one micro-panel is in use, the next is prefetched into L2
    /// (see [`Macro::run`]). Panels packed per call are already in cache.
    cold: bool,
}

impl<E> Panels<'_, E> {
    /// Panel `q` over depth `kc` (`kc` rows of `nr` elements), and its row stride.
    fn panel(&self, q: usize, kc: usize, nr: usize) -> (&[E], usize) {
        let start = q * self.stride;
        (&self.data[start..start + (kc - 1) * self.rs + nr], self.rs)
    }
}

/// One `mc × nc` block of `C` over depth `kc`.
struct Macro<'a, E> {
    kc: usize,
    a: &'a [E],
    b: &'a Panels<'a, E>,
    origin: (usize, usize),
    size: (usize, usize),
}

impl<E: Elem> Macro<'_, E> {
    fn run(&self, fam: &Family<E>, alpha: E, beta: E, c: &CView<E>) {
        let Blocking {
            mr, nr, lda, pf, ..
        } = fam.blocking;
        let (kc, (i0, j0), (mc, nc)) = (self.kc, self.origin, self.size);
        for (q, j) in (0..nc).step_by(nr).enumerate() {
            let (b, rs_b) = self.b.panel(q, kc, nr);
            let cols = nr.min(nc - j);
            let table = if cols <= fam.narrow_width {
                fam.narrow
            } else {
                fam.tiles
            };
            for (t, (i, rows)) in row_tiles(mc, mr).enumerate() {
                let a = &self.a[i * lda..(i + rows - 1) * lda + kc];
                // The first row tile reads the panel from memory, prefetching
                // it `pf` rows ahead into L1; the second (its panel now in
                // L2) prefetches the block's next panel into L2 for the next
                // first tile (not past the block: the panels after it may
                // be another thread's); the rest prefetch their panel into
                // L1 from L2. In-place panels (the LoRA pass) are a few rows
                // deep: none.
                let ahead = self.b.cold && t == 1 && j + nr < nc;
                let (pf, pf_l2) = match (rs_b == nr, ahead) {
                    (false, _) => (0, false),
                    (true, true) => (self.b.stride, true),
                    (true, false) => (pf * rs_b, false),
                };
                let tile = Tile {
                    kc,
                    a: a.as_ptr(),
                    b: b.as_ptr(),
                    rs_b,
                    c: c.tile_ptr(i0 + i, j0 + j, rows, cols),
                    rs_c: c.rs,
                    nr: cols,
                    alpha,
                    beta,
                    pf,
                    pf_l2,
                };
                // SAFETY: `a` holds rows × kc at stride lda, `b` kc rows of nr
                // at stride rs_b (`panel` sliced both), `tile_ptr` checked the
                // rows × cols tile lies in C, this thread owns that rectangle
                // of C, and `fam` is only handed out for an instruction set
                // the host has (select.rs).
                unsafe { (table[rows - 1])(&tile) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 f32 blocking (the sizes W1 and W3 were measured with).
    const BL: Blocking = Blocking {
        mr: 12,
        nr: 32,
        kc: 256,
        lda: 272,
        mc: 144,
        nc: 1024,
        pf: 32,
    };

    /// The tasks' rectangles tile `C` exactly, cut at `mr` rows or `nr`
    /// columns (the last piece excepted).
    fn assert_tiles(s: &Split, case: &str) {
        let mut covered = vec![0u8; s.m * s.n];
        for t in 0..s.tasks {
            let (rows, cols) = s.part(t);
            assert!(
                rows.start % s.bl.mr == 0 && cols.start % s.bl.nr == 0,
                "{case}"
            );
            for i in rows {
                cols.clone().for_each(|j| covered[i * s.n + j] += 1);
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{case}: gap or overlap");
    }

    #[test]
    fn prepacked_tall_products_split_by_rows() {
        // (m, n, parts, B prepacked) → by rows?
        let cases = [
            ((1024, 384, 2, true), true),   // W3 projections
            ((1024, 1536, 2, true), true),  // W3 FFN up
            ((1024, 384, 2, false), false), // B packed per call: share it
            ((64, 1024, 2, true), false),   // W1: A is the small operand
            ((256, 1024, 2, true), false),  // 3·256 < 1024
            ((301, 200, 2, true), true),    // odd rows
            ((301, 200, 1, true), false),   // one thread: one task
            ((40, 1024, 4, true), false),   // too few rows for 8 tasks
            ((1000, 64, 2, false), true),   // narrow N: rows as before
        ];
        for ((m, n, parts, packed), rows) in cases {
            let s = Split::new(BL, m, n, parts, packed);
            let case = format!("{m}×{n} on {parts} threads, packed {packed}");
            assert_eq!(!s.by_columns, rows, "{case}");
            assert_eq!(s.tasks, if parts > 1 { 2 * parts } else { 1 }, "{case}");
            assert_tiles(&s, &case);
        }
    }

    #[test]
    fn short_column_split_products_share_packed_a() {
        // (m, n, k, parts, B prepacked) → depth blocks of A shared
        let cases = [
            ((64, 1024, 1024, 2, true), 4),     // W1: 4 column tasks
            ((64, 1024, 1024, 2, false), 4),    // B packed per call: columns too
            ((144, 1024, 257, 2, true), 2),     // m = mc, k crosses a block
            ((145, 1024, 300, 2, true), 0),     // two row blocks: not shared
            ((64, 1024, 1024, 1, true), 0),     // one task
            ((1024, 384, 384, 2, true), 0),     // row split
            ((64, 1024, 65 * 256, 2, true), 0), // more depth blocks than tracked
        ];
        for ((m, n, k, parts, packed), blocks) in cases {
            let s = Split::new(BL, m, n, parts, packed);
            let len = shared_a_len::<f32>(&s, k);
            let expected = match blocks {
                0 => 0,
                b => b * m * BL.lda + align_slack::<f32>(),
            };
            assert_eq!(
                len, expected,
                "{m}×{n}×{k} on {parts} threads, packed {packed}"
            );
        }
    }

    #[test]
    fn shared_a_blocks_are_packed_once() {
        let mut buf = vec![0.0f32; 3 * 8];
        let shared = SharedA::new(&mut buf, 8);
        let packs = std::sync::atomic::AtomicUsize::new(0);
        let fill = |v: f32| {
            let packs = &packs;
            move |b: &mut [f32]| {
                packs.fetch_add(1, Ordering::Relaxed);
                b.fill(v);
            }
        };
        assert_eq!(shared.block(1, fill(1.0)), Some(&[1.0; 8][..]));
        // Already packed: read, not packed again.
        assert_eq!(shared.block(1, fill(2.0)), Some(&[1.0; 8][..]));
        assert_eq!(packs.load(Ordering::Relaxed), 1);
        // Claimed by another task: the caller packs privately instead.
        shared.state[2].store(BUSY, Ordering::Relaxed);
        assert_eq!(shared.block(2, fill(3.0)), None);
        assert_eq!(shared.block(3, fill(3.0)), None, "past the buffer");
        assert_eq!(packs.load(Ordering::Relaxed), 1);
        // Every task of a parallel call gets the same packed block.
        let shared = SharedA::new(&mut buf, 8);
        pool::parallel_for(16, &|t| {
            let got = shared.block(t % 3, fill((t % 3) as f32 + 10.0));
            if let Some(b) = got {
                assert!(b.iter().all(|&x| x == (t % 3) as f32 + 10.0));
            }
        });
        assert!(packs.load(Ordering::Relaxed) <= 1 + 3);
    }
}
