//! Serving many LoRA adapters from one compiled model: crates/core models
//! and PEFT adapter directories on one side, [`cranelora_jit::serve`] on
//! the other.
//!
//! - [`compile_server`] builds the *template* of a model that already has
//!   adapters (every adapter replaced by one of the maximum rank R, α = R
//!   so the scaling is 1, with DoRA and a LoRA bias if asked for), exports
//!   it in Serving mode and compiles an [`AdapterServer`];
//! - [`adapter_of`] reads the adapters of a model as an [`Adapter`]
//!   (A, B, scaling, LoRA bias, DoRA magnitude per layer);
//! - [`load_peft`] applies a PEFT adapter directory to a copy of a base
//!   model and returns its [`Adapter`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use cranelora::serving::{adapter_of, compile_server, ServingConfig};
//! use cranelora::core::export::InputSpec;
//! let (model, x) = cranelora::workloads::w1::<f32>()?;
//! let server = compile_server(&model, &[InputSpec::float("x", x.shape())], &ServingConfig::new(16))?;
//! server.bind_adapter("a", &adapter_of(&model)?)?;
//! server.set_active(Some("a"))?;
//! # Ok(()) }
//! ```

use anyhow::{bail, Context, Result};
use cranelora_core::export::{export_model, tensor_to_data, ExportMode, ExportOptions, InputSpec};
use cranelora_core::io::load_peft_adapter;
use cranelora_core::layer::{visit, Layer};
use cranelora_core::lora::LoraTarget;
use cranelora_core::lora::{LoraAdapter, LoraConfig};
use cranelora_graph::Graph;
use cranelora_jit::serve::{
    plan, Adapter, AdapterServer, LayerAdapter, LayerChoice, LayerSlot, ServeOptions,
};
use cranelora_jit::JitOptions;
use cranelora_kernels::Scalar;
use std::path::Path;
use std::sync::Arc;

/// How [`compile_server`] compiles.
#[derive(Clone, Copy, Debug)]
pub struct ServingConfig {
    /// The maximum adapter rank R (per layer at most min(fan_in, fan_out));
    /// smaller ranks are zero-padded.
    pub max_rank: usize,
    /// Give every slot a DoRA scale (needed to serve DoRA adapters); not
    /// together with `lora_bias` (PEFT has no DoRA with a LoRA bias).
    pub dora: bool,
    /// Give every slot a LoRA bias (needed to serve adapters with `lora_bias`).
    pub lora_bias: bool,
    /// Adapter slots of the mixed-batch function (0: none).
    pub mixed_capacity: usize,
    /// JIT options (LoRA folding is turned off). `jit.adapter_strategy`
    /// decides which layers the compiler merges (`AdapterStrategy::Auto`:
    /// the cost model of `cranelora_jit::serve::choose`).
    pub jit: JitOptions,
}

impl ServingConfig {
    /// Rank `max_rank`, plain LoRA, no mixed batches.
    pub fn new(max_rank: usize) -> Self {
        Self {
            max_rank,
            dora: false,
            lora_bias: false,
            mixed_capacity: 0,
            jit: JitOptions::default(),
        }
    }
}

/// The adapters of `model` with their paths.
fn adapters<T: Scalar>(model: &dyn Layer<T>) -> Vec<(String, LoraAdapter<T>)> {
    let mut v = Vec::new();
    visit(model, &mut |path, layer| {
        if let Some(a) = layer.as_lora_adapter() {
            v.push((path.to_string(), a.clone()));
        }
    });
    v
}

/// Compiles a server for the adapted layers of `model` (module docs).
///
/// # Errors
/// A model without adapters, a template that cannot be built or exported,
/// compile errors (see [`AdapterServer::new`]).
pub fn compile_server<T: Scalar>(
    model: &dyn Layer<T>,
    inputs: &[InputSpec],
    cfg: &ServingConfig,
) -> Result<AdapterServer> {
    let (graph, slots) = template(model, inputs, cfg)?;
    let opts = ServeOptions {
        jit: cfg.jit,
        mixed_capacity: cfg.mixed_capacity,
    };
    Ok(AdapterServer::new(&graph, slots, &opts)?)
}

