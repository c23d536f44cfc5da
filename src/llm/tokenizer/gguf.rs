//! Tokenizer from GGUF metadata (`tokenizer.ggml.model = gpt2`).

use candle_core::quantized::gguf_file::{Content, Value};

use super::{PreTokenizer, TokenKind, Tokenizer, TokenizerParts};
use crate::llm::error::{LlmError, Result};

fn strings(content: &Content, key: &str) -> Result<Vec<String>> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| LlmError::Tokenizer(format!("GGUF has no {key}")))?;
    let arr = v
        .to_vec()
        .map_err(|e| LlmError::Tokenizer(format!("{key}: {e}")))?;
    arr.iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|e| LlmError::Tokenizer(format!("{key}: {e}")))
        })
        .collect()
}

fn opt_u32(content: &Content, key: &str) -> Option<u32> {
    content.metadata.get(key).and_then(|v| v.to_u32().ok())
}

impl Tokenizer {
    /// Build the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = content
            .metadata
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str);
        if model != Some("gpt2") {
            return Err(LlmError::Unsupported(format!(
                "GGUF tokenizer model {model:?} (only byte-level BPE, `gpt2`)"
            )));
        }
        let tokens = strings(content, "tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let kinds = types
            .iter()
            .map(|t| match t {
                3 => TokenKind::Control,
                4 => TokenKind::UserDefined,
                2 | 5 => TokenKind::Unused,
                _ => TokenKind::Normal,
            })
            .collect();
        let merges = strings(content, "tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let pre_name = content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "default".into());
        let pre = PreTokenizer::for_gguf_pre(&pre_name)?;
        let ignore_merges = matches!(pre_name.as_str(), "llama3" | "llama-bpe" | "llama-v3");
        Tokenizer::from_parts(TokenizerParts {
            tokens,
            kinds,
            merges,
            pre,
            ignore_merges,
            bos: opt_u32(content, "tokenizer.ggml.bos_token_id"),
            eos: opt_u32(content, "tokenizer.ggml.eos_token_id"),
        })
    }
}

impl Tokenizer {
    /// Read only the metadata of a GGUF file and build its tokenizer.
    pub fn from_gguf_file(path: &std::path::Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| LlmError::io(path, e))?;
        let content =
            Content::read(&mut f).map_err(|e| LlmError::checkpoint(path, e.to_string()))?;
        Self::from_gguf(&content)
    }
}
