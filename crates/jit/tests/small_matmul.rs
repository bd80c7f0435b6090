//! Small products emitted inline (crates/jit/src/lower/small_matmul.rs):
//! random small shapes against the exact product and the interpreter, and
//! W2 of WORKLOADS.md compiled to straight-line code with no helper call.
//!
//! Not bitwise: the inline code sums each output over k in its own order
//! (interleaved partial sums, FMA) and the interpreter's GEMM in another
//! (k blocks, AVX-512 FMA), so the two round differently. Both are held to
//! the a-priori bound of a k-term dot product, |ĉ − c| ≤ γ·Σ|a||b| with
//! γ = (k + 2)·u (u the unit roundoff, 2 for the f64 reference's own
//! rounding), against the product computed in f64; a reordering bug or a
//! wrong element is far outside it.

use crate::common;

use common::{assert_same, data};
use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_to_data,
};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{Dense, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, Input, Layer, Rng, Tensor};
use cranelora_graph::{interpret, DType, Graph, TensorData};
use cranelora_jit::{compile, Bindings, JitOptions};
use proptest::prelude::*;
use std::collections::HashMap;

/// How the right operand reaches the product.
#[derive(Clone, Copy, Debug)]
enum Rhs {
    Input,
    Constant,
    Parameter,
}

/// `a·b` with batch dims `ba`, `bb` (broadcast), b an Input, Constant or
/// Parameter; inputs and bindings.
fn build(
    (ba, bb): (&[usize], &[usize]),
    (m, k, n): (usize, usize, usize),
    d: DType,
    rhs: Rhs,
    specials: bool,
) -> (
    Graph,
    Vec<TensorData>,
    HashMap<String, TensorData>,
    TensorData,
) {
    let dims = |batch: &[usize], r, c| [batch, &[r, c]].concat();
    let (a_dims, b_dims) = (dims(ba, m, k), dims(bb, k, n));
    let mut g = Graph::new();
    let a = g.input("a", a_dims.clone(), d);
    let b_data = data(&b_dims, d, 2, specials);
    let mut ins = vec![data(&a_dims, d, 1, specials)];
    let mut binds = HashMap::new();
    let b = match rhs {
        Rhs::Input => {
            ins.push(b_data.clone());
            g.input("b", b_dims, d)
        }
        Rhs::Constant => g.constant(b_data.clone()).expect("b"),
        Rhs::Parameter => {
            binds.insert("b".to_string(), b_data.clone());
            g.parameter("b", b_dims, d)
        }
    };
    let c = g.matmul(a, b).expect("a·b");
    g.set_outputs(&[c]).expect("c");
    (g, ins, binds, b_data)
}

/// The f64 product and Σ|a||b| per output element (batch dims broadcast).
fn exact(a: &TensorData, b: &TensorData, out: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let (ad, bd) = (a.shape().dims().to_vec(), b.shape().dims().to_vec());
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let batch = &out[..out.len() - 2];
    let entry = |d: &[usize], mut e: usize| {
        // The flat index of output batch entry e in an operand's batch dims.
        let bd = &d[..d.len() - 2];
        let (mut idx, mut stride) = (0, 1);
        for i in (0..batch.len()).rev() {
            let j = e % batch[i];
            e /= batch[i];
            let pad = batch.len() - bd.len();
            if i >= pad && bd[i - pad] != 1 {
                idx += j * stride;
            }
            if i >= pad {
                stride *= bd[i - pad];
            }
        }
        idx
    };
    let count: usize = batch.iter().product();
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for e in 0..count {
        let (oa, ob) = (entry(&ad, e) * m * k, entry(&bd, e) * k * n);
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| av[oa + i * k + p] * bv[ob + p * n + j]);
                c.push(terms.clone().sum());
                s.push(terms.map(f64::abs).sum());
            }
        }
    }
    (c, s)
}

