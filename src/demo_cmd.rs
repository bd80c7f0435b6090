//! `cranelora demo`: fine-tunes the demo model's adapters (a progress bar
//! and the loss per few epochs), exports the graph and writes it as DOT,
//! checks that eager, interpreter, JIT, merged and JIT-folded agree, and
//! times each (see `cranelora::demo` for the model and the task).
//!
//! Modes are built as `cranelora bench` builds them: `interp` and `jit`
//! from the Serving export (adapters bound at run time, folding off),
//! `jit-folded` from the Inference export with LoRA folding on, `merged`
//! the eager forward after `merge_all`. Timing is [`bench::measure`].

use crate::files::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use cranelora::bench::{self, build_forward, Mode, Stats};
use cranelora::core::export::{export_model, input_specs};
use cranelora::core::export::{ExportMode, ExportOptions};
use cranelora::core::layers::Sequential;
use cranelora::core::{Input, Tensor};
use cranelora::demo::{run_demo, DemoConfig, Progress, FEATURES, HEADS, OUTPUTS, WIDTH};
use cranelora::graph::{to_dot, Graph};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The largest absolute difference from eager allowed for every mode.
pub const TOLERANCE: f64 = 1e-4;

/// Time spent measuring each mode (a few dozen calls or more).
const TIMING_TARGET: Duration = Duration::from_millis(300);

/// Runs `cranelora demo [--epochs N] [--seed S] [--out DIR]`.
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let mut cfg = DemoConfig::default();
    let mut out = PathBuf::from(".");
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = it
                .next()
                .with_context(|| format!("demo: {name} needs a value\n\n{usage}"))?;
            v.parse()
                .with_context(|| format!("demo: {name}: `{v}` is not a number\n\n{usage}"))
        };
        match flag.as_str() {
            "--epochs" => cfg.epochs = value("--epochs")? as usize,
            "--seed" => cfg.seed = value("--seed")?,
            "--out" => {
                let dir = it
                    .next()
                    .with_context(|| format!("demo: --out needs a directory\n\n{usage}"))?;
                out = PathBuf::from(dir);
            }
            other => bail!("demo: unknown option `{other}`\n\n{usage}"),
        }
    }
    ensure!(
        cfg.epochs > 0,
        "demo: --epochs must be at least 1\n\n{usage}"
    );
    ensure!(
        out.is_dir(),
        "demo: --out {}: not an existing directory",
        out.display()
    );
    let start = Instant::now();
    println!(
        "cranelora demo: Dense {FEATURES}→{WIDTH} (GELU) → Residual(attention d={WIDTH}, \
         {HEADS} heads) → LayerNorm → Dense {WIDTH}→{OUTPUTS}, input [batch, {}, {FEATURES}]",
        cfg.seq
    );
    println!(
        "task: match a teacher = the same base + a known rank-{} update; only the student's \
         adapters train (Adam)",
        cfg.rank
    );
    let demo = train(cfg)?;
    println!("{}", demo.lora);
    let model = demo.model;
    let x = &demo.x_test;

    println!("\n== graph");
    let serving = export(&model, x, ExportMode::Serving)?;
    let dot = out.join("demo.dot");
    let dot_name = dot.display().to_string();
    write_atomic(&dot_name, &to_dot(&serving))?;
    println!(
        "exported {} nodes (Serving: adapters as bound parameters); wrote {dot_name}",
        serving.len()
    );
    println!("render it with Graphviz: dot -Tsvg {dot_name} -o demo.svg");

    println!("\n== agreement (max |err| against eager, tolerance {TOLERANCE:e})");
    let modes = build_modes(&model, x)?;
    let expected = modes[0].output.clone();
    let mut bad = Vec::new();
    for m in &modes[1..] {
        let err = max_abs_err(&m.output, &expected)?;
        let ok = err <= TOLERANCE;
        println!(
            "  {:<11} vs eager  max |err| = {err:.3e}  {}",
            m.name,
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            bad.push(m.name);
        }
    }

    println!(
        "\n== per-call time (median, batch {} × seq {})",
        x.shape()[0],
        x.shape()[1]
    );
    let mut rows: Vec<(&str, Stats)> = Vec::new();
    for mut m in modes {
        rows.push((m.name, bench::measure(TIMING_TARGET, &mut *m.call)?));
    }
    let eager = rows[0].1.median.as_secs_f64();
    println!(
        "  {:<11} {:>11} {:>8} {:>10}",
        "mode", "median", "calls", "speedup"
    );
    for (name, s) in &rows {
        let t = s.median.as_secs_f64();
        println!(
            "  {name:<11} {:>8.1} µs {:>8} {:>9.2}×",
            t * 1e6,
            s.calls,
            eager / t
        );
    }
    println!("\ndemo done in {:.1?}", start.elapsed());
    ensure!(
        bad.is_empty(),
        "demo: {} disagree with eager by more than {TOLERANCE:e}",
        bad.join(", ")
    );
    Ok(())
}

