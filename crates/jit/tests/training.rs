//! Training-step graphs (crates/graph training.rs) through the JIT: the
//! compiled step run functionally (new values as outputs) and through
//! [`Trainer`] (new values stored into the Parameter buffers) gives the
//! interpreter's loss, parameters and optimizer state, step after step.

use crate::common;

use common::{assert_same, data, trainer_matches_interp};
use cranelora_graph::training::{training_step, Adam, Loss, Optimizer, Trainable, TrainingStep};
use cranelora_graph::{interpret, Bindings, DType, Graph};
use cranelora_jit::{compile, JitOptions, Trainer};

/// A LoRA dense layer with a frozen base: y = gelu_tanh(x·W + b + 0.5·(x·A)·B).
fn model(d: DType) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [6, 5], d);
    let w = g.parameter("fc.weight", [5, 4], d);
    let b = g.parameter("fc.bias", [4], d);
    let a = g.parameter("fc.lora_a", [5, 2], d);
    let bb = g.parameter("fc.lora_b", [2, 4], d);
    let xw = g.matmul(x, w).expect("mm");
    let z = g.add(xw, b).expect("bias");
    let xa = g.matmul(x, a).expect("xa");
    let xab = g.matmul(xa, bb).expect("xab");
    let s = g.scale(xab, 0.5).expect("scale");
    let z = g.add(z, s).expect("lora");
    let y = g.gelu_tanh(z).expect("gelu");
    g.set_outputs(&[y]).expect("node");
    g
}

fn weights(d: DType) -> Bindings {
    let shapes: [(&str, &[usize]); 4] = [
        ("fc.weight", &[5, 4]),
        ("fc.bias", &[4]),
        ("fc.lora_a", &[5, 2]),
        ("fc.lora_b", &[2, 4]),
    ];
    let named = shapes.into_iter().enumerate();
    named
        .map(|(i, (name, shape))| (name.to_string(), data(shape, d, 10 + i as u64, false)))
        .collect()
}

fn inputs(d: DType) -> Vec<cranelora_graph::TensorData> {
    vec![data(&[6, 5], d, 1, false), data(&[6, 4], d, 2, false)]
}

/// A training step with MSE and PyTorch's SGD with momentum μ.
fn sgd_momentum(
    model: &Graph,
    trainable: &Trainable,
    lr: f64,
    mu: f64,
    nesterov: bool,
) -> TrainingStep {
    let opt = Optimizer::SgdMomentum {
        lr,
        momentum: mu,
        nesterov,
    };
    training_step(model, Loss::Mse, trainable, &opt).expect("momentum step")
}

fn lora() -> Trainable {
    Trainable::NameContains("lora_".into())
}

fn tolerance(d: DType) -> f64 {
    if d == DType::F64 {
        1e-12
    } else {
        2e-5
    }
}

#[test]
fn jit_step_run_functionally_matches_interp() {
    for (optimizer, d) in [
        (Optimizer::Sgd { lr: 0.1 }, DType::F64),
        (Optimizer::Sgd { lr: 0.1 }, DType::F32),
        (Optimizer::Adam(Adam::new(0.01)), DType::F64),
        (Optimizer::Adam(Adam::adamw(0.01, 0.1)), DType::F32),
    ] {
        let rtol = tolerance(d);
        let step = training_step(&model(d), Loss::Mse, &lora(), &optimizer).expect("step");
        let c = compile(&step.graph, &JitOptions::default()).expect("compile");
        let mut reference: Bindings = step.initial_state();
        reference.extend(weights(d));
        let mut jitted = reference.clone();
        for _ in 0..3 {
            let expected = interpret(&step.graph, &inputs(d), &reference).expect("interp");
            let jb = cranelora_jit::Bindings::from_map(&jitted).expect("bindings");
            let out = c.run(&inputs(d), &jb).expect("run");
            for (a, e) in out.iter().zip(&expected) {
                assert_same(a, e, rtol, rtol);
            }
            step.apply(&expected, &mut reference);
            step.apply(&out, &mut jitted);
        }
    }
}

#[test]
fn trainer_sgd_updates_in_place_and_matches_interp() {
    for d in [DType::F64, DType::F32] {
        let opt = Optimizer::Sgd { lr: 0.1 };
        let step = training_step(&model(d), Loss::Mse, &lora(), &opt).expect("step");
        trainer_matches_interp(&step, weights(d), &inputs(d), 8, tolerance(d));
        let jb = cranelora_jit::Bindings::from_map(&weights(d)).expect("b");
        let t = Trainer::new(&step, jb, &JitOptions::default()).expect("trainer");
        assert!(t.updates().iter().all(|u| u.in_place), "{:?}", t.updates());
    }
}

#[test]
fn trainer_sgd_momentum_matches_interp() {
    for d in [DType::F64, DType::F32] {
        for nesterov in [false, true] {
            let step = sgd_momentum(&model(d), &lora(), 0.05, 0.9, nesterov);
            trainer_matches_interp(&step, weights(d), &inputs(d), 8, tolerance(d));
            // Every parameter trained, the frozen base included.
            let step = sgd_momentum(&model(d), &Trainable::All, 0.05, 0.9, nesterov);
            trainer_matches_interp(&step, weights(d), &inputs(d), 5, tolerance(d));
        }
    }
}

#[test]
fn trainer_adam_and_adamw_match_interp_with_their_state() {
    for d in [DType::F64, DType::F32] {
        for opt in [Adam::new(0.01), Adam::adamw(0.01, 0.1), {
            let mut l2 = Adam::new(0.02);
            l2.weight_decay = 0.05;
            l2
        }] {
            let step =
                training_step(&model(d), Loss::Mse, &lora(), &Optimizer::Adam(opt)).expect("step");
            trainer_matches_interp(&step, weights(d), &inputs(d), 6, tolerance(d));
            let jb = cranelora_jit::Bindings::from_map(&weights(d)).expect("b");
            let t = Trainer::new(&step, jb, &JitOptions::default()).expect("trainer");
            let names: Vec<&str> = t.updates().iter().map(|u| u.parameter.as_str()).collect();
            assert!(names.contains(&"adam.step") && names.contains(&"adam.m.fc.lora_a"));
            assert!(t.updates().iter().all(|u| u.in_place), "{:?}", t.updates());
        }
    }
}

#[test]
fn cross_entropy_step_matches_interp() {
    // Logits [6, 4] of the LoRA layer against class ids, SGD and AdamW.
    for d in [DType::F64, DType::F32] {
        for opt in [
            Optimizer::Sgd { lr: 0.2 },
            Optimizer::Adam(Adam::adamw(0.01, 0.01)),
        ] {
            let step = training_step(&model(d), Loss::CrossEntropy, &lora(), &opt).expect("step");
            let ids = cranelora_graph::TensorData::i64([6], vec![0, 3, 1, 2, 3, 0]).expect("ids");
            let ins = [data(&[6, 5], d, 1, false), ids];
            trainer_matches_interp(&step, weights(d), &ins, 6, tolerance(d));
        }
    }
}
