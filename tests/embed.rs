//! `cranelora::embed` on the bert-tiny fixture (../shared/fixtures/bert-tiny):
//! tokenization gives exactly the reference ids; the JIT (LoRA unmerged and
//! folded), the eager model (unmerged and merged) reproduce transformers'
//! hidden states and sentence embeddings; the shape-bucket cache compiles
//! once per bucket; `cranelora embed --input/--output` keeps its contract.
//! The real all-MiniLM-L6-v2 runs when `CRANELORA_MINILM_DIR` points at it.

use cranelora::core::io::read_safetensors;
use cranelora::core::io::{load_peft_adapter, parse_safetensors_except, read_safetensors_ids};
use cranelora::core::models::{cosine_similarity_matrix, BertModel};
use cranelora::core::{IdTensor, Tensor};
use cranelora::embed::tokenize::{encode, load_tokenizer, Text};
use cranelora::embed::{Embedder, EncodedBatch, Engine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/bert-tiny")
}

fn reference() -> (BTreeMap<String, IdTensor>, BTreeMap<String, Tensor<f32>>) {
    let path = fixture().join("reference.safetensors");
    let ids = read_safetensors_ids(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let floats = parse_safetensors_except(&bytes, &path, |k| ids.contains_key(k)).unwrap();
    (ids, floats)
}

fn batch(ids: &BTreeMap<String, IdTensor>, prefix: &str) -> EncodedBatch {
    let get = |k: &str| ids[&format!("{prefix}{k}")].clone();
    EncodedBatch::new(
        get("input_ids"),
        get("token_type_ids"),
        get("attention_mask"),
    )
    .unwrap()
}

/// max |a − b| over rows whose mask entry is 1 (`[b, s, d]` against `[b, s]`).
fn max_abs_valid(a: &Tensor<f32>, b: &Tensor<f32>, mask: &IdTensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = a.shape()[2];
    let (a, b, m) = (a.to_vec(), b.to_vec(), mask.to_vec());
    let rows = a.chunks(d).zip(b.chunks(d)).zip(m).filter(|(_, k)| *k != 0);
    let diffs = rows.flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())));
    diffs.fold(0.0, f64::max)
}

fn max_abs(a: &Tensor<f32>, b: &Tensor<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let diffs = a
        .to_vec()
        .into_iter()
        .zip(b.to_vec())
        .map(|(p, q)| f64::from((p - q).abs()));
    diffs.fold(0.0, f64::max)
}

fn model(adapter: bool) -> BertModel<f32> {
    let mut m = BertModel::<f32>::from_pretrained(&fixture()).unwrap();
    if adapter {
        load_peft_adapter(&mut m, &fixture().join("adapter"), None).unwrap();
    }
    m
}

#[test]
fn tokenizer_gives_exactly_the_reference_ids() {
    let (ids, _) = reference();
    let m = model(false);
    let tok = load_tokenizer(&fixture().join("tokenizer.json"), m.config()).unwrap();
    let texts = [
        Text::from("Hello world!"),
        Text::from("The quick brown fox jumps over the lazy dog, and the cat sleeps."),
        Text::from("Rust loads the zorblax tensór weights quickly."),
        Text::Pair(
            "Where is the cat?".into(),
            "The cat is sleeping on the mat.".into(),
        ),
    ];
    assert_eq!(encode(&tok, &texts).unwrap(), batch(&ids, ""));
    assert_eq!(encode(&tok, &texts[..1]).unwrap(), batch(&ids, "single_"));
    assert!(encode(&tok, &[]).is_err());
}

