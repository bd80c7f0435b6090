//! Calls that update Parameters in place (training steps, `inplace.rs`):
//! the output slot of each update is the buffer bound to its Parameter.

use super::checks::{bound_ptr, check, check_bound, count, data_ptr_mut, not_contiguous};
use super::{CallState, CompiledGraph};
use crate::inplace::Update;
use crate::{Bindings, Result};
use cranelora_graph::TensorData;

impl CompiledGraph {
    /// Runs the graph updating Parameters in place: the new value of each
    /// update is written into the buffer `storage` binds to its Parameter;
    /// `outputs` receives the other outputs, in order. Allocates nothing
    /// once the arena pool is warm.
    ///
    /// # Errors
    /// As [`CompiledGraph::run_into`] (`outputs` counts only the outputs
    /// that are not updates); an update's binding is checked against its
    /// output's dtype and shape.
    pub(crate) fn run_updating(
        &self,
        inputs: &[TensorData],
        storage: &mut Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        count("inputs", self.inputs.len(), inputs.len())?;
        let plain = self.outputs.len() - self.updates.len();
        count("outputs", plain, outputs.len())?;
        self.with_state(|state| self.fill_ptrs_updating(state, inputs, storage, outputs))
    }

    /// Checks every buffer of `storage` the graph reads or updates, without running.
    ///
    /// # Errors
    /// [`Error::MissingBinding`], [`Error::Mismatch`], [`Error::NotContiguous`].
    pub(crate) fn check_storage(&self, storage: &Bindings) -> Result<()> {
        for spec in &self.params {
            check_bound("parameter", spec, storage.get(&spec.name), &spec.name)?;
        }
        for u in &self.updates {
            let spec = &self.outputs[u.output];
            check_bound("parameter", spec, storage.get(&u.parameter), &u.parameter)?;
        }
        Ok(())
    }

    /// [`CompiledGraph::fill_ptrs`] for [`CompiledGraph::run_updating`]:
    /// each buffer of `storage` is borrowed mutably once and its pointer
    /// listed both as a parameter and as its update's output slot.
    fn fill_ptrs_updating(
        &self,
        state: &mut CallState,
        inputs: &[TensorData],
        storage: &mut Bindings,
        outputs: &mut [TensorData],
    ) -> Result<()> {
        // `get_mut` gives `storage` a new stamp: these slots are its old one's.
        state.params_of = 0;
        self.fill_inputs(state, inputs)?;
        let (first_param, np) = (self.inputs.len(), self.params.len());
        for (i, spec) in self.params.iter().enumerate() {
            let t = storage.get_mut(&spec.name);
            state.ptrs[first_param + i] = bound_ptr("parameter", spec, t, &spec.name)?;
        }
        let first_output = first_param + np;
        let mut plain = outputs.iter_mut();
        for (k, spec) in self.outputs.iter().enumerate() {
            let ptr = match self.update_of[k].map(|i| &self.updates[i]) {
                Some(Update { param: Some(p), .. }) => state.ptrs[first_param + *p],
                Some(u) => {
                    let t = storage.get_mut(&u.parameter);
                    bound_ptr("parameter", spec, t, &u.parameter)?
                }
                None => {
                    let t = plain.next().expect("internal: counted");
                    check("output", spec, t)?;
                    data_ptr_mut(t).ok_or_else(|| not_contiguous("output", spec))? as usize
                }
            };
            state.ptrs[first_output + k] = ptr;
        }
        // Buffers updated in place have no packed copy (`Bindings::get_mut`).
        state.ptrs[first_output + self.outputs.len()..].fill(0);
        Ok(())
    }
}
