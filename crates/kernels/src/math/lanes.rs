//! The vector vocabulary the math algorithms are written in.
//!
//! [`Lanes`] is a handful of lane-wise operations (arithmetic, FMA,
//! x86-style min/max, compare, select, sign and exponent bits). The
//! algorithms in `kernel.rs` are generic over it and are instantiated with
//! plain `f32`/`f64` here (the scalar reference and the portable path), and
//! with AVX2 and AVX-512 registers in `avx2.rs` and `avx512.rs`.

use super::coeffs::{self, Coeffs};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// An element type with its coefficient table.
pub(crate) trait Elem: Copy + Neg<Output = Self> + 'static {
    /// The constants of [`coeffs`] for this type.
    const C: &'static Coeffs<Self>;
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// 1/2.
    const HALF: Self;
    /// +∞.
    const INFINITY: Self;
    /// A quiet NaN.
    const NAN: Self;
}

/// A register of `WIDTH` lanes of `E`, with the operations the algorithms use.
pub(crate) trait Lanes:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// The element type.
    type E: Elem;
    /// The result of a comparison, one flag per lane.
    type Mask: Copy;
    /// A per-lane position 0…3 in a four-entry table (see [`Lanes::lookup4`]).
    type Index: Copy;
    /// Lanes per register (at most 16).
    const WIDTH: usize;
    /// Whether [`Lanes::lookup4`] is one register permute. Where it is not
    /// (plain `f32`/`f64`, whose loops LLVM vectorizes), evaluating every
    /// coefficient list and selecting the results is cheaper.
    const PERMUTE: bool;
    /// Loads the first `WIDTH` elements of `s` (panics if `s` is shorter).
    fn load(s: &[Self::E]) -> Self;
    /// Stores into the first `WIDTH` elements of `s` (panics if `s` is shorter).
    fn store(self, s: &mut [Self::E]);
    /// All lanes set to `v`.
    fn splat(v: Self::E) -> Self;
    /// `self·b + c`, rounded once where the instruction set has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// `self < b ? self : b` per lane (a NaN `b` is returned).
    fn min(self, b: Self) -> Self;
    /// `self > b ? self : b` per lane (a NaN `b` is returned).
    fn max(self, b: Self) -> Self;
    /// |self|.
    fn abs(self) -> Self;
    /// |self| with the sign bit of `sign`.
    fn copysign(self, sign: Self) -> Self;
    /// `self < b`, false when either is NaN.
    fn lt(self, b: Self) -> Self::Mask;
    /// `m ? a : b` per lane.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// Per lane: 0 where `m0`, else 1 where `m1`, else 2 where `m2`, else 3.
    fn index4(m0: Self::Mask, m1: Self::Mask, m2: Self::Mask) -> Self::Index;
    /// `t[i]` per lane (one permute on AVX-512 and AVX2, selects elsewhere).
    fn lookup4(i: Self::Index, t: [Self::E; 4]) -> Self;
    /// `self` with its low `n` mantissa bits cleared (n < mantissa bits).
    fn clear_low_bits(self, n: u32) -> Self;
    /// 2^self for integral lanes in the normal exponent range:
    /// `bits(self + exp2_magic) << mantissa_bits`.
    fn exp2i(self) -> Self;
    /// `self·2ⁿ` for integral lanes `n` in [`exp2i`](Self::exp2i)'s range:
    /// the product by an exact power of two, rounded once — the same value
    /// as `self * n.exp2i()`, which is the default (AVX-512 has one
    /// instruction for it, `vscalefps` / `vscalefpd`).
    #[inline(always)]
    fn mul_exp2i(self, n: Self) -> Self {
        self * n.exp2i()
    }
    /// `(m, e)` with `self = m·2^e`, m ∈ [1, 2) and e integral, for positive
    /// normal lanes (other lanes get unspecified finite values): m is the
    /// mantissa field under the exponent of 1.0, e is the exponent field
    /// read as `bits(2^p) | (bits(self) >> p)` minus `exp2_magic`.
    fn split_exp(self) -> (Self, Self);

    /// Clamps to [lo, hi], passing NaN through.
    #[inline(always)]
    fn clamp(self, lo: Self::E, hi: Self::E) -> Self {
        Self::splat(hi).min(Self::splat(lo).max(self))
    }
}

/// Horner evaluation of `c[0] + c[1]·t + … + c[n]·tⁿ`.
#[inline(always)]
pub(crate) fn poly<V: Lanes>(t: V, c: &[V::E]) -> V {
    let (last, rest) = c.split_last().expect("internal: empty coefficient list");
    rest.iter()
        .rev()
        .fold(V::splat(*last), |acc, &k| acc.mul_add(t, V::splat(k)))
}

