//! The mixed-batch side of an [`AdapterServer`](super::AdapterServer): the
//! compiled mixed function, its slot stacks, and [`MixedSnapshot`], the
//! slots as one call sees them.
//!
//! A row of a mixed batch names its adapter by slot id. Which adapter a
//! slot holds changes when adapters are bound and unbound (an unbound
//! adapter's slot goes to the next one bound), so ids resolved from names
//! against one state of the slots and run against a later one would run
//! rows with an adapter the caller did not name. A [`MixedSnapshot`] holds
//! one published [`MixedSet`] — the stacks *and* the name in each slot — so
//! the names it resolves and the weights it runs with always agree.

use super::rewrite::ADAPTER_IDS;
use super::stacks::{MixedSet, Stacks};
use super::unknown;
use crate::{CompiledGraph, Error, Result};
use cranelora_graph::TensorData;
use std::sync::{Arc, Mutex};

/// The mixed-batch function and its slots.
pub(crate) struct Mixed {
    compiled: CompiledGraph,
    pub stacks: Stacks,
    /// The position of the id input among the compiled inputs.
    ids_at: usize,
    /// The batch rows (the length of the id input).
    rows: usize,
    /// Id tensors of named calls, reused (no allocation once warm).
    ids_pool: Mutex<Vec<TensorData>>,
}

impl Mixed {
    /// Wraps the compiled mixed function (its id input is [`ADAPTER_IDS`]).
    pub fn new(compiled: CompiledGraph, stacks: Stacks) -> Result<Self> {
        let found = compiled
            .inputs()
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == ADAPTER_IDS)
            .map(|(i, s)| (i, s.shape.dims().to_vec()));
        let Some((ids_at, &[rows])) = found.as_ref().map(|(i, d)| (*i, d.as_slice())) else {
            return Err(Error::Adapter {
                adapter: String::new(),
                reason: format!("internal: the mixed function has no `{ADAPTER_IDS}` [rows] input"),
            });
        };
        Ok(Self {
            compiled,
            stacks,
            ids_at,
            rows,
            ids_pool: Mutex::new(Vec::new()),
        })
    }

    /// The compiled function.
    pub fn compiled(&self) -> &CompiledGraph {
        &self.compiled
    }

    /// The slots as they are now.
    pub fn snapshot(&self) -> MixedSnapshot<'_> {
        MixedSnapshot {
            mixed: self,
            set: self.stacks.load(),
        }
    }
}

/// The mixed-batch slots of an [`AdapterServer`](super::AdapterServer) as
/// they were when it was taken ([`AdapterServer::mixed_snapshot`](super::AdapterServer::mixed_snapshot)):
/// which adapter each slot holds and their weights. Binds and unbinds after
/// that do not change it (they publish a new set; this one stays alive
/// while the snapshot does), so ids from [`Self::row_ids`] always run with
/// the adapters they name when passed to this snapshot's
/// [`Self::run_batch`].
pub struct MixedSnapshot<'a> {
    mixed: &'a Mixed,
    set: Arc<MixedSet>,
}

