//! Cranelift JIT compilation of cranelora graphs.
//!
//! [`compile`] runs the graph passes, plans memory (one arena, reused by
//! liveness), lowers the graph to ONE native function with Cranelift for
//! the host ISA, and returns a [`CompiledGraph`] whose [`run`] /
//! [`run_into`] check every buffer before entering the code. Matrix
//! products and convolutions call the kernels crate's GEMM through runtime
//! helpers; see `docs/jit.md` for the ABI, the memory plan, what is lowered
//! and what is not yet.
//!
//! - `jit.rs`: the JIT module and reusable contexts; `compile.rs`: the pipeline.
//! - `lower/`: one file per op family; `memory.rs`: the arena plan.
//! - `runtime.rs`: the `extern "C"` helpers; `compiled.rs`: the call.
//!   These two are the only modules with `unsafe`.
//! - `serve/`: one compiled base model serving many LoRA adapters (runtime-bound
//!   adapters swapped by pointer, mixed-adapter batches through `GatherMatMul`).
//! - `train.rs`: [`Trainer`], training steps updating their Parameters in
//!   place; `inplace.rs`: where the memory plan lets them store.
//!
//! ```
//! use cranelora_graph::{interpret, DType, Graph, TensorData};
//! use cranelora_jit::{compile, Bindings, JitOptions};
//!
//! let mut g = Graph::new();
//! let x = g.input("x", [2, 3], DType::F32);
//! let b = g.constant(TensorData::f32([3], vec![1.0, 2.0, 3.0])?)?;
//! let y = g.add(x, b)?;
//! let y = g.relu(y)?;
//! g.set_outputs(&[y])?;
//!
//! let compiled = compile(&g, &JitOptions::default())?;
//! let x = TensorData::f32([2, 3], vec![-5.0, 0.0, 1.0, 2.0, -3.0, 4.0])?;
//! let out = compiled.run(std::slice::from_ref(&x), &Bindings::new())?;
//! let expected = interpret(&g, &[x], &Default::default())?;
//! assert_eq!(out, expected);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`run`]: CompiledGraph::run
//! [`run_into`]: CompiledGraph::run_into
#![warn(missing_docs)]

mod bindings;
mod compile;
mod compiled;
mod error;
mod inplace;
mod jit;
mod lower;
pub mod memory;
mod runtime;
pub mod serve;
mod train;

pub use bindings::{Bindings, SharedBindings};
pub use compile::{compile, CompileReport, JitOptions};
pub use compiled::{BoundGraph, CompiledGraph, Spec};
pub use error::{Error, Result};
pub use inplace::Update;
pub use train::Trainer;

use cranelora_graph::Op;

/// Whether the JIT lowers `op`; equal to [`cranelora_graph::jit_lowerable`]
/// (a test checks every op). Every op of the IR is lowered today.
pub fn lowerable(op: &Op) -> bool {
    use Op::*;
    match op {
        Input { .. } | Constant(_) | Parameter { .. } => true,
        MatMul | Add | Sub | Mul | Div | Max | Min | Pow => true,
        Eq | Ne | Lt | Le | Gt | Ge | Where => true,
        Sign | Neg | Relu | Gelu | GeluTanh | GeluGrad | GeluTanhGrad | Tanh | Sigmoid | Silu
        | Exp | Log | Sqrt | Rsqrt | Erf | Abs | Recip | Scale(_) | Cast(_) | StopGradient => true,
        Reduce { .. } | Broadcast { .. } | Softmax { .. } | LayerNorm { .. } => true,
        Reshape { .. } | Transpose { .. } | Slice { .. } | Pad { .. } | Concat { .. } => true,
        Gather | ScatterAdd { .. } | GatherMatMul => true,
        Conv2d(_) | Conv2dInputGrad { .. } | Conv2dWeightGrad { .. } => true,
    }
}
