//! Graph autodiff on exported models equals the layers' own backward (which
//! the layer tests check against finite differences), and, for a few cases,
//! central finite differences of the exported graph itself: for Dense,
//! Conv2d, Embedding, LayerNorm, attention, and LoRA adapters (plain,
//! rsLoRA, DoRA — whose exported norm sits behind StopGradient, so autodiff
//! gives PEFT's gradients, the ones eager backward computes).

use cranelora_core::export::{
    bindings_for, export_model, input_specs, input_values, tensor_to_data,
};
use cranelora_core::export::{ExportMode, ExportOptions};
use cranelora_core::layers::{
    Conv2d, Conv2dOptions, Dense, Embedding, LayerNorm, MultiHeadAttention, Sequential,
};
use cranelora_core::lora::{apply_lora, ApplyConfig, LoraConfig, LoraInit};
use cranelora_core::{Activation, IdTensor, Input, Layer, Mask, Rng, Tensor};
use cranelora_graph::{grad, interpret, Graph, NodeId, Op, ReduceKind, TensorData};
use cranelora_kernels::testing::assert_close;

/// L = Σ R ⊙ y appended to an exported graph; returns (graph, L, parameter
/// names and nodes, the float input node if any).
fn loss_graph(
    layer: &dyn Layer<f64>,
    inputs: &[Input<'_, f64>],
    r: &Tensor<f64>,
) -> (Graph, NodeId, Vec<(String, NodeId)>, Option<NodeId>) {
    let mut g = export_model(
        layer,
        &input_specs(inputs),
        &ExportOptions::new(ExportMode::Training),
    )
    .unwrap();
    let y = g.outputs()[0];
    let rc = g.constant(tensor_to_data(r)).unwrap();
    let prod = g.mul(y, rc).unwrap();
    let axes: Vec<usize> = (0..r.ndim()).collect();
    let l = g.reduce(prod, ReduceKind::Sum, &axes, false).unwrap();
    let params = g
        .node_ids()
        .into_iter()
        .filter_map(|id| match &g.node(id).unwrap().op {
            Op::Parameter { name } => Some((name.clone(), id)),
            _ => None,
        })
        .collect();
    let x = inputs
        .iter()
        .position(|i| matches!(i, Input::Float(_)))
        .map(|k| g.inputs()[k]);
    (g, l, params, x)
}

fn as_f64(v: &TensorData) -> Vec<f64> {
    v.as_f64().expect("f64 value").iter().copied().collect()
}

/// Autodiff of the exported graph against eager backward, for every
/// trainable weight and the first float input.
fn check(layer: &mut dyn Layer<f64>, inputs: &[Input<'_, f64>]) {
    layer.set_training(true);
    layer.zero_grad();
    let y = layer.forward(inputs).unwrap();
    let r = Tensor::random_normal(y.shape(), 0.0, 1.0, &mut Rng::new(17));
    let dx = layer.backward(&r).unwrap();
    let mut eager: Vec<(String, Vec<f64>)> = Vec::new();
    layer.for_each_weight("", &mut |p, w| {
        if w.trainable() {
            eager.push((p.to_string(), w.grad().to_vec()));
        }
    });
    layer.set_training(false);

    let (mut g, l, params, x) = loss_graph(layer, inputs, &r);
    assert_eq!(
        params.len(),
        eager.len(),
        "Training export has one Parameter per trainable weight"
    );
    let mut wrt: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    wrt.extend(x);
    let grads = grad(&mut g, l, &wrt).unwrap();
    g.set_outputs(&grads).unwrap();
    let out = interpret(&g, &input_values(inputs), &bindings_for(layer, &g).unwrap()).unwrap();
    for ((name, _), value) in params.iter().zip(&out) {
        let (_, e) = eager
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no eager gradient for {name}"));
        let r = std::panic::catch_unwind(|| assert_close(&as_f64(value), e, 1e-10, 1e-12));
        assert!(r.is_ok(), "gradient of {name}");
    }
    if let (Some(_), Some(dx)) = (x, dx) {
        assert_close(&as_f64(out.last().unwrap()), &dx.to_vec(), 1e-10, 1e-12);
    }
}

/// Central finite differences of the exported graph's loss with respect to
/// each Parameter, against the graph's own autodiff.
fn check_graph_fd(layer: &dyn Layer<f64>, inputs: &[Input<'_, f64>], out_shape: &[usize]) {
    let r = Tensor::random_normal(out_shape, 0.0, 1.0, &mut Rng::new(5));
    let (mut g, l, params, _) = loss_graph(layer, inputs, &r);
    let wrt: Vec<NodeId> = params.iter().map(|(_, id)| *id).collect();
    let grads = grad(&mut g, l, &wrt).unwrap();
    let mut outs = vec![l];
    outs.extend(grads);
    g.set_outputs(&outs).unwrap();
    let values = input_values(inputs);
    let bindings = bindings_for(layer, &g).unwrap();
    let analytic = interpret(&g, &values, &bindings).unwrap();
    let h = 1e-6;
    for (k, (name, _)) in params.iter().enumerate() {
        let base = bindings[name].as_f64().unwrap().clone();
        let mut numeric = Vec::with_capacity(base.len());
        for i in 0..base.len() {
            let eval = |d: f64| {
                let mut b = bindings.clone();
                let mut t = base.clone();
                *t.iter_mut().nth(i).unwrap() += d;
                b.insert(name.clone(), TensorData::F64(t));
                as_f64(&interpret(&g, &values, &b).unwrap()[0])[0]
            };
            numeric.push((eval(h) - eval(-h)) / (2.0 * h));
        }
        assert_close(&as_f64(&analytic[k + 1]), &numeric, 1e-6, 1e-8);
    }
}

fn lora(rank: usize) -> LoraConfig {
    LoraConfig::new(rank)
        .with_alpha(3.0)
        .with_init(LoraInit::Random)
        .with_seed(4)
        .with_freeze_base(false)
}

#[test]
fn autodiff_of_exported_layers_equals_eager_backward() {
    let mut rng = Rng::new(1);
    let x = Tensor::random_normal(&[3, 4], 0.0, 1.0, &mut rng);
    for act in [Activation::GeluErf, Activation::Tanh, Activation::Silu] {
        check(
            &mut Dense::new(4, 5, true, act, &mut rng).unwrap(),
            &[Input::Float(&x)],
        );
    }
    let img = Tensor::random_normal(&[2, 2, 5, 5], 0.0, 1.0, &mut rng);
    let opts = Conv2dOptions {
        stride: (2, 1),
        padding: (1, 1),
        dilation: (1, 2),
    };
    check(
        &mut Conv2d::new(2, 3, (3, 2), opts, true, &mut rng).unwrap(),
        &[Input::Float(&img)],
    );
    let ids = IdTensor::from_vec(vec![1, 4, 4, 0, 2, 5], &[2, 3]).unwrap();
    check(
        &mut Embedding::new(6, 4, None, &mut rng).unwrap(),
        &[Input::Ids(&ids)],
    );
    check(
        &mut LayerNorm::new(4, 1e-5, true).unwrap(),
        &[Input::Float(&x)],
    );
    let seq = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut rng);
    let mask = Mask::from_ids(&[1, 1, 0, 1, 1, 1], &[2, 3]).unwrap();
    let mut attn = MultiHeadAttention::new(4, 2, &mut rng).unwrap();
    check(&mut attn, &[Input::Float(&seq), Input::Mask(&mask)]);
}

#[test]
fn autodiff_of_exported_adapters_equals_eager_backward() {
    let x = Tensor::random_normal(&[3, 4], 0.0, 1.0, &mut Rng::new(2));
    for cfg in [
        lora(2),
        lora(2).with_rslora(true),
        lora(2).with_dora(true),
        lora(2).with_dora(true).with_freeze_base(true),
    ] {
        let mut model = Sequential::new()
            .with(
                "fc1",
                Dense::new(4, 6, true, Activation::GeluTanh, &mut Rng::new(3)).unwrap(),
            )
            .unwrap()
            .with(
                "fc2",
                Dense::new(6, 2, true, Activation::Identity, &mut Rng::new(4)).unwrap(),
            )
            .unwrap();
        apply_lora(&mut model, &ApplyConfig::new(&["fc1", "fc2"], cfg)).unwrap();
        if !cfg.freeze_base {
            model.set_trainable(true);
        }
        check(&mut model, &[Input::Float(&x)]);
    }
    let img = Tensor::random_normal(&[1, 2, 4, 4], 0.0, 1.0, &mut Rng::new(5));
    let opts = Conv2dOptions {
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
    };
    let mut conv = Sequential::new()
        .with(
            "conv",
            Conv2d::new(2, 3, (3, 3), opts, true, &mut Rng::new(6)).unwrap(),
        )
        .unwrap();
    apply_lora(
        &mut conv,
        &ApplyConfig::new(&["conv"], lora(2).with_dora(true)),
    )
    .unwrap();
    check(&mut conv, &[Input::Float(&img)]);
    let ids = IdTensor::from_vec(vec![1, 4, 4, 0, 2, 5], &[2, 3]).unwrap();
    let mut emb = Sequential::new()
        .with("emb", Embedding::new(6, 4, None, &mut Rng::new(7)).unwrap())
        .unwrap();
    apply_lora(&mut emb, &ApplyConfig::new(&["emb"], lora(2))).unwrap();
    check(&mut emb, &[Input::Ids(&ids)]);
    let seq = Tensor::random_normal(&[2, 3, 4], 0.0, 1.0, &mut Rng::new(8));
    let mut attn = Sequential::new()
        .with(
            "attention",
            MultiHeadAttention::new(4, 2, &mut Rng::new(9)).unwrap(),
        )
        .unwrap();
    apply_lora(
        &mut attn,
        &ApplyConfig::new(&["query", "value"], lora(2).with_freeze_base(true)),
    )
    .unwrap();
    check(&mut attn, &[Input::Float(&seq)]);
}

#[test]
fn autodiff_of_exported_graphs_matches_their_finite_differences() {
    let x = Tensor::random_normal(&[3, 4], 0.0, 1.0, &mut Rng::new(2));
    let mut model = Sequential::new()
        .with(
            "fc",
            Dense::new(4, 3, true, Activation::GeluErf, &mut Rng::new(3)).unwrap(),
        )
        .unwrap();
    apply_lora(
        &mut model,
        &ApplyConfig::new(&["fc"], lora(2).with_rslora(true)),
    )
    .unwrap();
    model.set_trainable(true);
    check_graph_fd(&model, &[Input::Float(&x)], &[3, 3]);
    let ln = LayerNorm::<f64>::new(4, 1e-5, true).unwrap();
    check_graph_fd(&ln, &[Input::Float(&x)], &[3, 4]);
}