#[test]
fn every_engine_reproduces_transformers() {
    let (ids, floats) = reference();
    let cases = [
        (Engine::Eager, false),
        (Engine::Jit { fold_lora: true }, false),
        (Engine::Eager, true),
        (Engine::EagerMerged, true),
        (Engine::Jit { fold_lora: false }, true),
        (Engine::Jit { fold_lora: true }, true),
    ];
    for (engine, lora) in cases {
        let mut e = Embedder::new(model(lora), engine).unwrap();
        let suffix = if lora { "_lora" } else { "" };
        let prefixes: &[&str] = if lora { &[""] } else { &["", "single_"] };
        for prefix in prefixes {
            let b = batch(&ids, prefix);
            let out = e.embed(&b).unwrap();
            let key = format!("{prefix}last_hidden_state{suffix}");
            let err = max_abs_valid(&out.last_hidden_state, &floats[&key], &b.attention_mask);
            assert!(err <= 1e-4, "{engine:?} {key}: {err}");
            let key = format!("{prefix}embeddings{suffix}");
            let err = max_abs(&out.embeddings, &floats[&key]);
            assert!(err <= 1e-5, "{engine:?} {key}: {err}");
        }
    }
}

#[test]
fn jit_cache_compiles_once_per_shape_bucket() {
    let (ids, _) = reference();
    let mut e = Embedder::new(model(false), Engine::Jit { fold_lora: true }).unwrap();
    assert_eq!(
        (e.bucket(5), e.bucket(16), e.bucket(17), e.bucket(60)),
        (16, 16, 32, 64)
    );
    let single = batch(&ids, "single_");
    let first = e.embed(&single).unwrap();
    let again = e.embed(&single).unwrap();
    assert_eq!(first.embeddings, again.embeddings);
    assert_eq!(first.last_hidden_state.shape(), &[1, 5, 32]);
    // A shorter input of the same batch size lands in the same bucket.
    let cut = |t: &IdTensor| IdTensor::from_vec(t.to_vec()[..3].to_vec(), &[1, 3]).unwrap();
    let short = EncodedBatch::new(
        cut(&single.input_ids),
        cut(&single.token_type_ids),
        cut(&single.attention_mask),
    )
    .unwrap();
    e.embed(&short).unwrap();
    assert_eq!(e.compiles().len(), 1, "{:?}", e.compiles());
    e.embed(&batch(&ids, "")).unwrap();
    assert_eq!(e.compiles().len(), 2);
    assert_eq!(e.compiles()[1].0, (4, 32));
}

#[test]
fn jit_batch_bucket_pads_rows_and_drops_them() {
    let (ids, floats) = reference();
    let mut e = Embedder::new(model(false), Engine::Jit { fold_lora: true }).unwrap();
    assert_eq!(
        [1, 2, 3, 5, 8, 9, 17].map(|b| e.batch_bucket(b)),
        [1, 2, 4, 8, 8, 16, 24]
    );
    // The fixture's 4-row batch cut to 3 rows runs at 4 rows (one filler
    // row) and still reproduces transformers' embeddings of those 3 rows.
    let full = batch(&ids, "");
    let (b, s) = full.dims();
    let cut =
        |t: &IdTensor| IdTensor::from_vec(t.to_vec()[..(b - 1) * s].to_vec(), &[b - 1, s]).unwrap();
    let three = EncodedBatch::new(
        cut(&full.input_ids),
        cut(&full.token_type_ids),
        cut(&full.attention_mask),
    )
    .unwrap();
    let out = e.embed(&three).unwrap();
    assert_eq!(e.compiles().last().unwrap().0, (4, e.bucket(s)));
    assert_eq!(out.embeddings.shape(), &[b - 1, 32]);
    let want = floats["embeddings"].to_vec();
    let got = out.embeddings.to_vec();
    assert_eq!(got.len(), want.len() / b * (b - 1));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1e-5, "max |Δ| {worst}");
    let hidden = max_abs_valid(
        &out.last_hidden_state,
        &Tensor::from_vec(
            floats["last_hidden_state"].to_vec()[..(b - 1) * s * 32].to_vec(),
            &[b - 1, s, 32],
        )
        .unwrap(),
        &three.attention_mask,
    );
    assert!(hidden <= 1e-4, "hidden max |Δ| {hidden}");
}

