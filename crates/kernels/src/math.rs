//! Elementwise transcendental functions (PLACEHOLDER API: being replaced by the vectorized version).

use crate::{KernelError, Result, Scalar};

/// An elementwise function the kernels evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    /// eˣ
    Exp,
    /// tanh x
    Tanh,
    /// erf x
    Erf,
    /// 1 / (1 + e⁻ˣ)
    Sigmoid,
    /// x·σ(x)
    Silu,
    /// x·Φ(x) = x/2·(1 + erf(x/√2))
    GeluErf,
    /// x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    GeluTanh,
    /// d/dx of [`Func::GeluErf`]
    GeluErfGrad,
    /// d/dx of [`Func::GeluTanh`]
    GeluTanhGrad,
}

fn erf64(x: f64) -> f64 {
    // Placeholder series/continued fraction; replaced by the table-driven kernel.
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = 1.0
        - t * (-x * x - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

/// Evaluates `f` at one point.
pub fn eval<T: Scalar>(f: Func, x: T) -> T {
    let v = x.to_f64_exact();
    const S2PI: f64 = 0.797_884_560_802_865_4;
    let r = match f {
        Func::Exp => v.exp(),
        Func::Tanh => v.tanh(),
        Func::Erf => erf64(v),
        Func::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        Func::Silu => v / (1.0 + (-v).exp()),
        Func::GeluErf => 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2)),
        Func::GeluTanh => 0.5 * v * (1.0 + (S2PI * (v + 0.044715 * v * v * v)).tanh()),
        Func::GeluErfGrad => {
            0.5 * (1.0 + erf64(v / std::f64::consts::SQRT_2))
                + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
        }
        Func::GeluTanhGrad => {
            let u = S2PI * (v + 0.044715 * v * v * v);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * S2PI * (1.0 + 3.0 * 0.044715 * v * v)
        }
    };
    T::from_f64_lossy(r)
}

/// `out[i] = f(x[i])`.
///
/// # Errors
/// [`KernelError::Length`] if the slices differ in length.
pub fn apply<T: Scalar>(f: Func, x: &[T], out: &mut [T]) -> Result<()> {
    if x.len() != out.len() {
        return Err(KernelError::Length {
            what: "math::apply output",
            expected: x.len(),
            actual: out.len(),
        });
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = eval(f, v);
    }
    Ok(())
}

/// `x[i] = f(x[i])` in place.
pub fn apply_inplace<T: Scalar>(f: Func, x: &mut [T]) {
    for v in x.iter_mut() {
        *v = eval(f, *v);
    }
}
