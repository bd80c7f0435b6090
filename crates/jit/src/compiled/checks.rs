//! Checking the buffers of a call against the compiled graph's [`Spec`]s
//! before the code is entered: count, dtype, shape, contiguity.

use super::Spec;
use crate::{Error, Result};
use cranelora_graph::TensorData;

pub(super) fn count(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::Count {
            what,
            expected,
            actual,
        })
    }
}

/// Checks dtype and shape without allocating (`TensorData::shape` would).
pub(super) fn check(what: &'static str, spec: &Spec, t: &TensorData) -> Result<()> {
    check_named(what, &spec.name, spec, t)
}

/// [`check`], naming the buffer `name` in the error.
pub(super) fn check_named(
    what: &'static str,
    name: &str,
    spec: &Spec,
    t: &TensorData,
) -> Result<()> {
    let dims = match t {
        TensorData::F32(a) => a.shape(),
        TensorData::F64(a) => a.shape(),
        TensorData::I64(a) => a.shape(),
    };
    if t.dtype() != spec.dtype || !same_dims(dims, spec.shape.dims()) {
        return Err(mismatch(what, name, spec, t));
    }
    Ok(())
}

/// `a == b` without the `memcmp` call slice equality makes: tensors have a
/// few dims, and this runs for every buffer of every call.
#[inline]
fn same_dims(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

#[cold]
fn mismatch(what: &'static str, name: &str, spec: &Spec, t: &TensorData) -> Error {
    Error::Mismatch {
        what,
        name: name.into(),
        expected_shape: spec.shape.clone(),
        expected_dtype: spec.dtype,
        actual_shape: t.shape(),
        actual_dtype: t.dtype(),
    }
}

/// Checks a bound buffer (`name` in the bindings) against `spec`.
pub(super) fn check_bound(
    what: &'static str,
    spec: &Spec,
    t: Option<&TensorData>,
    name: &str,
) -> Result<()> {
    let t = t.ok_or_else(|| Error::MissingBinding { name: name.into() })?;
    check_named(what, name, spec, t)?;
    match data_ptr(t) {
        Some(_) => Ok(()),
        None => Err(Error::NotContiguous {
            what,
            name: name.into(),
        }),
    }
}

/// Checks a bound buffer for writing and returns its address.
pub(super) fn bound_ptr(
    what: &'static str,
    spec: &Spec,
    t: Option<&mut TensorData>,
    name: &str,
) -> Result<usize> {
    let t = t.ok_or_else(|| Error::MissingBinding { name: name.into() })?;
    check_named(what, name, spec, t)?;
    match data_ptr_mut(t) {
        Some(p) => Ok(p as usize),
        None => Err(Error::NotContiguous {
            what,
            name: name.into(),
        }),
    }
}

pub(super) fn not_contiguous(what: &'static str, spec: &Spec) -> Error {
    Error::NotContiguous {
        what,
        name: spec.name.clone(),
    }
}

/// The first element's address, if the data is contiguous in row-major order.
pub(crate) fn data_ptr(t: &TensorData) -> Option<*const u8> {
    match t {
        TensorData::F32(a) => a.as_slice().map(|s| s.as_ptr().cast::<u8>()),
        TensorData::F64(a) => a.as_slice().map(|s| s.as_ptr().cast::<u8>()),
        TensorData::I64(a) => a.as_slice().map(|s| s.as_ptr().cast::<u8>()),
    }
}

/// [`data_ptr`] for writing.
pub(super) fn data_ptr_mut(t: &mut TensorData) -> Option<*mut u8> {
    match t {
        TensorData::F32(a) => a.as_slice_mut().map(|s| s.as_mut_ptr().cast::<u8>()),
        TensorData::F64(a) => a.as_slice_mut().map(|s| s.as_mut_ptr().cast::<u8>()),
        TensorData::I64(a) => a.as_slice_mut().map(|s| s.as_mut_ptr().cast::<u8>()),
    }
}
