//! `adapter_config.json` as PEFT 0.21 writes it.
//!
//! Parsing checks every field's type (a wrong type is an error naming the
//! field) and refuses, listing them all, the fields that would change the
//! math and are not supported here: `layers_to_transform`, `layers_pattern`,
//! `modules_to_save`, `exclude_modules`, `init_lora_weights` other than
//! `true` / `false` / `"gaussian"`, a non-empty `loftq_config`, any other
//! non-null variant config (`eva_config`, `corda_config`, …), `use_qalora`,
//! `layer_replication`, `target_parameters`, `trainable_token_indices`,
//! `alora_invocation_tokens`, and unknown fields with a non-empty value.
//! Writing produces every field PEFT writes, keys sorted as PEFT sorts them.

use super::io_error;
use crate::lora::{ApplyConfig, BiasMode, LoraConfig, LoraInit, TargetModules};
use crate::{Error, Result};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The fields PEFT 0.21 writes, with the values of a default `LoraConfig`.
const PEFT_DEFAULTS: &str = r#"{
  "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null,
  "auto_mapping": null, "base_model_name_or_path": null, "bias": "none",
  "corda_config": null, "ensure_weight_tying": false, "eva_config": null,
  "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": true,
  "init_lora_weights": true, "kasa_config": null, "layer_replication": null,
  "layers_pattern": null, "layers_to_transform": null, "loftq_config": {},
  "lora_alpha": 8, "lora_bias": false, "lora_dropout": 0.0, "lora_ga_config": null,
  "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
  "monteclora_config": null, "peft_type": "LORA", "peft_version": "0.21.2",
  "qalora_group_size": 16, "r": 8, "rank_pattern": {}, "revision": null,
  "target_modules": null, "target_parameters": null, "task_type": null,
  "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
  "use_qalora": false, "use_rslora": false, "velora_config": null
}"#;

/// Fields read into [`PeftConfig`]'s typed fields.
const TYPED: &[&str] = &[
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
    "bias",
    "lora_bias",
    "fan_in_fan_out",
    "init_lora_weights",
    "peft_type",
];

/// Fields that change nothing in the math (kept and written back as read).
const INFORMATIONAL: &[&str] = &[
    "auto_mapping",
    "base_model_name_or_path",
    "ensure_weight_tying",
    "inference_mode",
    "megatron_core",
    "peft_version",
    "qalora_group_size",
    "revision",
    "task_type",
];

/// A PEFT LoRA adapter configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftConfig {
    /// Default rank `r`.
    pub r: usize,
    /// Default `lora_alpha`.
    pub lora_alpha: f64,
    /// `lora_dropout` (training only; not applied by our adapters).
    pub lora_dropout: f64,
    /// `target_modules`: a list of names, or a regex string.
    pub target_modules: TargetModules,
    /// `rank_pattern` in PEFT's lookup order (the file's keys, sorted).
    pub rank_pattern: Vec<(String, usize)>,
    /// `alpha_pattern` in PEFT's lookup order.
    pub alpha_pattern: Vec<(String, f64)>,
    /// `use_rslora`: scaling α/√r.
    pub use_rslora: bool,
    /// `use_dora`.
    pub use_dora: bool,
    /// `bias`: which base biases were trained and saved.
    pub bias: BiasMode,
    /// `lora_bias`: a bias on B.
    pub lora_bias: bool,
    /// `fan_in_fan_out`: base weights stored `in × out` (GPT-2's Conv1D). The
    /// adapter tensors are the same either way.
    pub fan_in_fan_out: bool,
    /// `init_lora_weights` (true → Default, false → Random, "gaussian").
    pub init_lora_weights: LoraInit,
    /// Every other field as read, written back unchanged.
    other: BTreeMap<String, Value>,
}

impl PeftConfig {
    /// Rank `r`, `lora_alpha`, the given target names; every other field as
    /// PEFT 0.21's defaults.
    pub fn new(r: usize, lora_alpha: f64, targets: TargetModules) -> Self {
        let mut cfg = Self::parse_lenient(PEFT_DEFAULTS, Path::new("<defaults>"))
            .expect("internal: the defaults parse")
            .0;
        cfg.r = r;
        cfg.lora_alpha = lora_alpha;
        cfg.target_modules = targets;
        cfg
    }

