//! `cranelora bench`: parses the options, runs `cranelora::bench` and prints
//! the table (and writes the JSON with `--json`, the SVG chart of
//! `cranelora::plot` with `--plot`).

use crate::files::write_atomic;
use anyhow::{bail, Context, Result};
use cranelora::bench::{self, Mode, Report, Workload};
use cranelora::plot;
use std::time::Duration;

/// Runs `cranelora bench [--workload W1|…|W5|all] [--quick] [--json FILE] [--plot FILE.svg]`.
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let mut workloads = Workload::ALL.to_vec();
    let mut quick = false;
    let mut json = None;
    let mut plot = None;
    let mut model_dir = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => model_dir = Some(it.next().context("--model needs a folder")?.clone()),
            "--workload" => {
                let v = it.next().context("--workload needs a value")?;
                workloads = if v.eq_ignore_ascii_case("minilm") {
                    Vec::new()
                } else if v.eq_ignore_ascii_case("all") {
                    Workload::ALL.to_vec()
                } else {
                    let w = Workload::parse(v);
                    vec![w.with_context(|| format!("--workload: `{v}` is not W1…W5 or all"))?]
                };
            }
            "--quick" => quick = true,
            "--json" => json = Some(it.next().context("--json needs a file")?.clone()),
            "--plot" => plot = Some(it.next().context("--plot needs a file")?.clone()),
            other => bail!("bench: unknown option `{other}`\n\n{usage}"),
        }
    }
    let target = Duration::from_millis(if quick { 200 } else { 1000 });
    if workloads.is_empty() {
        let dir = model_dir.context("bench --workload minilm needs --model DIR")?;
        return run_minilm(dir.as_ref(), target);
    }
    let (cpu, cores) = bench::machine();
    println!("cranelora bench: {cpu}, {cores} cores, ~{target:?} per measurement");
    let report = bench::run(&workloads, target, &mut |w| {
        eprintln!("running {}…", w.name())
    });
    print_table(&report);
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&bench::to_json(&report, &cpu, cores))?;
        write_atomic(&path, &(text + "\n"))?;
        println!("wrote {path}");
    }
    if let Some(path) = plot {
        let subtitle = format!(
            "{cpu}, {cores} cores; ~{target:?} per measurement{}",
            if quick { " (--quick)" } else { "" }
        );
        write_atomic(&path, &plot::bench_svg(&report, &subtitle))?;
        println!("wrote {path}");
    }
    if !report.failures.is_empty() {
        bail!(
            "{} measurement(s) failed (listed above)",
            report.failures.len()
        );
    }
    Ok(())
}

/// `bench --workload minilm --model DIR`: a whole BERT encoder, eager vs JIT.
fn run_minilm(dir: &std::path::Path, target: Duration) -> Result<()> {
    use bench::minilm::{self, BATCH, SEQ};
    println!(
        "minilm: {} (batch {BATCH} × seq {SEQ}), ~{target:?} per engine",
        dir.display()
    );
    for r in minilm::run(dir, target)? {
        let compile = r.compile.map_or(String::new(), |c| {
            format!(", compiled in {:.2} s", c.as_secs_f64())
        });
        println!(
            "  {:<5} {:>10} per batch (min {}), {:>8.1} sentences/s{compile}",
            r.engine,
            fmt_us(r.stats.median),
            fmt_us(r.stats.min),
            r.sentences_per_second()
        );
    }
    Ok(())
}

fn fmt_us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.3} µs")
    } else if us < 10_000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

fn print_table(report: &Report) {
    println!(
        "{:<4} {:<15} {:>12} {:>12} {:>9} {:>9}",
        "id", "mode", "median", "min", "calls", "GFLOP/s"
    );
    for m in &report.results {
        let gflops = m
            .gflops
            .map_or_else(|| "-".to_string(), |g| format!("{g:.1}"));
        println!(
            "{:<4} {:<15} {:>12} {:>12} {:>9} {:>9}",
            m.workload.name(),
            m.mode.name(),
            fmt_us(m.stats.median),
            fmt_us(m.stats.min),
            m.stats.calls,
            gflops
        );
    }
    for c in &report.compile {
        println!(
            "W5   compile W3 ({}): median {} min {} over {} compiles (export + passes + JIT)",
            c.mode.name(),
            fmt_us(c.stats.median),
            fmt_us(c.stats.min),
            c.stats.calls
        );
    }
    let ratio = |w, a, b| -> Option<f64> {
        let (a, b) = (report.get(w, a)?, report.get(w, b)?);
        Some(a.stats.median.as_secs_f64() / b.stats.median.as_secs_f64())
    };
    let ratios = [
        (
            "W1 jit / jit-folded",
            ratio(Workload::W1, Mode::Jit, Mode::JitFolded),
        ),
        (
            "W1 eager / jit",
            ratio(Workload::W1, Mode::Eager, Mode::Jit),
        ),
        (
            "W2 jit / rustc-baseline",
            ratio(Workload::W2, Mode::Jit, Mode::RustcBaseline),
        ),
        (
            "W2 jit-bound / rustc-baseline",
            ratio(Workload::W2, Mode::JitBound, Mode::RustcBaseline),
        ),
        (
            "W3 eager / jit",
            ratio(Workload::W3, Mode::Eager, Mode::Jit),
        ),
        (
            "W4 eager / jit",
            ratio(Workload::W4, Mode::Eager, Mode::Jit),
        ),
    ];
    for (label, r) in ratios {
        if let Some(r) = r {
            println!("{label}: {r:.2}×");
        }
    }
    for f in &report.failures {
        let mode = f.mode.map_or("(all modes)", Mode::name);
        println!("FAILED {} {mode}: {}", f.workload.name(), f.error);
    }
}
