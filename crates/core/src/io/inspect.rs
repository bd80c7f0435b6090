//! Inspecting a PEFT adapter directory without a model: what `cranelora
//! peft` prints. Problems (missing files, unsupported fields, A and B that
//! disagree, tensors the config does not imply) are collected, not raised.

use super::io_error;
use super::peft::{adapter_dir, ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX};
use super::peft_config::PeftConfig;
use super::safetensors::read_safetensors;
use crate::lora::BiasMode;
use crate::{Result, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One adapted module as the files describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleInspection {
    /// Module path (without `base_model.model.`).
    pub path: String,
    /// `"linear"`, `"conv2d"` or `"embedding"`.
    pub kind: &'static str,
    /// The rank (rows of A).
    pub rank: usize,
    /// α from the config (`alpha_pattern` applied); NaN without a config.
    pub alpha: f64,
    /// The scaling α/r or α/√r; NaN without a config.
    pub scaling: f64,
    /// Rows of our A: `in`, `in·kh·kw` or the vocabulary size.
    pub fan_in: usize,
    /// Output features (rows of PEFT's B).
    pub out: usize,
    /// Scalars in the module's tensors.
    pub parameters: usize,
    /// Whether a DoRA magnitude is present.
    pub dora: bool,
    /// Whether a LoRA bias (`lora_B.bias`) is present.
    pub lora_bias: bool,
}

/// What [`inspect_peft_adapter`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInspection {
    /// The adapter's directory.
    pub dir: PathBuf,
    /// The config, if it parsed (even with unsupported fields).
    pub config: Option<PeftConfig>,
    /// The adapted modules, by path.
    pub modules: Vec<ModuleInspection>,
    /// Keys of saved base biases (`bias = "all"` / `"lora_only"`).
    pub base_biases: Vec<String>,
    /// Scalars in the weights file.
    pub total_parameters: usize,
    /// Everything that would stop or change a load.
    pub problems: Vec<String>,
}

/// Reads adapter `name` (`None`: the default) of `dir` and checks it.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) only if the directory does not exist;
/// every other problem is listed in [`AdapterInspection::problems`].
pub fn inspect_peft_adapter(dir: &Path, name: Option<&str>) -> Result<AdapterInspection> {
    let d = adapter_dir(dir, name);
    if !d.is_dir() {
        return Err(io_error(&d, "no such adapter directory"));
    }
    let mut problems = Vec::new();
    let config = read_config(&d.join(ADAPTER_CONFIG), &mut problems);
    let weights = d.join(ADAPTER_WEIGHTS);
    let tensors = if weights.exists() {
        read_safetensors::<f32>(&weights).unwrap_or_else(|e| {
            problems.push(e.to_string());
            BTreeMap::new()
        })
    } else {
        problems.push(format!("missing {ADAPTER_WEIGHTS}"));
        BTreeMap::new()
    };
    let mut groups: BTreeMap<String, BTreeMap<&'static str, &Tensor<f32>>> = BTreeMap::new();
    let mut base_biases = Vec::new();
    for (key, t) in &tensors {
        let Some(rest) = key.strip_prefix(PEFT_PREFIX) else {
            problems.push(format!("key `{key}` does not start with `{PEFT_PREFIX}`"));
            continue;
        };
        match ROLES
            .iter()
            .find_map(|r| rest.strip_suffix(r).map(|m| (m, *r)))
        {
            Some((module, role)) => {
                groups
                    .entry(module.to_string())
                    .or_default()
                    .insert(role, t);
            }
            None if rest.ends_with(".bias") => base_biases.push(key.clone()),
            None => problems.push(format!("key `{key}` is not a PEFT LoRA tensor")),
        }
    }
    if let Some(cfg) = &config {
        if cfg.bias == BiasMode::None && !base_biases.is_empty() {
            problems.push(format!(
                "{} base biases saved, but bias = \"none\"",
                base_biases.len()
            ));
        }
    }
    let modules = groups
        .iter()
        .filter_map(|(path, g)| module(path, g, config.as_ref(), &mut problems))
        .collect();
    Ok(AdapterInspection {
        dir: d,
        config,
        modules,
        base_biases,
        total_parameters: tensors.values().map(Tensor::len).sum(),
        problems,
    })
}

