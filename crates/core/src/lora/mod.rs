//! LoRA: low-rank adapters for every layer type.
//!
//! - [`LoraConfig`]: rank, α (default r), rsLoRA, DoRA, LoRA bias, init, freezing;
//! - [`LoraLayer`]: the branch `s·(x·A)·B`;
//! - [`LoraAdapter`]: the seed's LoRAAdapterBase — base + branch, merge, unmerge;
//! - [`LoraTarget`]: what Dense, FullyConnected, Conv2d and Embedding expose.
//!
//! The formulas are in `docs/lora.md`.

mod adapter;
mod channels;
mod config;
mod layer;
mod target;
mod targets;

pub use adapter::LoraAdapter;
pub use config::{LoraConfig, LoraInit};
pub use layer::LoraLayer;
pub use target::{LoraGeometry, LoraTarget};
