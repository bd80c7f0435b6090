//! A compiled graph and the only place that enters generated code.
//!
//! # The ABI
//!
//! ```text
//! extern "C" fn(inputs: *const *const u8,   // one pointer per graph input
//!               params: *const *const u8,   // one per Parameter, sorted by name
//!               outputs: *const *mut u8,    // one per graph output, then one
//!                                           // packed copy (or null) per packed slot
//!               arena: *mut u8,             // MemoryPlan::arena_bytes, 64-byte aligned
//!               status: *mut i64)           // 4 words: node, id, bound, unused
//!     -> i32                                // 0, INDEX_OUT_OF_RANGE or KERNEL_ERROR
//! ```
//!
//! [`CompiledGraph::run_into`] checks every buffer's dtype, shape and
//! contiguity before the call, so the generated code may assume them.
//!
//! A *packed slot* is a 2-D Parameter that products read as their right
//! operand (`Plans::packed_params`): its entry after the outputs points to
//! the `PackedRhs<T>` the binding carries (`Bindings::insert_packed`, its
//! dtype and dims checked here) or is null (the GEMM packs B per call).
//!
//! A graph compiled with in-place updates (`inplace.rs`) also runs through
//! [`CompiledGraph::run_updating`]: the output slot of each update is then
//! the buffer bound to its Parameter, in a `&mut Bindings`.

mod bound;
mod checks;
mod updating;

pub use bound::BoundGraph;
pub(crate) use checks::data_ptr;

use crate::compile::CompileReport;
use crate::inplace::Update;
use crate::lower::Plans;
use crate::runtime::{INDEX_OUT_OF_RANGE, KERNEL_ERROR, OK};
use crate::{Bindings, Error, Result};
use checks::{check, count, data_ptr_mut, not_contiguous};
use cranelift_jit::JITModule;
use cranelora_graph::{DType, NodeDesc, Shape, TensorData};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The declared type of an input, Parameter or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The input's or Parameter's name (outputs: their index).
    pub name: String,
    /// Its shape.
    pub shape: Shape,
    /// Its dtype.
    pub dtype: DType,
}

/// One cache line: the arena's unit, so the arena is 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The per-call state: the arena, the pointer tables and the status words.
///
/// `ptrs` is the ABI's pointer table, one slot per input, Parameter, output
/// and packed slot, in that order. Its Parameter and packed slots are kept
/// between calls: `params_of` is the [`Bindings::stamp`] they were checked
/// and filled from (0: none), so a call with the same, unchanged bindings
/// skips the name lookups and checks.
#[derive(Default)]
struct CallState {
    arena: Vec<Line>,
    ptrs: Vec<usize>,
    status: [i64; 4],
    params_of: u64,
}

/// Calls that may hold a [`CallState`] at once without allocating.
const POOL_CAPACITY: usize = 64;

/// The entry point's type (see the module docs).
type Entry =
    unsafe extern "C" fn(*const usize, *const usize, *const usize, *mut u8, *mut i64) -> i32;

/// A graph compiled to native code.
///
/// `Send + Sync`: concurrent calls each take their own arena from a pool.
/// The code is freed when the value is dropped.
pub struct CompiledGraph {
    module: Mutex<Option<JITModule>>,
    entry: usize,
    pub(crate) inputs: Vec<Spec>,
    pub(crate) params: Vec<Spec>,
    pub(crate) outputs: Vec<Spec>,
    /// Constants the code reads by address.
    _consts: Vec<Arc<TensorData>>,
    /// Plans the helpers read by address.
    _plans: Plans,
    arena_bytes: usize,
    pool: Mutex<Vec<CallState>>,
    descs: HashMap<usize, NodeDesc>,
    report: CompileReport,
    /// In-place updates (none for a plain [`crate::compile`]).
    updates: Vec<Update>,
    /// For each output, the index in `updates` of the update it is.
    update_of: Vec<Option<usize>>,
}

/// Everything [`CompiledGraph::new`] takes.
pub(crate) struct Parts {
    pub module: JITModule,
    pub entry: *const u8,
    pub inputs: Vec<Spec>,
    pub params: Vec<Spec>,
    pub outputs: Vec<Spec>,
    pub consts: Vec<Arc<TensorData>>,
    pub plans: Plans,
    pub descs: HashMap<usize, NodeDesc>,
    pub report: CompileReport,
    pub updates: Vec<Update>,
}

// SAFETY: the JITModule is only touched again in `drop` (through the
// mutex, with `&mut self`); after finalization the code and data it owns are
// immutable, so sharing the compiled graph between threads shares read-only
// code. Everything else in the struct is Send + Sync by itself.
unsafe impl Send for CompiledGraph {}
// SAFETY: as above; calls only read shared state, and each call's mutable
// state (arena, pointer tables, status) is taken from the mutex-guarded pool.
unsafe impl Sync for CompiledGraph {}

