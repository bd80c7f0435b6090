//! The built-in layers, one per file.

mod dense;

pub use dense::{Dense, FullyConnected};
