//! The algorithms of `crates/kernels/src/math/kernel.rs`, one method each,
//! in the same operation order (the comments there explain the math).

use super::Emit;
use cranelift_codegen::ir::Value;

impl Emit<'_, '_> {
    /// eˣ: Cody–Waite reduction, Taylor polynomial, two-step scaling by 2ⁿ.
    pub(super) fn exp(&mut self, x: Value) -> Value {
        let min = self.splat(self.c.exp_min);
        let under = self.lt(x, min);
        let x = self.clamp(x, self.c.exp_min, self.c.exp_max);
        let shifter = self.splat(self.c.round_shifter);
        let log2e = self.splat(self.c.log2e);
        let t = self.fma(x, log2e, shifter);
        let n = self.sub(t, shifter);
        let nn = self.neg(n);
        let (hi, lo) = (self.splat(self.c.ln2_hi), self.splat(self.c.ln2_lo));
        let r = self.fma(nn, hi, x);
        let r = self.fma(nn, lo, r);
        let c = self.c;
        let p = self.poly(r, &c.exp_poly);
        let p = self.zero_where(under, p);
        self.scale(p, n)
    }

    /// `p` with the lanes of `under` set to +0 before the scaling (the
    /// kernels' `zero_where`: the same +0 without an underflow assist).
    fn zero_where(&mut self, under: Value, p: Value) -> Value {
        let zero = self.splat(0.0);
        self.select(under, zero, p)
    }

    /// p·2ⁿ = (p·2^n1)·2^n2 with both factors normal.
    fn scale(&mut self, p: Value, n: Value) -> Value {
        let n1 = self.clamp(n, self.c.exp2_min_n, self.c.exp2_max_n);
        let n2 = self.sub(n, n1);
        let (s1, s2) = (self.exp2i(n1), self.exp2i(n2));
        let p = self.mul(p, s1);
        self.mul(p, s2)
    }

    /// e^(hi + lo), hi exact: one reduction, lo added to the reduced
    /// argument; 0 below `exp_min`.
    fn exp_sum(&mut self, hi: Value, lo: Value) -> Value {
        let t = self.add(hi, lo);
        let x = self.clamp(t, self.c.exp_min, self.c.exp_max);
        let shifter = self.splat(self.c.round_shifter);
        let log2e = self.splat(self.c.log2e);
        let u = self.fma(x, log2e, shifter);
        let n = self.sub(u, shifter);
        let nn = self.neg(n);
        let (ln2_hi, ln2_lo) = (self.splat(self.c.ln2_hi), self.splat(self.c.ln2_lo));
        let r = self.fma(nn, ln2_hi, hi);
        let r = self.fma(nn, ln2_lo, r);
        let r = self.add(r, lo);
        let c = self.c;
        let p = self.poly(r, &c.exp_poly);
        let min = self.splat(self.c.exp_min);
        let under = self.lt(t, min);
        let p = self.zero_where(under, p);
        self.scale(p, n)
    }

    /// ln x: fdlibm's reduction to m ∈ (√2/2, √2] and its rational in s.
    pub(super) fn log(&mut self, x: Value) -> Value {
        let (zero, one, half) = (self.splat(0.0), self.splat(1.0), self.splat(0.5));
        let min_normal = self.splat(self.c.log_min_normal);
        let sub = self.lt(x, min_normal);
        let scale = self.splat(self.c.log_sub_scale);
        let scaled = self.mul(x, scale);
        let xs = self.select(sub, scaled, x);
        let (m, k) = self.split_exp(xs);
        let sk = self.splat(self.c.log_sub_k);
        let k_sub = self.sub(k, sk);
        let k = self.select(sub, k_sub, k);
        let sqrt2 = self.splat(self.c.log_sqrt2);
        let big = self.lt(sqrt2, m);
        let (m_half, k_one) = (self.mul(m, half), self.add(k, one));
        let m = self.select(big, m_half, m);
        let k = self.select(big, k_one, k);
        let f = self.sub(m, one);
        let two = self.add(one, one);
        let den = self.add(two, f);
        let s = self.div(f, den);
        let z = self.mul(s, s);
        let c = self.c;
        let p = self.poly(z, &c.log_poly);
        let r = self.mul(z, p);
        let hf = self.mul(half, f);
        let hfsq = self.mul(hf, f);
        let ln2_lo = self.splat(self.c.ln2_lo);
        let klo = self.mul(k, ln2_lo);
        let hr = self.add(hfsq, r);
        let lo = self.fma(s, hr, klo);
        let ln2_hi = self.splat(self.c.ln2_hi);
        let khi = self.mul(k, ln2_hi);
        let d = self.sub(hfsq, lo);
        let d = self.sub(d, f);
        let y = self.sub(khi, d);
        // +∞ and NaN pass through; ±0 → −∞; negative → NaN.
        let (nan, inf) = (self.splat(f64::NAN), self.splat(f64::INFINITY));
        let ninf = self.neg(inf);
        let negative = self.lt(x, zero);
        let nonpositive = self.select(negative, nan, ninf);
        let positive = self.lt(zero, x);
        let finite = self.select(positive, y, nonpositive);
        let below_inf = self.lt(x, inf);
        self.select(below_inf, finite, x)
    }

