//! Parameter values bound at call time.

use crate::{Error, Result};
use cranelora_graph::TensorData;
use cranelora_kernels::gemm::{MatRef, PackedRhs};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The next [`Bindings::stamp`]; 0 is never handed out.
static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

fn next_stamp() -> u64 {
    NEXT_STAMP.fetch_add(1, Ordering::Relaxed)
}

/// FNV-1a over a parameter name's bytes. Every call looks up each of its
/// Parameters by name, and SipHash (std's default, built to resist
/// adversarial keys) cost ~4 % of W2's ~0.9 µs call; parameter names are
/// chosen by the program that builds the model, not by its users' input.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map keyed by parameter name, hashed with [`NameHasher`].
type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// A bound 2-D weight packed for the GEMM ([`Bindings::insert_packed`]).
#[derive(Debug)]
pub(crate) enum PackedWeight {
    F32(PackedRhs<f32>),
    F64(PackedRhs<f64>),
}

/// Parameter name → value, each a contiguous row-major buffer (naturally
/// aligned for its dtype, which is all the generated code assumes).
///
/// For inference a new adapter replaces the whole set: build a new
/// `Bindings` and swap it in a [`SharedBindings`] while other threads keep
/// running on the old one. A [`crate::Trainer`] owns its `Bindings` and
/// writes each step's new values into them in place; publish a copy
/// (`SharedBindings::store(trainer.bindings().clone())`) for inference.
///
/// A 2-D weight bound with [`Bindings::insert_packed`] also carries a copy
/// packed for the GEMM: a compiled product `x·W` reading that Parameter as
/// its right operand uses it instead of packing W on every call.
#[derive(Debug)]
pub struct Bindings {
    map: NameMap<TensorData>,
    packed: NameMap<Arc<PackedWeight>>,
    /// See [`Bindings::stamp`].
    stamp: u64,
}

impl Default for Bindings {
    fn default() -> Self {
        Self {
            map: NameMap::default(),
            packed: NameMap::default(),
            stamp: next_stamp(),
        }
    }
}

/// A clone is another set of buffers, so it gets a stamp of its own.
impl Clone for Bindings {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            packed: self.packed.clone(),
            stamp: next_stamp(),
        }
    }
}

impl Bindings {
    /// No bindings.
    pub fn new() -> Self {
        Self::default()
    }

    /// A number unique in the process to this value in its current state:
    /// new on creation, on clone and on every change (`insert`,
    /// `insert_packed`, `remove`, `get_mut`). A compiled graph keeps the
    /// checked Parameter pointers of its last call with it and reuses them
    /// while the stamp is the same (`compiled.rs`), so the soundness of
    /// calls depends on every `&mut self` method here taking a new one.
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Binds `name` to `value`.
    ///
    /// # Errors
    /// [`Error::NotContiguous`] for a value that is not in standard layout.
    pub fn insert(&mut self, name: impl Into<String>, value: TensorData) -> Result<()> {
        let name = name.into();
        if crate::compiled::data_ptr(&value).is_none() {
            return Err(Error::NotContiguous {
                what: "parameter",
                name,
            });
        }
        self.stamp = next_stamp();
        self.packed.remove(&name);
        self.map.insert(name, value);
        Ok(())
    }

    /// Binds `name` to the 2-D weight `value` and keeps a copy packed for
    /// the GEMM of this host (k × n = `value`'s dims): products `x·W` of a
    /// compiled graph that read this Parameter as their right operand skip
    /// packing it on every call. Packing costs about one pass over the
    /// weight and one more copy of it in memory; worth it for a weight
    /// bound once and used by many calls (a merged adapter weight).
    ///
    /// # Errors
    /// [`Error::Pack`] for a value that is not a 2-D float matrix;
    /// [`Error::NotContiguous`] as [`Bindings::insert`].
    pub fn insert_packed(&mut self, name: impl Into<String>, value: TensorData) -> Result<()> {
        let name = name.into();
        let packed = pack(&name, &value)?;
        self.insert(name.clone(), value)?;
        self.stamp = next_stamp();
        self.packed.insert(name, Arc::new(packed));
        Ok(())
    }

    /// Whether `name` is bound with a packed copy ([`Bindings::insert_packed`]).
    pub fn is_packed(&self, name: &str) -> bool {
        self.packed.contains_key(name)
    }

