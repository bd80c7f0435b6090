//! Vectorized row reductions: max (NaN propagating), sum, sum of squared
//! deviations, and softmax's "subtract, exp, sum" and division passes.
//!
//! Softmax and LayerNorm spend their time in these loops. Written as plain
//! folds, they are latency-bound (each add waits for the previous one) and
//! the max with its NaN test does not vectorize at all. Here each reduction
//! keeps four independent accumulator registers (so four adds are in
//! flight), on the instruction set [`Isa::best`] picks, like
//! [`apply`](super::apply): AVX-512F, AVX2 + FMA, or a portable loop over
//! the scalar form. A remainder shorter than a register goes through a
//! padded buffer holding the reduction's neutral element.
//!
//! ```
//! use cranelora_kernels::math::reduce;
//! let x = [1.0f32, 3.0, 2.0];
//! assert_eq!(reduce::max(&x), 3.0);
//! assert_eq!(reduce::sum(&x), 6.0);
//! let (mean, var) = reduce::moments(&x);
//! assert_eq!((mean, var), (2.0, 2.0 / 3.0));
//! let mut p = [0.0f64, 0.0];
//! reduce::softmax(&mut p);
//! assert_eq!(p, [0.5, 0.5]);
//! ```
//!
//! # Semantics
//!
//! - **max**: any NaN makes the result NaN (a quiet NaN, not necessarily
//!   the input's payload), as the interpreter's `max`; −∞ for an empty row.
//! - **sums** are reassociated: the result differs from a left-to-right
//!   fold by rounding only (relative error ≤ (n − 1)·u·Σ|x|/|Σx| in the
//!   worst case, as for any summation order; typically far less, since
//!   16–64 partial sums each add n/16–n/64 terms). Sums of squared
//!   deviations use one FMA per element.
//! - **softmax** computes `exp(x − max)` with the kernels' elementwise exp
//!   ([`apply`](super::apply) of [`Func::Exp`] on the difference; not fused
//!   with the sum, see `exp_sum_with`), sums it, and divides each element by the
//!   sum, as the interpreter's `e / Σe` (a multiplication by the reciprocal
//!   would be cheaper but rounds twice: up to 1 ulp off the quotient, which
//!   the JIT's exact-comparison tests of short rows notice). On rows of at
//!   most one register the sum is the left-to-right one. A row whose max
//!   is ±∞ or NaN becomes NaN, as in the interpreter.

use super::lanes::{Elem, Lanes};
use super::{apply_inplace_with, Func, Isa, IsaKind};
use crate::{DType, Scalar};

