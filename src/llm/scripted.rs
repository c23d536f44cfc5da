//! A scripted backend: replays canned completions in order, parsing them with a tool-call
//! format exactly as a real model's output would be. It records every request it sees so tests
//! can assert on prompts. For driving pipeline branches without weights.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::llm::backend::{Backend, ChatReply, ChatRequest, Conversation, Usage};
use crate::llm::engine::Finish;
use crate::llm::error::{LlmError, Result};
use crate::llm::tools::ToolFormat;

/// Replays `replies` one per call (across all conversations, in call order).
pub struct ScriptedBackend {
    format: ToolFormat,
    replies: Mutex<VecDeque<String>>,
    seen: Mutex<Vec<ChatRequest>>,
}

impl ScriptedBackend {
    pub fn new(format: ToolFormat, replies: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ScriptedBackend {
            format,
            replies: Mutex::new(replies.into_iter().map(Into::into).collect()),
            seen: Mutex::new(vec![]),
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Canned replies not yet used.
    pub fn remaining(&self) -> usize {
        self.replies.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Backend for ScriptedBackend {
    fn name(&self) -> String {
        format!("scripted({:?})", self.format)
    }

    fn reply(&self, conversation: &mut Conversation, request: &ChatRequest) -> Result<ChatReply> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request.clone());
        }
        let raw = self
            .replies
            .lock()
            .map_err(|_| LlmError::InvalidRequest("scripted backend poisoned".into()))?
            .pop_front()
            .ok_or_else(|| {
                LlmError::InvalidRequest("scripted backend has no replies left".into())
            })?;
        conversation.count_turn();
        let completion_tokens = raw.split_whitespace().count();
        Ok(ChatReply {
            output: self.format.parse(&raw),
            raw,
            finish: Finish::StopToken { id: 0 },
            usage: Usage {
                completion_tokens,
                ..Default::default()
            },
        })
    }
}
