//! Training-step graphs run by the interpreter against independent eager
//! computations: SGD on a LoRA dense layer with MSE, Adam and AdamW over
//! two steps, cross-entropy, and the Parameter selection.

use crate::common;

use common::{f64s, i64s, Rng};
use cranelora_graph::training::{
    training_step, Adam, Loss, Optimizer, Trainable, TrainingStep, UpdateKind,
};
use cranelora_graph::{interpret, Bindings, DType, Graph, TensorData, Value};
use cranelora_kernels::math::{apply, Func};
use cranelora_kernels::testing::assert_close;

const RTOL: f64 = 1e-10;
/// Rows, inputs, outputs and rank of the LoRA dense layer.
const N: usize = 4;
const I: usize = 3;
const O: usize = 5;
const R: usize = 2;
const S: f64 = 0.5;

/// Row-major (n×k)·(k×m).
fn mm(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            c[i * m + j] = (0..k).map(|p| a[i * k + p] * b[p * m + j]).sum();
        }
    }
    c
}

/// The transpose of a row-major n×m matrix.
fn tr(a: &[f64], n: usize, m: usize) -> Vec<f64> {
    (0..m * n).map(|idx| a[(idx % n) * m + idx / n]).collect()
}

fn func(f: Func, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    apply(f, x, &mut out).expect("equal lengths");
    out
}

/// The layer's fixed data: x, W, b, target, and the initial A, B.
struct Lora {
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    target: Vec<f64>,
    a: Vec<f64>,
    bb: Vec<f64>,
}

impl Lora {
    fn new() -> Self {
        let mut rng = Rng(42);
        Self {
            x: rng.vec(N * I),
            w: rng.vec(I * O),
            b: rng.vec(O),
            target: rng.vec(N * O),
            a: rng.vec(I * R),
            bb: rng.vec(R * O),
        }
    }

    /// y = gelu(x·W + b + s·(x·A)·B), W and b Constants, A and B Parameters.
    fn graph(&self) -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", [N, I], DType::F64);
        let w = g
            .constant(TensorData::f64([I, O], self.w.clone()).expect("W"))
            .expect("W");
        let b = g
            .constant(TensorData::f64([O], self.b.clone()).expect("b"))
            .expect("b");
        let a = g.parameter("fc.lora_a", [I, R], DType::F64);
        let bb = g.parameter("fc.lora_b", [R, O], DType::F64);
        let base = g.named("fc.base").matmul(x, w).expect("x·W");
        let base = g.named("fc.bias").add(base, b).expect("+b");
        let xa = g.named("fc.lora.xa").matmul(x, a).expect("x·A");
        let xab = g.named("fc.lora.xab").matmul(xa, bb).expect("·B");
        let delta = g.named("fc.lora.scale").scale(xab, S).expect("s·");
        let z = g.named("fc.pre").add(base, delta).expect("+");
        let y = g.named("fc.act").gelu(z).expect("gelu");
        g.set_outputs(&[y]).expect("y");
        g
    }

    /// Eager loss and (∂L/∂A, ∂L/∂B) at (A, B), by hand.
    fn loss_and_grads(&self, a: &[f64], bb: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
        let xa = mm(&self.x, a, N, I, R);
        let base = mm(&self.x, &self.w, N, I, O);
        let lora = mm(&xa, bb, N, R, O);
        let z: Vec<f64> = (0..N * O)
            .map(|i| base[i] + self.b[i % O] + S * lora[i])
            .collect();
        let y = func(Func::GeluErf, &z);
        let n = (N * O) as f64;
        let loss = (0..N * O)
            .map(|i| (y[i] - self.target[i]).powi(2))
            .sum::<f64>()
            / n;
        // ∂L/∂z = 2(y − t)/n · gelu′(z); ∂(s·xa·B): ∂B = s·xaᵀ·dz, ∂A = s·xᵀ·(dz·Bᵀ).
        let d = func(Func::GeluErfGrad, &z);
        let dz: Vec<f64> = (0..N * O)
            .map(|i| 2.0 * (y[i] - self.target[i]) / n * d[i] * S)
            .collect();
        let db = mm(&tr(&xa, N, R), &dz, R, N, O);
        let dxa = mm(&dz, &tr(bb, R, O), N, O, R);
        let da = mm(&tr(&self.x, N, I), &dxa, I, N, R);
        (loss, da, db)
    }

    fn inputs(&self) -> Vec<Value> {
        vec![f64s(&[N, I], &self.x), f64s(&[N, O], &self.target)]
    }

    fn bindings(&self) -> Bindings {
        let mut b = Bindings::new();
        b.insert("fc.lora_a".into(), f64s(&[I, R], &self.a));
        b.insert("fc.lora_b".into(), f64s(&[R, O], &self.bb));
        b
    }
}

