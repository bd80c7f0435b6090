//! The one coefficient table behind every elementwise math kernel.
//!
//! The Rust kernels in this module (scalar, AVX2, AVX-512) and the code the
//! JIT emits for f32x4 / f64x2 all evaluate the algorithms below with these
//! constants, so they agree to the last bit wherever both use FMA.
//!
//! Every algorithm is straight-line: range reduction, polynomials in Horner
//! form (`acc = c[n]; acc = acc·t + c[k]` for k = n−1 … 0, one FMA per
//! step; coefficient slices are stored constant term first), comparisons
//! and selects. There are no table lookups by index and no integer
//! division, so each maps directly onto vector instructions.
//!
//! `min(a, b)` and `max(a, b)` below mean `a < b ? a : b` and `a > b ? a : b`
//! (the x86 `minps`/`maxps` rule): with the constant first and `x` second, a
//! NaN `x` passes through a clamp. IEEE `fmin`/`fmax` would swallow it.
//!
//! # exp(x)
//! 1. `x ← min(exp_max, max(exp_min, x))` (beyond these, eˣ is 0 or ∞ anyway).
//! 2. `n ← (x·log2e + round_shifter) − round_shifter`: round to nearest
//!    integer with the 1.5·2^p trick (one FMA, one subtraction).
//! 3. `r ← x − n·ln2_hi − n·ln2_lo` (two FMAs; `ln2_hi` has trailing zero
//!    bits so that `n·ln2_hi` is exact even without FMA). |r| ≤ ln2/2.
//! 4. `p ← exp_poly(r)`: the Taylor polynomial of eʳ (coefficients 1/k!).
//! 5. Scale by 2ⁿ in two factors so that subnormal results and the last
//!    binade before overflow both come out right:
//!    `n1 ← min(exp2_max_n, max(exp2_min_n, n))`, `n2 ← n − n1`,
//!    result `(p·2^n1)·2^n2`. Lanes whose `x` was below `exp_min` get
//!    `p ← 0` first: eˣ rounds to +0 there anyway, and `0·2^n1·2^n2` gets
//!    it without the subnormal product and underflow, each a slow microcode
//!    assist on x86.
//!
//! `2^k` for an integral `k` in the normal exponent range is built from bits:
//! `bits(k + exp2_magic) << mantissa_bits`. Adding the magic constant
//! (2^mantissa_bits + bias) leaves `k + bias` in the low mantissa bits; the
//! shift moves it into the exponent field and drops the rest.
//!
//! # tanh(x)
//! For |x| < `tanh_small`: `x + x·y·tanh_poly(y)` with y = x² (a Chebyshev
//! fit of (tanh(√y)/√y − 1)/y, computed with mpmath at 60 digits).
//! Otherwise `(1 − e)/(1 + e)` with `e = exp(−2|x|)`, which saturates to 1
//! and has no cancellation for |x| ≥ 0.55 (e ≤ 1/3). The selected value
//! then takes the sign of x (which also makes tanh(−0) = −0).
//!
//! # sigmoid(x), SiLU
//! `e = exp(−|x|)`, `s = 1/(1 + e)`; σ(x) = s for x ≥ 0 and `e·s` for x < 0,
//! so neither tail cancels or overflows. SiLU is `max(−arg_clamp, x)·σ(x)`
//! (the clamp makes SiLU(−∞) = −0 instead of −∞·0 = NaN).
//!
//! # GELU, tanh form
//! `(1 + tanh u)/2 = σ(2u)`, so `gelu_tanh(x) = x·σ(v)` with
//! `v = x·(gelu_k0 + gelu_k1·x²)` = 2·√(2/π)·(x + 0.044715·x³). Its
//! derivative is `s·(1 + x·(1 − s)·(gelu_k0 + 3·gelu_k1·x²))`, s = σ(v),
//! with 1 − s = σ(−v) taken from the same `e`. x is clamped to
//! ±`arg_clamp` first (below for the function, both sides for the derivative)
//! so that ±∞ gives the limits 0 / ∞ and 0 / 1 instead of NaN.
//!
//! # log(x)
//! 1. Subnormal x (below `log_min_normal`) is scaled by `log_sub_scale`
//!    = 2^s into the normal range and k starts at −s (exact).
//! 2. `x = m·2^k` with m ∈ [1, 2) from the bits (mantissa field with the
//!    exponent of 1.0; the exponent field read through `exp2_magic`, the
//!    inverse of `exp2i`); if m > √2, m ← m/2 and k ← k + 1, so that
//!    m ∈ (√2/2, √2].
//! 3. fdlibm's `e_log.c`: f = m − 1 (exact), s = f/(2 + f), z = s²,
//!    R = z·log_poly(z), hfsq = f²/2, and
//!    `log x = k·ln2_hi − ((hfsq − (s·(hfsq + R) + k·ln2_lo)) − f)` with the
//!    `ln2_hi`/`ln2_lo` split of exp (k·ln2_hi is exact for every k).
//! 4. Special lanes: log(+∞) = +∞ and NaN pass through (x itself),
//!    log(±0) = −∞, log(x < 0) = NaN.
//!
//! # erf and GELU, erf form
//! The piecewise rationals of FreeBSD/musl `s_erf.c` ([`Erf`]), each lane
//! evaluating its own piece's rational (the Rust kernels pick the
//! coefficients per lane; the JIT evaluates all pieces and selects the
//! numerator and denominator: the same values bit for bit) and one division,
//! each piece giving erf(|x|) and
//! erfc(|x|) without cancellation (f32 uses the same coefficients rounded,
//! as musl's `erff` does). With Φ(x) = (1 + erf(x/√2))/2 taken from erfc
//! for x < 0, `gelu_erf(x) = max(−arg_clamp, x)·Φ(x)` and its derivative
//! `Φ(x) + x·φ(x)`, `φ = frac_1_sqrt_2pi·e^(−x²/2)`, are accurate relative
//! to their value in the negative tail too. e^(−x²/2) uses the same exact
//! split of x² as the erfc tail.

