//! The three PEFT fixtures of ../shared/fixtures/peft reproduced through the
//! LoRA API: forward, merged weights and output, loss, and the gradients of
//! every A and B, against what PEFT 0.21 computed.
//!
//! PyTorch layouts are mapped by hand here (mapping PEFT's directory format
//! onto a model is the IO module's job): Linear weights are `out × in`
//! (ours `in × out`); PEFT's `lora_A` is `r × fan_in` and `lora_B` is
//! `out × r` (ours `fan_in × r` and `r × out`).

use cranelora_core::layers::{Conv2d, Conv2dOptions, Dense, Embedding, Sequential};
use cranelora_core::lora::{apply_lora, merge_all, ApplyConfig, LoraConfig};
use cranelora_core::loss::mse;
use cranelora_core::testing::assert_close;
use cranelora_core::{Activation, ActivationLayer, IdTensor, Input, Layer, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/peft")
        .join(case)
}

/// Every tensor of a safetensors file: f32 tensors as floats, i64 as ids.
fn load(case: &str, file: &str) -> (HashMap<String, Tensor<f32>>, HashMap<String, IdTensor>) {
    let path = fixture_dir(case).join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (mut floats, mut ids) = (HashMap::new(), HashMap::new());
    for (name, view) in st.tensors() {
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => {
                let v = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                floats.insert(name, Tensor::from_vec(v, view.shape()).unwrap());
            }
            Dtype::I64 => {
                let v = data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                ids.insert(name, IdTensor::from_vec(v, view.shape()).unwrap());
            }
            other => panic!("{file}: unexpected dtype {other:?} for {name}"),
        }
    }
    (floats, ids)
}

/// A PyTorch tensor `[a, b, ...]` as the matrix `[a, b·...]` transposed.
fn torch_t(t: &Tensor<f32>) -> Tensor<f32> {
    let rows = t.shape()[0];
    t.reshape(&[rows, t.len() / rows]).unwrap().t().unwrap()
}

/// Our LoRA weights from PEFT's adapter file: `<module>.lora_a` / `.lora_b`.
fn lora_weights(case: &str, modules: &[&str]) -> HashMap<String, Tensor<f32>> {
    let (adapter, _) = load(case, "adapter/adapter_model.safetensors");
    let mut map = HashMap::new();
    for m in modules {
        let key = |suffix: &str| {
            [
                format!("base_model.model.{m}.lora_{suffix}.weight"),
                format!("base_model.model.{m}.lora_embedding_{suffix}"),
            ]
            .into_iter()
            .find(|k| adapter.contains_key(k))
            .unwrap_or_else(|| panic!("no lora_{suffix} for {m}"))
        };
        map.insert(format!("{m}.lora_a"), torch_t(&adapter[&key("A")]));
        map.insert(format!("{m}.lora_b"), torch_t(&adapter[&key("B")]));
    }
    map
}

/// Runs one case: apply LoRA (r, alpha) to `modules`, load PEFT's A and B,
/// check y, loss and gradients, then merge and check weights and y_merged.
fn check_case(
    case: &str,
    mut model: Sequential<f32>,
    input: Input<'_, f32>,
    modules: &[&str],
    r: usize,
    alpha: f64,
    merged_native: &dyn Fn(&str, &Tensor<f32>) -> Tensor<f32>,
) {
    let (expected, _) = load(case, "expected.safetensors");
    let (inputs, _) = load(case, "input.safetensors");
    let close = |got: &Tensor<f32>, want: &Tensor<f32>, rtol: f64, atol: f64, what: &str| {
        assert_eq!(got.shape(), want.shape(), "{case}: {what} shape");
        let r =
            std::panic::catch_unwind(|| assert_close(&got.to_vec(), &want.to_vec(), rtol, atol));
        assert!(r.is_ok(), "{case}: {what} differs from PEFT");
    };
    model.set_training(true);
    let y_base = model.forward(&[input]).unwrap();
    close(&y_base, &expected["y_base"], 1e-4, 1e-5, "y_base");

    let report = apply_lora(
        &mut model,
        &ApplyConfig::new(modules, LoraConfig::new(r).with_alpha(alpha)),
    )
    .unwrap();
    assert_eq!(report.adapted.len(), modules.len());
    model
        .load_weights(&lora_weights(case, modules), false)
        .unwrap();
    let y = model.forward(&[input]).unwrap();
    close(&y, &expected["y"], 1e-4, 1e-5, "y");
    let loss = mse(&y, &inputs["target"]).unwrap();
    close(
        &Tensor::from_vec(vec![loss.value], &[1]).unwrap(),
        &expected["loss"],
        1e-4,
        1e-6,
        "loss",
    );
    model.zero_grad();
    model.backward(&loss.grad).unwrap();
    let grads: HashMap<String, Tensor<f32>> = {
        let mut g = HashMap::new();
        model.for_each_weight("", &mut |p, w| {
            g.insert(p.to_string(), w.grad().clone());
        });
        g
    };
    for m in modules {
        for (ours, theirs) in [("lora_a", "A"), ("lora_b", "B")] {
            let key = [
                format!("base_model.model.{m}.lora_{theirs}.weight.grad"),
                format!("base_model.model.{m}.lora_embedding_{theirs}.grad"),
            ]
            .into_iter()
            .find(|k| expected.contains_key(k))
            .unwrap();
            close(
                &grads[&format!("{m}.{ours}")],
                &torch_t(&expected[&key]),
                1e-4,
                1e-5,
                &key,
            );
        }
    }

    assert_eq!(merge_all(&mut model).unwrap(), modules.len());
    for (name, w) in model.named_weights() {
        close(
            &merged_native(&name, &w),
            &expected[&name],
            1e-5,
            1e-5,
            &name,
        );
    }
    close(
        &model.forward(&[input]).unwrap(),
        &expected["y_merged"],
        1e-4,
        1e-5,
        "y_merged",
    );
}

