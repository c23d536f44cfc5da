//! Local inference: everything between a model file on disk and generated text.
//!
//! Map (dependencies point down):
//!
//! - [`profile`]: model profiles (`models/*.toml`) and the model cache directory.
//! - [`model`]: architectures, weights from GGUF or safetensors, per-conversation KV caches.
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`.
//!
//! This module never touches domains, blueprints or rollouts.

pub mod error;
pub mod model;
pub mod profile;
pub mod tokenizer;

pub use error::{LlmError, Result};
pub use tokenizer::Tokenizer;
