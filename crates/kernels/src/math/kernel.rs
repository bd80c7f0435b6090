//! The algorithms, written once over [`Lanes`].
//!
//! Each function here is the executable form of the recipe in
//! [`coeffs`](super::coeffs); instantiated with `f32`/`f64` it is the
//! one-point reference [`eval`](super::eval), with AVX2 or AVX-512
//! registers it is the vector kernel. Everything is `#[inline(always)]` so
//! that it is compiled inside the `#[target_feature]` loop that calls it.

use super::lanes::{poly, rational_lookup, Elem, Lanes};
use super::Func;

/// The loop of [`map`] for one kernel `$k`. A macro, not a function taking
/// `impl Fn`, so that `$k` is called directly: a call through the `Fn` shim
/// is not inlined, and the intrinsics inside it then cannot be either (the
/// shim lacks the `#[target_feature]` of the caller).
macro_rules! map_with {
    ($x:expr, $out:expr, $k:expr) => {{
        let (x, out) = ($x, $out);
        debug_assert_eq!(x.len(), out.len());
        let mut xs = x.chunks_exact(V::WIDTH);
        let mut outs = out.chunks_exact_mut(V::WIDTH);
        for (xc, oc) in (&mut xs).zip(&mut outs) {
            $k(V::load(xc)).store(oc);
        }
        let (x_tail, out_tail) = (xs.remainder(), outs.into_remainder());
        if !x_tail.is_empty() {
            let mut buf = [V::E::ZERO; 16];
            buf[..x_tail.len()].copy_from_slice(x_tail);
            $k(V::load(&buf)).store(&mut buf);
            out_tail.copy_from_slice(&buf[..x_tail.len()]);
        }
    }};
}

/// [`map_with`] for one slice updated in place: each register is loaded
/// from and stored back to the same elements (no copy of the input).
macro_rules! map_inplace_with {
    ($x:expr, $k:expr) => {{
        let mut xs = $x.chunks_exact_mut(V::WIDTH);
        for c in &mut xs {
            $k(V::load(c)).store(c);
        }
        let tail = xs.into_remainder();
        if !tail.is_empty() {
            let mut buf = [V::E::ZERO; 16];
            buf[..tail.len()].copy_from_slice(tail);
            $k(V::load(&buf)).store(&mut buf);
            let n = tail.len();
            tail.copy_from_slice(&buf[..n]);
        }
    }};
}

/// `x[i] = f(x[i])` in registers of `V`, the in-place form of [`map`].
#[inline(always)]
pub(crate) fn map_inplace<V: Lanes>(f: Func, x: &mut [V::E]) {
    match f {
        Func::Exp => map_inplace_with!(x, exp::<V>),
        Func::Log => map_inplace_with!(x, log::<V>),
        Func::Tanh => map_inplace_with!(x, tanh::<V>),
        Func::Erf => map_inplace_with!(x, erf::<V>),
        Func::Sigmoid => map_inplace_with!(x, sigmoid::<V>),
        Func::Silu => map_inplace_with!(x, silu::<V>),
        Func::GeluErf => map_inplace_with!(x, gelu_erf::<V>),
        Func::GeluTanh => map_inplace_with!(x, gelu_tanh::<V>),
        Func::GeluErfGrad => map_inplace_with!(x, gelu_erf_grad::<V>),
        Func::GeluTanhGrad => map_inplace_with!(x, gelu_tanh_grad::<V>),
    }
}

/// `out[i] = f(x[i])`, `x` and `out` of equal length, in registers of `V`.
///
/// The match is outside the loop so that each arm is one straight loop; a
/// remainder shorter than a register goes through a zero-padded buffer and
/// the same vector code.
#[inline(always)]
pub(crate) fn map<V: Lanes>(f: Func, x: &[V::E], out: &mut [V::E]) {
    match f {
        Func::Exp => map_with!(x, out, exp::<V>),
        Func::Log => map_with!(x, out, log::<V>),
        Func::Tanh => map_with!(x, out, tanh::<V>),
        Func::Erf => map_with!(x, out, erf::<V>),
        Func::Sigmoid => map_with!(x, out, sigmoid::<V>),
        Func::Silu => map_with!(x, out, silu::<V>),
        Func::GeluErf => map_with!(x, out, gelu_erf::<V>),
        Func::GeluTanh => map_with!(x, out, gelu_tanh::<V>),
        Func::GeluErfGrad => map_with!(x, out, gelu_erf_grad::<V>),
        Func::GeluTanhGrad => map_with!(x, out, gelu_tanh_grad::<V>),
    }
}

