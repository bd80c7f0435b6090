//! Vectorized elementwise transcendental functions with tested error bounds.
//!
//! One algorithm per function, written once over a small vector vocabulary
//! and fed from one coefficient table ([`coeffs`]), which the JIT emits as
//! well. The slice kernels pick the widest instruction set at run time
//! ([`Isa::best`]): AVX-512F (16 f32 / 8 f64 per register), AVX2 + FMA
//! (8 / 4), or a portable loop over the scalar form that LLVM vectorizes for
//! the baseline target. A remainder shorter than a register goes through a
//! padded buffer and the same vector code.
//!
//! ```
//! use cranelora_kernels::math::{apply, eval, Func};
//! let x = [-1.0f32, 0.0, 1.0];
//! let mut y = [0.0f32; 3];
//! apply(Func::GeluTanh, &x, &mut y).unwrap();
//! assert_eq!(y[1], 0.0);
//! assert!((y[2] - 0.841_192).abs() < 1e-6);
//! assert_eq!(eval(Func::Exp, 0.0f64), 1.0);
//! ```
//!
//! # Accuracy
//!
//! Each [`Func`] variant states its bound, and [`max_error`] returns it:
//! for every finite input x, `|f̃(x) − f(x)| ≤ abs + rel·|f(x)|`, where
//! f(x) is a libm-based reference evaluated in f64 at the same (already
//! rounded) input (`libm::exp`, `tanh`, `erf`, and `erfc` for the GELU tails).
//! The test `every_isa_meets_the_documented_bounds` sweeps 200 001 points on
//! [−20, 20], 40 001 points over the whole exp range, ±m·10^k down to
//! subnormals, on every instruction set of the host, and asserts these
//! bounds; `error_table` (ignored) prints the measured maxima. For f64 the
//! reference is itself libm's f64 result (about 1 ulp), so f64 figures
//! include the reference's own error.
//!
//! | function | f32 rel | f32 abs | f64 rel | f64 abs |
//! |---|---|---|---|---|
//! | exp | 1.2e-7 | sub | 2.5e-16 | sub |
//! | log | 1.2e-7 | sub | 2.5e-16 | sub |
//! | tanh | 2.0e-7 | sub | 4.5e-16 | sub |
//! | erf | 1.2e-7 | sub | 2.5e-16 | sub |
//! | sigmoid | 2.0e-7 | sub | 4.5e-16 | sub |
//! | silu | 2.4e-7 | 1e-43 | 6.0e-16 | 5e-321 |
//! | gelu_erf | 2.4e-7 | 1.6e-8 | 6.5e-16 | 1e-21 |
//! | gelu_tanh | 2.4e-7 | 1.6e-8 | 4.5e-16 | 6.5e-17 |
//! | gelu_erf_grad | 2.4e-7 | 6.5e-8 | 4.5e-16 | 1.3e-16 |
//! | gelu_tanh_grad | 2.4e-7 | 5.5e-8 | 4.5e-16 | 1.6e-16 |
//!
//! ("sub" is one subnormal ulp: 1.5e-45 in f32, 5e-324 in f64.) Each
//! bound is a round number at most 2× above the measured worst case over
//! all three paths. AVX-512 and AVX2 give
//! bit-identical results (tested); the portable path on a target without
//! FMA rounds `a·b + c` twice and differs from them in the last bit or two,
//! within the same bounds.
//!
//! Special values: NaN in gives NaN out; `exp(−∞) = 0`, `exp(∞) = ∞`;
//! `log(±0) = −∞`, `log(∞) = ∞`, `log(x < 0) = NaN` (subnormal x is exact
//! to the bound, not flushed);
//! tanh, erf and sigmoid saturate to their limits; GELU, SiLU and the
//! derivatives return their limits at ±∞ (0, ∞, 0, 1) rather than ∞·0;
//! functions with f(0) = 0 keep the sign of −0.
//!
//! # Throughput
//!
//! CPU cycles per element on one core (at the nominal 2.6 GHz of the 2-core
//! AVX-512 development VM), f32 over 64K elements (in and out in L2),
//! median of two runs of the `math_probe` example
//! (`cargo run --release -p cranelora-kernels --example math_probe`; the VM
//! is shared, so figures vary by ±10 %):
//!
//! | function | AVX-512 | before issue 7 |
//! |---|---|---|
//! | exp | 0.6 | 0.6 |
//! | sigmoid | 0.9 | 0.9 |
//! | gelu_tanh | 1.1 | 1.1 |
//! | tanh | 1.2 | 1.2 |
//! | erf | 3.4 | 4.4 |
//! | gelu_erf | 4.0 | 4.8 |
//! | gelu_erf_grad | 5.3 | 6.1 |
//! | gelu_erf (f64) | 9.6 | 12.6 |
//!
//! gelu_erf pays for its accuracy in both tails: every lane evaluates one
//! rational (its own erf piece's, coefficients picked per lane by a
//! register permute), two divisions (the rational and 1/a of the erfc
//! tail) and one exponential. A division is the costliest instruction
//! here, and the chain a → 1/a → rational → division → exponential is
//! long enough that the loop is bound by latency and the reorder window as
//! much as by port throughput. `apply_inplace` runs an in-place loop
//! (each register loaded from and stored to the same elements).

