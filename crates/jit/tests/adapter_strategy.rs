//! `JitOptions::adapter_strategy`: the compiler merges runtime-bound
//! adapters per layer by the cost model of `serve/strategy.rs`, says why in
//! `CompileReport::adapters`, and a merged function bound to `W + s·A·B`
//! (computed here by a naive loop) gives the interpreter's result on the
//! unmerged Serving export.

use crate::common;

use common::assert_same;
use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{Conv2d, Conv2dOptions, Dense, Embedding, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, IdTensor, Input, Layer, Rng, Tensor};
use cranelora_graph::{interpret, DType, Graph, TensorData};
use cranelora_jit::serve::{AdapterStrategy, LayerChoice, ServingLoad};
use cranelora_jit::{compile, Bindings, CompiledGraph, JitOptions};
use cranelora_kernels::Scalar;

const ROWS: usize = 64;
const SCALING: f64 = 2.0; // α 8 / r 4

fn lora_cfg(dora: bool) -> LoraConfig {
    LoraConfig::new(4)
        .with_alpha(8.0)
        .with_init(LoraInit::Random)
        .with_dora(dora)
}

/// fc0 12→20 GELU(tanh), fc1 20→10, LoRA rank 4 on both (DoRA on fc1 if asked).
fn mlp<T: Scalar>(dora_fc1: bool) -> Sequential<T> {
    let mut rng = Rng::new(3);
    let dense = |i, o, act, rng: &mut Rng| Dense::new(i, o, true, act, rng).expect("dense");
    let mut m = Sequential::new()
        .with("fc0", dense(12, 20, Activation::GeluTanh, &mut rng))
        .and_then(|m| m.with("fc1", dense(20, 10, Activation::Identity, &mut rng)))
        .expect("mlp");
    apply_lora(&mut m, &ApplyConfig::new(&["fc0"], lora_cfg(false))).expect("fc0");
    apply_lora(&mut m, &ApplyConfig::new(&["fc1"], lora_cfg(dora_fc1))).expect("fc1");
    m.set_training(false);
    m
}

