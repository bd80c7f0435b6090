//! `apply_lora` — PEFT's `get_peft_model` for a layer tree — and `merge_all`.
//!
//! Matching follows PEFT exactly:
//! - a list of target names matches a layer whose path equals an entry or
//!   ends with `"." + entry` (`"query"` matches `encoder.layer.0.attention.query`);
//! - a single string is a regular expression that must match the whole path;
//! - `rank_pattern` / `alpha_pattern` entries are regular expressions matched
//!   as a suffix at a dot boundary (`^(.*\.)?(pattern)$`); the first entry
//!   that matches a path overrides the default rank or alpha there.
//!
//! Every weight outside an adapter is frozen, except biases under
//! [`BiasMode::All`] (every bias) or [`BiasMode::LoraOnly`] (the biases of
//! adapted layers), as PEFT's `bias` setting.

use super::adapter::LoraAdapter;
use super::config::LoraConfig;
use crate::activation::ActivationLayer;
use crate::layer::Layer;
use crate::{Activation, Error, Result};
use cranelora_kernels::Scalar;
use regex::Regex;
use std::fmt;

/// Which layers get an adapter.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    /// Names matched against the end of each path (PEFT's list form).
    Names(Vec<String>),
    /// A regular expression matched against the whole path (PEFT's string form).
    Regex(String),
}

/// Which biases train (PEFT's `bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BiasMode {
    /// No bias trains.
    #[default]
    None,
    /// Every bias in the model trains.
    All,
    /// The biases of adapted layers train.
    LoraOnly,
}

/// The settings of [`apply_lora`].
#[derive(Clone, Debug)]
pub struct ApplyConfig {
    /// Which layers to adapt.
    pub target_modules: TargetModules,
    /// The adapter settings (rank, alpha, variants) used unless a pattern overrides them.
    pub lora: LoraConfig,
    /// Per-path rank overrides: (regex, rank), first match wins.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-path alpha overrides: (regex, alpha), first match wins.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Which biases train.
    pub bias: BiasMode,
}

impl ApplyConfig {
    /// Adapters with `lora` on every layer whose path ends with one of `names`.
    pub fn new(names: &[&str], lora: LoraConfig) -> Self {
        Self {
            target_modules: TargetModules::Names(names.iter().map(|s| s.to_string()).collect()),
            lora,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            bias: BiasMode::None,
        }
    }
}

/// What [`apply_lora`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraReport {
    /// The adapted paths, in tree order.
    pub adapted: Vec<String>,
    /// Trainable scalars after wrapping.
    pub trainable: usize,
    /// All scalars after wrapping.
    pub total: usize,
}

impl fmt::Display for LoraReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.total.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            self.trainable, self.total
        )
    }
}

fn regex(pattern: &str, anchored: &str) -> Result<Regex> {
    Regex::new(&anchored.replace("{}", pattern))
        .map_err(|e| Error::config("apply_lora", format!("invalid pattern `{pattern}`: {e}")))
}

fn suffix_lookup<V: Copy>(patterns: &[(String, V)], path: &str) -> Result<Option<V>> {
    for (p, v) in patterns {
        if regex(p, r"^(?:.*\.)?(?:{})$")?.is_match(path) {
            return Ok(Some(*v));
        }
    }
    Ok(None)
}

fn is_target(targets: &TargetModules, path: &str) -> Result<bool> {
    Ok(match targets {
        TargetModules::Names(names) => names
            .iter()
            .any(|n| path == n || path.ends_with(&format!(".{n}"))),
        TargetModules::Regex(p) => regex(p, "^(?:{})$")?.is_match(path),
    })
}

