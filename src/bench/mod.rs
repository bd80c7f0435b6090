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

mod modes;
mod report;

pub use modes::{
    build_forward, compile_once, eager_expected, forward_runner, train_runner, Runner,
};
pub use report::{
    machine, to_json, CompileTime, Failure, Measurement, Mode, Report, Stats, Workload,
};

use crate::workloads;
use anyhow::Result;
use modes::{compile_times, forward_modes, train_modes};
use std::time::{Duration, Instant};

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

pub mod baseline;
pub mod minilm;

#[cfg(test)]
mod tests {
    use super::*;
    use cranelora_core::Layer;

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
