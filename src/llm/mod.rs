//! Local inference: everything between a model file on disk and generated text.
//!
//! Map (dependencies point down):
//!
//! - [`backend`]: the narrow trait the pipeline talks to; [`local`] (a loaded model) and
//!   [`scripted`] (canned replies for tests) implement it.
//! - [`constrain`]: llguidance grammars (JSON schema, tool calls) as logits masks.
//! - [`tools`]: tool-call wire formats (render, tolerant parse).
//! - [`scheduler`]: continuous batching: many sequences per forward pass, on a worker thread.
//! - [`engine`]: a loaded model serving many conversations; generation with stop rules.
//! - [`chat`]: chat templates (the model's own Jinja, rendered with minijinja).
//! - [`sampler`]: greedy and seeded sampling.
//! - [`profile`]: model profiles (`models/*.toml`) and the model cache directory.
//! - [`model`]: architectures, weights from GGUF or safetensors, per-conversation KV caches.
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`.
//! - [`device`]: compute device and thread count.
//!
//! This module never touches domains, blueprints or rollouts.

pub mod backend;
pub mod chat;
pub mod constrain;
pub mod device;
pub mod engine;
pub mod error;
pub mod hub;
pub mod local;
pub mod model;
pub mod profile;
pub mod sampler;
pub mod scheduler;
pub mod scripted;
pub mod tokenizer;
pub mod tools;

pub use backend::{Backend, ChatReply, ChatRequest, Constraint, Conversation};
pub use chat::{Message, ToolCall};
pub use engine::{Engine, Finish, GenerateRequest, Generation};
pub use error::{LlmError, Result};
pub use model::KvCache;
pub use sampler::SamplingParams;
pub use tokenizer::Tokenizer;
pub use tools::{ModelOutput, ToolFormat};