/// The layers to adapt for a matched `path`: the layer itself, or — for a
/// fused (PyTorch-layout) MultiHeadAttention, as PEFT does for
/// `nn.MultiheadAttention` — its `in_proj` (one A shared by Q, K, V) and its
/// `out_proj`.
fn expand_fused_attention<T: Scalar>(layer: &dyn Layer<T>, path: &str) -> Vec<String> {
    let fused = layer.kind() == "MultiHeadAttention" && layer.child("in_proj").is_ok();
    if fused {
        vec![format!("{path}.in_proj"), format!("{path}.out_proj")]
    } else {
        vec![path.to_string()]
    }
}

/// Wraps every matching layer of `model` in a [`LoraAdapter`] and freezes
/// every other weight (see the module docs); like PEFT's `get_peft_model`.
///
/// # Errors
/// [`Error::Config`] if nothing matches (listing the available paths), a
/// matched layer cannot be adapted, a pattern is not a valid regex, or a
/// rank does not fit its layer. The model is unchanged when matching or
/// validation fails.
pub fn apply_lora<T: Scalar>(model: &mut dyn Layer<T>, cfg: &ApplyConfig) -> Result<LoraReport> {
    let mut plan: Vec<(String, LoraConfig)> = Vec::new();
    for path in model.layer_paths() {
        if !is_target(&cfg.target_modules, &path)?
            || plan
                .iter()
                .any(|(p, _)| *p == path || path.starts_with(&format!("{p}.")))
        {
            continue;
        }
        let mut lc = cfg.lora;
        lc.rank = suffix_lookup(&cfg.rank_pattern, &path)?.unwrap_or(lc.rank);
        lc.alpha = suffix_lookup(&cfg.alpha_pattern, &path)?.or(lc.alpha);
        for target in expand_fused_attention(model.child(&path)?, &path) {
            LoraAdapter::check(model.child(&target)?, &lc).map_err(|e| e.at(&target))?;
            plan.push((target, lc));
        }
    }
    if plan.is_empty() {
        return Err(Error::config(
            "apply_lora",
            format!(
                "no layer matches {:?}; available paths: {}",
                cfg.target_modules,
                model.layer_paths().join(", ")
            ),
        ));
    }
    model.set_trainable(false);
    for (path, lc) in &plan {
        let slot = model.child_mut(path)?;
        let base = std::mem::replace(slot, Box::new(ActivationLayer::new(Activation::Identity)));
        *slot = Box::new(LoraAdapter::new(base, *lc)?);
        if !lc.freeze_base {
            slot.child_mut("base_layer")?.set_trainable(true);
        }
    }
    let adapted: Vec<String> = plan.into_iter().map(|(p, _)| p).collect();
    if cfg.bias != BiasMode::None {
        model.for_each_weight_mut("", &mut |path, w| {
            let in_adapter = adapted
                .iter()
                .any(|p| path.starts_with(&format!("{p}.base_layer.")));
            if w.name() == "bias" && (cfg.bias == BiasMode::All || in_adapter) {
                w.set_trainable(true);
            }
        });
    }
    Ok(LoraReport {
        adapted,
        trainable: model.parameter_count(),
        total: model.total_parameter_count(),
    })
}

/// Replaces every [`LoraAdapter`] below `model` by its merged plain layer
/// ([`LoraAdapter::merge`]); returns how many were merged. (An adapter at
/// the root itself is merged with `LoraAdapter::merge` directly.)
///
/// # Errors
/// The first merge that fails (non-finite weights), naming its path; the
/// adapters before it are already merged.
pub fn merge_all<T: Scalar>(model: &mut dyn Layer<T>) -> Result<usize> {
    let mut merged: Vec<String> = Vec::new();
    for path in model.layer_paths() {
        if merged.iter().any(|p| path.starts_with(&format!("{p}."))) {
            continue;
        }
        let plain = match model.child(&path)?.as_lora_adapter() {
            Some(adapter) => adapter.merge().map_err(|e| e.at(&path))?,
            None => continue,
        };
        model.replace_child(&path, plain)?;
        merged.push(path);
    }
    Ok(merged.len())
}
