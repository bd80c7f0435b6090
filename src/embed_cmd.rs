//! `cranelora embed`: sentence embeddings with a BERT-family model folder.
//!
//! ```text
//! cranelora embed --model DIR [--adapter DIR] (--text TEXT... | --input FILE.safetensors)
//!                 [--output FILE.safetensors] [--eager] [--no-fold]
//! ```
//!
//! `--input` reads int64 (or int32) `input_ids`, `attention_mask` and
//! optionally `token_type_ids` (zeros when absent); `--output` receives
//! float32 `last_hidden_state` `[batch, seq, d]` and `embeddings`
//! `[batch, d]`. Those names are the contract outside checks rely on.

use anyhow::{bail, Context, Result};
use cranelora::core::io::{load_peft_adapter, read_safetensors_ids, write_safetensors};
use cranelora::core::models::{cosine_similarity_matrix, BertModel};
use cranelora::core::IdTensor;
use cranelora::embed::tokenize::{encode, load_tokenizer, Text};
use cranelora::embed::{Embedder, Embeddings, EncodedBatch, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parsed arguments.
#[derive(Default)]
struct Args {
    model: Option<PathBuf>,
    adapter: Option<PathBuf>,
    texts: Vec<String>,
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    eager: bool,
    no_fold: bool,
}

fn parse(args: &[String], usage: &str) -> Result<Args> {
    let mut a = Args::default();
    let mut it = args.iter().peekable();
    let value = |it: &mut std::iter::Peekable<std::slice::Iter<'_, String>>, flag: &str| {
        it.next()
            .cloned()
            .with_context(|| format!("embed: {flag} needs a value"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => a.model = Some(value(&mut it, "--model")?.into()),
            "--adapter" => a.adapter = Some(value(&mut it, "--adapter")?.into()),
            "--input" => a.input = Some(value(&mut it, "--input")?.into()),
            "--output" => a.output = Some(value(&mut it, "--output")?.into()),
            "--eager" => a.eager = true,
            "--no-fold" => a.no_fold = true,
            "--text" => {
                while let Some(t) = it.next_if(|t| !t.starts_with("--")) {
                    a.texts.push(t.clone());
                }
                if a.texts.is_empty() {
                    bail!("embed: --text needs at least one text");
                }
            }
            other => bail!("embed: unexpected argument `{other}`\n\n{usage}"),
        }
    }
    if a.model.is_none() {
        bail!("embed: --model DIR is required\n\n{usage}");
    }
    if a.texts.is_empty() == a.input.is_none() {
        bail!("embed: give either --text TEXT... or --input FILE.safetensors\n\n{usage}");
    }
    Ok(a)
}

/// Runs `cranelora embed`.
pub fn run(args: &[String], usage: &str) -> Result<()> {
    let a = parse(args, usage)?;
    let dir = a.model.as_deref().expect("internal: checked by parse");
    let mut model = BertModel::<f32>::from_pretrained(dir)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    if let Some(adapter) = &a.adapter {
        let report = load_peft_adapter(&mut model, adapter, None)
            .with_context(|| format!("cannot load the adapter {}", adapter.display()))?;
        eprintln!(
            "adapter: {} module(s): {}",
            report.adapted.len(),
            report.adapted.join(", ")
        );
    }
    let engine = match (a.eager, a.no_fold) {
        (true, _) => Engine::Eager,
        (false, no_fold) => Engine::Jit {
            fold_lora: !no_fold,
        },
    };
    let batch = match &a.input {
        Some(path) => read_batch(path)?,
        None => {
            let tok = load_tokenizer(&dir.join("tokenizer.json"), model.config())?;
            let texts: Vec<Text> = a.texts.iter().map(|t| Text::from(t.as_str())).collect();
            encode(&tok, &texts)?
        }
    };
    let mut embedder = Embedder::new(model, engine)?;
    let out = embedder.embed(&batch)?;
    for ((b, s), t) in embedder.compiles() {
        eprintln!("compiled batch {b} × seq {s} in {:.3} s", t.as_secs_f64());
    }
    if !a.texts.is_empty() {
        print_texts(&a.texts, &out)?;
    }
    if let Some(path) = &a.output {
        write_output(path, &out)?;
        eprintln!(
            "wrote last_hidden_state {:?} and embeddings {:?} to {}",
            out.last_hidden_state.shape(),
            out.embeddings.shape(),
            path.display()
        );
    } else if a.input.is_some() {
        print_rows(&out);
    }
    Ok(())
}

/// `input_ids`, `attention_mask` and (optionally) `token_type_ids` of a safetensors file.
fn read_batch(path: &Path) -> Result<EncodedBatch> {
    let mut ids = read_safetensors_ids(path)?;
    let mut take = |k: &str| {
        ids.remove(k)
            .with_context(|| format!("{}: no integer tensor `{k}`", path.display()))
    };
    let input_ids = take("input_ids")?;
    let mask = take("attention_mask")?;
    let types = match take("token_type_ids") {
        Ok(t) => t,
        Err(_) => IdTensor::from_vec(vec![0; input_ids.len()], input_ids.shape())?,
    };
    EncodedBatch::new(input_ids, types, mask).with_context(|| format!("{}", path.display()))
}

fn write_output(path: &Path, out: &Embeddings) -> Result<()> {
    let tensors = BTreeMap::from([
        (
            "last_hidden_state".to_string(),
            out.last_hidden_state.clone(),
        ),
        ("embeddings".to_string(), out.embeddings.clone()),
    ]);
    write_safetensors(path, &tensors).with_context(|| format!("cannot write {}", path.display()))
}

fn print_rows(out: &Embeddings) {
    let d = out.embeddings.shape()[1];
    for (i, row) in out.embeddings.to_vec().chunks(d).enumerate() {
        println!("[{i}] {}", head(row));
    }
}

fn head(row: &[f32]) -> String {
    let first: Vec<String> = row.iter().take(6).map(|v| format!("{v:+.5}")).collect();
    format!("[{}, …] (d = {})", first.join(", "), row.len())
}

fn print_texts(texts: &[String], out: &Embeddings) -> Result<()> {
    let d = out.embeddings.shape()[1];
    for (i, (text, row)) in texts
        .iter()
        .zip(out.embeddings.to_vec().chunks(d))
        .enumerate()
    {
        println!("[{i}] {text:?}\n    {}", head(row));
    }
    let n = texts.len();
    let cos = cosine_similarity_matrix(&out.embeddings)?.to_vec();
    println!("cosine similarity:");
    println!(
        "      {}",
        (0..n)
            .map(|j| format!("{:>8}", format!("[{j}]")))
            .collect::<String>()
    );
    for i in 0..n {
        let row: String = (0..n).map(|j| format!("{:>8.4}", cos[i * n + j])).collect();
        println!("  [{i}] {row}");
    }
    Ok(())
}
