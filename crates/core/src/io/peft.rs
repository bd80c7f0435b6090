//! PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Loading parses the config, applies the adapters it describes with
//! [`apply_lora`] (on a copy first, so a mismatch leaves the model as it
//! was), then maps every key of the weights file onto the adapted model:
//! `base_model.model.<path>.lora_A.weight` → `<path>.lora_a` (transposed),
//! and so on (the table in [`super::mapping`]). Every A, B, LoRA bias and
//! DoRA magnitude the config implies must be in the file with PEFT's shape,
//! and every key of the file must map to a weight of the adapted model.

use super::atomic::{replace_dir_atomically, write_synced};
use super::mapping::{entries, Entry, Naming};
use super::peft_config::PeftConfig;
use super::safetensors::{convert, read_safetensors, serialize};
use super::{io_error, nearest};
use crate::layer::{visit, Layer};
use crate::lora::{apply_lora, BiasMode, LoraAdapter, LoraInit, LoraReport, TargetModules};
use crate::{Error, Result, Tensor};
use cranelora_kernels::Scalar;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The prefix PEFT puts before every module path in the weights file.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The config file of an adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file of an adapter directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// An adapter directory in memory: its config and its tensors under PEFT's
/// keys and layouts (`base_model.model.fc1.lora_A.weight` is `r × in`).
#[derive(Clone, Debug, PartialEq)]
pub struct PeftAdapter<T> {
    /// `adapter_config.json`.
    pub config: PeftConfig,
    /// `adapter_model.safetensors`.
    pub tensors: BTreeMap<String, Tensor<T>>,
}

/// The directory of adapter `name` in a PEFT save: `dir` itself for `None`
/// or `"default"`, `dir/<name>` otherwise (as PEFT's `save_pretrained`).
pub fn adapter_dir(dir: &Path, name: Option<&str>) -> PathBuf {
    match name {
        None | Some("default") => dir.to_path_buf(),
        Some(n) => dir.join(n),
    }
}

/// Reads adapter `name` (`None`: the default) of the PEFT directory `dir`.
///
/// # Errors
/// [`Error::Io`] naming the file: missing or unreadable files, a damaged
/// weights file, a config with wrong types or unsupported fields.
pub fn read_peft_adapter<T: Scalar>(dir: &Path, name: Option<&str>) -> Result<PeftAdapter<T>> {
    let d = adapter_dir(dir, name);
    if !d.is_dir() {
        return Err(io_error(&d, "no such adapter directory"));
    }
    let cfg_path = d.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| io_error(&cfg_path, format!("cannot read: {e}")))?;
    let config = PeftConfig::from_json(&text, &cfg_path)?;
    let weights = d.join(ADAPTER_WEIGHTS);
    if !weights.exists() && d.join("adapter_model.bin").exists() {
        return Err(io_error(
            &weights,
            "missing; only safetensors adapters are supported (found adapter_model.bin)",
        ));
    }
    Ok(PeftAdapter {
        config,
        tensors: read_safetensors(&weights)?,
    })
}

/// Writes `adapter` as adapter `name` of the PEFT directory `dir` (see
/// [`adapter_dir`]), atomically: the adapter's directory is built as a
/// temporary sibling and swapped in, so a failed write leaves the previous
/// adapter intact. Other entries of an existing directory (other adapters'
/// subdirectories) are kept.
///
/// # Errors
/// [`Error::Io`] if a file or directory cannot be written.
pub fn write_peft_adapter<T: Scalar>(
    dir: &Path,
    name: &str,
    adapter: &PeftAdapter<T>,
) -> Result<()> {
    let target = adapter_dir(dir, Some(name));
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error(parent, format!("cannot create: {e}")))?;
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = serialize(&adapter.tensors, Some(meta), &target.join(ADAPTER_WEIGHTS))?;
    let config = adapter.config.to_json();
    replace_dir_atomically(&target, |tmp| {
        write_synced(&tmp.join(ADAPTER_WEIGHTS), &weights)?;
        write_synced(&tmp.join(ADAPTER_CONFIG), config.as_bytes())
    })
}

