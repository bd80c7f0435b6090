//! One test binary for the integration tests of this package: each
//! `tests/*.rs` file is a module here (test names get its name as prefix:
//! `cargo test --test integration <file>::`), so the package links one
//! executable instead of one per file. Files that need a process of their
//! own are `[[test]]` targets in Cargo.toml. See docs/architecture.md,
//! "Tests".

mod io_common;

mod attention_fused;
mod autodiff_layers;
mod bert;
mod export;
mod io_combine;
mod io_errors;
mod io_proptest;
mod io_roundtrip;
mod lora_apply;
mod lora_conv_embedding_attention;
mod lora_dense;
mod lora_fold_export;
mod peft_fixtures;
mod training;
mod training_graph;