fn run(step: &TrainingStep, inputs: &[Value], bindings: &mut Bindings) -> f64 {
    let out = interpret(&step.graph, inputs, bindings).expect("the step runs");
    step.apply(&out, bindings);
    out[0].to_f64_vec()[0]
}

fn get(bindings: &Bindings, name: &str) -> Vec<f64> {
    bindings[name].to_f64_vec()
}

#[test]
fn sgd_step_on_a_lora_dense_layer_matches_an_eager_computation() {
    let lora = Lora::new();
    let lr = 0.1;
    let step = training_step(
        &lora.graph(),
        Loss::Mse,
        &Trainable::All,
        &Optimizer::Sgd { lr },
    )
    .expect("the step builds");
    let names: Vec<&str> = step.updates.iter().map(|u| u.parameter.as_str()).collect();
    assert_eq!(names, ["fc.lora_a", "fc.lora_b"]);
    assert_eq!(step.graph.outputs().len(), 3);
    let mut bindings = lora.bindings();
    let loss = run(&step, &lora.inputs(), &mut bindings);
    let (expected_loss, da, db) = lora.loss_and_grads(&lora.a, &lora.bb);
    assert_close(&[loss], &[expected_loss], RTOL, 0.0);
    let a: Vec<f64> = (0..I * R).map(|i| lora.a[i] - lr * da[i]).collect();
    let b: Vec<f64> = (0..R * O).map(|i| lora.bb[i] - lr * db[i]).collect();
    assert_close(&get(&bindings, "fc.lora_a"), &a, RTOL, 1e-15);
    assert_close(&get(&bindings, "fc.lora_b"), &b, RTOL, 1e-15);
}

#[test]
fn only_the_selected_parameters_are_updated() {
    let lora = Lora::new();
    let sgd = Optimizer::Sgd { lr: 0.1 };
    let only_b = Trainable::Names(vec!["fc.lora_b".into()]);
    let step = training_step(&lora.graph(), Loss::Mse, &only_b, &sgd).expect("builds");
    assert_eq!(step.updates.len(), 1);
    assert_eq!(step.updates[0].parameter, "fc.lora_b");
    let mut bindings = lora.bindings();
    run(&step, &lora.inputs(), &mut bindings);
    assert_eq!(get(&bindings, "fc.lora_a"), lora.a, "A is bound but fixed");
    let lora_only = Trainable::NameContains("lora_".into());
    let step = training_step(&lora.graph(), Loss::Mse, &lora_only, &sgd).expect("builds");
    assert_eq!(step.updates.len(), 2);
    assert!(step.updates.iter().all(|u| u.kind == UpdateKind::Weight));
    let none = Trainable::NameContains("nothing".into());
    let step = training_step(&lora.graph(), Loss::Mse, &none, &sgd).expect("builds");
    assert!(step.updates.is_empty() && step.graph.outputs() == [step.loss]);
}

/// PyTorch's Adam/AdamW on flat vectors, one step: (p, m, v) updated in place.
fn adam_by_hand(adam: &Adam, t: i32, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
    let (bc1, bc2) = (1.0 - adam.beta1.powi(t), 1.0 - adam.beta2.powi(t));
    for i in 0..p.len() {
        let mut gi = g[i];
        if adam.decoupled {
            p[i] *= 1.0 - adam.lr * adam.weight_decay;
        } else {
            gi += adam.weight_decay * p[i];
        }
        m[i] = adam.beta1 * m[i] + (1.0 - adam.beta1) * gi;
        v[i] = adam.beta2 * v[i] + (1.0 - adam.beta2) * gi * gi;
        let denom = v[i].sqrt() / bc2.sqrt() + adam.eps;
        p[i] -= adam.lr / bc1 * m[i] / denom;
    }
}