    /// (σ(v), σ(−v)) from one exponential, both without cancellation.
    pub(super) fn sigmoid_pair(&mut self, v: Value) -> (Value, Value) {
        let one = self.splat(1.0);
        let av = self.abs(v);
        let nav = self.neg(av);
        let e = self.exp(nav);
        let den = self.add(one, e);
        let s = self.div(one, den);
        let t = self.mul(e, s);
        let zero = self.splat(0.0);
        let neg = self.lt(v, zero);
        (self.select(neg, t, s), self.select(neg, s, t))
    }

    /// tanh x: odd polynomial near 0, (1 − e)/(1 + e) with e = e^(−2|x|) beyond.
    pub(super) fn tanh(&mut self, x: Value) -> Value {
        let one = self.splat(1.0);
        let ax = self.abs(x);
        let y = self.mul(x, x);
        let xy = self.mul(x, y);
        let c = self.c;
        let p = self.poly(y, &c.tanh_poly);
        let small = self.fma(xy, p, x);
        let two_ax = self.add(ax, ax);
        let neg = self.neg(two_ax);
        let e = self.exp(neg);
        let (num, den) = (self.sub(one, e), self.add(one, e));
        let large = self.div(num, den);
        let limit = self.splat(self.c.tanh_small);
        let is_small = self.lt(ax, limit);
        let r = self.select(is_small, small, large);
        self.copysign(r, x)
    }

    /// max(−arg_clamp, x): −∞ becomes a large finite value.
    fn clamp_below(&mut self, x: Value) -> Value {
        let lo = self.splat(-self.c.arg_clamp);
        self.max(lo, x)
    }

    /// x·σ(x).
    pub(super) fn silu(&mut self, x: Value) -> Value {
        let cx = self.clamp_below(x);
        let s = self.sigmoid_pair(x).0;
        self.mul(cx, s)
    }

    /// 2·√(2/π)·(x + 0.044715·x³).
    fn gelu_tanh_arg(&mut self, x: Value) -> Value {
        let x2 = self.mul(x, x);
        let (k1, k0) = (self.splat(self.c.gelu_k1), self.splat(self.c.gelu_k0));
        let t = self.fma(x2, k1, k0);
        self.mul(x, t)
    }

    /// x·σ(v(x)).
    pub(super) fn gelu_tanh(&mut self, x: Value) -> Value {
        let cx = self.clamp_below(x);
        let v = self.gelu_tanh_arg(x);
        let s = self.sigmoid_pair(v).0;
        self.mul(cx, s)
    }

    /// s·(1 + x·(1 − s)·v′(x)), s = σ(v).
    pub(super) fn gelu_tanh_grad(&mut self, x: Value) -> Value {
        let one = self.splat(1.0);
        let x = self.clamp(x, -self.c.arg_clamp, self.c.arg_clamp);
        let v = self.gelu_tanh_arg(x);
        let (s, sm) = self.sigmoid_pair(v);
        let x2 = self.mul(x, x);
        let (k13, k0) = (self.splat(self.c.gelu_k1_3), self.splat(self.c.gelu_k0));
        let dv = self.fma(x2, k13, k0);
        let xsm = self.mul(x, sm);
        let t = self.fma(xsm, dv, one);
        self.mul(s, t)
    }

    /// x·Φ(x).
    pub(super) fn gelu_erf(&mut self, x: Value) -> Value {
        let cx = self.clamp_below(x);
        let cdf = self.normal_cdf(x);
        self.mul(cx, cdf)
    }

    /// Φ(x) + x·φ(x).
    pub(super) fn gelu_erf_grad(&mut self, x: Value) -> Value {
        let x = self.clamp(x, -self.c.arg_clamp, self.c.arg_clamp);
        let (half, zero) = (self.splat(0.5), self.splat(0.0));
        let k = self.splat(self.c.frac_1_sqrt_2pi);
        let e = self.exp_neg_square(x, half, zero);
        let pdf = self.mul(k, e);
        let cdf = self.normal_cdf(x);
        self.fma(x, pdf, cdf)
    }

