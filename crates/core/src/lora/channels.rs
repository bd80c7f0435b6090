//! Per-output-feature operations along a tensor's channel axis (the last
//! axis for Linear and Embedding outputs, axis 1 for NCHW).

use crate::{Result, Tensor};
use cranelora_kernels::Scalar;

/// `v` (shape `[C]`) reshaped to broadcast along `axis` of an `ndim`-axis tensor.
fn along<T: Scalar>(v: &Tensor<T>, axis: usize, ndim: usize) -> Result<Tensor<T>> {
    let mut shape = vec![1; ndim];
    shape[axis] = v.len();
    v.reshape(&shape)
}

/// `t ⊙ v` with `v[c]` multiplying every element of channel `c`.
pub(crate) fn scale<T: Scalar>(t: &Tensor<T>, v: &Tensor<T>, axis: usize) -> Result<Tensor<T>> {
    t.mul(&along(v, axis, t.ndim())?)
}

/// `t + v` with `v[c]` added to every element of channel `c`.
pub(crate) fn add<T: Scalar>(t: &Tensor<T>, v: &Tensor<T>, axis: usize) -> Result<Tensor<T>> {
    t.add(&along(v, axis, t.ndim())?)
}

/// The sum over every axis but `axis`: shape `[C]`.
pub(crate) fn sum<T: Scalar>(t: &Tensor<T>, axis: usize) -> Result<Tensor<T>> {
    let others: Vec<usize> = (0..t.ndim()).filter(|&a| a != axis).collect();
    t.sum_axes(&others, false)
}

/// The L2 norm of each column of a 2-D matrix: shape `[cols]`.
pub(crate) fn column_norms<T: Scalar>(m: &Tensor<T>) -> Result<Tensor<T>> {
    Ok(m.map(|v| v * v).sum_axes(&[0], false)?.map(|v| v.sqrt()))
}
