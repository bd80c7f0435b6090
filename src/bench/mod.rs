//! `cranelora bench`: the workloads of `WORKLOADS.md` built in each mode
//! and timed (the library side; the command line is `src/bench_cmd.rs`).
//!
//! Modes: `eager` (the layers' own forward / backward), `interp` (the
//! exported graph through the graph interpreter), `jit` (Serving export,
//! adapters bound at run time, LoRA folding off), `jit-folded` (Inference
//! export, LoRA folding on), `merged-eager` (eager forward of the merged
//! model) and, for W2, `jit-bound` (jit's graph called through a
//! `BoundGraph`, the documented latency path: bindings resolved once) and
//! `rustc-baseline` ([`baseline`]). Before a mode is
//! timed its output is checked against eager's, so a wrong fast path is a
//! failure, not a number.
//!
//! Timing ([`measure`]): one warm-up call, a short calibration, then calls
//! grouped so that each sample lasts at least ~20 µs, as many samples as
//! fill the target time (at least 3); median and minimum per call.

use crate::workloads::{self, W4_LR};
use anyhow::{bail, ensure, Context, Result};
use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_to_data,
};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::Sequential;
use cranelora_core::lora::merge_all;
use cranelora_core::loss::mse;
use cranelora_core::{Input, Layer, Tensor};
use cranelora_graph::interpret;
use cranelora_graph::training::{training_step, Loss, Optimizer, Trainable};
use cranelora_jit::{compile, Bindings, JitOptions, Trainer};
use std::time::{Duration, Instant};

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
    /// W2 written by hand in Rust with constant shapes ([`baseline`]).
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
    fn add(&mut self, workload: Workload, mode: Mode, r: Result<Stats>) {
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

/// Times `f`: a warm-up call, a calibration, then samples of grouped calls
/// filling about `target` (at least 3 samples).
///
/// # Errors
/// The first error of `f`.
pub fn measure(target: Duration, f: &mut dyn FnMut() -> Result<()>) -> Result<Stats> {
    f()?;
    let calibration = (target / 20).min(Duration::from_millis(50));
    let start = Instant::now();
    let mut n = 0u32;
    while n == 0 || start.elapsed() < calibration {
        f()?;
        n += 1;
    }
    let per_call = (start.elapsed().as_secs_f64() / f64::from(n)).max(1e-9);
    let group = ((20e-6 / per_call).ceil() as usize).max(1);
    let samples = ((target.as_secs_f64() / (per_call * group as f64)) as usize).clamp(3, 1_000_000);
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..group {
            f()?;
        }
        times.push(t.elapsed().as_secs_f64() / group as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(Stats {
        median: Duration::from_secs_f64(times[times.len() / 2]),
        min: Duration::from_secs_f64(times[0]),
        calls: samples * group,
    })
}

/// Runs `workloads` with about `target` per measurement; `progress` is told
/// each workload as it starts.
pub fn run(workloads: &[Workload], target: Duration, progress: &mut dyn FnMut(Workload)) -> Report {
    let mut report = Report::default();
    for &w in workloads {
        progress(w);
        let built =
            match w {
                Workload::W1 => workloads::w1::<f32>()
                    .map(|(m, x)| forward_modes(w, &m, &x, target, &mut report)),
                Workload::W2 => workloads::w2::<f32>()
                    .map(|(m, x)| forward_modes(w, &m, &x, target, &mut report)),
                Workload::W3 => workloads::w3::<f32>()
                    .map(|(m, x)| forward_modes(w, &m, &x, target, &mut report)),
                Workload::W4 => workloads::w4::<f32>()
                    .map(|(m, x, y)| train_modes(&m, &x, &y, target, &mut report)),
                Workload::W5 => {
                    workloads::w3::<f32>().map(|(m, x)| compile_times(&m, &x, target, &mut report))
                }
            };
        if let Err(e) = built {
            report.failures.push(Failure {
                workload: w,
                mode: None,
                error: format!("building the workload: {e}"),
            });
        }
    }
    report
}

/// Checks `got` against `expected` within a tolerance relative to `expected`'s largest magnitude.
fn check_close(got: &[f64], expected: &[f64], rtol: f64) -> Result<()> {
    ensure!(
        got.len() == expected.len(),
        "output length {} vs eager's {}",
        got.len(),
        expected.len()
    );
    let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0.0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    ensure!(
        worst <= rtol * scale,
        "output differs from eager's by {worst:e} (allowed {:e})",
        rtol * scale
    );
    Ok(())
}

fn export(
    model: &Sequential<f32>,
    x: &Tensor<f32>,
    mode: ExportMode,
) -> Result<cranelora_graph::Graph> {
    let inputs = [Input::Float(x)];
    Ok(export_model(
        model,
        &input_specs(&inputs),
        &ExportOptions::new(mode),
    )?)
}

fn forward_modes(
    w: Workload,
    model: &Sequential<f32>,
    x: &Tensor<f32>,
    target: Duration,
    report: &mut Report,
) {
    let expected = match eager_expected(model, x) {
        Ok(e) => e,
        Err(e) => {
            report.failures.push(Failure {
                workload: w,
                mode: Some(Mode::Eager),
                error: format!("{e:#}"),
            });
            return;
        }
    };
    for &mode in w.modes() {
        let r =
            forward_runner(w, mode, model, x, &expected).and_then(|mut f| measure(target, &mut *f));
        report.add(w, mode, r);
    }
}

/// One call of a workload in one mode, built and checked: the closure
/// [`measure`] (or a criterion benchmark) times.
pub type Runner<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// The eager forward's output (eval mode) as `f64`: what every forward mode is checked against.
///
/// # Errors
/// If the eager forward fails.
pub fn eager_expected(model: &Sequential<f32>, x: &Tensor<f32>) -> Result<Vec<f64>> {
    let mut m = model.clone();
    m.set_training(false);
    Ok(m.forward_float(x)?
        .to_vec()
        .iter()
        .map(|&v| f64::from(v))
        .collect())
}

/// Builds W1/W2/W3 (`model`, input `x`) in `mode`, checks its output against
/// `expected` ([`eager_expected`]) and returns one forward call.
///
/// # Errors
/// If the mode does not apply, fails to build, or its output differs from eager's.
pub fn forward_runner<'a>(
    w: Workload,
    mode: Mode,
    model: &Sequential<f32>,
    x: &'a Tensor<f32>,
    expected: &[f64],
) -> Result<Runner<'a>> {
    ensure!(
        mode != Mode::RustcBaseline || w == Workload::W2,
        "rustc-baseline exists for W2 only"
    );
    let (output, call) = build_forward(mode, model, x)?;
    check_close(&output, expected, 1e-3)?;
    Ok(call)
}

