//! The bert-tiny fixture (../shared/fixtures/bert-tiny) reproduced eagerly
//! and through the graph interpreter: embedding block, layer 0, last hidden
//! state (valid positions only), pooler, mean-pooled and normalized
//! embeddings, with and without the PEFT LoRA adapter (unmerged and
//! merged), the unpadded single sentence, in f32 and f64; and the loader's
//! errors for a missing, extra or mis-shaped key.

use cranelora_core::export::{
    bindings_for, export_model, ids_to_data, mask_to_data, tensor_from_data, ExportMode,
    ExportOptions,
};
use cranelora_core::io::parse_safetensors_except;
use cranelora_core::io::{load_peft_adapter, read_safetensors_ids, write_safetensors};
use cranelora_core::lora::merge_all;
use cranelora_core::models::{l2_normalize, mean_pool, read_bert_weights, BertModel};
use cranelora_core::{IdTensor, Input, Layer, Mask, Tensor};
use cranelora_graph::interpret;
use cranelora_kernels::Scalar;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/bert-tiny")
}

/// The fixture's reference tensors: ids and masks, and float outputs in `T`.
struct Reference<T> {
    ids: BTreeMap<String, IdTensor>,
    floats: BTreeMap<String, Tensor<T>>,
}

impl<T: Scalar> Reference<T> {
    fn load() -> Self {
        let path = fixture().join("reference.safetensors");
        let ids = read_safetensors_ids(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let floats = parse_safetensors_except(&bytes, &path, |k| ids.contains_key(k)).unwrap();
        Self { ids, floats }
    }

    fn id(&self, key: &str) -> &IdTensor {
        &self.ids[key]
    }

    fn mask(&self, prefix: &str) -> Mask {
        let m = self.id(&format!("{prefix}attention_mask"));
        Mask::from_ids(&m.to_vec(), m.shape()).unwrap()
    }

    fn float(&self, key: &str) -> &Tensor<T> {
        &self.floats[key]
    }
}

/// The largest |a − b| over the positions `mask` keeps (`[b, s, d]` tensors).
fn max_abs_valid<T: Scalar>(a: &Tensor<T>, b: &Tensor<T>, mask: &Mask) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = a.shape()[2];
    let keep = mask.array().iter().copied().collect::<Vec<bool>>();
    let (a, b) = (a.to_vec(), b.to_vec());
    let pairs = a.chunks(d).zip(b.chunks(d)).zip(keep);
    let rows = pairs
        .filter(|(_, k)| *k)
        .flat_map(|((x, y), _)| x.iter().zip(y));
    rows.map(|(x, y)| (x.to_f64_exact() - y.to_f64_exact()).abs())
        .fold(0.0, f64::max)
}

fn max_abs<T: Scalar>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec(), b.to_vec());
    let diffs = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x.to_f64_exact() - y.to_f64_exact()).abs());
    diffs.fold(0.0, f64::max)
}

/// Runs `model` eagerly on the reference inputs with `prefix` (`""` or `"single_"`).
fn run<T: Scalar>(model: &mut BertModel<T>, r: &Reference<T>, prefix: &str) -> Tensor<T> {
    let mask = r.mask(prefix);
    let inputs = [
        Input::Ids(r.id(&format!("{prefix}input_ids"))),
        Input::Ids(r.id(&format!("{prefix}token_type_ids"))),
        Input::Mask(&mask),
    ];
    model.forward(&inputs).unwrap()
}

fn check_blocks<T: Scalar>(model: &mut BertModel<T>, r: &Reference<T>, prefix: &str) {
    let mask = r.mask(prefix);
    let ids = [
        Input::Ids(r.id(&format!("{prefix}input_ids"))),
        Input::Ids(r.id(&format!("{prefix}token_type_ids"))),
    ];
    let emb = model
        .child_mut("embeddings")
        .unwrap()
        .forward(&ids)
        .unwrap();
    let err = max_abs_valid(&emb, r.float(&format!("{prefix}embeddings_out")), &mask);
    assert!(err <= 1e-5, "{prefix}embeddings_out: {err}");
    let layer0 = model.child_mut("encoder.layer.0").unwrap();
    let h0 = layer0
        .forward(&[Input::Float(&emb), Input::Mask(&mask)])
        .unwrap();
    let err = max_abs_valid(&h0, r.float(&format!("{prefix}layer0_out")), &mask);
    assert!(err <= 1e-4, "{prefix}layer0_out: {err}");
}

