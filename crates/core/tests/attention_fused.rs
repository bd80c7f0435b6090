//! PyTorch's `nn.MultiheadAttention` layout (`MultiHeadAttention::fused`):
//! equal to the separate-projection layer with the same weights, gradients,
//! export, LoRA on the fused in-projection (one A shared by Q, K, V, plus
//! out_proj, as PEFT adapts `nn.MultiheadAttention`), and PEFT's file names.

use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_from_data,
};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::io::{load_peft_adapter, named_tensors, save_peft_adapter, Naming};
use cranelora_core::layers::{MultiHeadAttention, Sequential};
use cranelora_core::lora::{apply_lora, merge_all, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::testing::{assert_tensor_close, check_gradients, GradCheck};
use cranelora_core::{Input, Layer, Mask, Rng, Tensor};
use std::collections::HashMap;

const D: usize = 4;

fn fused(seed: u64) -> MultiHeadAttention<f64> {
    MultiHeadAttention::fused(D, 2, &mut Rng::new(seed)).unwrap()
}

fn inputs() -> (Tensor<f64>, Mask) {
    let x = Tensor::random_normal(&[2, 3, D], 0.0, 1.0, &mut Rng::new(11));
    (x, Mask::from_ids(&[1, 1, 0, 1, 0, 1], &[2, 3]).unwrap())
}

/// Columns `i·d..(i+1)·d` of the last axis.
fn block(t: &Tensor<f64>, i: usize) -> Tensor<f64> {
    let cols = t.shape()[t.ndim() - 1] / 3;
    let rows = t.len() / (3 * cols);
    let v = t.to_vec();
    let data: Vec<f64> = (0..rows)
        .flat_map(|r| v[r * 3 * cols + i * cols..r * 3 * cols + (i + 1) * cols].to_vec())
        .collect();
    let mut shape = t.shape().to_vec();
    *shape.last_mut().unwrap() = cols;
    Tensor::from_vec(data, &shape).unwrap()
}

#[test]
fn fused_equals_separate_projections_with_the_same_weights() {
    let mut f = fused(1);
    assert_eq!(f.layer_paths(), ["in_proj", "out_proj"]);
    let w: HashMap<String, Tensor<f64>> = f.named_weights().into_iter().collect();
    let mut sep = MultiHeadAttention::<f64>::new(D, 2, &mut Rng::new(2)).unwrap();
    let mut map = HashMap::new();
    for (i, name) in ["query", "key", "value"].into_iter().enumerate() {
        map.insert(format!("{name}.weight"), block(&w["in_proj.weight"], i));
        map.insert(format!("{name}.bias"), block(&w["in_proj.bias"], i));
    }
    map.insert("output.weight".into(), w["out_proj.weight"].clone());
    map.insert("output.bias".into(), w["out_proj.bias"].clone());
    sep.load_weights(&map, true).unwrap();
    let (x, m) = inputs();
    for causal in [false, true] {
        f.set_causal(causal);
        sep.set_causal(causal);
        let ins = [Input::Float(&x), Input::Mask(&m)];
        assert_tensor_close(
            &f.forward(&ins).unwrap(),
            &sep.forward(&ins).unwrap(),
            1e-12,
            0.0,
        );
    }
    let err = f
        .forward(&[Input::Float(&x), Input::Float(&x)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("self-attention only"), "{err}");
}

#[test]
fn fused_gradients_and_export_match() {
    let (x, m) = inputs();
    let mut f = fused(3);
    check_gradients(
        &mut f,
        &[Input::Float(&x), Input::Mask(&m)],
        GradCheck::default(),
    )
    .unwrap();
    f.set_training(false);
    let ins = [Input::Float(&x), Input::Mask(&m)];
    let y = f.forward(&ins).unwrap();
    for mode in [ExportMode::Inference, ExportMode::Training] {
        let g = export_model(&f, &input_specs(&ins), &ExportOptions::new(mode)).unwrap();
        let out =
            cranelora_graph::interpret(&g, &input_values(&ins), &bindings_for(&f, &g).unwrap())
                .unwrap();
        assert_tensor_close(&tensor_from_data::<f64>(&out[0]).unwrap(), &y, 1e-12, 0.0);
    }
    assert!(f.supports_jit());
}

fn adapted(seed: u64) -> Sequential<f64> {
    let mut model = Sequential::new().with("attn", fused(seed)).unwrap();
    let cfg = LoraConfig::new(2)
        .with_alpha(4.0)
        .with_init(LoraInit::Random)
        .with_seed(seed);
    let report = apply_lora(&mut model, &ApplyConfig::new(&["attn"], cfg)).unwrap();
    assert_eq!(report.adapted, ["attn.in_proj", "attn.out_proj"]);
    model
}

#[test]
fn lora_on_the_fused_in_projection_shares_a_across_q_k_v() {
    let (x, m) = inputs();
    let mut model = adapted(4);
    let a = model
        .child("attn.in_proj")
        .unwrap()
        .as_lora_adapter()
        .unwrap()
        .lora_layer()
        .a()
        .value()
        .clone();
    assert_eq!(a.shape(), &[D, 2], "one A for Q, K and V");
    check_gradients(
        &mut model,
        &[Input::Float(&x), Input::Mask(&m)],
        GradCheck::default(),
    )
    .unwrap();
    model.set_training(false);
    let ins = [Input::Float(&x), Input::Mask(&m)];
    let y = model.forward(&ins).unwrap();
    assert_eq!(merge_all(&mut model).unwrap(), 2);
    assert_tensor_close(&model.forward(&ins).unwrap(), &y, 1e-12, 0.0);
}

#[test]
fn pytorch_and_peft_names_of_the_fused_layout() {
    let plain = Sequential::new().with("attn", fused(5)).unwrap();
    let names: HashMap<String, Vec<usize>> = named_tensors(&plain, Naming::PyTorch)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    assert_eq!(names["attn.in_proj_weight"], [3 * D, D]);
    assert_eq!(names["attn.in_proj_bias"], [3 * D]);
    assert_eq!(names["attn.out_proj.weight"], [D, D]);

    let model = adapted(6);
    let names: HashMap<String, Vec<usize>> = named_tensors(&model, Naming::PyTorch)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    assert_eq!(names["attn.lora_A.weight"], [2, D]);
    assert_eq!(names["attn.lora_B.weight"], [3 * D, 2]);
    assert_eq!(names["attn.base_layer.in_proj_weight"], [3 * D, D]);
    assert_eq!(names["attn.base_layer.out_proj.lora_A.weight"], [2, D]);
    assert_eq!(names["attn.base_layer.out_proj.base_layer.weight"], [D, D]);

    // Save as PEFT, load into a fresh model with the same base: same output.
    let dir = std::env::temp_dir().join(format!("cranelora-fused-mha-{}", std::process::id()));
    save_peft_adapter(&model, &dir, "default").unwrap();
    // As PEFT writes it for nn.MultiheadAttention: the attention module is the target.
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let targets = config
        .split("\"target_modules\"")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .to_string();
    assert!(
        targets.contains("\"attn\"") && !targets.contains("proj"),
        "{targets}"
    );
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut keys: Vec<String> = file.names().into_iter().map(|k| k.to_string()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base_model.model.attn.base_layer.out_proj.lora_A.weight",
            "base_model.model.attn.base_layer.out_proj.lora_B.weight",
            "base_model.model.attn.lora_A.weight",
            "base_model.model.attn.lora_B.weight",
        ]
    );
    let mut fresh = Sequential::new().with("attn", fused(6)).unwrap();
    load_peft_adapter(&mut fresh, &dir, None).unwrap();
    let (x, m) = inputs();
    let ins = [Input::Float(&x), Input::Mask(&m)];
    let (mut model, mut fresh) = (model, fresh);
    model.set_training(false);
    fresh.set_training(false);
    assert_eq!(fresh.forward(&ins).unwrap(), model.forward(&ins).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}
