//! [`BertConfig`]: the fields of a Hugging Face BERT `config.json` the
//! encoder needs, parsed and checked.
//!
//! Fields other models put in the same file (`architectures`,
//! `tie_word_embeddings`, `use_cache`, dropout probabilities, …) are
//! ignored: they do not change an eval-mode forward pass. Fields that would
//! change it and that the encoder does not implement (`position_embedding_type`
//! other than `absolute`, `is_decoder`, `add_cross_attention`) are errors.

use crate::{Activation, Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

const KIND: &str = "BertConfig";

/// The shape and numerics of a BERT-family encoder (BERT, MiniLM, …).
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Token vocabulary (`vocab_size`).
    pub vocab_size: usize,
    /// Model width `d` (`hidden_size`).
    pub hidden_size: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`num_attention_heads`); must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Feed-forward width (`intermediate_size`).
    pub intermediate_size: usize,
    /// The feed-forward activation (`hidden_act`: `gelu` is exact erf
    /// GELU, `gelu_new` / `gelu_pytorch_tanh` the tanh form, `relu`).
    pub hidden_act: Activation,
    /// ε of every LayerNorm (`layer_norm_eps`, default 1e-12).
    pub layer_norm_eps: f64,
    /// Longest sequence (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// Token-type (segment) vocabulary (`type_vocab_size`, default 2).
    pub type_vocab_size: usize,
    /// The padding id (`pad_token_id`, default 0).
    pub pad_token_id: usize,
}

impl BertConfig {
    /// Parses the text of a `config.json`; `origin` names it in errors.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file and the field: invalid JSON, a missing
    /// or mistyped size, an unknown `hidden_act`, or a feature the encoder
    /// does not implement; [`Error::Config`] for inconsistent sizes.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self> {
        let bad = |message: String| Error::Io {
            path: origin.display().to_string(),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        let size =
            |name: &str, default: Option<usize>| field_usize(obj, name, default).map_err(&bad);
        let act = match obj.get("hidden_act").and_then(Value::as_str) {
            None => return Err(bad("field `hidden_act`: missing or not a string".into())),
            Some(name) => activation(name).map_err(&bad)?,
        };
        let eps = match obj.get("layer_norm_eps") {
            None => 1e-12,
            Some(v) => v.as_f64().ok_or_else(|| {
                bad(format!(
                    "field `layer_norm_eps`: expected a number, got {v}"
                ))
            })?,
        };
        unsupported_features(obj).map_err(&bad)?;
        let config = Self {
            vocab_size: size("vocab_size", None)?,
            hidden_size: size("hidden_size", None)?,
            num_hidden_layers: size("num_hidden_layers", None)?,
            num_attention_heads: size("num_attention_heads", None)?,
            intermediate_size: size("intermediate_size", None)?,
            hidden_act: act,
            layer_norm_eps: eps,
            max_position_embeddings: size("max_position_embeddings", Some(512))?,
            type_vocab_size: size("type_vocab_size", Some(2))?,
            pad_token_id: size("pad_token_id", Some(0))?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses `path` (a `config.json`).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; as [`BertConfig::from_json`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_json(&text, path)
    }

    /// The width of one attention head, `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The number of weights of a model of this configuration (with the
    /// pooler when `pooler`), or `None` if it overflows `usize`.
    pub fn parameter_count(&self, pooler: bool) -> Option<usize> {
        let (d, ffn) = (self.hidden_size, self.intermediate_size);
        let dense = |i: usize, o: usize| i.checked_mul(o)?.checked_add(o);
        let tables = self
            .vocab_size
            .checked_add(self.max_position_embeddings)?
            .checked_add(self.type_vocab_size)?
            .checked_mul(d)?;
        let norm = d.checked_mul(2)?;
        let layer = dense(d, d)?
            .checked_mul(4)?
            .checked_add(dense(d, ffn)?)?
            .checked_add(dense(ffn, d)?)?
            .checked_add(norm.checked_mul(2)?)?;
        let layers = layer.checked_mul(self.num_hidden_layers)?;
        let pool = if pooler { dense(d, d)? } else { 0 };
        tables
            .checked_add(norm)?
            .checked_add(layers)?
            .checked_add(pool)
    }

    /// Checks that the sizes are positive and consistent.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::config(KIND, format!("`{name}` must be positive")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            let msg = format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            );
            return Err(Error::config(KIND, msg));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            let msg = format!(
                "layer_norm_eps {} must be finite and ≥ 0",
                self.layer_norm_eps
            );
            return Err(Error::config(KIND, msg));
        }
        Ok(())
    }
}

/// A non-negative integer field, or `default` when it is absent.
fn field_usize(
    obj: &Map<String, Value>,
    name: &str,
    default: Option<usize>,
) -> std::result::Result<usize, String> {
    match (obj.get(name), default) {
        (None | Some(Value::Null), Some(d)) => Ok(d),
        (None, None) => Err(format!("field `{name}` is missing")),
        (Some(v), _) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("field `{name}`: expected a non-negative integer, got {v}")),
    }
}

/// Hugging Face's `hidden_act` names (transformers' `ACT2FN`) that the encoder implements.
fn activation(name: &str) -> std::result::Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        "silu" | "swish" => Ok(Activation::Silu),
        "tanh" => Ok(Activation::Tanh),
        other => Err(format!(
            "field `hidden_act`: `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu, tanh)"
        )),
    }
}

/// Errors for configuration values that change the forward pass in ways
/// the encoder does not implement.
fn unsupported_features(obj: &Map<String, Value>) -> std::result::Result<(), String> {
    match obj.get("position_embedding_type").and_then(Value::as_str) {
        None | Some("absolute") => {}
        Some(other) => {
            return Err(format!(
                "field `position_embedding_type`: `{other}` is not supported (only `absolute`)"
            ))
        }
    }
    for flag in ["is_decoder", "add_cross_attention"] {
        if obj.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(format!("field `{flag}`: only encoders are supported"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "type_vocab_size": 2,
        "use_cache": true, "architectures": ["BertModel"]}"#;

    #[test]
    fn parses_sizes_activation_and_defaults() {
        let c = BertConfig::from_json(TINY, Path::new("config.json")).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim()),
            (32, 2, 8)
        );
        assert_eq!(c.hidden_act, Activation::GeluErf);
        assert_eq!((c.layer_norm_eps, c.pad_token_id), (1e-12, 0));
        let tanh = TINY.replace("\"gelu\"", "\"gelu_new\"");
        let c = BertConfig::from_json(&tanh, Path::new("c")).unwrap();
        assert_eq!(c.hidden_act, Activation::GeluTanh);
    }

    #[test]
    fn bad_fields_are_errors_naming_file_and_field() {
        let cases = [
            (TINY.replace("\"gelu\"", "\"quick_gelu\""), "quick_gelu"),
            (
                TINY.replace("\"hidden_size\": 32", "\"hidden_size\": -3"),
                "hidden_size",
            ),
            (TINY.replace("\"vocab_size\": 128,", ""), "vocab_size"),
            (
                TINY.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
                "divide",
            ),
            (
                TINY.replace(
                    "\"use_cache\": true",
                    "\"position_embedding_type\": \"relative_key\"",
                ),
                "relative_key",
            ),
            ("[1, 2]".to_string(), "object"),
        ];
        for (text, part) in cases {
            let msg = BertConfig::from_json(&text, Path::new("dir/config.json"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(part), "{msg}");
            assert!(msg.contains("config.json") || msg.contains(KIND), "{msg}");
        }
    }
}
