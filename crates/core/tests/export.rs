//! Graph export of every layer, adapter and a few models: the interpreter
//! run on `export_model(layer)` equals the layer's eval-mode forward in
//! every export mode (rtol 1e-6 in f32, 1e-12 in f64), each mode makes
//! exactly the Parameters it promises, and `supports_jit` tells the truth.
//! Run with `BLESS=1` to rewrite `tests/golden/lora_mlp_export.txt`.

use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_from_data, ExportMode,
    ExportOptions, InputSpec, WeightBinding,
};
use cranelora_core::layers::{
    Conv2d, Conv2dOptions, Dense, Dropout, Embedding, FullyConnected, LayerNorm,
    MultiHeadAttention, Residual, Sequential,
};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraAdapter, LoraConfig, LoraInit};
use cranelora_core::testing::assert_close;
use cranelora_core::{
    Activation, ActivationLayer, Error, IdTensor, Input, Layer, Mask, Result, Rng, Tensor,
};
use cranelora_graph::{dump, interpret, jit_lowerable, to_dot, DType, Graph, NodeId, Op};
use cranelora_kernels::Scalar;
use std::collections::BTreeSet;
use std::path::PathBuf;

const MODES: [ExportMode; 3] = [
    ExportMode::Inference,
    ExportMode::Training,
    ExportMode::Serving,
];

fn tol<T: Scalar>() -> f64 {
    if T::DTYPE == DType::F32 {
        1e-6
    } else {
        1e-12
    }
}

fn randn<T: Scalar>(shape: &[usize], seed: u64) -> Tensor<T> {
    Tensor::random_normal(shape, 0.0, 1.0, &mut Rng::new(seed))
}

/// The Parameter names `mode` promises: none, the trainable weights, or the adapter weights.
fn promised<T: Scalar>(layer: &dyn Layer<T>, mode: ExportMode) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    layer.for_each_weight("", &mut |path, w| {
        let own = path.rsplit('.').next().unwrap_or(path);
        let parameter = match mode {
            ExportMode::Inference => false,
            ExportMode::Training => w.trainable(),
            ExportMode::Serving => own.starts_with("lora_"),
        };
        if parameter {
            out.insert(path.to_string());
        }
    });
    out
}

fn parameters(g: &Graph) -> BTreeSet<String> {
    let ops = g.node_ids().into_iter().filter_map(|id| g.node(id));
    ops.filter_map(|n| match &n.op {
        Op::Parameter { name } => Some(name.clone()),
        _ => None,
    })
    .collect()
}

fn all_lowerable(g: &Graph) -> bool {
    let mut nodes = g.node_ids().into_iter().filter_map(|id| g.node(id));
    nodes.all(|n| jit_lowerable(&n.op))
}

