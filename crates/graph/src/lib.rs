//! The cranelora computation-graph IR and its reference interpreter.
//!
//! - [`Graph`]: a DAG of [`Node`]s (an [`Op`], an output [`Shape`] and
//!   [`DType`], an optional layer-path name) over petgraph's `StableGraph`,
//!   addressed by [`NodeId`]. Building a node infers and checks its type and
//!   returns an [`Error`] naming the node on a mismatch.
//! - [`Op`]: one flat, closed enum of operations, closed under
//!   differentiation; semantics per variant and in `docs/graph-ir.md`.
//! - [`verify()`]: the invariants every pass must keep (listed in [`mod@verify`]).
//! - [`interpret`]: the executable definition of every op, on ndarray and
//!   the shared kernels; the JIT and every pass are tested against it.
//! - [`dump`] (stable text, for golden tests) and [`to_dot`] (Graphviz).
//! - [`passes`]: transforms in place (simplify, constant and LoRA folding,
//!   CSE, DCE), fusion grouping, and the [`passes::PassManager`].
//!
//! ```
//! use cranelora_graph::{interpret, Bindings, DType, Graph, TensorData};
//!
//! // y = gelu(x·W + b), with W bound at run time.
//! let mut g = Graph::new();
//! let x = g.input("x", [1, 2], DType::F32);
//! let w = g.parameter("fc.weight", [2, 2], DType::F32);
//! let b = g.constant(TensorData::f32([2], vec![0.5, -0.5])?)?;
//! let xw = g.named("fc.matmul").matmul(x, w)?;
//! let z = g.named("fc.bias").add(xw, b)?;
//! let y = g.named("act").gelu(z)?;
//! g.set_outputs(&[y])?;
//!
//! // A wrong shape is an error that names the node.
//! let err = g.named("bad").matmul(w, b).unwrap_err();
//! assert!(err.to_string().contains("\"bad\""));
//!
//! let mut bindings = Bindings::new();
//! bindings.insert("fc.weight".into(), TensorData::f32([2, 2], vec![1.0, 0.0, 0.0, 1.0])?);
//! let out = interpret(&g, &[TensorData::f32([1, 2], vec![1.0, 2.0])?], &bindings)?;
//! let y = out[0].as_f32().expect("f32 output");
//! assert!((y[[0, 0]] - 1.399_789).abs() < 1e-5); // gelu(1.5)
//! # Ok::<(), cranelora_graph::Error>(())
//! ```
#![warn(missing_docs)]

mod builder;
mod dot;
mod error;
mod graph;
mod interp;
mod op;
mod shape;
mod tensor_data;

pub mod autodiff;
pub mod display;
pub mod passes;
pub mod training;
pub mod verify;

pub use autodiff::grad;
pub use cranelora_kernels::DType;
pub use display::dump;
pub use dot::{lora_adapter_path, to_dot, to_dot_with};
pub use error::{Error, NodeDesc, Result, Violation};
pub use graph::{Graph, Node, NodeId};
pub use interp::{interpret, Bindings};
pub use op::{jit_lowerable, Arity, Conv2dParams, Op, ReduceKind};
pub use shape::{broadcast_shapes, Shape};
pub use tensor_data::{TensorData, Value};
pub use verify::{verify, violations};
