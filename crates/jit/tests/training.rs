//! Training-step graphs (crates/graph training.rs): the compiled step gives
//! the interpreter's loss and new parameters, step after step.

mod common;

use common::{assert_same, data};
use cranelora_graph::training::{training_step, Adam, Loss, Optimizer, Trainable};
use cranelora_graph::{interpret, Bindings, DType, Graph};
use cranelora_jit::{compile, JitOptions};

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

fn run_steps(optimizer: Optimizer, d: DType, rtol: f64) {
    let lora = Trainable::NameContains("lora_".into());
    let step = training_step(&model(d), Loss::Mse, &lora, &optimizer).expect("step");
    let c = compile(&step.graph, &JitOptions::default()).expect("compile");
    let mut reference: Bindings = step.initial_state();
    for (i, (name, shape)) in [
        ("fc.weight", &[5usize, 4][..]),
        ("fc.bias", &[4]),
        ("fc.lora_a", &[5, 2]),
        ("fc.lora_b", &[2, 4]),
    ]
    .into_iter()
    .enumerate()
    {
        reference.insert(name.into(), data(shape, d, 10 + i as u64, false));
    }
    let mut jitted = reference.clone();
    let inputs = [data(&[6, 5], d, 1, false), data(&[6, 4], d, 2, false)];
    for _ in 0..3 {
        let expected = interpret(&step.graph, &inputs, &reference).expect("interp");
        let jb = cranelora_jit::Bindings::from_map(&jitted).expect("bindings");
        let out = c.run(&inputs, &jb).expect("run");
        for (a, e) in out.iter().zip(&expected) {
            assert_same(a, e, rtol, rtol);
        }
        step.apply(&expected, &mut reference);
        step.apply(&out, &mut jitted);
    }
    for (name, value) in &reference {
        assert_same(&jitted[name], value, rtol * 10.0, rtol * 10.0);
    }
}

#[test]
fn jit_sgd_step_matches_interp() {
    run_steps(Optimizer::Sgd { lr: 0.1 }, DType::F64, 1e-12);
    run_steps(Optimizer::Sgd { lr: 0.1 }, DType::F32, 1e-5);
}

#[test]
fn jit_adam_step_matches_interp() {
    run_steps(Optimizer::Adam(Adam::new(0.01)), DType::F64, 1e-12);
    run_steps(Optimizer::Adam(Adam::adamw(0.01, 0.1)), DType::F32, 1e-5);
}
