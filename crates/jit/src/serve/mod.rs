//! Serving many LoRA adapters over one compiled base model.
//!
//! An [`AdapterServer`] compiles the Serving-mode export of a *template*
//! model once: the base weights are Constants (prepacked for the GEMM), and
//! every adapted layer `P` reads its adapter from Parameters sized for the
//! maximum rank R ([`LayerSlot`]). Adapters ([`Adapter`]: per layer A, B,
//! scaling, LoRA bias, DoRA magnitude) are then bound by name:
//!
//! - [`AdapterServer::bind_adapter`] pads A and s·B to rank R, computes the
//!   DoRA scale, merges (`W + s·A·B`) and packs for the GEMM the weight of
//!   each layer the compiler merged, and stores the finished [`Bindings`]
//!   behind an `Arc` (the work and the allocation happen here, once per
//!   adapter, outside every lock);
//! - [`AdapterServer::set_active`] is a pointer swap: it clones that `Arc`
//!   into the active slot under a write lock. No recompilation, no
//!   allocation. A call takes the active set when it starts and keeps it
//!   until it returns, so a swap while other threads call is safe.
//! - [`AdapterServer::run_batch_named`] (when compiled with a mixed
//!   capacity) runs a batch whose rows each use their own adapter, or none,
//!   in one call: the base product runs once for the whole batch, the
//!   low-rank products through
//!   [`Op::GatherMatMul`](cranelora_graph::Op::GatherMatMul), one pair of
//!   small GEMMs per adapter present (SGMV). The rows' adapter names are
//!   resolved to slots in the same [`MixedSnapshot`] the call runs with, so
//!   a concurrent unbind/bind that hands a slot to another adapter cannot
//!   make a row run with an adapter it did not name (`mixed.rs`).
//!
//! The graph rewrites are in `rewrite.rs`, the binding math in
//! `adapters.rs`, the mixed-batch slot stacks in `stacks.rs`. Merged or
//! unmerged per layer is a compile option
//! ([`JitOptions::adapter_strategy`]): the cost model in `strategy.rs`, the
//! rewrite [`compile`] runs in `plan.rs`, the measurement of its `K` in
//! `calibrate.rs`.

mod adapters;
mod calibrate;
mod mixed;
pub(crate) mod plan;
mod rewrite;
mod stacks;
mod strategy;

pub use adapters::{bind_layers, Adapter, LayerAdapter, LayerSlot};
pub use calibrate::{measure_move_cost, MoveCost, MoveCostShape};
pub use mixed::MixedSnapshot;
pub use plan::plan;
pub use rewrite::ADAPTER_IDS;
pub use strategy::{
    choose, AdaptedLayer, AdapterStrategy, BranchKind, LayerChoice, ServingLoad, MOVE_COST,
};

use crate::{compile, Bindings, CompiledGraph, Error, JitOptions, Result};
use adapters::{adapter_values, bindings_of};
use cranelora_graph::{Graph, TensorData};
use mixed::Mixed;
use stacks::Stacks;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// How an [`AdapterServer`] is compiled.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The JIT options of both compiled functions (LoRA folding is turned
    /// off: the adapters are Parameters). Their `adapter_strategy` decides
    /// which layers of the single-adapter function are merged (the compiler
    /// chooses, [`plan`]); the mixed-batch function keeps every branch.
    pub jit: JitOptions,
    /// Adapter slots of the mixed-batch function; 0 compiles none.
    pub mixed_capacity: usize,
}

/// A bound adapter: its single-adapter Parameters (its mixed-batch slot is
/// in the stacks' current set).
#[derive(Debug)]
struct Bound {
    name: Arc<str>,
    bindings: Arc<Bindings>,
}

/// The adapter in use by [`AdapterServer::run`].
#[derive(Debug, Clone)]
struct Active {
    name: Option<Arc<str>>,
    bindings: Arc<Bindings>,
}

/// One compiled base model serving many adapters (module docs).
pub struct AdapterServer {
    single: CompiledGraph,
    mixed: Option<Mixed>,
    slots: Vec<LayerSlot>,
    /// Held by bind and unbind for their whole work (stack copies
    /// included), so that they see each other's results; calls, swaps and
    /// lookups never take it.
    writer: Mutex<()>,
    bound: RwLock<HashMap<String, Bound>>,
    active: RwLock<Active>,
    none: Arc<Bindings>,
}

