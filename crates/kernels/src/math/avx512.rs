//! AVX-512F registers as [`Lanes`]: 16 f32 or 8 f64 per `zmm`.
//!
//! Soundness rests on one module invariant: a value of [`F32x16`] or
//! [`F64x8`] exists only while the CPU is known to support AVX-512F. The
//! types are private to the math module and are only created inside
//! [`map_f32`] / [`map_f64`] and the row reductions' entry points in
//! `reduce.rs`, which are `#[target_feature(enable =
//! "avx512f")]` and `unsafe` to call; their callers check
//! `is_x86_feature_detected!("avx512f")` first (through
//! [`Isa`](super::Isa), which can only be obtained from detection). Every
//! intrinsic below therefore runs on a CPU that has it.

use super::kernel;
use super::lanes::Lanes;
use super::Func;
use std::arch::x86_64::*;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Implements the operator traits and [`Lanes`] for one register type.
macro_rules! avx512_lanes {
    (
        $name:ident($reg:ty): $e:ty, $width:literal,
        set1 = $set1:ident, add = $add:ident, sub = $sub:ident, mul = $mul:ident,
        div = $div:ident, fmadd = $fmadd:ident, min = $min:ident, max = $max:ident,
        abs = $abs:ident, cmp = $cmp:ident, blend = $blend:ident,
        to_int = $to_int:ident, from_int = $from_int:ident, slli = $slli:ident,
        srli = $srli:ident,
        loadu = $loadu:ident, storeu = $storeu:ident, mask = $mask:ty,
        int = $int:ty, set1_int = $set1_int:ident,
        mask_mov = $mask_mov:ident, permute = $permute:ident, table = $table:ident,
        scalef = $scalef:ident
    ) => {
        #[derive(Clone, Copy)]
        pub(super) struct $name($reg);

        // SAFETY (for every `unsafe` block in this macro): the intrinsics
        // need AVX-512F, which the module invariant guarantees whenever a
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
                let sign = unsafe { $to_int($set1(-0.0)) };
                $name(unsafe { $from_int(_mm512_xor_si512($to_int(self.0), sign)) })
            }
        }

        impl Lanes for $name {
            type E = $e;
            type Mask = $mask;
            type Index = __m512i;
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
                $name(unsafe { $abs(self.0) })
            }
            #[inline(always)]
            fn copysign(self, sign: Self) -> Self {
                unsafe {
                    let mask = $to_int($set1(-0.0));
                    let mag = _mm512_andnot_si512(mask, $to_int(self.0));
                    let sgn = _mm512_and_si512(mask, $to_int(sign.0));
                    $name($from_int(_mm512_or_si512(mag, sgn)))
                }
            }
            #[inline(always)]
            fn lt(self, b: Self) -> $mask {
                unsafe { $cmp::<_CMP_LT_OQ>(self.0, b.0) }
            }
            #[inline(always)]
            fn select(m: $mask, a: Self, b: Self) -> Self {
                // blend(k, x, y) takes y where k is set.
                $name(unsafe { $blend(m, b.0, a.0) })
            }
            #[inline(always)]
            fn index4(m0: $mask, m1: $mask, m2: $mask) -> __m512i {
                unsafe {
                    let i = $mask_mov($set1_int(3), m2, $set1_int(2));
                    let i = $mask_mov(i, m1, $set1_int(1));
                    $mask_mov(i, m0, $set1_int(0))
                }
            }
            #[inline(always)]
            fn lookup4(i: __m512i, t: [$e; 4]) -> Self {
                // Indices are 0…3, so only the table's low four lanes are read.
                $name(unsafe { $permute(i, $table(t)) })
            }
            #[inline(always)]
            fn clear_low_bits(self, n: u32) -> Self {
                let keep = unsafe { $set1_int((<$int>::MAX << n) as _) };
                $name(unsafe { $from_int(_mm512_and_si512($to_int(self.0), keep)) })
            }
            #[inline(always)]
            fn exp2i(self) -> Self {
                let c = <$e as super::lanes::Elem>::C;
                let biased = self + Self::splat(c.exp2_magic);
                $name(unsafe { $from_int($slli::<{ <$e>::MANTISSA_DIGITS - 1 }>($to_int(biased.0))) })
            }
            #[inline(always)]
            fn mul_exp2i(self, n: Self) -> Self {
                // scalef(x, n) = x·2^⌊n⌋ rounded once: for integral n in the
                // normal range, exactly the product by `n.exp2i()` (also for
                // 0, ±∞, NaN and, under DAZ, subnormal x).
                $name(unsafe { $scalef(self.0, n.0) })
            }
            #[inline(always)]
            fn split_exp(self) -> (Self, Self) {
                let c = <$e as super::lanes::Elem>::C;
                let field: $int = (1 << c.mantissa_bits) - 1;
                let two_p = c.exp2_magic.to_bits() & !field;
                unsafe {
                    let bits = $to_int(self.0);
                    let mant = _mm512_and_si512(bits, $set1_int(field as _));
                    let m = _mm512_or_si512(mant, $to_int($set1(1.0)));
                    let field_e = $srli::<{ <$e>::MANTISSA_DIGITS - 1 }>(bits);
                    let e = _mm512_or_si512(field_e, $set1_int(two_p as _));
                    ($name($from_int(m)), $name($from_int(e)) - Self::splat(c.exp2_magic))
                }
            }
        }
    };
}

