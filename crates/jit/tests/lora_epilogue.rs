//! The unmerged LoRA term, DoRA column scale and their neighbours as one
//! GEMM epilogue (crates/jit/src/lower/epilogue.rs): the base product
//! `x·W` runs once with `s·(x·A)·B`, the column scale, bias, activation and
//! residual applied to each output block. Checked against the interpreter
//! and the same graph compiled without fusion, f32 and f64, with constant
//! and runtime (Parameter) adapters, constant, unit and runtime scalings,
//! 2-D and batched activations; the compile report counts the fused groups,
//! and a LoRA intermediate with another reader is not fused.

use crate::common;

use common::{apply, assert_same, data, Act, ACTS};
use cranelora_graph::{interpret, DType, Graph, NodeId, TensorData};
use cranelora_jit::{compile, Bindings, CompiledGraph, JitOptions};

/// How the branch is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scaling {
    /// `Scale(x·A·B, 0.5)`.
    Constant,
    /// No Scale node (s = 1, as simplified from `Scale(_, 1.0)`).
    Unit,
    /// `Mul(x·A·B, s)` with `s` a runtime scalar Input.
    Runtime,
    /// `Mul(x·A·B, broadcast(s))` with `s` a `[1]` Parameter.
    RuntimeBroadcast,
}

const SCALINGS: [Scaling; 4] = [
    Scaling::Constant,
    Scaling::Unit,
    Scaling::Runtime,
    Scaling::RuntimeBroadcast,
];

#[derive(Clone, Copy, Debug)]
struct Case {
    /// Leading dims of x (one: 2-D; two: batched).
    rows: &'static [usize],
    k: usize,
    n: usize,
    r: usize,
    d: DType,
    bias: bool,
    act: Act,
    residual: bool,
    scaling: Scaling,
    /// A and B as Constants (else Parameters bound at run time).
    constant_adapter: bool,
    /// W as a Constant (prepacked) (else an Input).
    constant_w: bool,
}

/// The graph, its inputs and its Parameter bindings.
struct Built {
    g: Graph,
    inputs: Vec<TensorData>,
    bindings: Bindings,
}

impl Built {
    /// A weight: a Constant, or a Parameter bound to the same values.
    fn weight(&mut self, name: &str, shape: &[usize], seed: u64, constant: bool) -> NodeId {
        let d = self.dtype();
        let values = scaled(data(shape, d, seed, false), 0.2);
        if constant {
            return self.g.constant(values).expect("constant");
        }
        self.bindings.insert(name, values).expect("binding");
        self.g.parameter(name, shape.to_vec(), d)
    }

    fn input(&mut self, name: &str, shape: &[usize], seed: u64) -> NodeId {
        let d = self.dtype();
        self.inputs.push(data(shape, d, seed, false));
        self.g.input(name, shape.to_vec(), d)
    }

    fn dtype(&self) -> DType {
        self.inputs[0].dtype()
    }
}

fn scaled(t: TensorData, s: f64) -> TensorData {
    let v: Vec<f64> = t.to_f64_vec().iter().map(|x| x * s).collect();
    let shape = t.shape().dims().to_vec();
    match t.dtype() {
        DType::F32 => TensorData::f32(shape, v.iter().map(|&x| x as f32).collect()),
        _ => TensorData::f64(shape, v),
    }
    .expect("sized")
}

/// `act((x·W (+ b)) + s·((x·A)·B)) (+ r)`; also returns `x·A·B` (to give
/// it another reader) and the output.
fn build(c: &Case) -> (Built, NodeId, NodeId) {
    let x_dims: Vec<usize> = c.rows.iter().copied().chain([c.k]).collect();
    let out_dims: Vec<usize> = c.rows.iter().copied().chain([c.n]).collect();
    let mut b = Built {
        g: Graph::new(),
        inputs: vec![data(&x_dims, c.d, 1, false)],
        bindings: Bindings::new(),
    };
    let x = b.g.input("x", x_dims.clone(), c.d);
    let w = match c.constant_w {
        true => b.weight("w", &[c.k, c.n], 2, true),
        false => b.input("w", &[c.k, c.n], 2),
    };
    let la = b.weight("lora_a", &[c.k, c.r], 5, c.constant_adapter);
    let lb = b.weight("lora_b", &[c.r, c.n], 6, c.constant_adapter);
    let mm = b.g.matmul(x, w).expect("x·W");
    let pre = match c.bias {
        true => {
            let bias = b.input("b", &[c.n], 3);
            b.g.add(mm, bias).expect("+b")
        }
        false => mm,
    };
    let xa = b.g.matmul(x, la).expect("x·A");
    let xab = b.g.matmul(xa, lb).expect("·B");
    let delta = match c.scaling {
        Scaling::Constant => b.g.scale(xab, 0.5).expect("·s"),
        Scaling::Unit => xab,
        Scaling::Runtime => {
            let s = b.input("s", &[], 7);
            b.g.mul(xab, s).expect("·s")
        }
        Scaling::RuntimeBroadcast => {
            let s = b.weight("s", &[1], 7, false);
            let s = b.g.broadcast(s, out_dims.clone()).expect("broadcast");
            b.g.mul(xab, s).expect("·s")
        }
    };
    let z = b.g.add(pre, delta).expect("+lora");
    let mut y = apply(&mut b.g, c.act, z);
    if c.residual {
        let r = b.input("r", &out_dims, 4);
        y = b.g.add(y, r).expect("+r");
    }
    (b, xab, y)
}

