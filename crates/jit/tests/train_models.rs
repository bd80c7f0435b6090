//! Training steps of crates/core models exported for training (LoRA
//! weights as Parameters, the base frozen as Constants) through `Trainer`:
//! a W4-like LoRA MLP with MSE, a cross-entropy classifier, and the LoRA
//! variants (rsLoRA, DoRA, LoRA bias), f32 and f64, against the
//! interpreter step after step.

use crate::common;

use common::trainer_matches_interp;
use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora_core::export::{tensor_to_data, ExportMode, ExportOptions};
use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, Input, Layer, Rng, Tensor};
use cranelora_graph::training::{training_step, Adam, Loss, Optimizer, Trainable};
use cranelora_graph::{DType, TensorData};
use cranelora_jit::{Bindings, JitOptions, Trainer};
use cranelora_kernels::Scalar;

/// W1's shape at test size: 3 dense layers (GELU tanh after the first two),
/// `outputs` wide at the end, LoRA on all three.
fn mlp<T: Scalar>(outputs: usize, lora: LoraConfig) -> Sequential<T> {
    let mut rng = Rng::new(11);
    let dense = |i, o, act, rng: &mut Rng| Dense::new(i, o, true, act, rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc1", dense(12, 16, Activation::GeluTanh, &mut rng))
        .and_then(|m| m.with("fc2", dense(16, 16, Activation::GeluTanh, &mut rng)))
        .and_then(|m| m.with("fc3", dense(16, outputs, Activation::Identity, &mut rng)))
        .expect("mlp");
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2", "fc3"], lora)).expect("apply");
    m.set_training(false);
    m
}

fn random_lora() -> LoraConfig {
    LoraConfig::new(4)
        .with_alpha(8.0)
        .with_init(LoraInit::Random)
}

/// Exports `m` for training, builds the step and compares `steps` steps.
fn check<T: Scalar>(
    m: &Sequential<T>,
    x: &Tensor<T>,
    target: TensorData,
    loss: Loss,
    opt: Optimizer,
    steps: usize,
) {
    let inputs = [Input::Float(x)];
    let options = ExportOptions::new(ExportMode::Training);
    let g = export_model(m, &input_specs(&inputs), &options).expect("export");
    let lora = Trainable::NameContains("lora_".into());
    let step = training_step(&g, loss, &lora, &opt).expect("step");
    assert!(!step.updates.is_empty(), "LoRA weights train");
    let bindings = bindings_for(m, &g).expect("bindings");
    let mut values = input_values(&inputs);
    values.push(target);
    let rtol = if T::DTYPE == DType::F64 { 1e-11 } else { 1e-4 };
    trainer_matches_interp(&step, bindings, &values, steps, rtol);
}

fn w4_like<T: Scalar>() {
    let m = mlp::<T>(16, random_lora());
    let x = Tensor::<T>::random_normal(&[8, 12], 0.0, 1.0, &mut Rng::new(5));
    let y = Tensor::<T>::random_normal(&[8, 16], 0.0, 1.0, &mut Rng::new(6));
    check(
        &m,
        &x,
        tensor_to_data(&y),
        Loss::Mse,
        Optimizer::Sgd { lr: 1e-2 },
        5,
    );
    let adam = Optimizer::Adam(Adam::adamw(1e-3, 0.01));
    check(&m, &x, tensor_to_data(&y), Loss::Mse, adam, 5);
}

#[test]
fn w4_like_lora_mlp_mse_steps_match_interp() {
    w4_like::<f64>();
    w4_like::<f32>();
}

fn classifier<T: Scalar>() {
    let m = mlp::<T>(5, random_lora());
    let x = Tensor::<T>::random_normal(&[10, 12], 0.0, 1.0, &mut Rng::new(7));
    let ids = TensorData::i64([10], vec![0, 4, 2, 1, 3, 3, 0, 2, 4, 1]).expect("ids");
    for opt in [Optimizer::Sgd { lr: 0.1 }, Optimizer::Adam(Adam::new(1e-2))] {
        check(&m, &x, ids.clone(), Loss::CrossEntropy, opt, 5);
    }
}

#[test]
fn cross_entropy_classifier_steps_match_interp() {
    classifier::<f64>();
    classifier::<f32>();
}

#[test]
fn lora_variants_train_through_the_trainer() {
    let variants = [
        random_lora().with_rslora(true),
        random_lora().with_dora(true),
        random_lora().with_lora_bias(true),
    ];
    for cfg in variants {
        let m = mlp::<f64>(6, cfg);
        let x = Tensor::<f64>::random_normal(&[6, 12], 0.0, 1.0, &mut Rng::new(8));
        let y = Tensor::<f64>::random_normal(&[6, 6], 0.0, 1.0, &mut Rng::new(9));
        let adam = Optimizer::Adam(Adam::new(1e-2));
        check(&m, &x, tensor_to_data(&y), Loss::Mse, adam, 4);
    }
}

/// Products large enough to call the GEMM (not inline): each GELU
/// layer's forward becomes one call whose epilogue also writes the GELU
/// derivative the backward reads (`EpilogueSpec::act_grad`), and the steps
/// still match the interpreter's, f32 and f64, GELU tanh and erf.
/// The compiled MSE + SGD step (learning rate `lr`) of `m`'s LoRA
/// parameters for input `x`, with `m`'s current values bound.
fn mse_sgd_trainer<T: Scalar>(m: &Sequential<T>, x: &Tensor<T>, lr: f64) -> Trainer {
    let inputs = [Input::Float(x)];
    let options = ExportOptions::new(ExportMode::Training);
    let g = export_model(m, &input_specs(&inputs), &options).expect("export");
    let lora = Trainable::NameContains("lora_".into());
    let step = training_step(&g, Loss::Mse, &lora, &Optimizer::Sgd { lr }).expect("step");
    let b = Bindings::from_map(&bindings_for(m, &g).expect("bindings")).expect("b");
    Trainer::new(&step, b, &JitOptions::default()).expect("trainer")
}

fn gelu_layers_keep_their_epilogue<T: Scalar>(act: Activation) {
    let mut rng = Rng::new(21);
    let dense = |i, o, act, rng: &mut Rng| Dense::new(i, o, true, act, rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc1", dense(48, 64, act, &mut rng))
        .and_then(|m| m.with("fc2", dense(64, 64, act, &mut rng)))
        .and_then(|m| m.with("fc3", dense(64, 24, Activation::Identity, &mut rng)))
        .expect("mlp");
    apply_lora(
        &mut m,
        &ApplyConfig::new(&["fc1", "fc2", "fc3"], random_lora()),
    )
    .expect("lora");
    m.set_training(false);
    let x = Tensor::<T>::random_normal(&[16, 48], 0.0, 1.0, &mut Rng::new(22));
    let y = Tensor::<T>::random_normal(&[16, 24], 0.0, 1.0, &mut Rng::new(23));
    let t = mse_sgd_trainer(&m, &x, 1e-2);
    let report = t.compiled().report();
    assert!(
        report.matmul_epilogues >= 2,
        "{act:?}: both GELU layers' forwards are epilogues, got {}",
        report.matmul_epilogues
    );
    check(
        &m,
        &x,
        tensor_to_data(&y),
        Loss::Mse,
        Optimizer::Sgd { lr: 1e-2 },
        3,
    );
}

#[test]
fn gelu_forwards_write_their_derivative_in_the_epilogue() {
    for act in [Activation::GeluTanh, Activation::GeluErf] {
        gelu_layers_keep_their_epilogue::<f64>(act);
        gelu_layers_keep_their_epilogue::<f32>(act);
    }
}

#[test]
fn a_w4_like_step_stores_every_update_in_place() {
    let m = mlp::<f32>(16, random_lora());
    let x = Tensor::<f32>::random_normal(&[8, 12], 0.0, 1.0, &mut Rng::new(5));
    let t = mse_sgd_trainer(&m, &x, 1e-3);
    assert_eq!(t.updates().len(), 6, "A and B of three layers");
    let copied: Vec<&str> = t
        .updates()
        .iter()
        .filter(|u| !u.in_place)
        .map(|u| u.parameter.as_str())
        .collect();
    assert!(copied.is_empty(), "copied at the end: {copied:?}");
}

/// W4's step at reduced width (3 × dense 256→256, LoRA rank 16, batch 64,
/// SGD): `Trainer::step` (in place) against the functional step the bench
/// runs today (`run_into`, then every new value re-inserted as a binding),
/// interleaved in one process; prints the medians and their ratio.
/// `cargo test -p cranelora-jit --test integration train_models:: -- --ignored --nocapture`
#[test]
#[ignore = "timing"]
fn trainer_step_against_the_functional_step() {
    use std::time::Instant;
    let mut rng = Rng::new(1);
    let dense = |rng: &mut Rng| Dense::new(256, 256, true, Activation::GeluTanh, rng).expect("d");
    let mut m: Sequential<f32> = Sequential::new()
        .with("fc1", dense(&mut rng))
        .and_then(|m| m.with("fc2", dense(&mut rng)))
        .and_then(|m| m.with("fc3", dense(&mut rng)))
        .expect("mlp");
    let cfg = LoraConfig::new(16).with_init(LoraInit::Random);
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2", "fc3"], cfg)).expect("apply");
    m.set_training(false);
    let x = Tensor::<f32>::random_normal(&[64, 256], 0.0, 1.0, &mut Rng::new(2));
    let y = Tensor::<f32>::random_normal(&[64, 256], 0.0, 1.0, &mut Rng::new(3));
    let inputs = [Input::Float(&x)];
    let options = ExportOptions::new(ExportMode::Training);
    let g = export_model(&m, &input_specs(&inputs), &options).expect("export");
    let lora = Trainable::NameContains("lora_".into());
    let step = training_step(&g, Loss::Mse, &lora, &Optimizer::Sgd { lr: 1e-3 }).expect("step");
    let values = [input_values(&inputs).remove(0), tensor_to_data(&y)];
    let b = Bindings::from_map(&bindings_for(&m, &g).expect("b")).expect("b");
    let mut trainer = Trainer::new(&step, b.clone(), &JitOptions::default()).expect("trainer");
    let c = cranelora_jit::compile(&step.graph, &JitOptions::default()).expect("compile");
    let mut jb = b;
    let mut out = c.run(&values, &jb).expect("run");
    let (mut t_in_place, mut t_functional) = (Vec::new(), Vec::new());
    for _ in 0..60 {
        let t = Instant::now();
        c.run_into(&values, &jb, &mut out).expect("run");
        for (u, v) in step.updates.iter().zip(&out[1..]) {
            jb.insert(u.parameter.clone(), v.clone()).expect("bind");
        }
        t_functional.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        trainer.step(&values).expect("step");
        t_in_place.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, f) = (median(&mut t_in_place), median(&mut t_functional));
    println!(
        "W4 at width 256: Trainer::step {:.3} ms, run_into + rebind {:.3} ms, ratio {:.3}",
        a * 1e3,
        f * 1e3,
        a / f
    );
}
