//! Numeric kernels shared by every cranelora execution path.
//!
//! The eager layers (cranelora-core), the graph interpreter (cranelora-graph)
//! and the JIT (cranelora-jit) all call these functions, so a comparison
//! between the three measures execution strategy, not three different GEMMs.
//!
//! - [`Scalar`] (f32, f64) and [`DType`] (f32, f64, i64): the element types.
//! - [`gemm`]: matrix products with caller-provided workspace and prepacked
//!   right-hand matrices, runtime-selected AVX-512 / AVX2 / portable code.
//! - [`im2col`]: the convolution lowering (im2col / col2im).
//! - [`math`]: vectorized exp, tanh, erf, GELU and sigmoid with documented
//!   error bounds, from one coefficient table the JIT emits as well.
//! - [`testing`]: the one `assert_close` every test uses.
//! - [`pool`]: the one persistent thread pool the kernels split work over.
//!
//! ```
//! use cranelora_kernels::gemm::{gemm_alloc, MatMut, MatRef, Rhs};
//! let a = [1.0f32, 2.0, 3.0, 4.0]; // 2×2
//! let b = [5.0f32, 6.0, 7.0, 8.0]; // 2×2
//! let mut c = [0.0f32; 4];
//! gemm_alloc(
//!     1.0,
//!     MatRef::new(&a, 2, 2).unwrap(),
//!     Rhs::Mat(MatRef::new(&b, 2, 2).unwrap()),
//!     0.0,
//!     MatMut::new(&mut c, 2, 2).unwrap(),
//! )
//! .unwrap();
//! assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
//! ```
#![warn(missing_docs)]

mod dtype;
mod error;
pub mod gemm;
pub mod im2col;
pub mod math;
pub mod pool;
mod scalar;
pub mod testing;

pub use dtype::DType;
pub use error::{KernelError, Result};
pub use scalar::Scalar;