impl CompiledGraph {
    pub(crate) fn new(p: Parts) -> Self {
        let arena_bytes = p.report.memory.arena_bytes;
        let mut update_of = vec![None; p.outputs.len()];
        for (i, u) in p.updates.iter().enumerate() {
            update_of[u.output] = Some(i);
        }
        Self {
            module: Mutex::new(Some(p.module)),
            entry: p.entry as usize,
            inputs: p.inputs,
            params: p.params,
            outputs: p.outputs,
            _consts: p.consts,
            _plans: p.plans,
            arena_bytes,
            pool: Mutex::new(Vec::with_capacity(POOL_CAPACITY)),
            descs: p.descs,
            report: p.report,
            updates: p.updates,
            update_of,
        }
    }

    /// The in-place updates this graph was compiled with, in the order given.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// The graph inputs, in call order.
    pub fn inputs(&self) -> &[Spec] {
        &self.inputs
    }

    /// The Parameters the bindings must provide, sorted by name.
    pub fn parameters(&self) -> &[Spec] {
        &self.params
    }

    /// Whether products read Parameter `name` as a 2-D right operand, so
    /// binding it with [`Bindings::insert_packed`] spares them packing it
    /// on every call.
    pub fn packs(&self, name: &str) -> bool {
        let packed = &self._plans.packed_params;
        packed.iter().any(|&i| self.params[i].name == name)
    }

    /// The outputs, in order.
    pub fn outputs(&self) -> &[Spec] {
        &self.outputs
    }

    /// Compile times per phase, the pass report and the memory plan.
    pub fn report(&self) -> &CompileReport {
        &self.report
    }

    /// Bytes of the per-call arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Runs the graph and returns new output tensors.
    ///
    /// # Errors
    /// As [`CompiledGraph::run_into`].
    pub fn run(&self, inputs: &[TensorData], bindings: &Bindings) -> Result<Vec<TensorData>> {
        let mut outputs = self.new_outputs();
        self.run_into(inputs, bindings, &mut outputs)?;
        Ok(outputs)
    }

    /// Zero tensors of the outputs' dtypes and shapes.
    fn new_outputs(&self) -> Vec<TensorData> {
        self.outputs
            .iter()
            .map(|s| TensorData::full(&s.shape, 0.0, s.dtype))
            .collect()
    }

    /// Runs the graph writing into `outputs` (one per graph output, of its
    /// dtype and shape); allocates nothing once the arena pool is warm.
    ///
    /// # Errors
    /// [`Error::Count`], [`Error::Mismatch`], [`Error::NotContiguous`] and
    /// [`Error::MissingBinding`] before running; [`Error::IndexOutOfRange`]
    /// and [`Error::Kernel`] from the generated code.
    pub fn run_into(
        &self,
        inputs: &[TensorData],
        bindings: &Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        self.run_into_iter(inputs.len(), inputs, bindings, outputs)
    }

