//! `cranelora serve-bench --adapters 2 --rank 4 --size 32 --quick --json
//! FILE`: every mode is timed and the JSON has the bench schema with
//! workload `serve` (W1's 1024-wide layers are too slow for the dev
//! profile; `--size` shrinks them here, the real run is by hand in release).

use std::process::Command;

#[test]
fn serve_bench_writes_every_mode_in_the_bench_schema() {
    let dir = std::env::temp_dir().join(format!("cranelora-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("serve.json");
    let out = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args([
            "serve-bench",
            "--adapters",
            "2",
            "--rank",
            "4",
            "--size",
            "32",
            "--quick",
            "--json",
        ])
        .arg(&path)
        .output()
        .expect("run cranelora");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("json written")).expect("json");
    let modes: Vec<&str> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert_eq!(r["workload"], "serve");
            let (med, min) = (
                r["median_us"].as_f64().expect("median"),
                r["min_us"].as_f64().expect("min"),
            );
            assert!(min > 0.0 && min <= med, "{r}");
            r["mode"].as_str().expect("mode")
        })
        .collect();
    let expected = [
        "folded",
        "bound",
        "bound-merged",
        "swap",
        "mixed",
        "mixed-interleaved",
        "separate",
        "merged-per-adapter",
    ];
    assert_eq!(modes, expected);
    assert_eq!(v["serve"]["adapters"], 2);
    assert!(v["machine"]["cores"].as_u64().expect("cores") >= 1);
    std::fs::remove_dir_all(&dir).ok();
    let bad = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(["serve-bench", "--adapters", "3"])
        .output()
        .expect("run cranelora");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must divide the batch"));
}
