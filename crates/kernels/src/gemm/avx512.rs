//! AVX-512F microkernels: f32 tiles of 12×32 and f64 tiles of 12×16.
//!
//! A tile keeps 12 rows × 2 zmm accumulators (24 of the 32 zmm registers);
//! each step loads two vectors of the `B` micro-panel, prefetches the same
//! two lines [`PF`] rows ahead, and broadcasts one element of `A` per row,
//! so the loop runs 24 FMAs per 14 loads and 2 prefetches.
//!
//! Each family has a deep twin ([`F32_DEEP`], [`F64_DEEP`]): the same tiles
//! with a packed-`A` row stride for one depth block of up to [`KC_DEEP`],
//! which short products with a prepacked weight use (`Family::for_product`).

use super::kernel::{tile, tile_table, Lanes, Tile};
use super::select::{Blocking, Family};
use std::arch::x86_64::*;

/// Rows of a tile.
const MR: usize = 12;
/// Depth of a packed block.
const KC: usize = 256;
/// Columns of an f32 tile.
const NR32: usize = 32;
/// Columns of an f64 tile.
const NR64: usize = 16;
/// Rows of `B` ahead that a tile prefetches: the first row tile of each
/// micro-panel reads `B` from memory (a weight is used once per call, and a
/// model's weights do not fit in L2), and ~32 steps of a 12-row tile cover
/// a memory latency.
const PF: usize = 32;
/// Row stride of packed `A`: one cache line more than `KC`, so that the
/// rows of a tile do not all map to the same L1 set.
const LDA32: usize = KC + 16;
/// As [`LDA32`] for f64.
const LDA64: usize = KC + 8;
/// Depth of the deep families' one block: `k` of a 1024-wide layer.
const KC_DEEP: usize = 1024;
/// Row stride of packed `A` in the deep f32 family (one line past `KC_DEEP`).
const LDA32_DEEP: usize = KC_DEEP + 16;
/// As [`LDA32_DEEP`] for f64.
const LDA64_DEEP: usize = KC_DEEP + 8;

// SAFETY: every method is an AVX-512F intrinsic on __m512; the trait's
// contract makes callers check AVX-512F first. Loads and stores are the
// unaligned forms, so pointers only need to be valid for 16 elements.
unsafe impl Lanes for __m512 {
    type Elem = f32;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
}

// SAFETY: as for __m512, with 8 f64 lanes.
unsafe impl Lanes for __m512d {
    type Elem = f64;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_pd()
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        _mm512_set1_pd(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        _mm512_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        _mm512_storeu_pd(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm512_mul_pd(a, b)
    }
    #[inline(always)]
    unsafe fn prefetch(p: *const f64) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const f64) {
        _mm_prefetch::<_MM_HINT_T1>(p.cast());
    }
}

/// An f32 tile of `M` rows and `NV` vectors, packed `A` rows `LDA` apart
/// ([`LDA32`], or [`LDA32_DEEP`] in the deep family).
///
/// # Safety
/// AVX-512F must be available, and `t` must satisfy [`tile`]'s contract.
#[target_feature(enable = "avx512f")]
unsafe fn tile_f32<const LDA: usize, const M: usize, const NV: usize>(t: &Tile<f32>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<__m512, LDA, M, NV>(t) }
}

/// An f64 tile of `M` rows and `NV` vectors, packed `A` rows `LDA` apart
/// ([`LDA64`], or [`LDA64_DEEP`] in the deep family).
///
/// # Safety
/// AVX-512F must be available, and `t` must satisfy [`tile`]'s contract.
#[target_feature(enable = "avx512f")]
unsafe fn tile_f64<const LDA: usize, const M: usize, const NV: usize>(t: &Tile<f64>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<__m512d, LDA, M, NV>(t) }
}

/// The f32 family.
pub(super) static F32: Family<f32> = Family {
    blocking: Blocking {
        mr: MR,
        nr: NR32,
        kc: KC,
        lda: LDA32,
        mc: 144,
        nc: 1024,
        pf: PF,
    },
    tiles: tile_table!(tile_f32<LDA32>, 2; 1 2 3 4 5 6 7 8 9 10 11 12),
    narrow_width: 16,
    narrow: tile_table!(tile_f32<LDA32>, 1; 1 2 3 4 5 6 7 8 9 10 11 12),
    deep: Some(&F32_DEEP),
};

/// [`F32`] with one depth block of up to [`KC_DEEP`].
pub(super) static F32_DEEP: Family<f32> = Family {
    blocking: Blocking {
        kc: KC_DEEP,
        lda: LDA32_DEEP,
        ..F32.blocking
    },
    tiles: tile_table!(tile_f32<LDA32_DEEP>, 2; 1 2 3 4 5 6 7 8 9 10 11 12),
    narrow_width: 16,
    narrow: tile_table!(tile_f32<LDA32_DEEP>, 1; 1 2 3 4 5 6 7 8 9 10 11 12),
    deep: None,
};

/// The f64 family.
pub(super) static F64: Family<f64> = Family {
    blocking: Blocking {
        mr: MR,
        nr: NR64,
        kc: KC,
        lda: LDA64,
        mc: 96,
        nc: 512,
        pf: PF,
    },
    tiles: tile_table!(tile_f64<LDA64>, 2; 1 2 3 4 5 6 7 8 9 10 11 12),
    narrow_width: 8,
    narrow: tile_table!(tile_f64<LDA64>, 1; 1 2 3 4 5 6 7 8 9 10 11 12),
    deep: Some(&F64_DEEP),
};

/// [`F64`] with one depth block of up to [`KC_DEEP`].
pub(super) static F64_DEEP: Family<f64> = Family {
    blocking: Blocking {
        kc: KC_DEEP,
        lda: LDA64_DEEP,
        ..F64.blocking
    },
    tiles: tile_table!(tile_f64<LDA64_DEEP>, 2; 1 2 3 4 5 6 7 8 9 10 11 12),
    narrow_width: 8,
    narrow: tile_table!(tile_f64<LDA64_DEEP>, 1; 1 2 3 4 5 6 7 8 9 10 11 12),
    deep: None,
};
