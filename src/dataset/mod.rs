//! Training records and the formats people train on.
//!
//! The canonical record is a conversation in OpenAI chat form: `messages` (a `system` message
//! with the policy, then `user`, `assistant` — with `tool_calls` whose `function.arguments` is a
//! JSON string — and `tool` messages answering each call by `tool_call_id`), plus `tools` (OpenAI
//! function schemas) and metadata. Every export is derived from it:
//!
//! | format | shape |
//! | --- | --- |
//! | `messages` | the Hugging Face messages form, the training default: `{"id", "messages", "tools"}` with each call's `function.arguments` a JSON object, as chat templates (`apply_chat_template`, TRL's SFT trainer) render it |
//! | `openai` | `{"messages", "tools"}`, as fine-tuning APIs take it (arguments as JSON strings) |
//! | `apigen-mt` | the released APIGen-MT-5k row: exactly `conversations` (`from` human / gpt / function_call / observation, `value`), `system`, and `tools` as a JSON string of bare function definitions |
//! | `sharegpt` | the ShareGPT tool-use layout of common fine-tuning tools (LLaMA-Factory): the same turns, `system`, `tools`, plus the record `id` |
//!
//! [`validate`] checks a record before it is exported: every tool call answered by exactly one
//! tool message, arguments that parse to JSON objects.

use serde_json::{Map, Value, json};

/// An export format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The Hugging Face messages form (arguments as objects): what to train on.
    Messages,
    ApigenMt,
    Openai,
    Sharegpt,
}

/// A canonical record that breaks the conversation rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {index}: {message}")]
pub struct Invalid {
    pub index: usize,
    pub message: String,
}

fn invalid(index: usize, message: impl Into<String>) -> Invalid {
    Invalid {
        index,
        message: message.into(),
    }
}

/// A tool call of an assistant message: (id, name, arguments object).
fn calls(msg: &Value, index: usize) -> Result<Vec<(String, String, Map<String, Value>)>, Invalid> {
    let Some(list) = msg.get("tool_calls") else {
        return Ok(vec![]);
    };
    let list = list
        .as_array()
        .ok_or_else(|| invalid(index, "tool_calls must be an array"))?;
    list.iter()
        .map(|c| {
            let id = c["id"]
                .as_str()
                .ok_or_else(|| invalid(index, "a tool call needs an id"))?;
            let name = c["function"]["name"]
                .as_str()
                .ok_or_else(|| invalid(index, "a tool call needs function.name"))?;
            let args = match &c["function"]["arguments"] {
                Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                    invalid(index, format!("arguments of {name} are not JSON: {e}"))
                })?,
                other => other.clone(),
            };
            let Value::Object(args) = args else {
                return Err(invalid(
                    index,
                    format!("arguments of {name} must be a JSON object"),
                ));
            };
            Ok((id.to_owned(), name.to_owned(), args))
        })
        .collect()
}

/// Check the conversation rules of a canonical record: a leading system message; roles among
/// user / assistant / tool; every tool call answered by one tool message before the next
/// assistant or user turn; arguments that are JSON objects.
pub fn validate(record: &Value) -> Result<(), Invalid> {
    let messages = record["messages"]
        .as_array()
        .ok_or_else(|| invalid(0, "the record has no messages array"))?;
    if messages.first().and_then(|m| m["role"].as_str()) != Some("system") {
        return Err(invalid(0, "the first message must be the system message"));
    }
    let mut pending: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(1) {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| invalid(i, "missing role"))?;
        match role {
            "tool" => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or_else(|| invalid(i, "a tool message needs tool_call_id"))?;
                let at = pending.iter().position(|p| p == id).ok_or_else(|| {
                    invalid(
                        i,
                        format!("tool message answers unknown or already answered call {id}"),
                    )
                })?;
                pending.remove(at);
                if !m["content"].is_string() {
                    return Err(invalid(i, "a tool message's content must be a string"));
                }
            }
            "user" | "assistant" => {
                if !pending.is_empty() {
                    return Err(invalid(
                        i,
                        format!("calls {pending:?} have no tool message"),
                    ));
                }
                if role == "assistant" {
                    let c = calls(m, i)?;
                    if c.is_empty() && !m["content"].is_string() {
                        return Err(invalid(
                            i,
                            "an assistant message needs content or tool_calls",
                        ));
                    }
                    pending.extend(c.into_iter().map(|(id, _, _)| id));
                } else if !m["content"].is_string() {
                    return Err(invalid(i, "a user message's content must be a string"));
                }
            }
            other => return Err(invalid(i, format!("unexpected role {other:?}"))),
        }
    }
    if !pending.is_empty() {
        return Err(invalid(
            messages.len(),
            format!("calls {pending:?} have no tool message"),
        ));
    }
    Ok(())
}

/// The `from`/`value` turns shared by the ShareGPT-style formats.
fn turns(messages: &[Value]) -> Result<Vec<Value>, Invalid> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate().skip(1) {
        let content = m["content"].as_str().unwrap_or_default();
        match m["role"].as_str().unwrap_or_default() {
            "user" => out.push(json!({"from": "human", "value": content})),
            "assistant" => {
                if !content.is_empty() || m.get("tool_calls").is_none() {
                    out.push(json!({"from": "gpt", "value": content}));
                }
                for (_, name, args) in calls(m, i)? {
                    let value = crate::pyjson::dumps(
                        &json!({"name": name, "arguments": Value::Object(args)}),
                    );
                    out.push(json!({"from": "function_call", "value": value}));
                }
            }
            "tool" => out.push(json!({"from": "observation", "value": content})),
            _ => {}
        }
    }
    Ok(out)
}