pub(super) fn unknown(name: &str) -> Error {
    Error::Adapter {
        adapter: name.to_string(),
        reason: "no adapter of that name is bound".into(),
    }
}

impl AdapterServer {
    /// Compiles `graph`, the Serving-mode export of a template model with
    /// an adapter of rank `slots[i].rank` and scaling 1 at every slot path
    /// (DoRA at the slots with `dora_base`, a LoRA bias where `bias`). The
    /// compiler merges the layers `opts.jit.adapter_strategy` chooses
    /// ([`Self::strategy`]); their slots get the base weight to merge into.
    ///
    /// # Errors
    /// [`Error::Adapter`] if a slot has rank, fan-in or fan-out 0, the
    /// graph's Parameters are not exactly the slots' (`P.lora_a`,
    /// `P.lora_b`, …) or a slot cannot take mixed batches; compile errors.
    pub fn new(graph: &Graph, mut slots: Vec<LayerSlot>, opts: &ServeOptions) -> Result<Self> {
        let jit = opts.jit.with_lora_fold(false);
        if let Some(s) = slots
            .iter()
            .find(|s| s.rank == 0 || s.fan_in == 0 || s.fan_out == 0)
        {
            return Err(Error::Adapter {
                adapter: s.path.clone(),
                reason: format!(
                    "a slot needs a rank and fan-in/fan-out of at least 1 (rank {}, {} × {})",
                    s.rank, s.fan_in, s.fan_out
                ),
            });
        }
        let mut g = graph.clone();
        rewrite::single(&mut g, &slots)?;
        let single = compile(&g, &jit)?;
        // The compiler's choice decides which slots bind a merged weight.
        for s in &mut slots {
            s.merged_base = None;
        }
        for c in single.report().adapters.iter().filter(|c| c.merged) {
            let slot = slots.iter_mut().find(|s| s.path == c.path);
            let (Some(slot), Some(base)) = (slot, &c.base) else {
                return Err(Error::Adapter {
                    adapter: c.path.clone(),
                    reason: "the compiler merged a layer that is not a slot".into(),
                });
            };
            slot.merged_base = Some(Arc::clone(base));
        }
        let none = adapter_values("<none>", &slots, &Adapter::default())?;
        let none = Arc::new(bindings_of(&slots, &none, |p| single.packs(p))?);
        check_parameters(&single, &none)?;
        let mixed = match opts.mixed_capacity {
            0 => None,
            n => {
                rewrite::mixed(&mut g, &slots, n)?;
                let c = compile(&g, &jit)?;
                let stacks = Stacks::new(&slots, n);
                check_parameters(&c, &stacks.load().bindings)?;
                Some(Mixed::new(c, stacks)?)
            }
        };
        Ok(Self {
            single,
            mixed,
            slots,
            writer: Mutex::new(()),
            bound: RwLock::new(HashMap::new()),
            active: RwLock::new(Active {
                name: None,
                bindings: Arc::clone(&none),
            }),
            none,
        })
    }

    /// The adapted layers.
    pub fn slots(&self) -> &[LayerSlot] {
        &self.slots
    }

    /// Merged or unmerged per layer, with the cost model's numbers.
    /// (the single-adapter function's [`CompileReport::adapters`](crate::CompileReport)).
    pub fn strategy(&self) -> &[LayerChoice] {
        &self.single.report().adapters
    }

    /// The single-adapter function.
    pub fn compiled(&self) -> &CompiledGraph {
        &self.single
    }

    /// The mixed-batch function, if compiled.
    pub fn compiled_mixed(&self) -> Option<&CompiledGraph> {
        self.mixed.as_ref().map(Mixed::compiled)
    }

