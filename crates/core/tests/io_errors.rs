//! Every mismatch between a file and a model is an error that names the
//! file, the key and the shapes, and leaves the model unchanged.

use crate::io_common;

use cranelora_core::io::{
    load_peft_adapter, load_safetensors, read_safetensors, save_peft_adapter, save_safetensors,
    write_safetensors, Naming, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use cranelora_core::layers::{MultiHeadAttention, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Layer, Rng, Tensor};
use io_common::*;
use std::path::Path;

/// A saved adapter on fc1 and fc2 of `mlp(1)` (rank 2).
fn saved_adapter(name: &str) -> Scratch {
    let mut m: Sequential<f32> = mlp(1);
    let lora = LoraConfig::new(2).with_init(LoraInit::Random);
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2"], lora)).expect("apply");
    let dir = scratch(name);
    save_peft_adapter(&m, &dir, "default").expect("save");
    dir
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut std::collections::BTreeMap<String, Tensor<f32>>)) {
    let path = dir.join(ADAPTER_WEIGHTS);
    let mut t = read_safetensors::<f32>(&path).expect("read");
    f(&mut t);
    write_safetensors(&path, &t).expect("write");
}

/// Loads into a fresh `mlp(1)`; asserts failure, an unchanged model, and returns the message.
fn load_err(dir: &Path) -> String {
    let mut m: Sequential<f32> = mlp(1);
    let before = m.layer_paths();
    let err = load_peft_adapter(&mut m, dir, None).expect_err("load must fail");
    assert_eq!(m.layer_paths(), before, "model changed by a failed load");
    err.to_string()
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
}

#[test]
fn a_missing_key_is_named_with_its_shape() {
    let dir = saved_adapter("missing-key");
    edit_weights(&dir, |t| {
        t.remove("base_model.model.fc2.lora_B.weight");
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "adapter_model.safetensors",
            "base_model.model.fc2.lora_B.weight",
            "[4, 2]",
            "missing",
        ],
    );
}

#[test]
fn an_extra_key_lists_the_nearest_layer_paths() {
    let dir = saved_adapter("extra-key");
    edit_weights(&dir, |t| {
        t.insert(
            "base_model.model.fc3.lora_A.weight".into(),
            Tensor::zeros(&[2, 8]),
        );
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "base_model.model.fc3.lora_A.weight",
            "nearest layer paths",
            "fc1",
            "fc2",
        ],
    );
    let dir = saved_adapter("untargeted-key");
    edit_weights(&dir, |t| {
        t.insert(
            "base_model.model.ln.lora_A.weight".into(),
            Tensor::zeros(&[2, 8]),
        );
    });
    assert_mentions(
        &load_err(&dir),
        &["base_model.model.ln.lora_A.weight", "target_modules"],
    );
}

#[test]
fn a_wrong_shape_names_expected_and_actual() {
    let dir = saved_adapter("wrong-shape");
    edit_weights(&dir, |t| {
        t.insert(
            "base_model.model.fc1.lora_A.weight".into(),
            Tensor::zeros(&[6, 2]),
        );
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "base_model.model.fc1.lora_A.weight",
            "expected shape [2, 6]",
            "got [6, 2]",
        ],
    );
}

#[test]
fn unsupported_config_fields_are_listed() {
    let dir = saved_adapter("unsupported");
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text
        .replace(
            "\"layers_to_transform\": null",
            "\"layers_to_transform\": [0, 1]",
        )
        .replace(
            "\"modules_to_save\": null",
            "\"modules_to_save\": [\"head\"]",
        )
        .replace(
            "\"init_lora_weights\": false",
            "\"init_lora_weights\": \"pissa\"",
        );
    std::fs::write(&path, text).expect("write");
    assert_mentions(
        &load_err(&dir),
        &[
            "adapter_config.json",
            "layers_to_transform",
            "modules_to_save",
            "pissa",
        ],
    );
}

#[test]
fn a_config_with_wrong_types_is_an_error() {
    let dir = saved_adapter("wrong-type");
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace("\"r\": 2", "\"r\": \"two\"");
    std::fs::write(&path, text).expect("write");
    assert_mentions(
        &load_err(&dir),
        &["adapter_config.json", "field `r`", "\"two\""],
    );
}

