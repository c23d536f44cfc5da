//! Phase 1: task blueprints — an instruction for the simulated user, the ground-truth actions
//! that fulfil it, and the outputs the agent must say.
//!
//! This module holds what every stage shares: the [`Rejection`] with its stable code, and the
//! deterministic stage-1 checks ([`check`]): format, execution with its database diff, the
//! domain's policy rules, and duplicates. It uses domains but never touches models.

pub mod brief;
pub mod check;
pub mod committee;
pub mod pipeline;
pub mod plan;
pub mod prompt;
pub mod sampler;

use serde::{Deserialize, Serialize};

/// Why a blueprint was turned down. `code` is stable (`format.not_json`, `exec.tool_error`,
/// `policy.<rule>`, `dedup.duplicate`, ...); `detail` is the feedback a proposer revises from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Rejection {
        Rejection {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}
