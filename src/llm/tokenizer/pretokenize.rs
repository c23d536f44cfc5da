//! Pre-tokenizers: the regex splits applied to text before BPE merges, per model family.
//!
//! Each step splits every piece into its regex matches and the gaps between them (both kept, in
//! order), which is what llama.cpp's `unicode_regex_split` and Hugging Face's `Split` with the
//! `Isolated` behaviour both do.

use fancy_regex::Regex;

use crate::llm::error::{LlmError, Result};

/// GPT-2's split pattern (`\s+(?!\S)|\s+` at the end).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// llama.cpp's SmolLM pattern, applied after splitting digits one by one.
pub const SMOLLM_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's pattern (single digits, case-insensitive contractions).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pattern (digits in groups of up to three).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// One digit per piece.
pub const DIGITS_PATTERN: &str = r"\p{N}";

/// A sequence of regex splits.
#[derive(Debug, Clone)]
pub struct PreTokenizer {
    steps: Vec<Regex>,
    /// Prepend a space to the text first (GPT-2's `add_prefix_space`).
    prefix_space: bool,
}

impl PreTokenizer {
    /// Build from regex patterns applied in order.
    pub fn from_patterns(patterns: &[&str], prefix_space: bool) -> Result<Self> {
        let steps = patterns
            .iter()
            .map(|p| {
                Regex::new(p)
                    .map_err(|e| LlmError::Tokenizer(format!("bad pre-tokenizer regex {p:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(PreTokenizer {
            steps,
            prefix_space,
        })
    }

    /// The pre-tokenizer llama.cpp uses for a GGUF `tokenizer.ggml.pre` value.
    pub fn for_gguf_pre(pre: &str) -> Result<Self> {
        let patterns: &[&str] = match pre {
            "qwen2" | "deepseek-r1-qwen" => &[QWEN2_PATTERN],
            "smollm" => &[DIGITS_PATTERN, SMOLLM_PATTERN],
            "llama3" | "llama-bpe" | "llama-v3" => &[LLAMA3_PATTERN],
            "default" | "gpt-2" | "gpt2" => &[GPT2_PATTERN],
            other => {
                return Err(LlmError::Unsupported(format!(
                    "GGUF pre-tokenizer {other:?}"
                )));
            }
        };
        Self::from_patterns(patterns, false)
    }

    /// Split `text` into pieces, each to be BPE-encoded on its own.
    pub fn split<'t>(&self, text: &'t str) -> Result<Vec<std::borrow::Cow<'t, str>>> {
        use std::borrow::Cow;
        let mut pieces: Vec<Cow<'t, str>> = if self.prefix_space && !text.starts_with(' ') {
            vec![Cow::Owned(format!(" {text}"))]
        } else {
            vec![Cow::Borrowed(text)]
        };
        for re in &self.steps {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in &pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| {
                        LlmError::Tokenizer(format!("pre-tokenizer regex failed: {e}"))
                    })?;
                    if m.start() > last {
                        next.push(sub(piece, last, m.start()));
                    }
                    if m.end() > m.start() {
                        next.push(sub(piece, m.start(), m.end()));
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(sub(piece, last, piece.len()));
                }
            }
            pieces = next;
        }
        Ok(pieces)
    }
}

fn sub<'t>(piece: &std::borrow::Cow<'t, str>, a: usize, b: usize) -> std::borrow::Cow<'t, str> {
    match piece {
        std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(&s[a..b]),
        std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s[a..b].to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        PreTokenizer::for_gguf_pre(pre)
            .unwrap()
            .split(text)
            .unwrap()
            .into_iter()
            .map(|c| c.into_owned())
            .collect()
    }

    #[test]
    fn smollm_splits_digits_one_by_one() {
        assert_eq!(split("smollm", "ab 123"), ["ab", " ", "1", "2", "3"]);
        assert_eq!(split("smollm", "Hello world"), ["Hello", " world"]);
    }

    #[test]
    fn qwen2_keeps_trailing_whitespace_apart() {
        assert_eq!(split("qwen2", "a   b"), ["a", "  ", " b"]);
        assert_eq!(split("qwen2", "x\n\n"), ["x", "\n\n"]);
        assert_eq!(split("qwen2", "I'M"), ["I", "'M"]);
    }

    #[test]
    fn unknown_pre_is_an_error() {
        assert!(PreTokenizer::for_gguf_pre("klingon").is_err());
    }
}
