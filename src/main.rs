//! The `cranelora` command-line tool.

use anyhow::{bail, Result};

mod bench_cmd;
mod demo_cmd;
mod embed_cmd;
mod files;
mod graph_cmd;
mod peft_cmd;
mod serve_bench;

const USAGE: &str = "\
cranelora — LoRA fine-tuning and Cranelift-compiled inference for Rust

USAGE:
    cranelora demo [--epochs N] [--seed S] [--out DIR]
                                             fine-tune LoRA adapters of a small MLP + attention
                                             model, write DIR/demo.dot (default: .), check that
                                             eager, interp, JIT and merged agree, time each
    cranelora peft <dir> [--name N]          inspect a PEFT adapter directory and report problems
    cranelora bench [--workload W1|W2|W3|W4|W5|all] [--quick] [--json FILE] [--plot FILE.svg]
                                             time the workloads of WORKLOADS.md in every mode
                                             (~1 s per measurement, ~0.2 s with --quick)
    cranelora bench --workload minilm --model DIR [--quick]
                                             sentences/s of a BERT-family encoder (all-MiniLM-L6-v2)
                                             on batch 8 × seq 128, eager vs JIT
    cranelora graph --model mlp|attention|w1|w3 [--passes] [--mode inference|serving|training]
                    --dot FILE
                                             export a built-in model as a graph and write it as
                                             Graphviz DOT (LoRA branches and, with --passes, fusion
                                             groups as clusters); --passes runs the pass pipeline
                                             and prints node counts per pass. Render the picture
                                             with `dot -Tsvg FILE -o FILE.svg` (--svg is refused)
    cranelora serve-bench [--adapters N] [--rank R] [--json FILE] [--quick] [--size D]
                                             time serving N LoRA adapters (default 8, rank 16) on
                                             W1's shapes: folded, bound, swap, mixed, separate,
                                             merged-per-adapter (--size shrinks the layers for tests)
    cranelora embed --model DIR [--adapter DIR] (--text TEXT... | --input FILE.safetensors)
                    [--output FILE.safetensors] [--eager] [--no-fold]
                                             sentence embeddings with a BERT-family Hugging Face
                                             folder (config.json, model.safetensors, tokenizer.json)
                                             and an optional PEFT LoRA adapter, JIT-compiled (LoRA
                                             folded unless --no-fold) or --eager; --input reads int64
                                             input_ids / attention_mask / token_type_ids, --output
                                             writes float32 last_hidden_state and embeddings; --text
                                             prints each embedding and the cosine similarity matrix
    cranelora help                           print this help
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.get(1).map(String::as_str), Some("--help" | "-h")) {
        // `cranelora <command> --help`: the usage of every command.
        print!("{USAGE}");
        return Ok(());
    }
    match args.first().map(String::as_str) {
        Some("demo") => demo_cmd::run(&args[1..], USAGE),
        Some("peft") => peft_cmd::run(&args[1..], USAGE),
        Some("bench") => bench_cmd::run(&args[1..], USAGE),
        Some("graph") => graph_cmd::run(&args[1..], USAGE),
        Some("serve-bench") => serve_bench::run(&args[1..], USAGE),
        Some("embed") => embed_cmd::run(&args[1..], USAGE),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