/// eˣ: Cody–Waite reduction, Taylor polynomial, two-step scaling by 2ⁿ.
#[inline(always)]
pub(crate) fn exp<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    let under = x.lt(V::splat(c.exp_min));
    let x = x.clamp(c.exp_min, c.exp_max);
    let shifter = V::splat(c.round_shifter);
    // n = round(x / ln 2), exact because |x·log2e| < 2^22.
    let n = x.mul_add(V::splat(c.log2e), shifter) - shifter;
    let r = (-n).mul_add(V::splat(c.ln2_hi), x);
    let r = (-n).mul_add(V::splat(c.ln2_lo), r);
    scale(zero_where(under, poly(r, c.exp_poly)), n)
}

/// `p` with the lanes of `under` set to +0, before [`scale`]: there eˣ
/// rounds to +0 anyway (e^exp_min is below half the smallest subnormal),
/// but `p·2^n1·2^n2` reaches that +0 through a subnormal product and an
/// underflow, each a microcode assist on x86 (~150 cycles per instruction,
/// for the whole register) unless flush-to-zero is on. `0·2^n1·2^n2` is
/// the same +0 at full speed. Attention's masked keys (−3.4e38 fill) made
/// this the softmax's main cost (docs/jit.md "Masked softmax").
#[inline(always)]
fn zero_where<V: Lanes>(under: V::Mask, p: V) -> V {
    V::select(under, V::splat(V::E::ZERO), p)
}

/// p·2ⁿ = (p·2^n1)·2^n2 with both factors normal, so that results in the
/// subnormal range and in the binade below overflow round only once.
#[inline(always)]
fn scale<V: Lanes>(p: V, n: V) -> V {
    let c = V::E::C;
    let n1 = n.clamp(c.exp2_min_n, c.exp2_max_n);
    let n2 = n - n1;
    p.mul_exp2i(n1).mul_exp2i(n2)
}

/// e^(hi + lo) for hi ≤ 0 exact and |lo| ≲ 1 + 2⁻¹⁰·|hi|, with one
/// reduction: n = round((hi + lo)·log2e) as in [`exp`], then
/// r = (hi − n·ln2_hi − n·ln2_lo) + lo, so that the rounding of hi + lo
/// only affects the choice of n, not r. Below `exp_min` the result is 0
/// (where r is meaningless); NaN passes through.
#[inline(always)]
fn exp_sum<V: Lanes>(hi: V, lo: V) -> V {
    let c = V::E::C;
    let t = hi + lo;
    let shifter = V::splat(c.round_shifter);
    let n = t
        .clamp(c.exp_min, c.exp_max)
        .mul_add(V::splat(c.log2e), shifter)
        - shifter;
    let r = (-n).mul_add(V::splat(c.ln2_hi), hi);
    let r = (-n).mul_add(V::splat(c.ln2_lo), r) + lo;
    // Zeroed before the scaling, not after: see `zero_where`.
    scale(
        zero_where(t.lt(V::splat(c.exp_min)), poly(r, c.exp_poly)),
        n,
    )
}