    /// Parses `adapter_config.json` text; `path` names it in errors.
    ///
    /// # Errors
    /// [`Error::Io`] on invalid JSON, a field of the wrong type (naming it),
    /// or unsupported fields (listing all of them).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let (cfg, unsupported) = Self::parse_lenient(text, path)?;
        if !unsupported.is_empty() {
            return Err(io_error(
                path,
                format!(
                    "unsupported PEFT config fields (they change the math): {}",
                    unsupported.join("; ")
                ),
            ));
        }
        Ok(cfg)
    }

    /// Parses, returning the unsupported fields instead of refusing them.
    ///
    /// # Errors
    /// [`Error::Io`] on invalid JSON or a field of the wrong type.
    pub fn parse_lenient(text: &str, path: &Path) -> Result<(Self, Vec<String>)> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| io_error(path, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| io_error(path, "expected a JSON object"))?;
        let f = Fields { obj, path };
        let mut unsupported = Vec::new();
        match obj.get("peft_type") {
            Some(Value::String(s)) if s == "LORA" => {}
            other => unsupported.push(format!("peft_type = {} (only \"LORA\")", show(other))),
        }
        let init_lora_weights = match obj.get("init_lora_weights") {
            None | Some(Value::Bool(true)) => LoraInit::Default,
            Some(Value::Bool(false)) => LoraInit::Random,
            Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
            other => {
                unsupported.push(format!("init_lora_weights = {}", show(other)));
                LoraInit::Default
            }
        };
        let target_modules = match obj.get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(_)) => TargetModules::Names(f.strings("target_modules")?),
            None | Some(Value::Null) => {
                unsupported.push("target_modules = null (PEFT's per-architecture defaults)".into());
                TargetModules::Names(Vec::new())
            }
            Some(other) => {
                return Err(f.wrong("target_modules", "a list of strings or a string", other))
            }
        };
        let bias = match f.string("bias", "none")?.as_str() {
            "none" => BiasMode::None,
            "all" => BiasMode::All,
            "lora_only" => BiasMode::LoraOnly,
            other => {
                return Err(io_error(
                    path,
                    format!(
                    "field `bias`: expected \"none\", \"all\" or \"lora_only\", got \"{other}\""
                ),
                ))
            }
        };
        let cfg = Self {
            r: f.usize("r", 8)?,
            lora_alpha: f.f64("lora_alpha", 8.0)?,
            lora_dropout: f.f64("lora_dropout", 0.0)?,
            target_modules,
            rank_pattern: f.pattern(
                "rank_pattern",
                |v| v.as_u64().and_then(|n| usize::try_from(n).ok()),
                "a non-negative integer",
            )?,
            alpha_pattern: f.pattern("alpha_pattern", Value::as_f64, "a number")?,
            use_rslora: f.bool("use_rslora")?,
            use_dora: f.bool("use_dora")?,
            bias,
            lora_bias: f.bool("lora_bias")?,
            fan_in_fan_out: f.bool("fan_in_fan_out")?,
            init_lora_weights,
            other: obj
                .iter()
                .filter(|(k, _)| !TYPED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        for (k, v) in &cfg.other {
            if !INFORMATIONAL.contains(&k.as_str()) && !is_empty(k, v) {
                unsupported.push(format!("{k} = {v}"));
            }
        }
        for (p, _) in &cfg.rank_pattern {
            Regex::new(p).map_err(|e| {
                io_error(
                    path,
                    format!("field `rank_pattern`: invalid regex `{p}`: {e}"),
                )
            })?;
        }
        Ok((cfg, unsupported))
    }

    /// The JSON PEFT writes: every field, keys sorted, two-space indent.
    pub fn to_json(&self) -> String {
        let mut obj: Map<String, Value> = match serde_json::from_str(PEFT_DEFAULTS) {
            Ok(Value::Object(m)) => m,
            _ => unreachable!("internal: the defaults are a JSON object"),
        };
        obj.extend(self.other.iter().map(|(k, v)| (k.clone(), v.clone())));
        let targets = match &self.target_modules {
            TargetModules::Names(n) => Value::from(n.clone()),
            TargetModules::Regex(s) => Value::from(s.clone()),
        };
        let init = match self.init_lora_weights {
            LoraInit::Default => Value::Bool(true),
            LoraInit::Random => Value::Bool(false),
            LoraInit::Gaussian => Value::from("gaussian"),
        };
        let bias = match self.bias {
            BiasMode::None => "none",
            BiasMode::All => "all",
            BiasMode::LoraOnly => "lora_only",
        };
        let set = [
            ("r", Value::from(self.r)),
            ("lora_alpha", number(self.lora_alpha)),
            ("lora_dropout", Value::from(self.lora_dropout)),
            ("target_modules", targets),
            (
                "rank_pattern",
                self.rank_pattern
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(*v)))
                    .collect::<Map<_, _>>()
                    .into(),
            ),
            (
                "alpha_pattern",
                self.alpha_pattern
                    .iter()
                    .map(|(k, v)| (k.clone(), number(*v)))
                    .collect::<Map<_, _>>()
                    .into(),
            ),
            ("use_rslora", Value::Bool(self.use_rslora)),
            ("use_dora", Value::Bool(self.use_dora)),
            ("bias", Value::from(bias)),
            ("lora_bias", Value::Bool(self.lora_bias)),
            ("fan_in_fan_out", Value::Bool(self.fan_in_fan_out)),
            ("init_lora_weights", init),
            ("peft_type", Value::from("LORA")),
        ];
        obj.extend(set.into_iter().map(|(k, v)| (k.to_string(), v)));
        serde_json::to_string_pretty(&Value::Object(obj))
            .expect("internal: a JSON value serializes")
    }

    /// A field kept as read (informational or unknown-but-empty), if present.
    pub fn other_field(&self, name: &str) -> Option<&Value> {
        self.other.get(name)
    }

    /// The rank of the module at `path` (`rank_pattern`'s first match, else `r`).
    pub fn rank_for(&self, path: &str) -> usize {
        lookup(&self.rank_pattern, path).unwrap_or(self.r)
    }

    /// The alpha of the module at `path` (`alpha_pattern`'s first match, else `lora_alpha`).
    pub fn alpha_for(&self, path: &str) -> f64 {
        lookup(&self.alpha_pattern, path).unwrap_or(self.lora_alpha)
    }

    /// The scaling of the module at `path`: α/r, or α/√r with rsLoRA.
    pub fn scaling_for(&self, path: &str) -> f64 {
        let (a, r) = (self.alpha_for(path), self.rank_for(path) as f64);
        if self.use_rslora {
            a / r.sqrt()
        } else {
            a / r
        }
    }

    /// Whether `target_modules` selects the module at `path` (PEFT's rule).
    ///
    /// # Errors
    /// [`Error::Config`] if the regex is invalid.
    pub fn targets(&self, path: &str) -> Result<bool> {
        Ok(match &self.target_modules {
            TargetModules::Names(names) => names
                .iter()
                .any(|n| path == n || path.ends_with(&format!(".{n}"))),
            TargetModules::Regex(p) => Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| {
                    Error::config(
                        "PeftConfig",
                        format!("invalid target_modules regex `{p}`: {e}"),
                    )
                })?
                .is_match(path),
        })
    }

    /// The [`ApplyConfig`] that builds these adapters with [`crate::lora::apply_lora`].
    pub fn apply_config(&self) -> ApplyConfig {
        let lora = LoraConfig::new(self.r)
            .with_alpha(self.lora_alpha)
            .with_rslora(self.use_rslora)
            .with_dora(self.use_dora)
            .with_lora_bias(self.lora_bias)
            .with_init(self.init_lora_weights);
        ApplyConfig {
            target_modules: self.target_modules.clone(),
            lora,
            rank_pattern: self.rank_pattern.clone(),
            alpha_pattern: self.alpha_pattern.clone(),
            bias: self.bias,
        }
    }
}

