//! Golden text dump and DOT picture of a small LoRA-shaped MLP:
//! `y = gelu(x·W + b + s·(x·A)·B)`. Run with `BLESS=1` to rewrite the files
//! under `tests/golden/` after an intended change.

use crate::common;

use common::{check, f32s, Rng};
use cranelora_graph::{dump, interpret, to_dot, Bindings, DType, Graph, TensorData};
use std::path::PathBuf;

const SCALE: f64 = 2.0; // alpha / r with alpha = 4, r = 2

fn lora_mlp() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [4, 8], DType::F32);
    let w = g.parameter("mlp.fc1.weight", [8, 16], DType::F32);
    let bias: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
    let b = g.named("mlp.fc1.bias");
    let b = b
        .constant(TensorData::f32([16], bias).expect("16"))
        .expect("constant");
    let a = g.parameter("mlp.fc1.lora_a", [8, 2], DType::F32);
    let lb = g.parameter("mlp.fc1.lora_b", [2, 16], DType::F32);
    let xw = g.named("mlp.fc1").matmul(x, w).expect("4×8 · 8×16");
    let base = g.named("mlp.fc1").add(xw, b).expect("bias broadcasts");
    let xa = g.named("mlp.fc1.lora_a").matmul(x, a).expect("4×8 · 8×2");
    let xab = g
        .named("mlp.fc1.lora_b")
        .matmul(xa, lb)
        .expect("4×2 · 2×16");
    let delta = g
        .named("mlp.fc1.lora_scale")
        .scale(xab, SCALE)
        .expect("scale");
    let sum = g.named("mlp.fc1").add(base, delta).expect("same shapes");
    let y = g.named("mlp.act").gelu(sum).expect("gelu");
    g.set_outputs(&[y]).expect("y is a node");
    g
}

/// Compares `actual` with the golden file, or rewrites it under `BLESS=1`.
fn golden(file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("golden file is writable");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    assert!(
        expected == actual,
        "{} differs (run with BLESS=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn lora_mlp_dump_matches_golden() {
    golden("lora_mlp.txt", &dump(&lora_mlp()));
}

#[test]
fn lora_mlp_dot_matches_golden_and_clusters_the_adapter() {
    let dot = to_dot(&lora_mlp());
    assert!(
        dot.contains("subgraph cluster_lora_0") && dot.contains("LoRA mlp.fc1"),
        "{dot}"
    );
    golden("lora_mlp.dot", &dot);
}

#[test]
fn lora_mlp_runs_like_a_direct_computation() {
    let mut rng = Rng(17);
    let f32v = |rng: &mut Rng, shape: &[usize]| {
        let v: Vec<f32> = rng
            .vec(shape.iter().product())
            .iter()
            .map(|&x| x as f32)
            .collect();
        f32s(shape, &v)
    };
    let (x, w, a, b) = (
        f32v(&mut rng, &[4, 8]),
        f32v(&mut rng, &[8, 16]),
        f32v(&mut rng, &[8, 2]),
        f32v(&mut rng, &[2, 16]),
    );
    let mut bindings = Bindings::new();
    bindings.insert("mlp.fc1.weight".into(), w.clone());
    bindings.insert("mlp.fc1.lora_a".into(), a.clone());
    bindings.insert("mlp.fc1.lora_b".into(), b.clone());
    let out = interpret(&lora_mlp(), std::slice::from_ref(&x), &bindings).expect("runs");
    // Direct ndarray computation in f64.
    let m = |v: &TensorData| {
        let s = v.shape();
        ndarray::Array2::from_shape_vec((s.dims()[0], s.dims()[1]), v.to_f64_vec()).expect("2-D")
    };
    let bias = ndarray::Array1::from_iter((0..16).map(|i| f64::from(i as f32 / 16.0)));
    let z = m(&x).dot(&m(&w)) + &bias + m(&x).dot(&m(&a)).dot(&m(&b)) * SCALE;
    let erf = |v: f64| cranelora_kernels::math::eval(cranelora_kernels::math::Func::Erf, v);
    let y = z.mapv(|v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)));
    check(
        &out[0],
        &[4, 16],
        &y.iter().copied().collect::<Vec<_>>(),
        1e-5,
    );
}
