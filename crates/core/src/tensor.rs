//! `Tensor<T>`: an n-dimensional array of f32 or f64 over `ndarray::ArrayD`,
//! and `IdTensor`, its i64 counterpart for token ids.
//!
//! Operations that can fail on user input (shapes that do not broadcast or
//! chain, lengths that do not match) return [`Result`]. Broadcasting follows
//! numpy: shapes are aligned at their last axis and a size-1 axis stretches.
//!
//! ```
//! use cranelora_core::Tensor;
//! let a = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
//! let b = Tensor::from_vec(vec![10.0, 20.0], &[2]).unwrap();
//! assert_eq!(a.add(&b).unwrap().to_vec(), vec![11.0, 22.0, 13.0, 24.0]);
//! assert_eq!(a.matmul(&a).unwrap().to_vec(), vec![7.0, 10.0, 15.0, 22.0]);
//! ```

use crate::{Error, Result, Rng};
use cranelora_kernels::gemm::{gemm_alloc, MatMut, MatRef, Rhs};
use cranelora_kernels::Scalar;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};

/// A dense n-dimensional float tensor (f32 or f64).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    data: ArrayD<T>,
}

/// A dense n-dimensional tensor of i64 ids (embedding lookups, class labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTensor {
    data: ArrayD<i64>,
}

