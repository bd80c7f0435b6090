//! One test binary for the integration tests of this package: each
//! `tests/*.rs` file is a module here (test names get its name as prefix:
//! `cargo test --test integration <file>::`), so the package links one
//! executable instead of one per file. Files that need a process of their
//! own are `[[test]]` targets in Cargo.toml. See docs/architecture.md,
//! "Tests".

mod serve_support;

mod bench;
mod cli;
mod demo;
mod embed;
mod graph_cmd;
mod serve;
mod serve_bench;
mod serve_epilogue;
mod serve_formats;
mod serve_race;