/// Builds `model` (input `x`, one float tensor) in `mode`: its output on `x`
/// as `f64`, and one forward call. Shared by `bench` and the demo.
/// "jit" is a Serving export with LoRA folding off, "jit-folded" an
/// Inference export with folding on; rustc-baseline needs W2's shapes.
///
/// # Errors
/// If the mode fails to build or run.
pub fn build_forward<'a>(
    mode: Mode,
    model: &Sequential<f32>,
    x: &'a Tensor<f32>,
) -> Result<(Vec<f64>, Runner<'a>)> {
    let inputs = [Input::Float(x)];
    let values = input_values(&inputs);
    let to_f64 = |t: &Tensor<f32>| t.to_vec().iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    match mode {
        Mode::Eager | Mode::MergedEager => {
            let mut m = model.clone();
            if mode == Mode::MergedEager {
                merge_all(&mut m).context("merging")?;
            }
            m.set_training(false);
            let output = to_f64(&m.forward_float(x)?);
            Ok((
                output,
                Box::new(move || {
                    m.forward_float(x)?;
                    Ok(())
                }),
            ))
        }
        Mode::Interp => {
            let g = export(model, x, ExportMode::Serving)?;
            let b = bindings_for(model, &g)?;
            let output = interpret(&g, &values, &b)?[0].to_f64_vec();
            Ok((
                output,
                Box::new(move || {
                    interpret(&g, &values, &b)?;
                    Ok(())
                }),
            ))
        }
        Mode::JitBound => {
            let g = export(model, x, ExportMode::Serving)?;
            let b = Bindings::from_map(&bindings_for(model, &g)?)?;
            let c = compile(&g, &JitOptions::default().with_lora_fold(false))?;
            let mut bound = std::sync::Arc::new(c).bind(std::sync::Arc::new(b))?;
            let mut out = bound.run(&values)?;
            let output = out[0].to_f64_vec();
            Ok((
                output,
                Box::new(move || {
                    bound.run_into(&values, &mut out)?;
                    Ok(())
                }),
            ))
        }
        Mode::Jit | Mode::JitFolded => {
            let (export_mode, fold) = if mode == Mode::Jit {
                (ExportMode::Serving, false)
            } else {
                (ExportMode::Inference, true)
            };
            let g = export(model, x, export_mode)?;
            let b = Bindings::from_map(&bindings_for(model, &g)?)?;
            let c = compile(&g, &JitOptions::default().with_lora_fold(fold))?;
            let mut out = c.run(&values, &b)?;
            let output = out[0].to_f64_vec();
            Ok((
                output,
                Box::new(move || {
                    c.run_into(&values, &b, &mut out)?;
                    Ok(())
                }),
            ))
        }
        Mode::RustcBaseline => {
            let weights = baseline::W2Weights::from_model(model)?;
            let xs: [f32; baseline::IN] = x
                .to_vec()
                .try_into()
                .map_err(|_| anyhow::anyhow!("W2 input is not [1, 64]"))?;
            let mut y = [0.0f32; baseline::OUT];
            baseline::forward(&weights, &xs, &mut y);
            let output = y.map(f64::from).to_vec();
            Ok((
                output,
                Box::new(move || {
                    baseline::forward(
                        std::hint::black_box(&weights),
                        std::hint::black_box(&xs),
                        &mut y,
                    );
                    std::hint::black_box(&y);
                    Ok(())
                }),
            ))
        }
    }
}

