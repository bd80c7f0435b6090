//! Each workload built in each mode, checked against eager, and timed
//! (W5: compile times).

use super::report::{CompileTime, Failure, Mode, Report, Stats, Workload};
use super::{baseline, measure};
use crate::workloads::W4_LR;
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

pub(super) fn forward_modes(
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

pub(super) fn train_modes(
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

pub(super) fn compile_times(
    model: &Sequential<f32>,
    x: &Tensor<f32>,
    target: Duration,
    report: &mut Report,
) {
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
