//! Transcendental functions emitted as CLIF: exp, log, tanh, erf, sigmoid,
//! SiLU, both GELUs and their derivatives.
//!
//! Each function here is the algorithm of `crates/kernels/src/math/kernel.rs`
//! transcribed operation by operation (same order, same FMAs, same
//! comparisons and selects) over f32x4 / f64x2, with every constant read
//! from `cranelora_kernels::math::coeffs` — the one table behind the Rust
//! kernels and this emitter. On a host with FMA, Cranelift emits `vfmadd`
//! for `fma` and `minps`/`maxps` for the compare-and-select pairs below, so
//! the generated code computes the kernels' AVX2 / AVX-512 results bit for
//! bit (tested in `tests/math_ulp.rs` against `math::apply`, and against
//! f64 libm with the kernels' documented bounds). Without FMA, Cranelift
//! calls libm's `fmaf`/`fma` (still one rounding, so still bit-identical,
//! only slower).
//!
//! A scalar element (a loop's tail, or a node too small for a vector) is
//! splat into a vector, run through the same code and lane 0 taken back, so
//! the tail computes exactly what the vector lanes compute.
//!
//! The x86 min/max rule of the kernels (`a < b ? a : b`, a NaN second
//! operand passes through) is `bitselect(fcmp lt a b, a, b)`, which
//! Cranelift lowers to `minps`; IEEE `fmin`/`fmax` would differ on NaN.

use super::Lowerer;
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelora_kernels::math::coeffs::{self, Coeffs};
use cranelora_kernels::math::Func;
use std::sync::OnceLock;

/// The coefficient table of one dtype with every constant widened to f64
/// (exact for the f32 table; narrowed back when emitted).
struct Table {
    exp_min: f64,
    exp_max: f64,
    log2e: f64,
    round_shifter: f64,
    ln2_hi: f64,
    ln2_lo: f64,
    exp_poly: Vec<f64>,
    exp2_min_n: f64,
    exp2_max_n: f64,
    exp2_magic: f64,
    mantissa_bits: u32,
    tanh_small: f64,
    tanh_poly: Vec<f64>,
    gelu_k0: f64,
    gelu_k1: f64,
    gelu_k1_3: f64,
    frac_1_sqrt_2: f64,
    frac_1_sqrt_2pi: f64,
    arg_clamp: f64,
    log_min_normal: f64,
    log_sub_scale: f64,
    log_sub_k: f64,
    log_sqrt2: f64,
    log_poly: Vec<f64>,
    erf: ErfTable,
}

/// `coeffs::Erf` widened to f64.
struct ErfTable {
    small_max: f64,
    mid_max: f64,
    tail_split: f64,
    tail_max: f64,
    split_bits: u32,
    tail_offset: f64,
    erx: f64,
    pp: Vec<f64>,
    qq: Vec<f64>,
    pa: Vec<f64>,
    qa: Vec<f64>,
    ra: Vec<f64>,
    sa: Vec<f64>,
    rb: Vec<f64>,
    sb: Vec<f64>,
}

/// The widened table of f32 or f64, built once.
fn table(vt: Type) -> &'static Table {
    static F32: OnceLock<Table> = OnceLock::new();
    static F64: OnceLock<Table> = OnceLock::new();
    match vt {
        types::F32X4 => F32.get_or_init(|| widen(&coeffs::F32)),
        _ => F64.get_or_init(|| widen(&coeffs::F64)),
    }
}

/// Widens a table of `E` (f32 or f64) to f64.
fn widen<E: Copy + Into<f64>>(c: &Coeffs<E>) -> Table {
    let v = |s: &[E]| s.iter().map(|&x| x.into()).collect::<Vec<f64>>();
    let e = &c.erf;
    Table {
        exp_min: c.exp_min.into(),
        exp_max: c.exp_max.into(),
        log2e: c.log2e.into(),
        round_shifter: c.round_shifter.into(),
        ln2_hi: c.ln2_hi.into(),
        ln2_lo: c.ln2_lo.into(),
        exp_poly: v(c.exp_poly),
        exp2_min_n: c.exp2_min_n.into(),
        exp2_max_n: c.exp2_max_n.into(),
        exp2_magic: c.exp2_magic.into(),
        mantissa_bits: c.mantissa_bits,
        tanh_small: c.tanh_small.into(),
        tanh_poly: v(c.tanh_poly),
        gelu_k0: c.gelu_k0.into(),
        gelu_k1: c.gelu_k1.into(),
        gelu_k1_3: c.gelu_k1_3.into(),
        frac_1_sqrt_2: c.frac_1_sqrt_2.into(),
        frac_1_sqrt_2pi: c.frac_1_sqrt_2pi.into(),
        arg_clamp: c.arg_clamp.into(),
        log_min_normal: c.log_min_normal.into(),
        log_sub_scale: c.log_sub_scale.into(),
        log_sub_k: c.log_sub_k.into(),
        log_sqrt2: c.log_sqrt2.into(),
        log_poly: v(c.log_poly),
        erf: ErfTable {
            small_max: e.small_max.into(),
            mid_max: e.mid_max.into(),
            tail_split: e.tail_split.into(),
            tail_max: e.tail_max.into(),
            split_bits: e.split_bits,
            tail_offset: e.tail_offset.into(),
            erx: e.erx.into(),
            pp: v(e.pp),
            qq: v(e.qq),
            pa: v(e.pa),
            qa: v(e.qa),
            ra: v(e.ra),
            sa: v(e.sa),
            rb: v(e.rb),
            sb: v(e.sb),
        },
    }
}