/// The rational `n[k]/d[k]` per lane, k = 0 where `m0`, else 1 where `m1`,
/// else 2 where `m2`, else 3: with [`Lanes::PERMUTE`], one numerator and
/// one denominator with per-lane coefficients ([`poly_lookup`]); otherwise
/// all four of each, selected. Either way one division, and the same
/// values bit for bit.
#[inline(always)]
pub(crate) fn rational_lookup<V: Lanes>(
    m: [V::Mask; 3],
    t: V,
    n: [&[V::E]; 4],
    d: [&[V::E]; 4],
) -> V {
    if V::PERMUTE {
        let i = V::index4(m[0], m[1], m[2]);
        return poly_lookup(i, t, n) / poly_lookup(i, t, d);
    }
    // No `array::map` or closures here: a call left in the loop would stop
    // LLVM from vectorizing the portable path.
    let num = V::select(
        m[0],
        poly(t, n[0]),
        V::select(
            m[1],
            poly(t, n[1]),
            V::select(m[2], poly(t, n[2]), poly(t, n[3])),
        ),
    );
    let den = V::select(
        m[0],
        poly(t, d[0]),
        V::select(
            m[1],
            poly(t, d[1]),
            V::select(m[2], poly(t, d[2]), poly(t, d[3])),
        ),
    );
    num / den
}

/// [`poly`] with per-lane coefficients: lane j evaluates list `c[i_j]`.
///
/// Shorter lists are padded with zeros at the high-degree end; Horner's
/// steps through those give `0·t + 0 = 0` and then the list's own leading
/// coefficient exactly, so each lane gets bit for bit what [`poly`] gives
/// for its own list (t finite). One polynomial and one table lookup per
/// coefficient thus replace up to four polynomials and their selects.
#[inline(always)]
pub(crate) fn poly_lookup<V: Lanes>(i: V::Index, t: V, c: [&[V::E]; 4]) -> V {
    let n = c.iter().map(|s| s.len()).max().unwrap_or(0);
    let at = |s: &[V::E], k: usize| s.get(k).copied().unwrap_or(V::E::ZERO);
    let coef = |k: usize| V::lookup4(i, [at(c[0], k), at(c[1], k), at(c[2], k), at(c[3], k)]);
    let mut acc = coef(n - 1);
    for k in (0..n - 1).rev() {
        acc = acc.mul_add(t, coef(k));
    }
    acc
}

impl Elem for f32 {
    const C: &'static Coeffs<f32> = &coeffs::F32;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const HALF: f32 = 0.5;
    const INFINITY: f32 = f32::INFINITY;
    const NAN: f32 = f32::NAN;
}

impl Elem for f64 {
    const C: &'static Coeffs<f64> = &coeffs::F64;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const HALF: f64 = 0.5;
    const INFINITY: f64 = f64::INFINITY;
    const NAN: f64 = f64::NAN;
}

/// Plain `f32`/`f64` as one-lane vectors: the scalar reference and the
/// portable path, written branch-free so that LLVM can vectorize loops of it.
macro_rules! scalar_lanes {
    ($t:ty) => {
        impl Lanes for $t {
            type E = $t;
            type Mask = bool;
            type Index = (bool, bool, bool);
            const WIDTH: usize = 1;
            const PERMUTE: bool = false;
            #[inline(always)]
            fn load(s: &[$t]) -> $t {
                s[0]
            }
            #[inline(always)]
            fn store(self, s: &mut [$t]) {
                s[0] = self;
            }
            #[inline(always)]
            fn splat(v: $t) -> $t {
                v
            }
            #[inline(always)]
            fn mul_add(self, b: $t, c: $t) -> $t {
                // Without hardware FMA, `mul_add` is a slow libm call that
                // blocks vectorization, so the portable path rounds twice.
                if cfg!(target_feature = "fma") {
                    <$t>::mul_add(self, b, c)
                } else {
                    self * b + c
                }
            }
            #[inline(always)]
            fn min(self, b: $t) -> $t {
                if self < b {
                    self
                } else {
                    b
                }
            }
            #[inline(always)]
            fn max(self, b: $t) -> $t {
                if self > b {
                    self
                } else {
                    b
                }
            }
            #[inline(always)]
            fn abs(self) -> $t {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn copysign(self, sign: $t) -> $t {
                <$t>::copysign(self, sign)
            }
            #[inline(always)]
            fn lt(self, b: $t) -> bool {
                self < b
            }
            #[inline(always)]
            fn select(m: bool, a: $t, b: $t) -> $t {
                if m {
                    a
                } else {
                    b
                }
            }
            #[inline(always)]
            fn index4(m0: bool, m1: bool, m2: bool) -> Self::Index {
                (m0, m1, m2)
            }
            #[inline(always)]
            fn lookup4((m0, m1, m2): Self::Index, t: [$t; 4]) -> $t {
                // Selects, not `t[i]`: they keep the portable loop vectorizable.
                Self::select(
                    m0,
                    t[0],
                    Self::select(m1, t[1], Self::select(m2, t[2], t[3])),
                )
            }
            #[inline(always)]
            fn clear_low_bits(self, n: u32) -> $t {
                <$t>::from_bits(self.to_bits() >> n << n)
            }
            #[inline(always)]
            fn exp2i(self) -> $t {
                let c = <$t as Elem>::C;
                <$t>::from_bits((self + c.exp2_magic).to_bits() << c.mantissa_bits)
            }
            #[inline(always)]
            fn split_exp(self) -> ($t, $t) {
                let c = <$t as Elem>::C;
                let p = c.mantissa_bits;
                let field = (1 << p) - 1;
                let m = <$t>::from_bits(self.to_bits() & field | (1.0 as $t).to_bits());
                let two_p = c.exp2_magic.to_bits() & !field;
                let e = <$t>::from_bits(two_p | self.to_bits() >> p) - c.exp2_magic;
                (m, e)
            }
        }
    };
}

scalar_lanes!(f32);
scalar_lanes!(f64);