/// Applies adapter `name` (`None`: the default) of the PEFT directory `dir`
/// to `model` and loads its weights: PEFT's `PeftModel.from_pretrained`.
///
/// # Errors
/// As [`read_peft_adapter`] and [`apply_peft_adapter`]; the model is
/// unchanged on error.
pub fn load_peft_adapter<T: Scalar>(
    model: &mut dyn Layer<T>,
    dir: &Path,
    name: Option<&str>,
) -> Result<LoraReport> {
    let adapter = read_peft_adapter(dir, name)?;
    apply_peft_adapter(
        model,
        &adapter,
        &adapter_dir(dir, name).join(ADAPTER_WEIGHTS),
    )
}

/// Wraps the layers `adapter.config` targets in LoRA adapters and loads the
/// adapter's tensors into them; base biases in the file (`bias = "all"` or
/// `"lora_only"`) replace the model's. `origin` names the file in errors.
///
/// # Errors
/// [`Error::Io`] if the config cannot be applied, a
/// key maps to no weight (listing the nearest layer paths), a tensor has the
/// wrong shape (expected and actual), or a tensor the config implies is
/// missing. The model is unchanged on error.
pub fn apply_peft_adapter<T: Scalar>(
    model: &mut dyn Layer<T>,
    adapter: &PeftAdapter<T>,
    origin: &Path,
) -> Result<LoraReport> {
    let apply = adapter.config.apply_config();
    let mut trial = model.clone_box();
    apply_lora(trial.as_mut(), &apply)
        .map_err(|e| io_error(origin, format!("cannot apply the adapter config: {e}")))?;
    let weights = map_tensors(
        trial.as_ref(),
        &model.layer_paths(),
        &adapter.tensors,
        origin,
    )?;
    let report = apply_lora(model, &apply)?;
    model
        .load_weights(&weights, false)
        .map_err(|e| io_error(origin, e.to_string()))?;
    Ok(report)
}

/// Whether an entry of the adapted model can come from an adapter file:
/// LoRA weights and biases.
fn in_adapter_file(e: &Entry) -> bool {
    e.lora || e.ours == "bias" || e.ours.ends_with(".bias")
}

/// The file's tensors as our weights of the adapted `trial` model, checked.
fn map_tensors<T: Scalar>(
    trial: &dyn Layer<T>,
    model_paths: &[String],
    tensors: &BTreeMap<String, Tensor<T>>,
    origin: &Path,
) -> Result<HashMap<String, Tensor<T>>> {
    let all = entries(trial, Naming::PyTorch);
    let by_key: HashMap<&str, &Entry> = all
        .iter()
        .filter(|e| in_adapter_file(e))
        .map(|e| (e.theirs.as_str(), e))
        .collect();
    let mut out = HashMap::new();
    for (key, t) in tensors {
        let entry = key.strip_prefix(PEFT_PREFIX).and_then(|k| by_key.get(k));
        match entry {
            Some(e) => {
                out.insert(
                    e.ours.clone(),
                    convert(e, t, origin).map_err(|err| prefix_key(err, key))?,
                );
            }
            None => return Err(no_layer(key, model_paths, origin)),
        }
    }
    if let Some(e) = all.iter().find(|e| e.lora && !out.contains_key(&e.ours)) {
        return Err(io_error(
            origin,
            format!(
                "key `{PEFT_PREFIX}{}` (shape {:?}) is missing",
                e.theirs,
                e.their_shape()
            ),
        ));
    }
    Ok(out)
}

/// `convert` names the key without PEFT's prefix; name it as the file does.
fn prefix_key(err: Error, key: &str) -> Error {
    match err {
        Error::Io { path, message } => {
            let short = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
            Error::Io {
                path,
                message: message.replacen(&format!("`{short}`"), &format!("`{key}`"), 1),
            }
        }
        other => other,
    }
}

/// The suffixes after a module path in PEFT's keys.
const SUFFIXES: &[&str] = &[
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
    ".base_layer.bias",
    ".bias",
    ".weight",
];

/// The error for a key that maps to no weight: the module path it names and the nearest layers.
fn no_layer(key: &str, model_paths: &[String], origin: &Path) -> Error {
    let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
    let module = SUFFIXES
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    let near = nearest(module, model_paths.iter().map(String::as_str), 3);
    let why = if !key.starts_with(PEFT_PREFIX) {
        format!("does not start with `{PEFT_PREFIX}`")
    } else if model_paths.iter().any(|p| p == module) {
        format!("names layer `{module}`, which the config's target_modules do not adapt (or which has no such weight)")
    } else {
        format!("maps to no layer of the model (module `{module}`)")
    };
    io_error(
        origin,
        format!(
            "key `{key}` {why}; nearest layer paths: {}",
            near.join(", ")
        ),
    )
}

