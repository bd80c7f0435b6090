//! LoRA folding on graphs exported from core (what "jit-folded" compiles):
//! in Inference mode every adapter's products fold into one product with the
//! base, for each adapter type and variant; in Serving mode nothing folds.

use cranelora_core::export::{bindings_for, export_model, input_specs, input_values};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{Conv2d, Conv2dOptions, Dense, Embedding, Sequential};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, IdTensor, Input, Layer, Rng, Tensor};
use cranelora_graph::passes::{PassManager, PassOptions};
use cranelora_graph::{interpret, Graph, Op};
use cranelora_kernels::testing::assert_close;

fn count(g: &Graph, pred: fn(&Op) -> bool) -> usize {
    g.node_ids()
        .into_iter()
        .filter(|&id| pred(&g.node(id).unwrap().op))
        .count()
}

/// Exports `model` in `mode`, runs the default pipeline, checks the result
/// against the unoptimized graph, and returns the number of `pred` nodes
/// before and after.
fn fold(
    model: &dyn Layer<f64>,
    inputs: &[Input<'_, f64>],
    mode: ExportMode,
    pred: fn(&Op) -> bool,
) -> (usize, usize) {
    let g0 = export_model(model, &input_specs(inputs), &ExportOptions::new(mode)).unwrap();
    let mut g = g0.clone();
    PassManager::new(PassOptions::default())
        .run(&mut g)
        .unwrap();
    let b = bindings_for(model, &g0).unwrap();
    let want = interpret(&g0, &input_values(inputs), &b).unwrap();
    let got = interpret(&g, &input_values(inputs), &b).unwrap();
    let v =
        |t: &cranelora_graph::TensorData| t.as_f64().unwrap().iter().copied().collect::<Vec<f64>>();
    assert_close(&v(&got[0]), &v(&want[0]), 1e-10, 1e-12);
    (count(&g0, pred), count(&g, pred))
}

fn is_matmul(op: &Op) -> bool {
    matches!(op, Op::MatMul)
}

fn cfg() -> LoraConfig {
    LoraConfig::new(2)
        .with_alpha(4.0)
        .with_init(LoraInit::Random)
        .with_seed(3)
}

fn mlp(c: LoraConfig) -> Sequential<f64> {
    let mut m = Sequential::new()
        .with(
            "fc1",
            Dense::new(6, 5, true, Activation::GeluTanh, &mut Rng::new(1)).unwrap(),
        )
        .unwrap()
        .with(
            "fc2",
            Dense::new(5, 3, true, Activation::Identity, &mut Rng::new(2)).unwrap(),
        )
        .unwrap();
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2"], c)).unwrap();
    m
}

#[test]
fn dense_adapters_fold_to_one_matmul_each() {
    let x = Tensor::random_normal(&[4, 6], 0.0, 1.0, &mut Rng::new(5));
    for c in [
        cfg(),
        cfg().with_rslora(true),
        cfg().with_lora_bias(true),
        cfg().with_dora(true),
    ] {
        let (before, after) = fold(
            &mlp(c),
            &[Input::Float(&x)],
            ExportMode::Inference,
            is_matmul,
        );
        // Base + two LoRA products per layer (DoRA's norm adds A·B per layer).
        let expected_before = if c.use_dora { 8 } else { 6 };
        assert_eq!((before, after), (expected_before, 2), "{c:?}");
    }
}

#[test]
fn serving_mode_keeps_adapters_unfolded() {
    let x = Tensor::random_normal(&[4, 6], 0.0, 1.0, &mut Rng::new(5));
    let (before, after) = fold(
        &mlp(cfg()),
        &[Input::Float(&x)],
        ExportMode::Serving,
        is_matmul,
    );
    assert_eq!((before, after), (6, 6));
}

#[test]
fn conv_and_embedding_adapters_fold() {
    let img = Tensor::random_normal(&[1, 2, 5, 5], 0.0, 1.0, &mut Rng::new(6));
    let opts = Conv2dOptions {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let mut conv = Sequential::new()
        .with(
            "conv",
            Conv2d::new(2, 3, (3, 3), opts, true, &mut Rng::new(7)).unwrap(),
        )
        .unwrap();
    apply_lora(&mut conv, &ApplyConfig::new(&["conv"], cfg())).unwrap();
    let (before, after) = fold(&conv, &[Input::Float(&img)], ExportMode::Inference, |op| {
        matches!(op, Op::Conv2d(..))
    });
    assert_eq!(after, 1, "conv: {before} → {after}");
    let ids = IdTensor::from_vec(vec![0, 3, 5, 3], &[2, 2]).unwrap();
    let mut emb = Sequential::new()
        .with("emb", Embedding::new(6, 4, None, &mut Rng::new(8)).unwrap())
        .unwrap();
    apply_lora(&mut emb, &ApplyConfig::new(&["emb"], cfg())).unwrap();
    let (_, gathers) = fold(&emb, &[Input::Ids(&ids)], ExportMode::Inference, |op| {
        matches!(op, Op::Gather)
    });
    let (_, matmuls) = fold(&emb, &[Input::Ids(&ids)], ExportMode::Inference, is_matmul);
    assert_eq!((gathers, matmuls), (1, 0));
}