/// The constants shared by all functions, one instance per element type.
#[derive(Debug)]
pub struct Coeffs<E: 'static> {
    /// exp: inputs below this give 0 (after rounding).
    pub exp_min: E,
    /// exp: inputs above this give +∞.
    pub exp_max: E,
    /// log₂ e.
    pub log2e: E,
    /// 1.5·2^p (p = mantissa bits): adding and subtracting it rounds to an integer.
    pub round_shifter: E,
    /// High part of ln 2 (trailing zero bits, so n·ln2_hi is exact).
    pub ln2_hi: E,
    /// ln 2 − ln2_hi.
    pub ln2_lo: E,
    /// Taylor coefficients 1/k! of eʳ on |r| ≤ ln2/2, constant term first.
    pub exp_poly: &'static [E],
    /// Smallest exponent of a normal number.
    pub exp2_min_n: E,
    /// Largest exponent of a finite number.
    pub exp2_max_n: E,
    /// 2^p + bias: `bits(k + exp2_magic) << p` is the bit pattern of 2^k.
    pub exp2_magic: E,
    /// p: stored mantissa bits (23 or 52).
    pub mantissa_bits: u32,
    /// tanh: below this |x| the odd polynomial is used.
    pub tanh_small: E,
    /// tanh: coefficients of (tanh(√y)/√y − 1)/y in y = x², constant term first.
    pub tanh_poly: &'static [E],
    /// 2·√(2/π).
    pub gelu_k0: E,
    /// 2·0.044715·√(2/π).
    pub gelu_k1: E,
    /// 3·gelu_k1, for the derivative v′(x) = gelu_k0 + 3·gelu_k1·x².
    pub gelu_k1_3: E,
    /// 1/√2.
    pub frac_1_sqrt_2: E,
    /// 1/√(2π).
    pub frac_1_sqrt_2pi: E,
    /// |x| beyond which GELU, SiLU and the derivatives have reached their
    /// limits; x is clamped to it so that ±∞ does not produce ∞·0.
    pub arg_clamp: E,
    /// log: inputs below this (the smallest normal number) are scaled first.
    pub log_min_normal: E,
    /// log: 2^s, the scale applied to subnormal inputs.
    pub log_sub_scale: E,
    /// log: s.
    pub log_sub_k: E,
    /// log: √2, the upper end of the reduced mantissa.
    pub log_sqrt2: E,
    /// log: coefficients Lg1… of (log(1+f) − 2s − … )/s² in z = s², constant
    /// term first (fdlibm `e_log.c` for f64, musl `logf.c` for f32).
    pub log_poly: &'static [E],
    /// erf, erfc and Φ.
    pub erf: Erf<E>,
}