fn check_outputs<T: Scalar>(model: &mut BertModel<T>, r: &Reference<T>, prefix: &str, lora: bool) {
    let mask = r.mask(prefix);
    let h = run(model, r, prefix);
    let suffix = if lora { "_lora" } else { "" };
    let err = max_abs_valid(
        &h,
        r.float(&format!("{prefix}last_hidden_state{suffix}")),
        &mask,
    );
    assert!(err <= 1e-4, "{prefix}last_hidden_state{suffix}: {err}");
    let emb = l2_normalize(&mean_pool(&h, &mask).unwrap()).unwrap();
    let err = max_abs(&emb, r.float(&format!("{prefix}embeddings{suffix}")));
    assert!(err <= 1e-5, "{prefix}embeddings{suffix}: {err}");
    if prefix.is_empty() && !lora {
        let mean = mean_pool(&h, &mask).unwrap();
        let err = max_abs(&mean, r.float("mean_pooled"));
        assert!(err <= 1e-5, "mean_pooled: {err}");
        let pooled = model.pooled_output(&h).unwrap();
        let err = max_abs(&pooled, r.float("pooler_output"));
        assert!(err <= 1e-5, "pooler_output: {err}");
    }
}

fn eager_reproduces_reference<T: Scalar>() {
    let r = Reference::<T>::load();
    let mut model = BertModel::<T>::from_pretrained(&fixture()).unwrap();
    assert!(model.has_pooler());
    for prefix in ["", "single_"] {
        check_blocks(&mut model, &r, prefix);
        check_outputs(&mut model, &r, prefix, false);
    }
    // PEFT adapter on query and value: unmerged, then merged into the base.
    let report = load_peft_adapter(&mut model, &fixture().join("adapter"), None).unwrap();
    assert_eq!(report.adapted.len(), 4, "{:?}", report.adapted);
    assert!(report
        .adapted
        .contains(&"encoder.layer.1.attention.self.value".to_string()));
    let mask = r.mask("");
    let h0 = {
        let ids = [
            Input::Ids(r.id("input_ids")),
            Input::Ids(r.id("token_type_ids")),
        ];
        let emb = model
            .child_mut("embeddings")
            .unwrap()
            .forward(&ids)
            .unwrap();
        let layer0 = model.child_mut("encoder.layer.0").unwrap();
        layer0
            .forward(&[Input::Float(&emb), Input::Mask(&mask)])
            .unwrap()
    };
    let err = max_abs_valid(&h0, r.float("layer0_out_lora"), &mask);
    assert!(err <= 1e-4, "layer0_out_lora: {err}");
    check_outputs(&mut model, &r, "", true);
    assert_eq!(merge_all(&mut model).unwrap(), 4);
    check_outputs(&mut model, &r, "", true);
}

#[test]
fn eager_f32_reproduces_transformers_with_and_without_lora() {
    eager_reproduces_reference::<f32>();
}

#[test]
fn eager_f64_reproduces_transformers_with_and_without_lora() {
    eager_reproduces_reference::<f64>();
}

#[test]
fn interpreter_reproduces_transformers_and_the_eager_model() {
    let r = Reference::<f32>::load();
    let mut model = BertModel::<f32>::from_pretrained(&fixture()).unwrap();
    load_peft_adapter(&mut model, &fixture().join("adapter"), None).unwrap();
    assert!(model.supports_jit());
    let graph = export_model(
        &model,
        &BertModel::<f32>::input_specs(4, 19),
        &ExportOptions::new(ExportMode::Serving),
    )
    .unwrap();
    let mask = r.mask("");
    let inputs = [
        ids_to_data(r.id("input_ids")),
        ids_to_data(r.id("token_type_ids")),
        mask_to_data(&mask),
    ];
    let out = interpret(&graph, &inputs, &bindings_for(&model, &graph).unwrap()).unwrap();
    let h = tensor_from_data::<f32>(&out[0]).unwrap();
    let err = max_abs_valid(&h, r.float("last_hidden_state_lora"), &mask);
    assert!(err <= 1e-4, "interpreter last_hidden_state_lora: {err}");
    let eager = run(&mut model, &r, "");
    assert!(max_abs_valid(&h, &eager, &mask) <= 1e-5);
    let emb = l2_normalize(&mean_pool(&h, &mask).unwrap()).unwrap();
    assert!(max_abs(&emb, r.float("embeddings_lora")) <= 1e-5);
}

#[test]
fn token_types_default_to_zero_and_bad_inputs_are_errors() {
    let r = Reference::<f32>::load();
    let mut model = BertModel::<f32>::from_pretrained(&fixture()).unwrap();
    let ids = r.id("single_input_ids");
    let mask = r.mask("single_");
    let with = run(&mut model, &r, "single_");
    let without = model
        .forward(&[Input::Ids(ids), Input::Mask(&mask)])
        .unwrap();
    assert_eq!(with, without);
    let long = IdTensor::from_vec(vec![2; 65], &[1, 65]).unwrap();
    let msg = model.forward(&[Input::Ids(&long)]).unwrap_err().to_string();
    assert!(msg.contains("max_position_embeddings 64"), "{msg}");
    let bad_mask = Mask::from_vec(vec![true; 4], &[1, 4]).unwrap();
    let msg = model
        .forward(&[Input::Ids(ids), Input::Mask(&bad_mask)])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("attention_mask"), "{msg}");
    let msg = model.forward(&[]).unwrap_err().to_string();
    assert!(msg.contains("input_ids"), "{msg}");
}

