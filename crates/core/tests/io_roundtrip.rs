//! Save → load round trips, bit-exact: weights files (native and PyTorch
//! naming, f32 and f64) and PEFT adapter directories (plain, rsLoRA, DoRA,
//! LoRA bias, conv, embedding, rank and alpha patterns, trained biases), and
//! the names, shapes and config fields as PEFT writes them.

use crate::io_common;

use cranelora_core::io::{
    load_peft_adapter, load_safetensors, read_peft_adapter, read_safetensors, save_peft_adapter,
    save_safetensors, Naming, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use cranelora_core::layers::Sequential;
use cranelora_core::lora::{apply_lora, ApplyConfig, BiasMode, LoraConfig, LoraInit};
use cranelora_core::{Input, Layer, Tensor};
use cranelora_kernels::Scalar;
use io_common::*;
use std::path::Path;

fn assert_same_weights<T: Scalar>(a: &dyn Layer<T>, b: &dyn Layer<T>) {
    let (wa, wb) = (a.named_weights(), b.named_weights());
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert_eq!(ta, tb, "{na} differs");
    }
}

fn forward<T: Scalar>(m: &mut dyn Layer<T>, input: Input<'_, T>) -> Tensor<T> {
    m.set_training(false);
    m.forward(&[input]).expect("forward")
}

#[test]
fn weights_round_trip_bit_exact_in_both_namings_and_dtypes() {
    let dir = scratch("weights");
    for naming in [Naming::Native, Naming::PyTorch] {
        let src: Sequential<f32> = mlp(1);
        let path = dir.join(format!("{naming:?}.safetensors"));
        save_safetensors(&src, &path, naming).expect("save");
        let mut dst: Sequential<f32> = mlp(2);
        load_safetensors(&mut dst, &path, naming, true).expect("load");
        assert_same_weights(&src, &dst);

        let src64: Sequential<f64> = convnet(3);
        save_safetensors(&src64, &path, naming).expect("save");
        let mut dst64: Sequential<f64> = convnet(4);
        load_safetensors(&mut dst64, &path, naming, true).expect("load");
        assert_same_weights(&src64, &dst64);
    }
}

#[test]
fn pytorch_naming_lays_linear_weights_out_by_row() {
    let dir = scratch("pytorch-names");
    let src: Sequential<f32> = mlp(1);
    let path = dir.join("w.safetensors");
    save_safetensors(&src, &path, Naming::PyTorch).expect("save");
    let file = read_safetensors::<f32>(&path).expect("read");
    let shapes: Vec<(&str, &[usize])> = file.iter().map(|(k, t)| (k.as_str(), t.shape())).collect();
    assert_eq!(
        shapes,
        vec![
            ("fc1.bias", &[8][..]),
            ("fc1.weight", &[8, 6][..]),
            ("fc2.bias", &[4][..]),
            ("fc2.weight", &[4, 8][..]),
            ("ln.bias", &[8][..]),
            ("ln.weight", &[8][..]),
        ]
    );
    let ours = src.named_weights();
    let fc1 = &ours.iter().find(|(n, _)| n == "fc1.weight").expect("fc1").1;
    assert_eq!(&fc1.t().expect("2-D"), &file["fc1.weight"]);
}

#[test]
fn f32_files_load_into_f64_models_exactly() {
    let dir = scratch("widen");
    let src: Sequential<f32> = mlp(1);
    let path = dir.join("w.safetensors");
    save_safetensors(&src, &path, Naming::Native).expect("save");
    let mut dst: Sequential<f64> = mlp(2);
    load_safetensors(&mut dst, &path, Naming::Native, true).expect("load");
    for ((_, a), (_, b)) in src.named_weights().iter().zip(dst.named_weights()) {
        assert_eq!(a.cast::<f64>(), b);
    }
}

/// Adapts `build(1)` with `cfg`, perturbs it, saves, loads into a fresh
/// `build(1)`, and checks weights and output bit for bit. Returns the directory.
fn adapter_round_trip<T: Scalar>(
    name: &str,
    build: fn(u64) -> Sequential<T>,
    input: Input<'_, T>,
    cfg: &ApplyConfig,
) -> Scratch {
    let mut trained = build(1);
    apply_lora(&mut trained, cfg).expect("apply");
    perturb(&mut trained);
    let dir = scratch(name);
    save_peft_adapter(&trained, &dir, "default").expect("save");
    let mut loaded = build(1);
    let report = load_peft_adapter(&mut loaded, &dir, None).expect("load");
    assert_eq!(
        report.trainable,
        trained.parameter_count(),
        "{name}: trainable"
    );
    assert_same_weights(&trained, &loaded);
    assert_eq!(
        forward(&mut trained, input),
        forward(&mut loaded, input),
        "{name}: output"
    );
    dir
}