/// Emits `f` of a vector `x` (f32x4 or f64x2).
pub(crate) fn emit_vector(l: &mut Lowerer<'_>, f: Func, x: Value) -> Value {
    let vt = l.b.func.dfg.value_type(x);
    Emit::new(l, vt).func(f, x)
}

/// Emits `f` of a scalar `x` (f32 or f64) through lane 0 of the vector code.
pub(crate) fn emit_scalar(l: &mut Lowerer<'_>, f: Func, x: Value) -> Value {
    let vt = match l.b.func.dfg.value_type(x) {
        types::F32 => types::F32X4,
        _ => types::F64X2,
    };
    let v = l.b.ins().splat(vt, x);
    let r = emit_vector(l, f, v);
    l.b.ins().extractlane(r, 0)
}

/// The emitter: a lowerer, the vector type and its table.
struct Emit<'l, 'a> {
    l: &'l mut Lowerer<'a>,
    vt: Type,
    /// The integer vector of the same shape (i32x4 / i64x2).
    it: Type,
    c: &'static Table,
}

impl<'l, 'a> Emit<'l, 'a> {
    fn new(l: &'l mut Lowerer<'a>, vt: Type) -> Self {
        let it = match vt {
            types::F32X4 => types::I32X4,
            _ => types::I64X2,
        };
        Self {
            l,
            vt,
            it,
            c: table(vt),
        }
    }

    fn func(&mut self, f: Func, x: Value) -> Value {
        match f {
            Func::Exp => self.exp(x),
            Func::Log => self.log(x),
            Func::Tanh => self.tanh(x),
            Func::Erf => self.erf(x),
            Func::Sigmoid => self.sigmoid_pair(x).0,
            Func::Silu => self.silu(x),
            Func::GeluErf => self.gelu_erf(x),
            Func::GeluTanh => self.gelu_tanh(x),
            Func::GeluErfGrad => self.gelu_erf_grad(x),
            Func::GeluTanhGrad => self.gelu_tanh_grad(x),
        }
    }

    // ---- the vocabulary of crates/kernels/src/math/lanes.rs ----

    fn splat(&mut self, x: f64) -> Value {
        let s = match self.vt {
            types::F32X4 => self.l.b.ins().f32const(x as f32),
            _ => self.l.b.ins().f64const(x),
        };
        self.l.b.ins().splat(self.vt, s)
    }

    /// An integer vector with every lane `bits`.
    fn isplat(&mut self, bits: u64) -> Value {
        let lane = self.it.lane_type();
        let bits = match lane {
            types::I32 => bits & u64::from(u32::MAX),
            _ => bits,
        };
        let s = self.l.b.ins().iconst(lane, bits as i64);
        self.l.b.ins().splat(self.it, s)
    }

    fn as_int(&mut self, x: Value) -> Value {
        self.l.b.ins().bitcast(self.it, MemFlagsData::new(), x)
    }

    fn as_float(&mut self, x: Value) -> Value {
        self.l.b.ins().bitcast(self.vt, MemFlagsData::new(), x)
    }

    fn add(&mut self, a: Value, b: Value) -> Value {
        self.l.b.ins().fadd(a, b)
    }

