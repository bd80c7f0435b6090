//! `.safetensors` files: reading (f32, f64, and f16 / bf16 converted),
//! writing (f32 or f64, atomically), and a model's weights by name.

use super::atomic::write_file_atomically;
use super::mapping::{entries, Entry, Naming};
use super::{io_error, nearest};
use crate::layer::Layer;
use crate::{IdTensor, Result, Tensor};
use cranelora_kernels::{DType, Scalar};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Every tensor of a `.safetensors` file, converted to `T`.
///
/// F32 and F64 convert exactly to f64 (F64 → f32 rounds to nearest); F16
/// and BF16 are widened exactly.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the file cannot be read, is not a
/// valid safetensors file, or holds a non-float tensor (naming the key and
/// its dtype).
pub fn read_safetensors<T: Scalar>(path: &Path) -> Result<BTreeMap<String, Tensor<T>>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, format!("cannot read: {e}")))?;
    parse_safetensors(&bytes, path)
}

/// [`read_safetensors`] on bytes in memory; `origin` names them in errors.
///
/// # Errors
/// As [`read_safetensors`]. Never panics, whatever the bytes.
pub fn parse_safetensors<T: Scalar>(
    bytes: &[u8],
    origin: &Path,
) -> Result<BTreeMap<String, Tensor<T>>> {
    parse_safetensors_except(bytes, origin, |_| false)
}

/// [`parse_safetensors`] leaving out the keys `skip` selects, before their
/// dtype is looked at: how a loader passes over integer buffers such as
/// BERT's `embeddings.position_ids`.
///
/// # Errors
/// As [`read_safetensors`], for the keys kept. Never panics, whatever the bytes.
pub fn parse_safetensors_except<T: Scalar>(
    bytes: &[u8],
    origin: &Path,
    skip: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Tensor<T>>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| io_error(origin, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter().filter(|(name, _)| !skip(name)) {
        let data = view.data();
        let bad = |what: String| io_error(origin, format!("key `{name}`: {what}"));
        let width = match view.dtype() {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not a float type (expected F32, F64, F16 or BF16)"
                )))
            }
        };
        let count = view
            .shape()
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|n| n.checked_mul(width) == Some(data.len()))
            .ok_or_else(|| {
                bad(format!(
                    "shape {:?} of {:?} does not match its {} data bytes",
                    view.shape(),
                    view.dtype(),
                    data.len()
                ))
            })?;
        let values: Vec<T> = data
            .chunks_exact(width)
            .map(|c| T::from_f64_lossy(decode(view.dtype(), c)))
            .collect();
        debug_assert_eq!(values.len(), count);
        let t = Tensor::from_vec(values, view.shape()).map_err(|e| bad(e.to_string()))?;
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// The integer tensors (I64, I32) of a `.safetensors` file as ids, skipping
/// every other dtype: how token ids and attention masks written by Python
/// are read.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) naming the file if it cannot be read or
/// is not a valid safetensors file.
pub fn read_safetensors_ids(path: &Path) -> Result<BTreeMap<String, IdTensor>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io_error(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("internal: 8-byte chunk")))
                .collect(),
            Dtype::I32 => view
                .data()
                .chunks_exact(4)
                .map(|c| {
                    i64::from(i32::from_le_bytes(
                        c.try_into().expect("internal: 4-byte chunk"),
                    ))
                })
                .collect(),
            _ => continue,
        };
        let t = IdTensor::from_vec(values, view.shape())
            .map_err(|e| io_error(path, format!("key `{name}`: {e}")))?;
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// One little-endian element as f64 (exact for every float dtype read here).
fn decode(dtype: Dtype, c: &[u8]) -> f64 {
    let bytes2 = || [c[0], c[1]];
    match dtype {
        Dtype::F64 => f64::from_le_bytes(c.try_into().expect("internal: 8-byte chunk")),
        Dtype::F32 => f64::from(f32::from_le_bytes(
            c.try_into().expect("internal: 4-byte chunk"),
        )),
        Dtype::F16 => f64::from(f16_to_f32(u16::from_le_bytes(bytes2()))),
        _ => f64::from(f32::from_bits(
            u32::from(u16::from_le_bytes(bytes2())) << 16,
        )),
    }
}

/// IEEE binary16 → f32 (exact: every half is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: value = mant · 2⁻²⁴, exact in f32.
        (0, m) => return sign_of(sign) * (m as f32) * 2f32.powi(-24),
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn sign_of(sign_bit: u32) -> f32 {
    if sign_bit == 0 {
        1.0
    } else {
        -1.0
    }
}

/// A tensor's little-endian bytes, as the safetensors crate's `View`.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn encode<T: Scalar>(t: &Tensor<T>) -> Bytes {
    let (dtype, data) = if T::DTYPE == DType::F64 {
        let d = t
            .array()
            .iter()
            .flat_map(|v| v.to_f64_exact().to_le_bytes())
            .collect();
        (Dtype::F64, d)
    } else {
        // f32 → f64 → f32 is exact.
        let d = t
            .array()
            .iter()
            .flat_map(|v| (v.to_f64_exact() as f32).to_le_bytes())
            .collect();
        (Dtype::F32, d)
    };
    Bytes {
        dtype,
        shape: t.shape().to_vec(),
        data,
    }
}

