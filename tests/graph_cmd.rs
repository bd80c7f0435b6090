//! `cranelora graph`, run as a user would: the DOT file is written, has the
//! LoRA clusters, and `--passes` prints the pass report.

use std::path::PathBuf;
use std::process::Command;

fn cranelora(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn tmp_dot(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cranelora-graph-{name}-{}.dot", std::process::id()))
}

#[test]
fn graph_writes_the_mlp_with_lora_clusters() {
    let path = tmp_dot("mlp");
    let (ok, text) = cranelora(&["graph", "--model", "mlp", "--dot", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("nodes"), "{text}");
    let dot = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(dot.contains("digraph"), "{dot}");
    for adapter in ["LoRA fc1", "LoRA fc2", "LoRA head"] {
        assert!(dot.contains(adapter), "missing {adapter:?} in:\n{dot}");
    }
}

#[test]
fn graph_with_passes_prints_the_report_and_draws_fusion_groups() {
    // Serving mode keeps the adapters as Parameters, so LoRA folding leaves
    // the branches (and their clusters) in place; in inference mode they fold away.
    let path = tmp_dot("attention");
    let p = path.to_str().unwrap();
    let args = [
        "graph",
        "--model",
        "attention",
        "--passes",
        "--mode",
        "serving",
        "--dot",
        p,
    ];
    let (ok, text) = cranelora(&args);
    assert!(ok, "{text}");
    for pass in [
        "simplify",
        "const_fold",
        "lora_fold",
        "cse",
        "dce",
        "fuse",
        "after passes",
    ] {
        assert!(text.contains(pass), "missing {pass:?} in:\n{text}");
    }
    let dot = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(dot.contains("digraph"), "{dot}");
    assert!(
        dot.contains("LoRA query") && dot.contains("LoRA value"),
        "{dot}"
    );
    assert!(dot.contains("cluster_fusion_0"), "{dot}");

    // Inference mode: the adapters fold into the base weights.
    let (ok, text) = cranelora(&["graph", "--model", "attention", "--passes", "--dot", p]);
    assert!(ok && text.contains("lora_fold"), "{text}");
    let dot = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        dot.contains("digraph") && !dot.contains("LoRA query"),
        "{dot}"
    );
}

#[test]
fn graph_refuses_svg_and_bad_options() {
    let (ok, text) = cranelora(&["graph", "--model", "mlp", "--svg", "x.svg"]);
    assert!(!ok && text.contains("dot -Tsvg"), "{text}");
    let (ok, text) = cranelora(&["graph", "--model", "resnet", "--dot", "x.dot"]);
    assert!(!ok && text.contains("resnet"), "{text}");
    let (ok, text) = cranelora(&["graph", "--model", "mlp"]);
    assert!(!ok && text.contains("--dot"), "{text}");
}