/// Fine-tunes with a progress bar (hidden when stdout is not a terminal),
/// printing the losses of about six epochs.
fn train(cfg: DemoConfig) -> Result<cranelora::demo::Demo> {
    let steps = cfg.epochs * cfg.samples.div_ceil(cfg.batch);
    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed}]")
            .context("progress bar template")?,
    );
    let every = cfg.epochs.div_ceil(6);
    println!("\n== fine-tuning ({} epochs, {steps} steps)", cfg.epochs);
    println!(
        "  {:>5}  {:>12}  {:>12}",
        "epoch", "train MSE", "held-out MSE"
    );
    let t = Instant::now();
    let mut last = f32::NAN;
    let demo = run_demo(cfg, &mut |p| match p {
        Progress::Step(loss) => {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.5}"));
        }
        Progress::Epoch(e, train, test) => {
            last = test;
            if e == 0 || (e + 1) % every == 0 || e + 1 == cfg.epochs {
                bar.suspend(|| println!("  {:>5}  {train:>12.6}  {test:>12.6}", e + 1));
            }
        }
    })?;
    bar.finish_and_clear();
    println!(
        "  held-out MSE {:.6} before training → {last:.6} after, in {:.1?}",
        demo.initial_test_mse,
        t.elapsed()
    );
    Ok(demo)
}

/// One way of running the model: its output on the held-out batch and a
/// closure that runs it again (for timing).
struct ModeRun<'a> {
    name: &'static str,
    output: Vec<f64>,
    call: Box<dyn FnMut() -> Result<()> + 'a>,
}

fn export(model: &Sequential<f32>, x: &Tensor<f32>, mode: ExportMode) -> Result<Graph> {
    let specs = input_specs(&[Input::Float(x)]);
    export_model(model, &specs, &ExportOptions::new(mode)).context("exporting the demo model")
}

/// eager, interp, jit, merged, jit-folded — in that order, built by the
/// same code `cranelora bench` uses.
fn build_modes<'a>(model: &Sequential<f32>, x: &'a Tensor<f32>) -> Result<Vec<ModeRun<'a>>> {
    let modes = [
        ("eager", Mode::Eager),
        ("interp", Mode::Interp),
        ("jit", Mode::Jit),
        ("merged", Mode::MergedEager),
        ("jit-folded", Mode::JitFolded),
    ];
    modes
        .into_iter()
        .map(|(name, mode)| {
            let (output, call) =
                build_forward(mode, model, x).with_context(|| format!("building mode {name}"))?;
            Ok(ModeRun { name, output, call })
        })
        .collect()
}

/// The largest absolute difference (NaN counts as infinite).
fn max_abs_err(got: &[f64], expected: &[f64]) -> Result<f64> {
    ensure!(
        got.len() == expected.len(),
        "output length {} vs eager's {}",
        got.len(),
        expected.len()
    );
    Ok(got.iter().zip(expected).fold(0.0f64, |m, (a, b)| {
        let d = (a - b).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    }))
}