/// The f32 table.
pub const F32: Coeffs<f32> = Coeffs {
    exp_min: -104.0,
    exp_max: 89.0,
    log2e: std::f32::consts::LOG2_E,
    round_shifter: 12_582_912.0,
    ln2_hi: 0.693_359_4,
    ln2_lo: -0.000_212_194_44,
    exp_poly: &[
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ],
    exp2_min_n: -126.0,
    exp2_max_n: 127.0,
    exp2_magic: 8_388_735.0,
    mantissa_bits: 23,
    tanh_small: 0.55,
    tanh_poly: &[
        -0.333_333_34,
        0.133_333_24,
        -0.053_964_7,
        0.021_818_45,
        -0.008_526_333,
        0.002_526_390_6,
    ],
    gelu_k0: 1.595_769_2,
    gelu_k1: 0.071_354_814,
    gelu_k1_3: 3.0 * 0.071_354_814,
    frac_1_sqrt_2: std::f32::consts::FRAC_1_SQRT_2,
    frac_1_sqrt_2pi: 0.398_942_3,
    arg_clamp: 1.0e4,
    log_min_normal: f32::MIN_POSITIVE,
    log_sub_scale: 33_554_432.0,
    log_sub_k: 25.0,
    log_sqrt2: std::f32::consts::SQRT_2,
    log_poly: &[0.666_666_6, 0.400_009_72, 0.284_987_87, 0.242_790_79],
    erf: Erf {
        small_max: 0.84375,
        mid_max: 1.25,
        tail_split: 2.857_143,
        tail_max: 28.0,
        tail_offset: -0.5625,
        split_bits: 12,
        erx: ERF_ERX as f32,
        pp: &to_f32(ERF_PP),
        qq: &to_f32(ERF_QQ),
        pa: &to_f32(ERF_PA),
        qa: &to_f32(ERF_QA),
        ra: &to_f32(ERF_RA),
        sa: &to_f32(ERF_SA),
        rb: &to_f32(ERF_RB),
        sb: &to_f32(ERF_SB),
    },
};

/// The f64 table.
pub const F64: Coeffs<f64> = Coeffs {
    exp_min: -746.0,
    exp_max: 710.0,
    log2e: std::f64::consts::LOG2_E,
    round_shifter: 6_755_399_441_055_744.0,
    // fdlibm's split: 32 significant bits in the high part.
    ln2_hi: 0.693_147_180_369_123_8,
    ln2_lo: 1.908_214_929_270_587_7e-10,
    exp_poly: &[
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ],
    exp2_min_n: -1022.0,
    exp2_max_n: 1023.0,
    exp2_magic: 4_503_599_627_371_519.0,
    mantissa_bits: 52,
    tanh_small: 0.55,
    tanh_poly: &[
        -0.333_333_333_333_333_3,
        0.133_333_333_333_327_14,
        -0.053_968_253_967_434_016,
        0.021_869_488_493_666_944,
        -0.008_863_234_397_814_355,
        0.003_592_110_378_689_024,
        -0.001_455_661_830_100_716,
        0.000_588_936_052_007_405_7,
        -0.000_234_634_741_088_723_7,
        8.511_313_685_577_672e-5,
        -2.060_276_537_636_634e-5,
    ],
    gelu_k0: 1.595_769_121_605_730_8,
    gelu_k1: 0.071_354_816_272_600_25,
    gelu_k1_3: 3.0 * 0.071_354_816_272_600_25,
    frac_1_sqrt_2: std::f64::consts::FRAC_1_SQRT_2,
    frac_1_sqrt_2pi: 0.398_942_280_401_432_7,
    arg_clamp: 1.0e4,
    log_min_normal: f64::MIN_POSITIVE,
    log_sub_scale: 18_014_398_509_481_984.0,
    log_sub_k: 54.0,
    log_sqrt2: std::f64::consts::SQRT_2,
    // fdlibm's Lg1…Lg7 (see the notice on [`Erf`]).
    log_poly: &[
        6.666_666_666_666_735e-1,
        3.999_999_999_940_942e-1,
        2.857_142_874_366_239e-1,
        2.222_219_843_214_978_4e-1,
        1.818_357_216_161_805e-1,
        1.531_383_769_920_937_3e-1,
        1.479_819_860_511_658_6e-1,
    ],
    erf: Erf {
        small_max: 0.84375,
        mid_max: 1.25,
        tail_split: 2.857_142_857_142_857,
        tail_max: 28.0,
        tail_offset: -0.5625,
        split_bits: 32,
        erx: ERF_ERX,
        pp: &ERF_PP,
        qq: &ERF_QQ,
        pa: &ERF_PA,
        qa: &ERF_QA,
        ra: &ERF_RA,
        sa: &ERF_SA,
        rb: &ERF_RB,
        sb: &ERF_SB,
    },
};