/// PEFT's `get_pattern_key`: the first pattern `p` with `(.*\.)?(p)$` matching.
fn lookup<V: Copy>(patterns: &[(String, V)], path: &str) -> Option<V> {
    patterns.iter().find_map(|(p, v)| {
        Regex::new(&format!(r"^(?:.*\.)?(?:{p})$"))
            .ok()
            .filter(|re| re.is_match(path))
            .map(|_| *v)
    })
}

/// An integral α as a JSON integer (as PEFT writes it), otherwise a float.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "missing".to_string(), Value::to_string)
}

/// Whether a field's value requests nothing (null, false, empty), so it can be ignored.
fn is_empty(name: &str, v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        // A bare number configures nothing by itself except where it selects layers.
        Value::Number(_) => name != "layers_to_transform",
        Value::Bool(true) => false,
    }
}

/// Typed access to a config object's fields, with errors naming the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn wrong(&self, name: &str, expected: &str, got: &Value) -> Error {
        io_error(
            self.path,
            format!("field `{name}`: expected {expected}, got {got}"),
        )
    }

    fn usize(&self, name: &str, default: usize) -> Result<usize> {
        match self.obj.get(name) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| self.wrong(name, "a non-negative integer", v)),
        }
    }

    fn f64(&self, name: &str, default: f64) -> Result<f64> {
        match self.obj.get(name) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(name, "a number", v)),
        }
    }

    fn bool(&self, name: &str) -> Result<bool> {
        match self.obj.get(name) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.wrong(name, "true or false", v)),
        }
    }

    fn string(&self, name: &str, default: &str) -> Result<String> {
        match self.obj.get(name) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.wrong(name, "a string", v)),
        }
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        let arr = self
            .obj
            .get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.wrong(name, "a list of strings", v))
            })
            .collect()
    }

    fn pattern<V>(
        &self,
        name: &str,
        get: impl Fn(&Value) -> Option<V>,
        what: &str,
    ) -> Result<Vec<(String, V)>> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(m)) => {
                // PEFT writes sorted keys, so a reloaded config looks patterns up in this order.
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                sorted
                    .into_iter()
                    .map(|(k, v)| {
                        get(v)
                            .map(|x| (k.clone(), x))
                            .ok_or_else(|| self.wrong(&format!("{name}.{k}"), what, v))
                    })
                    .collect()
            }
            Some(other) => Err(self.wrong(name, "an object", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_json() {
        let cfg = PeftConfig::new(4, 8.0, TargetModules::Names(vec!["fc1".into()]));
        let back = PeftConfig::from_json(&cfg.to_json(), Path::new("mem")).expect("test");
        assert_eq!(back, cfg);
        assert!(cfg.to_json().contains("\"lora_alpha\": 8,"));
    }

    #[test]
    fn unsupported_fields_are_all_listed() {
        let text = r#"{"peft_type": "LORA", "r": 4, "target_modules": ["fc1"],
            "layers_to_transform": [0], "modules_to_save": ["head"],
            "init_lora_weights": "pissa", "loftq_config": {"loftq_bits": 4}}"#;
        let err = PeftConfig::from_json(text, Path::new("cfg.json"))
            .expect_err("test")
            .to_string();
        for f in [
            "layers_to_transform",
            "modules_to_save",
            "pissa",
            "loftq_config",
            "cfg.json",
        ] {
            assert!(err.contains(f), "{err}");
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = PeftConfig::from_json(
            r#"{"peft_type": "LORA", "r": "4", "target_modules": ["a"]}"#,
            Path::new("c"),
        )
        .expect_err("test")
        .to_string();
        assert!(err.contains("field `r`"), "{err}");
    }

    #[test]
    fn patterns_match_as_dotted_suffixes_in_sorted_order() {
        let mut cfg = PeftConfig::new(4, 8.0, TargetModules::Names(vec!["q".into()]));
        cfg.rank_pattern = vec![("layer.0.q".into(), 2), ("q".into(), 6)];
        assert_eq!(cfg.rank_for("enc.layer.0.q"), 2);
        assert_eq!(cfg.rank_for("enc.layer.1.q"), 6);
        assert_eq!(cfg.rank_for("enc.layer.1.k"), 4);
        assert_eq!(cfg.alpha_for("x"), 8.0);
    }
}
