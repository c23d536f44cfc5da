//! xLAM-2 tool calls: the reply is a JSON array of `{"name", "arguments"}` objects; anything
//! else is a text reply. A single bare object (or fenced JSON) is accepted as well.

use super::{ModelOutput, lenient};
use crate::llm::chat::{ToolCall, python_json};

/// `[{"name": ..., "arguments": {...}}, ...]`.
pub fn render(calls: &[ToolCall]) -> String {
    let items: Vec<serde_json::Value> = calls
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "arguments": c.arguments}))
        .collect();
    python_json(&serde_json::Value::from(items))
}

pub fn parse(text: &str) -> ModelOutput {
    match lenient::find_calls(text) {
        Some(Ok((calls, content))) => ModelOutput::ToolCalls { calls, content },
        Some(Err(reason)) => ModelOutput::Malformed {
            reason,
            raw: text.to_string(),
        },
        None if lenient::looks_like_call(text) => ModelOutput::Malformed {
            reason: "unparseable JSON call array".into(),
            raw: text.to_string(),
        },
        None => ModelOutput::Text {
            content: text.trim().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arrays_objects_and_text() {
        let out = parse(
            "[{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]",
        );
        assert_eq!(out.calls().len(), 2);
        assert_eq!(
            parse("{\"name\": \"a\", \"arguments\": {}}").calls()[0].arguments,
            json!({})
        );
        assert_eq!(
            parse("[]"),
            ModelOutput::Text {
                content: "[]".into()
            }
        );
        assert!(matches!(
            parse("[{\"name\": \"a\", \"arguments\": {}}, 5]"),
            ModelOutput::Malformed { .. }
        ));
        assert!(matches!(parse("How can I help?"), ModelOutput::Text { .. }));
    }
}
