//! Local inference: everything between a model file on disk and generated text.
//!
//! Map (dependencies point down):
//!
//! - [`engine`]: a loaded model serving many conversations; generation with stop rules.
//! - [`chat`]: chat templates (the model's own Jinja, rendered with minijinja).
//! - [`sampler`]: greedy and seeded sampling.
//! - [`profile`]: model profiles (`models/*.toml`) and the model cache directory.
//! - [`model`]: architectures, weights from GGUF or safetensors, per-conversation KV caches.
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`.
//! - [`device`]: compute device and thread count.
//!
//! This module never touches domains, blueprints or rollouts.

pub mod chat;
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod model;
pub mod profile;
pub mod sampler;
pub mod tokenizer;
pub mod tools;

pub use engine::{Engine, Finish, GenerateRequest, Generation};
pub use error::{LlmError, Result};
pub use model::KvCache;
pub use sampler::SamplingParams;
pub use tokenizer::Tokenizer;
