//! An exported LoRA MLP (crates/core) through eager, the interpreter, "jit"
//! (Serving export, adapters as Parameters, LoRA folding off) and
//! "jit-folded" (Inference export, everything Constant, LoRA folding on).

use crate::common;

use common::assert_same;
use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_to_data,
};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, Input, Layer, Rng, Tensor};
use cranelora_graph::interpret;
use cranelora_jit::{compile, Bindings, JitOptions};

/// fc1 10→12 GELU(tanh), fc2 12→12 GELU(tanh), fc3 12→5, LoRA rank 4 on all three.
fn model() -> Sequential<f32> {
    let mut rng = Rng::new(3);
    let dense = |i, o, act, rng: &mut Rng| Dense::new(i, o, true, act, rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc1", dense(10, 12, Activation::GeluTanh, &mut rng))
        .and_then(|m| m.with("fc2", dense(12, 12, Activation::GeluTanh, &mut rng)))
        .and_then(|m| m.with("fc3", dense(12, 5, Activation::Identity, &mut rng)))
        .expect("mlp");
    let lora = LoraConfig::new(4)
        .with_alpha(8.0)
        .with_init(LoraInit::Random);
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2", "fc3"], lora)).expect("apply");
    m
}

#[test]
fn jit_and_jit_folded_match_interp_and_eager_on_a_lora_mlp() {
    let mut m = model();
    let x = Tensor::random_normal(&[7, 10], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    m.set_training(false);
    let eager = tensor_to_data(&m.forward(&inputs).expect("eager"));
    for (mode, fold) in [(ExportMode::Serving, false), (ExportMode::Inference, true)] {
        let g = export_model(&m, &input_specs(&inputs), &ExportOptions::new(mode)).expect("export");
        let gb = bindings_for(&m, &g).expect("bindings");
        let values = input_values(&inputs);
        let interp = interpret(&g, &values, &gb).expect("interp");
        let c = compile(&g, &JitOptions::default().with_lora_fold(fold)).expect("compile");
        if mode == ExportMode::Serving {
            assert!(!c.parameters().is_empty(), "adapters are bound at run time");
        }
        let out = c
            .run(&values, &Bindings::from_map(&gb).expect("bindings"))
            .expect("run");
        assert_same(&out[0], &interp[0], 1e-5, 1e-6);
        assert_same(&out[0], &eager, 1e-5, 1e-6);
    }
}

/// W1 of WORKLOADS.md (4 × dense 1024→1024, GELU tanh after the first 3,
/// LoRA rank 16 on all, batch 64): compile time per phase and time per call.
/// `cargo test --release -p cranelora-jit --test integration lora_mlp:: -- --ignored --nocapture`
#[test]
#[ignore = "timing; run by hand in release"]
fn w1_compile_and_run_times() {
    let mut rng = Rng::new(1);
    let mut m = Sequential::<f32>::new();
    for i in 0..4 {
        let act = if i < 3 {
            Activation::GeluTanh
        } else {
            Activation::Identity
        };
        let d = Dense::new(1024, 1024, true, act, &mut rng).expect("dense");
        m = m.with(&format!("fc{i}"), d).expect("with");
    }
    let lora = LoraConfig::new(16)
        .with_alpha(32.0)
        .with_init(LoraInit::Random);
    let names = ["fc0", "fc1", "fc2", "fc3"];
    apply_lora(&mut m, &ApplyConfig::new(&names, lora)).expect("apply");
    m.set_training(false);
    let x = Tensor::<f32>::random_normal(&[64, 1024], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    for (label, mode, fold) in [
        ("jit", ExportMode::Serving, false),
        ("jit-folded", ExportMode::Inference, true),
    ] {
        let g = export_model(&m, &input_specs(&inputs), &ExportOptions::new(mode)).expect("export");
        let gb = Bindings::from_map(&bindings_for(&m, &g).expect("b")).expect("b");
        let c = compile(&g, &JitOptions::default().with_lora_fold(fold)).expect("compile");
        let r = c.report();
        let values = input_values(&inputs);
        let mut out = c.run(&values, &gb).expect("run");
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = std::time::Instant::now();
            c.run_into(&values, &gb, &mut out).expect("run");
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "W1 {label}: compile {:?} (passes {:?}, planning {:?}, lowering {:?}, codegen {:?}), \
             arena {} KiB, run median {:?} min {:?}",
            r.total(),
            r.passes,
            r.planning,
            r.lowering,
            r.codegen,
            c.arena_bytes() / 1024,
            times[times.len() / 2],
            times[0]
        );
    }
}