/// Asserts |got − exact| ≤ factor·(k + 2)·u·Σ|a||b| elementwise.
#[track_caller]
fn assert_within_gamma(
    got: &TensorData,
    exact: &(Vec<f64>, Vec<f64>),
    k: usize,
    factor: f64,
    what: &str,
) {
    let u = match got.dtype() {
        DType::F32 => f32::EPSILON as f64 / 2.0,
        _ => f64::EPSILON / 2.0,
    };
    let got = got.to_f64_vec();
    assert_eq!(got.len(), exact.0.len(), "{what}");
    for (i, (&g, (&c, &s))) in got.iter().zip(exact.0.iter().zip(&exact.1)).enumerate() {
        let bound = factor * (k + 2) as f64 * u * s;
        assert!(
            (g - c).abs() <= bound,
            "{what}: element {i}: {g} vs exact {c}, bound {bound}"
        );
    }
}

/// Compiles (inline path asserted), runs, and checks against the exact
/// product and the interpreter.
fn check_case(batch: (&[usize], &[usize]), mkn: (usize, usize, usize), d: DType, rhs: Rhs) {
    let what = format!("{d} {batch:?} {mkn:?} {rhs:?}");
    let (g, ins, binds, b) = build(batch, mkn, d, rhs, false);
    // Every product here inline, whatever the default threshold (the
    // block bound, at most 4 entries × 15 blocks, is not reached).
    let all = JitOptions::default().with_inline_matmul_macs(usize::MAX);
    let c = compile(&g, &all).expect("compiles");
    assert_eq!(
        (c.report().inline_matmuls, c.report().matmul_calls),
        (1, 0),
        "{what}"
    );
    let jb = Bindings::from_map(&binds).expect("bindings");
    let got = c.run(&ins, &jb).expect("runs");
    let interp = interpret(&g, &ins, &binds).expect("interp");
    let out = g.node(g.outputs()[0]).expect("c").shape.dims().to_vec();
    let ex = exact(&ins[0], &b, &out);
    assert_within_gamma(&got[0], &ex, mkn.1, 1.0, &format!("jit {what}"));
    assert_within_gamma(&interp[0], &ex, mkn.1, 1.0, &format!("interp {what}"));
}

