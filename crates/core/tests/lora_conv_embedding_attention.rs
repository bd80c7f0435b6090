//! LoRA adapters on Conv2d, Embedding and attention projections: gradients,
//! merge, fresh-adapter identity, validation.

use cranelora_core::layers::{Conv2d, Conv2dOptions, Embedding, MultiHeadAttention, Sequential};
use cranelora_core::lora::{apply_lora, merge_all, ApplyConfig, LoraAdapter, LoraConfig, LoraInit};
use cranelora_core::testing::{assert_tensor_close, check_gradients, GradCheck};
use cranelora_core::{IdTensor, Input, Layer, Mask, Rng, Tensor};
use cranelora_kernels::Scalar;

fn conv<T: Scalar>(stride: usize, padding: usize, dilation: usize) -> Conv2d<T> {
    let opts = Conv2dOptions {
        stride: (stride, stride),
        padding: (padding, padding),
        dilation: (dilation, dilation),
    };
    Conv2d::new(2, 3, (3, 2), opts, true, &mut Rng::new(1)).unwrap()
}

fn embedding<T: Scalar>() -> Embedding<T> {
    Embedding::new(7, 5, None, &mut Rng::new(1)).unwrap()
}

fn ids() -> IdTensor {
    IdTensor::from_vec(vec![0, 3, 6, 3, 1, 0], &[2, 3]).unwrap()
}

fn random(rank: usize) -> LoraConfig {
    LoraConfig::new(rank)
        .with_alpha(3.0)
        .with_init(LoraInit::Random)
        .with_seed(9)
}

fn variants() -> Vec<LoraConfig> {
    vec![
        random(2),
        random(2).with_freeze_base(false),
        random(2).with_rslora(true),
        random(2).with_dora(true),
        random(2).with_dora(true).with_freeze_base(false),
    ]
}

/// Finite differences; with DoRA, n is held at its current value (the surrogate
/// whose exact derivative the backward computes, as PEFT detaches the norm).
fn grad_check(a: &mut LoraAdapter<f64>, inputs: &[Input<'_, f64>]) -> Result<(), String> {
    a.hold_dora_norm(true).unwrap();
    let r = check_gradients(a, inputs, GradCheck::default());
    a.hold_dora_norm(false).unwrap();
    r
}

#[test]
fn conv_adapter_gradients_match_finite_differences() {
    let x = Tensor::random_normal(&[2, 2, 5, 6], 0.0, 1.0, &mut Rng::new(2));
    let mut cfgs = variants();
    cfgs.push(random(3).with_lora_bias(true));
    for cfg in cfgs {
        let mut a = LoraAdapter::wrap(conv::<f64>(2, 1, 1), cfg).unwrap();
        grad_check(&mut a, &[Input::Float(&x)]).unwrap_or_else(|m| panic!("{cfg:?}: {m}"));
    }
}

#[test]
fn embedding_adapter_gradients_match_finite_differences() {
    for cfg in variants() {
        let mut a = LoraAdapter::wrap(embedding::<f64>(), cfg).unwrap();
        grad_check(&mut a, &[Input::Ids(&ids())]).unwrap_or_else(|m| panic!("{cfg:?}: {m}"));
    }
}

fn merge_matches<T: Scalar>(rtol: f64) {
    let x = Tensor::<T>::random_normal(&[2, 2, 5, 6], 0.0, 1.0, &mut Rng::new(2));
    for cfg in [
        random(2),
        random(2).with_dora(true),
        random(2).with_lora_bias(true),
    ] {
        let mut a = LoraAdapter::wrap(conv::<T>(1, 1, 1), cfg).unwrap();
        let y = a.forward_float(&x).unwrap();
        let mut m = a.merge().unwrap();
        assert_eq!(m.kind(), "Conv2d");
        assert_tensor_close(&m.forward_float(&x).unwrap(), &y, rtol, 0.0);
        let mut back = a.unmerge(m.as_ref()).unwrap();
        assert_tensor_close(&back.forward_float(&x).unwrap(), &y, 10.0 * rtol, 0.0);
    }
    for cfg in [random(2), random(3).with_dora(true)] {
        let mut a = LoraAdapter::wrap(embedding::<T>(), cfg).unwrap();
        let y = a.forward(&[Input::Ids(&ids())]).unwrap();
        let mut m = a.merge().unwrap();
        assert_eq!(m.kind(), "Embedding");
        assert_tensor_close(&m.forward(&[Input::Ids(&ids())]).unwrap(), &y, rtol, 0.0);
    }
}

#[test]
fn merged_conv_and_embedding_equal_their_adapters() {
    merge_matches::<f32>(1e-5);
    merge_matches::<f64>(1e-12);
}

#[test]
fn fresh_adapters_leave_conv_and_embedding_outputs_unchanged() {
    let x = Tensor::<f32>::random_normal(&[1, 2, 4, 4], 0.0, 1.0, &mut Rng::new(2));
    let base = conv::<f32>(1, 0, 1);
    let expected = base.clone().forward_float(&x).unwrap();
    assert_eq!(
        LoraAdapter::wrap(base, LoraConfig::new(2))
            .unwrap()
            .forward_float(&x)
            .unwrap(),
        expected
    );
    let base = embedding::<f32>();
    let expected = base.clone().forward(&[Input::Ids(&ids())]).unwrap();
    let mut a = LoraAdapter::wrap(base, LoraConfig::new(2)).unwrap();
    assert_eq!(a.forward(&[Input::Ids(&ids())]).unwrap(), expected);
}

#[test]
fn rank_bounds_use_fan_in_of_each_geometry() {
    // Conv: fan_in = 2·3·2 = 12, out = 3; embedding: vocab 7, dim 5.
    assert!(LoraAdapter::wrap(conv::<f32>(1, 0, 1), LoraConfig::new(3)).is_ok());
    let err = LoraAdapter::wrap(conv::<f32>(1, 0, 1), LoraConfig::new(4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fan_in 12") && err.contains("out 3"), "{err}");
    let err = LoraAdapter::wrap(embedding::<f32>(), LoraConfig::new(6))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fan_in 7") && err.contains("out 5"), "{err}");
    let err = LoraAdapter::wrap(conv::<f32>(1, 0, 2), LoraConfig::new(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dilat"), "{err}");
    assert!(
        LoraAdapter::wrap(embedding::<f32>(), LoraConfig::new(1).with_lora_bias(true)).is_err()
    );
}

fn attention_model(rng: &mut Rng) -> Sequential<f64> {
    Sequential::new()
        .with("attention", MultiHeadAttention::new(4, 2, rng).unwrap())
        .unwrap()
}

#[test]
fn attention_projections_are_adapted_by_path() {
    let mut m = attention_model(&mut Rng::new(3));
    let cfg = ApplyConfig::new(&["query", "value"], random(2));
    let report = apply_lora(&mut m, &cfg).unwrap();
    assert_eq!(report.adapted, ["attention.query", "attention.value"]);
    assert_eq!(report.trainable, 2 * (4 * 2 + 2 * 4));
    let x = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut Rng::new(4));
    let mask = Mask::from_ids(&[1, 1, 0, 1, 1, 1], &[2, 3]).unwrap();
    let inputs = [Input::Float(&x), Input::Mask(&mask)];
    check_gradients(&mut m, &inputs, GradCheck::default()).unwrap();
    m.set_training(false);
    let y = m.forward(&inputs).unwrap();
    assert_eq!(merge_all(&mut m).unwrap(), 2);
    assert_tensor_close(&m.forward(&inputs).unwrap(), &y, 1e-12, 0.0);
}