fn random(rank: usize) -> LoraConfig {
    LoraConfig::new(rank)
        .with_alpha(3.0)
        .with_init(LoraInit::Random)
}

#[test]
fn plain_rslora_dora_and_lora_bias_adapters_round_trip() {
    let x = mlp_input::<f32>();
    let variants = [
        ("plain", random(2)),
        ("rslora", random(2).with_rslora(true)),
        ("dora", random(2).with_dora(true)),
        ("lora-bias", random(2).with_lora_bias(true)),
    ];
    for (name, lora) in variants {
        let cfg = ApplyConfig::new(&["fc1", "fc2"], lora);
        let dir = adapter_round_trip(name, mlp::<f32>, Input::Float(&x), &cfg);
        let back = read_peft_adapter::<f32>(&dir, None).expect("read").config;
        assert_eq!((back.r, back.lora_alpha), (2, 3.0));
        assert_eq!(back.use_rslora, lora.use_rslora);
        assert_eq!(back.use_dora, lora.use_dora);
        assert_eq!(back.lora_bias, lora.lora_bias);
        assert_eq!(back.init_lora_weights, LoraInit::Random);
    }
}

#[test]
fn f64_adapters_round_trip() {
    let x = mlp_input::<f64>();
    let cfg = ApplyConfig::new(&["fc1", "fc2"], random(3).with_dora(true));
    adapter_round_trip("f64", mlp::<f64>, Input::Float(&x), &cfg);
}

#[test]
fn conv_and_embedding_adapters_round_trip_with_dora() {
    let x = conv_input::<f32>();
    for (name, lora) in [
        ("conv", random(2)),
        ("conv-dora", random(2).with_dora(true)),
        ("conv-bias", random(2).with_lora_bias(true)),
    ] {
        let cfg = ApplyConfig::new(&["conv1", "conv2"], lora);
        adapter_round_trip(name, convnet::<f32>, Input::Float(&x), &cfg);
    }
    let ids = ids();
    for (name, lora) in [("emb", random(3)), ("emb-dora", random(3).with_dora(true))] {
        let cfg = ApplyConfig::new(&["emb", "proj"], lora);
        adapter_round_trip(name, embnet::<f32>, Input::Ids(&ids), &cfg);
    }
}

#[test]
fn rank_and_alpha_patterns_and_trained_biases_round_trip() {
    let x = mlp_input::<f32>();
    let mut cfg = ApplyConfig::new(&["fc1", "fc2"], random(2));
    cfg.rank_pattern = vec![("fc2".into(), 3)];
    cfg.alpha_pattern = vec![("fc1".into(), 5.0)];
    for bias in [BiasMode::All, BiasMode::LoraOnly] {
        cfg.bias = bias;
        let dir = adapter_round_trip(
            &format!("patterns-{bias:?}"),
            mlp::<f32>,
            Input::Float(&x),
            &cfg,
        );
        let back = read_peft_adapter::<f32>(&dir, None).expect("read");
        assert_eq!(back.config.bias, bias);
        assert_eq!(
            (back.config.rank_for("fc2"), back.config.rank_for("fc1")),
            (3, 2)
        );
        assert_eq!(
            (back.config.alpha_for("fc1"), back.config.alpha_for("fc2")),
            (5.0, 3.0)
        );
        let biases: Vec<&str> = back
            .tensors
            .keys()
            .filter(|k| k.ends_with(".bias"))
            .map(String::as_str)
            .collect();
        let want: &[&str] = match bias {
            BiasMode::All => &[
                "base_model.model.fc1.base_layer.bias",
                "base_model.model.fc2.base_layer.bias",
                "base_model.model.ln.bias",
            ],
            _ => &[
                "base_model.model.fc1.base_layer.bias",
                "base_model.model.fc2.base_layer.bias",
            ],
        };
        assert_eq!(biases, want);
    }
}

fn keys_and_shapes(dir: &Path) -> Vec<(String, Vec<usize>)> {
    read_safetensors::<f32>(&dir.join(ADAPTER_WEIGHTS))
        .expect("read")
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect()
}

