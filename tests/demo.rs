//! End to end: `cranelora demo` run as a user would (few epochs, output in
//! a temporary directory): it succeeds, the held-out loss falls, every
//! agreement error it prints is within tolerance, the DOT file is written;
//! bad arguments give a usage error. Also the library's `run_demo`.

use cranelora::demo::{run_demo, DemoConfig, Progress};
use std::path::PathBuf;
use std::process::Command;

fn cranelora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cranelora-demo-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn demo_command_agrees_across_modes_and_writes_dot() {
    let dir = temp_dir("run");
    let (ok, stdout, stderr) =
        cranelora(&["demo", "--epochs", "3", "--out", dir.to_str().unwrap()]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    let errors: Vec<(String, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once("max |err| =")?;
            let value = right.split_whitespace().next()?.parse().ok()?;
            Some((left.trim().to_string(), value))
        })
        .collect();
    let names: Vec<&str> = errors
        .iter()
        .map(|(l, _)| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["interp", "jit", "merged", "jit-folded"],
        "agreement lines in:\n{stdout}"
    );
    for (label, e) in &errors {
        assert!(*e <= 1e-4, "{label}: max |err| {e} in:\n{stdout}");
    }
    for mode in ["eager", "interp", "jit", "merged", "jit-folded"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(mode) && l.contains("µs")),
            "no timing row for {mode} in:\n{stdout}"
        );
    }
    let dot = std::fs::read_to_string(dir.join("demo.dot")).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("lora"), "{dot}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn demo_command_rejects_bad_arguments() {
    for args in [
        &["demo", "--frobnicate"][..],
        &["demo", "--epochs"],
        &["demo", "--epochs", "many"],
        &["demo", "--epochs", "0"],
        &["demo", "--out"],
    ] {
        let (ok, stdout, stderr) = cranelora(args);
        assert!(!ok, "{args:?} succeeded:\n{stdout}");
        assert!(stderr.contains("USAGE"), "{args:?}: no usage in:\n{stderr}");
    }
    let missing =
        std::env::temp_dir().join(format!("cranelora-no-such-dir-{}", std::process::id()));
    let (ok, _, stderr) = cranelora(&["demo", "--epochs", "1", "--out", missing.to_str().unwrap()]);
    assert!(!ok && stderr.contains("cranelora-no-such-dir"), "{stderr}");
}

#[test]
fn demo_training_reduces_the_test_loss() {
    let cfg = DemoConfig {
        epochs: 4,
        samples: 256,
        ..DemoConfig::default()
    };
    let mut tests = Vec::new();
    let mut steps = 0;
    let demo = run_demo(cfg, &mut |p| match p {
        Progress::Step(_) => steps += 1,
        Progress::Epoch(_, _, test) => tests.push(test),
    })
    .unwrap();
    assert_eq!((tests.len(), steps), (4, 4 * 8));
    assert!(
        tests[3] < 0.5 * demo.initial_test_mse,
        "held-out MSE {} → {tests:?}",
        demo.initial_test_mse
    );
    assert_eq!(demo.lora.adapted.len(), 4);
}