pub mod coeffs;
mod kernel;
mod lanes;
pub mod reduce;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;

use crate::{DType, KernelError, Result, Scalar};
use std::sync::OnceLock;

/// An elementwise function the kernels evaluate.
///
/// Each variant states its tested bound `|f̃ − f| ≤ abs + rel·|f|` (see the
/// [module documentation](self); [`max_error`] returns the same numbers).
/// "sub" is one subnormal ulp (1.5e-45 in f32, 5e-324 in f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    /// eˣ. f32: 1.2e-7 rel + sub. f64: 2.5e-16 rel + sub.
    Exp,
    /// ln x (NaN for x < 0, −∞ at ±0). f32: 1.2e-7 rel + sub. f64: 2.5e-16 rel + sub.
    Log,
    /// tanh x. f32: 2.0e-7 rel + sub. f64: 4.5e-16 rel + sub.
    Tanh,
    /// erf x. f32: 1.2e-7 rel + sub. f64: 2.5e-16 rel + sub.
    Erf,
    /// σ(x) = 1 / (1 + e⁻ˣ). f32: 2.0e-7 rel + sub. f64: 4.5e-16 rel + sub.
    Sigmoid,
    /// x·σ(x). f32: 2.4e-7 rel + 1e-43. f64: 6.0e-16 rel + 5e-321.
    Silu,
    /// x·Φ(x) = x/2·(1 + erf(x/√2)), computed through erfc for x < 0 so the
    /// negative tail keeps its relative accuracy.
    /// f32: 2.4e-7 rel + 1.6e-8. f64: 6.5e-16 rel + 1e-21.
    GeluErf,
    /// x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))), computed as x·σ(2u).
    /// f32: 2.4e-7 rel + 1.6e-8. f64: 4.5e-16 rel + 6.5e-17. (The absolute
    /// term is the rounding of the cubic argument, amplified by its slope.)
    GeluTanh,
    /// d/dx of [`Func::GeluErf`]: Φ(x) + x·φ(x).
    /// f32: 2.4e-7 rel + 6.5e-8. f64: 4.5e-16 rel + 1.3e-16. (The absolute
    /// term matters near the zero at x ≈ −0.75.)
    GeluErfGrad,
    /// d/dx of [`Func::GeluTanh`].
    /// f32: 2.4e-7 rel + 5.5e-8. f64: 4.5e-16 rel + 1.6e-16.
    GeluTanhGrad,
}

impl Func {
    /// Every function, in declaration order.
    pub const ALL: [Func; 10] = [
        Func::Exp,
        Func::Log,
        Func::Tanh,
        Func::Erf,
        Func::Sigmoid,
        Func::Silu,
        Func::GeluErf,
        Func::GeluTanh,
        Func::GeluErfGrad,
        Func::GeluTanhGrad,
    ];
}

/// An error bound: `|f̃(x) − f(x)| ≤ abs + rel·|f(x)|` for every finite x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorBound {
    /// Absolute part (covers zero crossings, cancellation and subnormals).
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

/// The tested error bound of `f` in `dtype`; `None` for non-float types.
pub fn max_error(f: Func, dtype: DType) -> Option<ErrorBound> {
    // The smallest subnormals: results that small are only as exact as
    // their last bit.
    const SUB32: f64 = 1.5e-45;
    const SUB64: f64 = 5e-324;
    let b = |abs, rel| Some(ErrorBound { abs, rel });
    match dtype {
        DType::F32 => match f {
            Func::Exp => b(SUB32, 1.2e-7),
            Func::Log => b(SUB32, 1.2e-7),
            Func::Tanh => b(SUB32, 2.0e-7),
            Func::Erf => b(SUB32, 1.2e-7),
            Func::Sigmoid => b(SUB32, 2.0e-7),
            Func::Silu => b(1e-43, 2.4e-7),
            Func::GeluErf => b(1.6e-8, 2.4e-7),
            Func::GeluTanh => b(1.6e-8, 2.4e-7),
            Func::GeluErfGrad => b(6.5e-8, 2.4e-7),
            Func::GeluTanhGrad => b(5.5e-8, 2.4e-7),
        },
        DType::F64 => match f {
            Func::Exp => b(SUB64, 2.5e-16),
            Func::Log => b(SUB64, 2.5e-16),
            Func::Tanh => b(SUB64, 4.5e-16),
            Func::Erf => b(SUB64, 2.5e-16),
            Func::Sigmoid => b(SUB64, 4.5e-16),
            Func::Silu => b(5e-321, 6.0e-16),
            Func::GeluErf => b(1e-21, 6.5e-16),
            Func::GeluTanh => b(6.5e-17, 4.5e-16),
            Func::GeluErfGrad => b(1.3e-16, 4.5e-16),
            Func::GeluTanhGrad => b(1.6e-16, 4.5e-16),
        },
        DType::I64 => None,
    }
}

