//! The stacked adapter weights of a mixed-batch function: per layer `P`,
//! `P.lora_a_stack` `[N, fan_in, R]`, `P.lora_b_stack` `[N, R, fan_out]`
//! (s·B), and where the slot has them `P.lora_bias_stack` `[N, 1, fan_out]`
//! and `P.lora_dora_scale_stack` `[N, 1, fan_out]` (scale − 1, so an empty
//! slot or a −1 row has scale 1). Slot `n` of every stack belongs to one
//! adapter; an empty slot is all zeros, i.e. the base model.
//!
//! A set ([`MixedSet`]) is the stacks *and* the name of the adapter in
//! each slot, so a call that resolves its rows' adapter names and runs on
//! one set cannot mix one binding's slots with another's stacks.
//!
//! Binding builds a new set — each stack copied once, with the slot's
//! entry written as it is copied — and swaps it in (copy-on-write): calls
//! running on the old set are not disturbed, and no call waits for the
//! copy (a call only clones the current `Arc`). Binds and unbinds are
//! serialized by a writer lock here (each builds on the set it loads).

use super::adapters::{tensor, LayerSlot, LayerValues};
use crate::{Bindings, Error, Result};
use cranelora_graph::TensorData;
use std::sync::{Arc, Mutex, RwLock};

/// One published state of the mixed slots: the stacked Parameters and the
/// adapter name in each slot (`None`: empty, all zeros).
#[derive(Debug)]
pub(crate) struct MixedSet {
    pub bindings: Bindings,
    pub owners: Vec<Option<Arc<str>>>,
}

impl MixedSet {
    /// The slot holding adapter `name` in this set.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.owners.iter().position(|o| o.as_deref() == Some(name))
    }
}

/// The current [`MixedSet`]; binds and unbinds publish new ones.
#[derive(Debug)]
pub(crate) struct Stacks {
    current: RwLock<Arc<MixedSet>>,
    /// Held by bind and clear for their whole work.
    writer: Mutex<()>,
}

/// The stacked Parameters of `slot` and the length of one entry.
fn stack_params(s: &LayerSlot) -> Vec<(String, [usize; 3])> {
    let (fi, fo, r) = (s.fan_in, s.fan_out, s.rank);
    let mut v = vec![
        (s.param("lora_a_stack"), [fi, r, 0]),
        (s.param("lora_b_stack"), [r, fo, 0]),
    ];
    if s.bias {
        v.push((s.param("lora_bias_stack"), [1, fo, 0]));
    }
    if s.dora_base.is_some() {
        v.push((s.param("lora_dora_scale_stack"), [1, fo, 0]));
    }
    v
}

impl Stacks {
    /// Empty stacks with `capacity` slots.
    pub fn new(slots: &[LayerSlot], capacity: usize) -> Self {
        let mut b = Bindings::new();
        for s in slots {
            for (name, [rows, cols, _]) in stack_params(s) {
                let t = tensor(
                    &[capacity, rows, cols],
                    vec![0.0; capacity * rows * cols],
                    s.dtype,
                );
                b.insert(name, t)
                    .expect("internal: a new tensor is contiguous");
            }
        }
        let set = MixedSet {
            bindings: b,
            owners: vec![None; capacity],
        };
        Self {
            current: RwLock::new(Arc::new(set)),
            writer: Mutex::new(()),
        }
    }

    /// The current set.
    pub fn load(&self) -> Arc<MixedSet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes an adapter's `values` (one per slot, [`super::adapters`])
    /// into the slot `name` holds or the first free one; returns the slot.
    pub fn bind(&self, name: &str, slots: &[LayerSlot], values: &[LayerValues]) -> Result<usize> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load();
        let owners = &current.owners;
        let reuse = current.slot_of(name);
        let slot = match reuse.or_else(|| owners.iter().position(Option::is_none)) {
            Some(s) => s,
            None => {
                return Err(Error::Adapter {
                    adapter: name.to_string(),
                    reason: format!(
                        "all {} mixed-batch slots are taken (unbind one or compile with a larger mixed_capacity)",
                        owners.len()
                    ),
                })
            }
        };
        let entries = slots.iter().zip(values).flat_map(|(s, v)| {
            let scale = v
                .dora_scale
                .as_ref()
                .map(|c| c.iter().map(|x| x - 1.0).collect::<Vec<f64>>());
            let vals = [Some(v.a.clone()), Some(v.b.clone()), v.bias.clone(), scale];
            stack_params(s)
                .into_iter()
                .map(|(param, _)| param)
                .zip(vals.into_iter().flatten())
        });
        self.publish(&current, slot, Some(Arc::from(name)), entries);
        Ok(slot)
    }

    /// Zeros slot `slot` and frees it.
    pub fn clear(&self, slots: &[LayerSlot], slot: usize) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.load();
        let entries = slots.iter().flat_map(|s| {
            stack_params(s)
                .into_iter()
                .map(|(param, [rows, cols, _])| (param, vec![0.0; rows * cols]))
        });
        self.publish(&current, slot, None, entries);
    }

    /// Swaps in `current` with slot `slot` given to `owner` and entry
    /// `slot` of each stack `(param, values)` replaced: each stack is
    /// copied once, outside the lock calls take (they only wait for the
    /// pointer swap).
    fn publish(
        &self,
        current: &MixedSet,
        slot: usize,
        owner: Option<Arc<str>>,
        entries: impl Iterator<Item = (String, Vec<f64>)>,
    ) {
        let mut next = Bindings::new();
        for (param, vals) in entries {
            let old = current
                .bindings
                .get(&param)
                .expect("internal: every stack was created in Stacks::new");
            next.insert(param, with_entry(old, slot, &vals))
                .expect("internal: a new stack is contiguous");
        }
        let mut owners = current.owners.clone();
        owners[slot] = owner;
        let next = Arc::new(MixedSet {
            bindings: next,
            owners,
        });
        // The pointer swap; the old set lives on in the calls still using it.
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            next,
        );
        drop(old);
    }
}

/// A copy of the stack `t` with entry `slot` (`vals.len()` elements) set to
/// `vals`, in `t`'s dtype: one pass over `t`.
fn with_entry(t: &TensorData, slot: usize, vals: &[f64]) -> TensorData {
    let (shape, n) = (t.shape(), vals.len());
    let at = slot * n;
    let copy = match t {
        TensorData::F32(a) => {
            let s = a.as_slice().expect("internal: stacks are contiguous");
            let mut v = Vec::with_capacity(s.len());
            v.extend_from_slice(&s[..at]);
            v.extend(vals.iter().map(|&x| x as f32));
            v.extend_from_slice(&s[at + n..]);
            TensorData::f32(shape, v)
        }
        TensorData::F64(a) => {
            let s = a.as_slice().expect("internal: stacks are contiguous");
            let mut v = Vec::with_capacity(s.len());
            v.extend_from_slice(&s[..at]);
            v.extend_from_slice(vals);
            v.extend_from_slice(&s[at + n..]);
            TensorData::f64(shape, v)
        }
        TensorData::I64(_) => unreachable!("internal: stacks are float"),
    };
    copy.expect("internal: same element count")
}