/// erf and erfc: the piecewise rationals of FreeBSD / musl `s_erf.c`.
///
/// For a = |x| ≥ 0 each lane computes all three pieces, each giving both
/// erf(a) and erfc(a) without cancellation, and selects:
/// - a < `small_max`: y = pp(a²)/qq(a²), erf = a + a·y, erfc = 1 − erf
///   for a < 1/4 and 1/2 − ((a − 1/2) + a·y) above;
/// - a < `mid_max`: q = pa(s)/qa(s) with s = a − 1, erf = erx + q,
///   erfc = (1 − erx) − q;
/// - otherwise, with a ← min(a, `tail_max`) and w = 1/a²:
///   erfc = exp(−a² − 0.5625 + R(w)/S(w))/a, erf = 1 − erfc, where (R, S)
///   is (ra, sa) for a < `tail_split` and (rb, sb) beyond, chosen per
///   coefficient so that only one rational is evaluated. e^(−a² + c) is
///   computed as one exponential of the two parts −z² (exact) and
///   (z−a)(z+a) + c, with z = a with its low `split_bits` mantissa bits
///   cleared: n = round((−z² + rest)·log2e) as in exp, then
///   r = (−z² − n·ln2_hi − n·ln2_lo) + rest, so that the rounding of a²
///   never becomes a relative error of the result; 0 below `exp_min`.
///
/// erf(x) is then sign(x)·erf(a), and Φ(x) = erfc(a)/2 for x < 0 and
/// (1 + erf(a))/2 otherwise, accurate relative to Φ in both tails.
///
/// The coefficients are those of fdlibm: "Copyright (C) 1993 by Sun
/// Microsystems, Inc. All rights reserved. Developed at SunPro, a Sun
/// Microsystems, Inc. business. Permission to use, copy, modify, and
/// distribute this software is freely granted, provided that this notice
/// is preserved."
#[derive(Debug)]
pub struct Erf<E: 'static> {
    /// Upper end of the small piece.
    pub small_max: E,
    /// Upper end of the middle piece.
    pub mid_max: E,
    /// Where the tail switches from (ra, sa) to (rb, sb): 1/0.35.
    pub tail_split: E,
    /// Beyond this erfc underflows to 0 (and erf is 1).
    pub tail_max: E,
    /// Low mantissa bits cleared to split a = z + (a − z) with z² exact.
    pub split_bits: u32,
    /// −0.5625: the tail rationals fit ln(a·erfc(a)) + a² + 0.5625.
    pub tail_offset: E,
    /// erf(1) rounded to 24 bits.
    pub erx: E,
    /// Small piece, numerator in x².
    pub pp: &'static [E],
    /// Small piece, denominator in x².
    pub qq: &'static [E],
    /// Middle piece, numerator in a − 1.
    pub pa: &'static [E],
    /// Middle piece, denominator in a − 1.
    pub qa: &'static [E],
    /// Near tail, numerator in 1/a².
    pub ra: &'static [E],
    /// Near tail, denominator in 1/a².
    pub sa: &'static [E],
    /// Far tail, numerator in 1/a² (padded with a zero to the length of `ra`).
    pub rb: &'static [E],
    /// Far tail, denominator in 1/a² (padded with a zero to the length of `sa`).
    pub sb: &'static [E],
}

