//! xLAM-2 tool calls: the reply is a JSON array of `{"name", "arguments"}` objects; anything
//! else is a text reply. A single bare object (or fenced JSON) is accepted as well.

use super::{ModelOutput, lenient};
use crate::llm::chat::{ToolCall, python_json};

/// The format instruction xLAM-2 was trained with (as its chat template and BFCL's xLAM
/// handler write it), placed after the system message and followed by the tools.
pub const FORMAT_INSTRUCTION: &str = "You have access to a set of tools. When using tools, make calls in a single JSON array: \n\n[{\"name\": \"tool_call_name\", \"arguments\": {\"arg1\": \"value1\", \"arg2\": \"value2\"}}, ... (additional parallel tool calls as needed)]\n\nIf no tool is suitable, state that explicitly. If the user's input lacks required parameters, ask for clarification. Do not interpret or respond until tool results are returned. Once they are available, process them or make additional calls if needed. For tasks that don't require tools, such as casual conversation or general advice, respond directly in plain text. The available tools are:\n\n";

/// The system prompt xLAM-2 expects when a caller brings its own (a domain policy) and tools:
/// the caller's text, the format instruction, then each function definition as
/// `json.dumps(f, indent=4)` and a blank line — BFCL's `SalesforceLlamaHandler` layout. The
/// model's own template drops the instruction when a system message is given; this keeps it.
pub fn system_prompt(system: &str, tools: &[serde_json::Value]) -> String {
    let mut out = format!("{}\n{FORMAT_INSTRUCTION}", system.trim());
    let style = crate::pyjson::Style {
        indent: Some(4),
        ..crate::pyjson::Style::PYTHON
    };
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        out += &crate::pyjson::to_string(f, style);
        out += "\n\n";
    }
    out
}

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
    #[test]
    fn system_prompt_is_policy_instruction_then_indented_functions() {
        let tools = [
            serde_json::json!({"type": "function", "function": {"name": "get_order", "description": "Look up", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}),
        ];
        let p = super::system_prompt("  Be kind.\n", &tools);
        let expected = "Be kind.\nYou have access to a set of tools. When using tools, make calls in a single JSON array: \n\n[{\"name\": \"tool_call_name\", \"arguments\": {\"arg1\": \"value1\", \"arg2\": \"value2\"}}, ... (additional parallel tool calls as needed)]\n\nIf no tool is suitable, state that explicitly. If the user's input lacks required parameters, ask for clarification. Do not interpret or respond until tool results are returned. Once they are available, process them or make additional calls if needed. For tasks that don't require tools, such as casual conversation or general advice, respond directly in plain text. The available tools are:\n\n{\n    \"name\": \"get_order\",\n    \"description\": \"Look up\",\n    \"parameters\": {\n        \"type\": \"object\",\n        \"properties\": {\n            \"id\": {\n                \"type\": \"string\"\n            }\n        }\n    }\n}\n\n";
        assert_eq!(p, expected);
    }

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
