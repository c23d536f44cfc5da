//! A model in a role — proposer, reviewer, summariser (phase 1), agent, user, judge (phase 2) —
//! and the meter its calls are counted on. Every model call of both phases goes through
//! [`Role::ask`], so tokens and seconds are counted one way.

use crate::llm::{Backend, ChatReply, ChatRequest, Conversation, Message, SamplingParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// A model in a role: the backend and how to sample from it.
#[derive(Clone)]
pub struct Role {
    /// The model's name as the run records it (a profile name, or a file).
    pub name: String,
    pub backend: Arc<dyn Backend>,
    pub temperature: f32,
    pub max_tokens: usize,
}

impl Role {
    /// A request for `messages`, sampled as this role samples, with `seed`.
    pub fn request(&self, messages: Vec<Message>, seed: u64) -> ChatRequest {
        let mut req = ChatRequest::new(messages);
        req.max_tokens = self.max_tokens;
        req.sampling = SamplingParams {
            temperature: self.temperature,
            seed,
            ..SamplingParams::greedy()
        };
        req
    }

    /// Send `req` on `conv`, counting the reply's tokens and seconds on `meter` under `stage`.
    /// An error names the stage.
    pub fn ask(
        &self,
        meter: &mut Meter,
        stage: &str,
        conv: &mut Conversation,
        req: &ChatRequest,
    ) -> Result<ChatReply, String> {
        let started = Instant::now();
        let reply = self
            .backend
            .reply(conv, req)
            .map_err(|e| format!("{stage}: {e}"))?;
        meter.time(stage, started);
        *meter.tokens.entry(stage.into()).or_default() += Meter::cost(&reply);
        Ok(reply)
    }
}

/// Tokens and seconds per stage (a role's name, or a step such as `checks`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub tokens: BTreeMap<String, usize>,
    pub seconds: BTreeMap<String, f64>,
}

impl Meter {
    /// What a reply cost: the prompt tokens not already in the cache, and the completion.
    pub fn cost(reply: &ChatReply) -> usize {
        reply.usage.completion_tokens
            + reply
                .usage
                .prompt_tokens
                .saturating_sub(reply.usage.cached_tokens)
    }

    /// Count the time since `since` under `stage`.
    pub fn time(&mut self, stage: &str, since: Instant) {
        *self.seconds.entry(stage.into()).or_default() += since.elapsed().as_secs_f64();
    }

    /// Add another meter's counts.
    pub fn add(&mut self, other: &Meter) {
        for (k, v) in &other.tokens {
            *self.tokens.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.seconds {
            *self.seconds.entry(k.clone()).or_default() += v;
        }
    }
}