#[test]
fn cli_input_output_contract() {
    let (ids, floats) = reference();
    let dir = std::env::temp_dir().join(format!("cranelora-embed-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.safetensors");
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cranelora"));
        cmd.arg("embed").arg("--model").arg(fixture());
        cmd.arg("--adapter").arg(fixture().join("adapter"));
        cmd.arg("--input")
            .arg(fixture().join("reference.safetensors"));
        cmd.arg("--output").arg(&out).args(extra);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_safetensors::<f32>(&out).unwrap()
    };
    for extra in [&[][..], &["--eager"][..]] {
        let got = run(extra);
        let mask = &ids["attention_mask"];
        let err = max_abs_valid(
            &got["last_hidden_state"],
            &floats["last_hidden_state_lora"],
            mask,
        );
        assert!(err <= 1e-4, "{extra:?}: {err}");
        assert!(max_abs(&got["embeddings"], &floats["embeddings_lora"]) <= 1e-5);
    }
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(["embed", "--model"])
        .arg(fixture())
        .args(["--text", "Hello world!", "the cat sleeps."])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.status.success() && stdout.contains("cosine similarity"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// all-MiniLM-L6-v2 (see README "Sentence embeddings"): runs when
/// `CRANELORA_MINILM_DIR` names the unpacked model folder.
#[test]
fn minilm_jit_matches_eager_when_available() {
    let Some(dir) = std::env::var_os("CRANELORA_MINILM_DIR") else {
        eprintln!("skipped: set CRANELORA_MINILM_DIR to the all-MiniLM-L6-v2 folder to run");
        return;
    };
    let dir = PathBuf::from(dir);
    let m = BertModel::<f32>::from_pretrained(&dir).unwrap();
    assert_eq!(
        (m.config().hidden_size, m.config().num_hidden_layers),
        (384, 6)
    );
    let tok = load_tokenizer(&dir.join("tokenizer.json"), m.config()).unwrap();
    let texts: Vec<Text> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]
    .map(Text::from)
    .to_vec();
    let b = encode(&tok, &texts).unwrap();
    // "a man is eating food." → [CLS] a man is eating food . [SEP]
    assert_eq!(
        b.input_ids.to_vec()[..8],
        [101, 1037, 2158, 2003, 5983, 2833, 1012, 102]
    );
    let eager = Embedder::new(m.clone(), Engine::Eager)
        .unwrap()
        .embed(&b)
        .unwrap();
    let jit = Embedder::new(m.clone(), Engine::Jit { fold_lora: true })
        .unwrap()
        .embed(&b)
        .unwrap();
    assert!(
        max_abs_valid(
            &jit.last_hidden_state,
            &eager.last_hidden_state,
            &b.attention_mask
        ) <= 1e-4
    );
    assert!(max_abs(&jit.embeddings, &eager.embeddings) <= 1e-5);
    let e = jit.embeddings.to_vec();
    let cos = |i: usize, j: usize| {
        (0..384)
            .map(|k| e[i * 384 + k] * e[j * 384 + k])
            .sum::<f32>()
    };
    // Paraphrases are closer than unrelated sentences.
    assert!(cos(0, 1) > cos(0, 2) + 0.3, "{} {}", cos(0, 1), cos(0, 2));
    // The similarity matrix sentence-transformers' README prints for this
    // model (4 decimals): an independent check against PyTorch.
    let texts = [
        "The weather is lovely today.",
        "It's so sunny outside!",
        "He drove to the stadium.",
    ];
    let b = encode(&tok, &texts.map(Text::from)).unwrap();
    let e = Embedder::new(m, Engine::Jit { fold_lora: true })
        .unwrap()
        .embed(&b)
        .unwrap();
    let sim = cosine_similarity_matrix(&e.embeddings).unwrap().to_vec();
    let published = [
        1.0, 0.6660, 0.1046, 0.6660, 1.0, 0.1411, 0.1046, 0.1411, 1.0,
    ];
    for (got, want) in sim.iter().zip(published) {
        assert!((got - want).abs() <= 1e-4, "{sim:?}");
    }
}
