//! Models exported from crates/core, adapted with LoRA (plain, rsLoRA,
//! DoRA, LoRA bias), in every export mode, LoRA folding on and off: JIT
//! against the interpreter (f64, 1e-12).

use crate::common;

use common::assert_same;
use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{
    Conv2d, Conv2dOptions, Dense, Dropout, Embedding, FullyConnected, LayerNorm, Residual,
    Sequential,
};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, ActivationLayer, IdTensor, Input, Layer, Rng, Tensor};
use cranelora_graph::interpret;
use cranelora_jit::{compile, Bindings, JitOptions};

const MODES: [ExportMode; 3] = [
    ExportMode::Inference,
    ExportMode::Training,
    ExportMode::Serving,
];

fn lora(m: &mut Sequential<f64>, targets: &[&str]) {
    lora_with(m, targets, LoraConfig::new(2).with_init(LoraInit::Random));
}

fn lora_with(m: &mut Sequential<f64>, targets: &[&str], cfg: LoraConfig) {
    apply_lora(m, &ApplyConfig::new(targets, cfg)).expect("apply");
    m.set_training(false);
}

/// The adapter variants of crates/core/src/lora, each with random A and B
/// (so the update is not zero) and α ≠ r (so the scaling matters).
fn variants() -> [(&'static str, LoraConfig); 3] {
    let base = LoraConfig::new(2)
        .with_alpha(6.0)
        .with_init(LoraInit::Random);
    [
        ("rslora", base.with_rslora(true)),
        ("dora", base.with_dora(true)),
        ("lora_bias", base.with_lora_bias(true)),
    ]
}

fn check_all(m: &Sequential<f64>, inputs: &[Input<'_, f64>]) {
    for mode in MODES {
        let g = export_model(m, &input_specs(inputs), &ExportOptions::new(mode)).expect("export");
        let gb = bindings_for(m, &g).expect("bindings");
        let values = input_values(inputs);
        let expected = interpret(&g, &values, &gb).expect("interp");
        for fold in [false, true] {
            let c = compile(&g, &JitOptions::default().with_lora_fold(fold)).expect("compile");
            let out = c
                .run(&values, &Bindings::from_map(&gb).expect("b"))
                .expect("run");
            assert_same(&out[0], &expected[0], 1e-12, 1e-13);
        }
    }
}

#[test]
fn dense_layer_norm_mlp_in_every_mode() {
    let mut m = dense_mlp();
    lora(&mut m, &["fc1", "fc2"]);
    let x = Tensor::random_normal(&[3, 6], 0.0, 1.0, &mut Rng::new(7));
    check_all(&m, &[Input::Float(&x)]);
}

#[test]
fn convnet_in_every_mode() {
    let mut rng = Rng::new(2);
    let opts = |s, p| Conv2dOptions {
        stride: (s, s),
        padding: (p, p),
        dilation: (1, 1),
    };
    let mut m = Sequential::new()
        .with(
            "conv1",
            Conv2d::new(2, 4, (3, 3), opts(1, 1), true, &mut rng).expect("conv1"),
        )
        .and_then(|m| m.with("relu", ActivationLayer::new(Activation::Relu)))
        .and_then(|m| {
            m.with(
                "conv2",
                Conv2d::new(4, 3, (3, 3), opts(2, 0), true, &mut rng).expect("conv2"),
            )
        })
        .expect("convnet");
    lora(&mut m, &["conv1", "conv2"]);
    let x = Tensor::random_normal(&[2, 2, 7, 7], 0.0, 1.0, &mut Rng::new(8));
    check_all(&m, &[Input::Float(&x)]);
}

#[test]
fn embedding_net_in_every_mode() {
    let mut rng = Rng::new(3);
    let mut m = Sequential::new()
        .with("emb", Embedding::new(10, 6, None, &mut rng).expect("emb"))
        .and_then(|m| {
            m.with(
                "proj",
                Dense::new(6, 5, true, Activation::Silu, &mut rng).expect("proj"),
            )
        })
        .expect("embnet");
    lora(&mut m, &["emb", "proj"]);
    let ids = IdTensor::from_vec(vec![0, 3, 9, 1, 3, 7, 2, 2, 5, 8], &[2, 5]).expect("ids");
    check_all(&m, &[Input::Ids(&ids)]);
}

#[test]
fn attention_with_a_mask_in_every_mode() {
    use cranelora_core::layers::MultiHeadAttention;
    use cranelora_core::Mask;
    let mha = MultiHeadAttention::<f64>::new(8, 2, &mut Rng::new(4)).expect("mha");
    let mut m = Sequential::new().with("attn", mha).expect("seq");
    lora(&mut m, &["query", "value"]);
    let x = Tensor::random_normal(&[2, 5, 8], 0.0, 1.0, &mut Rng::new(9));
    let keep = [true, true, true, false, false, true, true, true, true, true];
    let mask = Mask::from_vec(keep.to_vec(), &[2, 5]).expect("mask");
    check_all(&m, &[Input::Float(&x), Input::Mask(&mask)]);
}

fn dense_mlp() -> Sequential<f64> {
    let mut rng = Rng::new(1);
    Sequential::new()
        .with(
            "fc1",
            Dense::new(6, 8, true, Activation::Relu, &mut rng).expect("fc1"),
        )
        .and_then(|m| m.with("ln", LayerNorm::new(8, 1e-5, true).expect("ln")))
        .and_then(|m| {
            m.with(
                "fc2",
                Dense::new(8, 4, true, Activation::GeluErf, &mut rng).expect("fc2"),
            )
        })
        .expect("mlp")
}

#[test]
fn lora_variants_on_dense_layers_in_every_mode() {
    let x = Tensor::random_normal(&[3, 6], 0.0, 1.0, &mut Rng::new(7));
    for (name, cfg) in variants() {
        let mut m = dense_mlp();
        lora_with(&mut m, &["fc1", "fc2"], cfg);
        eprintln!("variant {name}");
        check_all(&m, &[Input::Float(&x)]);
    }
}

#[test]
fn lora_variants_on_conv_and_embedding_in_every_mode() {
    let opts = Conv2dOptions {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let x = Tensor::random_normal(&[2, 2, 5, 5], 0.0, 1.0, &mut Rng::new(8));
    let ids = IdTensor::from_vec(vec![0, 3, 9, 1, 3, 7], &[2, 3]).expect("ids");
    for (name, cfg) in variants() {
        eprintln!("variant {name}");
        let mut rng = Rng::new(2);
        let conv = Conv2d::new(2, 3, (3, 3), opts, true, &mut rng).expect("conv");
        let mut m = Sequential::new().with("conv", conv).expect("seq");
        lora_with(&mut m, &["conv"], cfg);
        check_all(&m, &[Input::Float(&x)]);
        let emb = Embedding::new(10, 6, None, &mut rng).expect("emb");
        let mut m = Sequential::new().with("emb", emb).expect("seq");
        if cfg.lora_bias {
            // PEFT has no LoRA bias on embeddings; neither has crates/core.
            assert!(apply_lora(&mut m, &ApplyConfig::new(&["emb"], cfg)).is_err());
            continue;
        }
        lora_with(&mut m, &["emb"], cfg);
        check_all(&m, &[Input::Ids(&ids)]);
    }
}

#[test]
fn residual_dropout_and_fully_connected_in_every_mode() {
    // Dropout in eval mode is the identity; Residual adds its input.
    let mut rng = Rng::new(5);
    let inner = Dense::new(8, 8, true, Activation::GeluTanh, &mut rng).expect("inner");
    let mut m = Sequential::new()
        .with(
            "fc_in",
            FullyConnected::new(6, 8, true, &mut rng).expect("fc_in"),
        )
        .and_then(|m| m.with("res", Residual::new(inner)))
        .and_then(|m| m.with("drop", Dropout::new(0.3, 17).expect("dropout")))
        .and_then(|m| {
            m.with(
                "fc_out",
                FullyConnected::new(8, 3, false, &mut rng).expect("fc_out"),
            )
        })
        .expect("model");
    lora(&mut m, &["fc_in", "inner", "fc_out"]);
    let x = Tensor::random_normal(&[4, 6], 0.0, 1.0, &mut Rng::new(10));
    check_all(&m, &[Input::Float(&x)]);
}

#[test]
fn fused_attention_in_every_mode() {
    use cranelora_core::layers::MultiHeadAttention;
    use cranelora_core::Mask;
    let mha = MultiHeadAttention::<f64>::fused(8, 2, &mut Rng::new(4)).expect("mha");
    assert!(mha.is_fused());
    let mut m = Sequential::new().with("attn", mha).expect("seq");
    lora(&mut m, &["in_proj", "out_proj"]);
    let x = Tensor::random_normal(&[2, 5, 8], 0.0, 1.0, &mut Rng::new(9));
    let keep = [
        true, true, false, true, true, true, true, true, false, false,
    ];
    let mask = Mask::from_vec(keep.to_vec(), &[2, 5]).expect("mask");
    check_all(&m, &[Input::Float(&x), Input::Mask(&mask)]);
}
