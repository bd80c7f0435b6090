//! cranelora: LoRA fine-tuning and Cranelift-compiled inference for Rust.
//!
//! This facade re-exports the workspace crates:
//!
//! - [`kernels`]: GEMM, im2col, vectorized math — shared by every execution path;
//! - [`graph`]: the computation-graph IR;
//! - [`core`]: tensors, layers, losses, optimizers (the eager framework);
//! - [`jit`]: Cranelift compilation of graphs.
//!
//! ```
//! use cranelora::core::{layers::Dense, Activation, Layer, Rng, Tensor};
//! let mut layer = Dense::<f32>::new(4, 2, true, Activation::Relu, &mut Rng::new(0)).unwrap();
//! let y = layer.forward_float(&Tensor::ones(&[3, 4])).unwrap();
//! assert_eq!(y.shape(), &[3, 2]);
//! ```
#![warn(missing_docs)]

pub use cranelora_core as core;
pub use cranelora_graph as graph;
pub use cranelora_jit as jit;
pub use cranelora_kernels as kernels;

pub mod bench;
pub mod demo;
pub mod embed;
pub mod plot;
pub mod serving;
pub mod workloads;
