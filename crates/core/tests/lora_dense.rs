//! LoRA adapters on Dense and FullyConnected: the LoRAAdapterBase contract.

use cranelora_core::layers::{Dense, FullyConnected, Sequential};
use cranelora_core::lora::{LoraAdapter, LoraConfig, LoraInit};
use cranelora_core::testing::{assert_close, assert_tensor_close, check_gradients, GradCheck};
use cranelora_core::{Activation, Error, Input, Layer, Rng, Tensor};
use cranelora_kernels::Scalar;

fn dense<T: Scalar>(i: usize, o: usize, act: Activation, seed: u64) -> Dense<T> {
    Dense::new(i, o, true, act, &mut Rng::new(seed)).unwrap()
}

fn random_cfg(rank: usize) -> LoraConfig {
    LoraConfig::new(rank)
        .with_alpha(2.0 * rank as f64)
        .with_init(LoraInit::Random)
        .with_seed(3)
}

#[test]
fn fresh_adapter_leaves_the_output_bit_identical() {
    for init in [LoraInit::Default, LoraInit::Gaussian] {
        let base = dense::<f32>(6, 5, Activation::GeluTanh, 1);
        let x = Tensor::random_normal(&[4, 6], 0.0, 1.0, &mut Rng::new(2));
        let expected = base.clone().forward_float(&x).unwrap();
        let mut a = LoraAdapter::wrap(base, LoraConfig::new(2).with_init(init)).unwrap();
        assert_eq!(a.forward_float(&x).unwrap(), expected);
    }
}

#[test]
fn gradients_match_finite_differences_frozen_and_not() {
    let variants = [
        random_cfg(2),
        random_cfg(2).with_rslora(true),
        random_cfg(3).with_lora_bias(true),
        random_cfg(2).with_freeze_base(false),
        random_cfg(2).with_freeze_base(false).with_lora_bias(true),
    ];
    for cfg in variants {
        for act in [Activation::Identity, Activation::Tanh, Activation::GeluErf] {
            let mut a = LoraAdapter::wrap(dense::<f64>(4, 3, act, 1), cfg).unwrap();
            let x = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut Rng::new(2));
            check_gradients(&mut a, &[Input::Float(&x)], GradCheck::default())
                .unwrap_or_else(|m| panic!("{cfg:?} {act:?}: {m}"));
        }
    }
    let mut fc = LoraAdapter::wrap(
        FullyConnected::<f64>::new(4, 3, true, &mut Rng::new(1)).unwrap(),
        random_cfg(2),
    )
    .unwrap();
    let x = Tensor::random_normal(&[5, 4], 0.0, 1.0, &mut Rng::new(2));
    check_gradients(&mut fc, &[Input::Float(&x)], GradCheck::default()).unwrap();
}

/// DoRA's gradients with respect to x and m are exact; with respect to A and B
/// the adapter (like PEFT) treats n as a constant, so they are checked against
/// finite differences of a surrogate written out here, in which n is held at
/// its value at the evaluation point:
/// `L(A, B) = Σ R ⊙ act((m/n₀) ⊙ (x·W + s·x·A·B) + b)`.
#[test]
fn dora_gradients_match_the_surrogate_with_n_held_constant() {
    let act = Activation::Tanh;
    let base = dense::<f64>(4, 3, act, 1);
    let (w, b) = (
        base.weight().value().clone(),
        base.bias().unwrap().value().clone(),
    );
    let mut a = LoraAdapter::wrap(base, random_cfg(2).with_dora(true)).unwrap();
    // Perturb m away from n so the scaling is not the identity.
    let m0 = a
        .lora_layer()
        .magnitude()
        .unwrap()
        .value()
        .map(|v| v * 1.3 + 0.1);
    a.lora_layer_mut()
        .magnitude_mut()
        .unwrap()
        .set_value(m0.clone())
        .unwrap();
    let x = Tensor::random_normal(&[5, 4], 0.0, 1.0, &mut Rng::new(2));
    // Exact parts: x and m (n does not depend on either).
    let full = check_gradients(&mut a, &[Input::Float(&x)], GradCheck::default());
    let msg = full.expect_err("A and B gradients should differ from the true derivative through n");
    assert!(msg.starts_with("parameter gradient"), "{msg}");

    let s = a.scaling();
    let (a0, b0) = (
        a.lora_layer().a().value().clone(),
        a.lora_layer().b().value().clone(),
    );
    let n0 = {
        let v = w.add(&a0.matmul(&b0).unwrap().scale(s)).unwrap();
        v.map(|t| t * t)
            .sum_axes(&[0], false)
            .unwrap()
            .map(f64::sqrt)
    };
    let r = Tensor::random_normal(&[5, 3], 0.0, 1.0, &mut Rng::new(42));
    let surrogate = |am: &Tensor<f64>, bm: &Tensor<f64>| {
        let inner = x
            .matmul(&w)
            .unwrap()
            .add(&x.matmul(am).unwrap().matmul(bm).unwrap().scale(s))
            .unwrap();
        let z = inner.mul(&m0.div(&n0).unwrap()).unwrap().add(&b).unwrap();
        act.apply(&z).mul(&r).unwrap().sum()
    };
    a.zero_grad();
    a.forward_float(&x).unwrap();
    a.backward(&r).unwrap();
    let h = 1e-6;
    let fd = |which: usize, i: usize| {
        let (mut ap, mut bp, mut am, mut bm) = (a0.clone(), b0.clone(), a0.clone(), b0.clone());
        let (p, m) = if which == 0 {
            (&mut ap, &mut am)
        } else {
            (&mut bp, &mut bm)
        };
        p.as_slice_mut().unwrap()[i] += h;
        m.as_slice_mut().unwrap()[i] -= h;
        (surrogate(&ap, &bp) - surrogate(&am, &bm)) / (2.0 * h)
    };
    let num_a: Vec<f64> = (0..a0.len()).map(|i| fd(0, i)).collect();
    let num_b: Vec<f64> = (0..b0.len()).map(|i| fd(1, i)).collect();
    assert_close(&a.lora_layer().a().grad().to_vec(), &num_a, 1e-6, 1e-8);
    assert_close(&a.lora_layer().b().grad().to_vec(), &num_b, 1e-6, 1e-8);
}

