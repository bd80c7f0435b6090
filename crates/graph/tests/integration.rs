//! One test binary for the integration tests of this package: each
//! `tests/*.rs` file is a module here (test names get its name as prefix:
//! `cargo test --test integration <file>::`), so the package links one
//! executable instead of one per file. Files that need a process of their
//! own are `[[test]]` targets in Cargo.toml. See docs/architecture.md,
//! "Tests".

mod common;

mod autodiff;
mod building;
mod golden;
mod interp_elementwise;
mod interp_tensor;
mod passes;
mod passes_prop;
mod training;
