//! Serving many adapters from one compiled model (`cranelora::serving`,
//! `cranelora_jit::serve`): every result is checked against the eager
//! forward of a model carrying that adapter (an independent path: layers,
//! not graphs).

use cranelora::core::export::tensor_to_data;
use cranelora::core::lora::LoraConfig;
use cranelora::core::testing::assert_close;
use cranelora::core::{Rng, Tensor};
use cranelora::graph::TensorData;
use cranelora::kernels::Scalar;
use cranelora::serving::{adapter_of, ServingConfig};

use crate::serve_support;
use serve_support::*;

/// The adapter kinds the JIT serves, each with a distinct rank ≤ 8.
fn kinds() -> Vec<(&'static str, LoraConfig)> {
    vec![
        ("lora", LoraConfig::new(4).with_alpha(8.0)),
        (
            "rslora",
            LoraConfig::new(8).with_alpha(4.0).with_rslora(true),
        ),
        (
            "bias",
            LoraConfig::new(3).with_alpha(6.0).with_lora_bias(true),
        ),
        ("dora", LoraConfig::new(5).with_alpha(5.0).with_dora(true)),
        ("rank1", LoraConfig::new(1).with_alpha(3.0)),
    ]
}

/// A DoRA server (every kind but the LoRA bias) and a LoRA-bias server
/// (every kind but DoRA): PEFT has no DoRA with a LoRA bias, so no layer
/// has both slots.
fn configs() -> [(ServingConfig, &'static str); 2] {
    let (mut dora, mut bias) = (ServingConfig::new(8), ServingConfig::new(8));
    dora.dora = true;
    bias.lora_bias = true;
    [(dora, "bias"), (bias, "dora")]
}

fn served_outputs_equal_eager<T: Scalar>() {
    for (mut cfg, skip) in configs() {
        served_outputs_equal_eager_with::<T>(&cfg, skip);
        // Every product a GEMM call: A (and a LoRA-bias layer's B) packed at bind.
        cfg.jit.inline_matmul_macs = 0;
        served_outputs_equal_eager_with::<T>(&cfg, skip);
    }
    let srv = server::<T>(&ServingConfig::new(8));
    let e = srv.bind_adapter(
        "dora",
        &adapter_of(&adapted::<T>(kinds()[3].1, 1)).expect("a"),
    );
    assert!(e
        .expect_err("no DoRA slot")
        .to_string()
        .contains("DoRA magnitude"));
}

fn served_outputs_equal_eager_with<T: Scalar>(cfg: &ServingConfig, skip: &str) {
    let srv = server::<T>(cfg);
    let x = input::<T>();
    let xs = [tensor_to_data(&x)];
    let gemm = cfg.jit.inline_matmul_macs == 0;
    for (i, (name, cfg)) in kinds()
        .into_iter()
        .enumerate()
        .filter(|(_, (n, _))| *n != skip)
    {
        let mut model = adapted::<T>(cfg, 10 + i as u64);
        srv.bind_adapter(name, &adapter_of(&model).expect("adapter"))
            .expect("binds");
        srv.set_active(Some(name)).expect("active");
        // Every adapter weight a product reads as its right operand is
        // bound packed (bind-time work): the result below uses those copies.
        let bound = srv.active_bindings();
        for p in srv.compiled().parameters() {
            let packs = srv.compiled().packs(&p.name);
            assert_eq!(bound.is_packed(&p.name), packs, "{name}: {}", p.name);
        }
        if gemm {
            assert!(bound.is_packed("fc0.lora_a"), "{name}");
        }
        let got = srv.run(&xs).expect("runs")[0].to_f64_vec();
        assert_close(&got, &eager(&mut model, &x), tol::<T>(), tol::<T>());
    }
    srv.set_active(None).expect("none");
    let got = srv.run(&xs).expect("runs")[0].to_f64_vec();
    assert_close(&got, &eager(&mut plain::<T>(), &x), tol::<T>(), tol::<T>());
}

#[test]
fn served_outputs_equal_eager_for_every_adapter_kind_f32() {
    served_outputs_equal_eager::<f32>();
}

#[test]
fn served_outputs_equal_eager_for_every_adapter_kind_f64() {
    served_outputs_equal_eager::<f64>();
}

#[test]
fn bind_swap_unbind_round_trip() {
    let srv = server::<f32>(&ServingConfig::new(8));
    let x = input::<f32>();
    let xs = [tensor_to_data(&x)];
    let (mut ma, mut mb) = (
        adapted::<f32>(LoraConfig::new(4).with_alpha(8.0), 3),
        adapted::<f32>(LoraConfig::new(8), 4),
    );
    srv.bind_adapter("a", &adapter_of(&ma).expect("a"))
        .expect("bind a");
    srv.bind_adapter("b", &adapter_of(&mb).expect("b"))
        .expect("bind b");
    assert_eq!(srv.adapters(), ["a", "b"]);
    assert_eq!(srv.active(), None);
    srv.set_active(Some("a")).expect("a");
    let ya = srv.run(&xs).expect("run")[0].clone();
    assert_close(&ya.to_f64_vec(), &eager(&mut ma, &x), 2e-5, 2e-5);
    srv.set_active(Some("b")).expect("b");
    let yb = srv.run(&xs).expect("run")[0].clone();
    assert_close(&yb.to_f64_vec(), &eager(&mut mb, &x), 2e-5, 2e-5);
    srv.set_active(Some("a")).expect("a again");
    assert_eq!(
        srv.run(&xs).expect("run")[0],
        ya,
        "swapping back is bit-exact"
    );

    // Rebinding the active name takes effect at once.
    let mut mc = adapted::<f32>(LoraConfig::new(2), 5);
    srv.bind_adapter("a", &adapter_of(&mc).expect("c"))
        .expect("rebind");
    assert_eq!(srv.active().as_deref(), Some("a"));
    let yc = srv.run(&xs).expect("run")[0].to_f64_vec();
    assert_close(&yc, &eager(&mut mc, &x), 2e-5, 2e-5);

    // Unbinding the active adapter falls back to the base model.
    srv.unbind_adapter("a").expect("unbind");
    assert_eq!(srv.active(), None);
    let y0 = srv.run(&xs).expect("run")[0].to_f64_vec();
    assert_close(&y0, &eager(&mut plain::<f32>(), &x), 2e-5, 2e-5);
    assert!(srv.set_active(Some("a")).is_err());
    assert!(srv.unbind_adapter("a").is_err());
    assert_eq!(srv.adapters(), ["b"]);
}

#[test]
fn adapters_that_do_not_fit_are_errors_naming_the_layer() {
    let srv = server::<f32>(&ServingConfig::new(4));
    let too_big = adapter_of(&adapted::<f32>(LoraConfig::new(6), 1)).expect("a");
    let e = srv.bind_adapter("big", &too_big).expect_err("rank 6 > 4");
    assert!(
        e.to_string().contains("fc0") && e.to_string().contains("rank 6"),
        "{e}"
    );
    let with_bias = adapter_of(&adapted::<f32>(LoraConfig::new(2).with_lora_bias(true), 1));
    let e = srv
        .bind_adapter("bias", &with_bias.expect("a"))
        .expect_err("no bias slot");
    assert!(e.to_string().contains("LoRA bias"), "{e}");
    let mut stray = adapter_of(&adapted::<f32>(LoraConfig::new(2), 1)).expect("a");
    let layer = stray.layers["fc0"].clone();
    stray.layers.insert("fc9".into(), layer);
    let e = srv
        .bind_adapter("stray", &stray)
        .expect_err("unknown layer");
    assert!(e.to_string().contains("fc9"), "{e}");
    let mut wrong = adapter_of(&adapted::<f32>(LoraConfig::new(2), 1)).expect("a");
    wrong.layers.get_mut("fc1").expect("fc1").a =
        TensorData::full(&[3, 2].into(), 1.0, cranelora::graph::DType::F32);
    let e = srv.bind_adapter("wrong", &wrong).expect_err("wrong shape");
    assert!(
        e.to_string().contains("fc1") && e.to_string().contains("[3, 2]"),
        "{e}"
    );
    assert!(
        srv.adapters().is_empty(),
        "failed binds leave nothing behind"
    );
}

fn mixed_batches_equal_row_by_row<T: Scalar>() {
    for (cfg, skip) in configs() {
        mixed_batches_equal_row_by_row_with::<T>(cfg, skip);
    }
}

/// Three adapters (LoRA, rsLoRA and DoRA or LoRA bias) in mixed batches.
fn mixed_batches_equal_row_by_row_with<T: Scalar>(mut cfg: ServingConfig, skip: &str) {
    cfg.mixed_capacity = 4;
    let srv = server::<T>(&cfg);
    let x = input::<T>();
    let xs = tensor_to_data(&x);
    let special = if skip == "dora" { "bias" } else { "dora" };
    let names = ["lora", "rslora", special];
    for (i, (name, c)) in kinds()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .enumerate()
    {
        srv.bind_adapter(
            name,
            &adapter_of(&adapted::<T>(c, 20 + i as u64)).expect("a"),
        )
        .expect("binds");
    }
    let (a, b, c) = (Some("lora"), Some("rslora"), Some(special));
    let cases: [[Option<&str>; ROWS]; 3] =
        [[a, a, b, b, c, None], [c, None, a, b, a, c], [None; ROWS]];
    for rows in cases {
        let got = srv
            .run_batch_named(std::slice::from_ref(&xs), &rows)
            .expect("mixed")[0]
            .to_f64_vec();
        let o = SIZES[2];
        for (r, name) in rows.iter().enumerate() {
            srv.set_active(*name).expect("active");
            let want = srv.run(std::slice::from_ref(&xs)).expect("single")[0].to_f64_vec();
            assert_close(
                &got[r * o..(r + 1) * o],
                &want[r * o..(r + 1) * o],
                tol::<T>(),
                tol::<T>(),
            );
        }
    }
    let bad = TensorData::i64([ROWS], vec![0, 1, 2, 3, 4, 0]).expect("ids");
    let e = srv.run_batch(&[xs.clone(), bad]).expect_err("slot 4 of 4");
    assert!(e.to_string().contains("id 4"), "{e}");
    let freed = srv.slot_of(special).expect("bound") as i64;
    srv.unbind_adapter(special).expect("unbind");
    let ids = TensorData::i64([ROWS], vec![freed; ROWS]).expect("ids");
    let (a, b) = (
        srv.run_batch(&[xs.clone(), ids]).expect("mixed"),
        srv.run_batch_named(&[xs], &[None; ROWS]).expect("mixed"),
    );
    assert_close(&a[0].to_f64_vec(), &b[0].to_f64_vec(), 0.0, 0.0);
}

#[test]
fn mixed_batches_equal_row_by_row_f32() {
    mixed_batches_equal_row_by_row::<f32>();
}

#[test]
fn mixed_batches_equal_row_by_row_f64() {
    mixed_batches_equal_row_by_row::<f64>();
}

#[test]
fn mixed_slots_run_out_with_a_clear_error() {
    let mut cfg = ServingConfig::new(4);
    cfg.mixed_capacity = 2;
    let srv = server::<f32>(&cfg);
    let a = adapter_of(&adapted::<f32>(LoraConfig::new(2), 1)).expect("a");
    srv.bind_adapter("a", &a).expect("1");
    srv.bind_adapter("b", &a).expect("2");
    srv.bind_adapter("a", &a).expect("rebinding keeps its slot");
    let e = srv.bind_adapter("c", &a).expect_err("full");
    assert!(e.to_string().contains("slots are taken"), "{e}");
    srv.unbind_adapter("a").expect("frees a slot");
    srv.bind_adapter("c", &a).expect("3");
    assert_eq!(srv.slot_of("c"), Some(0));
}

/// `JitOptions::adapter_strategy = Auto`: at 64 rows per call with many
/// calls per rebind the tiny layers are merged (the bound weight is
/// W + s·A·B, no branch); a budget that holds only the first layer's copies
/// merges that one alone. Outputs still equal the eager forward of each
/// adapter, across swaps and in mixed batches (which keep the branch).
#[test]
fn auto_strategy_merges_by_the_cost_model_and_serves_the_same_results() {
    use cranelora::jit::serve::{AdapterStrategy, ServingLoad};
    let rows = 64;
    let x = Tensor::<f32>::random_normal(&[rows, SIZES[0]], 0.0, 1.0, &mut Rng::new(5));
    let xs = [tensor_to_data(&x)];
    // 2 resident adapters, each merged and packed, f32.
    let per_copy = |i: usize, o: usize| 2 * 2 * i * o * 4;
    for (budget, merged) in [
        (usize::MAX, [true, true]),
        (per_copy(12, 20), [true, false]),
    ] {
        let mut cfg = ServingConfig::new(8);
        cfg.mixed_capacity = 4;
        // 64 rows per call: merging pays (branch 64·8·32 = 16384
        // multiply-adds per call vs folding and packing 12·20 once per 10⁶
        // calls).
        let load = ServingLoad::new(2, 1e6, budget);
        cfg.jit.adapter_strategy = AdapterStrategy::Auto(load);
        let srv = server_for_rows::<f32>(&cfg, rows);
        let got: Vec<bool> = srv.strategy().iter().map(|c| c.merged).collect();
        assert_eq!(got, merged, "{:?}", srv.strategy());
        assert!(srv.strategy()[0].reason.contains("merged is cheaper"));
        if !merged[1] {
            assert!(srv.strategy()[1].reason.contains("over the memory budget"));
        }
        let names: Vec<&str> = srv
            .compiled()
            .parameters()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert!(names.contains(&"fc0.base_layer.weight"), "{names:?}");
        assert!(
            !names.contains(&"fc0.lora_a"),
            "a merged layer has no branch: {names:?}"
        );
        assert_eq!(names.contains(&"fc1.lora_a"), !merged[1], "{names:?}");
        // The merged weight is packed for the GEMM once per bind.
        assert!(srv.compiled().packs("fc0.base_layer.weight"));
        assert!(srv.active_bindings().is_packed("fc0.base_layer.weight"));
        let mut expected = Vec::new();
        for (i, (name, c)) in kinds()
            .into_iter()
            .filter(|(n, _)| ["lora", "rslora", "rank1"].contains(n))
            .enumerate()
        {
            let mut model = adapted::<f32>(c, 40 + i as u64);
            srv.bind_adapter(name, &adapter_of(&model).expect("a"))
                .expect("bind");
            srv.set_active(Some(name)).expect("active");
            assert!(srv.active_bindings().is_packed("fc0.base_layer.weight"));
            let y = srv.run(&xs).expect("run")[0].to_f64_vec();
            let want = eager(&mut model, &x);
            assert_close(&y, &want, 2e-5, 2e-5);
            expected.push((name, want));
        }
        // The mixed-batch function keeps the branch and agrees.
        let per_row: Vec<Option<&str>> = (0..rows).map(|r| Some(expected[r % 3].0)).collect();
        let y = srv.run_batch_named(&xs, &per_row).expect("batch")[0].to_f64_vec();
        let o = SIZES[2];
        for (r, row) in y.chunks(o).enumerate() {
            let want = &expected[r % 3].1[r * o..(r + 1) * o];
            assert_close(row, want, 2e-5, 2e-5);
        }
        srv.set_active(None).expect("base");
        let y = srv.run(&xs).expect("run")[0].to_f64_vec();
        assert_close(&y, &eager(&mut plain::<f32>(), &x), 2e-5, 2e-5);
    }
    // Few rows per call and a rebind per call: folding and packing the
    // merged weight does not pay, the branch stays.
    let mut cfg = ServingConfig::new(8);
    let load = ServingLoad::new(2, 1.0, usize::MAX);
    cfg.jit.adapter_strategy = AdapterStrategy::Auto(load);
    let srv = server::<f32>(&cfg);
    assert!(srv
        .strategy()
        .iter()
        .all(|c| !c.merged && c.reason.contains("branch is cheaper")));
}
