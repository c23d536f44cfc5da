//! The seam between the pipeline and models: one narrow trait, [`Backend`], with two
//! implementations — [`LocalBackend`](crate::llm::local::LocalBackend) (a loaded model) and
//! [`ScriptedBackend`](crate::llm::scripted::ScriptedBackend) (canned replies for tests).
//!
//! Callers keep one [`Conversation`] per dialogue and pass the whole message list each turn;
//! a backend may keep state in it, opaque to the caller (the local one keeps its key/value
//! cache, so a new turn runs only its new tokens). Backends are `Send + Sync` and take
//! `&self`: callers on many threads may wait on replies at once, and the local backend decodes
//! them together in its batches.

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::llm::chat::Message;
use crate::llm::engine::Finish;
use crate::llm::error::Result;
use crate::llm::sampler::SamplingParams;
use crate::llm::tools::ModelOutput;

/// Output restriction for one reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Constraint {
    /// The reply is one JSON value matching this JSON schema.
    JsonSchema(Value),
    /// The reply is a tool call in the model's format, to one of the request's tools.
    ToolCall,
    /// The reply is plain text or one tool call (an agent's turn): never a half-formed call.
    TextOrToolCall,
    /// As `TextOrToolCall`, the call to one of these tool schemas instead of the request's
    /// (the same tools narrowed, e.g. to the ids seen so far; the prompt still shows the
    /// request's); none: plain text only.
    TextOrCallTo(Vec<Value>),
    /// The reply is one call, in the model's format, to one of these tool schemas (the prompt
    /// still shows the request's tools).
    CallTo(Vec<Value>),
    /// The reply matches this regular expression (llguidance's syntax, the whole reply).
    Regex(String),
}

/// One reply request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Tool schemas offered to the model (OpenAI function format or bare `{name, parameters}`).
    pub tools: Vec<Value>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub constraint: Option<Constraint>,
}

impl ChatRequest {
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            tools: vec![],
            max_tokens: 512,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            constraint: None,
        }
    }
}

/// Token counts and timings of one reply.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// A reply: the raw text and what it means.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReply {
    pub raw: String,
    pub output: ModelOutput,
    pub finish: Finish,
    pub usage: Usage,
}

/// Per-dialogue state a backend may keep between turns. Cloning it is cheap (the state is
/// shared; a backend copies what it changes), so a primed conversation can start many.
#[derive(Default, Clone)]
pub struct Conversation {
    state: Option<Arc<dyn Any + Send + Sync>>,
    cached: usize,
    turns: usize,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("cached", &self.cached)
            .field("turns", &self.turns)
            .finish_non_exhaustive()
    }
}

impl Conversation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replies produced so far.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// Tokens the backend holds computed for this conversation.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// The backend's state, taken out to be changed: the value itself when this conversation
    /// is its only holder, else a clone (`T`'s clone should share what it can). `None` when
    /// the conversation holds no state of type `T`.
    pub fn take_state<T: Any + Send + Sync + Clone>(&mut self) -> Option<T> {
        let state = self.state.take()?.downcast::<T>().ok()?;
        Some(Arc::try_unwrap(state).unwrap_or_else(|shared| (*shared).clone()))
    }

    /// Store the backend's state after a turn, with the number of tokens it holds computed.
    pub fn put_state<T: Any + Send + Sync>(&mut self, state: T, cached_tokens: usize) {
        self.state = Some(Arc::new(state));
        self.cached = cached_tokens;
    }

    /// Count a reply.
    pub fn count_turn(&mut self) {
        self.turns += 1;
    }
}

/// Something that writes the next assistant message.
pub trait Backend: Send + Sync {
    /// A short name for logs and run metadata.
    fn name(&self) -> String;
    /// The next assistant reply for `request.messages`.
    fn reply(&self, conversation: &mut Conversation, request: &ChatRequest) -> Result<ChatReply>;

    /// Run `request.messages` (and tools) into the conversation's cache without replying, so
    /// that conversations cloned from it start with that prefix already computed. A backend
    /// without a cache does nothing.
    fn prime(&self, conversation: &mut Conversation, request: &ChatRequest) -> Result<()> {
        let _ = (conversation, request);
        Ok(())
    }
}