fn tol(d: DType) -> f64 {
    match d {
        DType::F32 => 2e-5,
        _ => 1e-12,
    }
}

fn run(c: &CompiledGraph, b: &Built) -> Vec<TensorData> {
    c.run(&b.inputs, &b.bindings).expect("runs")
}

/// Compiled with and without fusion against the interpreter; returns the
/// fused compile. Products are never inline here (`inline_matmul_macs` 0):
/// these tests are about the GEMM call's epilogue.
fn check(b: &Built) -> CompiledGraph {
    let options = JitOptions::default()
        .with_lora_fold(false)
        .with_inline_matmul_macs(0);
    let fused = compile(&b.g, &options).expect("compiles");
    let unfused = compile(&b.g, &options.with_fusion(false)).expect("compiles");
    let e = interpret(&b.g, &b.inputs, &b.bindings.to_map()).expect("interp");
    let (f, u) = (run(&fused, b), run(&unfused, b));
    let t = tol(b.dtype());
    for ((f, u), e) in f.iter().zip(&u).zip(&e) {
        assert_same(f, e, t, t);
        assert_same(f, u, t, t);
    }
    fused
}

#[test]
fn lora_epilogues_match_the_interpreter_and_unfused_code() {
    let shapes: [(&[usize], usize, usize, usize); 3] = [
        (&[7], 33, 9, 3),
        (&[64], 256, 130, 16),
        (&[2, 5], 40, 24, 4),
    ];
    let mut turn = 0;
    for d in [DType::F32, DType::F64] {
        for (rows, k, n, r) in shapes {
            for (bias, residual) in [(true, false), (false, false), (true, true), (false, true)] {
                for scaling in SCALINGS {
                    for constant_adapter in [true, false] {
                        turn += 1;
                        let c = Case {
                            rows,
                            k,
                            n,
                            r,
                            d,
                            bias,
                            act: ACTS[turn % ACTS.len()],
                            residual,
                            scaling,
                            constant_adapter,
                            constant_w: turn % 3 != 0,
                        };
                        let (b, _, y) = build(&c);
                        let mut b = b;
                        b.g.set_outputs(&[y]).expect("y");
                        let fused = check(&b);
                        // Every case is one epilogue, `x·W + XA·B` alone
                        // included (a group of one node reading its product).
                        assert_eq!(fused.report().matmul_epilogues, 1, "{c:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn every_activation_takes_the_lora_term() {
    for d in [DType::F32, DType::F64] {
        for act in ACTS {
            let c = Case {
                rows: &[9],
                k: 20,
                n: 17,
                r: 2,
                d,
                bias: true,
                act,
                residual: false,
                scaling: Scaling::Constant,
                constant_adapter: false,
                constant_w: true,
            };
            let (mut b, _, y) = build(&c);
            b.g.set_outputs(&[y]).expect("y");
            let fused = check(&b);
            assert_eq!(fused.report().matmul_epilogues, 1, "{c:?}");
        }
    }
}

fn plain_case(d: DType) -> Case {
    Case {
        rows: &[6],
        k: 24,
        n: 10,
        r: 3,
        d,
        bias: true,
        act: Act::GeluTanh,
        residual: false,
        scaling: Scaling::Constant,
        constant_adapter: false,
        constant_w: true,
    }
}

#[test]
fn a_lora_intermediate_with_another_reader_is_not_fused() {
    for d in [DType::F32, DType::F64] {
        let c = plain_case(d);
        // x·A·B also an output.
        let (mut b, xab, y) = build(&c);
        b.g.set_outputs(&[y, xab]).expect("outputs");
        let fused = check(&b);
        assert_eq!(fused.report().matmul_epilogues, 0);
        // The pre-activation also an output (as a backward would read it).
        let (mut b, _, y) = build(&c);
        let z = b.g.operands(y)[0];
        b.g.set_outputs(&[y, z]).expect("outputs");
        let fused = check(&b);
        assert_eq!(fused.report().matmul_epilogues, 0);
        // x·A with another reader is fine: it has its own buffer anyway.
        let (mut b, xab, y) = build(&c);
        let xa = b.g.operands(xab)[0];
        b.g.set_outputs(&[y, xa]).expect("outputs");
        let fused = check(&b);
        assert_eq!(fused.report().matmul_epilogues, 1);
    }
}

#[test]
fn the_fused_layer_keeps_only_x_a_in_the_arena() {
    for d in [DType::F32, DType::F64] {
        let c = Case {
            rows: &[2, 8],
            residual: true,
            ..plain_case(d)
        };
        let (mut b, _, y) = build(&c);
        b.g.set_outputs(&[y]).expect("y");
        let fused = check(&b);
        assert_eq!(fused.report().matmul_epilogues, 1);
        let slots = &fused.report().memory.slots;
        // x·W, x·A·B, its scaling, the sums and the activation live in the
        // output buffer or nowhere; only x·A (16 rows × r) has a buffer.
        assert_eq!(slots.len(), 1, "{slots:?}");
        assert_eq!(slots[0].bytes, 16 * c.r * d.size_bytes(), "{slots:?}");
    }
}

#[test]
fn a_lora_layer_inside_a_training_step_is_not_fused() {
    use cranelora_graph::training::{training_step, Loss, Optimizer, Trainable};
    let c = plain_case(DType::F64);
    let (mut b, _, y) = build(&c);
    b.g.set_outputs(&[y]).expect("y");
    let sgd = Optimizer::Sgd { lr: 0.1 };
    let step = training_step(&b.g, Loss::Mse, &Trainable::All, &sgd).expect("step");
    let options = JitOptions::default()
        .with_lora_fold(false)
        .with_inline_matmul_macs(0);
    let compiled = compile(&step.graph, &options).expect("compiles");
    // The backward reads x·W + b + s·x·A·B (GELU's derivative) and x·A·B's
    // operands: no epilogue may hide them.
    assert_eq!(compiled.report().matmul_epilogues, 0);
    let mut inputs = b.inputs.clone();
    inputs.push(data(&[6, 10], DType::F64, 9, false));
    let out = compiled.run(&inputs, &b.bindings).expect("runs");
    let e = interpret(&step.graph, &inputs, &b.bindings.to_map()).expect("interp");
    for (a, e) in out.iter().zip(&e) {
        assert_same(a, e, 1e-12, 1e-12);
    }
}

/// W1's structure (WORKLOADS.md) at small sizes: 4 Dense layers, GELU
/// (tanh) after the first 3, LoRA (or DoRA) on every layer.
fn w1_like(d_model: usize, rank: usize, dora: bool) -> cranelora_core::layers::Sequential<f32> {
    use cranelora_core::layers::{Dense, Sequential};
    use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
    use cranelora_core::{Activation, Layer, Rng};
    let mut rng = Rng::new(1);
    let mut m = Sequential::<f32>::new();
    for i in 0..4 {
        let act = match i < 3 {
            true => Activation::GeluTanh,
            false => Activation::Identity,
        };
        let layer = Dense::new(d_model, d_model, true, act, &mut rng).expect("dense");
        m = m.with(&format!("fc{i}"), layer).expect("with");
    }
    let cfg = LoraConfig::new(rank)
        .with_alpha(2.0 * rank as f64)
        .with_init(LoraInit::Random)
        .with_dora(dora);
    let names = ["fc0", "fc1", "fc2", "fc3"];
    apply_lora(&mut m, &ApplyConfig::new(&names, cfg)).expect("apply");
    m.set_training(false);
    m
}

#[test]
fn every_layer_of_a_w1_like_model_is_one_epilogue_in_every_export_mode() {
    use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
    use cranelora_core::export::{ExportMode, ExportOptions};
    use cranelora_core::{Input, Layer, Rng, Tensor};
    let x = Tensor::<f32>::random_normal(&[8, 48], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    for dora in [false, true] {
        let mut m = w1_like(48, 4, dora);
        let eager = cranelora_core::export::tensor_to_data(&m.forward(&inputs).expect("eager"));
        for mode in [ExportMode::Serving, ExportMode::Inference] {
            let options = ExportOptions::new(mode);
            let g = export_model(&m, &input_specs(&inputs), &options).expect("export");
            let gb = bindings_for(&m, &g).expect("bindings");
            let values = input_values(&inputs);
            let interp = interpret(&g, &values, &gb).expect("interp");
            let jit = JitOptions::default()
                .with_lora_fold(false)
                .with_inline_matmul_macs(0);
            let c = compile(&g, &jit).expect("compile");
            let what = format!("dora {dora}, {mode:?}");
            assert_eq!(c.report().matmul_epilogues, 4, "{what}");
            let out = c
                .run(&values, &Bindings::from_map(&gb).expect("bindings"))
                .expect("run");
            assert_same(&out[0], &interp[0], 1e-5, 1e-5);
            assert_same(&out[0], &eager, 1e-4, 1e-4);
        }
    }
}
