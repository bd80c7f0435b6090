//! `cranelora peft <dir> [--name N]`: inspects a PEFT adapter directory.

use anyhow::{bail, Context, Result};
use cranelora::core::io::{inspect_peft_adapter, AdapterInspection};
use cranelora::core::lora::{BiasMode, TargetModules};
use std::path::PathBuf;

/// Parses the arguments after `peft`, prints the adapter and its problems;
/// fails (non-zero exit) when there are problems.
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let mut dir: Option<PathBuf> = None;
    let mut name: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--name" => name = Some(it.next().context("--name needs a value")?.clone()),
            flag if flag.starts_with("--") => bail!("peft: unknown option `{flag}`\n\n{usage}"),
            path if dir.is_none() => dir = Some(PathBuf::from(path)),
            extra => bail!("peft: unexpected argument `{extra}`\n\n{usage}"),
        }
    }
    let dir = dir.with_context(|| format!("peft: missing the adapter directory\n\n{usage}"))?;
    let report = inspect_peft_adapter(&dir, name.as_deref())
        .with_context(|| format!("cannot inspect adapter directory {}", dir.display()))?;
    print_report(&report);
    if !report.problems.is_empty() {
        bail!(
            "{} problem(s) found in {}",
            report.problems.len(),
            report.dir.display()
        );
    }
    Ok(())
}

fn print_report(r: &AdapterInspection) {
    println!("adapter: {}", r.dir.display());
    if let Some(c) = &r.config {
        let targets = match &c.target_modules {
            TargetModules::Names(n) => format!("[{}]", n.join(", ")),
            TargetModules::Regex(s) => format!("regex {s:?}"),
        };
        let bias = match c.bias {
            BiasMode::None => "none",
            BiasMode::All => "all",
            BiasMode::LoraOnly => "lora_only",
        };
        println!(
            "config:  r={} lora_alpha={} rsLoRA={} DoRA={} bias={bias} lora_bias={} target_modules={targets}",
            c.r, c.lora_alpha, c.use_rslora, c.use_dora, c.lora_bias
        );
        if !c.rank_pattern.is_empty() || !c.alpha_pattern.is_empty() {
            println!(
                "         rank_pattern={:?} alpha_pattern={:?}",
                c.rank_pattern, c.alpha_pattern
            );
        }
    }
    let width = r
        .modules
        .iter()
        .map(|m| m.path.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:<9}  {:>4}  {:>8}  {:>8}  {:>8}  {:>10}  {:>4}  {:>9}",
        "module", "kind", "r", "alpha", "scaling", "fan_in", "params", "DoRA", "lora_bias"
    );
    for m in &r.modules {
        println!(
            "{:<width$}  {:<9}  {:>4}  {:>8}  {:>8.4}  {:>8}  {:>10}  {:>4}  {:>9}",
            m.path,
            m.kind,
            m.rank,
            m.alpha,
            m.scaling,
            m.fan_in,
            m.parameters,
            yes_no(m.dora),
            yes_no(m.lora_bias)
        );
    }
    println!(
        "total:   {} modules, {} parameters, {} saved base biases",
        r.modules.len(),
        r.total_parameters,
        r.base_biases.len()
    );
    if r.problems.is_empty() {
        println!("no problems found");
    } else {
        println!("problems:");
        for p in &r.problems {
            println!("  - {p}");
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