#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// A reduction over one row, for [`reduce_with`].
#[derive(Debug)]
pub enum Row<'a, T> {
    /// The largest element (NaN if any is NaN, −∞ if empty).
    Max(&'a [T]),
    /// The sum (0 if empty).
    Sum(&'a [T]),
    /// `Σ (x − c)²` for the given `c` (0 if empty).
    SqDev(&'a [T], T),
    /// Replaces each `x` with `exp(x − shift)` and returns the sum of the
    /// new values (0 if empty).
    ExpSum(&'a mut [T], T),
    /// Softmax of the row in place (see the [module docs](self)); returns
    /// `Σ exp(x − max)`, the normalizer.
    Softmax(&'a mut [T]),
    /// Divides each element by the given value (returns it); the last pass
    /// of softmax.
    Divide(&'a mut [T], T),
}

/// The largest element: NaN if any element is NaN, −∞ for an empty row.
pub fn max<T: Scalar>(x: &[T]) -> T {
    reduce_with(Isa::best(), Row::Max(x))
}

/// The sum of the elements (reassociated; 0 for an empty row).
pub fn sum<T: Scalar>(x: &[T]) -> T {
    reduce_with(Isa::best(), Row::Sum(x))
}

/// `Σ (x − c)²` (reassociated, one FMA per element; 0 for an empty row).
pub fn sum_sq_dev<T: Scalar>(x: &[T], c: T) -> T {
    reduce_with(Isa::best(), Row::SqDev(x, c))
}

/// Mean and biased variance `Σ(x − mean)²/n` of a row, as LayerNorm uses
/// them (two passes: the sum, then the squared deviations from the mean).
/// NaN for an empty row (0/0).
pub fn moments<T: Scalar>(x: &[T]) -> (T, T) {
    let n = T::from_f64_lossy(x.len() as f64);
    let mean = sum(x) / n;
    (mean, sum_sq_dev(x, mean) / n)
}

/// `x[i] = exp(x[i] − shift)` in place; returns the sum of the new values.
pub fn exp_sub_sum<T: Scalar>(x: &mut [T], shift: T) -> T {
    reduce_with(Isa::best(), Row::ExpSum(x, shift))
}

/// Softmax of one row in place: the max, `exp(x − max)`, its sum, and the
/// division by the sum, each a vector pass. Returns the sum.
pub fn softmax<T: Scalar>(x: &mut [T]) -> T {
    reduce_with(Isa::best(), Row::Softmax(x))
}

/// Runs `row` with a chosen instruction set (for tests and benchmarks).
pub fn reduce_with<T: Scalar>(isa: Isa, row: Row<'_, T>) -> T {
    let row = match row {
        Row::ExpSum(x, shift) => return exp_sum_with(isa, x, shift),
        Row::Softmax(x) => {
            let total = exp_sum_with(isa, x, reduce_with(isa, Row::Max(x)));
            return reduce_with(isa, Row::Divide(x, total));
        }
        row => row,
    };
    let up = |v: f64| T::from_f64_lossy(v);
    match T::DTYPE {
        DType::F32 => {
            let row = row.retype(
                |s| T::as_f32_slice(s).expect("internal: T is f32"),
                |s| T::as_f32_slice_mut(s).expect("internal: T is f32"),
                |v| v.to_f64_exact() as f32,
            );
            up(f64::from(fold_f32(isa, row)))
        }
        DType::F64 => {
            let row = row.retype(
                |s| T::as_f64_slice(s).expect("internal: T is f64"),
                |s| T::as_f64_slice_mut(s).expect("internal: T is f64"),
                T::to_f64_exact,
            );
            up(fold_f64(isa, row))
        }
        DType::I64 => unreachable!("internal: Scalar is sealed to f32 and f64"),
    }
}

/// `x = exp(x − shift)`, returning the sum: the subtraction, then the
/// elementwise exp kernel ([`apply_inplace_with`]), then the vector sum.
/// Three passes over a row in L1 rather than one fused loop: with
/// `kernel::exp` inlined into a reduction's own `#[target_feature]` entry
/// point, LLVM left the exp polynomial's `rfold` out of line (compiled
/// without AVX, so every FMA became a call), which doubled the cost.
fn exp_sum_with<T: Scalar>(isa: Isa, x: &mut [T], shift: T) -> T {
    x.iter_mut().for_each(|v| *v -= shift);
    apply_inplace_with(isa, Func::Exp, x);
    reduce_with(isa, Row::Sum(x))
}

impl<'a, T: Copy> Row<'a, T> {
    /// The same reduction over slices and a parameter of another type.
    fn retype<U>(
        self,
        s: impl FnOnce(&'a [T]) -> &'a [U],
        m: impl FnOnce(&'a mut [T]) -> &'a mut [U],
        v: impl FnOnce(T) -> U,
    ) -> Row<'a, U> {
        match self {
            Row::Max(x) => Row::Max(s(x)),
            Row::Sum(x) => Row::Sum(s(x)),
            Row::SqDev(x, c) => Row::SqDev(s(x), v(c)),
            Row::ExpSum(x, c) => Row::ExpSum(m(x), v(c)),
            Row::Softmax(x) => Row::Softmax(m(x)),
            Row::Divide(x, d) => Row::Divide(m(x), v(d)),
        }
    }
}

fn fold_f32(isa: Isa, row: Row<'_, f32>) -> f32 {
    match isa.0 {
        // SAFETY: an `Isa` of this kind exists only after detection found
        // AVX-512F.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512_f32(row) },
        // SAFETY: as above, with AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2_f32(row) },
        _ => run::<f32>(row),
    }
}

fn fold_f64(isa: Isa, row: Row<'_, f64>) -> f64 {
    match isa.0 {
        // SAFETY: as in `fold_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx512 => unsafe { avx512_f64(row) },
        // SAFETY: as in `fold_f32`.
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2 => unsafe { avx2_f64(row) },
        _ => run::<f64>(row),
    }
}

/// # Safety
/// The CPU must support AVX-512F (the register types' module invariant).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f32(row: Row<'_, f32>) -> f32 {
    run::<avx512::F32x16>(row)
}

/// # Safety
/// As for [`avx512_f32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f64(row: Row<'_, f64>) -> f64 {
    run::<avx512::F64x8>(row)
}

/// # Safety
/// The CPU must support AVX2 and FMA (the register types' module invariant).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_f32(row: Row<'_, f32>) -> f32 {
    run::<avx2::F32x8>(row)
}

/// # Safety
/// As for [`avx2_f32`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_f64(row: Row<'_, f64>) -> f64 {
    run::<avx2::F64x4>(row)
}

/// A plain element type that is also its own one-lane register (the
/// horizontal steps at the end of each reduction use it).
trait Native: Elem + Lanes<E = Self> {
    fn is_nan(self) -> bool;
}

impl Native for f32 {
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Native for f64 {
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// One reduction in registers of `V`; inlined into the `#[target_feature]`
/// entry points so that the register operations compile to their
/// instructions.
#[inline(always)]
fn run<V: Lanes>(row: Row<'_, V::E>) -> V::E
where
    V::E: Native,
{
    match row {
        Row::Max(x) => max_of::<V>(x),
        Row::Sum(x) => horizontal_sum(fold::<V, _>(SumFold, x)),
        Row::SqDev(x, c) => horizontal_sum(fold::<V, _>(SqDevFold(c), x)),
        Row::Divide(x, d) => {
            divide::<V>(x, d);
            d
        }
        Row::ExpSum(..) | Row::Softmax(..) => unreachable!("internal: run by exp_sum_with"),
    }
}

/// Independent accumulators per reduction: enough adds in flight to hide
/// the adder's latency (4 cycles, 2 per cycle issued) on short rows.
const ACC: usize = 4;

/// A reduction as a fold over registers: the accumulator, the neutral
/// padding of a tail, one step, and the merge of two accumulators. A trait
/// (not closures) so that every call is static and inlined into the
/// `#[target_feature]` caller.
trait Fold<V: Lanes>: Copy {
    type Acc: Copy;
    fn init(self) -> Self::Acc;
    fn pad(self) -> V::E;
    fn step(self, acc: Self::Acc, x: V) -> Self::Acc;
    fn merge(self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// Folds `x` with `ACC` accumulators over blocks of `ACC` registers, then
/// single registers, then a padded tail; returns the merged accumulator.
#[inline(always)]
fn fold<V: Lanes, F: Fold<V>>(f: F, x: &[V::E]) -> F::Acc {
    let w = V::WIDTH;
    let mut acc = [f.init(); ACC];
    let mut blocks = x.chunks_exact(ACC * w);
    for b in &mut blocks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = f.step(*a, V::load(&b[k * w..]));
        }
    }
    let mut regs = blocks.remainder().chunks_exact(w);
    for (a, r) in acc.iter_mut().zip(&mut regs) {
        *a = f.step(*a, V::load(r));
    }
    let tail = regs.remainder();
    if !tail.is_empty() {
        let mut buf = [f.pad(); 16];
        buf[..tail.len()].copy_from_slice(tail);
        acc[ACC - 1] = f.step(acc[ACC - 1], V::load(&buf));
    }
    let [a, b, c, d] = acc;
    f.merge(f.merge(a, b), f.merge(c, d))
}

#[derive(Clone, Copy)]
struct SumFold;

impl<V: Lanes> Fold<V> for SumFold {
    type Acc = V;
    #[inline(always)]
    fn init(self) -> V {
        V::splat(V::E::ZERO)
    }
    #[inline(always)]
    fn pad(self) -> V::E {
        V::E::ZERO
    }
    #[inline(always)]
    fn step(self, acc: V, x: V) -> V {
        acc + x
    }
    #[inline(always)]
    fn merge(self, a: V, b: V) -> V {
        a + b
    }
}

/// `Σ (x − c)²`, padded with `c` itself.
#[derive(Clone, Copy)]
struct SqDevFold<E>(E);

impl<V: Lanes> Fold<V> for SqDevFold<V::E> {
    type Acc = V;
    #[inline(always)]
    fn init(self) -> V {
        V::splat(V::E::ZERO)
    }
    #[inline(always)]
    fn pad(self) -> V::E {
        self.0
    }
    #[inline(always)]
    fn step(self, acc: V, x: V) -> V {
        let d = x - V::splat(self.0);
        d.mul_add(d, acc)
    }
    #[inline(always)]
    fn merge(self, a: V, b: V) -> V {
        a + b
    }
}

/// The max of the non-NaN elements, and beside it `Σ min(1, |x|)`, which
/// is NaN exactly when some element is NaN (and finite otherwise, as each
/// term is at most 1). The x86 max returns its second operand when either
/// is NaN, so `x.max(m)` keeps `m` for a NaN `x`; the max accumulator is
/// never NaN, and the flag decides at the end.
#[derive(Clone, Copy)]
struct MaxFold;

impl<V: Lanes> Fold<V> for MaxFold {
    type Acc = (V, V);
    #[inline(always)]
    fn init(self) -> (V, V) {
        (V::splat(-V::E::INFINITY), V::splat(V::E::ZERO))
    }
    #[inline(always)]
    fn pad(self) -> V::E {
        -V::E::INFINITY
    }
    #[inline(always)]
    fn step(self, (m, nan): (V, V), x: V) -> (V, V) {
        (x.max(m), nan + V::splat(V::E::ONE).min(x.abs()))
    }
    #[inline(always)]
    fn merge(self, a: (V, V), b: (V, V)) -> (V, V) {
        (a.0.max(b.0), a.1 + b.1)
    }
}

/// The lanes of `v`, in order.
#[inline(always)]
fn lanes<V: Lanes>(v: V) -> [V::E; 16] {
    let mut buf = [V::E::ZERO; 16];
    v.store(&mut buf);
    buf
}

#[inline(always)]
fn horizontal_sum<V: Lanes>(v: V) -> V::E
where
    V::E: Native,
{
    lanes(v)[..V::WIDTH].iter().fold(V::E::ZERO, |s, &t| s + t)
}

#[inline(always)]
fn max_of<V: Lanes>(x: &[V::E]) -> V::E
where
    V::E: Native,
{
    let (m, nan) = fold::<V, _>(MaxFold, x);
    if Native::is_nan(horizontal_sum(nan)) {
        return V::E::NAN;
    }
    lanes(m)[..V::WIDTH]
        .iter()
        .fold(-V::E::INFINITY, |a, &t| t.max(a))
}

/// `x /= d` in place: a division per element, as the interpreter's
/// `e / Σe` (not a multiplication by `1/d`, which rounds twice).
#[inline(always)]
fn divide<V: Lanes>(x: &mut [V::E], d: V::E) {
    let d = V::splat(d);
    let mut regs = x.chunks_exact_mut(V::WIDTH);
    for r in &mut regs {
        (V::load(r) / d).store(r);
    }
    let tail = regs.into_remainder();
    if !tail.is_empty() {
        let mut buf = [V::E::ONE; 16];
        buf[..tail.len()].copy_from_slice(tail);
        (V::load(&buf) / d).store(&mut buf);
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

#[cfg(test)]
#[path = "reduce_tests.rs"]
mod tests;
