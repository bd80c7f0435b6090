//! `cranelora bench --workload W2 --quick --json FILE --plot FILE.svg`: the
//! JSON has the documented schema and every W2 mode; the SVG chart names them. (W1/W3 are too slow for the dev
//! profile; they are run by hand in release.)

use std::process::Command;

#[test]
fn bench_w2_quick_writes_the_json_schema() {
    let dir = std::env::temp_dir().join(format!("cranelora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.json");
    let svg_path = dir.join("bench.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_cranelora"))
        .args(["bench", "--workload", "W2", "--quick", "--json"])
        .arg(&path)
        .arg("--plot")
        .arg(&svg_path)
        .output()
        .expect("run cranelora");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rustc-baseline"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(v["machine"]["cpu"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(v["compile_ms"].is_object());
    let results = v["results"].as_array().unwrap();
    let modes: Vec<&str> = results
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(
        modes,
        [
            "eager",
            "interp",
            "jit",
            "jit-bound",
            "jit-folded",
            "merged-eager",
            "rustc-baseline"
        ]
    );
    for r in results {
        assert_eq!(r.as_object().unwrap().len(), 5, "{r}");
        assert_eq!(r["workload"], "W2");
        let (median, min) = (
            r["median_us"].as_f64().unwrap(),
            r["min_us"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= median, "{r}");
        assert!(r["gflops"].is_null(), "{r}");
    }
    let svg = std::fs::read_to_string(&svg_path).expect("the --plot SVG exists");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for mode in &modes {
        assert!(
            svg.contains(&format!(">{mode}</text>")),
            "{mode} not in the SVG"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
