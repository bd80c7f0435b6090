//! The cranelora computation-graph IR, its interpreter and transforms.
//!
//! This crate will hold the `Graph` (a DAG of `ComputationNode`s over
//! petgraph), the reference interpreter, reverse-mode autodiff and the
//! optimization passes; see `docs/architecture.md`. Today it provides what
//! the crates above it already share: the element type of graph nodes.
#![warn(missing_docs)]

pub use cranelora_kernels::DType;