    fn sub(&mut self, a: Value, b: Value) -> Value {
        self.l.b.ins().fsub(a, b)
    }

    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.l.b.ins().fmul(a, b)
    }

    fn div(&mut self, a: Value, b: Value) -> Value {
        self.l.b.ins().fdiv(a, b)
    }

    fn neg(&mut self, a: Value) -> Value {
        self.l.b.ins().fneg(a)
    }

    fn abs(&mut self, a: Value) -> Value {
        self.l.b.ins().fabs(a)
    }

    /// `a·b + c` rounded once.
    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.l.b.ins().fma(a, b, c)
    }

    /// `a < b` as an all-ones / all-zeros lane mask of the float type.
    fn lt(&mut self, a: Value, b: Value) -> Value {
        let m = self.l.b.ins().fcmp(FloatCC::LessThan, a, b);
        self.as_float(m)
    }

    /// `m ? a : b` per lane.
    fn select(&mut self, m: Value, a: Value, b: Value) -> Value {
        self.l.b.ins().bitselect(m, a, b)
    }

    /// `a < b ? a : b` (`minps`).
    fn min(&mut self, a: Value, b: Value) -> Value {
        let m = self.lt(a, b);
        self.select(m, a, b)
    }

    /// `a > b ? a : b` (`maxps`).
    fn max(&mut self, a: Value, b: Value) -> Value {
        let m = self.lt(b, a);
        self.select(m, a, b)
    }

    /// min(hi, max(lo, x)): NaN passes through.
    fn clamp(&mut self, x: Value, lo: f64, hi: f64) -> Value {
        let (lo, hi) = (self.splat(lo), self.splat(hi));
        let m = self.max(lo, x);
        self.min(hi, m)
    }

    /// |a| with the sign bit of `s`.
    fn copysign(&mut self, a: Value, s: Value) -> Value {
        let sign = 1u64 << (self.it.lane_bits() - 1);
        let (ia, is) = (self.as_int(a), self.as_int(s));
        let keep = self.isplat(!sign);
        let sign = self.isplat(sign);
        let mag = self.l.b.ins().band(ia, keep);
        let sgn = self.l.b.ins().band(is, sign);
        let r = self.l.b.ins().bor(mag, sgn);
        self.as_float(r)
    }

    /// `x` with its low `n` mantissa bits cleared.
    fn clear_low_bits(&mut self, x: Value, n: u32) -> Value {
        let keep = self.isplat(u64::MAX << n);
        let ix = self.as_int(x);
        let r = self.l.b.ins().band(ix, keep);
        self.as_float(r)
    }

    /// 2^n for integral lanes in the normal range: `bits(n + magic) << p`.
    fn exp2i(&mut self, n: Value) -> Value {
        let magic = self.splat(self.c.exp2_magic);
        let biased = self.add(n, magic);
        let ib = self.as_int(biased);
        let r = self
            .l
            .b
            .ins()
            .ishl_imm_u(ib, i64::from(self.c.mantissa_bits));
        self.as_float(r)
    }

    /// (m, e) with x = m·2^e, m ∈ [1, 2), for positive normal lanes.
    fn split_exp(&mut self, x: Value) -> (Value, Value) {
        let p = self.c.mantissa_bits;
        let field = (1u64 << p) - 1;
        let (one_bits, magic_bits) = match self.vt {
            types::F32X4 => (
                u64::from(1f32.to_bits()),
                u64::from((self.c.exp2_magic as f32).to_bits()),
            ),
            _ => (1f64.to_bits(), self.c.exp2_magic.to_bits()),
        };
        let ix = self.as_int(x);
        let fmask = self.isplat(field);
        let one = self.isplat(one_bits);
        let mant = self.l.b.ins().band(ix, fmask);
        let m = self.l.b.ins().bor(mant, one);
        let e_field = self.l.b.ins().ushr_imm_u(ix, i64::from(p));
        let two_p = self.isplat(magic_bits & !field);
        let e = self.l.b.ins().bor(e_field, two_p);
        let (m, e) = (self.as_float(m), self.as_float(e));
        let magic = self.splat(self.c.exp2_magic);
        (m, self.sub(e, magic))
    }

    /// Horner: c[0] + c[1]·t + … + c[n]·tⁿ.
    fn poly(&mut self, t: Value, c: &[f64]) -> Value {
        let (last, rest) = c.split_last().expect("internal: empty coefficient list");
        let mut acc = self.splat(*last);
        for &k in rest.iter().rev() {
            let k = self.splat(k);
            acc = self.fma(acc, t, k);
        }
        acc
    }

    /// [`Emit::poly`] choosing per lane between two lists of equal length.
    fn poly_select(&mut self, m: Value, t: Value, a: &[f64], b: &[f64]) -> Value {
        let n = a.len() - 1;
        let (an, bn) = (self.splat(a[n]), self.splat(b[n]));
        let mut acc = self.select(m, an, bn);
        for i in (0..n).rev() {
            let (ai, bi) = (self.splat(a[i]), self.splat(b[i]));
            let k = self.select(m, ai, bi);
            acc = self.fma(acc, t, k);
        }
        acc
    }
}

mod funcs;