fn shape_len(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The numpy broadcast of two shapes, or `None` if they do not broadcast.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        let off = n - s.len();
        if i < off {
            1
        } else {
            s[i - off]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

impl<T: Scalar> Tensor<T> {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::from_array(ArrayD::zeros(IxDyn(shape)))
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize]) -> Self {
        Self::full(shape, T::one())
    }

    /// A tensor with every element `value`.
    pub fn full(shape: &[usize], value: T) -> Self {
        Self::from_array(ArrayD::from_elem(IxDyn(shape), value))
    }

    /// A 0-dimensional tensor holding `value`.
    pub fn scalar(value: T) -> Self {
        Self::full(&[], value)
    }

    /// A tensor from row-major data.
    ///
    /// # Errors
    /// [`Error::Length`] if `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        let expected = shape_len(shape);
        if data.len() != expected {
            return Err(Error::Length {
                path: String::new(),
                what: format!("tensor of shape {shape:?}"),
                expected,
                actual: data.len(),
            });
        }
        let data = ArrayD::from_shape_vec(IxDyn(shape), data)
            .expect("internal: length was checked against the shape");
        Ok(Self { data })
    }

    /// Wraps an ndarray array (no copy).
    pub fn from_array(data: ArrayD<T>) -> Self {
        Self { data }
    }

    /// Normal samples with the given mean and standard deviation.
    pub fn random_normal(shape: &[usize], mean: f64, std: f64, rng: &mut Rng) -> Self {
        let data = (0..shape_len(shape))
            .map(|_| T::from_f64_lossy(mean + std * rng.normal()))
            .collect();
        Self::from_vec(data, shape).expect("internal: generated exactly shape_len elements")
    }

    /// Uniform samples in `[lo, hi)`.
    pub fn random_uniform(shape: &[usize], lo: f64, hi: f64, rng: &mut Rng) -> Self {
        let data = (0..shape_len(shape))
            .map(|_| T::from_f64_lossy(rng.uniform_in(lo, hi)))
            .collect();
        Self::from_vec(data, shape).expect("internal: generated exactly shape_len elements")
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.data.shape()
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.data.ndim()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The underlying array.
    pub fn array(&self) -> &ArrayD<T> {
        &self.data
    }

    /// The underlying array, mutably.
    pub fn array_mut(&mut self) -> &mut ArrayD<T> {
        &mut self.data
    }

    /// Unwraps into the ndarray array (no copy).
    pub fn into_array(self) -> ArrayD<T> {
        self.data
    }

    /// A zero-copy ndarray view.
    pub fn view(&self) -> ArrayViewD<'_, T> {
        self.data.view()
    }

    /// A zero-copy mutable ndarray view.
    pub fn view_mut(&mut self) -> ArrayViewMutD<'_, T> {
        self.data.view_mut()
    }

    /// The elements in row-major order (a copy).
    pub fn to_vec(&self) -> Vec<T> {
        self.data.iter().copied().collect()
    }

    /// The elements as a row-major slice, when stored contiguously.
    pub fn as_slice(&self) -> Option<&[T]> {
        self.data.as_slice()
    }

    /// The elements as a mutable row-major slice, when stored contiguously.
    pub fn as_slice_mut(&mut self) -> Option<&mut [T]> {
        self.data.as_slice_mut()
    }

    /// Row-major contiguous storage (a copy only if the layout is not already standard).
    pub fn into_contiguous(self) -> Self {
        if self.data.is_standard_layout() {
            self
        } else {
            Self::from_array(self.data.as_standard_layout().into_owned())
        }
    }

    /// Applies `f` to every element.
    pub fn map(&self, f: impl Fn(T) -> T) -> Self {
        Self::from_array(self.data.mapv(f))
    }

    /// Every element multiplied by `s`.
    pub fn scale(&self, s: T) -> Self {
        Self::from_array(&self.data * s)
    }

    fn broadcast_op(&self, other: &Self, op: &str, f: impl Fn(T, T) -> T) -> Result<Self> {
        let shape =
            broadcast_shapes(self.shape(), other.shape()).ok_or_else(|| Error::Incompatible {
                path: String::new(),
                op: op.to_string(),
                lhs: self.shape().to_vec(),
                rhs: other.shape().to_vec(),
            })?;
        let a = self
            .data
            .broadcast(IxDyn(&shape))
            .expect("internal: shape was broadcast");
        let b = other
            .data
            .broadcast(IxDyn(&shape))
            .expect("internal: shape was broadcast");
        Ok(Self::from_array(
            ndarray::Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)),
        ))
    }

    /// Elementwise `self + other` with broadcasting.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if the shapes do not broadcast.
    pub fn add(&self, other: &Self) -> Result<Self> {
        self.broadcast_op(other, "add", |a, b| a + b)
    }

    /// Elementwise `self − other` with broadcasting.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if the shapes do not broadcast.
    pub fn sub(&self, other: &Self) -> Result<Self> {
        self.broadcast_op(other, "sub", |a, b| a - b)
    }

    /// Elementwise `self · other` with broadcasting.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if the shapes do not broadcast.
    pub fn mul(&self, other: &Self) -> Result<Self> {
        self.broadcast_op(other, "mul", |a, b| a * b)
    }

    /// Elementwise `self / other` with broadcasting.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if the shapes do not broadcast.
    pub fn div(&self, other: &Self) -> Result<Self> {
        self.broadcast_op(other, "div", |a, b| a / b)
    }

    /// `self += other` where `other` broadcasts to `self`'s shape.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if `other` does not broadcast to `self`.
    pub fn add_assign(&mut self, other: &Self) -> Result<()> {
        let b = other
            .data
            .broadcast(self.data.raw_dim())
            .ok_or_else(|| Error::Incompatible {
                path: String::new(),
                op: "add_assign".to_string(),
                lhs: self.shape().to_vec(),
                rhs: other.shape().to_vec(),
            })?;
        self.data.zip_mut_with(&b, |x, &y| *x += y);
        Ok(())
    }

    fn check_axes(&self, axes: &[usize], op: &str) -> Result<()> {
        let mut seen = vec![false; self.ndim()];
        for &a in axes {
            if a >= self.ndim() || seen[a] {
                return Err(Error::shape(
                    op,
                    &format!("axes {axes:?}"),
                    format!("distinct axes below {}", self.ndim()),
                    self.shape(),
                ));
            }
            seen[a] = true;
        }
        Ok(())
    }

    fn reduce(
        &self,
        axes: &[usize],
        keepdims: bool,
        op: &str,
        f: impl Fn(ArrayViewD<'_, T>, Axis) -> ArrayD<T>,
    ) -> Result<Self> {
        self.check_axes(axes, op)?;
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        let mut out = self.data.clone();
        // Reduce the highest axis first so lower axis numbers stay valid.
        for &a in sorted.iter().rev() {
            out = f(out.view(), Axis(a));
            if keepdims {
                out.insert_axis_inplace(Axis(a));
            }
        }
        Ok(Self::from_array(out))
    }

    /// Sum over `axes` (kept as size 1 when `keepdims`).
    ///
    /// # Errors
    /// [`Error::Shape`] for an axis out of range or repeated.
    pub fn sum_axes(&self, axes: &[usize], keepdims: bool) -> Result<Self> {
        self.reduce(axes, keepdims, "sum", |v, a| v.sum_axis(a))
    }

    /// Mean over `axes`.
    ///
    /// # Errors
    /// [`Error::Shape`] for an axis out of range or repeated.
    pub fn mean_axes(&self, axes: &[usize], keepdims: bool) -> Result<Self> {
        let count: usize = axes.iter().filter_map(|&a| self.shape().get(a)).product();
        let n = T::from_usize(count.max(1)).expect("internal: counts fit in a float");
        Ok(self.sum_axes(axes, keepdims)?.map(|v| v / n))
    }

    /// Maximum over `axes` (NaN propagates).
    ///
    /// # Errors
    /// [`Error::Shape`] for an axis out of range or repeated, or an empty axis.
    pub fn max_axes(&self, axes: &[usize], keepdims: bool) -> Result<Self> {
        if axes.iter().any(|&a| self.shape().get(a) == Some(&0)) {
            return Err(Error::shape(
                "max",
                "input",
                "non-empty reduced axes",
                self.shape(),
            ));
        }
        self.reduce(axes, keepdims, "max", |v, a| {
            v.fold_axis(a, T::neg_infinity(), |&m, &x| {
                // The first NaN wins and stays: max propagates NaN.
                if m.is_nan() || !(x.is_nan() || x > m) {
                    m
                } else {
                    x
                }
            })
        })
    }

    /// Sum of all elements.
    pub fn sum(&self) -> T {
        self.data.sum()
    }

    /// Mean of all elements (NaN for an empty tensor).
    pub fn mean(&self) -> T {
        self.sum() / T::from_usize(self.len()).expect("internal: counts fit in a float")
    }

    /// The same elements under a new shape (row-major order).
    ///
    /// # Errors
    /// [`Error::Length`] if the element counts differ.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        Self::from_vec(self.to_vec(), shape)
    }

    /// Permutes the axes: axis `i` of the result is axis `perm[i]` of `self`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `perm` is not a permutation of `0..ndim`.
    pub fn transpose(&self, perm: &[usize]) -> Result<Self> {
        if perm.len() != self.ndim() {
            return Err(Error::shape(
                "transpose",
                &format!("permutation {perm:?}"),
                format!("{} axes", perm.len()),
                self.shape(),
            ));
        }
        self.check_axes(perm, "transpose")?;
        Ok(Self::from_array(
            self.data
                .view()
                .permuted_axes(IxDyn(perm))
                .as_standard_layout()
                .into_owned(),
        ))
    }

    /// Swaps the last two axes (the matrix transpose of each batch entry).
    ///
    /// # Errors
    /// [`Error::Shape`] for fewer than two axes.
    pub fn t(&self) -> Result<Self> {
        let n = self.ndim();
        if n < 2 {
            return Err(Error::shape("t", "input", "at least 2 axes", self.shape()));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        perm.swap(n - 2, n - 1);
        self.transpose(&perm)
    }

    /// Matrix product. `self` is `[.., m, k]`, `other` `[.., k, n]`; leading
    /// (batch) axes broadcast like numpy's `matmul`. Two 2-D operands give `[m, n]`.
    ///
    /// # Errors
    /// [`Error::Incompatible`] if either has fewer than 2 axes, the inner
    /// sizes differ, or the batch axes do not broadcast.
    pub fn matmul(&self, other: &Self) -> Result<Self> {
        let bad = || Error::Incompatible {
            path: String::new(),
            op: "matmul".to_string(),
            lhs: self.shape().to_vec(),
            rhs: other.shape().to_vec(),
        };
        let (sa, sb) = (self.shape(), other.shape());
        if sa.len() < 2 || sb.len() < 2 || sa[sa.len() - 1] != sb[sb.len() - 2] {
            return Err(bad());
        }
        let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
        let batch = broadcast_shapes(&sa[..sa.len() - 2], &sb[..sb.len() - 2]).ok_or_else(bad)?;
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        let mut out = vec![T::zero(); shape_len(&out_shape)];
        if sb.len() == 2 {
            // A 2-D right operand: all batch rows of `self` form one m'×k matrix.
            let a = self.data.as_standard_layout();
            let b = other.data.as_standard_layout();
            let rows = shape_len(&sa[..sa.len() - 1]);
            gemm_slices(contiguous(&a), rows, k, contiguous(&b), n, &mut out)?;
        } else {
            let mut sa_full = batch.clone();
            sa_full.extend([m, k]);
            let mut sb_full = batch.clone();
            sb_full.extend([k, n]);
            let a = self.data.broadcast(IxDyn(&sa_full)).ok_or_else(bad)?;
            let b = other.data.broadcast(IxDyn(&sb_full)).ok_or_else(bad)?;
            let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
            let (a, b) = (contiguous(&a), contiguous(&b));
            for i in 0..shape_len(&batch) {
                gemm_slices(
                    &a[i * m * k..(i + 1) * m * k],
                    m,
                    k,
                    &b[i * k * n..(i + 1) * k * n],
                    n,
                    &mut out[i * m * n..(i + 1) * m * n],
                )?;
            }
        }
        Self::from_vec(out, &out_shape)
    }

    /// 2-D product with either operand transposed without a copy:
    /// `op(self) · op(other)` where `op` transposes when its flag is set.
    ///
    /// # Errors
    /// [`Error::Incompatible`] unless both are 2-D and the inner sizes agree.
    pub fn matmul_t(
        &self,
        transpose_self: bool,
        other: &Self,
        transpose_other: bool,
    ) -> Result<Self> {
        let bad = || Error::Incompatible {
            path: String::new(),
            op: format!("matmul(transpose {transpose_self}, {transpose_other})"),
            lhs: self.shape().to_vec(),
            rhs: other.shape().to_vec(),
        };
        if self.ndim() != 2 || other.ndim() != 2 {
            return Err(bad());
        }
        let a = self.data.as_standard_layout();
        let b = other.data.as_standard_layout();
        let (a, b) = (
            mat_view(&a, transpose_self)?,
            mat_view(&b, transpose_other)?,
        );
        if a.cols() != b.rows() {
            return Err(bad());
        }
        let (m, n) = (a.rows(), b.cols());
        let mut out = vec![T::zero(); m * n];
        gemm_alloc(
            T::one(),
            a,
            Rhs::Mat(b),
            T::zero(),
            MatMut::new(&mut out, m, n)?,
        )?;
        Self::from_vec(out, &[m, n])
    }

    /// Converts every element to another float type.
    pub fn cast<U: Scalar>(&self) -> Tensor<U> {
        Tensor::from_array(self.data.mapv(|v| U::from_f64_lossy(v.to_f64_exact())))
    }
}