/// `messages` with every tool call's `function.arguments` parsed into its JSON object: a chat
/// template renders an object as JSON and a string as a quoted string, which would put
/// string-encoded arguments into the training text.
fn object_arguments(messages: &[Value]) -> Result<Vec<Value>, Invalid> {
    let mut out = messages.to_vec();
    for (i, m) in out.iter_mut().enumerate() {
        let parsed = calls(m, i)?;
        if let Some(list) = m.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for (c, (_, _, args)) in list.iter_mut().zip(parsed) {
                c["function"]["arguments"] = Value::Object(args);
            }
        }
    }
    Ok(out)
}

/// Bare function definitions (`{"name", "description", "parameters"}`) as one JSON string.
fn bare_tools(record: &Value) -> String {
    let tools: Vec<Value> = record["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t.get("function").cloned().unwrap_or_else(|| t.clone()))
        .collect();
    crate::pyjson::dumps(&Value::Array(tools))
}

/// Convert a canonical record (validated first) to `format`.
pub fn export(record: &Value, format: Format) -> Result<Value, Invalid> {
    validate(record)?;
    let messages = record["messages"].as_array().expect("validated");
    let system = messages[0]["content"].as_str().unwrap_or_default();
    Ok(match format {
        Format::Messages => {
            json!({"id": record["id"], "messages": object_arguments(messages)?, "tools": record["tools"]})
        }
        Format::Openai => json!({"messages": messages, "tools": record["tools"]}),
        Format::ApigenMt => {
            json!({"conversations": turns(messages)?, "system": system, "tools": bare_tools(record)})
        }
        Format::Sharegpt => {
            json!({"id": record["id"], "conversations": turns(messages)?, "system": system, "tools": bare_tools(record)})
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        json!({
            "id": "rollout-1", "blueprint_id": "bp-1",
            "tools": [{"type": "function", "function": {"name": "get_account", "description": "d", "parameters": {"type": "object", "properties": {}}}}],
            "messages": [
                {"role": "system", "content": "policy"},
                {"role": "user", "content": "Hi, what's my balance? acc_1"},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_account", "arguments": "{\"account_id\": \"acc_1\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "name": "get_account", "content": "{\"balance\": 5.0}"},
                {"role": "assistant", "content": "It is 5.0."},
            ]
        })
    }

    #[test]
    fn apigen_mt_rows_have_the_released_shape() {
        let row = export(&record(), Format::ApigenMt).unwrap();
        assert_eq!(
            row.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["conversations", "system", "tools"]
        );
        assert_eq!(
            row["conversations"],
            json!([
                {"from": "human", "value": "Hi, what's my balance? acc_1"},
                {"from": "function_call", "value": "{\"name\": \"get_account\", \"arguments\": {\"account_id\": \"acc_1\"}}"},
                {"from": "observation", "value": "{\"balance\": 5.0}"},
                {"from": "gpt", "value": "It is 5.0."},
            ])
        );
        let tools: Value = serde_json::from_str(row["tools"].as_str().unwrap()).unwrap();
        assert_eq!(tools[0]["name"], "get_account");
        assert!(
            tools[0].get("type").is_none(),
            "bare definitions, no wrapper"
        );
    }

    #[test]
    fn the_messages_form_carries_arguments_as_objects() {
        let m = export(&record(), Format::Messages).unwrap();
        assert_eq!(
            m["messages"][2]["tool_calls"][0]["function"]["arguments"],
            json!({"account_id": "acc_1"})
        );
        assert_eq!(m["messages"][3]["tool_call_id"], "call_0");
        assert_eq!(m["tools"][0]["function"]["name"], "get_account");
        assert_eq!(m["id"], "rollout-1");
    }

    #[test]
    fn openai_and_sharegpt_keep_what_they_need() {
        let o = export(&record(), Format::Openai).unwrap();
        assert_eq!(o["messages"].as_array().unwrap().len(), 5);
        assert_eq!(o["tools"][0]["type"], "function");
        let s = export(&record(), Format::Sharegpt).unwrap();
        assert_eq!(
            (s["id"].as_str(), s["system"].as_str()),
            (Some("rollout-1"), Some("policy"))
        );
    }

    #[test]
    fn broken_conversations_are_refused() {
        let mut r = record();
        r["messages"].as_array_mut().unwrap().remove(3);
        assert_eq!(validate(&r).unwrap_err().index, 3);
        let mut r = record();
        r["messages"][2]["tool_calls"][0]["function"]["arguments"] = json!("[1, 2]");
        assert!(
            validate(&r)
                .unwrap_err()
                .message
                .contains("must be a JSON object")
        );
        let mut r = record();
        r["messages"].as_array_mut().unwrap().remove(0);
        assert_eq!(validate(&r).unwrap_err().index, 0);
    }
}