#[test]
fn adam_and_adamw_steps_match_a_hand_written_update_over_two_steps() {
    let lora = Lora::new();
    let l2 = Adam {
        weight_decay: 0.1,
        ..Adam::new(0.01)
    };
    for adam in [Adam::new(0.01), l2, Adam::adamw(0.01, 0.1)] {
        let opt = Optimizer::Adam(adam);
        let step = training_step(&lora.graph(), Loss::Mse, &Trainable::All, &opt).expect("builds");
        let state: Vec<&str> = step.updates[2..]
            .iter()
            .map(|u| u.parameter.as_str())
            .collect();
        let expected = [
            "adam.m.fc.lora_a",
            "adam.v.fc.lora_a",
            "adam.m.fc.lora_b",
            "adam.v.fc.lora_b",
            "adam.step",
        ];
        assert_eq!(state, expected);
        let mut bindings = lora.bindings();
        bindings.extend(step.initial_state());
        let (mut a, mut b) = (lora.a.clone(), lora.bb.clone());
        let (mut ma, mut va) = (vec![0.0; a.len()], vec![0.0; a.len()]);
        let (mut mb, mut vb) = (vec![0.0; b.len()], vec![0.0; b.len()]);
        for t in 1..=2 {
            let loss = run(&step, &lora.inputs(), &mut bindings);
            let (expected_loss, da, db) = lora.loss_and_grads(&a, &b);
            assert_close(&[loss], &[expected_loss], RTOL, 0.0);
            adam_by_hand(&adam, t, &mut a, &da, &mut ma, &mut va);
            adam_by_hand(&adam, t, &mut b, &db, &mut mb, &mut vb);
            assert_close(&get(&bindings, "fc.lora_a"), &a, RTOL, 1e-15);
            assert_close(&get(&bindings, "fc.lora_b"), &b, RTOL, 1e-15);
            assert_close(&get(&bindings, "adam.v.fc.lora_b"), &vb, RTOL, 1e-20);
            assert_eq!(get(&bindings, "adam.step"), vec![f64::from(t)]);
        }
    }
}

/// PyTorch's SGD with momentum (no dampening) on a flat vector, one step.
fn momentum_by_hand(lr: f64, mu: f64, nesterov: bool, p: &mut [f64], g: &[f64], b: &mut [f64]) {
    for i in 0..p.len() {
        b[i] = mu * b[i] + g[i];
        let d = if nesterov { g[i] + mu * b[i] } else { b[i] };
        p[i] -= lr * d;
    }
}