impl MixedSnapshot<'_> {
    /// The slot (row id) of adapter `name` in this snapshot.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.set.slot_of(name)
    }

    /// The adapter in each slot (`None`: empty).
    pub fn slots(&self) -> Vec<Option<String>> {
        let owners = self.set.owners.iter();
        owners.map(|o| o.as_deref().map(str::to_string)).collect()
    }

    /// The ids tensor (i64 `[rows]`) of a batch whose row `r` uses adapter
    /// `rows[r]` (`None`: no adapter), resolved in this snapshot.
    ///
    /// # Errors
    /// [`Error::Adapter`] for a name no slot of this snapshot holds.
    pub fn row_ids(&self, rows: &[Option<&str>]) -> Result<TensorData> {
        let mut ids = vec![0; rows.len()];
        self.resolve(rows, &mut ids)?;
        Ok(TensorData::i64([rows.len()], ids)?)
    }

    fn resolve(&self, rows: &[Option<&str>], ids: &mut [i64]) -> Result<()> {
        for (id, row) in ids.iter_mut().zip(rows) {
            *id = match row {
                None => -1,
                Some(n) => self.set.slot_of(n).ok_or_else(|| unknown(n))? as i64,
            };
        }
        Ok(())
    }

    /// Runs a batch whose row `r` uses the adapter in slot `ids[r]` of this
    /// snapshot (−1: none): `inputs` are the model's inputs followed by the
    /// ids, an i64 `[rows]` tensor.
    ///
    /// # Errors
    /// As [`CompiledGraph::run`]; an id outside `−1..capacity` is
    /// [`Error::IndexOutOfRange`]. An empty slot gives the base model.
    pub fn run_batch(&self, inputs: &[TensorData]) -> Result<Vec<TensorData>> {
        self.mixed.compiled.run(inputs, &self.set.bindings)
    }

    /// [`Self::run_batch`] into the caller's outputs; allocates nothing once warm.
    ///
    /// # Errors
    /// As [`Self::run_batch`].
    pub fn run_batch_into(&self, inputs: &[TensorData], outputs: &mut [TensorData]) -> Result<()> {
        let b = &self.set.bindings;
        self.mixed.compiled.run_into(inputs, b, outputs)
    }

    /// Runs a batch whose row `r` uses adapter `rows[r]` (`None`: no
    /// adapter) as bound in this snapshot: `inputs` are the model's inputs
    /// alone (no ids).
    ///
    /// # Errors
    /// [`Error::Count`] unless there is one name per batch row;
    /// [`Error::Adapter`] for a name no slot of this snapshot holds; as
    /// [`CompiledGraph::run`].
    pub fn run_batch_named(
        &self,
        inputs: &[TensorData],
        rows: &[Option<&str>],
    ) -> Result<Vec<TensorData>> {
        let c = &self.mixed.compiled;
        let mut outputs: Vec<TensorData> = c
            .outputs()
            .iter()
            .map(|s| TensorData::full(&s.shape, 0.0, s.dtype))
            .collect();
        self.run_batch_named_into(inputs, rows, &mut outputs)?;
        Ok(outputs)
    }

    /// [`Self::run_batch_named`] into the caller's outputs; allocates
    /// nothing once warm (the id tensors are pooled).
    ///
    /// # Errors
    /// As [`Self::run_batch_named`].
    pub fn run_batch_named_into(
        &self,
        inputs: &[TensorData],
        rows: &[Option<&str>],
        outputs: &mut [TensorData],
    ) -> Result<()> {
        let m = self.mixed;
        if rows.len() != m.rows {
            return Err(Error::Count {
                what: "adapter names (one per batch row)",
                expected: m.rows,
                actual: rows.len(),
            });
        }
        let pooled = m.ids_pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut ids = match pooled {
            Some(t) => t,
            None => TensorData::i64([m.rows], vec![-1; m.rows])?,
        };
        let result = self.run_with_ids(inputs, rows, &mut ids, outputs);
        m.ids_pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ids);
        result
    }

    /// Resolves `rows` into `ids` and runs with `ids` spliced into `inputs`.
    fn run_with_ids(
        &self,
        inputs: &[TensorData],
        rows: &[Option<&str>],
        ids: &mut TensorData,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        let TensorData::I64(a) = ids else {
            unreachable!("internal: the pool holds i64 id tensors")
        };
        let slice = a
            .as_slice_mut()
            .expect("internal: a new tensor is contiguous");
        self.resolve(rows, slice)?;
        let m = self.mixed;
        let (before, after) = inputs.split_at(m.ids_at.min(inputs.len()));
        let all = before.iter().chain(std::iter::once(&*ids)).chain(after);
        m.compiled
            .run_into_iter(inputs.len() + 1, all, &self.set.bindings, outputs)
    }
}
