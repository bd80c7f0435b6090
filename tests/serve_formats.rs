//! Serving adapters that come from elsewhere or sit on other layers:
//! PEFT directories on disk served from one compiled model, and Embedding /
//! Conv2d adapters (merged or explained; mixed batches refused). Results
//! against PEFT's fixture outputs or the eager forward of a model carrying
//! the adapter (`serve.rs` has the Dense-layer adapter kinds).

use cranelora::core::export::{tensor_to_data, InputSpec};
use cranelora::core::layers::{Dense, Sequential};
use cranelora::core::lora::LoraConfig;
use cranelora::core::testing::assert_close;
use cranelora::core::{Activation, Layer, Rng, Tensor};
use cranelora::serving::{adapter_of, compile_server, ServingConfig};

use crate::serve_support;
use serve_support::*;

/// The PEFT fixture `linear_basic` (fc1 Linear(16,32) → ReLU → fc2
/// Linear(32,8), its adapter of rank 4) and two adapters of other ranks
/// saved as PEFT directories here, all served from one compiled model: the
/// fixture's adapter reproduces PEFT's own output, the others the eager
/// forward of the model they were saved from.
#[test]
fn peft_directories_are_served_from_one_compiled_model() {
    use cranelora::core::io::{
        load_peft_adapter, load_safetensors, read_safetensors, save_peft_adapter, Naming,
    };
    use cranelora::core::lora::{apply_lora, ApplyConfig, LoraInit};
    use cranelora::core::ActivationLayer;
    use cranelora::serving::load_peft;
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/peft/linear_basic");
    let mut rng = Rng::new(0);
    let mut base = Sequential::<f32>::new();
    base.push(
        "fc1",
        Dense::new(16, 32, true, Activation::Identity, &mut rng).expect("fc1"),
    )
    .expect("push");
    base.push("relu", ActivationLayer::new(Activation::Relu))
        .expect("push");
    base.push(
        "fc2",
        Dense::new(32, 8, true, Activation::Identity, &mut rng).expect("fc2"),
    )
    .expect("push");
    load_safetensors(
        &mut base,
        &case.join("base.safetensors"),
        Naming::PyTorch,
        true,
    )
    .expect("base");
    base.set_training(false);
    let inputs = read_safetensors::<f32>(&case.join("input.safetensors")).expect("inputs");
    let expected = read_safetensors::<f32>(&case.join("expected.safetensors")).expect("expected");
    let x = &inputs["x"];

    let dir = std::env::temp_dir().join(format!("cranelora-serve-peft-{}", std::process::id()));
    let mut eager_outputs = Vec::new();
    for (i, (rank, rslora)) in [(2, true), (6, false)].into_iter().enumerate() {
        let mut m = base.clone();
        let lora = LoraConfig::new(rank)
            .with_alpha(4.0)
            .with_rslora(rslora)
            .with_init(LoraInit::Random)
            .with_seed(50 + i as u64);
        apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2"], lora)).expect("apply");
        save_peft_adapter(&m, &dir, &format!("gen{i}")).expect("save");
        m.set_training(false);
        eager_outputs.push(eager(&mut m, x));
    }

    let mut template = base.clone();
    load_peft_adapter(&mut template, &case.join("adapter"), None).expect("fixture adapter");
    let srv = compile_server(
        &template,
        &[InputSpec::float("x", x.shape())],
        &ServingConfig::new(8),
    )
    .expect("server");
    srv.bind_adapter(
        "fixture",
        &load_peft(&base, &case.join("adapter"), None).expect("load"),
    )
    .expect("bind");
    for i in 0..2 {
        let name = format!("gen{i}");
        srv.bind_adapter(&name, &load_peft(&base, &dir, Some(&name)).expect("load"))
            .expect("bind");
    }
    let xs = [tensor_to_data(x)];
    srv.set_active(Some("fixture")).expect("active");
    let y = srv.run(&xs).expect("run")[0].to_f64_vec();
    let want: Vec<f64> = expected["y"]
        .to_vec()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_close(&y, &want, 1e-4, 1e-5);
    for (i, want) in eager_outputs.iter().enumerate() {
        srv.set_active(Some(&format!("gen{i}"))).expect("active");
        let y = srv.run(&xs).expect("run")[0].to_f64_vec();
        assert_close(&y, want, 2e-5, 2e-5);
    }
    srv.set_active(None).expect("base");
    let y = srv.run(&xs).expect("run")[0].to_f64_vec();
    let want: Vec<f64> = expected["y_base"]
        .to_vec()
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_close(&y, &want, 1e-4, 1e-5);
    std::fs::remove_dir_all(&dir).ok();
}