/// An instruction set the slice kernels can use. Only obtainable from
/// run-time detection, so holding one proves the CPU supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IsaKind {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The portable loop (always available).
    pub fn portable() -> Isa {
        Isa(IsaKind::Portable)
    }

    /// AVX2 + FMA, if this CPU has both.
    pub fn avx2() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(Isa(IsaKind::Avx2));
        }
        None
    }

    /// AVX-512F, if this CPU has it.
    pub fn avx512() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            return Some(Isa(IsaKind::Avx512));
        }
        None
    }

    /// The widest available instruction set, detected once and cached.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::avx512()
                .or_else(Isa::avx2)
                .unwrap_or_else(Isa::portable)
        })
    }

    /// Every instruction set this CPU supports, widest first.
    pub fn available() -> Vec<Isa> {
        [Isa::avx512(), Isa::avx2(), Some(Isa::portable())]
            .into_iter()
            .flatten()
            .collect()
    }

    /// `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Avx512 => "avx512",
            IsaKind::Avx2 => "avx2",
            IsaKind::Portable => "portable",
        }
    }
}

/// Evaluates `f` at one point (the scalar form of the vector algorithm).
pub fn eval<T: Scalar>(f: Func, x: T) -> T {
    let mut out = [x];
    apply_with(Isa::portable(), f, &[x], &mut out).expect("internal: equal lengths");
    out[0]
}

/// `out[i] = f(x[i])`, with the best instruction set of this CPU.
///
/// # Errors
/// [`KernelError::Length`] if the slices differ in length.
pub fn apply<T: Scalar>(f: Func, x: &[T], out: &mut [T]) -> Result<()> {
    apply_with(Isa::best(), f, x, out)
}

/// `x[i] = f(x[i])` in place, with the best instruction set of this CPU.
pub fn apply_inplace<T: Scalar>(f: Func, x: &mut [T]) {
    apply_inplace_with(Isa::best(), f, x)
}

/// [`apply`] with a chosen instruction set (for tests and benchmarks).
///
/// # Errors
/// [`KernelError::Length`] if the slices differ in length.
pub fn apply_with<T: Scalar>(isa: Isa, f: Func, x: &[T], out: &mut [T]) -> Result<()> {
    if x.len() != out.len() {
        return Err(KernelError::Length {
            what: "math::apply output",
            expected: x.len(),
            actual: out.len(),
        });
    }
    if let (Some(x), Some(out)) = (T::as_f32_slice(x), T::as_f32_slice_mut(out)) {
        map_f32(isa, f, x, out);
    } else if let (Some(x), Some(out)) = (T::as_f64_slice(x), T::as_f64_slice_mut(out)) {
        map_f64(isa, f, x, out);
    } else {
        unreachable!("internal: Scalar is sealed to f32 and f64");
    }
    Ok(())
}

/// [`apply_inplace`] with a chosen instruction set (for tests and benchmarks).
pub fn apply_inplace_with<T: Scalar>(isa: Isa, f: Func, x: &mut [T]) {
    // Each register is loaded from and stored back to the same elements, so
    // no copy of the input is needed.
    if let Some(x) = T::as_f32_slice_mut(x) {
        map_inplace_f32(isa, f, x);
    } else if let Some(x) = T::as_f64_slice_mut(x) {
        map_inplace_f64(isa, f, x);
    } else {
        unreachable!("internal: Scalar is sealed to f32 and f64");
    }
}

fn map_inplace_f32(isa: Isa, f: Func, x: &mut [f32]) {
    match isa.0 {
        // SAFETY: an `Isa` of this kind exists only after detection found
        // AVX-512F.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512::map_inplace_f32(f, x) },
        // SAFETY: as above, with AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2::map_inplace_f32(f, x) },
        _ => kernel::map_inplace::<f32>(f, x),
    }
}

fn map_inplace_f64(isa: Isa, f: Func, x: &mut [f64]) {
    match isa.0 {
        // SAFETY: as in `map_inplace_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512::map_inplace_f64(f, x) },
        // SAFETY: as in `map_inplace_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2::map_inplace_f64(f, x) },
        _ => kernel::map_inplace::<f64>(f, x),
    }
}

fn map_f32(isa: Isa, f: Func, x: &[f32], out: &mut [f32]) {
    match isa.0 {
        // SAFETY: an `Isa` of this kind exists only after detection found
        // AVX-512F; `apply_with` checked the lengths.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512::map_f32(f, x, out) },
        // SAFETY: as above, with AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2::map_f32(f, x, out) },
        _ => kernel::map::<f32>(f, x, out),
    }
}

fn map_f64(isa: Isa, f: Func, x: &[f64], out: &mut [f64]) {
    match isa.0 {
        // SAFETY: as in `map_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512::map_f64(f, x, out) },
        // SAFETY: as in `map_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2::map_f64(f, x, out) },
        _ => kernel::map::<f64>(f, x, out),
    }
}
