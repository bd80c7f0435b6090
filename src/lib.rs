//! cranelora facade (being written).
pub use cranelora_kernels as kernels;