/// Embedding and Conv2d adapters: single-adapter serving equals the eager
/// forward (an Embedding table merged by `AdapterStrategy::Merged`, the
/// Conv2d keeping its branch with the reason), and asking either for mixed
/// batches is an error naming the layer — never a panic.
#[test]
fn embedding_and_conv2d_adapters_merge_or_explain_and_mixed_batches_are_errors() {
    use cranelora::core::export::ids_to_data;
    use cranelora::core::layers::{Conv2d, Conv2dOptions, Embedding};
    use cranelora::core::lora::{apply_lora, ApplyConfig, LoraInit};
    use cranelora::core::{IdTensor, Input};
    use cranelora::jit::serve::AdapterStrategy;
    let lora = |seed| {
        LoraConfig::new(2)
            .with_alpha(6.0)
            .with_init(LoraInit::Random)
            .with_seed(seed)
    };
    let with_adapter = |m: &Sequential<f64>, path: &str, seed| {
        let mut m = m.clone();
        apply_lora(&mut m, &ApplyConfig::new(&[path], lora(seed))).expect("apply");
        m.set_training(false);
        m
    };
    let mut rng = Rng::new(4);
    let emb = Embedding::<f64>::new(10, 6, None, &mut rng).expect("emb");
    let base = Sequential::new().with("emb", emb).expect("seq");
    let ids = IdTensor::from_vec(vec![0, 3, 9, 1, 3, 7], &[6]).expect("ids");
    let spec = [InputSpec::ids("ids", &[6])];
    let mut cfg = ServingConfig::new(2);
    cfg.jit.adapter_strategy = AdapterStrategy::Merged;
    let srv = compile_server(&with_adapter(&base, "emb", 1), &spec, &cfg).expect("server");
    assert!(srv.strategy()[0].merged, "{:?}", srv.strategy());
    let mut m = with_adapter(&base, "emb", 2);
    srv.bind_adapter("a", &adapter_of(&m).expect("a"))
        .expect("bind");
    srv.set_active(Some("a")).expect("active");
    let y = srv.run(&[ids_to_data(&ids)]).expect("run")[0].to_f64_vec();
    let want = m.forward(&[Input::Ids(&ids)]).expect("eager").to_vec();
    assert_close(&y, &want, 1e-12, 1e-12);
    cfg.mixed_capacity = 2;
    let Err(err) = compile_server(&with_adapter(&base, "emb", 1), &spec, &cfg) else {
        panic!("mixed batches over `emb` compiled")
    };
    assert!(format!("{err:#}").contains("emb"), "{err:#}");

    let opts = Conv2dOptions {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let conv = Conv2d::<f64>::new(2, 3, (3, 3), opts, true, &mut rng).expect("conv");
    let base = Sequential::new().with("conv", conv).expect("seq");
    let x = Tensor::<f64>::random_normal(&[2, 2, 5, 5], 0.0, 1.0, &mut Rng::new(8));
    let spec = [InputSpec::float("x", x.shape())];
    let mut cfg = ServingConfig::new(2);
    cfg.jit.adapter_strategy = AdapterStrategy::Merged;
    let srv = compile_server(&with_adapter(&base, "conv", 1), &spec, &cfg).expect("server");
    let choice = &srv.strategy()[0];
    assert!(
        !choice.merged && choice.reason.contains("Conv2d"),
        "{choice}"
    );
    let mut m = with_adapter(&base, "conv", 3);
    srv.bind_adapter("a", &adapter_of(&m).expect("a"))
        .expect("bind");
    srv.set_active(Some("a")).expect("active");
    let y = srv.run(&[tensor_to_data(&x)]).expect("run")[0].to_f64_vec();
    assert_close(&y, &eager(&mut m, &x), 1e-12, 1e-12);
    cfg.mixed_capacity = 2;
    let Err(err) = compile_server(&with_adapter(&base, "conv", 1), &spec, &cfg) else {
        panic!("mixed batches over `conv` compiled")
    };
    assert!(format!("{err:#}").contains("conv"), "{err:#}");
}
