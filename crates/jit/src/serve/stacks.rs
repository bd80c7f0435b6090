//! The stacked adapter weights of a mixed-batch function: per layer `P`,
//! `P.lora_a_stack` `[N, fan_in, R]`, `P.lora_b_stack` `[N, R, fan_out]`
//! (s·B), and where the slot has them `P.lora_bias_stack` `[N, 1, fan_out]`
//! and `P.lora_dora_scale_stack` `[N, 1, fan_out]` (scale − 1, so an empty
//! slot or a −1 row has scale 1). Slot `n` of every stack belongs to one
//! adapter; an empty slot is all zeros, i.e. the base model.
//!
//! Binding copies the current set, writes the slot and swaps the new set
//! in (copy-on-write): calls running on the old set are not disturbed.

use super::adapters::{layer_values, tensor, Adapter, LayerSlot};
use crate::{Bindings, Error, Result};
use cranelora_graph::TensorData;
use std::sync::{Arc, Mutex, RwLock};

/// The stacks and which adapter holds each slot.
#[derive(Debug)]
pub(crate) struct Stacks {
    current: RwLock<Arc<Bindings>>,
    owners: Mutex<Vec<Option<String>>>,
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
        Self {
            current: RwLock::new(Arc::new(b)),
            owners: Mutex::new(vec![None; capacity]),
        }
    }

    /// The current set.
    pub fn load(&self) -> Arc<Bindings> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes `adapter` into slot `reuse` or the first free one; returns the slot.
    pub fn bind(
        &self,
        name: &str,
        slots: &[LayerSlot],
        adapter: &Adapter,
        reuse: Option<usize>,
    ) -> Result<usize> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut next = (*self.load()).clone();
        for s in slots {
            let v = layer_values(name, s, adapter.layers.get(&s.path))?;
            let scale = v.dora_scale.map(|c| c.iter().map(|x| x - 1.0).collect());
            let values = [Some(v.a), Some(v.b), v.bias, scale];
            for ((param, _), vals) in stack_params(s)
                .into_iter()
                .zip(values.into_iter().flatten())
            {
                write_slot(&mut next, &param, slot, &vals);
            }
        }
        owners[slot] = Some(name.to_string());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(slot)
    }

    /// Zeros slot `slot` and frees it.
    pub fn clear(&self, slots: &[LayerSlot], slot: usize) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (*self.load()).clone();
        for s in slots {
            for (param, [rows, cols, _]) in stack_params(s) {
                write_slot(&mut next, &param, slot, &vec![0.0; rows * cols]);
            }
        }
        owners[slot] = None;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }
}

/// Writes `vals` as entry `slot` of the stack `param`.
fn write_slot(b: &mut Bindings, param: &str, slot: usize, vals: &[f64]) {
    let mut t = b
        .get(param)
        .expect("internal: every stack was created in Stacks::new")
        .clone();
    fill(&mut t, slot * vals.len(), vals);
    b.insert(param, t)
        .expect("internal: the stack stays contiguous");
}

/// `t[offset..offset + vals.len()] = vals` in `t`'s dtype.
fn fill(t: &mut TensorData, offset: usize, vals: &[f64]) {
    let range = offset..offset + vals.len();
    match t {
        TensorData::F32(a) => {
            let s = a.as_slice_mut().expect("internal: stacks are contiguous");
            for (d, &v) in s[range].iter_mut().zip(vals) {
                *d = v as f32;
            }
        }
        TensorData::F64(a) => {
            let s = a.as_slice_mut().expect("internal: stacks are contiguous");
            s[range].copy_from_slice(vals);
        }
        TensorData::I64(_) => unreachable!("internal: stacks are float"),
    }
}
