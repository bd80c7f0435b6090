//! Pretrained model families built from core layers and loaded from
//! Hugging Face checkpoint folders.
//!
//! - [`BertModel`] ([`BertConfig`]): BERT-family encoders (BERT, MiniLM,
//!   sentence-transformers checkpoints) from `config.json` +
//!   `model.safetensors`; PEFT LoRA adapters load onto it by module path
//!   ([`crate::io::load_peft_adapter`]).
//! - [`mean_pool`], [`l2_normalize`]: sentence embeddings as
//!   sentence-transformers computes them for this family.

mod bert;
mod bert_config;
mod bert_layers;
mod pooling;

pub use bert::{read_bert_weights, BertModel};
pub use bert_config::BertConfig;
pub use bert_layers::{AddNorm, BertAttention, BertEmbeddings, BertLayer};
pub use pooling::{cosine_similarity_matrix, l2_normalize, mean_pool};