    /// Binds `adapter` under `name` (replacing an adapter of that name; the
    /// active one stays active with its new weights). With a mixed-batch
    /// function the adapter also takes a slot there (see [`Self::slot_of`]).
    ///
    /// # Errors
    /// [`Error::Adapter`] naming the layer if the adapter does not fit
    /// (see [`bind_layers`]), or when every mixed slot is taken.
    pub fn bind_adapter(&self, name: &str, adapter: &Adapter) -> Result<()> {
        // The padding, scaling and DoRA norms, outside every lock.
        let values = adapter_values(name, &self.slots, adapter)?;
        let packs = |p: &str| self.single.packs(p);
        let bindings = Arc::new(bindings_of(&self.slots, &values, packs)?);
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // The stack copy holds no lock a call, swap or lookup takes.
        if let Some(m) = &self.mixed {
            m.stacks.bind(name, &self.slots, &values)?;
        }
        let name: Arc<str> = Arc::from(name);
        let entry = Bound {
            name: Arc::clone(&name),
            bindings: Arc::clone(&bindings),
        };
        let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
        bound.insert(name.to_string(), entry);
        let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
        if active.name.as_deref() == Some(&*name) {
            *active = Active {
                name: Some(name),
                bindings,
            };
        }
        Ok(())
    }

