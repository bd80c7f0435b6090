//! Element-level semantics shared by the interpreter's arms: the [`Elem`]
//! trait over f32, f64 and i64, NaN rules, masks, casts and the kernel calls.

use crate::{DType, Value};
use cranelora_kernels::math::{apply, Func};
use cranelora_kernels::Scalar;
use ndarray::ArrayD;
use std::fmt::Debug;

/// An element type of a graph value, with the arithmetic the ops need.
/// Integer arithmetic wraps; float arithmetic is IEEE.
pub(super) trait Elem: Copy + PartialOrd + Debug + Send + Sync + 'static {
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The identity of max: −∞ or `i64::MIN`.
    const LOWEST: Self;
    /// The array of this type inside `v`, if `v` has this dtype.
    fn of(v: &Value) -> Option<&ArrayD<Self>>;
    /// `x` converted with `as`.
    fn from_f64(x: f64) -> Self;
    /// Whether the value is NaN (never for integers).
    fn is_nan(self) -> bool;
    /// a + b.
    fn add(self, b: Self) -> Self;
    /// a − b.
    fn sub(self, b: Self) -> Self;
    /// a · b.
    fn mul(self, b: Self) -> Self;
    /// −a.
    fn neg(self) -> Self;
    /// |a|.
    fn abs(self) -> Self;
}

macro_rules! float_elem {
    ($t:ty, $variant:ident) => {
        impl Elem for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            fn of(v: &Value) -> Option<&ArrayD<Self>> {
                match v {
                    Value::$variant(a) => Some(a),
                    _ => None,
                }
            }
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn add(self, b: Self) -> Self {
                self + b
            }
            fn sub(self, b: Self) -> Self {
                self - b
            }
            fn mul(self, b: Self) -> Self {
                self * b
            }
            fn neg(self) -> Self {
                -self
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
        }
    };
}

float_elem!(f32, F32);
float_elem!(f64, F64);

impl Elem for i64 {
    const ZERO: Self = 0;
    const ONE: Self = 1;
    const LOWEST: Self = i64::MIN;
    fn of(v: &Value) -> Option<&ArrayD<Self>> {
        v.as_i64()
    }
    fn from_f64(x: f64) -> Self {
        x as i64
    }
    fn is_nan(self) -> bool {
        false
    }
    fn add(self, b: Self) -> Self {
        self.wrapping_add(b)
    }
    fn sub(self, b: Self) -> Self {
        self.wrapping_sub(b)
    }
    fn mul(self, b: Self) -> Self {
        self.wrapping_mul(b)
    }
    fn neg(self) -> Self {
        self.wrapping_neg()
    }
    fn abs(self) -> Self {
        self.wrapping_abs()
    }
}

/// The array of `v` as the element type the caller needs.
pub(super) fn typed<E: Elem>(v: &Value) -> &ArrayD<E> {
    E::of(v).expect("internal: the verifier checked that operands share a dtype")
}

/// 1 for true, 0 for false: the mask encoding of comparisons.
pub(super) fn mask<E: Elem>(b: bool) -> E {
    if b {
        E::ONE
    } else {
        E::ZERO
    }
}

/// max(a, b), NaN if either is NaN.
pub(super) fn max_nan<E: Elem>(a: E, b: E) -> E {
    match () {
        _ if a.is_nan() => a,
        _ if b.is_nan() || b > a => b,
        _ => a,
    }
}

/// min(a, b), NaN if either is NaN.
pub(super) fn min_nan<E: Elem>(a: E, b: E) -> E {
    match () {
        _ if a.is_nan() => a,
        _ if b.is_nan() || b < a => b,
        _ => a,
    }
}

/// max(x, 0), keeping NaN (and giving +0 for −0).
pub(super) fn relu<E: Elem>(x: E) -> E {
    if x > E::ZERO || x.is_nan() {
        x
    } else {
        E::ZERO
    }
}

/// −1, 0 or 1; zeros and NaN are returned as they are.
pub(super) fn sign<E: Elem>(x: E) -> E {
    match () {
        _ if x > E::ZERO => E::ONE,
        _ if x < E::ZERO => E::ONE.neg(),
        _ => x,
    }
}

/// s·x with s rounded to the element type.
pub(super) fn scale<T: Scalar>(a: &ArrayD<T>, s: f64) -> ArrayD<T> {
    let s = T::from_f64_lossy(s);
    a.mapv(|v| v * s)
}

/// The truth value of a Where condition: nonzero (NaN included) is true.
pub(super) fn truthy(v: &Value) -> ArrayD<bool> {
    match v {
        Value::F32(a) => a.mapv(|x| x != 0.0),
        Value::F64(a) => a.mapv(|x| x != 0.0),
        Value::I64(a) => a.mapv(|x| x != 0),
    }
}

/// Conversion with Rust's `as`: float→i64 truncates toward zero and
/// saturates, NaN → 0; f64→f32 rounds to nearest.
pub(super) fn cast(v: &Value, to: DType) -> Value {
    match (v, to) {
        (Value::F32(a), DType::F32) => Value::F32(a.clone()),
        (Value::F32(a), DType::F64) => Value::F64(a.mapv(f64::from)),
        (Value::F32(a), DType::I64) => Value::I64(a.mapv(|x| x as i64)),
        (Value::F64(a), DType::F32) => Value::F32(a.mapv(|x| x as f32)),
        (Value::F64(a), DType::F64) => Value::F64(a.clone()),
        (Value::F64(a), DType::I64) => Value::I64(a.mapv(|x| x as i64)),
        (Value::I64(a), DType::F32) => Value::F32(a.mapv(|x| x as f32)),
        (Value::I64(a), DType::F64) => Value::F64(a.mapv(|x| x as f64)),
        (Value::I64(a), DType::I64) => Value::I64(a.clone()),
    }
}

/// `f` applied by the kernels crate's vectorized math.
pub(super) fn kernel<T: Scalar>(f: Func, a: &ArrayD<T>) -> ArrayD<T> {
    let src = a.as_standard_layout();
    let src = src
        .as_slice()
        .expect("internal: standard layout is contiguous");
    let mut out = ArrayD::zeros(a.raw_dim());
    let dst = out
        .as_slice_mut()
        .expect("internal: a new array is contiguous");
    apply(f, src, dst).expect("internal: equal lengths");
    out
}