/// Four f32 in the low lanes of a `zmm` (the rest zero), for `lookup4`.
///
/// # Safety
/// The CPU must support AVX-512F (callers are `Lanes` methods, see the
/// module invariant).
#[inline(always)]
unsafe fn table_f32(t: [f32; 4]) -> __m512 {
    _mm512_zextps128_ps512(_mm_setr_ps(t[0], t[1], t[2], t[3]))
}

/// Four f64 in the low lanes of a `zmm` (the rest zero), for `lookup4`.
///
/// # Safety
/// As for [`table_f32`].
#[inline(always)]
unsafe fn table_f64(t: [f64; 4]) -> __m512d {
    _mm512_zextpd256_pd512(_mm256_setr_pd(t[0], t[1], t[2], t[3]))
}

avx512_lanes! {
    F32x16(__m512): f32, 16,
    set1 = _mm512_set1_ps, add = _mm512_add_ps, sub = _mm512_sub_ps, mul = _mm512_mul_ps,
    div = _mm512_div_ps, fmadd = _mm512_fmadd_ps, min = _mm512_min_ps, max = _mm512_max_ps,
    abs = _mm512_abs_ps, cmp = _mm512_cmp_ps_mask, blend = _mm512_mask_blend_ps,
    to_int = _mm512_castps_si512, from_int = _mm512_castsi512_ps, slli = _mm512_slli_epi32, srli = _mm512_srli_epi32,
    loadu = _mm512_loadu_ps, storeu = _mm512_storeu_ps, mask = __mmask16,
    int = u32, set1_int = _mm512_set1_epi32,
    mask_mov = _mm512_mask_mov_epi32, permute = _mm512_permutexvar_ps, table = table_f32,
    scalef = _mm512_scalef_ps
}

avx512_lanes! {
    F64x8(__m512d): f64, 8,
    set1 = _mm512_set1_pd, add = _mm512_add_pd, sub = _mm512_sub_pd, mul = _mm512_mul_pd,
    div = _mm512_div_pd, fmadd = _mm512_fmadd_pd, min = _mm512_min_pd, max = _mm512_max_pd,
    abs = _mm512_abs_pd, cmp = _mm512_cmp_pd_mask, blend = _mm512_mask_blend_pd,
    to_int = _mm512_castpd_si512, from_int = _mm512_castsi512_pd, slli = _mm512_slli_epi64, srli = _mm512_srli_epi64,
    loadu = _mm512_loadu_pd, storeu = _mm512_storeu_pd, mask = __mmask8,
    int = u64, set1_int = _mm512_set1_epi64,
    mask_mov = _mm512_mask_mov_epi64, permute = _mm512_permutexvar_pd, table = table_f64,
    scalef = _mm512_scalef_pd
}

/// `out[i] = f(x[i])` for f32 with AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F. `x` and `out` must have equal lengths
/// (checked by the caller; a mismatch is a logic error, not UB).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn map_f32(f: Func, x: &[f32], out: &mut [f32]) {
    kernel::map::<F32x16>(f, x, out);
}

/// `out[i] = f(x[i])` for f64 with AVX-512F.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn map_f64(f: Func, x: &[f64], out: &mut [f64]) {
    kernel::map::<F64x8>(f, x, out);
}

/// `x[i] = f(x[i])` for f32, in place.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn map_inplace_f32(f: Func, x: &mut [f32]) {
    kernel::map_inplace::<F32x16>(f, x);
}

/// `x[i] = f(x[i])` for f64, in place.
///
/// # Safety
/// As for [`map_f32`].
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn map_inplace_f64(f: Func, x: &mut [f64]) {
    kernel::map_inplace::<F64x8>(f, x);
}
