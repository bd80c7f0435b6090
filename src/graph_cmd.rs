//! `cranelora graph`: builds a built-in model, exports it as a graph,
//! optionally runs the default pass pipeline (printing the node counts per
//! pass), and writes a Graphviz DOT picture of the result.
//!
//! `--svg` is refused with a message to render the DOT with Graphviz
//! (`dot -Tsvg FILE.dot -o FILE.svg`): the pure-Rust renderer `layout-rs`
//! 0.1.3 parses our DOT and writes an SVG, but drops the `subgraph
//! cluster_*` groups — the LoRA and fusion clusters that are the point of
//! the picture — so it is not worth a dependency.

use crate::files::write_atomic;
use anyhow::{bail, Context, Result};
use cranelora::core::export::{export_model, input_specs, ExportMode, ExportOptions, InputSpec};
use cranelora::core::layers::MultiHeadAttention;
use cranelora::core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora::core::{Input, Layer, Rng, Tensor};
use cranelora::demo::demo_mlp;
use cranelora::graph::passes::{FusionPlan, PassManager, PassOptions};
use cranelora::graph::to_dot_with;
use cranelora::jit::serve::{plan, AdapterStrategy, ServingLoad};
use cranelora::workloads;

/// Runs `cranelora graph --model M [--passes] [--mode MODE] (--dot FILE | --svg FILE)`.
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let mut model = None;
    let mut passes = false;
    let mut mode = ExportMode::Inference;
    let mut mode_name = "inference".to_string();
    let mut dot = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => model = Some(it.next().context("--model needs a value")?.clone()),
            "--passes" => passes = true,
            "--mode" => {
                let v = it.next().context("--mode needs a value")?;
                mode = match v.as_str() {
                    "inference" => ExportMode::Inference,
                    "serving" => ExportMode::Serving,
                    "training" => ExportMode::Training,
                    _ => bail!("--mode: `{v}` is not inference, serving or training"),
                };
                mode_name.clone_from(v);
            }
            "--dot" => dot = Some(it.next().context("--dot needs a file")?.clone()),
            "--svg" => {
                let f = it.next().context("--svg needs a file")?;
                bail!(
                    "--svg is not supported: cranelora does not render graphs itself; \
                     write DOT with `--dot {f}.dot` and render it with Graphviz: \
                     `dot -Tsvg {f}.dot -o {f}`"
                );
            }
            other => bail!("graph: unknown option `{other}`\n\n{usage}"),
        }
    }
    let model = model.with_context(|| format!("graph: --model is required\n\n{usage}"))?;
    let path = dot.with_context(|| format!("graph: --dot FILE is required\n\n{usage}"))?;
    let (layers, x) = model_of(&model)?;
    let specs = input_specs(&[Input::Float(&x)]);
    let mut graph = export_model(layers.as_ref(), &specs, &ExportOptions::new(mode))
        .with_context(|| format!("exporting {model}"))?;
    println!(
        "cranelora graph: {model} exported ({mode_name} mode): {} nodes",
        graph.len()
    );
    let plan = if passes {
        let report = PassManager::new(PassOptions::default())
            .run(&mut graph)
            .context("running the pass pipeline")?;
        println!(
            "{:>2} {:<10} {:<14} {:>6} → {:<6} time",
            "#", "pass", "changes", "before", "after"
        );
        print!("{report}");
        println!("after passes: {} nodes", graph.len());
        print_adapter_strategy(layers.as_ref(), &specs)?;
        report.fusion.unwrap_or_default()
    } else {
        FusionPlan::default()
    };
    write_atomic(&path, &to_dot_with(&graph, &plan))?;
    println!("wrote {path}");
    Ok(())
}

/// The compiler's merged / unmerged choice per runtime-bound adapted layer
/// (`JitOptions::adapter_strategy`, docs/jit.md "Merged or unmerged") for
/// the model's Serving-mode export under a stated load: 8 resident
/// adapters, 1000 calls per rebind, 1 GiB for merged copies; the rows per
/// call are the export's.
fn print_adapter_strategy(model: &dyn Layer<f32>, specs: &[InputSpec]) -> Result<()> {
    let graph = export_model(model, specs, &ExportOptions::new(ExportMode::Serving))
        .context("exporting in serving mode for the adapter strategy")?;
    let strategy = AdapterStrategy::Auto(ServingLoad::new(8, 1000.0, 1 << 30));
    let choices = plan(&graph, &strategy);
    if choices.is_empty() {
        return Ok(()); // no adapters: nothing to choose
    }
    println!("adapter strategy ({strategy}), as `compile` would choose in serving mode:");
    for choice in choices {
        println!("  {choice}");
    }
    Ok(())
}

/// The built-in model `name` and its input.
fn model_of(name: &str) -> Result<(Box<dyn Layer<f32>>, Tensor<f32>)> {
    let (model, x): (Box<dyn Layer<f32>>, Tensor<f32>) = match name {
        "mlp" => {
            let mut rng = Rng::new(7);
            let mut m = demo_mlp(&mut rng)?;
            let lora = LoraConfig::new(4).with_init(LoraInit::Random).with_seed(1);
            let mut cfg = ApplyConfig::new(&["fc1", "fc2", "head"], lora);
            // `head` has one output, so its rank is at most 1.
            cfg.rank_pattern.push(("head".to_string(), 1));
            apply_lora(&mut m, &cfg)?;
            m.set_training(false);
            let x = Tensor::random_normal(&[4, 8], 0.0, 1.0, &mut rng);
            (Box::new(m), x)
        }
        "attention" => {
            let mut rng = Rng::new(11);
            let mut m = MultiHeadAttention::<f32>::new(16, 2, &mut rng)?;
            let lora = LoraConfig::new(4).with_init(LoraInit::Random).with_seed(2);
            apply_lora(&mut m, &ApplyConfig::new(&["query", "value"], lora))?;
            m.set_training(false);
            let x = Tensor::random_normal(&[1, 4, 16], 0.0, 1.0, &mut rng);
            (Box::new(m), x)
        }
        "w1" => {
            let (m, x) = workloads::w1::<f32>()?;
            (Box::new(m), x)
        }
        "w3" => {
            let (m, x) = workloads::w3::<f32>()?;
            (Box::new(m), x)
        }
        _ => bail!("--model: `{name}` is not mlp, attention, w1 or w3"),
    };
    Ok((model, x))
}