fn train_modes(
    model: &Sequential<f32>,
    x: &Tensor<f32>,
    y: &Tensor<f32>,
    target: Duration,
    report: &mut Report,
) {
    for &mode in Workload::W4.modes() {
        let r = train_runner(mode, model, x, y).and_then(|mut f| measure(target, &mut *f));
        report.add(Workload::W4, mode, r);
    }
}

/// Builds W4's training step (`model`, input `x`, target `y`) in `mode`,
/// checks the first step's loss against eager's and returns one step (each
/// call updates the adapters, as training does).
///
/// # Errors
/// If the mode does not apply, fails to build, or its loss differs from eager's.
pub fn train_runner<'a>(
    mode: Mode,
    model: &Sequential<f32>,
    x: &'a Tensor<f32>,
    y: &'a Tensor<f32>,
) -> Result<Runner<'a>> {
    let lr = W4_LR as f32;
    // The loss before the first step, from the eager forward.
    let mut reference = model.clone();
    reference.set_training(false);
    let expected = f64::from(mse(&reference.forward_float(x)?, y)?.value);
    match mode {
        Mode::Eager => {
            let mut m = model.clone();
            m.set_training(true);
            let mut step = move || -> Result<f32> {
                m.zero_grad();
                let pred = m.forward_float(x)?;
                let loss = mse(&pred, y)?;
                m.backward(&loss.grad)?;
                m.update_parameters(lr);
                Ok(loss.value)
            };
            check_close(&[f64::from(step()?)], &[expected], 1e-3)?;
            Ok(Box::new(move || step().map(|_| ())))
        }
        Mode::Interp | Mode::Jit => {
            let g = export(model, x, ExportMode::Training)?;
            let lora = Trainable::NameContains("lora_".into());
            let step = training_step(&g, Loss::Mse, &lora, &Optimizer::Sgd { lr: W4_LR })?;
            ensure!(!step.updates.is_empty(), "the W4 step trains nothing");
            let mut b = bindings_for(model, &g)?;
            b.extend(step.initial_state());
            let values = [
                input_values(&[Input::Float(x)]).remove(0),
                tensor_to_data(y),
            ];
            if mode == Mode::Interp {
                let out = interpret(&step.graph, &values, &b)?;
                check_close(&out[0].to_f64_vec(), &[expected], 1e-3)?;
                Ok(Box::new(move || {
                    let out = interpret(&step.graph, &values, &b)?;
                    step.apply(&out, &mut b);
                    Ok(())
                }))
            } else {
                // The compiled step writes the new adapters and optimizer
                // state into its Parameter buffers (no copy, no allocation).
                let options = JitOptions::default().with_lora_fold(false);
                let mut trainer = Trainer::new(&step, Bindings::from_map(&b)?, &options)?;
                check_close(&[trainer.step(&values)?], &[expected], 1e-3)?;
                Ok(Box::new(move || {
                    trainer.step(&values).map(|_| ()).map_err(Into::into)
                }))
            }
        }
        other => bail!("{} does not apply to W4", other.name()),
    }
}