/// A copy of the fixture folder whose weights are `edit`ed; returns the load error.
fn load_error(name: &str, edit: impl FnOnce(&mut BTreeMap<String, Tensor<f32>>)) -> String {
    let dir = std::env::temp_dir().join(format!("cranelora-bert-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_bert_weights::<f32>(&fixture().join("model.safetensors")).unwrap();
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let err = BertModel::<f32>::from_pretrained(&dir)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    err
}

#[test]
fn missing_extra_and_misshaped_keys_are_errors_naming_them() {
    let key = "encoder.layer.1.attention.self.key.weight";
    let msg = load_error("missing", |t| {
        t.remove(key);
    });
    assert!(msg.contains(key) && msg.contains("missing"), "{msg}");
    let msg = load_error("extra", |t| {
        t.insert(
            "encoder.layer.2.output.dense.weight".into(),
            Tensor::zeros(&[2]),
        );
    });
    assert!(msg.contains("encoder.layer.2.output.dense.weight"), "{msg}");
    let msg = load_error("shape", |t| {
        t.insert(
            "encoder.layer.0.intermediate.dense.weight".into(),
            Tensor::zeros(&[32, 64]),
        );
    });
    assert!(
        msg.contains("intermediate.dense.weight") && msg.contains("[64, 32]"),
        "{msg}"
    );
    // A config whose sizes the file cannot back is refused before the model
    // is allocated (here 2^40 × 2^40 would overflow), naming config.json.
    let dir = std::env::temp_dir().join(format!("cranelora-bert-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["vocab_size"] = serde_json::json!(1u64 << 40);
    json["hidden_size"] = serde_json::json!(1u64 << 40);
    json["num_attention_heads"] = serde_json::json!(1);
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    std::fs::copy(
        fixture().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let msg = BertModel::<f32>::from_pretrained(&dir)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("imply"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // A `bert.` prefix (task checkpoints) loads the same weights; heads outside it are left out.
    let dir = std::env::temp_dir().join(format!("cranelora-bert-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let tensors = read_bert_weights::<f32>(&fixture().join("model.safetensors")).unwrap();
    let mut prefixed: BTreeMap<String, Tensor<f32>> = tensors
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
    prefixed.insert("cls.predictions.bias".into(), Tensor::zeros(&[128]));
    write_safetensors(&dir.join("model.safetensors"), &prefixed).unwrap();
    let mut a = BertModel::<f32>::from_pretrained(&dir).unwrap();
    let mut b = BertModel::<f32>::from_pretrained(&fixture()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let r = Reference::<f32>::load();
    assert_eq!(run(&mut a, &r, ""), run(&mut b, &r, ""));
}

/// PEFT's `target_modules=["query", "key", "value", "dense"]` on a BERT:
/// every projection of every layer plus the pooler, addressed by module path;
/// the graph (LoRA kept, LoRA folded) and the merged model agree with the
/// unmerged eager model.
#[test]
fn lora_on_query_key_value_and_dense_runs_unmerged_merged_and_exported() {
    use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
    let r = Reference::<f32>::load();
    let mut model = BertModel::<f32>::from_pretrained(&fixture()).unwrap();
    let mut lora = LoraConfig::new(4).with_alpha(8.0);
    lora.init = LoraInit::Random;
    let cfg = ApplyConfig::new(&["query", "key", "value", "dense"], lora);
    let report = apply_lora(&mut model, &cfg).unwrap();
    // Per layer: query, key, value, attention.output.dense, intermediate.dense,
    // output.dense (6 × 2 layers), plus pooler.dense.
    assert_eq!(report.adapted.len(), 13, "{:?}", report.adapted);
    assert!(report
        .adapted
        .contains(&"encoder.layer.0.attention.output.dense".to_string()));
    let eager = run(&mut model, &r, "");
    let base = run(
        &mut BertModel::<f32>::from_pretrained(&fixture()).unwrap(),
        &r,
        "",
    );
    let mask = r.mask("");
    assert!(
        max_abs_valid(&eager, &base, &mask) > 1e-2,
        "the adapters change the output"
    );
    let inputs = [
        ids_to_data(r.id("input_ids")),
        ids_to_data(r.id("token_type_ids")),
        mask_to_data(&mask),
    ];
    for mode in [ExportMode::Serving, ExportMode::Inference] {
        let specs = BertModel::<f32>::input_specs(4, 19);
        let graph = export_model(&model, &specs, &ExportOptions::new(mode)).unwrap();
        let out = interpret(&graph, &inputs, &bindings_for(&model, &graph).unwrap()).unwrap();
        let h = tensor_from_data::<f32>(&out[0]).unwrap();
        assert!(max_abs_valid(&h, &eager, &mask) <= 1e-4, "{mode:?}");
    }
    assert_eq!(merge_all(&mut model).unwrap(), 13);
    assert!(max_abs_valid(&run(&mut model, &r, ""), &eager, &mask) <= 1e-4);
}
