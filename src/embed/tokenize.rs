//! Text to [`EncodedBatch`] with the Hugging Face `tokenizers` crate and
//! the model's `tokenizer.json` (WordPiece for the BERT family).
//!
//! The crate is built without its default features: no `onig` (a C regex
//! library) and no `esaxx_fast` (C++ suffix arrays, used only to *train*
//! Unigram tokenizers); `fancy-regex` replaces onig for the pre-tokenizer
//! patterns. BERT's normalizer, pre-tokenizer (whitespace and punctuation
//! splitting) and WordPiece model do not use those regexes, and the fixture
//! test checks that the ids are exactly those of the Python tokenizer.
//!
//! Batches are always padded on the right to the longest sequence (the
//! `[PAD]` id, mask 0, type 0) whatever `tokenizer.json` says (all-MiniLM's
//! file pads every input to 128). Truncation follows sentence-transformers:
//! `max_seq_length` of `sentence_bert_config.json` when the folder has one
//! (256 for all-MiniLM-L6-v2, whose `tokenizer.json` says 128), else the
//! file's own limit, never more than `max_position_embeddings`.

use super::EncodedBatch;
use anyhow::{anyhow, bail, Result};
use cranelora_core::models::BertConfig;
use cranelora_core::IdTensor;
use std::path::Path;
use tokenizers::{
    EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams,
};

/// One input: a sentence, or a sentence pair (token types 0 then 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    /// One sentence.
    Single(String),
    /// Two segments, `[CLS] A [SEP] B [SEP]`.
    Pair(String, String),
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Single(s.to_string())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Single(s)
    }
}

/// Loads `tokenizer.json` and sets padding (longest, right) and, when the
/// file has none or a longer one, truncation to the model's positions.
///
/// # Errors
/// If the file cannot be read or parsed (naming it), or has no pad token
/// and the config's `pad_token_id` is not in its vocabulary.
pub fn load_tokenizer(path: &Path, config: &BertConfig) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path)
        .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
    let pad_id = u32::try_from(config.pad_token_id)?;
    let pad_token = tok
        .get_padding()
        .map(|p| p.pad_token.clone())
        .or_else(|| tok.id_to_token(pad_id))
        .ok_or_else(|| anyhow!("{}: no pad token with id {pad_id}", path.display()))?;
    let pad_id = tok.token_to_id(&pad_token).unwrap_or(pad_id);
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token,
    }));
    let max = config.max_position_embeddings;
    let truncation = match (tok.get_truncation(), max_seq_length(path)?) {
        (t, Some(len)) => TruncationParams {
            max_length: len.min(max),
            ..t.cloned().unwrap_or_default()
        },
        (Some(t), None) if t.max_length <= max => t.clone(),
        (t, None) => TruncationParams {
            max_length: max,
            ..t.cloned().unwrap_or_default()
        },
    };
    tok.with_truncation(Some(truncation))
        .map_err(|e| anyhow!("{}: cannot set truncation: {e}", path.display()))?;
    Ok(tok)
}

/// sentence-transformers' `max_seq_length` from `sentence_bert_config.json`
/// next to the tokenizer, if that file exists.
fn max_seq_length(tokenizer_path: &Path) -> Result<Option<usize>> {
    let path = tokenizer_path.with_file_name("sentence_bert_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(value
        .get("max_seq_length")
        .and_then(serde_json::Value::as_u64)
        .and_then(|n| usize::try_from(n).ok()))
}

/// Tokenizes `texts` (special tokens added) into one padded batch.
///
/// # Errors
/// If `texts` is empty or the tokenizer fails.
pub fn encode(tok: &Tokenizer, texts: &[Text]) -> Result<EncodedBatch> {
    if texts.is_empty() {
        bail!("nothing to tokenize: no texts");
    }
    let inputs: Vec<EncodeInput> = texts
        .iter()
        .map(|t| match t {
            Text::Single(a) => EncodeInput::from(a.as_str()),
            Text::Pair(a, b) => EncodeInput::from((a.as_str(), b.as_str())),
        })
        .collect();
    let encodings = tok
        .encode_batch(inputs, true)
        .map_err(|e| anyhow!("tokenization failed: {e}"))?;
    let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
    let shape = [encodings.len(), seq];
    let gather = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<IdTensor> {
        let mut v = Vec::with_capacity(shape[0] * seq);
        for e in &encodings {
            let row = f(e);
            if row.len() != seq {
                bail!(
                    "the tokenizer returned rows of different lengths ({} and {seq})",
                    row.len()
                );
            }
            v.extend(row.iter().map(|&x| i64::from(x)));
        }
        Ok(IdTensor::from_vec(v, &shape)?)
    };
    EncodedBatch::new(
        gather(&|e| e.get_ids())?,
        gather(&|e| e.get_type_ids())?,
        gather(&|e| e.get_attention_mask())?,
    )
}
