//! The built-in layers, one per file.

mod attention;
mod attention_export;
mod conv2d;
mod dense;
mod dropout;
mod embedding;
mod layer_norm;
mod residual;
mod sequential;

pub use attention::MultiHeadAttention;
pub use conv2d::{Conv2d, Conv2dOptions};
pub use dense::{Dense, FullyConnected};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use layer_norm::LayerNorm;
pub use residual::Residual;
pub use sequential::Sequential;