/// The adapters of `model` as a PEFT adapter: the config they imply and
/// their tensors under PEFT's keys and layouts. `bias` is inferred from the
/// trainable flags: trainable biases outside adapters → `"all"`, only in
/// adapted layers → `"lora_only"`; those biases are included.
///
/// # Errors
/// [`Error::Config`] if the model has no adapter, or its adapters differ in
/// rsLoRA, DoRA or LoRA bias (one PEFT config has one value of each).
pub fn extract_peft_adapter<T: Scalar>(model: &dyn Layer<T>) -> Result<PeftAdapter<T>> {
    let mut adapters: Vec<(String, LoraAdapter<T>)> = Vec::new();
    visit(model, &mut |path, layer| {
        if let Some(a) = layer.as_lora_adapter() {
            adapters.push((path.to_string(), a.clone()));
        }
    });
    let (_, first) = adapters.first().ok_or_else(|| {
        Error::config("save_peft_adapter", "the model has no LoRA adapter to save")
    })?;
    let c0 = *first.config();
    for (path, a) in &adapters {
        let c = a.config();
        if (c.use_rslora, c.use_dora, c.lora_bias) != (c0.use_rslora, c0.use_dora, c0.lora_bias) {
            return Err(Error::config(
                "save_peft_adapter",
                format!("adapter `{path}` differs from `{}` in rsLoRA, DoRA or LoRA bias; a PEFT config has one setting for all", adapters[0].0),
            ));
        }
    }
    let paths: Vec<&str> = adapters.iter().map(|(p, _)| p.as_str()).collect();
    let r = most_common(adapters.iter().map(|(_, a)| a.rank()));
    let alpha = f64::from_bits(most_common(
        adapters.iter().map(|(_, a)| a.alpha().to_bits()),
    ));
    let modules = peft_modules(model, &adapters);
    let module_paths: Vec<&str> = modules.iter().map(|(p, _)| p.as_str()).collect();
    let mut config = PeftConfig::new(r, alpha, choose_targets(model, &module_paths));
    for (path, a) in &modules {
        let key = regex::escape(path);
        if a.rank() != r {
            config.rank_pattern.push((key.clone(), a.rank()));
        }
        if a.alpha() != alpha {
            config.alpha_pattern.push((key, a.alpha()));
        }
    }
    config.rank_pattern.sort_by(|x, y| x.0.cmp(&y.0));
    config.alpha_pattern.sort_by(|x, y| x.0.cmp(&y.0));
    config.use_rslora = c0.use_rslora;
    config.use_dora = c0.use_dora;
    config.lora_bias = c0.lora_bias;
    config.init_lora_weights = most_common_init(adapters.iter().map(|(_, a)| a.config().init));
    config.bias = infer_bias(model, &paths);
    let tensors = adapter_tensors(model, &paths, config.bias)?;
    Ok(PeftAdapter { config, tensors })
}

/// The modules PEFT would have adapted: a fused attention's `P.in_proj`
/// adapter is PEFT's adapter on the attention module `P` itself (which also
/// covers `P.out_proj`); every other adapter is its own module.
fn peft_modules<T: Scalar>(
    model: &dyn Layer<T>,
    adapters: &[(String, LoraAdapter<T>)],
) -> Vec<(String, LoraAdapter<T>)> {
    let fused_parent = |path: &str, child: &str| {
        let parent = path.strip_suffix(child)?;
        let layer = model.child(parent).ok()?;
        let adapted_in = layer.child("in_proj").ok()?.as_lora_adapter().is_some();
        (layer.kind() == "MultiHeadAttention" && adapted_in).then(|| parent.to_string())
    };
    adapters
        .iter()
        .filter(|(p, _)| fused_parent(p, ".out_proj").is_none())
        .map(|(p, a)| {
            (
                fused_parent(p, ".in_proj").unwrap_or_else(|| p.clone()),
                a.clone(),
            )
        })
        .collect()
}

/// Saves the adapters of `model` as adapter `name` of the PEFT directory
/// `dir` ([`extract_peft_adapter`] then [`write_peft_adapter`]).
///
/// # Errors
/// As those two; a failed save leaves a previous adapter intact.
pub fn save_peft_adapter<T: Scalar>(model: &dyn Layer<T>, dir: &Path, name: &str) -> Result<()> {
    write_peft_adapter(dir, name, &extract_peft_adapter(model)?)
}

