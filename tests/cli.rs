//! The command-line tool, run as a user would: `cranelora peft` on the PEFT
//! fixtures and on a broken directory, and a bad command.

use std::path::PathBuf;
use std::process::Command;

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures")
        .join(case)
}

fn cranelora(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn peft_inspects_the_fixture_adapters() {
    let (ok, text) = cranelora(&["peft", fixture("peft/conv2d/adapter").to_str().unwrap()]);
    assert!(ok, "{text}");
    for expected in ["conv1", "conv2", "no problems"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (ok, text) = cranelora(&["peft", fixture("bert-tiny/adapter").to_str().unwrap()]);
    assert!(ok, "{text}");
}

#[test]
fn peft_reports_a_missing_directory_and_bad_commands_fail() {
    let dir =
        std::env::temp_dir().join(format!("cranelora-no-such-adapter-{}", std::process::id()));
    let (ok, text) = cranelora(&["peft", dir.to_str().unwrap()]);
    assert!(!ok && text.contains("cranelora-no-such-adapter"), "{text}");
    let (ok, text) = cranelora(&["frobnicate"]);
    assert!(!ok && text.contains("unknown command"), "{text}");
}
