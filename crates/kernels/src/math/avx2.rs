//! AVX2 + FMA registers as [`Lanes`]: 8 f32 or 4 f64 per `ymm`.
//!
//! Soundness rests on one module invariant: a value of [`F32x8`] or
//! [`F64x4`] exists only while the CPU is known to support AVX2 and FMA. The
//! types are private to the math module and are only created inside
//! [`map_f32`] / [`map_f64`] and the row reductions' entry points in
//! `reduce.rs`, which are `#[target_feature(enable =
//! "avx2,fma")]` and `unsafe` to call; their callers check
//! `is_x86_feature_detected!` for both first (through
//! [`Isa`](super::Isa), which can only be obtained from detection). Every
//! intrinsic below therefore runs on a CPU that has it.

use super::kernel;
use super::lanes::Lanes;
use super::Func;
use std::arch::x86_64::*;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Implements the operator traits and [`Lanes`] for one register type.
macro_rules! avx2_lanes {
    (
        $name:ident($reg:ty): $e:ty, $width:literal,
        set1 = $set1:ident, add = $add:ident, sub = $sub:ident, mul = $mul:ident,
        div = $div:ident, fmadd = $fmadd:ident, min = $min:ident, max = $max:ident,
        and = $and:ident, andnot = $andnot:ident, or = $or:ident, xor = $xor:ident,
        cmp = $cmp:ident, blend = $blend:ident,
        to_int = $to_int:ident, from_int = $from_int:ident, slli = $slli:ident,
        srli = $srli:ident,
        loadu = $loadu:ident, storeu = $storeu:ident,
        int = $int:ty, set1_int = $set1_int:ident,
        index = $index:ident, lookup = $lookup:ident, to_ps = $to_ps:ident
    ) => {
        #[derive(Clone, Copy)]
        pub(super) struct $name($reg);

        // SAFETY (for every `unsafe` block in this macro): the intrinsics
        // need AVX, AVX2 or FMA, which the module invariant guarantees whenever a
        // value of this type exists; none of them touches memory except
        // `load`/`store`, whose bounds are checked first.
        impl Add for $name {
            type Output = Self;
            #[inline(always)]
            fn add(self, b: Self) -> Self {
                $name(unsafe { $add(self.0, b.0) })
            }
        }
        impl Sub for $name {
            type Output = Self;
            #[inline(always)]
            fn sub(self, b: Self) -> Self {
                $name(unsafe { $sub(self.0, b.0) })
            }
        }
        impl Mul for $name {
            type Output = Self;
            #[inline(always)]
            fn mul(self, b: Self) -> Self {
                $name(unsafe { $mul(self.0, b.0) })
            }
        }
        impl Div for $name {
            type Output = Self;
            #[inline(always)]
            fn div(self, b: Self) -> Self {
                $name(unsafe { $div(self.0, b.0) })
            }
        }
        impl Neg for $name {
            type Output = Self;
            #[inline(always)]
            fn neg(self) -> Self {
                // Flips the sign bit (also of zeros), like scalar negation.
                $name(unsafe { $xor(self.0, $set1(-0.0)) })
            }
        }

        impl Lanes for $name {
            type E = $e;
            type Mask = Self;
            type Index = __m256i;
            const WIDTH: usize = $width;
            const PERMUTE: bool = true;
            #[inline(always)]
            fn load(s: &[$e]) -> Self {
                assert!(s.len() >= $width, "internal: short load");
                $name(unsafe { $loadu(s.as_ptr()) })
            }
            #[inline(always)]
            fn store(self, s: &mut [$e]) {
                assert!(s.len() >= $width, "internal: short store");
                unsafe { $storeu(s.as_mut_ptr(), self.0) }
            }
            #[inline(always)]
            fn splat(v: $e) -> Self {
                $name(unsafe { $set1(v) })
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                $name(unsafe { $fmadd(self.0, b.0, c.0) })
            }
            #[inline(always)]
            fn min(self, b: Self) -> Self {
                $name(unsafe { $min(self.0, b.0) })
            }
            #[inline(always)]
            fn max(self, b: Self) -> Self {
                $name(unsafe { $max(self.0, b.0) })
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $name(unsafe { $andnot($set1(-0.0), self.0) })
            }
            #[inline(always)]
            fn copysign(self, sign: Self) -> Self {
                unsafe {
                    let mask = $set1(-0.0);
                    $name($or($andnot(mask, self.0), $and(mask, sign.0)))
                }
            }
            #[inline(always)]
            fn lt(self, b: Self) -> Self {
                $name(unsafe { $cmp::<_CMP_LT_OQ>(self.0, b.0) })
            }
            #[inline(always)]
            fn select(m: Self, a: Self, b: Self) -> Self {
                // blendv(x, y, m) takes y where the sign bit of m is set.
                $name(unsafe { $blend(b.0, a.0, m.0) })
            }
            #[inline(always)]
            fn index4(m0: Self, m1: Self, m2: Self) -> __m256i {
                unsafe {
                    let pick = |i: __m256i, k, m: Self| {
                        let (i, k) = (_mm256_castsi256_ps(i), _mm256_castsi256_ps($index(k)));
                        _mm256_castps_si256(_mm256_blendv_ps(i, k, $to_ps(m.0)))
                    };
                    pick(pick(pick($index(3), 2, m2), 1, m1), 0, m0)
                }
            }
            #[inline(always)]
            fn lookup4(i: __m256i, t: [$e; 4]) -> Self {
                $name(unsafe { $lookup(i, t) })
            }
            #[inline(always)]
            fn clear_low_bits(self, n: u32) -> Self {
                let keep = unsafe { $from_int($set1_int((<$int>::MAX << n) as _)) };
                $name(unsafe { $and(self.0, keep) })
            }
            #[inline(always)]
            fn exp2i(self) -> Self {
                let c = <$e as super::lanes::Elem>::C;
                let biased = self + Self::splat(c.exp2_magic);
                $name(unsafe { $from_int($slli::<{ <$e>::MANTISSA_DIGITS as i32 - 1 }>($to_int(biased.0))) })
            }
            #[inline(always)]
            fn split_exp(self) -> (Self, Self) {
                let c = <$e as super::lanes::Elem>::C;
                let field: $int = (1 << c.mantissa_bits) - 1;
                let two_p = c.exp2_magic.to_bits() & !field;
                unsafe {
                    let bits = $to_int(self.0);
                    let mant = $and(self.0, $from_int($set1_int(field as _)));
                    let m = $or(mant, $set1(1.0));
                    let field_e = $from_int($srli::<{ <$e>::MANTISSA_DIGITS as i32 - 1 }>(bits));
                    let e = $or(field_e, $from_int($set1_int(two_p as _)));
                    ($name(m), $name(e) - Self::splat(c.exp2_magic))
                }
            }
        }
    };
}

