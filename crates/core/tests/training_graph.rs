//! One SGD step as a graph (export in Training mode + `training_step`), run
//! by the interpreter, against the eager `backward` + `update_parameters`
//! of the same MLP with LoRA adapters.

use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::loss::{cross_entropy_with_logits, mse, LossOutput};
use cranelora_core::{Activation, IdTensor, Input, Layer, Rng, Tensor};
use cranelora_graph::training::{training_step, Loss, Optimizer, Trainable, UpdateKind};
use cranelora_graph::{interpret, TensorData};
use cranelora_kernels::testing::assert_close;
use std::collections::HashMap;

const LR: f64 = 0.05;

/// fc1 (4→8, GELU) and fc2 (8→3) with random-init rank-2 adapters, base frozen.
fn lora_mlp() -> Sequential<f64> {
    let mut rng = Rng::new(3);
    let mut model = Sequential::new()
        .with(
            "fc1",
            Dense::new(4, 8, true, Activation::GeluErf, &mut rng).expect("fc1"),
        )
        .expect("fc1")
        .with(
            "fc2",
            Dense::new(8, 3, true, Activation::Identity, &mut rng).expect("fc2"),
        )
        .expect("fc2");
    let lora = LoraConfig::new(2)
        .with_alpha(4.0)
        .with_init(LoraInit::Random);
    apply_lora(&mut model, &ApplyConfig::new(&["fc1", "fc2"], lora)).expect("adapters");
    model
}

/// Runs the graph step and the eager step from the same model and compares
/// every trained weight.
fn compare(loss: Loss, target: TensorData, eager_loss: &dyn Fn(&Tensor<f64>) -> LossOutput<f64>) {
    let mut model = lora_mlp();
    let x = Tensor::random_normal(&[5, 4], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    let options = ExportOptions::new(ExportMode::Training);
    let graph = export_model(&model, &input_specs(&inputs), &options).expect("export");
    let sgd = Optimizer::Sgd { lr: LR };
    let step = training_step(&graph, loss, &Trainable::All, &sgd).expect("training step");
    let mut names: Vec<&str> = step.updates.iter().map(|u| u.parameter.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names.len(), 4, "A and B of both adapters: {names:?}");
    assert!(names.iter().all(|n| n.contains("lora_")), "{names:?}");
    assert!(step.updates.iter().all(|u| u.kind == UpdateKind::Weight));

    let mut bindings = bindings_for(&model, &graph).expect("bindings");
    let mut values = input_values(&inputs);
    values.push(target);
    let out = interpret(&step.graph, &values, &bindings).expect("the step runs");
    step.apply(&out, &mut bindings);

    model.set_training(true);
    model.zero_grad();
    let y = model.forward(&inputs).expect("forward");
    let l = eager_loss(&y);
    model.backward(&l.grad).expect("backward");
    model.update_parameters(LR);
    assert_close(&out[0].to_f64_vec(), &[l.value], 1e-10, 0.0);
    let weights: HashMap<String, Tensor<f64>> = model.named_weights().into_iter().collect();
    for u in &step.updates {
        let eager = weights[&u.parameter].to_vec();
        assert_close(&bindings[&u.parameter].to_f64_vec(), &eager, 1e-10, 1e-14);
    }
}

#[test]
fn sgd_step_graph_matches_eager_backward_and_update_with_mse() {
    let target = Tensor::random_normal(&[5, 3], 0.0, 1.0, &mut Rng::new(10));
    let data = TensorData::f64([5, 3], target.to_vec()).expect("target");
    compare(Loss::Mse, data, &|y| mse(y, &target).expect("mse"));
}

#[test]
fn sgd_step_graph_matches_eager_backward_and_update_with_cross_entropy() {
    let ids = vec![2, 0, 1, 1, 2];
    let targets = IdTensor::from_vec(ids.clone(), &[5]).expect("ids");
    let data = TensorData::i64([5], ids).expect("ids");
    compare(Loss::CrossEntropy, data, &|y| {
        cross_entropy_with_logits(y, &targets).expect("cross-entropy")
    });
}
