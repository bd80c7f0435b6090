//! Portable microkernels in plain Rust: 4×8 f32 and 4×4 f64 tiles.
//!
//! The "vector" is an array the compiler keeps in registers and vectorizes
//! for the baseline target (SSE2 on x86-64, NEON on aarch64); eight
//! accumulators fit the 16 registers of either.

use super::kernel::{tile, tile_table, Elem, Lanes, Tile};
use super::select::{Blocking, Family};

/// Rows of a tile.
const MR: usize = 4;
/// Depth of a packed block.
const KC: usize = 256;
/// Columns of an f32 tile.
const NR32: usize = 8;
/// Columns of an f64 tile.
const NR64: usize = 4;
/// Row stride of packed `A`: one cache line more than `KC`, so that the
/// rows of a tile do not all map to the same L1 set.
const LDA32: usize = KC + 16;
/// As [`LDA32`] for f64.
const LDA64: usize = KC + 8;

/// `L` elements treated as one vector.
#[derive(Clone, Copy)]
pub(super) struct Chunk<E, const L: usize>([E; L]);

// SAFETY: plain Rust, no instruction-set requirement; loads and stores
// touch exactly `L` elements from the given pointer, which the microkernel's
// contract makes valid.
unsafe impl<E: Elem, const L: usize> Lanes for Chunk<E, L> {
    type Elem = E;
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Chunk([E::ZERO; L])
    }
    #[inline(always)]
    unsafe fn splat(x: E) -> Self {
        Chunk([x; L])
    }
    #[inline(always)]
    unsafe fn load(p: *const E) -> Self {
        // SAFETY: the caller guarantees `p` is valid for `L` reads.
        Chunk(unsafe { std::ptr::read_unaligned(p.cast::<[E; L]>()) })
    }
    #[inline(always)]
    unsafe fn store(p: *mut E, v: Self) {
        // SAFETY: the caller guarantees `p` is valid for `L` writes.
        unsafe { std::ptr::write_unaligned(p.cast::<[E; L]>(), v.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // Separate multiply and add: `mul_add` is a libm call without FMA.
        Chunk(std::array::from_fn(|i| a.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Chunk(std::array::from_fn(|i| a.0[i] * b.0[i]))
    }
}

/// An f32 tile of `M` rows (`NV` is 1: the tile is one chunk wide).
///
/// # Safety
/// `t` must satisfy [`tile`]'s contract.
unsafe fn tile_f32<const M: usize, const NV: usize>(t: &Tile<f32>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<Chunk<f32, NR32>, LDA32, M, NV>(t) }
}

/// An f64 tile of `M` rows (`NV` is 1: the tile is one chunk wide).
///
/// # Safety
/// `t` must satisfy [`tile`]'s contract.
unsafe fn tile_f64<const M: usize, const NV: usize>(t: &Tile<f64>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<Chunk<f64, NR64>, LDA64, M, NV>(t) }
}

/// The f32 family.
pub(super) static F32: Family<f32> = Family {
    blocking: Blocking {
        mr: MR,
        nr: NR32,
        kc: KC,
        lda: LDA32,
        mc: 64,
        nc: 512,
        pf: 0,
    },
    tiles: tile_table!(tile_f32, 1; 1 2 3 4),
    narrow_width: 8,
    narrow: tile_table!(tile_f32, 1; 1 2 3 4),
    deep: None,
};

/// The f64 family.
pub(super) static F64: Family<f64> = Family {
    blocking: Blocking {
        mr: MR,
        nr: NR64,
        kc: KC,
        lda: LDA64,
        mc: 64,
        nc: 256,
        pf: 0,
    },
    tiles: tile_table!(tile_f64, 1; 1 2 3 4),
    narrow_width: 4,
    narrow: tile_table!(tile_f64, 1; 1 2 3 4),
    deep: None,
};
