//! The built-in layers, one per file.

mod dense;
mod dropout;
mod residual;
mod sequential;

pub use dense::{Dense, FullyConnected};
pub use dropout::Dropout;
pub use residual::Residual;
pub use sequential::Sequential;
