//! AVX2+FMA microkernels: f32 tiles of 6×16 and f64 tiles of 6×8.
//!
//! A tile keeps 6 rows × 2 ymm accumulators (12 of the 16 ymm registers),
//! leaving room for the two `B` vectors and one broadcast of `A`.

use super::kernel::{tile, tile_table, Lanes, Tile};
use super::select::{Blocking, Family};
use std::arch::x86_64::*;

/// Rows of a tile.
const MR: usize = 6;
/// Depth of a packed block.
const KC: usize = 256;
/// Columns of an f32 tile.
const NR32: usize = 16;
/// Columns of an f64 tile.
const NR64: usize = 8;
/// Row stride of packed `A`: one cache line more than `KC`, so that the
/// rows of a tile do not all map to the same L1 set.
const LDA32: usize = KC + 16;
/// As [`LDA32`] for f64.
const LDA64: usize = KC + 8;

// SAFETY: every method is an AVX or FMA intrinsic on __m256; the trait's
// contract makes callers check AVX2 and FMA first. Loads and stores are the
// unaligned forms, so pointers only need to be valid for 8 elements.
unsafe impl Lanes for __m256 {
    type Elem = f32;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm256_mul_ps(a, b)
    }
}

// SAFETY: as for __m256, with 4 f64 lanes.
unsafe impl Lanes for __m256d {
    type Elem = f64;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_pd()
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        _mm256_set1_pd(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        _mm256_loadu_pd(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        _mm256_storeu_pd(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_pd(a, b, c)
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        _mm256_mul_pd(a, b)
    }
}

/// An f32 tile of `M` rows and `NV` vectors.
///
/// # Safety
/// AVX2 and FMA must be available, and `t` must satisfy [`tile`]'s contract.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_f32<const M: usize, const NV: usize>(t: &Tile<f32>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<__m256, LDA32, M, NV>(t) }
}

/// An f64 tile of `M` rows and `NV` vectors.
///
/// # Safety
/// AVX2 and FMA must be available, and `t` must satisfy [`tile`]'s contract.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_f64<const M: usize, const NV: usize>(t: &Tile<f64>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { tile::<__m256d, LDA64, M, NV>(t) }
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
        pf: 0,
    },
    tiles: tile_table!(tile_f32, 2; 1 2 3 4 5 6),
    narrow_width: 8,
    narrow: tile_table!(tile_f32, 1; 1 2 3 4 5 6),
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
        pf: 0,
    },
    tiles: tile_table!(tile_f64, 2; 1 2 3 4 5 6),
    narrow_width: 4,
    narrow: tile_table!(tile_f64, 1; 1 2 3 4 5 6),
    deep: None,
};
