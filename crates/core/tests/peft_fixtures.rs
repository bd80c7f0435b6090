//! The three PEFT fixtures of ../shared/fixtures/peft reproduced through the
//! IO module: each case's model is built from its case.json description,
//! `base.safetensors` loaded with PyTorch naming, the adapter directory with
//! `load_peft_adapter`; then forward, loss and the gradients of every A and
//! B, merge, merged weights and output are checked against what PEFT 0.21
//! computed, within case.json's tolerances. No layout is mapped by hand.

use cranelora_core::io::{
    extract_peft_adapter, load_peft_adapter, load_safetensors, named_tensors, read_safetensors,
    Naming,
};
use cranelora_core::layers::{Conv2d, Conv2dOptions, Dense, Embedding, Sequential};
use cranelora_core::lora::merge_all;
use cranelora_core::loss::mse;
use cranelora_core::testing::assert_close;
use cranelora_core::{Activation, ActivationLayer, IdTensor, Input, Layer, Rng, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/peft")
        .join(case)
}

fn case_json(case: &str) -> Value {
    let path = fixture_dir(case).join("case.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("case.json parses")
}

fn floats(case: &str, file: &str) -> BTreeMap<String, Tensor<f32>> {
    read_safetensors(&fixture_dir(case).join(file)).expect("fixture file reads")
}

/// The f32 and i64 tensors of an input file (the IO module reads floats only).
fn inputs(case: &str) -> (HashMap<String, Tensor<f32>>, HashMap<String, IdTensor>) {
    let bytes =
        std::fs::read(fixture_dir(case).join("input.safetensors")).expect("fixture file reads");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let (mut floats, mut ids) = (HashMap::new(), HashMap::new());
    for (name, v) in st.tensors() {
        match v.dtype() {
            Dtype::F32 => {
                let data = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                floats.insert(name, Tensor::from_vec(data, v.shape()).expect("shape fits"));
            }
            Dtype::I64 => {
                let data = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                ids.insert(
                    name,
                    IdTensor::from_vec(data, v.shape()).expect("shape fits"),
                );
            }
            other => panic!("{case}: unexpected dtype {other:?} for {name}"),
        }
    }
    (floats, ids)
}

/// `Name(a,b,k=3,padding=1)` → (name, positional ints, keyword ints).
fn parse_call(s: &str) -> (&str, Vec<usize>, HashMap<&str, usize>) {
    let (name, args) = s.split_once('(').expect("a call");
    let (mut pos, mut kw) = (Vec::new(), HashMap::new());
    for a in args.trim_end_matches(')').split(',').map(str::trim) {
        match a.split_once('=') {
            Some((k, v)) => {
                kw.insert(k, v.parse().expect("an integer"));
            }
            None => pos.push(a.parse().expect("an integer")),
        }
    }
    (name, pos, kw)
}

/// The model of case.json's `model` description, e.g.
/// `fc1 Linear(16,32) -> ReLU -> fc2 Linear(32,8)`, with random weights
/// (the test loads base.safetensors into it).
fn build_model(case: &Value) -> Sequential<f32> {
    let state = case["base_state_dict"]
        .as_object()
        .expect("base_state_dict");
    let mut rng = Rng::new(0);
    let mut model = Sequential::new();
    let desc = case["model"].as_str().expect("model description");
    for (i, item) in desc.split("->").map(str::trim).enumerate() {
        if item == "ReLU" {
            model
                .push(&format!("relu{i}"), ActivationLayer::new(Activation::Relu))
                .expect("push");
            continue;
        }
        let (name, call) = item.split_once(' ').expect("`name Layer(...)`");
        let bias = state.contains_key(&format!("{name}.bias"));
        let (kind, p, kw) = parse_call(call);
        match kind {
            "Linear" => model.push(
                name,
                Dense::new(p[0], p[1], bias, Activation::Identity, &mut rng).expect("dense"),
            ),
            "Conv2d" => {
                let k = kw.get("k").copied().unwrap_or_else(|| p[2]);
                let s = kw.get("stride").copied().unwrap_or(1);
                let pad = kw.get("padding").copied().unwrap_or(0);
                let opts = Conv2dOptions {
                    stride: (s, s),
                    padding: (pad, pad),
                    dilation: (1, 1),
                };
                model.push(
                    name,
                    Conv2d::new(p[0], p[1], (k, k), opts, bias, &mut rng).expect("conv"),
                )
            }
            "Embedding" => model.push(
                name,
                Embedding::new(p[0], p[1], None, &mut rng).expect("embedding"),
            ),
            other => panic!("unknown layer {other} in `{desc}`"),
        }
        .expect("push");
    }
    model
}

fn tol(case: &Value, what: &str) -> (f64, f64) {
    let t = &case["tolerance"][what];
    (
        t["rtol"].as_f64().expect("rtol"),
        t["atol"].as_f64().expect("atol"),
    )
}

fn close(case: &str, got: &Tensor<f32>, want: &Tensor<f32>, (rtol, atol): (f64, f64), what: &str) {
    assert_eq!(got.shape(), want.shape(), "{case}: {what} shape");
    let r = std::panic::catch_unwind(|| assert_close(&got.to_vec(), &want.to_vec(), rtol, atol));
    assert!(r.is_ok(), "{case}: {what} differs from PEFT");
}

/// Runs one case end to end.
fn check_case(case: &str) {
    let desc = case_json(case);
    let mut model = build_model(&desc);
    let dir = fixture_dir(case);
    load_safetensors(
        &mut model,
        &dir.join("base.safetensors"),
        Naming::PyTorch,
        true,
    )
    .expect("base loads");
    let expected = floats(case, "expected.safetensors");
    let (inputs, id_inputs) = inputs(case);
    let input = match (inputs.get("x"), id_inputs.get("x")) {
        (Some(x), _) => Input::Float(x),
        (None, Some(x)) => Input::Ids(x),
        _ => panic!("{case}: no input x"),
    };
    model.set_training(true);
    close(
        case,
        &model.forward(&[input]).expect("forward"),
        &expected["y_base"],
        tol(&desc, "y"),
        "y_base",
    );

    let report = load_peft_adapter(&mut model, &dir.join("adapter"), None).expect("adapter loads");
    let targets = desc["peft_config"]["target_modules"]
        .as_array()
        .expect("targets");
    assert_eq!(report.adapted.len(), targets.len());
    let y = model.forward(&[input]).expect("forward");
    close(case, &y, &expected["y"], tol(&desc, "y"), "y");
    let loss = mse(&y, &inputs["target"]).expect("loss");
    let loss_t = Tensor::from_vec(vec![loss.value], &[1]).expect("scalar");
    close(case, &loss_t, &expected["loss"], (1e-4, 1e-6), "loss");
    model.zero_grad();
    model.backward(&loss.grad).expect("backward");

    // The gradients in PEFT's names and layouts: a copy whose weights are the gradients.
    let mut grads = HashMap::new();
    model.for_each_weight("", &mut |p, w| {
        grads.insert(p.to_string(), w.grad().clone());
    });
    let mut grad_model = model.clone_box();
    grad_model.load_weights(&grads, true).expect("same names");
    let grad_tensors = extract_peft_adapter(grad_model.as_ref())
        .expect("adapters")
        .tensors;
    let keys = desc["grad_keys_equal_adapter_keys"]
        .as_array()
        .expect("grad keys");
    assert_eq!(grad_tensors.len(), keys.len(), "{case}: adapter tensors");
    for key in keys.iter().map(|k| k.as_str().expect("a key")) {
        let want = &expected[&format!("{key}.grad")];
        close(case, &grad_tensors[key], want, tol(&desc, "grad"), key);
    }

    assert_eq!(merge_all(&mut model).expect("merge"), targets.len());
    for (name, w) in named_tensors(&model, Naming::PyTorch).expect("names") {
        close(
            case,
            &w,
            &expected[&name],
            tol(&desc, "merged_weights"),
            &name,
        );
    }
    let y_merged = model.forward(&[input]).expect("forward");
    close(
        case,
        &y_merged,
        &expected["y_merged"],
        tol(&desc, "y"),
        "y_merged",
    );
    close(
        case,
        &y_merged,
        &y,
        tol(&desc, "y_merged_vs_y"),
        "y_merged vs y",
    );
}

#[test]
fn peft_linear_basic_is_reproduced() {
    check_case("linear_basic");
}

#[test]
fn peft_conv2d_is_reproduced() {
    check_case("conv2d");
}

#[test]
fn peft_embedding_is_reproduced() {
    check_case("embedding");
}
