//! Weights and adapters on disk: safetensors files and PEFT adapter directories.
//!
//! - [`save_safetensors`] / [`load_safetensors`]: a model's named weights as
//!   a `.safetensors` file, named by layer path ([`Naming::Native`], our
//!   layouts) or as a PyTorch `state_dict` ([`Naming::PyTorch`]: Linear
//!   weights `out × in`, LoRA weights as PEFT names and lays them out), so a
//!   `base.safetensors` written by torch code loads into a model built to
//!   mirror the module tree. f32 and f64 are read and written; f16 and bf16
//!   are converted on load.
//! - [`load_peft_adapter`] / [`save_peft_adapter`]: Hugging Face PEFT (0.21)
//!   LoRA adapter directories (`adapter_config.json` +
//!   `adapter_model.safetensors`), applied to a model with
//!   [`apply_lora`](crate::lora::apply_lora); [`read_peft_adapter`] /
//!   [`write_peft_adapter`] for the directory alone; [`combine_adapters`] is
//!   PEFT's `add_weighted_adapter` (`cat` and `linear`); [`inspect_peft_adapter`]
//!   checks a directory without a model.
//!
//! Writes are atomic: a file is written under a temporary name and renamed,
//! an adapter directory is built as a temporary sibling and swapped in.
//! Reading never panics on a damaged file: every problem is an
//! [`Error::Io`] naming the file, the key, the expected and the actual
//! shape or dtype. The format mapping is in `docs/lora.md` ("On disk").
//!
//! ```no_run
//! use cranelora_core::io::{load_peft_adapter, load_safetensors, save_peft_adapter, Naming};
//! use cranelora_core::layers::{Dense, Sequential};
//! use cranelora_core::{Activation, Rng};
//! # fn main() -> cranelora_core::Result<()> {
//! let mut rng = Rng::new(0);
//! let mut model = Sequential::<f32>::new()
//!     .with("fc1", Dense::new(16, 32, true, Activation::Relu, &mut rng)?)?
//!     .with("fc2", Dense::new(32, 8, true, Activation::Identity, &mut rng)?)?;
//! load_safetensors(&mut model, "base.safetensors".as_ref(), Naming::PyTorch, true)?;
//! load_peft_adapter(&mut model, "adapter".as_ref(), None)?;
//! // ... train ...
//! save_peft_adapter(&model, "adapter-tuned".as_ref(), "default")?;
//! # Ok(())
//! # }
//! ```

mod atomic;
mod combine;
mod inspect;
mod mapping;
mod peft;
mod peft_config;
mod safetensors;

pub use combine::{combine_adapters, Combination};
pub use inspect::{inspect_peft_adapter, AdapterInspection, ModuleInspection};
pub use mapping::{named_tensors, Naming};
pub use peft::{
    adapter_dir, apply_peft_adapter, extract_peft_adapter, load_peft_adapter, read_peft_adapter,
    save_peft_adapter, write_peft_adapter, PeftAdapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
    PEFT_PREFIX,
};
pub use peft_config::PeftConfig;
pub use safetensors::{
    load_safetensors, load_tensors, parse_safetensors, parse_safetensors_except, read_safetensors,
    read_safetensors_ids, save_safetensors, write_safetensors,
};

use crate::Error;
use std::path::Path;

/// An [`Error::Io`] about `path`.
fn io_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The `n` candidates closest to `name` by edit distance (for "did you mean" lists).
fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>, n: usize) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("fc1", "fc1"), 0);
        assert_eq!(edit_distance("fc1", "fc2"), 1);
        assert_eq!(edit_distance("fc", "fc12"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn nearest_orders_by_distance() {
        let got = nearest("encoder.fc3", ["decoder.fc1", "encoder.fc1", "head"], 2);
        assert_eq!(got, vec!["encoder.fc1", "decoder.fc1"]);
    }
}
