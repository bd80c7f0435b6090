//! Damaged files are errors, never panics: a valid adapter weights file
//! mutated (bytes overwritten, truncated, extended) and a valid config with
//! fields replaced by values of random types. The case count defaults to a
//! CI size and is raised with `CRANELORA_PROPTEST_CASES`; each test prints
//! how many inputs it tried (`--nocapture`).

use crate::io_common;

use cranelora_core::io::{
    parse_safetensors, save_peft_adapter, PeftConfig, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use cranelora_core::layers::Sequential;
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig};
use io_common::*;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

fn cases() -> u32 {
    std::env::var("CRANELORA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// A real adapter directory's two files (DoRA, so three tensor kinds).
fn files() -> &'static (Vec<u8>, String) {
    static FILES: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut m: Sequential<f32> = mlp(1);
        let lora = LoraConfig::new(2).with_dora(true);
        apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2"], lora)).expect("apply");
        let dir = scratch("proptest");
        save_peft_adapter(&m, &dir, "default").expect("save");
        let w = std::fs::read(dir.join(ADAPTER_WEIGHTS)).expect("weights");
        let c = std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).expect("config");
        (w, c)
    })
}

/// A mutation of a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    /// Overwrite the 8-byte header length.
    HeaderLen(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Mutation::Append),
        1 => any::<u64>().prop_map(Mutation::HeaderLen),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Set(i, b) if !bytes.is_empty() => {
            let n = bytes.len();
            bytes[i % n] = *b;
        }
        Mutation::Set(..) => {}
        Mutation::Truncate(n) => bytes.truncate(n % (bytes.len() + 1)),
        Mutation::Append(extra) => bytes.extend(extra),
        Mutation::HeaderLen(v) if bytes.len() >= 8 => bytes[..8].copy_from_slice(&v.to_le_bytes()),
        Mutation::HeaderLen(_) => {}
    }
}

/// A JSON value of a random type.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z.*|()0-9\\\\]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn mutated_weight_files_never_panic() {
    let tried = AtomicUsize::new(0);
    let strategy = proptest::collection::vec(mutation(), 1..6);
    runner()
        .run(&strategy, |muts| {
            let mut bytes = files().0.clone();
            for m in &muts {
                apply(&mut bytes, m);
            }
            tried.fetch_add(1, Ordering::Relaxed);
            // Ok (a mutation inside tensor data) or Err; never a panic.
            let _ = parse_safetensors::<f32>(&bytes, Path::new("mutated.safetensors"));
            let _ = parse_safetensors::<f64>(&bytes, Path::new("mutated.safetensors"));
            Ok(())
        })
        .expect("no input panics");
    eprintln!(
        "io_proptest: tried {} mutated weight files",
        tried.into_inner()
    );
}

#[test]
fn configs_with_random_field_values_never_panic() {
    let tried = AtomicUsize::new(0);
    let strategy = (
        proptest::collection::vec((0usize..64, json_value()), 1..4),
        any::<usize>(),
    );
    runner()
        .run(&strategy, |(fields, cut)| {
            let mut v: Value = serde_json::from_str(&files().1).expect("valid config");
            let obj = v.as_object_mut().expect("object");
            let keys: Vec<String> = obj.keys().cloned().collect();
            for (i, value) in fields {
                obj.insert(keys[i % keys.len()].clone(), value);
            }
            let text = v.to_string();
            tried.fetch_add(2, Ordering::Relaxed);
            if let Ok(cfg) = PeftConfig::from_json(&text, Path::new("c.json")) {
                // Whatever parsed must write and parse back to the same config.
                let back = PeftConfig::from_json(&cfg.to_json(), Path::new("c.json"));
                prop_assert_eq!(back.ok(), Some(cfg));
            }
            let cut = cut % (text.len() + 1);
            let _ = PeftConfig::from_json(text.get(..cut).unwrap_or(""), Path::new("c.json"));
            Ok(())
        })
        .expect("no input panics");
    eprintln!("io_proptest: tried {} mutated configs", tried.into_inner());
}