/// ln x: fdlibm's reduction to m ∈ (√2/2, √2] and its rational in s = f/(2 + f).
#[inline(always)]
pub(crate) fn log<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    let (zero, one, half) = (
        V::splat(V::E::ZERO),
        V::splat(V::E::ONE),
        V::splat(V::E::HALF),
    );
    // Subnormals: x·2^s is normal, and log x = log(x·2^s) − s·ln 2.
    let sub = x.lt(V::splat(c.log_min_normal));
    let (m, k) = V::select(sub, x * V::splat(c.log_sub_scale), x).split_exp();
    let k = V::select(sub, k - V::splat(c.log_sub_k), k);
    let big = V::splat(c.log_sqrt2).lt(m);
    let (m, k) = (V::select(big, m * half, m), V::select(big, k + one, k));
    let f = m - one; // exact (Sterbenz)
    let s = f / ((one + one) + f);
    let z = s * s;
    let r = z * poly(z, c.log_poly);
    let hfsq = half * f * f;
    let lo = s.mul_add(hfsq + r, k * V::splat(c.ln2_lo));
    let y = k * V::splat(c.ln2_hi) - ((hfsq - lo) - f);
    // +∞ and NaN pass through; ±0 → −∞; negative → NaN.
    let nonpositive = V::select(x.lt(zero), V::splat(V::E::NAN), -V::splat(V::E::INFINITY));
    let finite = V::select(zero.lt(x), y, nonpositive);
    V::select(x.lt(V::splat(V::E::INFINITY)), finite, x)
}

/// (σ(v), σ(−v)) from one exponential, both without cancellation.
#[inline(always)]
fn sigmoid_pair<V: Lanes>(v: V) -> (V, V) {
    let one = V::splat(V::E::ONE);
    let e = exp(-v.abs());
    let s = one / (one + e); // σ(|v|)
    let t = e * s; // σ(−|v|) = e/(1 + e)
    let neg = v.lt(V::splat(V::E::ZERO));
    (V::select(neg, t, s), V::select(neg, s, t))
}

/// tanh x: odd polynomial near 0, (1 − e)/(1 + e) with e = e^(−2|x|) beyond.
#[inline(always)]
pub(crate) fn tanh<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    let one = V::splat(V::E::ONE);
    let ax = x.abs();
    let y = x * x;
    let small = (x * y).mul_add(poly(y, c.tanh_poly), x);
    let e = exp(-(ax + ax));
    let large = (one - e) / (one + e);
    // tanh is odd; copying the sign of x also gives tanh(−0) = −0.
    V::select(ax.lt(V::splat(c.tanh_small)), small, large).copysign(x)
}

/// σ(x) = 1/(1 + e⁻ˣ).
#[inline(always)]
pub(crate) fn sigmoid<V: Lanes>(x: V) -> V {
    sigmoid_pair(x).0
}

/// x·σ(x).
#[inline(always)]
pub(crate) fn silu<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    V::splat(-c.arg_clamp).max(x) * sigmoid(x)
}

/// 2·√(2/π)·(x + 0.044715·x³), the argument of σ in the tanh-form GELU.
#[inline(always)]
fn gelu_tanh_arg<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    x * (x * x).mul_add(V::splat(c.gelu_k1), V::splat(c.gelu_k0))
}

/// x/2·(1 + tanh(√(2/π)(x + 0.044715x³))) = x·σ(2u).
#[inline(always)]
pub(crate) fn gelu_tanh<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    V::splat(-c.arg_clamp).max(x) * sigmoid(gelu_tanh_arg(x))
}

/// d/dx x·σ(v(x)) = s·(1 + x·(1 − s)·v′(x)), s = σ(v).
#[inline(always)]
pub(crate) fn gelu_tanh_grad<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    let one = V::splat(V::E::ONE);
    let x = x.clamp(-c.arg_clamp, c.arg_clamp);
    let (s, sm) = sigmoid_pair(gelu_tanh_arg(x));
    let dv = (x * x).mul_add(V::splat(c.gelu_k1_3), V::splat(c.gelu_k0));
    s * (x * sm).mul_add(dv, one)
}

/// x·Φ(x), with Φ(x) = (1 + erf(x/√2))/2.
#[inline(always)]
pub(crate) fn gelu_erf<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    V::splat(-c.arg_clamp).max(x) * normal_cdf(x)
}

/// Φ(x) + x·φ(x).
#[inline(always)]
pub(crate) fn gelu_erf_grad<V: Lanes>(x: V) -> V {
    let c = V::E::C;
    let x = x.clamp(-c.arg_clamp, c.arg_clamp);
    let half = V::splat(V::E::HALF);
    let pdf = V::splat(c.frac_1_sqrt_2pi) * exp_neg_square(x, half, V::splat(V::E::ZERO));
    x.mul_add(pdf, normal_cdf(x))
}

