//! The `cranelora` command-line tool.

use anyhow::{bail, Context, Result};
use cranelora::demo::{run_demo, DemoConfig};
use std::time::Instant;

mod bench_cmd;
mod graph_cmd;
mod peft_cmd;

const USAGE: &str = "\
cranelora — LoRA fine-tuning and Cranelift-compiled inference for Rust

USAGE:
    cranelora demo [--epochs N] [--seed S]   train the demo MLP, print the loss per epoch
    cranelora peft <dir> [--name N]          inspect a PEFT adapter directory and report problems
    cranelora bench [--workload W1|W2|W3|W4|W5|all] [--quick] [--json FILE]
                                             time the workloads of WORKLOADS.md in every mode
                                             (~1 s per measurement, ~0.2 s with --quick)
    cranelora graph --model mlp|attention|w1|w3 [--passes] [--mode inference|serving|training]
                    --dot FILE
                                             export a built-in model as a graph and write it as
                                             Graphviz DOT (LoRA branches and, with --passes, fusion
                                             groups as clusters); --passes runs the pass pipeline
                                             and prints node counts per pass. Render the picture
                                             with `dot -Tsvg FILE -o FILE.svg` (--svg is refused)
    cranelora help                           print this help
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("peft") => peft_cmd::run(&args[1..], USAGE),
        Some("bench") => bench_cmd::run(&args[1..], USAGE),
        Some("graph") => graph_cmd::run(&args[1..], USAGE),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn demo(args: &[String]) -> Result<()> {
    let mut cfg = DemoConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "--epochs" => cfg.epochs = value("--epochs")? as usize,
            "--seed" => cfg.seed = value("--seed")?,
            other => bail!("demo: unknown option `{other}`\n\n{USAGE}"),
        }
    }
    println!("cranelora demo: an MLP 8→64→64→1 (GELU) learns a synthetic regression with Adam");
    println!("{:>5}  {:>12}  {:>12}", "epoch", "train MSE", "test MSE");
    let start = Instant::now();
    run_demo(cfg, &mut |epoch, train, test| {
        println!("{:>5}  {train:>12.6}  {test:>12.6}", epoch + 1);
    })?;
    println!("trained in {:.2?}", start.elapsed());
    Ok(())
}
