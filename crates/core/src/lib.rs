//! Tensors, layers, LoRA adapters, losses and optimizers: the eager half of cranelora.
#![warn(missing_docs)]

pub mod activation;
mod error;
pub mod export;
pub mod io;
pub mod layer;
pub mod layers;
pub mod lora;
pub mod loss;
pub mod models;
pub mod optim;
mod rng;
pub mod tensor;
pub mod testing;
pub mod train;

pub use activation::{Activation, ActivationLayer};
pub use error::{Error, Result};
pub use layer::{Input, Layer, Mask, Weight};
pub use rng::Rng;
pub use tensor::{IdTensor, Tensor};