#[test]
fn keys_shapes_and_config_fields_are_as_peft_writes_them() {
    let x = mlp_input::<f32>();
    let dir = adapter_round_trip(
        "keys-linear",
        mlp::<f32>,
        Input::Float(&x),
        &ApplyConfig::new(&["fc1"], random(2).with_dora(true)),
    );
    let p = "base_model.model.fc1";
    assert_eq!(
        keys_and_shapes(&dir),
        vec![
            (format!("{p}.lora_A.weight"), vec![2, 6]),
            (format!("{p}.lora_B.weight"), vec![8, 2]),
            (format!("{p}.lora_magnitude_vector"), vec![8]),
        ]
    );
    let x = conv_input::<f32>();
    let dir = adapter_round_trip(
        "keys-conv",
        convnet::<f32>,
        Input::Float(&x),
        &ApplyConfig::new(&["conv2"], random(2).with_dora(true)),
    );
    let p = "base_model.model.conv2";
    assert_eq!(
        keys_and_shapes(&dir),
        vec![
            (format!("{p}.lora_A.weight"), vec![2, 4, 3, 3]),
            (format!("{p}.lora_B.weight"), vec![3, 2, 1, 1]),
            (format!("{p}.lora_magnitude_vector"), vec![1, 3, 1, 1]),
        ]
    );
    let ids = ids();
    let dir = adapter_round_trip(
        "keys-emb",
        embnet::<f32>,
        Input::Ids(&ids),
        &ApplyConfig::new(&["emb"], random(3).with_lora_bias(false)),
    );
    let p = "base_model.model.emb";
    assert_eq!(
        keys_and_shapes(&dir),
        vec![
            (format!("{p}.lora_embedding_A"), vec![3, 10]),
            (format!("{p}.lora_embedding_B"), vec![6, 3])
        ]
    );

    // Every field PEFT 0.21 writes, sorted, as the fixtures have them.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/peft/linear_basic/adapter");
    let fields = |d: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(d.join(ADAPTER_CONFIG)).expect("config");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v.as_object().expect("object").keys().cloned().collect()
    };
    assert_eq!(fields(&dir), fields(&fixture));
    let text = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).expect("config");
    for want in [
        "\"peft_type\": \"LORA\"",
        "\"r\": 3",
        "\"lora_alpha\": 3",
        "\"target_modules\": [\n    \"emb\"\n  ]",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}

#[test]
fn named_adapters_live_in_subdirectories_and_survive_a_default_save() {
    let x = mlp_input::<f32>();
    let dir = scratch("multi");
    let mut a: Sequential<f32> = mlp(1);
    apply_lora(&mut a, &ApplyConfig::new(&["fc1"], random(2))).expect("apply");
    let mut b: Sequential<f32> = mlp(1);
    apply_lora(&mut b, &ApplyConfig::new(&["fc2"], random(3))).expect("apply");
    perturb(&mut b);
    save_peft_adapter(&a, &dir, "default").expect("save");
    save_peft_adapter(&b, &dir, "second").expect("save");
    assert!(dir.join("second").join(ADAPTER_CONFIG).exists());
    perturb(&mut a);
    save_peft_adapter(&a, &dir, "default").expect("save again");
    let mut la: Sequential<f32> = mlp(1);
    load_peft_adapter(&mut la, &dir, None).expect("default");
    assert_same_weights(&a, &la);
    let mut lb: Sequential<f32> = mlp(1);
    load_peft_adapter(&mut lb, &dir, Some("second")).expect("second");
    assert_same_weights(&b, &lb);
    assert_eq!(
        forward(&mut b, Input::Float(&x)),
        forward(&mut lb, Input::Float(&x))
    );
}

#[test]
fn a_failed_save_leaves_the_previous_adapter_loadable() {
    let dir = scratch("failed-save");
    let mut a: Sequential<f32> = mlp(1);
    apply_lora(&mut a, &ApplyConfig::new(&["fc1"], random(2))).expect("apply");
    save_peft_adapter(&a, &dir, "default").expect("save");
    // Adapters that no single PEFT config describes: the save fails before writing.
    let mut mixed: Sequential<f32> = mlp(1);
    apply_lora(&mut mixed, &ApplyConfig::new(&["fc1"], random(2))).expect("apply");
    let fc2 = mixed.child_mut("fc2").expect("fc2");
    let base = std::mem::replace(
        fc2,
        Box::new(cranelora_core::ActivationLayer::new(
            cranelora_core::Activation::Identity,
        )),
    );
    *fc2 = Box::new(
        cranelora_core::lora::LoraAdapter::new(base, random(2).with_rslora(true)).expect("wrap"),
    );
    assert!(save_peft_adapter(&mixed, &dir, "default").is_err());
    assert!(
        save_peft_adapter(&mlp::<f32>(1), &dir, "default").is_err(),
        "no adapters"
    );
    let mut back: Sequential<f32> = mlp(1);
    load_peft_adapter(&mut back, &dir, None).expect("still loadable");
    assert_same_weights(&a, &back);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().expect("parent"))
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let own = dir
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".{own}"))
        })
        .collect();
    assert!(leftovers.is_empty());
}