/// Φ(x): erfc(|x|/√2)/2 for x < 0, (1 + erf(|x|/√2))/2 otherwise.
#[inline(always)]
fn normal_cdf<V: Lanes>(x: V) -> V {
    let one = V::splat(V::E::ONE);
    let (erf, erfc) = erf_erfc(x.abs() * V::splat(V::E::C.frac_1_sqrt_2));
    V::splat(V::E::HALF) * V::select(x.lt(V::splat(V::E::ZERO)), erfc, one + erf)
}

/// erf x = sign(x)·erf(|x|).
#[inline(always)]
pub(crate) fn erf<V: Lanes>(x: V) -> V {
    erf_erfc(x.abs()).0.copysign(x)
}

/// e^(s·(−a²) + c) for s ∈ {1, 1/2} and c ≲ 0, as e^(−s·z² + (s·(z − a)(z + a) + c))
/// with z = a rounded down to few bits, so that −s·z² is exact and the
/// rounding of a² does not become a relative error of e^(−a²); one
/// exponential of the two parts ([`exp_sum`]).
#[inline(always)]
fn exp_neg_square<V: Lanes>(a: V, s: V, c: V) -> V {
    let z = a.clear_low_bits(V::E::C.erf.split_bits);
    exp_sum(-(z * z) * s, ((z - a) * (z + a)).mul_add(s, c))
}

/// (erf(a), erfc(a)) for a ≥ 0 from the fdlibm pieces, each lane
/// selecting its piece; NaN passes through.
///
/// Every piece is a rational in its own argument (a², a − 1 or 1/a²), so
/// each lane picks its argument and, by table lookup, its coefficients, and
/// one numerator, one denominator and one division serve all pieces (bit
/// for bit what evaluating each piece and selecting gives; see
/// [`rational_lookup`]; the portable path evaluates every piece and selects,
/// which LLVM vectorizes better than per-lane coefficients). Divisions are the costliest step here (`vdivps` is
/// several times the throughput cost of an FMA), which leaves two: this one
/// and 1/a for the tail.
#[inline(always)]
fn erf_erfc<V: Lanes>(a: V) -> (V, V) {
    let t = &V::E::C.erf;
    let one = V::splat(V::E::ONE);
    let half = V::splat(V::E::HALF);
    let is_small = a.lt(V::splat(t.small_max));
    let is_mid = a.lt(V::splat(t.mid_max));
    let at = V::splat(t.tail_max).min(a);
    let inv = one / at;
    let near = at.lt(V::splat(t.tail_split));
    let arg = V::select(is_small, a * a, V::select(is_mid, a - one, inv * inv));
    let pieces = [is_small, is_mid, near];
    let y = rational_lookup(
        pieces,
        arg,
        [t.pp, t.pa, t.ra, t.rb],
        [t.qq, t.qa, t.sa, t.sb],
    );
    // a < 0.84375: erf = a + a·y; erfc = 1/2 − ((a − 1/2) + a·y) above 1/4.
    let erf_small = a.mul_add(y, a);
    let erfc_small = V::select(
        a.lt(half * half),
        one - erf_small,
        half - a.mul_add(y, a - half),
    );
    // 0.84375 ≤ a < 1.25: erf(1 + s) = erx + y, y = pa(s)/qa(s).
    let erx = V::splat(t.erx);
    let (erf_mid, erfc_mid) = (erx + y, (one - erx) - y);
    // a ≥ 1.25: erfc = e^(−a² − 0.5625 + y)/a, y = R/S in w = 1/a².
    let erfc_tail = exp_neg_square(at, one, y + V::splat(t.tail_offset)) * inv;
    let erf = V::select(
        is_small,
        erf_small,
        V::select(is_mid, erf_mid, one - erfc_tail),
    );
    let erfc = V::select(is_small, erfc_small, V::select(is_mid, erfc_mid, erfc_tail));
    (erf, erfc)
}