    /// Removes adapter `name`; if it was active, no adapter is active.
    ///
    /// # Errors
    /// [`Error::Adapter`] if no adapter of that name is bound.
    pub fn unbind_adapter(&self, name: &str) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut bound = self.bound.write().unwrap_or_else(|e| e.into_inner());
            bound.remove(name).ok_or_else(|| unknown(name))?;
            let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
            if active.name.as_deref() == Some(name) {
                *active = self.no_adapter();
            }
        }
        if let Some(m) = &self.mixed {
            if let Some(slot) = m.stacks.load().slot_of(name) {
                m.stacks.clear(&self.slots, slot);
            }
        }
        Ok(())
    }

    fn no_adapter(&self) -> Active {
        Active {
            name: None,
            bindings: Arc::clone(&self.none),
        }
    }

    /// Makes `name` the adapter of [`Self::run`] (`None`: the base model
    /// alone). A pointer swap: no allocation.
    ///
    /// # Errors
    /// [`Error::Adapter`] if no adapter of that name is bound.
    pub fn set_active(&self, name: Option<&str>) -> Result<()> {
        // `bound` stays read-locked until `active` is replaced (lock order
        // bound → active, as in bind/unbind): a concurrent rebind or unbind
        // of `name` cannot slip between the lookup and the swap.
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
        let next = match name {
            None => self.no_adapter(),
            Some(n) => {
                let b = bound.get(n).ok_or_else(|| unknown(n))?;
                Active {
                    name: Some(Arc::clone(&b.name)),
                    bindings: Arc::clone(&b.bindings),
                }
            }
        };
        let old = std::mem::replace(
            &mut *self.active.write().unwrap_or_else(|e| e.into_inner()),
            next,
        );
        drop(bound);
        drop(old); // outside the locks: the last reference may free an unbound set
        Ok(())
    }

    /// The active adapter's name.
    pub fn active(&self) -> Option<String> {
        let a = self.active.read().unwrap_or_else(|e| e.into_inner());
        a.name.as_deref().map(str::to_string)
    }

    /// The names of the bound adapters, sorted.
    pub fn adapters(&self) -> Vec<String> {
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = bound.keys().cloned().collect();
        v.sort();
        v
    }

    /// The mixed-batch slot (row id) of adapter `name` now. A later
    /// unbind and bind may give the slot to another adapter: to run rows
    /// by name, use [`Self::run_batch_named`] or a [`MixedSnapshot`].
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.mixed.as_ref()?.stacks.load().slot_of(name)
    }

    /// The active adapter's Parameters (kept alive by the returned `Arc`).
    pub fn active_bindings(&self) -> Arc<Bindings> {
        let a = self.active.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&a.bindings)
    }

    /// Runs the model with the active adapter.
    ///
    /// # Errors
    /// As [`CompiledGraph::run`].
    pub fn run(&self, inputs: &[TensorData]) -> Result<Vec<TensorData>> {
        self.single.run(inputs, &self.active_bindings())
    }

    /// [`Self::run`] into the caller's outputs; allocates nothing once warm.
    ///
    /// # Errors
    /// As [`CompiledGraph::run_into`].
    pub fn run_into(&self, inputs: &[TensorData], outputs: &mut [TensorData]) -> Result<()> {
        self.single
            .run_into(inputs, &self.active_bindings(), outputs)
    }

    /// The mixed-batch slots as they are now: resolve adapter names and
    /// run batches against one state of the slots (see [`MixedSnapshot`]).
    ///
    /// # Errors
    /// [`Error::Adapter`] without a mixed-batch function.
    pub fn mixed_snapshot(&self) -> Result<MixedSnapshot<'_>> {
        let m = self.mixed.as_ref().ok_or_else(|| Error::Adapter {
            adapter: String::new(),
            reason: "compiled without a mixed-batch function (ServeOptions::mixed_capacity = 0)"
                .into(),
        })?;
        Ok(m.snapshot())
    }

    /// Runs a batch whose row `r` uses adapter `rows[r]` (`None`: no
    /// adapter), in one call: `inputs` are the model's inputs (no ids). The
    /// names are resolved in the same state of the slots the call runs with
    /// ([`MixedSnapshot::run_batch_named`]): every row runs with the adapter
    /// it names as bound when the call started, whatever binds and unbinds
    /// run meanwhile.
    ///
    /// # Errors
    /// [`Error::Count`] unless there is one name per batch row;
    /// [`Error::Adapter`] for a name that is not bound (or without a
    /// mixed-batch function); as [`CompiledGraph::run`].
    pub fn run_batch_named(
        &self,
        inputs: &[TensorData],
        rows: &[Option<&str>],
    ) -> Result<Vec<TensorData>> {
        self.mixed_snapshot()?.run_batch_named(inputs, rows)
    }

    /// [`Self::run_batch_named`] into the caller's outputs; allocates
    /// nothing once warm.
    ///
    /// # Errors
    /// As [`Self::run_batch_named`].
    pub fn run_batch_named_into(
        &self,
        inputs: &[TensorData],
        rows: &[Option<&str>],
        outputs: &mut [TensorData],
    ) -> Result<()> {
        self.mixed_snapshot()?
            .run_batch_named_into(inputs, rows, outputs)
    }

    /// Runs a batch whose row `r` uses the adapter in mixed slot `ids[r]`
    /// (−1: none) at the time of the call: `inputs` are the model's inputs
    /// followed by the ids, an i64 `[rows]` tensor. For callers that manage
    /// slots themselves; ids from names belong with
    /// [`Self::run_batch_named`] or [`MixedSnapshot::row_ids`].
    ///
    /// # Errors
    /// As [`CompiledGraph::run`]; an id outside `−1..capacity` is
    /// [`Error::IndexOutOfRange`]. An empty slot gives the base model.
    pub fn run_batch(&self, inputs: &[TensorData]) -> Result<Vec<TensorData>> {
        self.mixed_snapshot()?.run_batch(inputs)
    }

    /// [`Self::run_batch`] into the caller's outputs; allocates nothing once warm.
    ///
    /// # Errors
    /// As [`Self::run_batch`].
    pub fn run_batch_into(&self, inputs: &[TensorData], outputs: &mut [TensorData]) -> Result<()> {
        self.mixed_snapshot()?.run_batch_into(inputs, outputs)
    }

    /// The ids tensor of a mixed batch from adapter names per row (`None`:
    /// no adapter), resolved against the slots now.
    ///
    /// # Errors
    /// [`Error::Adapter`] for a name that is not bound.
    #[deprecated(
        note = "the ids can name other adapters by the time they run (a concurrent unbind + bind reassigns slots): use run_batch_named, or MixedSnapshot::row_ids with that snapshot's run_batch"
    )]
    pub fn row_ids(&self, rows: &[Option<&str>]) -> Result<TensorData> {
        self.mixed_snapshot()?.row_ids(rows)
    }
}

/// The compiled function reads exactly the Parameters `b` provides.
fn check_parameters(c: &CompiledGraph, b: &Bindings) -> Result<()> {
    let missing: Vec<&str> = c
        .parameters()
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| b.get(n).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Adapter {
        adapter: String::new(),
        reason: format!(
            "the serving graph has Parameters that are not adapter slots: {missing:?} (export the template in Serving mode with an adapter at every slot)"
        ),
    })
}
