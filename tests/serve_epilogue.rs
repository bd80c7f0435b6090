//! Runtime-bound adapters run through the GEMM epilogue
//! (crates/jit/src/lower/epilogue.rs): in an `AdapterServer`'s function
//! each adapted Dense layer is one product call whose epilogue adds the
//! bound `x·A·(s·B)` and applies the bound DoRA scale, bias and activation.
//! Results against the eager forward of a model carrying the adapter; the
//! mixed-batch function likewise, each row against its adapter's model.

use cranelora::core::export::{tensor_to_data, InputSpec};
use cranelora::core::layers::{Dense, Sequential};
use cranelora::core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora::core::testing::assert_close;
use cranelora::core::{Activation, Layer, Rng, Tensor};
use cranelora::kernels::Scalar;
use cranelora::serving::{adapter_of, compile_server, ServingConfig};

const ROWS: usize = 5;

/// Two Dense layers 16 → 24 (GELU tanh) → 8, an adapter of `cfg` on both.
fn adapted<T: Scalar>(cfg: LoraConfig, seed: u64) -> Sequential<T> {
    let mut rng = Rng::new(3);
    let d0 = Dense::new(16, 24, true, Activation::GeluTanh, &mut rng).expect("dense");
    let d1 = Dense::new(24, 8, true, Activation::Identity, &mut rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc0", d0)
        .and_then(|m| m.with("fc1", d1))
        .expect("model");
    let cfg = cfg.with_init(LoraInit::Random).with_seed(seed);
    apply_lora(&mut m, &ApplyConfig::new(&["fc0", "fc1"], cfg)).expect("apply");
    m.set_training(false);
    m
}

fn bound_adapters_run_in_the_epilogue<T: Scalar>(tol: f64) {
    for dora in [false, true] {
        let kind = LoraConfig::new(3).with_alpha(6.0).with_dora(dora);
        let template = adapted::<T>(LoraConfig::new(4).with_dora(dora), 1);
        let mut cfg = ServingConfig::new(4);
        cfg.dora = dora;
        // These products are small enough to be emitted inline; the test
        // is about the GEMM call's epilogue.
        cfg.jit.inline_matmul_macs = 0;
        let spec = InputSpec::float("x", &[ROWS, 16]);
        let srv = compile_server(&template, &[spec], &cfg).expect("compiles");
        assert_eq!(srv.compiled().report().matmul_epilogues, 2, "dora {dora}");
        let x = Tensor::<T>::random_normal(&[ROWS, 16], 0.0, 1.0, &mut Rng::new(9));
        for seed in [5, 6] {
            let mut model = adapted::<T>(kind, seed);
            let adapter = adapter_of(&model).expect("adapter");
            srv.bind_adapter("a", &adapter).expect("binds");
            srv.set_active(Some("a")).expect("active");
            // `x·A` reads the bound A packed for the GEMM once per bind.
            for l in ["fc0", "fc1"] {
                let a = format!("{l}.lora_a");
                assert!(srv.compiled().packs(&a), "{a}");
                assert!(srv.active_bindings().is_packed(&a), "{a}");
            }
            let out = srv.run(&[tensor_to_data(&x)]).expect("runs");
            let want = model.forward_float(&x).expect("eager");
            let want: Vec<f64> = want.to_vec().iter().map(|v| v.to_f64_exact()).collect();
            assert_close(&out[0].to_f64_vec(), &want, tol, tol);
        }
    }
}

#[test]
fn bound_adapters_run_in_the_epilogue_f32() {
    bound_adapters_run_in_the_epilogue::<f32>(2e-5);
}

#[test]
fn bound_adapters_run_in_the_epilogue_f64() {
    bound_adapters_run_in_the_epilogue::<f64>(1e-12);
}

/// Mixed batches of plain LoRA adapters keep one GEMM epilogue per layer in
/// the mixed function (each row adds its own adapter's term there, see
/// docs/jit.md "Mixed batches in the epilogue"): rows sorted by adapter in
/// runs long enough for the microkernel pass, scattered rows, rows without
/// adapter, each row against the eager forward of its adapter's model.
fn mixed_adapters_run_in_the_epilogue<T: Scalar>(tol: f64) {
    const ROWS: usize = 12;
    let template = adapted::<T>(LoraConfig::new(4), 1);
    let mut cfg = ServingConfig::new(4);
    cfg.mixed_capacity = 3;
    cfg.jit.inline_matmul_macs = 0;
    let spec = InputSpec::float("x", &[ROWS, 16]);
    let srv = compile_server(&template, &[spec], &cfg).expect("compiles");
    let mixed = srv.compiled_mixed().expect("a mixed function");
    assert_eq!(mixed.report().matmul_epilogues, 2);
    let kinds = [
        LoraConfig::new(4).with_alpha(8.0),
        LoraConfig::new(2).with_alpha(3.0),
        LoraConfig::new(3).with_alpha(2.0).with_rslora(true),
    ];
    let mut models: Vec<Sequential<T>> = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let model = adapted::<T>(kind, 10 + i as u64);
        let adapter = adapter_of(&model).expect("adapter");
        srv.bind_adapter(&format!("a{i}"), &adapter).expect("binds");
        models.push(model);
    }
    let x = Tensor::<T>::random_normal(&[ROWS, 16], 0.0, 1.0, &mut Rng::new(9));
    let mut eager: Vec<Vec<f64>> = Vec::new();
    for m in &mut models {
        let y = m.forward_float(&x).expect("eager");
        eager.push(y.to_vec().iter().map(|v| v.to_f64_exact()).collect());
    }
    // Rows without adapter: the base model (the single function, none active).
    srv.set_active(None).expect("none");
    eager.push(srv.run(&[tensor_to_data(&x)]).expect("base")[0].to_f64_vec());
    let (a, b, c) = (Some("a0"), Some("a1"), Some("a2"));
    let cases: [[Option<&str>; ROWS]; 3] = [
        [a, a, a, a, a, b, b, b, b, None, None, c],
        [c, None, a, b, a, c, b, b, a, None, c, a],
        [b; ROWS],
    ];
    for rows in cases {
        let out = srv
            .run_batch_named(&[tensor_to_data(&x)], &rows)
            .expect("mixed")[0]
            .to_f64_vec();
        for (r, name) in rows.iter().enumerate() {
            let which = name.map_or(3, |n| n[1..].parse::<usize>().expect("a<i>"));
            let want = &eager[which][r * 8..(r + 1) * 8];
            assert_close(&out[r * 8..(r + 1) * 8], want, tol, tol);
        }
    }
}

#[test]
fn mixed_adapters_run_in_the_epilogue_f32() {
    mixed_adapters_run_in_the_epilogue::<f32>(2e-5);
}

#[test]
fn mixed_adapters_run_in_the_epilogue_f64() {
    mixed_adapters_run_in_the_epilogue::<f64>(1e-12);
}