fn check_merge<T: Scalar>(cfg: LoraConfig, rtol: f64) {
    for act in [Activation::Identity, Activation::Relu, Activation::GeluTanh] {
        let mut a = LoraAdapter::wrap(dense::<T>(6, 4, act, 1), cfg).unwrap();
        if let Some(m) = a.lora_layer_mut().magnitude_mut() {
            let v = m.value().map(|v| v * T::from_f64_lossy(0.7));
            m.set_value(v).unwrap();
        }
        if let Some(b) = a.lora_layer_mut().bias_mut() {
            b.set_value(Tensor::random_normal(&[4], 0.0, 0.5, &mut Rng::new(8)))
                .unwrap();
        }
        let x = Tensor::random_normal(&[3, 6], 0.0, 1.0, &mut Rng::new(2));
        let y = a.forward_float(&x).unwrap();
        let mut merged = a.merge().unwrap();
        assert_eq!(merged.kind(), "Dense");
        assert_tensor_close(&merged.forward_float(&x).unwrap(), &y, rtol, 0.0);
        let mut back = a.unmerge(merged.as_ref()).unwrap();
        assert_tensor_close(&back.forward_float(&x).unwrap(), &y, rtol * 10.0, 0.0);
        let w0 = a.base_layer().named_weights();
        for ((n1, t1), (n0, t0)) in back.base_layer().named_weights().iter().zip(&w0) {
            assert_eq!(n1, n0);
            assert_tensor_close(t1, t0, rtol * 10.0, rtol);
        }
    }
}

#[test]
fn merged_forward_equals_adapter_forward() {
    for cfg in [
        random_cfg(3),
        random_cfg(3).with_rslora(true),
        random_cfg(2).with_dora(true),
        random_cfg(2).with_lora_bias(true),
    ] {
        check_merge::<f32>(cfg, 1e-5);
        check_merge::<f64>(cfg, 1e-12);
    }
}

#[test]
fn packing_order_is_base_then_a_b_bias_magnitude() {
    let cfg = random_cfg(2).with_freeze_base(false).with_lora_bias(true);
    let a = LoraAdapter::wrap(dense::<f64>(3, 2, Activation::Relu, 1), cfg).unwrap();
    let names: Vec<String> = a.named_weights().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "base_layer.weight",
            "base_layer.bias",
            "lora_a",
            "lora_b",
            "lora_bias"
        ]
    );
    let flat: Vec<f64> = a
        .named_weights()
        .iter()
        .flat_map(|(_, t)| t.to_vec())
        .collect();
    assert_eq!(a.parameters(), flat);
    assert_eq!(a.parameter_count(), 6 + 2 + 6 + 4 + 2);
    // Frozen: LoRA only, A then B then magnitude.
    let frozen = LoraAdapter::wrap(
        dense::<f64>(3, 2, Activation::Relu, 1),
        random_cfg(2).with_dora(true),
    )
    .unwrap();
    assert!(frozen.is_base_frozen());
    let lora = frozen.lora_layer();
    let expected: Vec<f64> = [lora.a(), lora.b(), lora.magnitude().unwrap()]
        .iter()
        .flat_map(|w| w.value().to_vec())
        .collect();
    assert_eq!(frozen.parameters(), expected);
    assert_eq!(frozen.parameter_count(), 6 + 4 + 2);
    assert_eq!(frozen.total_parameter_count(), 8 + 12);
}

#[test]
fn accessors_and_diagnostics() {
    let a = LoraAdapter::wrap(dense::<f32>(8, 8, Activation::Relu, 1), LoraConfig::new(4)).unwrap();
    assert_eq!((a.rank(), a.alpha(), a.scaling()), (4, 4.0, 1.0));
    let r = LoraAdapter::wrap(
        dense::<f32>(8, 8, Activation::Relu, 1),
        LoraConfig::new(4).with_alpha(8.0).with_rslora(true),
    )
    .unwrap();
    assert_eq!(r.scaling(), 4.0);
    let d = r.diagnostics();
    for key in [
        "rank",
        "alpha",
        "scaling",
        "trainable_parameters",
        "total_parameters",
        "lora_a.norm",
        "lora_b.norm",
        "update.norm",
    ] {
        assert!(d.iter().any(|(k, _)| k == key), "missing {key} in {d:?}");
    }
}