    /// [`Self::run_into`] with the `len` inputs from an iterator (the
    /// serving functions splice their id tensor in without copying the
    /// others). `inputs` must yield exactly `len` items.
    pub(crate) fn run_into_iter<'t>(
        &self,
        len: usize,
        inputs: impl IntoIterator<Item = &'t TensorData>,
        bindings: &Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        let mut state = self.take_state();
        let result = self.run_with(&mut state, len, inputs, bindings, outputs);
        self.give_back(state);
        result
    }

    /// [`Self::run_into_iter`] on a call state the caller holds.
    fn run_with<'t>(
        &self,
        state: &mut CallState,
        len: usize,
        inputs: impl IntoIterator<Item = &'t TensorData>,
        bindings: &Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        count("inputs", self.inputs.len(), len)?;
        count("outputs", self.outputs.len(), outputs.len())?;
        self.fill_ptrs(state, inputs, bindings, outputs)?;
        self.call(state)
    }

    /// One call: takes an arena from the pool, lets `fill` check the
    /// buffers and record their pointers, enters the code if that succeeded,
    /// and gives the arena back.
    fn with_state(&self, fill: impl FnOnce(&mut CallState) -> Result<()>) -> Result<()> {
        let mut state = self.take_state();
        let result = fill(&mut state).and_then(|()| self.call(&mut state));
        self.give_back(state);
        result
    }

    /// Checks the inputs and lists their pointers.
    fn fill_inputs<'t>(
        &self,
        state: &mut CallState,
        inputs: impl IntoIterator<Item = &'t TensorData>,
    ) -> Result<()> {
        let mut n = 0;
        for ((spec, t), slot) in self.inputs.iter().zip(inputs).zip(&mut state.ptrs) {
            check("input", spec, t)?;
            *slot = data_ptr(t).ok_or_else(|| not_contiguous("input", spec))? as usize;
            n += 1;
        }
        // The code reads one pointer per input: never fewer.
        count("inputs", self.inputs.len(), n)
    }

    /// Checks every buffer and lists its pointer: inputs, params, outputs.
    /// The Parameter and packed slots are reused when `state` holds them
    /// for `bindings` as they are now (see [`CallState`]).
    fn fill_ptrs<'t>(
        &self,
        state: &mut CallState,
        inputs: impl IntoIterator<Item = &'t TensorData>,
        bindings: &Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        self.fill_inputs(state, inputs)?;
        if state.params_of != bindings.stamp() {
            self.refill_params(state, bindings)?;
        }
        let first = self.inputs.len() + self.params.len();
        let slots = &mut state.ptrs[first..first + self.outputs.len()];
        for ((spec, t), slot) in self.outputs.iter().zip(outputs.iter_mut()).zip(slots) {
            check("output", spec, t)?;
            *slot = data_ptr_mut(t).ok_or_else(|| not_contiguous("output", spec))? as usize;
        }
        Ok(())
    }

    /// [`Self::fill_params`], recording whose they are in `params_of`.
    fn refill_params(&self, state: &mut CallState, bindings: &Bindings) -> Result<()> {
        state.params_of = 0;
        self.fill_params(state, bindings)?;
        state.params_of = bindings.stamp();
        Ok(())
    }

    /// Checks every Parameter's binding and lists its pointer, and the
    /// packed copy (or null) of each packed slot.
    fn fill_params(&self, state: &mut CallState, bindings: &Bindings) -> Result<()> {
        let first = self.inputs.len();
        for (spec, slot) in self.params.iter().zip(&mut state.ptrs[first..]) {
            let t = bindings
                .get(&spec.name)
                .ok_or_else(|| Error::MissingBinding {
                    name: spec.name.clone(),
                })?;
            check("parameter", spec, t)?;
            *slot = data_ptr(t).ok_or_else(|| not_contiguous("parameter", spec))? as usize;
        }
        let first_packed = first + self.params.len() + self.outputs.len();
        let slots = &mut state.ptrs[first_packed..];
        for (&i, slot) in self._plans.packed_params.iter().zip(slots) {
            let spec = &self.params[i];
            let &[k, n] = spec.shape.dims() else {
                unreachable!("internal: packed slots are 2-D")
            };
            let f64 = spec.dtype == DType::F64;
            *slot = bindings.packed_ptr(&spec.name, f64, k, n);
        }
        Ok(())
    }

    /// Enters the generated code.
    fn call(&self, state: &mut CallState) -> Result<()> {
        let (ni, np) = (self.inputs.len(), self.params.len());
        let ptrs = state.ptrs.as_ptr();
        state.status = [0; 4];
        // SAFETY: `entry` is the finalized function of this graph, with the
        // ABI of the module docs, and its module is alive (freed only in
        // drop). `fill_ptrs` checked every input, parameter and output
        // buffer: dtype, shape (hence length) and contiguity, and listed
        // their addresses in ABI order. Parameter slots it kept from an
        // earlier call (`params_of`) point into the bindings of this call:
        // a stamp is unique to one `Bindings` value in one state (a new one
        // on creation, clone and every change, bindings.rs), and that value
        // is borrowed for this whole call. Output buffers are `&mut` (no
        // aliasing), except that `fill_ptrs_updating` lists the buffer of an
        // updated Parameter twice (parameter and output slot), from one
        // `&mut` borrow of the bindings held for the whole call: the memory
        // plan (inplace.rs) orders every read of the old value before the
        // write of the new one. The arena has `arena_bytes` bytes, 64-byte aligned,
        // and is used by this call only; constants and plans the code reads
        // by address are owned by `self`.
        let status = unsafe {
            let f: Entry = std::mem::transmute::<usize, Entry>(self.entry);
            f(
                ptrs,
                ptrs.add(ni),
                ptrs.add(ni + np),
                state.arena.as_mut_ptr().cast::<u8>(),
                state.status.as_mut_ptr(),
            )
        };
        let node = |w: i64| {
            self.descs
                .get(&(w as usize))
                .cloned()
                .unwrap_or_else(|| NodeDesc::new(None, None))
        };
        match status {
            OK => Ok(()),
            INDEX_OUT_OF_RANGE => Err(Error::IndexOutOfRange {
                node: node(state.status[0]),
                index: state.status[1],
                bound: state.status[2] as usize,
            }),
            KERNEL_ERROR => Err(Error::Kernel {
                node: node(state.status[0]),
            }),
            _ => Err(Error::Kernel {
                node: node(state.status[0]),
            }),
        }
    }

    /// A call state from the pool, or a new one.
    fn take_state(&self) -> CallState {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| CallState {
            arena: vec![Line([0; 64]); self.arena_bytes.div_ceil(64).max(1)],
            ptrs: vec![
                0;
                self.inputs.len()
                    + self.params.len()
                    + self.outputs.len()
                    + self._plans.packed_params.len()
            ],
            status: [0; 4],
            params_of: 0,
        })
    }

    /// Returns a call state to the pool.
    fn give_back(&self, state: CallState) {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state);
    }
}

impl Drop for CompiledGraph {
    fn drop(&mut self) {
        let module = self
            .module
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(module) = module {
            // SAFETY: no call can be running (`&mut self`), and nothing else
            // holds a pointer into the module's code or data: `entry` dies
            // with `self`.
            unsafe { module.free_memory() };
        }
    }
}