// The four-entry lookups permute 32-bit lanes (`vpermps`), which AVX2 has
// across the whole register; an f64 entry k is the pair of halves 2k, 2k+1.
// SAFETY (for the helpers below): they are `unsafe fn`s called only from
// `Lanes` methods, so the module invariant (AVX2 + FMA present) holds.

/// The f32 lane index of table entry `k`.
#[inline(always)]
unsafe fn index_f32(k: i32) -> __m256i {
    _mm256_set1_epi32(k)
}

/// The pair of 32-bit indices of f64 table entry `k`.
#[inline(always)]
unsafe fn index_f64(k: i32) -> __m256i {
    _mm256_set1_epi64x((i64::from(2 * k + 1) << 32) | i64::from(2 * k))
}

/// `t[i]` per f32 lane.
#[inline(always)]
unsafe fn lookup_f32(i: __m256i, t: [f32; 4]) -> __m256 {
    let table = _mm256_setr_ps(t[0], t[1], t[2], t[3], 0.0, 0.0, 0.0, 0.0);
    _mm256_permutevar8x32_ps(table, i)
}

/// `t[i]` per f64 lane (`i` from [`index_f64`]).
#[inline(always)]
unsafe fn lookup_f64(i: __m256i, t: [f64; 4]) -> __m256d {
    let table = _mm256_castpd_ps(_mm256_setr_pd(t[0], t[1], t[2], t[3]));
    _mm256_castps_pd(_mm256_permutevar8x32_ps(table, i))
}

/// The identity (an f32 mask is already `__m256`).
#[inline(always)]
unsafe fn identity_ps(m: __m256) -> __m256 {
    m
}

avx2_lanes! {
    F32x8(__m256): f32, 8,
    set1 = _mm256_set1_ps, add = _mm256_add_ps, sub = _mm256_sub_ps, mul = _mm256_mul_ps,
    div = _mm256_div_ps, fmadd = _mm256_fmadd_ps, min = _mm256_min_ps, max = _mm256_max_ps,
    and = _mm256_and_ps, andnot = _mm256_andnot_ps, or = _mm256_or_ps, xor = _mm256_xor_ps,
    cmp = _mm256_cmp_ps, blend = _mm256_blendv_ps,
    to_int = _mm256_castps_si256, from_int = _mm256_castsi256_ps, slli = _mm256_slli_epi32, srli = _mm256_srli_epi32,
    loadu = _mm256_loadu_ps, storeu = _mm256_storeu_ps,
    int = u32, set1_int = _mm256_set1_epi32,
    index = index_f32, lookup = lookup_f32, to_ps = identity_ps
}

avx2_lanes! {
    F64x4(__m256d): f64, 4,
    set1 = _mm256_set1_pd, add = _mm256_add_pd, sub = _mm256_sub_pd, mul = _mm256_mul_pd,
    div = _mm256_div_pd, fmadd = _mm256_fmadd_pd, min = _mm256_min_pd, max = _mm256_max_pd,
    and = _mm256_and_pd, andnot = _mm256_andnot_pd, or = _mm256_or_pd, xor = _mm256_xor_pd,
    cmp = _mm256_cmp_pd, blend = _mm256_blendv_pd,
    to_int = _mm256_castpd_si256, from_int = _mm256_castsi256_pd, slli = _mm256_slli_epi64, srli = _mm256_srli_epi64,
    loadu = _mm256_loadu_pd, storeu = _mm256_storeu_pd,
    int = u64, set1_int = _mm256_set1_epi64x,
    index = index_f64, lookup = lookup_f64, to_ps = _mm256_castpd_ps
}

/// `out[i] = f(x[i])` for f32 with AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `x` and `out` must have equal lengths
/// (checked by the caller; a mismatch is a logic error, not UB).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn map_f32(f: Func, x: &[f32], out: &mut [f32]) {
    kernel::map::<F32x8>(f, x, out);
}

/// `out[i] = f(x[i])` for f64 with AVX2 and FMA.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn map_f64(f: Func, x: &[f64], out: &mut [f64]) {
    kernel::map::<F64x4>(f, x, out);
}

/// `x[i] = f(x[i])` for f32, in place.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn map_inplace_f32(f: Func, x: &mut [f32]) {
    kernel::map_inplace::<F32x8>(f, x);
}

/// `x[i] = f(x[i])` for f64, in place.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn map_inplace_f64(f: Func, x: &mut [f64]) {
    kernel::map_inplace::<F64x4>(f, x);
}
