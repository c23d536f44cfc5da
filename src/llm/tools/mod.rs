//! Tool-call wire formats: how each model family writes calls, how to parse what small models
//! really emit, and how to render calls back (for prompts, datasets and scripted models).
//!
//! One file per format; they share the tolerant JSON scanning in [`lenient`]. Parsing never
//! fails: the result is plain text, calls, or `Malformed` with a reason the caller records.

pub mod hermes;
pub mod lenient;
pub mod llama3;
pub mod xlam;

use serde::{Deserialize, Serialize};

use crate::llm::chat::ToolCall;
use crate::llm::error::{LlmError, Result};

/// The closed set of tool-call formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolFormat {
    /// Qwen2.5 / Hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` per call.
    Hermes,
    /// xLAM-2: the whole reply is a JSON array `[{"name": ..., "arguments": {...}}]`.
    Xlam,
    /// Llama 3.1 JSON tool calling: `{"name": ..., "parameters": {...}}`.
    Llama3Json,
}

impl ToolFormat {
    /// Parse a profile's `tool_format` value.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "hermes" => Ok(ToolFormat::Hermes),
            "xlam" => Ok(ToolFormat::Xlam),
            "llama3-json" => Ok(ToolFormat::Llama3Json),
            other => Err(LlmError::Unsupported(format!(
                "tool-call format {other:?} (hermes, xlam, llama3-json)"
            ))),
        }
    }

    /// Write `calls` as this format's assistant output.
    pub fn render(self, calls: &[ToolCall]) -> String {
        match self {
            ToolFormat::Hermes => hermes::render(calls),
            ToolFormat::Xlam => xlam::render(calls),
            ToolFormat::Llama3Json => llama3::render(calls),
        }
    }

    /// Interpret a model's raw output. Never panics: a failure inside a parser is reported as
    /// `Malformed`, with the parser's message.
    pub fn parse(self, text: &str) -> ModelOutput {
        crate::guard::catch(|| match self {
            ToolFormat::Hermes => hermes::parse(text),
            ToolFormat::Xlam => xlam::parse(text),
            ToolFormat::Llama3Json => llama3::parse(text),
        })
        .unwrap_or_else(|panic| ModelOutput::Malformed {
            reason: format!("the {self:?} parser failed: {panic}"),
            raw: text.to_owned(),
        })
    }
}

/// What a model's reply turned out to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelOutput {
    /// A plain answer.
    Text { content: String },
    /// One or more calls; `content` is any prose around them.
    ToolCalls {
        calls: Vec<ToolCall>,
        content: String,
    },
    /// The reply tried to call a tool but could not be read.
    Malformed { reason: String, raw: String },
}

impl ModelOutput {
    pub fn calls(&self) -> &[ToolCall] {
        match self {
            ModelOutput::ToolCalls { calls, .. } => calls,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn calls() -> Vec<ToolCall> {
        vec![
            ToolCall {
                name: "get_order".into(),
                arguments: json!({"order_id": "#W1", "n": 2}),
            },
            ToolCall {
                name: "cancel".into(),
                arguments: json!({"reason": "no longer needed", "nested": {"a": [1, "}"]}}),
            },
        ]
    }

    #[test]
    fn every_format_round_trips() {
        for f in [ToolFormat::Hermes, ToolFormat::Xlam, ToolFormat::Llama3Json] {
            let text = f.render(&calls());
            match f.parse(&text) {
                ModelOutput::ToolCalls { calls: got, .. } => {
                    assert_eq!(got, calls(), "{f:?}: {text}")
                }
                other => panic!("{f:?}: {other:?} from {text}"),
            }
            let one = f.render(&calls()[..1]);
            assert_eq!(f.parse(&one).calls(), &calls()[..1], "{f:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let inputs = [
            "",
            "{",
            "[",
            "}",
            "<tool_call>",
            "</tool_call>",
            "<tool_call>{\"name\":",
            "[{\"name\": 3}]",
            "```json\n{\"name\": \"x\", \"arguments\": \"{not json\"}\n```",
            "\u{0}\u{1}\u{ffff}",
            "[[[[[[[[[[[[",
            "{\"name\": \"\", \"arguments\": {}}",
            "<tool_call>\n{\"arguments\": {}}\n</tool_call>",
            "null",
            "42",
            "{\"name\": \"a\", \"arguments\": [1, 2]}",
            "```",
            "```json",
            "\"just a string\"",
        ];
        for f in [ToolFormat::Hermes, ToolFormat::Xlam, ToolFormat::Llama3Json] {
            for s in inputs {
                let _ = f.parse(s);
            }
            // Deterministic pseudo-random byte soup built from JSON-ish characters.
            let alphabet: Vec<char> = "{}[]\",:<>/tool_call name arguments\n`json 0123\\"
                .chars()
                .collect();
            let mut state = 7u64;
            for len in 0..300 {
                let s: String = (0..len % 60)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        alphabet[(state >> 33) as usize % alphabet.len()]
                    })
                    .collect();
                let _ = f.parse(&s);
            }
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(ToolFormat::from_name("xlam").unwrap(), ToolFormat::Xlam);
        assert!(ToolFormat::from_name("yaml").is_err());
    }
}