    /// Φ(x): erfc(|x|/√2)/2 for x < 0, (1 + erf(|x|/√2))/2 otherwise.
    fn normal_cdf(&mut self, x: Value) -> Value {
        let one = self.splat(1.0);
        let ax = self.abs(x);
        let k = self.splat(self.c.frac_1_sqrt_2);
        let a = self.mul(ax, k);
        let (erf, erfc) = self.erf_erfc(a);
        let zero = self.splat(0.0);
        let neg = self.lt(x, zero);
        let up = self.add(one, erf);
        let sel = self.select(neg, erfc, up);
        let half = self.splat(0.5);
        self.mul(half, sel)
    }

    /// erf x = sign(x)·erf(|x|).
    pub(super) fn erf(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let e = self.erf_erfc(ax).0;
        self.copysign(e, x)
    }

    /// e^(−s·z² + (s·(z − a)(z + a) + c)), z = a with low bits cleared.
    fn exp_neg_square(&mut self, a: Value, s: Value, c: Value) -> Value {
        let z = self.clear_low_bits(a, self.c.erf.split_bits);
        let zz = self.mul(z, z);
        let nzz = self.neg(zz);
        let hi = self.mul(nzz, s);
        let (d, u) = (self.sub(z, a), self.add(z, a));
        let du = self.mul(d, u);
        let lo = self.fma(du, s, c);
        self.exp_sum(hi, lo)
    }

    /// (erf(a), erfc(a)) for a ≥ 0 from the fdlibm pieces, each lane
    /// selecting its piece; NaN passes through. The kernels pick each lane's
    /// coefficients by table lookup and evaluate one rational; here every
    /// piece's numerator and denominator are evaluated (no lane permute in
    /// CLIF) and selected before the one division, which gives the same
    /// values bit for bit.
    fn erf_erfc(&mut self, a: Value) -> (Value, Value) {
        let c = self.c;
        let t = &c.erf;
        let (one, half) = (self.splat(1.0), self.splat(0.5));
        let (small_max, mid_max) = (self.splat(t.small_max), self.splat(t.mid_max));
        let is_small = self.lt(a, small_max);
        let is_mid = self.lt(a, mid_max);
        let tail_max = self.splat(t.tail_max);
        let at = self.min(tail_max, a);
        let inv = self.div(one, at);
        let split = self.splat(t.tail_split);
        let near = self.lt(at, split);
        // The three rationals, in a², a − 1 and 1/a², selected per lane.
        let z = self.mul(a, a);
        let s = self.sub(a, one);
        let w = self.mul(inv, inv);
        let (pp, qq) = (self.poly(z, &t.pp), self.poly(z, &t.qq));
        let (pa, qa) = (self.poly(s, &t.pa), self.poly(s, &t.qa));
        let r = self.poly_select(near, w, &t.ra, &t.rb);
        let q = self.poly_select(near, w, &t.sa, &t.sb);
        let num = self.select(is_mid, pa, r);
        let num = self.select(is_small, pp, num);
        let den = self.select(is_mid, qa, q);
        let den = self.select(is_small, qq, den);
        let y = self.div(num, den);
        // a < 0.84375: erf = a + a·y; erfc = 1/2 − ((a − 1/2) + a·y) above 1/4.
        let erf_small = self.fma(a, y, a);
        let quarter = self.mul(half, half);
        let below_quarter = self.lt(a, quarter);
        let one_minus = self.sub(one, erf_small);
        let a_half = self.sub(a, half);
        let t2 = self.fma(a, y, a_half);
        let half_minus = self.sub(half, t2);
        let erfc_small = self.select(below_quarter, one_minus, half_minus);
        // 0.84375 ≤ a < 1.25: erf(1 + s) = erx + y.
        let erx = self.splat(t.erx);
        let erf_mid = self.add(erx, y);
        let one_erx = self.sub(one, erx);
        let erfc_mid = self.sub(one_erx, y);
        // a ≥ 1.25: erfc = e^(−a² − 0.5625 + y)/a.
        let offset = self.splat(t.tail_offset);
        let c = self.add(y, offset);
        let e = self.exp_neg_square(at, one, c);
        let erfc_tail = self.mul(e, inv);
        let erf_tail = self.sub(one, erfc_tail);
        let erf_hi = self.select(is_mid, erf_mid, erf_tail);
        let erf = self.select(is_small, erf_small, erf_hi);
        let erfc_hi = self.select(is_mid, erfc_mid, erfc_tail);
        let erfc = self.select(is_small, erfc_small, erfc_hi);
        (erf, erfc)
    }
}
