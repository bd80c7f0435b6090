//! The floating-point element types the kernels are generic over.

use crate::DType;
use std::fmt::{Debug, Display};

/// A floating-point element type: `f32` or `f64`.
///
/// Everything numeric in cranelora is generic over `Scalar`; the trait is
/// sealed so that kernels can dispatch on [`Scalar::DTYPE`] to type-specific
/// SIMD code.
pub trait Scalar:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::NumAssign
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + std::iter::Sum
    + private::Sealed
    + 'static
{
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Machine epsilon, as f64.
    const EPSILON_F64: f64;

    /// Converts from f64, rounding to nearest.
    fn from_f64_lossy(x: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64_exact(self) -> f64;
    /// Reinterprets a slice of `Self` as f32 if `Self` is f32.
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]>;
    /// Reinterprets a mutable slice of `Self` as f32 if `Self` is f32.
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// Reinterprets a slice of `Self` as f64 if `Self` is f64.
    fn as_f64_slice(s: &[Self]) -> Option<&[f64]>;
    /// Reinterprets a mutable slice of `Self` as f64 if `Self` is f64.
    fn as_f64_slice_mut(s: &mut [Self]) -> Option<&mut [f64]>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Scalar for f32 {
    const DTYPE: DType = DType::F32;
    const EPSILON_F64: f64 = f32::EPSILON as f64;
    fn from_f64_lossy(x: f64) -> Self {
        x as f32
    }
    fn to_f64_exact(self) -> f64 {
        self as f64
    }
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_slice_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
    fn as_f64_slice_mut(_: &mut [Self]) -> Option<&mut [f64]> {
        None
    }
}

impl Scalar for f64 {
    const DTYPE: DType = DType::F64;
    const EPSILON_F64: f64 = f64::EPSILON;
    fn from_f64_lossy(x: f64) -> Self {
        x
    }
    fn to_f64_exact(self) -> f64 {
        self
    }
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_slice_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    fn as_f64_slice(s: &[Self]) -> Option<&[f64]> {
        Some(s)
    }
    fn as_f64_slice_mut(s: &mut [Self]) -> Option<&mut [f64]> {
        Some(s)
    }
}