#[test]
fn validation_errors_say_what_is_wrong() {
    let err =
        LoraAdapter::wrap(dense::<f32>(8, 3, Activation::Relu, 1), LoraConfig::new(4)).unwrap_err();
    assert!(
        err.to_string().contains("rank 4") && err.to_string().contains("min"),
        "{err}"
    );
    assert!(
        LoraAdapter::wrap(dense::<f32>(8, 3, Activation::Relu, 1), LoraConfig::new(0)).is_err()
    );
    let err = LoraAdapter::wrap(
        dense::<f32>(8, 8, Activation::Relu, 1),
        LoraConfig::new(2).with_dora(true).with_lora_bias(true),
    )
    .unwrap_err();
    assert!(err.to_string().contains("DoRA"), "{err}");
    let err = LoraAdapter::wrap(
        dense::<f32>(8, 8, Activation::Relu, 1),
        LoraConfig::new(2).with_alpha(f64::NAN),
    )
    .unwrap_err();
    assert!(err.to_string().contains("alpha"), "{err}");
    let err = LoraAdapter::wrap(Sequential::<f32>::new(), LoraConfig::new(1)).unwrap_err();
    assert!(
        matches!(&err, Error::Config { .. }) && err.to_string().contains("Sequential"),
        "{err}"
    );
}

#[test]
fn merge_refuses_non_finite_weights() {
    let mut a = LoraAdapter::wrap(dense::<f32>(4, 4, Activation::Relu, 1), random_cfg(2)).unwrap();
    a.lora_layer_mut()
        .b_mut()
        .set_value(Tensor::full(&[2, 4], f32::INFINITY))
        .unwrap();
    assert!(a.merge().unwrap_err().to_string().contains("finite"));
}

/// A frozen MLP with adapters learns a teacher = base + a known rank-r update.
fn fine_tune<T: Scalar>() {
    let mut rng = Rng::new(21);
    let base = Sequential::<T>::new()
        .with(
            "fc1",
            Dense::new(8, 16, true, Activation::Tanh, &mut rng).unwrap(),
        )
        .unwrap()
        .with(
            "fc2",
            Dense::new(16, 4, true, Activation::Identity, &mut rng).unwrap(),
        )
        .unwrap();
    // The teacher adds a rank-2 update ΔW = U·V to fc1's weight.
    let mut teacher = base.clone();
    let u = Tensor::<T>::random_normal(&[8, 2], 0.0, 0.5, &mut rng);
    let v = Tensor::<T>::random_normal(&[2, 16], 0.0, 0.5, &mut rng);
    let fc1 = teacher.child("fc1").unwrap().named_weights()[0]
        .1
        .add(&u.matmul(&v).unwrap())
        .unwrap();
    let mut map = std::collections::HashMap::new();
    map.insert("fc1.weight".to_string(), fc1);
    teacher.load_weights(&map, false).unwrap();
    let x = Tensor::<T>::random_uniform(&[128, 8], -1.0, 1.0, &mut rng);
    teacher.set_training(false);
    let target = teacher.forward_float(&x).unwrap();

    let mut student = base.clone();
    for path in ["fc1", "fc2"] {
        let old = student
            .replace_child(
                path,
                Box::new(cranelora_core::ActivationLayer::new(Activation::Identity)),
            )
            .unwrap();
        student
            .replace_child(
                path,
                Box::new(LoraAdapter::new(old, LoraConfig::new(2).with_seed(5)).unwrap()),
            )
            .unwrap();
    }
    let frozen_before: Vec<_> = student
        .named_weights()
        .into_iter()
        .filter(|(n, _)| n.contains("base_layer"))
        .collect();
    let mut opt = cranelora_core::optim::Adam::new(0.02);
    let loss = |p: &Tensor<T>| cranelora_core::loss::mse(p, &target);
    let first =
        cranelora_core::train::train_step(&mut student, &mut opt, &[Input::Float(&x)], &loss)
            .unwrap();
    let mut last = first;
    for _ in 0..300 {
        last =
            cranelora_core::train::train_step(&mut student, &mut opt, &[Input::Float(&x)], &loss)
                .unwrap();
    }
    assert!(
        last.to_f64_exact() * 10.0 < first.to_f64_exact(),
        "loss {first} → {last}"
    );
    let frozen_after: Vec<_> = student
        .named_weights()
        .into_iter()
        .filter(|(n, _)| n.contains("base_layer"))
        .collect();
    assert_eq!(
        frozen_before, frozen_after,
        "frozen base weights must be bit-identical"
    );
}

#[test]
fn frozen_mlp_with_adapters_learns_a_low_rank_teacher_f32() {
    fine_tune::<f32>();
}

#[test]
fn frozen_mlp_with_adapters_learns_a_low_rank_teacher_f64() {
    fine_tune::<f64>();
}
