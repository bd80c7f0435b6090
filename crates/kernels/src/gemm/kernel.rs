//! The register-blocked microkernel, written once over a SIMD vector type.
//!
//! A microkernel computes one `M × (NV·LANES)` tile of `C` from a packed
//! `A` block (rows of `kc` elements, `LDA` apart) and a `B` micro-panel
//! (`kc` rows of `NR` columns, packed or read in place from a row-major `B`),
//! keeping the whole tile in registers. `LDA` is a constant, so the `M`
//! broadcasts of a step address one pointer with fixed displacements. Each
//! instruction set (avx512.rs, avx2.rs, portable.rs) implements [`Lanes`]
//! for its vector types and instantiates [`tile`] inside a function
//! compiled for its target features, once per row count `M ≤ MR` so that
//! edge tiles in `M` waste no arithmetic, and with `NV` = full width or one
//! vector for narrow edge panels. Columns past the valid `nr` are computed
//! from zero padding and not stored.

use std::ops::{Add, Mul};

/// The element types the kernels are instantiated for (f32, f64).
pub(super) trait Elem:
    Copy + Default + PartialEq + Add<Output = Self> + Mul<Output = Self> + Send + Sync + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A SIMD vector of `LANES` elements, as the microkernel uses it.
///
/// # Safety
/// Implementations use intrinsics of one instruction set: callers must only
/// call these methods from code that runs after that instruction set was
/// detected (in practice: inside a `#[target_feature]` function).
pub(super) unsafe trait Lanes: Copy {
    /// The element type.
    type Elem: Elem;
    /// Elements per vector.
    const LANES: usize;
    /// All lanes zero.
    unsafe fn zero() -> Self;
    /// All lanes `x`.
    unsafe fn splat(x: Self::Elem) -> Self;
    /// Loads `LANES` elements from `p` (no alignment required).
    unsafe fn load(p: *const Self::Elem) -> Self;
    /// Stores `LANES` elements to `p` (no alignment required).
    unsafe fn store(p: *mut Self::Elem, v: Self);
    /// `a·b + c`, fused where the instruction set allows.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// `a·b`.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// Hints that the cache line holding `p` will be read soon (no-op by
    /// default). `p` may point anywhere: a prefetch never faults.
    #[inline(always)]
    unsafe fn prefetch(_p: *const Self::Elem) {}
    /// As [`prefetch`](Self::prefetch), into L2 only (for data needed
    /// after the current tile).
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const Self::Elem) {}
}

/// One microkernel call: where its operands are and how to combine with `C`.
pub(super) struct Tile<E> {
    /// Depth of this block (number of `p` steps).
    pub kc: usize,
    /// Packed `A`: row `i` of the tile is `kc` elements at `a + i·LDA`.
    pub a: *const E,
    /// `B` micro-panel: `kc` rows of at least `NV·LANES` elements, `rs_b` apart.
    pub b: *const E,
    /// Row stride of the `B` micro-panel (`NR` when packed).
    pub rs_b: usize,
    /// Element `(0, 0)` of the `C` tile.
    pub c: *mut E,
    /// Row stride of `C`.
    pub rs_c: usize,
    /// Valid columns of the tile (`1 ..= NR`).
    pub nr: usize,
    /// Scale of the product.
    pub alpha: E,
    /// Scale of the old `C`; zero means `C` is not read.
    pub beta: E,
    /// Elements past the current `B` row to prefetch each step (a hint:
    /// the address may lie past the panel).
    pub pf: usize,
    /// Prefetch into L2 ([`Lanes::prefetch_l2`]) instead of L1: `pf` then
    /// reaches into the next micro-panel, which a later tile reads.
    pub pf_l2: bool,
}

/// The entry point of a microkernel instance.
///
/// # Safety
/// As [`tile`], and the instruction set of the instance must be available.
pub(super) type TileFn<E> = unsafe fn(&Tile<E>);

/// Largest `NR` of any kernel (elements), for the edge-tile spill buffer.
pub(super) const MAX_NR: usize = 64;

