//! Compiled training steps that update their Parameters in place.
//!
//! A [`Trainer`] owns the buffers of every Parameter of a training-step
//! graph (model weights and optimizer state) and one compiled step. Each
//! [`Trainer::step`] checks the inputs, runs the native code, which stores
//! every new value straight into its Parameter's buffer when that is safe
//! and otherwise copies it there at the end of the call (`inplace.rs`), and
//! returns the loss. Nothing is allocated per step once warm.
//!
//! ```
//! use cranelora_graph::training::{training_step, Loss, Optimizer, Trainable};
//! use cranelora_graph::{DType, Graph, TensorData};
//! use cranelora_jit::{Bindings, JitOptions, Trainer};
//!
//! // y = x·w, SGD on (y − target)².
//! let mut model = Graph::new();
//! let x = model.input("x", [1, 1], DType::F64);
//! let w = model.parameter("w", [1, 1], DType::F64);
//! let y = model.matmul(x, w)?;
//! model.set_outputs(&[y])?;
//! let step = training_step(&model, Loss::Mse, &Trainable::All, &Optimizer::Sgd { lr: 0.1 })?;
//!
//! let mut params = Bindings::new();
//! params.insert("w", TensorData::f64([1, 1], vec![2.0])?)?;
//! let mut trainer = Trainer::new(&step, params, &JitOptions::default())?;
//! assert!(trainer.updates()[0].in_place);
//! let one = TensorData::f64([1, 1], vec![1.0])?;
//! let loss = trainer.step(&[one.clone(), one])?;
//! assert_eq!(loss, 1.0); // (2 − 1)²
//! let w = trainer.bindings().get("w").expect("bound").to_f64_vec();
//! assert_eq!(w, vec![1.8]); // 2 − 0.1·2·(2 − 1)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::compile::compile_updating;
use crate::inplace::Update;
use crate::{Bindings, CompiledGraph, JitOptions, Result};
use cranelora_graph::training::TrainingStep;
use cranelora_graph::{Graph, TensorData};

/// A compiled training step and the Parameter buffers it updates in place.
///
/// Not `Clone`: it owns the parameters. Concurrent inference reads a copy
/// published through a [`crate::SharedBindings`]; the trainer itself takes
/// `&mut self` per step.
pub struct Trainer {
    compiled: CompiledGraph,
    storage: Bindings,
    /// The outputs that are not updates (the loss first), reused every step.
    outputs: Vec<TensorData>,
}

impl Trainer {
    /// Compiles `step` (a [`training_step`](cranelora_graph::training::training_step)
    /// graph: output 0 the loss, output `i + 1` the new value of
    /// `step.updates[i]`) and takes `params` as its Parameter storage.
    /// Optimizer state missing from `params` starts at zero
    /// ([`TrainingStep::initial_state`]); every model Parameter must be bound.
    ///
    /// # Errors
    /// As [`Trainer::with_updates`].
    pub fn new(step: &TrainingStep, params: Bindings, options: &JitOptions) -> Result<Self> {
        let mut params = params;
        for (name, zero) in step.initial_state() {
            if !params.contains(&name) {
                params.insert(name, zero)?;
            }
        }
        let updates: Vec<(usize, String)> = step
            .updates
            .iter()
            .enumerate()
            .map(|(i, u)| (i + 1, u.parameter.clone()))
            .collect();
        Self::with_updates(&step.graph, &updates, params, options)
    }