fn cases() -> u32 {
    ["CRANELORA_PROPTEST_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(120)
}

const BATCHES: [(&[usize], &[usize]); 5] = [
    (&[], &[]),
    (&[3], &[]),
    (&[2], &[2]),
    (&[2, 1], &[2]),
    (&[], &[2]),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn inline_products_match_the_exact_product_and_the_interpreter(
        m in 1usize..10,
        k in 1usize..70,
        n in 1usize..20,
        batch in 0usize..BATCHES.len(),
        f64_dtype in any::<bool>(),
        rhs in 0usize..3,
    ) {
        let d = if f64_dtype { DType::F64 } else { DType::F32 };
        let rhs = [Rhs::Input, Rhs::Constant, Rhs::Parameter][rhs];
        check_case(BATCHES[batch], (m, k, n), d, rhs);
    }
}

#[test]
fn inline_products_cover_the_edge_shapes() {
    // k = 1, m = 1, m > 1, n below / at / above the lane count and not a
    // multiple of it, k = 0 (zeros), a tall single column.
    let shapes = [
        (1, 1, 1),
        (1, 1, 4),
        (1, 64, 4),
        (1, 4, 64),
        (1, 64, 10),
        (1, 64, 64),
        (3, 1, 3),
        (5, 7, 2),
        (4, 17, 9),
        (9, 33, 1),
        (2, 0, 5),
    ];
    for d in [DType::F32, DType::F64] {
        for mkn in shapes {
            for rhs in [Rhs::Input, Rhs::Constant, Rhs::Parameter] {
                for batch in BATCHES {
                    check_case(batch, mkn, d, rhs);
                }
            }
        }
    }
}

#[test]
fn inline_products_propagate_nan_and_inf_like_the_interpreter() {
    // Where an output is NaN or ±inf does not depend on the summation order.
    for d in [DType::F32, DType::F64] {
        for mkn in [(1, 9, 10), (3, 5, 3), (5, 12, 8)] {
            let (g, ins, binds, _) = build((&[], &[]), mkn, d, Rhs::Constant, true);
            let c = compile(&g, &JitOptions::default()).expect("compiles");
            assert_eq!(c.report().inline_matmuls, 1);
            let got = c.run(&ins, &Bindings::new()).expect("runs");
            let interp = interpret(&g, &ins, &binds).expect("interp");
            assert_same(&got[0], &interp[0], 1e-4, 1e-4);
        }
    }
}

#[test]
fn products_above_the_threshold_call_the_gemm() {
    let (g, ..) = build((&[], &[]), (64, 64, 64), DType::F32, Rhs::Constant, false);
    let c = compile(&g, &JitOptions::default()).expect("compiles");
    assert_eq!((c.report().inline_matmuls, c.report().matmul_calls), (0, 1));
    let (g, ..) = build((&[], &[]), (1, 8, 8), DType::F32, Rhs::Constant, false);
    let off = JitOptions::default().with_inline_matmul_macs(0);
    let c = compile(&g, &off).expect("compiles");
    assert_eq!((c.report().inline_matmuls, c.report().matmul_calls), (0, 1));
}

/// W2 of WORKLOADS.md: dense 64→64→64→10, ReLU between, LoRA rank 4 on
/// each, batch 1 (random LoRA B, so the adapters contribute).
fn w2<T: cranelora_kernels::Scalar>() -> (Sequential<T>, Tensor<T>) {
    let mut rng = Rng::new(11);
    let dense = |i, o, act, rng: &mut Rng| Dense::new(i, o, true, act, rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc1", dense(64, 64, Activation::Relu, &mut rng))
        .and_then(|m| m.with("fc2", dense(64, 64, Activation::Relu, &mut rng)))
        .and_then(|m| m.with("fc3", dense(64, 10, Activation::Identity, &mut rng)))
        .expect("mlp");
    let lora = LoraConfig::new(4).with_init(LoraInit::Random);
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2", "fc3"], lora)).expect("apply");
    m.set_training(false);
    let x = Tensor::random_normal(&[1, 64], 0.0, 1.0, &mut Rng::new(12));
    (m, x)
}

fn w2_is_straight_line<T: cranelora_kernels::Scalar>(rtol: f64) {
    let (mut m, x) = w2::<T>();
    let inputs = [Input::Float(&x)];
    let eager = tensor_to_data(&m.forward(&inputs).expect("eager"));
    // (export mode, LoRA folding, products, inline at the default threshold):
    // jit keeps 3 base + 6 adapter products; at the default threshold the two
    // 1×64·64×64 base products call the GEMM, with their layers' XA·B in its
    // LoRA epilogue (lower/epilogue.rs), so 5 stay inline.
    for (mode, fold, products, inline) in [
        (ExportMode::Serving, false, 9, 5),
        (ExportMode::Inference, true, 3, 1),
    ] {
        let g = export_model(&m, &input_specs(&inputs), &ExportOptions::new(mode)).expect("export");
        let gb = bindings_for(&m, &g).expect("bindings");
        let values = input_values(&inputs);
        let interp = interpret(&g, &values, &gb).expect("interp");
        // Default threshold: the two 1×64·64×64 base products call the GEMM.
        let c = compile(&g, &JitOptions::default().with_lora_fold(fold)).expect("compile");
        let r = c.report();
        assert_eq!((r.inline_matmuls, r.matmul_calls), (inline, 2), "{mode:?}");
        // 4096 MACs: every product inline, no call at all.
        let mut o = JitOptions::default()
            .with_lora_fold(fold)
            .with_inline_matmul_macs(64 * 64);
        o.dump_clif = true;
        let straight = compile(&g, &o).expect("compile");
        let r = straight.report();
        assert_eq!(
            (r.inline_matmuls, r.matmul_calls),
            (products, 0),
            "{mode:?}"
        );
        let clif = r.clif.as_deref().expect("dumped");
        assert!(
            !clif.contains("call"),
            "{mode:?}: no helper call in\n{clif}"
        );
        let jb = Bindings::from_map(&gb).expect("bindings");
        for c in [&c, &straight] {
            let out = c.run(&values, &jb).expect("run");
            assert_same(&out[0], &interp[0], rtol, rtol);
            assert_same(&out[0], &eager, rtol, rtol);
        }
    }
}

#[test]
fn w2_compiles_to_straight_line_code_matching_the_interpreter_f32() {
    w2_is_straight_line::<f32>(1e-5);
}

#[test]
fn w2_compiles_to_straight_line_code_matching_the_interpreter_f64() {
    w2_is_straight_line::<f64>(1e-12);
}