const ROLES: &[&str] = &[
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_B.bias",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector",
];

fn read_config(path: &Path, problems: &mut Vec<String>) -> Option<PeftConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("cannot read {ADAPTER_CONFIG}: {e}"));
            return None;
        }
    };
    match PeftConfig::parse_lenient(&text, path) {
        Ok((cfg, unsupported)) => {
            if !unsupported.is_empty() {
                problems.push(format!(
                    "unsupported config fields: {}",
                    unsupported.join("; ")
                ));
            }
            Some(cfg)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

/// One module's summary; pushes its problems.
fn module(
    path: &str,
    g: &BTreeMap<&'static str, &Tensor<f32>>,
    cfg: Option<&PeftConfig>,
    problems: &mut Vec<String>,
) -> Option<ModuleInspection> {
    let embedding = g.contains_key(".lora_embedding_A") || g.contains_key(".lora_embedding_B");
    let (ka, kb) = if embedding {
        (".lora_embedding_A", ".lora_embedding_B")
    } else {
        (".lora_A.weight", ".lora_B.weight")
    };
    let (Some(a), Some(b)) = (g.get(ka), g.get(kb)) else {
        problems.push(format!("module `{path}`: needs both{ka} and{kb}"));
        return None;
    };
    let (sa, sb) = (a.shape(), b.shape());
    let conv = sa.len() == 4;
    if sa.len() < 2 || sb.len() < 2 {
        problems.push(format!(
            "module `{path}`: A {sa:?} and B {sb:?} must have at least 2 axes"
        ));
        return None;
    }
    let (rank, out) = (sa[0], sb[0]);
    if sb[1] != rank || (conv && sb[2..] != [1, 1]) || (!conv && (sa.len() != 2 || sb.len() != 2)) {
        problems.push(format!(
            "module `{path}`: A {sa:?} and B {sb:?} disagree (A is r × in…, B out × r…)"
        ));
    }
    let mut m = ModuleInspection {
        path: path.to_string(),
        kind: if embedding {
            "embedding"
        } else if conv {
            "conv2d"
        } else {
            "linear"
        },
        rank,
        alpha: f64::NAN,
        scaling: f64::NAN,
        fan_in: sa[1..].iter().product(),
        out,
        parameters: g.values().map(|t| t.len()).sum(),
        dora: g.contains_key(".lora_magnitude_vector"),
        lora_bias: g.contains_key(".lora_B.bias"),
    };
    if let Some(mag) = g.get(".lora_magnitude_vector") {
        if mag.len() != out {
            problems.push(format!(
                "module `{path}`: magnitude {:?} for {out} outputs",
                mag.shape()
            ));
        }
    }
    if let Some(cfg) = cfg {
        m.alpha = cfg.alpha_for(path);
        m.scaling = cfg.scaling_for(path);
        let want = cfg.rank_for(path);
        if want != rank {
            problems.push(format!(
                "module `{path}`: rank {rank} in the file, {want} in the config"
            ));
        }
        if m.dora != cfg.use_dora {
            problems.push(format!(
                "module `{path}`: DoRA magnitude {} but use_dora = {}",
                presence(m.dora),
                cfg.use_dora
            ));
        }
        if m.lora_bias != cfg.lora_bias {
            problems.push(format!(
                "module `{path}`: lora_B.bias {} but lora_bias = {}",
                presence(m.lora_bias),
                cfg.lora_bias
            ));
        }
        if !cfg.targets(path).unwrap_or(false) {
            problems.push(format!("module `{path}` is not selected by target_modules"));
        }
    }
    Some(m)
}

fn presence(p: bool) -> &'static str {
    if p {
        "present"
    } else {
        "absent"
    }
}
