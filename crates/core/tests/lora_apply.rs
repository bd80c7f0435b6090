//! `apply_lora` and `merge_all`: PEFT's matching rules, freezing, reports.

use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::lora::{
    apply_lora, merge_all, ApplyConfig, BiasMode, LoraConfig, LoraInit, TargetModules,
};
use cranelora_core::testing::assert_tensor_close;
use cranelora_core::{Activation, Layer, Rng, Tensor};

/// encoder.{0,1}.{query, value, ffn}, head
fn model() -> Sequential<f64> {
    let mut rng = Rng::new(1);
    let mut encoder = Sequential::new();
    for i in 0..2 {
        let block = Sequential::new()
            .with(
                "query",
                Dense::new(8, 8, true, Activation::Identity, &mut rng).unwrap(),
            )
            .unwrap()
            .with(
                "value",
                Dense::new(8, 8, true, Activation::Identity, &mut rng).unwrap(),
            )
            .unwrap()
            .with(
                "ffn",
                Dense::new(8, 8, true, Activation::GeluErf, &mut rng).unwrap(),
            )
            .unwrap();
        encoder.push(&i.to_string(), block).unwrap();
    }
    Sequential::new()
        .with("encoder", encoder)
        .unwrap()
        .with(
            "head",
            Dense::new(8, 2, true, Activation::Identity, &mut rng).unwrap(),
        )
        .unwrap()
}

fn adapted(m: &Sequential<f64>) -> Vec<String> {
    m.layer_paths()
        .into_iter()
        .filter(|p| m.child(p).unwrap().as_lora_adapter().is_some())
        .collect()
}

#[test]
fn names_match_by_dotted_suffix_like_peft() {
    let mut m = model();
    let report = apply_lora(
        &mut m,
        &ApplyConfig::new(&["query", "value"], LoraConfig::new(2)),
    )
    .unwrap();
    let expected = [
        "encoder.0.query",
        "encoder.0.value",
        "encoder.1.query",
        "encoder.1.value",
    ];
    assert_eq!(report.adapted, expected);
    assert_eq!(adapted(&m), expected);
    // Only A and B train: 4 adapters × (8·2 + 2·8).
    assert_eq!(report.trainable, 4 * 32);
    assert_eq!(report.total, 6 * 72 + 18 + 4 * 32);
    assert!(report
        .to_string()
        .starts_with("trainable params: 128 || all params: "));
    // "uery" is not a dotted suffix: nothing matches, and the error lists the paths.
    let err = apply_lora(
        &mut model(),
        &ApplyConfig::new(&["uery"], LoraConfig::new(2)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no layer matches") && err.contains("encoder.1.ffn"),
        "{err}"
    );
}

#[test]
fn a_regex_must_match_the_whole_path() {
    let mut cfg = ApplyConfig::new(&[], LoraConfig::new(2));
    cfg.target_modules = TargetModules::Regex(r"encoder\.1\.(query|ffn)".into());
    let mut m = model();
    assert_eq!(
        apply_lora(&mut m, &cfg).unwrap().adapted,
        ["encoder.1.query", "encoder.1.ffn"]
    );
    cfg.target_modules = TargetModules::Regex("query".into());
    assert!(
        apply_lora(&mut model(), &cfg).is_err(),
        "a partial match is not a match"
    );
    cfg.target_modules = TargetModules::Regex("(".into());
    assert!(apply_lora(&mut model(), &cfg)
        .unwrap_err()
        .to_string()
        .contains("invalid pattern"));
}

#[test]
fn rank_and_alpha_patterns_override_per_path() {
    let mut cfg = ApplyConfig::new(&["query", "ffn"], LoraConfig::new(2));
    cfg.rank_pattern = vec![(r"1\.query".into(), 4), ("ffn".into(), 3)];
    cfg.alpha_pattern = vec![("0.ffn".into(), 12.0)];
    let mut m = model();
    apply_lora(&mut m, &cfg).unwrap();
    let adapter = |p: &str| m.child(p).unwrap().as_lora_adapter().unwrap().clone();
    assert_eq!(
        (
            adapter("encoder.0.query").rank(),
            adapter("encoder.0.query").alpha()
        ),
        (2, 2.0)
    );
    assert_eq!(
        (
            adapter("encoder.1.query").rank(),
            adapter("encoder.1.query").alpha()
        ),
        (4, 4.0)
    );
    assert_eq!(
        (
            adapter("encoder.0.ffn").rank(),
            adapter("encoder.0.ffn").scaling()
        ),
        (3, 4.0)
    );
    assert_eq!(adapter("encoder.1.ffn").alpha(), 3.0);
}

#[test]
fn bias_modes_unfreeze_the_right_biases() {
    let trainable = |bias: BiasMode| {
        let mut cfg = ApplyConfig::new(&["head"], LoraConfig::new(1));
        cfg.bias = bias;
        let mut m = model();
        apply_lora(&mut m, &cfg).unwrap();
        let mut names = Vec::new();
        m.for_each_weight("", &mut |p, w| {
            if w.trainable() && !p.contains("lora_") {
                names.push(p.to_string());
            }
        });
        names
    };
    assert!(trainable(BiasMode::None).is_empty());
    assert_eq!(trainable(BiasMode::LoraOnly), ["head.base_layer.bias"]);
    assert_eq!(trainable(BiasMode::All).len(), 7);
}

#[test]
fn validation_failure_leaves_the_model_unchanged() {
    let mut m = model();
    let before = m.named_weights();
    let err = apply_lora(
        &mut m,
        &ApplyConfig::new(&["query", "head"], LoraConfig::new(4)),
    )
    .unwrap_err();
    assert_eq!(err.path(), Some("head"), "{err}");
    assert!(adapted(&m).is_empty());
    assert_eq!(m.named_weights(), before);
    assert_eq!(m.parameter_count(), m.total_parameter_count());
    let err = apply_lora(&mut m, &ApplyConfig::new(&["encoder"], LoraConfig::new(1))).unwrap_err();
    assert!(err.to_string().contains("Sequential"), "{err}");
}

#[test]
fn merge_all_gives_a_plain_model_with_the_same_output() {
    let mut m = model();
    let lora = LoraConfig::new(2).with_init(LoraInit::Random).with_seed(4);
    apply_lora(
        &mut m,
        &ApplyConfig::new(&["query", "value", "ffn", "head"], lora.with_dora(false)),
    )
    .unwrap();
    let x = Tensor::random_normal(&[3, 8], 0.0, 1.0, &mut Rng::new(5));
    m.set_training(false);
    let y = m.forward_float(&x).unwrap();
    assert_eq!(merge_all(&mut m).unwrap(), 7);
    assert!(adapted(&m).is_empty());
    assert_eq!(m.total_parameter_count(), 6 * 72 + 18);
    assert_tensor_close(&m.forward_float(&x).unwrap(), &y, 1e-12, 0.0);
}