#[test]
fn truncated_or_missing_files_are_errors() {
    let dir = saved_adapter("truncated");
    let path = dir.join(ADAPTER_WEIGHTS);
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 7]).expect("write");
    assert_mentions(
        &load_err(&dir),
        &["adapter_model.safetensors", "not a valid safetensors file"],
    );
    std::fs::remove_file(&path).expect("remove");
    assert_mentions(
        &load_err(&dir),
        &["adapter_model.safetensors", "cannot read"],
    );
    assert_mentions(&load_err(&dir.join("nope")), &["no such adapter directory"]);
}

#[test]
fn targeting_a_separate_projection_attention_module_is_an_error() {
    // Only the fused (PyTorch nn.MultiheadAttention) layout can be a PEFT
    // target itself; ours with separate q/k/v children cannot.
    let dir = saved_adapter("mha");
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace("\"fc1\",\n    \"fc2\"", "\"attn\"");
    std::fs::write(&path, text).expect("write");
    let mut m: Sequential<f32> = Sequential::new()
        .with(
            "attn",
            MultiHeadAttention::new(8, 2, &mut Rng::new(0)).expect("mha"),
        )
        .expect("model");
    let before = m.named_weights();
    let err = load_peft_adapter(&mut m, &dir, None).expect_err("not adaptable");
    assert_mentions(
        &err.to_string(),
        &["attn", "MultiHeadAttention", "cannot be adapted"],
    );
    assert_eq!(m.named_weights(), before);
}

#[test]
fn weight_files_report_file_key_shape_and_dtype() {
    let dir = scratch("weights-errors");
    let path = dir.join("w.safetensors");
    save_safetensors(&mlp::<f32>(1), &path, Naming::PyTorch).expect("save");
    let mut m: Sequential<f32> = mlp(2);
    // Native names do not exist in a PyTorch-named file's layout: fc1.weight is 8×6 there.
    let err = load_safetensors(&mut m, &path, Naming::Native, true)
        .expect_err("shape")
        .to_string();
    assert_mentions(
        &err,
        &[
            "w.safetensors",
            "fc1.weight",
            "expected shape [6, 8]",
            "got [8, 6]",
        ],
    );

    let mut t = read_safetensors::<f32>(&path).expect("read");
    t.remove("ln.weight");
    t.insert("fc1.wieght".into(), Tensor::zeros(&[1]));
    write_safetensors(&path, &t).expect("write");
    let err = load_safetensors(&mut m, &path, Naming::PyTorch, true)
        .expect_err("missing")
        .to_string();
    assert_mentions(&err, &["ln.weight", "missing"]);
    t.insert("ln.weight".into(), Tensor::ones(&[8]));
    write_safetensors(&path, &t).expect("write");
    let err = load_safetensors(&mut m, &path, Naming::PyTorch, true)
        .expect_err("unknown")
        .to_string();
    assert_mentions(&err, &["fc1.wieght", "nearest", "fc1.weight"]);
    load_safetensors(&mut m, &path, Naming::PyTorch, false)
        .expect("non-strict ignores unknown keys");

    let ids = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1], &[0u8; 8])
        .expect("view");
    let bytes = safetensors::serialize([("ids", ids)], None).expect("serialize");
    std::fs::write(&path, bytes).expect("write");
    let err = read_safetensors::<f32>(&path)
        .expect_err("dtype")
        .to_string();
    assert_mentions(&err, &["w.safetensors", "key `ids`", "I64"]);
}

#[test]
fn inspection_reports_problems_without_a_model() {
    use cranelora_core::io::inspect_peft_adapter;
    let dir = saved_adapter("inspect");
    let ok = inspect_peft_adapter(&dir, None).expect("inspect");
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.modules.len(), 2);
    assert_eq!(
        (ok.modules[0].rank, ok.modules[0].fan_in, ok.modules[0].out),
        (2, 6, 8)
    );
    edit_weights(&dir, |t| {
        t.remove("base_model.model.fc2.lora_B.weight");
        t.insert(
            "base_model.model.fc1.lora_B.weight".into(),
            Tensor::zeros(&[8, 3]),
        );
    });
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace("\"layers_pattern\": null", "\"layers_pattern\": \"h\"");
    std::fs::write(&path, text).expect("write");
    let bad = inspect_peft_adapter(&dir, None).expect("inspect");
    let all = bad.problems.join("\n");
    assert_mentions(
        &all,
        &["fc2", "lora_B.weight", "fc1", "disagree", "layers_pattern"],
    );
}