    /// The packed copy of `name` as a `*const PackedRhs<T>` of the given
    /// dtype and dims (0 if there is none that fits).
    pub(crate) fn packed_ptr(&self, name: &str, f64: bool, k: usize, n: usize) -> usize {
        match (self.packed.get(name).map(|p| &**p), f64) {
            (Some(PackedWeight::F32(p)), false) if (p.k(), p.n()) == (k, n) => {
                p as *const PackedRhs<f32> as usize
            }
            (Some(PackedWeight::F64(p)), true) if (p.k(), p.n()) == (k, n) => {
                p as *const PackedRhs<f64> as usize
            }
            _ => 0,
        }
    }

    /// Removes the binding of `name`.
    pub fn remove(&mut self, name: &str) {
        self.stamp = next_stamp();
        self.map.remove(name);
        self.packed.remove(name);
    }

    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.map.get(name)
    }

    /// The value bound to `name`, for writing in place (training steps).
    /// Drops the packed copy of `name`, which the caller may make stale.
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut TensorData> {
        self.stamp = next_stamp();
        self.packed.remove(name);
        self.map.get_mut(name)
    }

    /// Whether `name` is bound.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The number of bound names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is bound.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (name, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorData)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The interpreter's map of the same values (a copy).
    pub fn to_map(&self) -> cranelora_graph::Bindings {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The bindings of the interpreter's map.
    ///
    /// # Errors
    /// As [`Bindings::insert`].
    pub fn from_map(map: &cranelora_graph::Bindings) -> Result<Self> {
        let mut b = Self::new();
        for (k, v) in map {
            b.insert(k.clone(), v.clone())?;
        }
        Ok(b)
    }
}

/// `value` packed as the right operand of a GEMM.
fn pack(name: &str, value: &TensorData) -> Result<PackedWeight> {
    let shape = value.shape();
    let err = |why: &str| Error::Pack {
        name: name.to_string(),
        reason: format!("{why}, got {} {shape}", value.dtype()),
    };
    let &[k, n] = shape.dims() else {
        return Err(err("it must be a 2-D matrix"));
    };
    let not_contiguous = || Error::NotContiguous {
        what: "parameter",
        name: name.to_string(),
    };
    let packed = match value {
        TensorData::F32(a) => {
            let v = a.as_slice().ok_or_else(not_contiguous)?;
            MatRef::new(v, k, n).map(|m| PackedWeight::F32(PackedRhs::pack(m)))
        }
        TensorData::F64(a) => {
            let v = a.as_slice().ok_or_else(not_contiguous)?;
            MatRef::new(v, k, n).map(|m| PackedWeight::F64(PackedRhs::pack(m)))
        }
        TensorData::I64(_) => return Err(err("it must be f32 or f64")),
    };
    packed.map_err(|e| err(&e.to_string()))
}

/// A [`Bindings`] set swappable as a whole while other threads use the old one.
#[derive(Debug, Default)]
pub struct SharedBindings {
    current: RwLock<Arc<Bindings>>,
}

impl SharedBindings {
    /// Shares `b`.
    pub fn new(b: Bindings) -> Self {
        Self {
            current: RwLock::new(Arc::new(b)),
        }
    }

    /// The current set (calls keep it alive while they run).
    pub fn load(&self) -> Arc<Bindings> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the set; calls already running finish with the old one.
    pub fn store(&self, b: Bindings) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_hasher_is_fnv1a_64() {
        // The reference vectors of FNV-1a, 64 bit.
        for (input, want) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325_u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = NameHasher::default();
            h.write(input);
            assert_eq!(h.finish(), want, "{input:?}");
        }
    }

    #[test]
    fn bindings_round_trip_through_the_interpreter_map() {
        let mut b = Bindings::new();
        for i in 0..50 {
            let v = TensorData::f32(vec![1], vec![i as f32]).expect("valid");
            b.insert(format!("layer{i}.lora_a"), v).expect("contiguous");
        }
        let back = Bindings::from_map(&b.to_map()).expect("contiguous");
        for i in 0..50 {
            let name = format!("layer{i}.lora_a");
            assert_eq!(back.get(&name), b.get(&name));
        }
        assert!(b.get("layer50.lora_a").is_none());
    }
}
