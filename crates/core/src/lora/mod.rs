//! LoRA: low-rank adapters for every layer type.
//!
//! - [`LoraConfig`]: rank, α (default r), rsLoRA, DoRA, LoRA bias, init, freezing;
//! - [`LoraLayer`]: the branch `s·(x·A)·B`;
//! - [`LoraAdapter`]: the seed's LoRAAdapterBase — base + branch, merge, unmerge;
//! - [`LoraTarget`]: what Dense, FullyConnected, Conv2d and Embedding expose;
//! - [`apply_lora`] / [`merge_all`]: PEFT's `get_peft_model` and `merge_and_unload` for a tree.
//!
//! The formulas are in `docs/lora.md`.

mod adapter;
mod apply;
mod channels;
mod config;
mod export;
mod layer;
mod target;
mod targets;

pub use adapter::LoraAdapter;
pub use apply::{apply_lora, merge_all, ApplyConfig, BiasMode, LoraReport, TargetModules};
pub use config::{LoraConfig, LoraInit};
pub use layer::LoraLayer;
pub use target::{LoraGeometry, LoraTarget};