/// The Serving-mode export of `model`'s template (every adapter replaced by
/// one of rank R and scaling 1) and its slots.
fn template<T: Scalar>(
    model: &dyn Layer<T>,
    inputs: &[InputSpec],
    cfg: &ServingConfig,
) -> Result<(Graph, Vec<LayerSlot>)> {
    let found = adapters(model);
    let slots = slots_of(&found, cfg)?;
    let mut template = model.clone_box();
    for ((path, a), slot) in found.iter().zip(&slots) {
        let config = LoraConfig::new(slot.rank)
            .with_alpha(slot.rank as f64)
            .with_dora(cfg.dora)
            .with_lora_bias(cfg.lora_bias);
        let wide = LoraAdapter::new(a.base_layer().clone_box(), config)
            .with_context(|| format!("building the rank-{} template of `{path}`", slot.rank))?;
        template.replace_child(path, Box::new(wide))?;
    }
    let graph = export_model(
        template.as_ref(),
        inputs,
        &ExportOptions::new(ExportMode::Serving),
    )
    .context("exporting the serving template")?;
    Ok((graph, slots))
}

fn target<T: Scalar>(a: &LoraAdapter<T>) -> Result<&dyn LoraTarget<T>> {
    a.base_layer()
        .as_lora_target()
        .context("internal: an adapter's base is a LoRA target")
}

/// The slots of the adapters `found` (none merged yet).
fn slots_of<T: Scalar>(
    found: &[(String, LoraAdapter<T>)],
    cfg: &ServingConfig,
) -> Result<Vec<LayerSlot>> {
    if found.is_empty() {
        bail!("the model has no LoRA adapter: apply the adapters to serve (or one of them) first");
    }
    if cfg.dora && cfg.lora_bias {
        bail!("ServingConfig: DoRA and a LoRA bias cannot share a layer (as in PEFT); compile two servers");
    }
    let mut slots = Vec::new();
    for (path, a) in found {
        let geometry = a.lora_layer().geometry();
        let dora_base = match cfg.dora {
            false => None,
            true => {
                let w = geometry.to_fan_in_out(target(a)?.lora_weight().value())?;
                Some(Arc::new(tensor_to_data(&w)))
            }
        };
        slots.push(LayerSlot {
            path: path.clone(),
            fan_in: geometry.fan_in(),
            fan_out: geometry.fan_out(),
            // No adapter of a layer has a rank above min(fan_in, fan_out) (LoraConfig::validate).
            rank: cfg.max_rank.min(geometry.fan_in().min(geometry.fan_out())),
            dtype: T::DTYPE,
            bias: cfg.lora_bias,
            dora_base,
            merged_base: None,
        });
    }
    Ok(slots)
}

/// The per-layer merged / unmerged choice [`compile_server`] would make for
/// `model` under `cfg.jit.adapter_strategy` (with the cost model's
/// numbers): the compiler's own [`plan`] on the exported template, without
/// compiling.
///
/// # Errors
/// As [`compile_server`] before compiling.
pub fn adapter_strategy<T: Scalar>(
    model: &dyn Layer<T>,
    inputs: &[InputSpec],
    cfg: &ServingConfig,
) -> Result<Vec<LayerChoice>> {
    let (graph, _) = template(model, inputs, cfg)?;
    Ok(plan(&graph, &cfg.jit.adapter_strategy))
}

/// The adapters of `model` as an [`Adapter`] (every adapted layer's A, B,
/// scaling, LoRA bias and DoRA magnitude).
///
/// # Errors
/// A model without adapters.
pub fn adapter_of<T: Scalar>(model: &dyn Layer<T>) -> Result<Adapter> {
    let found = adapters(model);
    if found.is_empty() {
        bail!("the model has no LoRA adapter");
    }
    let mut out = Adapter::default();
    for (path, a) in found {
        let l = a.lora_layer();
        let layer = LayerAdapter {
            a: tensor_to_data(l.a().value()),
            b: tensor_to_data(l.b().value()),
            scaling: a.scaling(),
            bias: l.bias().map(|w| tensor_to_data(w.value())),
            magnitude: l.magnitude().map(|w| tensor_to_data(w.value())),
        };
        out.layers.insert(path, layer);
    }
    Ok(out)
}

/// Adapter `name` (`None`: the default) of the PEFT directory `dir`, applied
/// to a copy of `base` (a model without adapters), as an [`Adapter`].
///
/// # Errors
/// As `load_peft_adapter`, naming the directory.
pub fn load_peft<T: Scalar>(
    base: &dyn Layer<T>,
    dir: &Path,
    name: Option<&str>,
) -> Result<Adapter> {
    let mut model = base.clone_box();
    load_peft_adapter(model.as_mut(), dir, name)
        .with_context(|| format!("loading the PEFT adapter in {}", dir.display()))?;
    adapter_of(model.as_ref())
}
