//! Cranelift JIT compilation of cranelora graphs.
//!
//! This crate will lower a `cranelora_graph::Graph` to one native function
//! per graph, calling the kernels crate's GEMM for large products; see
//! `docs/architecture.md`. It has no public items yet.
#![warn(missing_docs)]