// fdlibm's erf coefficients (see the notice on [`Erf`]).
/// erf(1) rounded to 24 bits.
const ERF_ERX: f64 = 0.845_062_911_510_467_5;
/// Small piece, numerator in a².
const ERF_PP: [f64; 5] = [
    0.128_379_167_095_512_56,
    -0.325_042_107_247_001_5,
    -0.028_481_749_575_598_51,
    -0.005_770_270_296_489_442,
    -2.376_301_665_665_016_3e-5,
];
/// Small piece, denominator in a².
const ERF_QQ: [f64; 6] = [
    1.0,
    0.397_917_223_959_155_35,
    0.065_022_249_988_767_3,
    0.005_081_306_281_875_766,
    0.000_132_494_738_004_321_64,
    -3.960_228_278_775_368e-6,
];
/// Middle piece, numerator in a − 1.
const ERF_PA: [f64; 7] = [
    -0.002_362_118_560_752_659_4,
    0.414_856_118_683_748_33,
    -0.372_207_876_035_701_3,
    0.318_346_619_901_161_75,
    -0.110_894_694_282_396_68,
    0.035_478_304_325_618_236,
    -0.002_166_375_594_868_791,
];
/// Middle piece, denominator in a − 1.
const ERF_QA: [f64; 7] = [
    1.0,
    0.106_420_880_400_844_23,
    0.540_397_917_702_171,
    0.071_828_654_414_196_27,
    0.126_171_219_808_761_64,
    0.013_637_083_912_029_05,
    0.011_984_499_846_799_107,
];
/// Near tail, numerator in 1/a².
const ERF_RA: [f64; 8] = [
    -0.009_864_944_034_847_148,
    -0.693_858_572_707_181_8,
    -10.558_626_225_323_291,
    -62.375_332_450_326_006,
    -162.396_669_462_573_47,
    -184.605_092_906_711_04,
    -81.287_435_506_306_6,
    -9.814_329_344_169_145,
];
/// Near tail, denominator in 1/a².
const ERF_SA: [f64; 9] = [
    1.0,
    19.651_271_667_439_257,
    137.657_754_143_519_04,
    434.565_877_475_229_23,
    645.387_271_733_267_9,
    429.008_140_027_567_83,
    108.635_005_541_779_44,
    6.570_249_770_319_282,
    -0.060_424_415_214_858_1,
];
/// Far tail, numerator in 1/a² (padded with a zero).
const ERF_RB: [f64; 8] = [
    -0.009_864_942_924_700_1,
    -0.799_283_237_680_523,
    -17.757_954_917_754_752,
    -160.636_384_855_821_92,
    -637.566_443_368_389_6,
    -1_025.095_131_611_077_2,
    -483.519_191_608_651_4,
    0.0,
];
/// Far tail, denominator in 1/a² (padded with a zero).
const ERF_SB: [f64; 9] = [
    1.0,
    30.338_060_743_482_46,
    325.792_512_996_573_9,
    1_536.729_586_084_437,
    3_199.858_219_508_595_5,
    2_553.050_406_433_164_4,
    474.528_541_206_955_37,
    -22.440_952_446_585_82,
    0.0,
];

/// Rounds a coefficient list to f32 (at compile time).
const fn to_f32<const N: usize>(c: [f64; N]) -> [f32; N] {
    let mut out = [0.0; N];
    let mut i = 0;
    while i < N {
        out[i] = c[i] as f32;
        i += 1;
    }
    out
}
