//! Tokenizer from a Hugging Face `tokenizer.json` (byte-level BPE models only).
//!
//! Supports what byte-level BPE checkpoints (Qwen2, Llama 3, SmolLM2, xLAM-2) use: a `BPE` model
//! with `vocab` and `merges` (strings or pairs), `added_tokens`, and a pre-tokenizer made of
//! `Split` (regex, isolated), `Digits` and `ByteLevel` steps, possibly in a `Sequence`.

use std::path::Path;

use serde_json::Value;

use super::pretokenize::GPT2_PATTERN;
use super::{PreTokenizer, TokenKind, Tokenizer, TokenizerParts};
use crate::llm::error::{LlmError, Result};

fn bad(detail: impl std::fmt::Display) -> LlmError {
    LlmError::Tokenizer(format!("tokenizer.json: {detail}"))
}

/// Collect regex patterns and the prefix-space flag from a pre-tokenizer node.
fn pre_patterns(node: &Value, patterns: &mut Vec<String>, prefix_space: &mut bool) -> Result<()> {
    match node.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for p in node
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("Sequence without pretokenizers"))?
            {
                pre_patterns(p, patterns, prefix_space)?;
            }
        }
        Some("Split") => {
            let pattern = node
                .get("pattern")
                .ok_or_else(|| bad("Split without pattern"))?;
            let re = if let Some(r) = pattern.get("Regex").and_then(Value::as_str) {
                r.to_string()
            } else if let Some(s) = pattern.get("String").and_then(Value::as_str) {
                fancy_regex::escape(s).into_owned()
            } else {
                return Err(bad("Split pattern is neither Regex nor String"));
            };
            let behavior = node
                .get("behavior")
                .and_then(Value::as_str)
                .unwrap_or("Isolated");
            if behavior != "Isolated" {
                return Err(LlmError::Unsupported(format!(
                    "tokenizer.json Split behavior {behavior}"
                )));
            }
            patterns.push(re);
        }
        Some("Digits") => {
            if node
                .get("individual_digits")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                patterns.push(r"\p{N}".into());
            } else {
                patterns.push(r"\p{N}+".into());
            }
        }
        Some("ByteLevel") => {
            if node
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                *prefix_space = true;
            }
            if node
                .get("use_regex")
                .and_then(Value::as_bool)
                .unwrap_or(true)
            {
                patterns.push(GPT2_PATTERN.into());
            }
        }
        other => {
            return Err(LlmError::Unsupported(format!(
                "tokenizer.json pre-tokenizer {other:?}"
            )));
        }
    }
    Ok(())
}

impl Tokenizer {
    /// Read a `tokenizer.json` file.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(bad)?;
        Self::from_tokenizer_json_value(&json)
    }

    /// Build from an already parsed `tokenizer.json`.
    pub fn from_tokenizer_json_value(json: &Value) -> Result<Self> {
        let model = json.get("model").ok_or_else(|| bad("no model"))?;
        if model.get("type").and_then(Value::as_str).unwrap_or("BPE") != "BPE" {
            return Err(LlmError::Unsupported(
                "tokenizer.json model other than BPE".into(),
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no model.vocab"))?;
        let mut entries: Vec<(u32, String)> = Vec::with_capacity(vocab.len());
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad(format!("bad id for {tok:?}")))?;
            entries.push((id, tok.clone()));
        }
        let mut added: Vec<(u32, String, bool)> = Vec::new();
        for a in json
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = a
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| bad("added token without id"))?;
            let content = a
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("added token without content"))?;
            let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.push((id, content.to_string(), special));
        }
        let size = entries
            .iter()
            .map(|e| e.0)
            .chain(added.iter().map(|a| a.0))
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut tokens = vec![String::new(); size];
        let mut kinds = vec![TokenKind::Unused; size];
        for (id, tok) in entries {
            tokens[id as usize] = tok;
            kinds[id as usize] = TokenKind::Normal;
        }
        for (id, content, special) in added {
            tokens[id as usize] = content;
            kinds[id as usize] = if special {
                TokenKind::Control
            } else {
                TokenKind::UserDefined
            };
        }
        let mut merges = Vec::new();
        for m in model
            .get("merges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            merges.push(pair.ok_or_else(|| bad(format!("bad merge {m}")))?);
        }
        let mut patterns = Vec::new();
        let mut prefix_space = false;
        match json.get("pre_tokenizer") {
            Some(Value::Null) | None => {}
            Some(node) => pre_patterns(node, &mut patterns, &mut prefix_space)?,
        }
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let pre = PreTokenizer::from_patterns(&refs, prefix_space)?;
        let ignore_merges = model
            .get("ignore_merges")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Tokenizer::from_parts(TokenizerParts {
            tokens,
            kinds,
            merges,
            pre,
            ignore_merges,
            bos: None,
            eos: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_tokenizer_json() {
        let map = super::super::bytes::ByteMap::new();
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(map.char_of(b).to_string(), Value::from(b as u32));
        }
        vocab.insert("ab".into(), Value::from(256));
        let json = serde_json::json!({
            "added_tokens": [{"id": 257, "content": "<|end|>", "special": true}],
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
            "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]}
        });
        let t = Tokenizer::from_tokenizer_json_value(&json).unwrap();
        assert_eq!(
            t.encode("ab<|end|>12", true).unwrap(),
            [256, 257, b'1' as u32, b'2' as u32]
        );
        assert_eq!(t.kind(257), Some(TokenKind::Control));
    }

    #[test]
    fn rejects_unigram_models() {
        let json = serde_json::json!({"model": {"type": "Unigram", "vocab": []}});
        assert!(Tokenizer::from_tokenizer_json_value(&json).is_err());
    }
}