fn base(case: &str) -> HashMap<String, Tensor<f32>> {
    load(case, "base.safetensors").0
}

/// Linear weights are stored transposed relative to PyTorch.
fn linear_native(name: &str, w: &Tensor<f32>) -> Tensor<f32> {
    if name.ends_with(".weight") && w.ndim() == 2 && !name.starts_with("emb") {
        w.t().unwrap()
    } else {
        w.clone()
    }
}

#[test]
fn peft_linear_basic_is_reproduced() {
    let b = base("linear_basic");
    let fc = |n: &str, act| {
        Dense::from_weights(
            b[&format!("{n}.weight")].t().unwrap(),
            Some(b[&format!("{n}.bias")].clone()),
            act,
        )
        .unwrap()
    };
    // ReLU is a separate module in the PyTorch model: built into fc1 here, the
    // LoRA delta still goes before it, so the result must be the same.
    let model = Sequential::new()
        .with("fc1", fc("fc1", Activation::Relu))
        .unwrap()
        .with("fc2", fc("fc2", Activation::Identity))
        .unwrap();
    let (inputs, _) = load("linear_basic", "input.safetensors");
    check_case(
        "linear_basic",
        model,
        Input::Float(&inputs["x"]),
        &["fc1", "fc2"],
        4,
        8.0,
        &linear_native,
    );
}

#[test]
fn peft_conv2d_is_reproduced() {
    let b = base("conv2d");
    let conv = |n: &str, stride, padding| {
        Conv2d::from_weights(
            b[&format!("{n}.weight")].clone(),
            Some(b[&format!("{n}.bias")].clone()),
            Conv2dOptions {
                stride,
                padding,
                dilation: (1, 1),
            },
        )
        .unwrap()
    };
    let model = Sequential::new()
        .with("conv1", conv("conv1", (1, 1), (1, 1)))
        .unwrap()
        .with("relu", ActivationLayer::new(Activation::Relu))
        .unwrap()
        .with("conv2", conv("conv2", (2, 2), (0, 0)))
        .unwrap();
    let (inputs, _) = load("conv2d", "input.safetensors");
    check_case(
        "conv2d",
        model,
        Input::Float(&inputs["x"]),
        &["conv1", "conv2"],
        4,
        8.0,
        &|_, w| w.clone(),
    );
}

#[test]
fn peft_embedding_is_reproduced() {
    let b = base("embedding");
    let model = Sequential::new()
        .with(
            "emb",
            Embedding::from_weights(b["emb.weight"].clone(), None).unwrap(),
        )
        .unwrap()
        .with(
            "proj",
            Dense::from_weights(
                b["proj.weight"].t().unwrap(),
                Some(b["proj.bias"].clone()),
                Activation::Identity,
            )
            .unwrap(),
        )
        .unwrap();
    let (_, ids) = load("embedding", "input.safetensors");
    check_case(
        "embedding",
        model,
        Input::Ids(&ids["x"]),
        &["emb", "proj"],
        4,
        4.0,
        &linear_native,
    );
}