fn most_common<K: Ord + Copy>(items: impl Iterator<Item = K>) -> K {
    let mut counts: BTreeMap<K, usize> = BTreeMap::new();
    for k in items {
        *counts.entry(k).or_default() += 1;
    }
    // Highest count; the smallest key among ties.
    let best = counts.values().copied().max().unwrap_or(0);
    *counts
        .iter()
        .find(|(_, &n)| n == best)
        .map(|(k, _)| k)
        .expect("internal: at least one adapter")
}

fn most_common_init(items: impl Iterator<Item = LoraInit>) -> LoraInit {
    let code = |i: LoraInit| match i {
        LoraInit::Default => 0,
        LoraInit::Gaussian => 1,
        LoraInit::Random => 2,
    };
    let inits: Vec<LoraInit> = items.collect();
    let best = most_common(inits.iter().map(|&i| code(i)));
    inits
        .into_iter()
        .find(|&i| code(i) == best)
        .unwrap_or_default()
}

/// Target names that select exactly the adapted paths of the plain model:
/// the last path segments if they do, else the full paths, else a regex.
fn choose_targets<T: Scalar>(model: &dyn Layer<T>, adapted: &[&str]) -> TargetModules {
    let inside = |p: &str| adapted.iter().any(|a| p.starts_with(&format!("{a}.")));
    let plain: Vec<String> = model
        .layer_paths()
        .into_iter()
        .filter(|p| !inside(p))
        .collect();
    let wanted: BTreeSet<&str> = adapted.iter().copied().collect();
    let exact = |names: &[String]| {
        let cfg = PeftConfig::new(1, 1.0, TargetModules::Names(names.to_vec()));
        let got: BTreeSet<&str> = plain
            .iter()
            .filter(|p| cfg.targets(p).unwrap_or(false))
            .map(String::as_str)
            .collect();
        got == wanted
    };
    let last: BTreeSet<String> = adapted
        .iter()
        .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
        .collect();
    let last: Vec<String> = last.into_iter().collect();
    if exact(&last) {
        return TargetModules::Names(last);
    }
    let full: Vec<String> = adapted.iter().map(|p| p.to_string()).collect();
    if exact(&full) {
        return TargetModules::Names(full);
    }
    let alternatives: Vec<String> = adapted.iter().map(|p| regex::escape(p)).collect();
    TargetModules::Regex(alternatives.join("|"))
}

fn is_bias(name: &str) -> bool {
    name == "bias" || name.ends_with(".bias")
}

/// PEFT's `bias` setting, from which biases are trainable.
fn infer_bias<T: Scalar>(model: &dyn Layer<T>, adapted: &[&str]) -> BiasMode {
    let (mut outside, mut inside) = (false, false);
    model.for_each_weight("", &mut |name, w| {
        if is_bias(name) && w.trainable() {
            if adapted
                .iter()
                .any(|a| name.starts_with(&format!("{a}.base_layer.")))
            {
                inside = true;
            } else {
                outside = true;
            }
        }
    });
    match (outside, inside) {
        (true, _) => BiasMode::All,
        (false, true) => BiasMode::LoraOnly,
        (false, false) => BiasMode::None,
    }
}

/// The adapter's tensors under PEFT's keys: every LoRA weight, and the base
/// biases `bias` asks for.
fn adapter_tensors<T: Scalar>(
    model: &dyn Layer<T>,
    adapted: &[&str],
    bias: BiasMode,
) -> Result<BTreeMap<String, Tensor<T>>> {
    let values: HashMap<String, Tensor<T>> = model.named_weights().into_iter().collect();
    let mut out = BTreeMap::new();
    for e in entries(model, Naming::PyTorch) {
        let in_adapted = adapted.iter().any(|a| e.layer == format!("{a}.base_layer"));
        let wanted = e.lora
            || (is_bias(&e.ours)
                && (bias == BiasMode::All || (bias == BiasMode::LoraOnly && in_adapted)));
        if wanted {
            let v = values
                .get(&e.ours)
                .expect("internal: entries list the model's weights");
            out.insert(format!("{PEFT_PREFIX}{}", e.theirs), e.to_theirs(v)?);
        }
    }
    Ok(out)
}
