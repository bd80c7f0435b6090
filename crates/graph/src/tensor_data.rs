//! Dense tensors of f32, f64 or i64: the data of constants and the
//! interpreter's runtime values.
//!
//! Equality is bitwise (NaN equals a NaN with the same bits, `0.0 ≠ −0.0`),
//! so it is an equivalence relation: two constants that compare equal can be
//! merged by common-subexpression elimination without changing any result.

use crate::{DType, Error, Result, Shape};
use ndarray::{ArrayD, IxDyn};
use std::hash::{Hash, Hasher};

/// A dense row-major tensor of one of the three dtypes.
#[derive(Clone, Debug)]
pub enum TensorData {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats.
    F64(ArrayD<f64>),
    /// 64-bit signed integers (token ids, gather indices).
    I64(ArrayD<i64>),
}

/// The interpreter's runtime value: the same type as constant data.
pub type Value = TensorData;

fn array<T>(shape: &Shape, data: Vec<T>) -> Result<ArrayD<T>> {
    let actual = data.len();
    ArrayD::from_shape_vec(IxDyn(shape.dims()), data).map_err(|_| Error::DataLength {
        shape: shape.clone(),
        expected: shape.numel(),
        actual,
    })
}

impl TensorData {
    /// An f32 tensor of `shape` from row-major `data`.
    ///
    /// # Errors
    /// [`Error::DataLength`] if `data.len()` is not the shape's element count.
    pub fn f32(shape: impl Into<Shape>, data: Vec<f32>) -> Result<Self> {
        Ok(Self::F32(array(&shape.into(), data)?))
    }

    /// An f64 tensor of `shape` from row-major `data`.
    ///
    /// # Errors
    /// [`Error::DataLength`] if `data.len()` is not the shape's element count.
    pub fn f64(shape: impl Into<Shape>, data: Vec<f64>) -> Result<Self> {
        Ok(Self::F64(array(&shape.into(), data)?))
    }

    /// An i64 tensor of `shape` from row-major `data`.
    ///
    /// # Errors
    /// [`Error::DataLength`] if `data.len()` is not the shape's element count.
    pub fn i64(shape: impl Into<Shape>, data: Vec<i64>) -> Result<Self> {
        Ok(Self::I64(array(&shape.into(), data)?))
    }

    /// A rank-0 tensor holding `x` converted to `dtype` (with `as` for i64).
    pub fn scalar(x: f64, dtype: DType) -> Self {
        Self::full(&Shape::scalar(), x, dtype)
    }

    /// A tensor of `shape` filled with `x` converted to `dtype` (with `as` for i64).
    pub fn full(shape: &Shape, x: f64, dtype: DType) -> Self {
        let dim = IxDyn(shape.dims());
        match dtype {
            DType::F32 => Self::F32(ArrayD::from_elem(dim, x as f32)),
            DType::F64 => Self::F64(ArrayD::from_elem(dim, x)),
            DType::I64 => Self::I64(ArrayD::from_elem(dim, x as i64)),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::F64(_) => DType::F64,
            Self::I64(_) => DType::I64,
        }
    }

    /// The dims.
    pub fn shape(&self) -> Shape {
        match self {
            Self::F32(a) => Shape::from(a.shape()),
            Self::F64(a) => Shape::from(a.shape()),
            Self::I64(a) => Shape::from(a.shape()),
        }
    }

    /// The f32 array, if this is f32.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Self::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The f64 array, if this is f64.
    pub fn as_f64(&self) -> Option<&ArrayD<f64>> {
        match self {
            Self::F64(a) => Some(a),
            _ => None,
        }
    }

    /// The i64 array, if this is i64.
    pub fn as_i64(&self) -> Option<&ArrayD<i64>> {
        match self {
            Self::I64(a) => Some(a),
            _ => None,
        }
    }

    /// All elements widened to f64, in row-major order (i64 converted with `as`).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Self::F32(a) => a.iter().map(|&x| f64::from(x)).collect(),
            Self::F64(a) => a.iter().copied().collect(),
            Self::I64(a) => a.iter().map(|&x| x as f64).collect(),
        }
    }

    /// `f32[2, 3] [1.0, 2.0, 3.0, …]`: dtype, shape and the first four elements.
    pub fn summary(&self) -> String {
        fn head<T: std::fmt::Debug>(a: &ArrayD<T>) -> String {
            let items: Vec<String> = a.iter().take(4).map(|x| format!("{x:?}")).collect();
            let more = if a.len() > 4 { ", …" } else { "" };
            format!("[{}{more}]", items.join(", "))
        }
        let values = match self {
            Self::F32(a) => head(a),
            Self::F64(a) => head(a),
            Self::I64(a) => head(a),
        };
        format!("{}{} {values}", self.dtype(), self.shape())
    }

    /// The bit patterns of the elements in row-major order: the identity
    /// that equality and hashing use.
    fn bits(&self) -> Vec<u64> {
        match self {
            Self::F32(a) => a.iter().map(|x| u64::from(x.to_bits())).collect(),
            Self::F64(a) => a.iter().map(|x| x.to_bits()).collect(),
            Self::I64(a) => a.iter().map(|&x| x as u64).collect(),
        }
    }
}

impl PartialEq for TensorData {
    fn eq(&self, other: &Self) -> bool {
        self.dtype() == other.dtype()
            && self.shape() == other.shape()
            && self.bits() == other.bits()
    }
}

impl Eq for TensorData {}

impl Hash for TensorData {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.dtype().hash(state);
        self.shape().hash(state);
        self.bits().hash(state);
    }
}

impl From<ArrayD<f32>> for TensorData {
    fn from(a: ArrayD<f32>) -> Self {
        Self::F32(a)
    }
}

impl From<ArrayD<f64>> for TensorData {
    fn from(a: ArrayD<f64>) -> Self {
        Self::F64(a)
    }
}

impl From<ArrayD<i64>> for TensorData {
    fn from(a: ArrayD<i64>) -> Self {
        Self::I64(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_is_bitwise() {
        let nan = TensorData::f32([1], vec![f32::NAN]).expect("1 element");
        assert_eq!(nan, nan.clone());
        let zero = TensorData::f64([1], vec![0.0]).expect("1 element");
        let neg_zero = TensorData::f64([1], vec![-0.0]).expect("1 element");
        assert_ne!(zero, neg_zero);
        let f = TensorData::scalar(1.0, DType::F32);
        assert_ne!(f, TensorData::scalar(1.0, DType::F64));
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let err = TensorData::i64([2, 2], vec![1, 2, 3]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::DataLength {
                    expected: 4,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn summary_shows_dtype_shape_and_head() {
        let t = TensorData::f32([5], vec![1.0, 2.0, 3.0, 4.0, 5.0]).expect("5 elements");
        assert_eq!(t.summary(), "f32[5] [1.0, 2.0, 3.0, 4.0, …]");
    }
}
