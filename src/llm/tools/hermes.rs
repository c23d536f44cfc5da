//! Qwen2.5 / Hermes tool calls: each call is a JSON object inside `<tool_call>` tags.
//! Qwen's small models often drop the tags and write bare JSON (sometimes fenced), which is
//! accepted too.

use super::{ModelOutput, lenient};
use crate::llm::chat::{ToolCall, python_json};

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` per call, newline separated.
pub fn render(calls: &[ToolCall]) -> String {
    calls
        .iter()
        .map(|c| {
            format!(
                "{OPEN}\n{}\n{CLOSE}",
                python_json(&serde_json::json!({"name": c.name, "arguments": c.arguments}))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn parse(text: &str) -> ModelOutput {
    if text.contains(OPEN) {
        let mut calls = Vec::new();
        let mut prose = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            prose.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len()..];
            // A missing close tag at the very end is tolerated (generation stopped there).
            let (body, next) = match after.find(CLOSE) {
                Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
                None => (after, ""),
            };
            let values = lenient::json_values(body);
            let Some((_, _, v)) = values.first() else {
                return ModelOutput::Malformed {
                    reason: format!("no JSON inside {OPEN}"),
                    raw: text.to_string(),
                };
            };
            match lenient::calls_from_value(v) {
                Some(Ok(c)) => calls.extend(c),
                Some(Err(e)) => {
                    return ModelOutput::Malformed {
                        reason: e,
                        raw: text.to_string(),
                    };
                }
                None => {
                    return ModelOutput::Malformed {
                        reason: format!("JSON inside {OPEN} is not a call"),
                        raw: text.to_string(),
                    };
                }
            }
            rest = next;
        }
        prose.push_str(rest);
        return ModelOutput::ToolCalls {
            calls,
            content: prose.trim().to_string(),
        };
    }
    match lenient::find_calls(text) {
        Some(Ok((calls, content))) => ModelOutput::ToolCalls { calls, content },
        Some(Err(reason)) => ModelOutput::Malformed {
            reason,
            raw: text.to_string(),
        },
        None if lenient::looks_like_call(text) => ModelOutput::Malformed {
            reason: "unparseable JSON call".into(),
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
    fn tagged_bare_and_fenced_calls() {
        let want = vec![ToolCall {
            name: "get_user".into(),
            arguments: json!({"user_id": "u1"}),
        }];
        for text in [
            "<tool_call>\n{\"name\": \"get_user\", \"arguments\": {\"user_id\": \"u1\"}}\n</tool_call>",
            "{\"name\": \"get_user\", \"arguments\": {\"user_id\": \"u1\"}}",
            "```json\n{\"name\": \"get_user\", \"arguments\": \"{\\\"user_id\\\": \\\"u1\\\"}\"}\n```",
            "I'll look that up.\n<tool_call>\n{\"name\": \"get_user\", \"arguments\": {\"user_id\": \"u1\"}}",
        ] {
            assert_eq!(parse(text).calls(), want.as_slice(), "{text}");
        }
    }

    #[test]
    fn text_and_malformed() {
        assert_eq!(
            parse("Paris."),
            ModelOutput::Text {
                content: "Paris.".into()
            }
        );
        assert!(matches!(
            parse("<tool_call>\n{\"name\": \"x\", \"arguments\": {\n</tool_call>"),
            ModelOutput::Malformed { .. }
        ));
        assert!(matches!(
            parse("{\"name\": \"x\", \"arguments\": {"),
            ModelOutput::Malformed { .. }
        ));
        let out = parse("Hello <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call> bye");
        assert_eq!(
            out,
            ModelOutput::ToolCalls {
                calls: vec![ToolCall {
                    name: "a".into(),
                    arguments: json!({})
                }],
                content: "Hello  bye".into()
            }
        );
    }
}