/// Computes `C[0..M, 0..nr] ← α·A·B + β·C` for one tile.
///
/// # Safety
/// `t.a` must be valid for reading `(M - 1)·LDA + t.kc` elements, `t.b` for
/// `t.kc` rows of `NV·LANES` elements at stride `t.rs_b`, and `t.c` for writing rows `0..M`, columns `0..t.nr` at row
/// stride `t.rs_c`, with no other thread touching that tile; `V`'s
/// instruction set must be available (see [`Lanes`]).
#[inline(always)]
pub(super) unsafe fn tile<V: Lanes, const LDA: usize, const M: usize, const NV: usize>(
    t: &Tile<V::Elem>,
) {
    let mut acc = [[V::zero(); NV]; M];
    let (mut a, mut b) = (t.a, t.b);
    for _ in 0..t.kc {
        let mut bv = [V::zero(); NV];
        for (v, slot) in bv.iter_mut().enumerate() {
            *slot = V::load(b.add(v * V::LANES));
        }
        for v in 0..NV {
            let p = b.wrapping_add(t.pf + v * V::LANES);
            if t.pf_l2 {
                V::prefetch_l2(p);
            } else {
                V::prefetch(p);
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = V::splat(*a.add(i * LDA));
            for (x, bj) in row.iter_mut().zip(bv) {
                *x = V::fma(ai, bj, *x);
            }
        }
        a = a.add(1);
        b = b.add(t.rs_b);
    }
    if t.nr == NV * V::LANES {
        store_full::<V, M, NV>(t, &acc);
    } else {
        store_partial::<V, M, NV>(t, &acc);
    }
}

/// Writes a full-width tile with vector loads and stores.
///
/// # Safety
/// As [`tile`] with `t.nr == NV·LANES`.
#[inline(always)]
unsafe fn store_full<V: Lanes, const M: usize, const NV: usize>(
    t: &Tile<V::Elem>,
    acc: &[[V; NV]; M],
) {
    let alpha = V::splat(t.alpha);
    let beta = V::splat(t.beta);
    for (i, row) in acc.iter().enumerate() {
        let c = t.c.add(i * t.rs_c);
        for (v, &x) in row.iter().enumerate() {
            let p = c.add(v * V::LANES);
            let out = if t.beta == V::Elem::ZERO {
                V::mul(alpha, x)
            } else if t.beta == V::Elem::ONE {
                V::fma(alpha, x, V::load(p))
            } else {
                V::fma(alpha, x, V::mul(beta, V::load(p)))
            };
            V::store(p, out);
        }
    }
}

/// Writes the first `t.nr` columns of a tile through a stack buffer.
///
/// # Safety
/// As [`tile`], and `NV·LANES ≤ MAX_NR`.
#[inline(always)]
unsafe fn store_partial<V: Lanes, const M: usize, const NV: usize>(
    t: &Tile<V::Elem>,
    acc: &[[V; NV]; M],
) {
    let mut buf = [V::Elem::ZERO; MAX_NR];
    for (i, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            V::store(buf.as_mut_ptr().add(v * V::LANES), x);
        }
        let c = t.c.add(i * t.rs_c);
        for (j, &x) in buf[..t.nr].iter().enumerate() {
            let p = c.add(j);
            *p = if t.beta == V::Elem::ZERO {
                t.alpha * x
            } else {
                t.alpha * x + t.beta * *p
            };
        }
    }
}

/// Builds the table `[k::<1, NV>, …, k::<MR, NV>]` of a family's microkernels
/// (`k<P>`: `[k::<P, 1, NV>, …]`, a leading const parameter such as the
/// packed-`A` row stride).
macro_rules! tile_table {
    ($f:ident, $nv:literal; $($m:literal)*) => {
        &[$($f::<$m, $nv> as $crate::gemm::kernel::TileFn<_>),*]
    };
    ($f:ident<$pre:ident>, $nv:literal; $($m:literal)*) => {
        &[$($f::<$pre, $m, $nv> as $crate::gemm::kernel::TileFn<_>),*]
    };
}
pub(super) use tile_table;