#[test]
fn sgd_momentum_and_nesterov_match_a_hand_written_update_over_three_steps() {
    let lora = Lora::new();
    let (lr, mu) = (0.05, 0.9);
    for nesterov in [false, true] {
        let opt = Optimizer::SgdMomentum {
            lr,
            momentum: mu,
            nesterov,
        };
        let step = training_step(&lora.graph(), Loss::Mse, &Trainable::All, &opt).expect("builds");
        let names: Vec<&str> = step.updates.iter().map(|u| u.parameter.as_str()).collect();
        let expected = [
            "fc.lora_a",
            "fc.lora_b",
            "sgd.momentum.fc.lora_a",
            "sgd.momentum.fc.lora_b",
        ];
        assert_eq!(names, expected);
        assert_eq!(step.updates[2].kind, UpdateKind::OptimizerState);
        let mut bindings = lora.bindings();
        bindings.extend(step.initial_state());
        let (mut a, mut b) = (lora.a.clone(), lora.bb.clone());
        let (mut ba, mut bb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
        for _ in 0..3 {
            let loss = run(&step, &lora.inputs(), &mut bindings);
            let (expected_loss, da, db) = lora.loss_and_grads(&a, &b);
            assert_close(&[loss], &[expected_loss], RTOL, 0.0);
            momentum_by_hand(lr, mu, nesterov, &mut a, &da, &mut ba);
            momentum_by_hand(lr, mu, nesterov, &mut b, &db, &mut bb);
            assert_close(&get(&bindings, "fc.lora_a"), &a, RTOL, 1e-15);
            assert_close(&get(&bindings, "fc.lora_b"), &b, RTOL, 1e-15);
            assert_close(&get(&bindings, "sgd.momentum.fc.lora_b"), &bb, RTOL, 1e-15);
        }
    }
}

#[test]
fn cross_entropy_step_matches_softmax_minus_one_hot() {
    // logits = x·W [3, 4] against ids; ∂L/∂logits = (softmax − onehot)/rows.
    let (rows, k, classes) = (3, 2, 4);
    let mut rng = Rng(7);
    let (x, w) = (rng.vec(rows * k), rng.vec(k * classes));
    let ids = [2i64, 0, 3];
    let mut model = Graph::new();
    let xi = model.input("x", [rows, k], DType::F64);
    let wp = model.parameter("head.weight", [k, classes], DType::F64);
    let logits = model.matmul(xi, wp).expect("x·W");
    model.set_outputs(&[logits]).expect("logits");
    let lr = 0.5;
    let sgd = Optimizer::Sgd { lr };
    let step = training_step(&model, Loss::CrossEntropy, &Trainable::All, &sgd).expect("builds");
    assert_eq!(step.graph.inputs()[1], step.target);
    let mut bindings = Bindings::new();
    bindings.insert("head.weight".into(), f64s(&[k, classes], &w));
    let inputs = [f64s(&[rows, k], &x), i64s(&[rows], &ids)];
    let loss = run(&step, &inputs, &mut bindings);

    let z = mm(&x, &w, rows, k, classes);
    let mut expected_loss = 0.0;
    let mut dz = vec![0.0; rows * classes];
    for r in 0..rows {
        let row = &z[r * classes..(r + 1) * classes];
        let sum: f64 = row.iter().map(|v| v.exp()).sum();
        expected_loss += (sum.ln() - row[ids[r] as usize]) / rows as f64;
        for c in 0..classes {
            let onehot = if c as i64 == ids[r] { 1.0 } else { 0.0 };
            dz[r * classes + c] = (row[c].exp() / sum - onehot) / rows as f64;
        }
    }
    assert_close(&[loss], &[expected_loss], RTOL, 0.0);
    let dw = mm(&tr(&x, rows, k), &dz, k, rows, classes);
    let expected: Vec<f64> = (0..w.len()).map(|i| w[i] - lr * dw[i]).collect();
    assert_close(&get(&bindings, "head.weight"), &expected, RTOL, 1e-15);
}

#[test]
fn a_training_step_in_f32_builds_and_runs() {
    let mut model = Graph::new();
    let x = model.input("x", [2, 3], DType::F32);
    let w = model.parameter("w", [3, 2], DType::F32);
    let y = model.matmul(x, w).expect("x·w");
    let y = model.tanh(y).expect("tanh");
    model.set_outputs(&[y]).expect("y");
    let opt = Optimizer::Adam(Adam::adamw(1e-3, 0.01));
    let step = training_step(&model, Loss::CrossEntropy, &Trainable::All, &opt).expect("builds");
    let mut bindings = Bindings::new();
    let wv: Vec<f32> = (0..6).map(|i| i as f32 * 0.1).collect();
    bindings.insert("w".into(), TensorData::f32([3, 2], wv.clone()).expect("w"));
    bindings.extend(step.initial_state());
    let xv = TensorData::f32([2, 3], vec![1.0, 0.5, -0.5, 0.2, 0.1, 0.3]).expect("x");
    let inputs = [xv, i64s(&[2], &[1, 0])];
    let loss = run(&step, &inputs, &mut bindings);
    assert!(loss.is_finite() && loss > 0.0);
    // Adam's first step moves every weight by about lr (its sign is −sign(g)).
    let moved = get(&bindings, "w");
    for (new, old) in moved.iter().zip(&wv) {
        let delta = (new - f64::from(*old)).abs();
        assert!((delta - 1e-3).abs() < 1e-4, "{delta}");
    }
}
