//! Broadcasting, reductions, normalizations, data movement and indexing.
//!
//! Shapes were checked by the verifier, so broadcasts and reshapes here
//! cannot fail; their `expect`s state that invariant.

use super::elem::{kernel, max_nan, typed, Elem};
use crate::Value;
use cranelora_kernels::math::Func;
use cranelora_kernels::Scalar;
use ndarray::{concatenate, ArrayD, ArrayViewD, Axis, IxDyn, Slice, Zip};
use std::ops::Range;

const VERIFIED: &str = "internal: the verifier checked the shapes";

/// `a` broadcast (numpy rules) to `shape`, as a view.
fn view<'a, E>(a: &'a ArrayD<E>, shape: &[usize]) -> ArrayViewD<'a, E> {
    a.broadcast(IxDyn(shape)).expect(VERIFIED)
}

/// `f(a, b)` elementwise after broadcasting both to `shape`.
pub(super) fn zip2<E: Copy, C>(
    a: &ArrayD<E>,
    b: &ArrayD<E>,
    shape: &[usize],
    f: impl Fn(E, E) -> C,
) -> ArrayD<C> {
    Zip::from(&view(a, shape))
        .and(&view(b, shape))
        .map_collect(|&x, &y| f(x, y))
}

/// `cond ? a : b` elementwise after broadcasting all three to `shape`.
pub(super) fn zip3<E: Copy>(
    cond: &ArrayD<bool>,
    a: &ArrayD<E>,
    b: &ArrayD<E>,
    shape: &[usize],
) -> ArrayD<E> {
    Zip::from(&view(cond, shape))
        .and(&view(a, shape))
        .and(&view(b, shape))
        .map_collect(|&c, &x, &y| if c { x } else { y })
}

pub(super) fn broadcast<E: Clone>(a: &ArrayD<E>, shape: &[usize]) -> ArrayD<E> {
    view(a, shape).to_owned()
}

/// Folds `f` from `init` over each axis of `axes` (increasing), highest axis first.
pub(super) fn reduce<E: Elem>(
    a: &ArrayD<E>,
    axes: &[usize],
    keepdims: bool,
    init: E,
    f: impl Fn(E, E) -> E,
) -> ArrayD<E> {
    let mut r = a.clone();
    // Highest axis first, so the lower axis numbers stay valid.
    for &axis in axes.iter().rev() {
        r = r.fold_axis(Axis(axis), init, |&acc, &x| f(acc, x));
        if keepdims {
            r = r.insert_axis(Axis(axis));
        }
    }
    r
}

/// Sum over `axes` divided by the number of reduced elements (0/0 = NaN if none).
pub(super) fn mean<T: Scalar + Elem>(a: &ArrayD<T>, axes: &[usize], keepdims: bool) -> ArrayD<T> {
    let count: usize = axes.iter().map(|&ax| a.shape()[ax]).product();
    let n = T::from_f64_lossy(count as f64);
    reduce(a, axes, keepdims, T::ZERO, Elem::add).mapv(|s| s / n)
}

/// exp(x − max) / Σ exp(x − max) along `axis`. Subtracting the row max keeps
/// exp from overflowing; a row whose max is ±∞ or NaN becomes NaN.
pub(super) fn softmax<T: Scalar + Elem>(a: &ArrayD<T>, axis: usize) -> ArrayD<T> {
    let max = a.fold_axis(Axis(axis), T::LOWEST, |&m, &x| max_nan(m, x));
    let shifted = a - &max.insert_axis(Axis(axis));
    let e = kernel(Func::Exp, &shifted);
    let sum = e.sum_axis(Axis(axis)).insert_axis(Axis(axis));
    &e / &sum
}