fn compile_times(model: &Sequential<f32>, x: &Tensor<f32>, target: Duration, report: &mut Report) {
    // Compiles are slow; a fixed count, more with the longer target.
    let reps = if target >= Duration::from_millis(500) {
        10
    } else {
        3
    };
    for (mode, export_mode, fold) in [
        (Mode::Jit, ExportMode::Serving, false),
        (Mode::JitFolded, ExportMode::Inference, true),
    ] {
        let mut times = Vec::with_capacity(reps);
        let r = (0..reps).try_for_each(|_| -> Result<()> {
            let t = Instant::now();
            compile_once(model, x, export_mode, fold)?;
            times.push(t.elapsed());
            Ok(())
        });
        match r {
            Ok(()) => {
                times.sort();
                report.compile.push(CompileTime {
                    workload: Workload::W3,
                    mode,
                    stats: Stats {
                        median: times[times.len() / 2],
                        min: times[0],
                        calls: reps,
                    },
                });
            }
            Err(e) => report.failures.push(Failure {
                workload: Workload::W5,
                mode: Some(mode),
                error: format!("{e:#}"),
            }),
        }
    }
}

/// W5's unit of work: exports `model` (input `x`) in `export_mode`, runs the
/// passes and JIT-compiles it (LoRA folding `fold`), then drops the code.
/// `jit` is (Serving, false), `jit-folded` (Inference, true).
///
/// # Errors
/// If export or compile fails.
pub fn compile_once(
    model: &Sequential<f32>,
    x: &Tensor<f32>,
    export_mode: ExportMode,
    fold: bool,
) -> Result<()> {
    let g = export(model, x, export_mode)?;
    let c = compile(&g, &JitOptions::default().with_lora_fold(fold))?;
    drop(c);
    Ok(())
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

pub mod baseline;
pub mod minilm;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustc_baseline_equals_eager_on_w2() {
        let (mut model, x) = workloads::w2::<f32>().unwrap();
        let expected = model.forward_float(&x).unwrap().to_vec();
        let w = baseline::W2Weights::from_model(&model).unwrap();
        let mut y = [0.0f32; baseline::OUT];
        baseline::forward(&w, &x.to_vec().try_into().unwrap(), &mut y);
        for (a, b) in y.iter().zip(&expected) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{y:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn measure_reports_sane_stats() {
        let mut n = 0u64;
        let s = measure(Duration::from_millis(20), &mut || {
            n = std::hint::black_box(n + 1);
            Ok(())
        })
        .unwrap();
        assert!(s.min <= s.median && s.calls >= 3);
    }

    #[test]
    fn workload_names_parse() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(&w.name().to_lowercase()), Some(w));
        }
        assert_eq!(Workload::parse("W9"), None);
    }
}
