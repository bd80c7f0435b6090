//! A compiled graph bound to one set of Parameters for repeated calls: the
//! way latency-critical callers (tiny graphs such as W2, called one input at
//! a time) run a graph.

use super::{CallState, CompiledGraph};
use crate::{Bindings, Result};
use cranelora_graph::TensorData;
use std::sync::Arc;

/// A [`CompiledGraph`] with its Parameter bindings checked and resolved once
/// ([`CompiledGraph::bind`]) and a call state (arena, pointer table) of its
/// own: each call checks only its inputs and outputs (count, dtype, shape,
/// contiguity) and enters the code — no name lookup, no lock, no allocation.
///
/// The bindings are held as a shared, read-only `Arc`, so they cannot change
/// while bound; to run with other bindings, bind again (or use
/// [`CompiledGraph::run_into`], which takes them per call). One per thread:
/// the calls take `&mut self`. Dropping it returns its arena to the graph's
/// pool, so binding again allocates nothing.
///
/// ```
/// use cranelora_graph::{DType, Graph, TensorData};
/// use cranelora_jit::{compile, Bindings, JitOptions};
/// use std::sync::Arc;
///
/// let mut g = Graph::new();
/// let x = g.input("x", [1, 2], DType::F32);
/// let w = g.parameter("w", [2, 2], DType::F32);
/// let y = g.matmul(x, w)?;
/// g.set_outputs(&[y])?;
/// let compiled = Arc::new(compile(&g, &JitOptions::default())?);
/// let mut b = Bindings::new();
/// b.insert("w", TensorData::f32([2, 2], vec![1.0, 2.0, 3.0, 4.0])?)?;
/// let mut bound = compiled.bind(Arc::new(b))?;
/// let x = [TensorData::f32([1, 2], vec![1.0, 1.0])?];
/// let mut out = bound.run(&x)?;
/// bound.run_into(&x, &mut out)?; // the latency path: no allocation
/// assert_eq!(out[0], TensorData::f32([1, 2], vec![4.0, 6.0])?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BoundGraph {
    graph: Arc<CompiledGraph>,
    bindings: Arc<Bindings>,
    state: CallState,
}

impl CompiledGraph {
    /// Binds `bindings` for repeated calls ([`BoundGraph`]): every Parameter
    /// is looked up and checked here, once.
    ///
    /// # Errors
    /// [`crate::Error::MissingBinding`], [`crate::Error::Mismatch`] or
    /// [`crate::Error::NotContiguous`] naming the Parameter, as
    /// [`CompiledGraph::run_into`] would.
    pub fn bind(self: &Arc<Self>, bindings: Arc<Bindings>) -> Result<BoundGraph> {
        let mut state = self.take_state();
        if let Err(e) = self.refill_params(&mut state, &bindings) {
            self.give_back(state);
            return Err(e);
        }
        Ok(BoundGraph {
            graph: Arc::clone(self),
            bindings,
            state,
        })
    }
}

impl BoundGraph {
    /// Runs the graph writing into `outputs` (one per graph output, of its
    /// dtype and shape); allocates nothing.
    ///
    /// # Errors
    /// As [`CompiledGraph::run_into`]; the bindings were checked by
    /// [`CompiledGraph::bind`].
    pub fn run_into(&mut self, inputs: &[TensorData], outputs: &mut [TensorData]) -> Result<()> {
        let (graph, bindings) = (&*self.graph, &*self.bindings);
        graph.run_with(&mut self.state, inputs.len(), inputs, bindings, outputs)
    }

    /// Runs the graph and returns new output tensors.
    ///
    /// # Errors
    /// As [`BoundGraph::run_into`].
    pub fn run(&mut self, inputs: &[TensorData]) -> Result<Vec<TensorData>> {
        let mut outputs = self.graph.new_outputs();
        self.run_into(inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// The compiled graph.
    pub fn graph(&self) -> &Arc<CompiledGraph> {
        &self.graph
    }

    /// The bound Parameters.
    pub fn bindings(&self) -> &Arc<Bindings> {
        &self.bindings
    }
}

impl Drop for BoundGraph {
    fn drop(&mut self) {
        self.graph.give_back(std::mem::take(&mut self.state));
    }
}
