//! Helpers shared by the jit integration tests.
#![allow(dead_code)]

use cranelora_graph::training::TrainingStep;
use cranelora_graph::{interpret, DType, Graph, Shape, TensorData};
use cranelora_jit::{compile, Bindings, JitOptions};
use cranelora_kernels::testing::{check_close, Nan};

/// Deterministic values in [-3, 3) with some exact specials mixed in when `specials`.
pub fn data(shape: &[usize], dtype: DType, seed: u64, specials: bool) -> TensorData {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = ((s >> 11) as f64) / ((1u64 << 53) as f64);
        let x = (u * 6.0 - 3.0) * 1.0;
        let special = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1.0,
            -1.0,
        ];
        v.push(if specials && i % 5 == 3 {
            special[(i / 5) % special.len()]
        } else {
            x
        });
    }
    match dtype {
        DType::F32 => TensorData::f32(shape.to_vec(), v.iter().map(|&x| x as f32).collect()),
        DType::F64 => TensorData::f64(shape.to_vec(), v),
        DType::I64 => TensorData::i64(
            shape.to_vec(),
            v.iter().map(|&x| (x * 3.0) as i64).collect(),
        ),
    }
    .expect("sized")
}

/// Positive values (for log, sqrt, pow bases).
pub fn positive(shape: &[usize], dtype: DType, seed: u64) -> TensorData {
    let d = data(shape, dtype, seed, false).to_f64_vec();
    let v: Vec<f64> = d.iter().map(|x| x.abs() + 0.1).collect();
    match dtype {
        DType::F32 => TensorData::f32(shape.to_vec(), v.iter().map(|&x| x as f32).collect()),
        _ => TensorData::f64(shape.to_vec(), v),
    }
    .expect("sized")
}

/// Asserts closeness: same dtype and shape, NaN where NaN, |a − e| ≤ atol + rtol·max|e|.
#[track_caller]
pub fn assert_same(actual: &TensorData, expected: &TensorData, rtol: f64, atol: f64) {
    assert_eq!(actual.dtype(), expected.dtype());
    assert_eq!(actual.shape(), expected.shape());
    if let Err(m) = check_close(
        &actual.to_f64_vec(),
        &expected.to_f64_vec(),
        rtol,
        atol,
        Nan::Equal,
    ) {
        panic!("{m}");
    }
}

/// The JIT's outputs against the interpreter's, with and without the passes.
#[track_caller]
pub fn check(g: &Graph, inputs: &[TensorData], bindings: &cranelora_graph::Bindings, rtol: f64) {
    let expected = interpret(g, inputs, bindings).expect("interpreter");
    let jb = Bindings::from_map(bindings).expect("contiguous");
    for options in [JitOptions::default(), no_passes()] {
        let c = compile(g, &options).expect("compiles");
        let out = c.run(inputs, &jb).expect("runs");
        assert_eq!(out.len(), expected.len());
        for (a, e) in out.iter().zip(&expected) {
            assert_same(a, e, rtol, rtol * 1e-3);
        }
    }
}

/// Options with every graph pass off.
pub fn no_passes() -> JitOptions {
    let mut o = JitOptions::default();
    let p = &mut o.passes;
    (p.simplify, p.const_fold, p.lora_fold, p.cse, p.dce, p.fuse) =
        (false, false, false, false, false, false);
    o
}

/// A shape as a Shape.
pub fn shape(d: &[usize]) -> Shape {
    Shape::from(d)
}

/// `n` steps of the interpreter and of a `Trainer` from the same bindings:
/// the losses, the parameters and the optimizer state agree within `rtol`
/// (parameters 10·`rtol`) after every step.
#[track_caller]
pub fn trainer_matches_interp(
    step: &TrainingStep,
    start: cranelora_graph::Bindings,
    ins: &[TensorData],
    n: usize,
    rtol: f64,
) {
    let mut reference = start.clone();
    reference.extend(step.initial_state());
    let jb = cranelora_jit::Bindings::from_map(&start).expect("bindings");
    let mut trainer =
        cranelora_jit::Trainer::new(step, jb, &JitOptions::default()).expect("trainer");
    assert_eq!(trainer.updates().len(), step.updates.len());
    for i in 0..n {
        let expected = interpret(&step.graph, ins, &reference).expect("interp");
        let loss = trainer.step(ins).expect("step");
        let e = expected[0].to_f64_vec()[0];
        assert!(
            (loss - e).abs() <= rtol * e.abs().max(1e-3),
            "step {i}: loss {loss} vs {e}"
        );
        step.apply(&expected, &mut reference);
        assert_eq!(trainer.bindings().len(), reference.len());
        for (name, value) in &reference {
            let actual = trainer.bindings().get(name);
            let actual = actual.unwrap_or_else(|| panic!("{name} bound"));
            assert_same(actual, value, rtol * 10.0, rtol * 10.0);
        }
    }
}

/// The activations a GEMM epilogue takes (epilogue and LoRA-epilogue tests).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    None,
    Relu,
    Gelu,
    GeluTanh,
    Silu,
    Tanh,
    Sigmoid,
}

/// Every [`Act`].
pub const ACTS: [Act; 7] = [
    Act::None,
    Act::Relu,
    Act::Gelu,
    Act::GeluTanh,
    Act::Silu,
    Act::Tanh,
    Act::Sigmoid,
];

/// `act(z)` appended to `g` (`z` itself for [`Act::None`]).
pub fn apply(g: &mut Graph, act: Act, z: cranelora_graph::NodeId) -> cranelora_graph::NodeId {
    let r = match act {
        Act::None => return z,
        Act::Relu => g.relu(z),
        Act::Gelu => g.gelu(z),
        Act::GeluTanh => g.gelu_tanh(z),
        Act::Silu => g.silu(z),
        Act::Tanh => g.tanh(z),
        Act::Sigmoid => g.sigmoid(z),
    };
    r.expect("activation")
}