/// Exports `layer` in every mode and checks the interpreter against the
/// eval-mode forward; returns the Inference graph.
#[track_caller]
fn check<T: Scalar>(layer: &mut dyn Layer<T>, inputs: &[Input<'_, T>]) -> Graph {
    layer.set_training(false);
    let expected = layer.forward(inputs).expect("eager forward");
    let (specs, values) = (input_specs(inputs), input_values(inputs));
    let mut graphs = Vec::new();
    for mode in MODES {
        let g = export_model(&*layer, &specs, &ExportOptions::new(mode))
            .unwrap_or_else(|e| panic!("{} {mode:?}: {e}", layer.kind()));
        assert_eq!(parameters(&g), promised(&*layer, mode), "{mode:?}");
        let bindings = bindings_for(&*layer, &g).expect("bindings");
        let out = interpret(&g, &values, &bindings).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let got = tensor_from_data::<T>(&out[0]).expect("float output");
        assert_eq!(got.shape(), expected.shape(), "{mode:?}");
        assert_close(&got.to_vec(), &expected.to_vec(), tol::<T>(), 0.0);
        assert_eq!(layer.supports_jit(), all_lowerable(&g));
        graphs.push(g);
    }
    graphs.swap_remove(0)
}

const ACTIVATIONS: [Activation; 7] = [
    Activation::Identity,
    Activation::Relu,
    Activation::GeluErf,
    Activation::GeluTanh,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Silu,
];

fn dense_and_activation_cases<T: Scalar>() {
    let x = randn::<T>(&[2, 3, 4], 1);
    for act in ACTIVATIONS {
        for bias in [true, false] {
            let mut d = Dense::<T>::new(4, 5, bias, act, &mut Rng::new(2)).expect("dense");
            check(&mut d, &[Input::Float(&x)]);
        }
        check(&mut ActivationLayer::<T>::new(act), &[Input::Float(&x)]);
    }
    let mut fc = FullyConnected::<T>::new(4, 3, true, &mut Rng::new(3)).expect("fc");
    check(&mut fc, &[Input::Float(&x)]);
}

#[test]
fn dense_fully_connected_and_activations_match_eager() {
    dense_and_activation_cases::<f32>();
    dense_and_activation_cases::<f64>();
}

fn conv<T: Scalar>(stride: usize, padding: usize, dilation: usize, bias: bool) -> Conv2d<T> {
    let opts = Conv2dOptions {
        stride: (stride, 1),
        padding: (padding, padding + 1),
        dilation: (dilation, 1),
    };
    Conv2d::new(2, 3, (3, 2), opts, bias, &mut Rng::new(4)).expect("conv")
}

fn leaf_cases<T: Scalar>() {
    let img = randn::<T>(&[2, 2, 7, 5], 5);
    check(&mut conv::<T>(2, 1, 2, true), &[Input::Float(&img)]);
    check(&mut conv::<T>(1, 0, 1, false), &[Input::Float(&img)]);
    let ids = IdTensor::from_vec(vec![0, 3, 6, 3, 1, 0], &[2, 3]).expect("ids");
    let mut emb = Embedding::<T>::new(7, 5, Some(0), &mut Rng::new(6)).expect("embedding");
    check(&mut emb, &[Input::Ids(&ids)]);
    let x = randn::<T>(&[2, 3, 6], 7);
    let (g, b) = (randn::<T>(&[6], 8), randn::<T>(&[6], 9));
    check(
        &mut LayerNorm::from_weights(g, b, 1e-5).expect("ln"),
        &[Input::Float(&x)],
    );
    let mut plain = LayerNorm::<T>::new(6, 1e-3, false).expect("ln");
    check(&mut plain, &[Input::Float(&x)]);
    let g = check(
        &mut Dropout::<T>::new(0.5, 1).expect("p"),
        &[Input::Float(&x)],
    );
    assert_eq!(g.len(), 1, "dropout exports as the identity:\n{g}");
}

#[test]
fn conv_embedding_layer_norm_and_dropout_match_eager() {
    leaf_cases::<f32>();
    leaf_cases::<f64>();
}

fn mlp<T: Scalar>() -> Sequential<T> {
    let rng = &mut Rng::new(10);
    Sequential::new()
        .with(
            "fc1",
            Dense::new(6, 8, true, Activation::GeluErf, rng).expect("fc1"),
        )
        .and_then(|s| s.with("drop", Dropout::new(0.1, 3)?))
        .and_then(|s| {
            let inner = Dense::new(8, 8, true, Activation::Silu, rng)?;
            s.with("block", Residual::new(inner))
        })
        .and_then(|s| s.with("fc2", FullyConnected::new(8, 4, false, rng)?))
        .expect("mlp")
}

#[test]
fn containers_match_eager() {
    check(&mut mlp::<f32>(), &[Input::Float(&randn(&[5, 6], 11))]);
    check(&mut mlp::<f64>(), &[Input::Float(&randn(&[5, 6], 11))]);
    let g = check(
        &mut Sequential::<f64>::new(),
        &[Input::Float(&randn(&[2, 3], 1))],
    );
    assert_eq!(g.len(), 1, "an empty Sequential is the identity");
}

/// A `[batch, keys]` mask whose batch entry 1 hides every key.
fn mask_with_empty_row(keys: usize) -> Mask {
    let keep = (0..2 * keys).map(|i| i < keys && i % 3 != 1).collect();
    Mask::from_vec(keep, &[2, keys]).expect("mask")
}

fn attention_cases<T: Scalar>() {
    let x = randn::<T>(&[2, 4, 8], 12);
    let src = randn::<T>(&[2, 5, 8], 13);
    let (m4, m5) = (mask_with_empty_row(4), mask_with_empty_row(5));
    for causal in [false, true] {
        let mut mha = MultiHeadAttention::<T>::new(8, 2, &mut Rng::new(14)).expect("mha");
        mha.set_causal(causal);
        check(&mut mha, &[Input::Float(&x)]);
        check(&mut mha, &[Input::Float(&x), Input::Mask(&m4)]);
        check(
            &mut mha,
            &[Input::Float(&x), Input::Float(&src), Input::Mask(&m5)],
        );
    }
}

#[test]
fn attention_with_masks_matches_eager_including_a_fully_masked_row() {
    attention_cases::<f32>();
    attention_cases::<f64>();
    // Eager defines a query row with no visible key as zero attention: the
    // output is the output projection's bias, finite.
    let mut mha = MultiHeadAttention::<f64>::new(8, 2, &mut Rng::new(14)).expect("mha");
    let (x, m) = (randn::<f64>(&[2, 4, 8], 12), mask_with_empty_row(4));
    check(&mut mha, &[Input::Float(&x), Input::Mask(&m)]);
    let y = mha
        .forward(&[Input::Float(&x), Input::Mask(&m)])
        .expect("y");
    let bias = mha.child("output").expect("output").named_weights()[1]
        .1
        .to_vec();
    assert_close(&y.to_vec()[32..40], &bias, 0.0, 0.0);
}

fn random(rank: usize) -> LoraConfig {
    LoraConfig::new(rank)
        .with_alpha(3.0)
        .with_init(LoraInit::Random)
        .with_seed(9)
}

/// Plain, rsLoRA, DoRA, LoRA bias, each frozen and not (DoRA excludes a LoRA bias).
fn variants(with_bias: bool) -> Vec<LoraConfig> {
    let mut v = vec![
        random(2),
        random(2).with_rslora(true),
        random(2).with_dora(true),
        random(2).with_rslora(true).with_dora(true),
    ];
    if with_bias {
        v.push(random(2).with_lora_bias(true));
    }
    let unfrozen: Vec<LoraConfig> = v.iter().map(|c| c.with_freeze_base(false)).collect();
    v.extend(unfrozen);
    v
}

fn adapter_cases<T: Scalar>() {
    let x = randn::<T>(&[2, 3, 6], 15);
    let img = randn::<T>(&[2, 2, 7, 5], 16);
    let ids = IdTensor::from_vec(vec![0, 3, 6, 3, 1, 0], &[2, 3]).expect("ids");
    for cfg in variants(true) {
        let base = Dense::<T>::new(6, 5, true, Activation::GeluTanh, &mut Rng::new(17));
        let mut a = LoraAdapter::wrap(base.expect("dense"), cfg).expect("adapter");
        check(&mut a, &[Input::Float(&x)]);
        let fc = FullyConnected::<T>::new(6, 4, false, &mut Rng::new(18)).expect("fc");
        check(
            &mut LoraAdapter::wrap(fc, cfg).expect("fc adapter"),
            &[Input::Float(&x)],
        );
        let mut c = LoraAdapter::wrap(conv::<T>(2, 1, 1, true), cfg).expect("conv adapter");
        check(&mut c, &[Input::Float(&img)]);
    }
    for cfg in variants(false) {
        let emb = Embedding::<T>::new(7, 5, None, &mut Rng::new(19)).expect("embedding");
        check(
            &mut LoraAdapter::wrap(emb, cfg).expect("adapter"),
            &[Input::Ids(&ids)],
        );
    }
}

#[test]
fn every_adapter_type_and_variant_matches_eager() {
    adapter_cases::<f32>();
    adapter_cases::<f64>();
}

#[test]
fn attention_projection_adapters_match_eager() {
    let x = randn::<f32>(&[2, 4, 8], 20);
    let m = mask_with_empty_row(4);
    for cfg in variants(true) {
        let mut mha = MultiHeadAttention::<f32>::new(8, 2, &mut Rng::new(21)).expect("mha");
        apply_lora(&mut mha, &ApplyConfig::new(&["query", "value"], cfg)).expect("apply");
        check(&mut mha, &[Input::Float(&x), Input::Mask(&m)]);
    }
}

/// attention (with masks) + residual + LayerNorm + FFN + residual + LayerNorm.
fn transformer_block<T: Scalar>() -> Result<Sequential<T>> {
    let rng = &mut Rng::new(22);
    let mut mha = MultiHeadAttention::new(8, 2, rng)?;
    mha.set_causal(true);
    let ffn = Sequential::new()
        .with("fc1", Dense::new(8, 16, true, Activation::GeluErf, rng)?)?
        .with("drop", Dropout::new(0.1, 1)?)?
        .with("fc2", Dense::new(16, 8, true, Activation::Identity, rng)?)?;
    Sequential::new()
        .with("attention", Residual::new(mha))?
        .with(
            "ln1",
            LayerNorm::from_weights(randn(&[8], 23), randn(&[8], 24), 1e-5)?,
        )?
        .with("ffn", Residual::new(ffn))?
        .with("ln2", LayerNorm::new(8, 1e-5, true)?)
}

#[test]
fn models_with_adapters_match_eager() {
    let mut m = mlp::<f32>();
    apply_lora(&mut m, &ApplyConfig::new(&["fc1", "fc2"], random(2))).expect("apply");
    check(&mut m, &[Input::Float(&randn(&[5, 6], 25))]);
    let cfgs = [random(2), random(2).with_dora(true).with_freeze_base(false)];
    for cfg in cfgs {
        let targets = ["query", "value", "fc1"];
        let x = randn::<f64>(&[2, 4, 8], 26);
        let mask = mask_with_empty_row(4);
        let mut block = transformer_block::<f64>().expect("block");
        apply_lora(&mut block, &ApplyConfig::new(&targets, cfg)).expect("apply");
        check(&mut block, &[Input::Float(&x), Input::Mask(&mask)]);
        let mut block = transformer_block::<f32>().expect("block");
        apply_lora(&mut block, &ApplyConfig::new(&targets, cfg)).expect("apply");
        check(&mut block, &[Input::Float(&x.cast()), Input::Mask(&mask)]);
    }
}

fn node_named(g: &Graph, name: &str) -> NodeId {
    let mut ids = g.node_ids().into_iter();
    let found = ids.find(|&id| g.node(id).and_then(|n| n.name.as_deref()) == Some(name));
    found.unwrap_or_else(|| panic!("no node named {name}:\n{g}"))
}

fn name_of(g: &Graph, id: NodeId) -> &str {
    g.node(id).and_then(|n| n.name.as_deref()).unwrap_or("")
}

#[test]
fn adapter_graph_joins_base_and_branch_with_one_add_then_activates() {
    let base = Dense::<f32>::new(6, 5, true, Activation::Tanh, &mut Rng::new(1)).expect("d");
    let model = Sequential::new()
        .with("fc1", LoraAdapter::wrap(base, random(2)).expect("adapter"))
        .expect("model");
    let g = export_model(
        &model,
        &[InputSpec::float("x", &[3, 6])],
        &ExportOptions::default(),
    )
    .expect("export");
    let add = node_named(&g, "fc1.add");
    let operands: Vec<&str> = g.operands(add).iter().map(|&o| name_of(&g, o)).collect();
    assert_eq!(operands, ["fc1.base_layer.bias_add", "fc1.lora_scale"]);
    assert_eq!(g.users(add), [node_named(&g, "fc1.act")]);
    let adds = g.node_ids().into_iter().filter(|&id| {
        let n = g.node(id).expect("live");
        n.op == Op::Add && !name_of(&g, id).contains("bias_add")
    });
    assert_eq!(adds.count(), 1, "one Add joins the paths:\n{g}");
    let dot = to_dot(&g);
    assert!(dot.contains("label=\"LoRA fc1\""), "{dot}");
    for suffix in ["lora_a", "lora_b", "lora_xa", "lora_xab", "lora_scale"] {
        node_named(&g, &format!("fc1.{suffix}"));
    }
}

#[test]
fn dora_norm_is_behind_a_stop_gradient() {
    let base = Conv2d::<f64>::new(
        2,
        3,
        (3, 3),
        Conv2dOptions::default(),
        true,
        &mut Rng::new(1),
    );
    let a = LoraAdapter::wrap(base.expect("conv"), random(2).with_dora(true)).expect("a");
    let specs = [InputSpec::float("x", &[1, 2, 5, 5])];
    let g = export_model(&a, &specs, &ExportOptions::new(ExportMode::Serving)).expect("export");
    let norm = node_named(&g, "lora_dora_norm");
    assert_eq!(g.node(norm).map(|n| &n.op), Some(&Op::StopGradient));
    assert_eq!(g.node(norm).map(|n| n.shape.dims().to_vec()), Some(vec![3]));
    let expected: BTreeSet<String> = ["lora_a", "lora_b", "lora_magnitude"]
        .map(String::from)
        .into();
    assert_eq!(parameters(&g), expected);
}

#[test]
fn overrides_pick_the_binding_per_weight_path() {
    let mut m = mlp::<f64>();
    apply_lora(&mut m, &ApplyConfig::new(&["fc1"], random(2))).expect("apply");
    let specs = [InputSpec::float("x", &[2, 6])];
    let opts = ExportOptions::new(ExportMode::Inference)
        .with_override("fc2.weight", WeightBinding::Parameter);
    let g = export_model(&m, &specs, &opts).expect("export");
    assert_eq!(parameters(&g), BTreeSet::from(["fc2.weight".to_string()]));
    let opts = ExportOptions::new(ExportMode::Serving)
        .with_override("fc1.lora_b", WeightBinding::Constant)
        .with_override("fc1.base_layer.bias", WeightBinding::Parameter);
    let g = export_model(&m, &specs, &opts).expect("export");
    let expected = ["fc1.base_layer.bias", "fc1.lora_a"].map(String::from);
    assert_eq!(parameters(&g), BTreeSet::from(expected));
    let x = randn::<f64>(&[2, 6], 1);
    let out = interpret(
        &g,
        &input_values(&[Input::Float(&x)]),
        &bindings_for(&m, &g).expect("b"),
    );
    m.set_training(false);
    let expected = m.forward_float(&x).expect("forward");
    let got = tensor_from_data::<f64>(&out.expect("run")[0]).expect("f64");
    assert_close(&got.to_vec(), &expected.to_vec(), 1e-12, 0.0);
}

/// A layer with no graph export.
#[derive(Clone, Debug)]
struct Opaque;

impl Layer<f64> for Opaque {
    fn kind(&self) -> &'static str {
        "Opaque"
    }
    fn forward(&mut self, inputs: &[Input<'_, f64>]) -> Result<Tensor<f64>> {
        cranelora_core::layer::Inputs::new(inputs, "Opaque")
            .float(0)
            .cloned()
    }
    fn backward(&mut self, g: &Tensor<f64>) -> Result<Option<Tensor<f64>>> {
        Ok(Some(g.clone()))
    }
    fn is_training(&self) -> bool {
        false
    }
    fn set_own_training(&mut self, _: bool) {}
    fn reset_own_state(&mut self) {}
    fn clone_box(&self) -> Box<dyn Layer<f64>> {
        Box::new(self.clone())
    }
}

#[test]
fn export_errors_name_the_layer_path() {
    let rng = &mut Rng::new(1);
    let model = Sequential::<f64>::new()
        .with(
            "fc1",
            Dense::new(4, 3, true, Activation::Relu, rng).expect("fc1"),
        )
        .and_then(|s| {
            s.with(
                "block",
                Residual::new(Dense::new(5, 5, true, Activation::Relu, rng)?),
            )
        })
        .expect("model");
    let specs = [InputSpec::float("x", &[2, 4])];
    let err = export_model(&model, &specs, &ExportOptions::default()).unwrap_err();
    assert_eq!(err.path(), Some("block.inner"), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("layer `block.inner`") && msg.contains("[2, 3]"),
        "{msg}"
    );

    let nested = Sequential::<f64>::new()
        .with(
            "encoder",
            Sequential::new().with("custom", Opaque).expect("inner"),
        )
        .expect("model");
    let err = export_model(&nested, &specs, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(err.path(), Some("encoder.custom"));
    assert!(err.to_string().contains("Opaque"), "{err}");

    let emb = Embedding::<f64>::new(5, 3, None, rng).expect("emb");
    let err = export_model(&emb, &specs, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MissingInput { .. }), "{err}");
}

/// One instance of every layer type (and the adapters), with graph inputs.
fn catalog() -> Vec<(Box<dyn Layer<f64>>, Vec<InputSpec>)> {
    let rng = &mut Rng::new(1);
    let x = vec![InputSpec::float("x", &[2, 4, 8])];
    let img = vec![InputSpec::float("x", &[1, 2, 6, 6])];
    let ids = vec![InputSpec::ids("ids", &[2, 3])];
    let masked = vec![
        InputSpec::float("x", &[2, 4, 8]),
        InputSpec::mask("mask", &[2, 4]),
    ];
    let dense = || Dense::new(8, 8, true, Activation::Silu, &mut Rng::new(2)).expect("dense");
    let conv = Conv2d::new(2, 3, (3, 3), Conv2dOptions::default(), true, rng).expect("conv");
    let emb = Embedding::new(6, 8, None, rng).expect("emb");
    let dora = random(2).with_dora(true);
    vec![
        (Box::new(dense()), x.clone()),
        (
            Box::new(FullyConnected::new(8, 3, true, rng).expect("fc")),
            x.clone(),
        ),
        (
            Box::new(ActivationLayer::new(Activation::GeluTanh)),
            x.clone(),
        ),
        (Box::new(conv.clone()), img.clone()),
        (Box::new(emb.clone()), ids.clone()),
        (
            Box::new(LayerNorm::new(8, 1e-5, true).expect("ln")),
            x.clone(),
        ),
        (Box::new(Dropout::new(0.2, 1).expect("p")), x.clone()),
        (
            Box::new(MultiHeadAttention::new(8, 2, rng).expect("mha")),
            masked,
        ),
        (Box::new(Residual::new(dense())), x.clone()),
        (
            Box::new(Sequential::new().with("d", dense()).expect("s")),
            x.clone(),
        ),
        (
            Box::new(LoraAdapter::wrap(dense(), dora).expect("a")),
            x.clone(),
        ),
        (Box::new(LoraAdapter::wrap(conv, dora).expect("a")), img),
        (Box::new(LoraAdapter::wrap(emb, random(2)).expect("a")), ids),
        (Box::new(Opaque), x.clone()),
        (Box::new(Residual::new(Opaque)), x),
    ]
}

#[test]
fn supports_jit_is_true_exactly_when_export_succeeds_with_lowerable_ops() {
    for (layer, specs) in catalog() {
        let exported = export_model(layer.as_ref(), &specs, &ExportOptions::default());
        let truth = exported.as_ref().is_ok_and(all_lowerable);
        assert_eq!(
            layer.supports_jit(),
            truth,
            "{}: {exported:?}",
            layer.kind()
        );
    }
}

/// Compares `actual` with the golden file, or rewrites it under `BLESS=1`.
fn golden(file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("golden dir");
        std::fs::write(&path, actual).expect("golden file is writable");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create it)", path.display()));
    assert!(
        expected == actual,
        "{} differs (run with BLESS=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn lora_mlp_export_dump_matches_golden() {
    let rng = &mut Rng::new(1);
    let fc1 = Dense::<f32>::new(4, 3, true, Activation::GeluErf, rng).expect("fc1");
    let model = Sequential::new()
        .with("fc1", LoraAdapter::wrap(fc1, random(2)).expect("adapter"))
        .and_then(|s| s.with("fc2", FullyConnected::new(3, 2, true, rng)?))
        .expect("model");
    let specs = [InputSpec::float("x", &[2, 4])];
    let g = export_model(&model, &specs, &ExportOptions::new(ExportMode::Serving)).expect("g");
    golden("lora_mlp_export.txt", &dump(&g));
}