fn serving_graph<T: Scalar>(m: &dyn Layer<T>, inputs: &[Input<'_, T>]) -> Graph {
    export_model(
        m,
        &input_specs(inputs),
        &ExportOptions::new(ExportMode::Serving),
    )
    .expect("export")
}

fn options(strategy: AdapterStrategy) -> JitOptions {
    JitOptions::default()
        .with_lora_fold(false)
        .with_adapter_strategy(strategy)
}

/// The model's bindings with every merged layer's A, B replaced by
/// `P.base_layer.weight = W + s·A·B` (naive loop over the graph's values).
fn merged_bindings(gb: &cranelora_graph::Bindings, choices: &[LayerChoice]) -> Bindings {
    let mut b = Bindings::from_map(gb).expect("bindings");
    for c in choices.iter().filter(|c| c.merged) {
        let w = c.base.as_ref().expect("a merged layer carries W");
        let (a, bb) = (
            &gb[&format!("{}.lora_a", c.path)],
            &gb[&format!("{}.lora_b", c.path)],
        );
        let (&[i, r], &[_, o]) = (a.shape().dims(), bb.shape().dims()) else {
            panic!("A, B are matrices")
        };
        let (av, bv) = (a.to_f64_vec(), bb.to_f64_vec());
        let mut v = w.to_f64_vec();
        for row in 0..i {
            for col in 0..o {
                let d: f64 = (0..r).map(|k| av[row * r + k] * bv[k * o + col]).sum();
                v[row * o + col] += SCALING * d;
            }
        }
        let t = match w.dtype() {
            DType::F32 => TensorData::f32([i, o], v.iter().map(|&x| x as f32).collect()),
            _ => TensorData::f64([i, o], v),
        };
        b.insert(format!("{}.base_layer.weight", c.path), t.expect("W'"))
            .expect("insert");
    }
    b
}

fn tol<T: Scalar>() -> (f64, f64) {
    match T::DTYPE {
        DType::F32 => (1e-4, 1e-5),
        _ => (1e-10, 1e-12),
    }
}

/// Compiles `g` with `strategy` and checks its result against the interpreter.
fn compile_and_check<T: Scalar>(
    g: &Graph,
    gb: &cranelora_graph::Bindings,
    inputs: &[TensorData],
    strategy: AdapterStrategy,
) -> CompiledGraph {
    let c = compile(g, &options(strategy)).expect("compile");
    let expected = interpret(g, inputs, gb).expect("interp");
    let out = c
        .run(inputs, &merged_bindings(gb, &c.report().adapters))
        .expect("run");
    let (rtol, atol) = tol::<T>();
    assert_same(&out[0], &expected[0], rtol, atol);
    c
}

fn param_names(c: &CompiledGraph) -> Vec<String> {
    c.parameters().iter().map(|s| s.name.clone()).collect()
}

fn auto_merges_one_resident_adapter_at_a_large_batch<T: Scalar>() {
    let m = mlp::<T>(false);
    let x = Tensor::<T>::random_normal(&[ROWS, 12], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    let (g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    // 1 resident adapter, rebound every 10⁶ calls, 64 rows: the branch
    // (64·4·32 multiply-adds for fc0) costs more than folding and packing
    // 12·20 once per 10⁶ calls.
    let auto = AdapterStrategy::Auto(ServingLoad::new(1, 1e6, usize::MAX));
    let c = compile_and_check::<T>(&g, &gb, &values, auto);
    let report = &c.report().adapters;
    assert_eq!(report.len(), 2, "{report:?}");
    for choice in report {
        assert!(choice.merged, "{choice}");
        assert!(choice.reason.contains("merged is cheaper"), "{choice}");
        assert!(choice.reason.contains("64 rows"), "{choice}");
    }
    let names = param_names(&c);
    assert!(names.iter().all(|n| !n.contains("lora")), "{names:?}");
    assert!(names.contains(&"fc1.base_layer.weight".to_string()));
    // Unmerged keeps every branch, with the same result.
    let c = compile_and_check::<T>(&g, &gb, &values, AdapterStrategy::Unmerged);
    assert!(c.report().adapters.iter().all(|c| !c.merged));
    assert!(param_names(&c).contains(&"fc0.lora_a".to_string()));
}

#[test]
fn auto_merges_one_resident_adapter_at_a_large_batch_f32() {
    auto_merges_one_resident_adapter_at_a_large_batch::<f32>();
}

#[test]
fn auto_merges_one_resident_adapter_at_a_large_batch_f64() {
    auto_merges_one_resident_adapter_at_a_large_batch::<f64>();
}

fn auto_keeps_the_branch_when_many_adapters_exceed_the_budget<T: Scalar>() {
    let m = mlp::<T>(false);
    let x = Tensor::<T>::random_normal(&[ROWS, 12], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    let (g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    // 1000 resident adapters: 1000 merged (and packed) copies of fc0 need
    // 2·1000·240 elements, over a 64 KiB budget; fc1's 2·1000·200 too.
    let e = std::mem::size_of::<T>();
    let auto = AdapterStrategy::Auto(ServingLoad::new(1000, 1e6, 64 << 10));
    let c = compile_and_check::<T>(&g, &gb, &values, auto);
    for choice in &c.report().adapters {
        assert!(!choice.merged, "{choice}");
        assert!(choice.reason.contains("over the memory budget"), "{choice}");
        let bytes = 2 * 1000 * if choice.path == "fc0" { 240 } else { 200 } * e;
        assert!(choice.reason.contains(&format!("{bytes} B")), "{choice}");
    }
    assert!(param_names(&c).contains(&"fc1.lora_b".to_string()));
    // A budget for fc0's copies alone merges fc0 alone.
    let auto = AdapterStrategy::Auto(ServingLoad::new(1000, 1e6, 2 * 1000 * 240 * e));
    let c = compile_and_check::<T>(&g, &gb, &values, auto);
    let merged: Vec<bool> = c.report().adapters.iter().map(|c| c.merged).collect();
    assert_eq!(merged, [true, false], "{:?}", c.report().adapters);
}

#[test]
fn auto_keeps_the_branch_when_many_adapters_exceed_the_budget_f32() {
    auto_keeps_the_branch_when_many_adapters_exceed_the_budget::<f32>();
}

#[test]
fn auto_keeps_the_branch_when_many_adapters_exceed_the_budget_f64() {
    auto_keeps_the_branch_when_many_adapters_exceed_the_budget::<f64>();
}

/// The rebind frequency and the batch decide (with K = 8 stated, so the
/// numbers do not move with the measured default): fc0's fold and pack
/// cost 240·5 + 8·240 = 3120 multiply-adds per bind; at 16 rows its
/// branch (16·4·32 = 2048 per call) is dearer from 2 calls per rebind,
/// cheaper when every call rebinds; at 2 rows (256 per call) the branch
/// wins at 2 calls per rebind, and loses when rebinds are rare.
#[test]
fn frequent_rebinds_and_small_batches_keep_the_branch() {
    let m = mlp::<f64>(false);
    let cases = [
        (16, 1e9, true),
        (16, 2.0, true),
        (16, 1.0, false),
        (2, 2.0, false),
        (2, 1e9, true),
    ];
    for (rows, calls, merged) in cases {
        let x = Tensor::<f64>::random_normal(&[rows, 12], 0.0, 1.0, &mut Rng::new(1));
        let g = serving_graph(&m, &[Input::Float(&x)]);
        let load = ServingLoad {
            move_cost: 8.0,
            ..ServingLoad::new(1, calls, usize::MAX)
        };
        let choices = cranelora_jit::serve::plan(&g, &AdapterStrategy::Auto(load));
        let why = if merged {
            "merged is cheaper"
        } else {
            "branch is cheaper"
        };
        assert!(
            choices
                .iter()
                .all(|c| c.merged == merged && c.reason.contains(why)),
            "{rows} rows, {calls} calls per rebind: {choices:?}"
        );
    }
}

/// DoRA keeps its branch under every strategy (the report says so); the
/// plain layer beside it merges under `Merged`.
#[test]
fn dora_layers_stay_unmerged_and_say_why() {
    let m = mlp::<f64>(true);
    let x = Tensor::<f64>::random_normal(&[ROWS, 12], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    let (g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    let c = compile_and_check::<f64>(&g, &gb, &values, AdapterStrategy::Merged);
    let a = &c.report().adapters;
    assert!(a[0].merged && a[0].reason == "strategy Merged", "{a:?}");
    assert!(!a[1].merged && a[1].reason.contains("DoRA"), "{a:?}");
}

/// An Embedding's table merges (the gather reads the bound table); a
/// Conv2d keeps its branch with the reason; both give the interpreter's
/// result.
#[test]
fn embedding_merges_and_conv2d_keeps_its_branch() {
    let mut rng = Rng::new(2);
    let emb = Embedding::<f64>::new(10, 6, None, &mut rng).expect("emb");
    let mut m = Sequential::new().with("emb", emb).expect("seq");
    apply_lora(&mut m, &ApplyConfig::new(&["emb"], lora_cfg(false))).expect("apply");
    m.set_training(false);
    let ids =
        IdTensor::from_vec((0..ROWS as i64).map(|k| k * 7 % 10).collect(), &[ROWS]).expect("ids");
    let inputs = [Input::Ids(&ids)];
    let (g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    let auto = AdapterStrategy::Auto(ServingLoad::new(1, 1e3, usize::MAX));
    let c = compile_and_check::<f64>(&g, &gb, &values, auto);
    let a = &c.report().adapters;
    assert!(a.len() == 1 && a[0].merged, "{a:?}");
    assert!(param_names(&c).contains(&"emb.base_layer.weight".to_string()));

    let opts = Conv2dOptions {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let conv = Conv2d::<f64>::new(2, 3, (3, 3), opts, true, &mut rng).expect("conv");
    let mut m = Sequential::new().with("conv", conv).expect("seq");
    apply_lora(
        &mut m,
        &ApplyConfig::new(
            &["conv"],
            LoraConfig::new(2)
                .with_alpha(4.0)
                .with_init(LoraInit::Random),
        ),
    )
    .expect("apply");
    m.set_training(false);
    let x = Tensor::random_normal(&[2, 2, 5, 5], 0.0, 1.0, &mut Rng::new(8));
    let inputs = [Input::Float(&x)];
    let (g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    let c = compile_and_check::<f64>(&g, &gb, &values, AdapterStrategy::Merged);
    let a = &c.report().adapters;
    assert!(
        a.len() == 1 && !a[0].merged && a[0].reason.contains("Conv2d"),
        "{a:?}"
    );
}

/// `measure_move_cost` on a small shape: finite, positive per-element costs.
#[test]
fn the_move_cost_is_measured() {
    use cranelora_jit::serve::{measure_move_cost, MoveCostShape};
    let shape = MoveCostShape {
        dtype: DType::F32,
        fan_in: 64,
        fan_out: 64,
        rank: 4,
        rows: 8,
        reps: 5,
    };
    let k = measure_move_cost(&shape).expect("measure");
    assert!(k.madd_ns > 0.0 && k.madd_ns.is_finite(), "{k:?}");
    assert!(k.pack_ns >= 0.0 && k.move_cost.is_finite(), "{k:?}");
}

/// W1's shapes (1024×1024, rank 16, 64 rows, f32), 200 calls each, three runs:
/// `cargo test -p cranelora-jit --test integration adapter_strategy:: -- --ignored --nocapture`
/// (docs/jit.md, "Merged or unmerged", records the results).
#[test]
#[ignore = "a measurement; run by hand"]
fn measure_move_cost_on_w1_shapes() {
    use cranelora_jit::serve::{measure_move_cost, MoveCostShape};
    let reps = std::env::var("MOVE_COST_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    // W1's batch; at 256 rows the base GEMM's run-to-run noise on a
    // shared machine exceeds the packing time (t_param − t_const ≤ 0 in
    // two of four runs), so that shape does not measure K.
    for _ in 0..3 {
        let rows = 64;
        let shape = MoveCostShape {
            dtype: DType::F32,
            fan_in: 1024,
            fan_out: 1024,
            rank: 16,
            rows,
            reps,
        };
        let k = measure_move_cost(&shape).expect("measure");
        println!(
            "rows {rows}: pack {:.3} ns/element, branch {:.4} ns/madd, K = {:.2}",
            k.pack_ns, k.madd_ns, k.move_cost
        );
    }
}

/// A training step's graph (the gradients of A and B read the branch)
/// never merges: merging would drop what the gradients need. The report
/// says why; the step still gives the interpreter's outputs.
#[test]
fn a_training_graph_keeps_its_branches() {
    use cranelora_graph::{autodiff::grad, ReduceKind};
    let m = mlp::<f64>(false);
    let x = Tensor::<f64>::random_normal(&[ROWS, 12], 0.0, 1.0, &mut Rng::new(9));
    let inputs = [Input::Float(&x)];
    let (mut g, values) = (serving_graph(&m, &inputs), input_values(&inputs));
    let gb = bindings_for(&m, &g).expect("bindings");
    let y = g.outputs()[0];
    let loss = g.reduce(y, ReduceKind::Sum, &[0, 1], false).expect("loss");
    let params: Vec<_> = g
        .node_ids()
        .into_iter()
        .filter(|&id| {
            matches!(
                g.node(id).map(|n| &n.op),
                Some(cranelora_graph::Op::Parameter { .. })
            )
        })
        .collect();
    let grads = grad(&mut g, loss, &params).expect("grad");
    g.set_outputs(&[&[loss][..], &grads].concat())
        .expect("outputs");
    let auto = AdapterStrategy::Auto(ServingLoad::new(1, 1e6, usize::MAX));
    let c = compile(&g, &options(auto)).expect("compile");
    for choice in &c.report().adapters {
        assert!(
            !choice.merged && choice.reason.contains("outside"),
            "{choice}"
        );
    }
    let out = c
        .run(&values, &Bindings::from_map(&gb).expect("b"))
        .expect("run");
    let expected = interpret(&g, &values, &gb).expect("interp");
    for (o, e) in out.iter().zip(&expected) {
        assert_same(o, e, 1e-10, 1e-12);
    }
}
