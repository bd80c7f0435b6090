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
//!
//! Inside, a BLIS-style blocked product (driver.rs, pack.rs) runs
//! register-blocked microkernels (kernel.rs) chosen at run time for the
//! host: AVX-512F, AVX2+FMA, or portable Rust (select.rs). Products of at
//! least [`PARALLEL_MIN_FLOPS`](crate::pool::PARALLEL_MIN_FLOPS) are split
//! over the [`pool`](crate::pool), each thread packing into its own part of
//! the workspace.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod batch;
#[cfg(test)]
mod deep_tests;
mod driver;
mod epilogue;
#[cfg(test)]
mod epilogue_tests;
mod huge;
mod kernel;
mod layout;
mod pack;
mod portable;
#[cfg(test)]
mod reference;
mod select;
mod view;

pub use batch::{batched_workspace_len, gemm_batched, Batch, BatchRhs};
pub use epilogue::{ActGradOut, Activation, Epilogue, EpilogueSpec, LoraTerm};
pub use layout::StridedLayout;
pub use view::{MatMut, MatRef};

use crate::{DType, KernelError, Result, Scalar};
use driver::{lora_on_microkernels, BSource, Problem};
use select::{HasFamily, Isa};

/// A right-hand matrix packed once into the kernel's panel layout.
///
/// Pack constant weights once (at model load or JIT compile time) and pass
/// [`Rhs::Packed`] on every call: the per-call packing of `B` is skipped.
/// The layout is the one of the microkernel chosen for this host when
/// packing (panels of [`PackedRhs::panel_width`] columns over the full depth
/// `k`, zero-padded), and [`gemm`] uses that same microkernel with it.
#[derive(Debug)]
pub struct PackedRhs<T> {
    k: usize,
    n: usize,
    isa: Isa,
    nr: usize,
    /// The panels are `data[off..off + len]`, `off` chosen so that they
    /// start on a 64-byte boundary: every `B` load of an AVX-512 tile is
    /// then one cache line, not a split load (a large `Vec` from the system
    /// allocator starts 16 bytes past a page boundary).
    data: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Scalar> PackedRhs<T> {
    /// Packs a `k × n` matrix for the fastest microkernel of this host.
    pub fn pack(b: MatRef<'_, T>) -> Self {
        Self::pack_for(b, Isa::detect())
    }

    /// Packs for the microkernels of `isa`, which must be available.
    pub(crate) fn pack_for(b: MatRef<'_, T>, isa: Isa) -> Self {
        let (k, n) = (b.rows(), b.cols());
        let nr = select::blocking::<T>(isa).nr;
        let len = pack::packed_b_len(n, k, nr);
        let (mut data, off) = Self::aligned_buffer(len);
        if k > 0 && n > 0 {
            pack::pack_b(b, 0..k, 0..n, nr, &mut data[off..off + len]);
        }
        huge::collapse(&data[off..off + len]);
        Self {
            k,
            n,
            isa,
            nr,
            data,
            off,
            len,
        }
    }

    /// A zeroed buffer with `len` elements starting on a 64-byte boundary
    /// at the returned offset; from [`huge::HUGE_PAGE`] bytes on, on a
    /// huge-page boundary, its whole huge pages advised as such (see
    /// [`huge`]).
    fn aligned_buffer(len: usize) -> (Vec<T>, usize) {
        let elem = std::mem::size_of::<T>();
        let align = if len * elem >= huge::HUGE_PAGE {
            huge::HUGE_PAGE
        } else {
            64
        };
        let slack = align / elem;
        let data = vec![T::zero(); len + slack];
        let off = data.as_ptr().align_offset(align).min(slack);
        if align == huge::HUGE_PAGE {
            huge::advise(&data[off..off + len]);
        }
        (data, off)
    }

    /// The packed panels (64-byte aligned).
    fn panels(&self) -> &[T] {
        &self.data[self.off..self.off + self.len]
    }

    /// Rows of the packed matrix (the product's inner dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns per panel of the packed layout (the microkernel's tile width).
    pub fn panel_width(&self) -> usize {
        self.nr
    }
}

impl<T: Scalar> Clone for PackedRhs<T> {
    /// A copy whose panels start on a 64-byte boundary of its own buffer
    /// (a derived clone would copy the offset of the original's).
    fn clone(&self) -> Self {
        let (mut data, off) = Self::aligned_buffer(self.len);
        data[off..off + self.len].copy_from_slice(self.panels());
        huge::collapse(&data[off..off + self.len]);
        Self { data, off, ..*self }
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

    /// The instruction set the product runs with.
    fn isa(&self) -> Isa {
        match self {
            Rhs::Mat(_) => Isa::detect(),
            Rhs::Packed(p) => p.isa,
        }
    }
}

/// Workspace elements [`gemm`] needs for an m×k by k×n product.
///
/// This covers one packing buffer per thread for as many threads as the
/// product will use under the current [`pool::threads`](crate::pool::threads)
/// (one for products below
/// [`PARALLEL_MIN_FLOPS`](crate::pool::PARALLEL_MIN_FLOPS)), and, for a
/// product of at most `mc` rows split by columns, room for `A` packed once
/// and shared by the threads. A shorter workspace is still accepted down to
/// one thread's share: the product then runs on fewer threads, or packs `A`
/// once per task. Prepacked `B` needs less.
pub fn workspace_len<T: Scalar>(m: usize, n: usize, k: usize, rhs_packed: bool) -> usize {
    workspace_len_on::<T>(Isa::detect(), m, n, k, rhs_packed)
}

fn workspace_len_on<T: Scalar>(isa: Isa, m: usize, n: usize, k: usize, packed: bool) -> usize {
    driver::workspace_len::<T>(
        select::blocking_for::<T>(isa, m, k, packed),
        m,
        n,
        k,
        packed,
    )
}

/// `C ← α·A·B + β·C`, using `workspace` for packing (no allocation).
///
/// Shapes: `a` m×k, `b` k×n, `c` m×n. Runs on up to
/// [`pool::threads`](crate::pool::threads) threads, as many as `workspace`
/// has room for (see [`workspace_len`]).
///
/// # Errors
/// [`KernelError::GemmShape`] if the shapes do not chain, and
/// [`KernelError::Workspace`] if `workspace` is shorter than one thread's
/// share of [`workspace_len`] (the whole of it for small products).
pub fn gemm<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
    workspace: &mut [T],
) -> Result<()> {
    gemm_ep(alpha, a, b, beta, c, workspace, &Epilogue::none())
}

/// [`gemm`] followed by `epilogue` (bias, activation, LoRA term, …; see
/// [`Epilogue`]), applied to each block of `C` as it is finished, while it
/// is in cache.
///
/// # Errors
/// As [`gemm`], and [`KernelError::Geometry`] if an epilogue operand does
/// not fit the m×n output.
pub fn gemm_ep<T: Scalar>(
    alpha: T,
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    beta: T,
    c: MatMut<'_, T>,
    workspace: &mut [T],
    epilogue: &Epilogue<'_, T>,
) -> Result<()> {
    let (k2, n) = b.dims();
    if a.cols() != k2 || c.rows() != a.rows() || c.cols() != n {
        return Err(KernelError::GemmShape {
            a: (a.rows(), a.cols()),
            b: (k2, n),
            c: (c.rows(), c.cols()),
        });
    }
    epilogue.check(a.rows(), n)?;
    gemm_on(b.isa(), alpha, a, b, beta, c, workspace, epilogue)
}

/// [`gemm_ep`] with the microkernels of `isa` (tests force each one); the
/// shapes have been checked.
#[allow(clippy::too_many_arguments)]
fn gemm_on<T: Scalar>(
    isa: Isa,
    alpha: T,
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    beta: T,
    mut c: MatMut<'_, T>,
    workspace: &mut [T],
    ep: &Epilogue<'_, T>,
) -> Result<()> {
    let (m, n, k) = (a.rows(), c.cols(), a.cols());
    let bl = select::blocking::<T>(isa);
    let needed = driver::per_thread_len::<T>(bl, m, n, k, matches!(b, Rhs::Packed(_)));
    if workspace.len() < needed {
        return Err(KernelError::Workspace {
            what: "gemm",
            needed,
            len: workspace.len(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 || alpha == T::zero() {
        scale_rows(&mut c, beta);
        if !ep.is_none() {
            (0..m).for_each(|i| ep.apply_row(i, 0, c.row_mut(i)));
        }
        return Ok(());
    }
    let (ab, b) = ((alpha, beta), b);
    match T::DTYPE {
        DType::F64 => typed::<T, f64>(isa, ab, a, b, c, workspace, ep, Casts::F64),
        _ => typed::<T, f32>(isa, ab, a, b, c, workspace, ep, Casts::F32),
    }
    Ok(())
}

/// `C ← β·C`, with `β = 0` writing zeros over anything (NaN included).
fn scale_rows<T: Scalar>(c: &mut MatMut<'_, T>, beta: T) {
    for i in 0..c.rows() {
        let row = c.row_mut(i);
        if beta == T::zero() {
            row.fill(T::zero());
        } else {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}

/// The reinterpretations of `T` as the concrete element type `E`.
struct Casts<T: 'static, E: 'static> {
    slice: fn(&[T]) -> Option<&[E]>,
    slice_mut: fn(&mut [T]) -> Option<&mut [E]>,
}

impl<T: Scalar> Casts<T, f32> {
    const F32: Self = Casts {
        slice: T::as_f32_slice,
        slice_mut: T::as_f32_slice_mut,
    };
}

impl<T: Scalar> Casts<T, f64> {
    const F64: Self = Casts {
        slice: T::as_f64_slice,
        slice_mut: T::as_f64_slice_mut,
    };
}

const SAME_TYPE: &str = "internal: T::DTYPE names the type T is";

/// Runs the product on `T`'s buffers seen as the concrete type `E` (= `T`).
#[allow(clippy::too_many_arguments)]
fn typed<T: Scalar, E: HasFamily + Scalar>(
    isa: Isa,
    (alpha, beta): (T, T),
    a: MatRef<'_, T>,
    b: Rhs<'_, T>,
    c: MatMut<'_, T>,
    workspace: &mut [T],
    ep: &Epilogue<'_, T>,
    cast: Casts<T, E>,
) {
    let view = |s| (cast.slice)(s).expect(SAME_TYPE);
    let mut ep = ep.retype(view);
    let fam = E::family(isa);
    // The LoRA term runs on the microkernels when it can.
    let lora = ep.lora.filter(|t| lora_on_microkernels(t, fam.blocking));
    if lora.is_some() {
        ep.lora = None;
    }
    let post = |i: usize, j0: usize, row: &mut [E]| ep.apply_row(i, j0, row);
    let problem = Problem {
        alpha: E::from_f64_lossy(alpha.to_f64_exact()),
        a: a.retype(view(a.data)),
        b: match b {
            Rhs::Mat(m) => BSource::Mat(m.retype(view(m.data))),
            Rhs::Packed(p) => BSource::Packed(view(p.panels())),
        },
        beta: E::from_f64_lossy(beta.to_f64_exact()),
        k: a.cols(),
        post: if ep.is_none() { None } else { Some(&post) },
        lora,
    };
    let dims = (c.rows, c.cols, c.row_stride);
    let c_data = (cast.slice_mut)(c.data).expect(SAME_TYPE);
    let ws = (cast.slice_mut)(workspace).expect(SAME_TYPE);
    driver::run(fam, &problem, c_data, dims, ws);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_close, Nan};

    /// A small deterministic generator (xorshift64*), so tests need no crate.
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(super) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        pub(super) fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    /// Operand storage: 0 row-major, 1 column-major (a transposed view),
    /// 2 row-major with a column stride of 2 and padded rows.
    fn operand<T: Scalar>(rng: &mut Rng, rows: usize, cols: usize, layout: usize) -> Vec<T> {
        let len = match layout {
            0 | 1 => rows * cols,
            _ => rows * (2 * cols + 3),
        };
        (0..len).map(|_| T::from_f64_lossy(rng.unit())).collect()
    }

    fn view<T: Scalar>(data: &[T], rows: usize, cols: usize, layout: usize) -> MatRef<'_, T> {
        let v = match layout {
            0 => MatRef::new(data, rows, cols),
            1 => MatRef::new(data, cols, rows).map(MatRef::t),
            _ => MatRef::with_strides(data, rows, cols, 2 * cols + 3, 2),
        };
        v.expect("test operand fits its buffer")
    }

    /// One product on `isa` against the reference loop.
    fn check_case<T: Scalar>(isa: Isa, rng: &mut Rng, shape: (usize, usize, usize)) {
        check_product::<T>(isa, rng, shape, false);
    }

    /// `check_case`, with `B` always prepacked if `packed_only`.
    pub(super) fn check_product<T: Scalar>(
        isa: Isa,
        rng: &mut Rng,
        (m, n, k): (usize, usize, usize),
        packed_only: bool,
    ) {
        let (la, lb) = (rng.below(3), rng.below(3));
        let (a_data, b_data) = (operand::<T>(rng, m, k, la), operand::<T>(rng, k, n, lb));
        let (a, b) = (view(&a_data, m, k, la), view(&b_data, k, n, lb));
        let alpha = T::from_f64_lossy([1.0, -0.5, 0.0][rng.below(3)]);
        let beta = T::from_f64_lossy([0.0, 1.0, 0.5][rng.below(3)]);
        let ldc = n + rng.below(3);
        let mut c0: Vec<T> = (0..m * ldc)
            .map(|_| T::from_f64_lossy(rng.unit()))
            .collect();
        if beta == T::zero() {
            c0.iter_mut().step_by(3).for_each(|x| *x = T::nan());
        }
        let mut expected = c0.clone();
        let mut ev = MatMut::with_row_stride(&mut expected, m, n, ldc).expect("fits");
        reference::gemm(alpha, a, b, beta, &mut ev);
        let packed = PackedRhs::pack_for(b, isa);
        let rhs = if !packed_only && rng.below(2) == 0 {
            Rhs::Mat(b)
        } else {
            Rhs::Packed(&packed)
        };
        let mut actual = c0.clone();
        let cv = MatMut::with_row_stride(&mut actual, m, n, ldc).expect("fits");
        let len = workspace_len_on::<T>(isa, m, n, k, matches!(rhs, Rhs::Packed(_)));
        let mut ws = vec![T::nan(); len];
        gemm_on(isa, alpha, a, rhs, beta, cv, &mut ws, &Epilogue::none()).expect("valid product");
        // A dot product of k terms in [-1, 1]: error ≲ k·eps·k, plus rounding of β·C.
        let tol = 4.0 * (k as f64 + 2.0) * T::EPSILON_F64 * (k as f64 + 1.0);
        let case = format!("{isa:?} {m}×{n}×{k} layouts {la},{lb} α={alpha} β={beta} {rhs:?}");
        let unused: Vec<T> = (0..m * ldc)
            .filter(|i| i % ldc >= n)
            .map(|i| c0[i])
            .collect();
        let kept: Vec<T> = (0..m * ldc)
            .filter(|i| i % ldc >= n)
            .map(|i| actual[i])
            .collect();
        assert!(
            unused.iter().zip(&kept).all(|(x, y)| x == y || x.is_nan()),
            "{case}: wrote past n"
        );
        let trim =
            |v: &[T]| -> Vec<T> { (0..m * ldc).filter(|i| i % ldc < n).map(|i| v[i]).collect() };
        check_close(&trim(&actual), &trim(&expected), tol, tol, Nan::Mismatch)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
    }

    /// Random shapes in 0..70, the edge sizes, and shapes crossing every
    /// cache block (k > kc, m > mc, n > nc) and the threading threshold.
    fn shapes(rng: &mut Rng) -> Vec<(usize, usize, usize)> {
        let mut s = vec![
            (0, 5, 5),
            (5, 0, 5),
            (5, 5, 0),
            (1, 1, 1),
            (1, 64, 64),
            (13, 33, 1),
            (64, 16, 70),
            (150, 40, 300),
            (3, 1100, 5),
            (400, 10, 300),
            (64, 200, 100),
        ];
        s.extend((0..40).map(|_| (rng.below(70), rng.below(70), rng.below(70))));
        s
    }

    /// `check_case` on every shape `shapes` gives, for every available ISA.
    fn check_every_isa<T: Scalar>(
        seed: u64,
        shapes: impl Fn(&mut Rng) -> Vec<(usize, usize, usize)>,
    ) {
        let mut rng = Rng(seed);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            for shape in shapes(&mut rng) {
                check_case::<T>(isa, &mut rng, shape);
            }
        }
    }

    fn check_all<T: Scalar>(seed: u64) {
        check_every_isa::<T>(seed, shapes);
    }

    #[test]
    fn every_kernel_matches_reference_f32() {
        check_all::<f32>(0x9e37_79b9_7f4a_7c15);
    }

    #[test]
    fn every_kernel_matches_reference_f64() {
        check_all::<f64>(0xd1b5_4a32_d192_ed03);
    }

    /// Row counts that do not split into full `mr`-row tiles (W1's 64 rows,
    /// 23 = 12 + 11, one row), with `k = 1`, `k` crossing a depth block and
    /// `n` crossing a column block, so the even row tiles and the `B`
    /// prefetch (which reaches past the micro-panel) meet every edge.
    fn check_uneven_rows<T: Scalar>(seed: u64) {
        check_every_isa::<T>(seed, |_| {
            vec![
                (64, 100, 300),
                (64, 33, 1),
                (23, 70, 1),
                (23, 17, 257),
                (1, 1100, 257),
                (145, 40, 20),
                (11, 64, 64),
            ]
        });
    }

    #[test]
    fn uneven_row_tiles_match_reference_f32() {
        check_uneven_rows::<f32>(0x0bad_cafe_1234_5678);
    }

    #[test]
    fn uneven_row_tiles_match_reference_f64() {
        check_uneven_rows::<f64>(0x5eed_0f64_8765_4321);
    }

    /// Tall products with a prepacked `B`, which the driver cuts by rows
    /// (`driver::rows_pay_off`) on two threads: row counts that are not a
    /// multiple of `mr`, tasks taller than `mc`, `k` crossing a depth block.
    fn check_tall_prepacked<T: Scalar>(seed: u64) {
        crate::pool::set_threads(2);
        let mut rng = Rng(seed);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            for shape in [
                (301, 200, 40),
                (700, 100, 20),
                (157, 130, 300),
                (1000, 48, 50),
            ] {
                check_product::<T>(isa, &mut rng, shape, true);
            }
        }
        crate::pool::set_threads(0);
    }

    /// Short, wide products on two threads, which the driver cuts into
    /// column tasks sharing one packed `A` (`driver::SharedA`): `k` over
    /// one, two and three depth blocks, `m` up to `mc`, packed and
    /// unpacked `B` (144 rows with a prepacked `B` go by rows instead).
    fn check_short_wide<T: Scalar>(seed: u64) {
        crate::pool::set_threads(2);
        let mut rng = Rng(seed);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            for shape in [
                (64, 300, 600),
                (144, 200, 513),
                (20, 500, 257),
                (64, 160, 200),
            ] {
                for _ in 0..2 {
                    check_product::<T>(isa, &mut rng, shape, false);
                }
            }
        }
        crate::pool::set_threads(0);
    }

    #[test]
    fn short_wide_products_share_packed_a_and_match_reference_f32() {
        check_short_wide::<f32>(0x5a4e_d0a0_f32f_0001);
    }

    #[test]
    fn short_wide_products_share_packed_a_and_match_reference_f64() {
        check_short_wide::<f64>(0x5a4e_d0a0_f64f_0002);
    }

    #[test]
    fn tall_prepacked_products_match_reference_f32() {
        check_tall_prepacked::<f32>(0x7a11_0f32_0bad_5eed);
    }

    #[test]
    fn tall_prepacked_products_match_reference_f64() {
        check_tall_prepacked::<f64>(0x7a11_0f64_0bad_5eed);
    }

    #[test]
    fn cloned_packed_rhs_is_aligned_and_equal() {
        let mut rng = Rng(5);
        let data: Vec<f32> = (0..37 * 29).map(|_| rng.unit() as f32).collect();
        let packed = PackedRhs::pack(MatRef::new(&data, 37, 29).expect("fits"));
        // Clones of clones land at unrelated allocator offsets.
        let clones: Vec<PackedRhs<f32>> = (0..8).map(|_| packed.clone().clone()).collect();
        for c in &clones {
            assert_eq!(c.panels(), packed.panels());
            assert_eq!(c.panels().as_ptr() as usize % 64, 0);
            assert_eq!(
                (c.k(), c.n(), c.panel_width()),
                (37, 29, packed.panel_width())
            );
        }
    }

    #[test]
    fn row_tiles_cover_the_block_evenly() {
        for mr in [1, 4, 6, 12] {
            for mc in 1..=150 {
                let tiles: Vec<_> = driver::row_tiles(mc, mr).collect();
                assert_eq!(tiles.len(), mc.div_ceil(mr), "mc {mc} mr {mr}");
                let mut next = 0;
                for &(start, rows) in &tiles {
                    assert_eq!(start, next, "mc {mc} mr {mr}: gap or overlap");
                    assert!((1..=mr).contains(&rows), "mc {mc} mr {mr}: {rows} rows");
                    next = start + rows;
                }
                assert_eq!(next, mc);
                let (lo, hi) = tiles
                    .iter()
                    .fold((usize::MAX, 0), |(lo, hi), t| (lo.min(t.1), hi.max(t.1)));
                assert!(hi - lo <= 1, "mc {mc} mr {mr}: heights {lo}..{hi}");
            }
        }
        let w1: Vec<_> = driver::row_tiles(64, 12).map(|t| t.1).collect();
        assert_eq!(w1, [10, 11, 11, 10, 11, 11]);
    }

    #[test]
    fn detection_prefers_the_widest_available_kernels() {
        let best = Isa::ALL.into_iter().find(|isa| isa.available());
        assert_eq!(Some(Isa::detect()), best);
        assert!(Isa::Portable.available());
    }

    #[test]
    fn gemm_rejects_short_workspace_and_bad_shapes() {
        let (a, b) = (vec![1.0f32; 8 * 8], vec![1.0f32; 8 * 8]);
        let a = MatRef::new(&a, 8, 8).expect("fits");
        let b = MatRef::new(&b, 8, 8).expect("fits");
        let mut c = vec![0.0f32; 8 * 8];
        let len = workspace_len::<f32>(8, 8, 8, false);
        let mut ws = vec![0.0f32; len - 1];
        let cv = MatMut::new(&mut c, 8, 8).expect("fits");
        let err = gemm(1.0, a, Rhs::Mat(b), 0.0, cv, &mut ws);
        assert!(matches!(err, Err(KernelError::Workspace { .. })), "{err:?}");
        let cv = MatMut::new(&mut c, 8, 8).expect("fits");
        let err = gemm(1.0, a, Rhs::Mat(b.t()), 0.0, cv, &mut ws);
        assert!(matches!(err, Err(KernelError::GemmShape { .. })) || err.is_err());
        let cv = MatMut::new(&mut c[..16], 2, 8).expect("fits");
        let err = gemm(1.0, a, Rhs::Mat(b), 0.0, cv, &mut ws);
        assert!(matches!(err, Err(KernelError::GemmShape { .. })), "{err:?}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn subnormal_inputs_count_as_zero_and_the_mode_is_restored() {
        #[allow(deprecated)]
        // SAFETY: reads this thread's MXCSR only.
        let csr = || unsafe { std::arch::x86_64::_mm_getcsr() };
        let before = csr();
        let tiny = f32::MIN_POSITIVE / 4.0; // subnormal
        let a = vec![tiny, 0.0, tiny, 1.0];
        let b = vec![1.0e30f32, 1.0, 1.0, 1.0];
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let (av, bv) = (
                MatRef::new(&a, 2, 2).expect("fits"),
                MatRef::new(&b, 2, 2).expect("fits"),
            );
            let mut c = vec![f32::NAN; 4];
            let cv = MatMut::new(&mut c, 2, 2).expect("fits");
            let mut ws = vec![0.0; workspace_len_on::<f32>(isa, 2, 2, 2, false)];
            gemm_on(
                isa,
                1.0,
                av,
                Rhs::Mat(bv),
                0.0,
                cv,
                &mut ws,
                &Epilogue::none(),
            )
            .expect("ok");
            // IEEE: row 0 = [tiny·1e30, tiny] = [2.9e-9, tiny]; with the
            // subnormal read as zero it is [0, 0].
            assert_eq!(c, [0.0, 0.0, 1.0, 1.0], "{isa:?}");
            assert_eq!(csr(), before, "{isa:?}: MXCSR not restored");
        }
    }

    #[test]
    fn packed_rhs_panels_start_on_a_cache_line() {
        for (k, n) in [(1024, 1024), (3, 5), (0, 4)] {
            let data = vec![0.5f32; k * n];
            let p = PackedRhs::pack(MatRef::new(&data, k, n).expect("fits"));
            assert_eq!(p.panels().as_ptr() as usize % 64, 0, "{k}×{n}");
            assert_eq!(p.panels().len(), pack::packed_b_len(n, k, p.nr));
            let data = vec![0.5f64; k * n];
            let p = PackedRhs::pack(MatRef::new(&data, k, n).expect("fits"));
            assert_eq!(p.panels().as_ptr() as usize % 64, 0, "{k}×{n} f64");
        }
    }

    #[test]
    fn packed_rhs_needs_less_workspace() {
        assert!(
            workspace_len::<f32>(64, 1024, 1024, true)
                < workspace_len::<f32>(64, 1024, 1024, false)
        );
        assert_eq!(workspace_len::<f64>(0, 10, 10, false), 0);
    }
}