/// Serializes tensors (in `T`'s dtype) with optional string metadata.
pub(crate) fn serialize<T: Scalar>(
    tensors: &BTreeMap<String, Tensor<T>>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), encode(t)))
        .collect();
    safetensors::tensor::serialize(encoded.iter().map(|(k, b)| (k.as_str(), b)), metadata)
        .map_err(|e| io_error(path, format!("cannot serialize: {e}")))
}

/// Writes tensors as a `.safetensors` file (f32 or f64 as `T`), atomically,
/// with PyTorch's `{"format": "pt"}` metadata.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the file cannot be written.
pub fn write_safetensors<T: Scalar>(
    path: &Path,
    tensors: &BTreeMap<String, Tensor<T>>,
) -> Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = serialize(tensors, Some(meta), path)?;
    write_file_atomically(path, &bytes)
}

/// Saves every weight of `model` (trainable or not) to `path`, named and laid
/// out per `naming`.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) if the file cannot be written.
pub fn save_safetensors<T: Scalar>(
    model: &dyn Layer<T>,
    path: &Path,
    naming: Naming,
) -> Result<()> {
    let tensors = super::named_tensors(model, naming)?.into_iter().collect();
    write_safetensors(path, &tensors)
}

/// Loads weights from `path` into `model` by name, per `naming`. With
/// `strict`, every weight of the model must be in the file and every key of
/// the file must be a weight of the model; without, missing weights keep
/// their values and unknown keys are ignored. Shapes must always match.
/// Nothing is changed when an error is returned.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) naming the file and the key: unreadable
/// or damaged file, non-float dtype, a shape that differs (expected and
/// actual), a missing weight, or an unknown key (with the nearest names).
pub fn load_safetensors<T: Scalar>(
    model: &mut dyn Layer<T>,
    path: &Path,
    naming: Naming,
    strict: bool,
) -> Result<()> {
    let file = read_safetensors::<T>(path)?;
    load_tensors(model, &file, naming, strict, path)
}

/// [`load_safetensors`] from tensors already read (keyed as the file keys
/// them); `origin` names the file in errors.
///
/// # Errors
/// As [`load_safetensors`]. Nothing is changed when an error is returned.
pub fn load_tensors<T: Scalar>(
    model: &mut dyn Layer<T>,
    file: &BTreeMap<String, Tensor<T>>,
    naming: Naming,
    strict: bool,
    origin: &Path,
) -> Result<()> {
    let path = origin;
    let entries = entries(model, naming);
    let mut weights = HashMap::new();
    for e in &entries {
        match file.get(&e.theirs) {
            Some(t) => {
                weights.insert(e.ours.clone(), convert(e, t, path)?);
            }
            None if strict => {
                return Err(io_error(
                    path,
                    format!(
                        "key `{}` (shape {:?}) is missing",
                        e.theirs,
                        e.their_shape()
                    ),
                ))
            }
            None => {}
        }
    }
    if strict {
        let known: Vec<&str> = entries.iter().map(|e| e.theirs.as_str()).collect();
        if let Some(k) = file.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(io_error(
                path,
                format!(
                    "key `{k}` is not a weight of the model; nearest: {}",
                    nearest(k, known.iter().copied(), 3).join(", ")
                ),
            ));
        }
    }
    model
        .load_weights(&weights, false)
        .map_err(|e| io_error(path, e.to_string()))
}

/// The file's tensor for entry `e`, shape-checked and in our layout.
pub(crate) fn convert<T: Scalar>(e: &Entry, t: &Tensor<T>, path: &Path) -> Result<Tensor<T>> {
    let expected = e.their_shape();
    if t.shape() != expected.as_slice() {
        return Err(io_error(
            path,
            format!(
                "key `{}`: expected shape {expected:?}, got {:?}",
                e.theirs,
                t.shape()
            ),
        ));
    }
    e.to_ours(t)
        .map_err(|err| io_error(path, format!("key `{}`: {err}", e.theirs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_are_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(decode(Dtype::BF16, &[0x80, 0x3f]), 1.0);
        assert_eq!(decode(Dtype::BF16, &[0xc0, 0xbf]), -1.5);
    }

    #[test]
    fn half_tensors_are_widened_on_load() {
        let b = Bytes {
            dtype: Dtype::F16,
            shape: vec![2],
            data: vec![0x00, 0x3c, 0x00, 0xc0],
        };
        let bytes = safetensors::tensor::serialize([("h", &b)], None).expect("test");
        let got = parse_safetensors::<f64>(&bytes, Path::new("mem")).expect("test");
        assert_eq!(got["h"].to_vec(), vec![1.0, -2.0]);
    }
}