/// (x − mean)/√(var + eps)·γ + β over the axes `axis..`, with the biased variance.
pub(super) fn layer_norm<T: Scalar + Elem>(
    x: &ArrayD<T>,
    affine: Option<(&Value, &Value)>,
    axis: usize,
    eps: f64,
) -> ArrayD<T> {
    let inner: usize = x.shape()[axis..].iter().product();
    if inner == 0 {
        return x.clone();
    }
    let n = T::from_f64_lossy(inner as f64);
    let eps = T::from_f64_lossy(eps);
    let affine = affine.map(|(g, b)| (flat(typed::<T>(g)), flat(typed::<T>(b))));
    let mut data = flat(x);
    for row in data.chunks_mut(inner) {
        let mean = row.iter().copied().sum::<T>() / n;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
        let rstd = (var + eps).sqrt().recip();
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) * rstd;
            if let Some((g, b)) = &affine {
                *v = *v * g[j] + b[j];
            }
        }
    }
    ArrayD::from_shape_vec(x.raw_dim(), data).expect(VERIFIED)
}

/// The elements in row-major order.
fn flat<E: Clone>(a: &ArrayD<E>) -> Vec<E> {
    a.iter().cloned().collect()
}

pub(super) fn reshape<E: Clone>(a: &ArrayD<E>, shape: &[usize]) -> ArrayD<E> {
    ArrayD::from_shape_vec(IxDyn(shape), flat(a)).expect(VERIFIED)
}

pub(super) fn transpose<E: Clone>(a: &ArrayD<E>, perm: &[usize]) -> ArrayD<E> {
    a.view()
        .permuted_axes(IxDyn(perm))
        .as_standard_layout()
        .into_owned()
}

pub(super) fn slice<E: Clone>(a: &ArrayD<E>, ranges: &[Range<usize>]) -> ArrayD<E> {
    let s = a.slice_each_axis(|ax| Slice::from(ranges[ax.axis.index()].clone()));
    s.to_owned()
}

/// `a` inside an array of `value` with `pads` (before, after) per axis.
pub(super) fn pad<E: Elem>(
    a: &ArrayD<E>,
    pads: &[(usize, usize)],
    value: f64,
    shape: &[usize],
) -> ArrayD<E> {
    let mut out = ArrayD::from_elem(IxDyn(shape), E::from_f64(value));
    let mut inside = out.slice_each_axis_mut(|ax| {
        let (i, before) = (ax.axis.index(), pads[ax.axis.index()].0);
        Slice::from(before..before + a.shape()[i])
    });
    inside.assign(a);
    out
}

/// All operands joined along `axis`.
pub(super) fn concat<E: Elem>(args: &[&Value], axis: usize) -> ArrayD<E> {
    let views: Vec<_> = args.iter().map(|v| typed::<E>(v).view()).collect();
    concatenate(Axis(axis), &views).expect(VERIFIED)
}

/// The row index `id`, or `(id, rows)` if it is outside `0..rows`.
fn row(id: i64, rows: usize) -> Result<usize, (i64, usize)> {
    usize::try_from(id)
        .ok()
        .filter(|&r| r < rows)
        .ok_or((id, rows))
}

/// Rows `ids` of `table` [V, D] → [ids.shape..., D].
pub(super) fn gather<E: Clone>(
    table: &ArrayD<E>,
    ids: &ArrayD<i64>,
) -> Result<ArrayD<E>, (i64, usize)> {
    let (rows, d) = (table.shape()[0], table.shape()[1]);
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        data.extend(table.index_axis(Axis(0), row(id, rows)?).iter().cloned());
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data).expect(VERIFIED))
}

/// A `rows × D` zero matrix plus each row of `updates` [ids.shape..., D] at row `ids[s]`.
pub(super) fn scatter_add<T: Scalar>(
    updates: &ArrayD<T>,
    ids: &ArrayD<i64>,
    rows: usize,
) -> Result<ArrayD<T>, (i64, usize)> {
    let d = updates.shape()[updates.ndim() - 1];
    let mut out = ArrayD::zeros(IxDyn(&[rows, d]));
    let upd = flat(updates);
    for (s, &id) in ids.iter().enumerate() {
        let mut dst = out.index_axis_mut(Axis(0), row(id, rows)?);
        for (o, &u) in dst.iter_mut().zip(&upd[s * d..(s + 1) * d]) {
            *o += u;
        }
    }
    Ok(out)
}
