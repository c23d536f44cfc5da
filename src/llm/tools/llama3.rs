//! Llama 3.1 JSON tool calling: `{"name": ..., "parameters": {...}}`, optionally after
//! `<|python_tag|>`; several calls are separated by `;` or newlines.

use super::{ModelOutput, lenient};
use crate::llm::chat::{ToolCall, python_json};

pub const PYTHON_TAG: &str = "<|python_tag|>";

/// One `{"name": ..., "parameters": ...}` object per call, `; `-separated.
pub fn render(calls: &[ToolCall]) -> String {
    calls
        .iter()
        .map(|c| python_json(&serde_json::json!({"name": c.name, "parameters": c.arguments})))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn parse(text: &str) -> ModelOutput {
    let body = text.replace(PYTHON_TAG, "");
    match lenient::find_calls(&body) {
        Some(Ok((calls, content))) => ModelOutput::ToolCalls {
            calls,
            content: content
                .trim_matches(|c: char| c == ';' || c.is_whitespace())
                .to_string(),
        },
        Some(Err(reason)) => ModelOutput::Malformed {
            reason,
            raw: text.to_string(),
        },
        None if lenient::looks_like_call(&body) => ModelOutput::Malformed {
            reason: "unparseable JSON call".into(),
            raw: text.to_string(),
        },
        None => ModelOutput::Text {
            content: body.trim().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tag_and_separators() {
        let out = parse(
            "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"q\": \"x\"}}; {\"name\": \"b\", \"parameters\": {}}",
        );
        assert_eq!(
            out.calls()
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(matches!(out, ModelOutput::ToolCalls { ref content, .. } if content.is_empty()));
    }
}