/// A 2-D standard-layout array as a kernel view, transposed when `t`.
fn mat_view<'a, T: Scalar>(
    x: &'a ndarray::CowArray<'_, T, IxDyn>,
    t: bool,
) -> Result<MatRef<'a, T>> {
    let m = MatRef::new(contiguous(x), x.shape()[0], x.shape()[1])?;
    Ok(if t { m.t() } else { m })
}

fn contiguous<'a, T>(a: &'a ndarray::CowArray<'_, T, IxDyn>) -> &'a [T] {
    a.as_slice()
        .expect("internal: standard layout is contiguous")
}

/// `out (m×n) = a (m×k) · b (k×n)`, all row-major, through the shared kernel.
fn gemm_slices<T: Scalar>(
    a: &[T],
    m: usize,
    k: usize,
    b: &[T],
    n: usize,
    out: &mut [T],
) -> Result<()> {
    gemm_alloc(
        T::one(),
        MatRef::new(a, m, k)?,
        Rhs::Mat(MatRef::new(b, k, n)?),
        T::zero(),
        MatMut::new(out, m, n)?,
    )?;
    Ok(())
}

impl IdTensor {
    /// An id tensor from row-major data.
    ///
    /// # Errors
    /// [`Error::Length`] if `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<i64>, shape: &[usize]) -> Result<Self> {
        let expected = shape_len(shape);
        if data.len() != expected {
            return Err(Error::Length {
                path: String::new(),
                what: format!("id tensor of shape {shape:?}"),
                expected,
                actual: data.len(),
            });
        }
        let data = ArrayD::from_shape_vec(IxDyn(shape), data)
            .expect("internal: length was checked against the shape");
        Ok(Self { data })
    }

    /// Wraps an ndarray array (no copy).
    pub fn from_array(data: ArrayD<i64>) -> Self {
        Self { data }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.data.shape()
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The underlying array.
    pub fn array(&self) -> &ArrayD<i64> {
        &self.data
    }

    /// The ids in row-major order (a copy).
    pub fn to_vec(&self) -> Vec<i64> {
        self.data.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelora_kernels::testing::assert_close;

    fn t(data: &[f64], shape: &[usize]) -> Tensor<f64> {
        Tensor::from_vec(data.to_vec(), shape).unwrap()
    }

    #[test]
    fn from_vec_checks_length() {
        let err = Tensor::<f32>::from_vec(vec![1.0; 5], &[2, 3]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Length {
                    expected: 6,
                    actual: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(IdTensor::from_vec(vec![1], &[2]).is_err());
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]), Some(vec![2, 4, 3]));
        assert_eq!(broadcast_shapes(&[3], &[]), Some(vec![3]));
        assert_eq!(broadcast_shapes(&[2, 3], &[3, 2]), None);
        let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let col = t(&[10.0, 20.0], &[2, 1]);
        assert_eq!(
            a.add(&col).unwrap().to_vec(),
            vec![11.0, 12.0, 13.0, 24.0, 25.0, 26.0]
        );
        assert_eq!(
            a.mul(&t(&[2.0], &[])).unwrap().to_vec(),
            vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
        assert!(matches!(
            a.sub(&t(&[1.0, 2.0], &[2])),
            Err(Error::Incompatible { .. })
        ));
    }

    #[test]
    fn reductions_over_axes() {
        let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(
            a.sum_axes(&[0], false).unwrap().to_vec(),
            vec![5.0, 7.0, 9.0]
        );
        assert_eq!(a.sum_axes(&[1], true).unwrap().shape(), &[2, 1]);
        assert_eq!(a.mean_axes(&[0, 1], false).unwrap().to_vec(), vec![3.5]);
        assert_eq!(a.max_axes(&[1], false).unwrap().to_vec(), vec![3.0, 6.0]);
        assert!(a.sum_axes(&[2], false).is_err());
        assert!(a.sum_axes(&[0, 0], false).is_err());
        let n = t(&[1.0, f64::NAN], &[2]);
        assert!(n.max_axes(&[0], false).unwrap().to_vec()[0].is_nan());
    }

    #[test]
    fn reshape_and_transpose() {
        let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        assert_eq!(a.t().unwrap().to_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(a.reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
        assert!(a.reshape(&[4]).is_err());
        assert!(a.transpose(&[0, 0]).is_err());
    }

    /// The product by definition.
    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matmul_2d_batched_and_broadcast_match_the_definition() {
        let mut rng = Rng::new(1);
        let a = Tensor::<f64>::random_normal(&[2, 3, 4, 5], 0.0, 1.0, &mut rng);
        let b = Tensor::<f64>::random_normal(&[3, 5, 2], 0.0, 1.0, &mut rng);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[2, 3, 4, 2]);
        let (av, bv, cv) = (a.to_vec(), b.to_vec(), c.to_vec());
        for i in 0..2 {
            for j in 0..3 {
                let ai = &av[(i * 3 + j) * 20..(i * 3 + j + 1) * 20];
                let bi = &bv[j * 10..(j + 1) * 10];
                let ci = &cv[(i * 3 + j) * 8..(i * 3 + j + 1) * 8];
                assert_close(ci, &naive(ai, bi, 4, 5, 2), 1e-14, 0.0);
            }
        }
        let w = Tensor::<f64>::random_normal(&[5, 3], 0.0, 1.0, &mut rng);
        let y = a.matmul(&w).unwrap();
        assert_eq!(y.shape(), &[2, 3, 4, 3]);
        assert_close(&y.to_vec(), &naive(&av, &w.to_vec(), 24, 5, 3), 1e-14, 0.0);
        assert!(a.matmul(&a).is_err());
    }
}
