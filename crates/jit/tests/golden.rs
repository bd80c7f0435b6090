//! Golden CLIF: the lowered function of a few small graphs, compared with
//! the files under `tests/golden/`. A change to the lowering that changes
//! the code shows up here as a diff; `BLESS=1 cargo test -p cranelora-jit
//! --test integration golden::` rewrites the files after review.
//!
//! Addresses embedded as immediates (constants, runtime plans) differ from
//! run to run and are replaced by `<addr>`. Cranelift's verifier runs on
//! every function (`JitOptions::verify`, also the default in debug builds).

use cranelora_graph::{DType, Graph, ReduceKind};
use cranelora_jit::{compile, JitOptions};
use std::path::PathBuf;

/// x + y, then relu: one fused f32x4 loop.
fn add_relu() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [2, 5], DType::F32);
    let y = g.input("y", [2, 5], DType::F32);
    let s = g.add(x, y).expect("add");
    let r = g.relu(s).expect("relu");
    g.set_outputs(&[r]).expect("node");
    g
}

/// gelu(x + bias) with a per-row bias: one fused loop with the emitted erf.
fn bias_gelu() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [3, 8], DType::F32);
    let b = g.input("b", [8], DType::F32);
    let s = g.add(x, b).expect("add");
    let r = g.gelu(s).expect("gelu");
    g.set_outputs(&[r]).expect("node");
    g
}

/// x·w + b in f64 (the product through the runtime GEMM).
fn matmul_bias() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F64);
    let w = g.input("w", [3, 4], DType::F64);
    let b = g.input("b", [4], DType::F64);
    let m = g.matmul(x, w).expect("matmul");
    let y = g.add(m, b).expect("bias");
    g.set_outputs(&[y]).expect("node");
    g
}

/// Row sums of a [3, 5] f32 matrix.
fn reduce_rows() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [3, 5], DType::F32);
    let s = g.reduce(x, ReduceKind::Sum, &[1], false).expect("reduce");
    g.set_outputs(&[s]).expect("node");
    g
}

/// Replaces numbers beyond 2^32 (addresses of constants and runtime
/// plans, in immediates and in the printer's comments) by `<addr>`.
fn normalize(clif: &str) -> String {
    let address = |w: &str| {
        let w = w.trim_end_matches([',', ')']);
        let v = match w.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(&h.replace('_', ""), 16).ok(),
            None => w.parse::<u64>().ok(),
        };
        v.is_some_and(|v| v > 1 << 32)
    };
    let mut out = String::with_capacity(clif.len());
    for line in clif.lines() {
        let words: Vec<&str> = line
            .split(' ')
            .map(|w| if address(w) { "<addr>" } else { w })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn golden(name: &str, g: &Graph) {
    let options = JitOptions {
        dump_clif: true,
        verify: true,
        // The GEMM call: inline products (FMA or not, by host) are checked
        // in tests/small_matmul.rs instead.
        inline_matmul_macs: 0,
        ..JitOptions::default()
    };
    let c = compile(g, &options).expect("compiles with the verifier on");
    let text = normalize(c.report().clif.as_deref().expect("dump asked for"));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.clif"));
    if std::env::var("BLESS").is_ok_and(|v| v == "1") {
        let tmp = path.with_extension("clif.tmp");
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(&tmp, &text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    if want != text {
        let first = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(text.lines().count()));
        panic!(
            "{name}: CLIF differs from {} at line {} (BLESS=1 to accept):\n--- golden\n{}\n--- now\n{}",
            path.display(),
            first + 1,
            want.lines().skip(first).take(5).collect::<Vec<_>>().join("\n"),
            text.lines().skip(first).take(5).collect::<Vec<_>>().join("\n"),
        );
    }
}

#[test]
fn verifier_is_on_in_test_builds() {
    assert_eq!(JitOptions::default().verify, cfg!(debug_assertions));
}

#[test]
fn golden_add_relu() {
    golden("add_relu", &add_relu());
}

#[test]
fn golden_bias_gelu() {
    golden("bias_gelu", &bias_gelu());
}

#[test]
fn golden_matmul_bias() {
    golden("matmul_bias", &matmul_bias());
}

#[test]
fn golden_reduce_rows() {
    golden("reduce_rows", &reduce_rows());
}