    /// Compiles any graph whose outputs `(k, name)` replace Parameter `name`
    /// after each step (every such output must be elementwise in the old
    /// value for the in-place store, else it is copied at the end; see the
    /// crate docs), with `params` as the Parameter storage.
    ///
    /// # Errors
    /// The errors of [`crate::compile`]; [`crate::Error::Update`] for an
    /// update naming an output out of range, the same output or Parameter
    /// twice, a dtype or shape differing from its Parameter's, or a swap of
    /// Parameters; [`crate::Error::MissingBinding`] /
    /// [`crate::Error::Mismatch`] for a Parameter or update target that
    /// `params` does not bind with its dtype and shape.
    pub fn with_updates(
        graph: &Graph,
        updates: &[(usize, String)],
        params: Bindings,
        options: &JitOptions,
    ) -> Result<Self> {
        let compiled = compile_updating(graph, options, updates)?;
        compiled.check_storage(&params)?;
        let outputs = compiled
            .outputs()
            .iter()
            .enumerate()
            .filter(|(k, _)| !compiled.updates().iter().any(|u| u.output == *k))
            .map(|(_, s)| TensorData::full(&s.shape, 0.0, s.dtype))
            .collect();
        Ok(Self {
            compiled,
            storage: params,
            outputs,
        })
    }

    /// Runs one step on `inputs` (the graph's inputs in order; for a
    /// training step the model's inputs, then `target`): every update is
    /// written into its Parameter's buffer. Returns the first output that is
    /// not an update as f64 (the loss of a training step; NaN if there is
    /// none or it is empty). Allocates nothing once warm.
    ///
    /// # Errors
    /// [`crate::Error::Count`], [`crate::Error::Mismatch`] (naming the
    /// input) and [`crate::Error::NotContiguous`] before running, the
    /// parameters untouched; [`crate::Error::IndexOutOfRange`] and
    /// [`crate::Error::Kernel`] from the generated code, after which the
    /// parameters may be partly updated.
    pub fn step(&mut self, inputs: &[TensorData]) -> Result<f64> {
        self.compiled
            .run_updating(inputs, &mut self.storage, &mut self.outputs)?;
        Ok(self.outputs.first().map_or(f64::NAN, first_f64))
    }

    /// The last step's outputs that are not updates, in graph order (for a
    /// training step: `[loss]`).
    pub fn outputs(&self) -> &[TensorData] {
        &self.outputs
    }

    /// The current Parameters (weights and optimizer state).
    pub fn bindings(&self) -> &Bindings {
        &self.storage
    }

    /// Gives the Parameters back.
    pub fn into_bindings(self) -> Bindings {
        self.storage
    }

    /// Replaces the value bound to `name` (new weights, a reset optimizer
    /// state), checked against the compiled step's dtype and shape.
    ///
    /// # Errors
    /// [`crate::Error::MissingBinding`] for a name the step neither reads
    /// nor updates (a typo would otherwise be accepted and ignored);
    /// [`crate::Error::Mismatch`] / [`crate::Error::NotContiguous`]; the
    /// old value is kept.
    pub fn set(&mut self, name: &str, value: TensorData) -> Result<()> {
        let known = self.compiled.parameters().iter().any(|p| p.name == name)
            || self.compiled.updates().iter().any(|u| u.parameter == name);
        if !known {
            return Err(crate::Error::MissingBinding {
                name: name.to_string(),
            });
        }
        let old = self.storage.get(name).cloned();
        self.storage.insert(name, value)?;
        if let Err(e) = self.compiled.check_storage(&self.storage) {
            match old {
                Some(v) => self.storage.insert(name, v)?,
                None => self.storage.remove(name),
            }
            return Err(e);
        }
        Ok(())
    }

    /// The updates and whether each is stored in place.
    pub fn updates(&self) -> &[Update] {
        self.compiled.updates()
    }

    /// The compiled step; its `run` / `run_into` compute the same outputs
    /// functionally (new values into the caller's buffers, nothing updated).
    pub fn compiled(&self) -> &CompiledGraph {
        &self.compiled
    }
}

/// The first element of `t` as f64, without allocating.
fn first_f64(t: &TensorData) -> f64 {
    match t {
        TensorData::F32(a) => a.iter().next().map_or(f64::NAN, |&x| f64::from(x)),
        TensorData::F64(a) => a.iter().next().copied().unwrap_or(f64::NAN),
        TensorData::I64(a) => a.iter().next().map_or(f64::NAN, |&x| x as f64),
    }
}
