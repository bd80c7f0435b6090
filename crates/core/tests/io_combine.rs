//! Weighted combination of adapters (PEFT's `add_weighted_adapter`): `cat`
//! is exact, `linear` follows PEFT's square-root formula.

use crate::io_common;

use cranelora_core::io::{
    apply_peft_adapter, combine_adapters, extract_peft_adapter, Combination, PeftAdapter,
};
use cranelora_core::layers::Sequential;
use cranelora_core::lora::{apply_lora, merge_all, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::testing::assert_tensor_close;
use cranelora_core::{Layer, Tensor};
use io_common::*;
use std::collections::HashMap;
use std::path::Path;

fn adapted(targets: &[&str], lora: LoraConfig) -> Sequential<f64> {
    let mut m = mlp(1);
    apply_lora(
        &mut m,
        &ApplyConfig::new(targets, lora.with_init(LoraInit::Random)),
    )
    .expect("apply");
    perturb(&mut m);
    m
}

fn merged_weights(m: &Sequential<f64>) -> HashMap<String, Tensor<f64>> {
    let mut m = m.clone();
    merge_all(&mut m).expect("merge");
    m.named_weights().into_iter().collect()
}

/// Applies `adapter` to a fresh base and returns its merged weights.
fn merged_with(adapter: &PeftAdapter<f64>) -> HashMap<String, Tensor<f64>> {
    let mut m: Sequential<f64> = mlp(1);
    let report = apply_peft_adapter(&mut m, adapter, Path::new("combined")).expect("apply");
    for path in &report.adapted {
        let a = m
            .child(path)
            .expect("adapter")
            .as_lora_adapter()
            .expect("an adapter");
        assert_eq!(a.scaling(), 1.0, "combined adapters have scaling 1");
    }
    merged_weights(&m)
}

/// `W0 + Σ w_i·(M_i − W0)`: the weighted sum of the adapters' updates.
fn weighted_updates(models: &[&Sequential<f64>], weights: &[f64]) -> HashMap<String, Tensor<f64>> {
    let base: HashMap<String, Tensor<f64>> = mlp::<f64>(1).named_weights().into_iter().collect();
    let mut out = base.clone();
    for (m, &w) in models.iter().zip(weights) {
        for (name, merged) in merged_weights(m) {
            let delta = merged.sub(&base[&name]).expect("same shape").scale(w);
            out.get_mut(&name)
                .expect("same names")
                .add_assign(&delta)
                .expect("same shape");
        }
    }
    out
}

#[test]
fn cat_is_the_exact_weighted_sum_of_updates() {
    let m1 = adapted(&["fc1", "fc2"], LoraConfig::new(2).with_alpha(3.0));
    // Our adapters need r ≤ min(fan_in, out) (fc2 has 4 outputs), so ranks 2 + 1.
    let m2 = adapted(
        &["fc1"],
        LoraConfig::new(1).with_alpha(1.5).with_rslora(true),
    );
    let (a1, a2) = (
        extract_peft_adapter(&m1).expect("a1"),
        extract_peft_adapter(&m2).expect("a2"),
    );
    let weights = [0.7, -1.3];
    let cat = combine_adapters(&[&a1, &a2], &weights, Combination::Cat).expect("cat");
    assert_eq!(
        (cat.config.r, cat.config.lora_alpha, cat.config.use_rslora),
        (3, 3.0, false)
    );
    assert_eq!(
        cat.tensors["base_model.model.fc1.lora_A.weight"].shape(),
        &[3, 6]
    );
    assert_eq!(
        cat.tensors["base_model.model.fc2.lora_B.weight"].shape(),
        &[4, 3]
    );
    let got = merged_with(&cat);
    let want = weighted_updates(&[&m1, &m2], &weights);
    for (name, w) in &want {
        assert_tensor_close(&got[name], w, 1e-12, 1e-12);
    }
}

#[test]
fn linear_follows_peft_square_root_weights() {
    let m1 = adapted(&["fc1", "fc2"], LoraConfig::new(2).with_alpha(3.0));
    let m2 = adapted(&["fc1", "fc2"], LoraConfig::new(2).with_alpha(0.5));
    let (a1, a2) = (
        extract_peft_adapter(&m1).expect("a1"),
        extract_peft_adapter(&m2).expect("a2"),
    );
    let weights = [0.4, -2.0];
    let lin = combine_adapters(&[&a1, &a2], &weights, Combination::Linear).expect("linear");
    assert_eq!((lin.config.r, lin.config.lora_alpha), (2, 2.0));
    for module in ["fc1", "fc2"] {
        let (ka, kb) = (
            format!("base_model.model.{module}.lora_A.weight"),
            format!("base_model.model.{module}.lora_B.weight"),
        );
        let (mut a, mut b) = (Tensor::<f64>::zeros(&[2, 0]), Tensor::<f64>::zeros(&[0, 2]));
        for (i, (ad, w)) in [(&a1, weights[0]), (&a2, weights[1])]
            .into_iter()
            .enumerate()
        {
            let ws = w * ad.config.scaling_for(module);
            let (ta, tb) = (
                ad.tensors[&ka].scale(ws.signum() * ws.abs().sqrt()),
                ad.tensors[&kb].scale(ws.abs().sqrt()),
            );
            (a, b) = if i == 0 {
                (ta, tb)
            } else {
                (a.add(&ta).expect("a"), b.add(&tb).expect("b"))
            };
        }
        assert_tensor_close(&lin.tensors[&ka], &a, 1e-15, 0.0);
        assert_tensor_close(&lin.tensors[&kb], &b, 1e-15, 0.0);
    }
    // One adapter alone: no cross terms, so linear is exact (sign on A only).
    let single = combine_adapters(&[&a1], &[-0.6], Combination::Linear).expect("single");
    let got = merged_with(&single);
    for (name, w) in weighted_updates(&[&m1], &[-0.6]) {
        assert_tensor_close(&got[&name], &w, 1e-12, 1e-12);
    }
}

#[test]
fn combinations_refuse_what_they_cannot_represent() {
    let r2 = extract_peft_adapter(&adapted(&["fc1"], LoraConfig::new(2))).expect("r2");
    let r3 = extract_peft_adapter(&adapted(&["fc1"], LoraConfig::new(3))).expect("r3");
    let dora =
        extract_peft_adapter(&adapted(&["fc1"], LoraConfig::new(2).with_dora(true))).expect("dora");
    let err = combine_adapters(&[&r2, &r3], &[1.0, 1.0], Combination::Linear).expect_err("ranks");
    assert!(err.to_string().contains("equal ranks"), "{err}");
    let err = combine_adapters(&[&r2, &dora], &[1.0, 1.0], Combination::Cat).expect_err("dora");
    assert!(err.to_string().contains("DoRA"), "{err}");
    assert!(combine_adapters(&[&r2], &[1.0, 2.0], Combination::Cat).is_err());
    assert!(combine_adapters::<f64>(&[], &[], Combination::Cat).is_err());
}
