//! One test binary for the integration tests of this package: each
//! `tests/*.rs` file is a module here (test names get its name as prefix:
//! `cargo test --test integration <file>::`), so the package links one
//! executable instead of one per file. Files that need a process of their
//! own are `[[test]]` targets in Cargo.toml. See docs/architecture.md,
//! "Tests".

mod common;

mod adapter_strategy;
mod attention;
mod bound;
mod epilogue;
mod exports;
mod fusion;
mod gather_epilogue;
mod gather_matmul;
mod golden;
mod inplace;
mod lora_epilogue;
mod lora_mlp;
mod math_ulp;
mod ops;
mod packed_params;
mod random_graphs;
mod small_matmul;
mod threads;
mod train_models;
mod training;
