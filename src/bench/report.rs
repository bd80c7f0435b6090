//! What `cranelora bench` reports: the workloads and modes, per-call
//! statistics, the collected [`Report`], the machine it ran on and its JSON.

use crate::workloads;
use anyhow::Result;
use std::time::Duration;

/// A workload of `WORKLOADS.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// lora-mlp, forward.
    W1,
    /// tiny-latency, forward.
    W2,
    /// encoder-block, forward.
    W3,
    /// train-step on W1.
    W4,
    /// compile W3 (export + passes + JIT).
    W5,
}

impl Workload {
    /// Every workload, in order.
    pub const ALL: [Workload; 5] = [Self::W1, Self::W2, Self::W3, Self::W4, Self::W5];

    /// `"W1"` … `"W5"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::W1 => "W1",
            Self::W2 => "W2",
            Self::W3 => "W3",
            Self::W4 => "W4",
            Self::W5 => "W5",
        }
    }

    /// Parses `W1` … `W5` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
    }

    /// The modes timed for this workload (none for W5, which is a compile time).
    pub fn modes(self) -> &'static [Mode] {
        use Mode::*;
        match self {
            Self::W1 | Self::W3 => &[Eager, Interp, Jit, JitFolded, MergedEager],
            Self::W2 => &[
                Eager,
                Interp,
                Jit,
                JitBound,
                JitFolded,
                MergedEager,
                RustcBaseline,
            ],
            Self::W4 => &[Eager, Interp, Jit],
            Self::W5 => &[],
        }
    }
}

/// How a workload is executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The layers' own forward (and backward for W4).
    Eager,
    /// The exported graph through the interpreter.
    Interp,
    /// Compiled, adapters unmerged and bound at run time (Serving export, LoRA folding off).
    Jit,
    /// [`Mode::Jit`]'s compiled graph called through a `BoundGraph`
    /// (`CompiledGraph::bind`: Parameters checked and resolved once).
    JitBound,
    /// Compiled, LoRA folded into the base weights (Inference export, folding on).
    JitFolded,
    /// Eager forward of the merged plain model.
    MergedEager,
    /// W2 written by hand in Rust with constant shapes ([`baseline`](super::baseline)).
    RustcBaseline,
}

impl Mode {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eager => "eager",
            Self::Interp => "interp",
            Self::Jit => "jit",
            Self::JitBound => "jit-bound",
            Self::JitFolded => "jit-folded",
            Self::MergedEager => "merged-eager",
            Self::RustcBaseline => "rustc-baseline",
        }
    }
}

/// Median and minimum time per call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Median per call.
    pub median: Duration,
    /// Minimum per call.
    pub min: Duration,
    /// Calls timed (warm-up and calibration excluded).
    pub calls: usize,
}

/// One timed (workload, mode).
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// The workload.
    pub workload: Workload,
    /// The mode.
    pub mode: Mode,
    /// The times.
    pub stats: Stats,
    /// Achieved GFLOP/s at the median (W1 only).
    pub gflops: Option<f64>,
}

/// A compile time (W5: W3 exported, optimized and compiled).
#[derive(Clone, Debug, PartialEq)]
pub struct CompileTime {
    /// The workload compiled (W3).
    pub workload: Workload,
    /// `jit` or `jit-folded`.
    pub mode: Mode,
    /// Wall time of export + passes + JIT compile.
    pub stats: Stats,
}

/// A (workload, mode) that could not be built, checked or timed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The workload.
    pub workload: Workload,
    /// The mode, if the failure is specific to one.
    pub mode: Option<Mode>,
    /// What went wrong.
    pub error: String,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Per-call times.
    pub results: Vec<Measurement>,
    /// Compile times (W5).
    pub compile: Vec<CompileTime>,
    /// What failed.
    pub failures: Vec<Failure>,
}

impl Report {
    pub(super) fn add(&mut self, workload: Workload, mode: Mode, r: Result<Stats>) {
        match r {
            Ok(stats) => {
                let gflops = (workload == Workload::W1).then(|| {
                    let merged = matches!(mode, Mode::JitFolded | Mode::MergedEager);
                    workloads::w1_flops(merged) / stats.median.as_secs_f64() / 1e9
                });
                self.results.push(Measurement {
                    workload,
                    mode,
                    stats,
                    gflops,
                });
            }
            Err(e) => self.failures.push(Failure {
                workload,
                mode: Some(mode),
                error: format!("{e:#}"),
            }),
        }
    }

    /// The measurement of (workload, mode), if it was taken.
    pub fn get(&self, workload: Workload, mode: Mode) -> Option<&Measurement> {
        self.results
            .iter()
            .find(|m| m.workload == workload && m.mode == mode)
    }
}

/// The machine: CPU model name (from `/proc/cpuinfo`) and available cores.
pub fn machine() -> (String, usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpu, cores)
}

/// The report as the JSON of `cranelora bench --json`:
/// `{"machine": {"cpu", "cores"}, "results": [{"workload", "mode",
/// "median_us", "min_us", "gflops"}], "compile_ms": {"W3": …}}`
/// (`compile_ms.W3` is the `jit` compile: Serving export, folding off).
pub fn to_json(report: &Report, cpu: &str, cores: usize) -> serde_json::Value {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let results: Vec<serde_json::Value> = report
        .results
        .iter()
        .map(|m| {
            serde_json::json!({
                "workload": m.workload.name(),
                "mode": m.mode.name(),
                "median_us": us(m.stats.median),
                "min_us": us(m.stats.min),
                "gflops": m.gflops,
            })
        })
        .collect();
    let mut compile_ms = serde_json::Map::new();
    if let Some(c) = report.compile.iter().find(|c| c.mode == Mode::Jit) {
        compile_ms.insert(
            c.workload.name().to_string(),
            serde_json::json!(c.stats.median.as_secs_f64() * 1e3),
        );
    }
    serde_json::json!({
        "machine": {"cpu": cpu, "cores": cores},
        "results": results,
        "compile_ms": compile_ms,
    })
}
