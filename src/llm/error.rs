//! The inference layer's error type: broken infrastructure (missing files, bad checkpoints,
//! tensor failures), never model output a caller should handle as data.

use std::path::PathBuf;

/// Errors raised by `apigen_mt::llm`.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("model file {path}: {detail}")]
    BadCheckpoint { path: PathBuf, detail: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model profile {name}: {detail}")]
    Profile { name: String, detail: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("constraint: {0}")]
    Constraint(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl LlmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlmError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        LlmError::BadCheckpoint {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// A stable tag per variant, for logs and run reports.
    pub fn error_type(&self) -> &'static str {
        match self {
            LlmError::Io { .. } => "llm.io",
            LlmError::Candle(_) => "llm.tensor",
            LlmError::BadCheckpoint { .. } => "llm.checkpoint",
            LlmError::Unsupported(_) => "llm.unsupported",
            LlmError::Tokenizer(_) => "llm.tokenizer",
            LlmError::Profile { .. } => "llm.profile",
            LlmError::Template(_) => "llm.template",
            LlmError::Constraint(_) => "llm.constraint",
            LlmError::InvalidRequest(_) => "llm.invalid_request",
        }
    }
}

/// Result alias for the inference layer.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;
