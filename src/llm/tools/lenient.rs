//! Tolerant extraction of tool calls from what small models actually write: bare JSON objects or
//! arrays, ```json fences, prose before and after, `arguments` given as a JSON string,
//! `parameters` instead of `arguments`, `{"tool_calls": [...]}` wrappers.

use serde_json::{Map, Value};

use crate::llm::chat::ToolCall;

/// Every top-level JSON value (object or array) found in `text`, with its byte span, scanning
/// left to right and skipping what does not parse.
pub fn json_values(text: &str) -> Vec<(usize, usize, Value)> {
    let mut out = Vec::new();
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'{' || bytes[i] == b'[' {
            let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = stream.next() {
                let end = i + stream.byte_offset();
                out.push((i, end, v));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// A call from a JSON object, when it has the shape of one. Errors say why a call-shaped object
/// is unusable.
pub fn call_from_value(v: &Value) -> Option<Result<ToolCall, String>> {
    let obj = v.as_object()?;
    let obj = match obj.get("function").and_then(Value::as_object) {
        Some(f) if f.contains_key("name") => f,
        _ => obj,
    };
    let name = obj.get("name")?;
    let Some(name) = name.as_str().map(str::trim).filter(|n| !n.is_empty()) else {
        return Some(Err(format!("tool name is not a non-empty string: {name}")));
    };
    let args = obj
        .get("arguments")
        .or_else(|| obj.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let arguments = match args {
        Value::Object(_) => args,
        Value::String(s) if s.trim().is_empty() => Value::Object(Map::new()),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                return Some(Err(format!(
                    "arguments of {name} are a string that is not a JSON object"
                )));
            }
        },
        Value::Null => Value::Object(Map::new()),
        other => {
            return Some(Err(format!(
                "arguments of {name} are not an object: {other}"
            )));
        }
    };
    Some(Ok(ToolCall {
        name: name.to_string(),
        arguments,
    }))
}

/// Calls from one JSON value: a call object, an array of them, or a `tool_calls` wrapper.
/// `None` when the value does not look like calls at all.
pub fn calls_from_value(v: &Value) -> Option<Result<Vec<ToolCall>, String>> {
    if let Some(inner) = v.get("tool_calls") {
        return calls_from_value(inner);
    }
    match v {
        Value::Array(items) if !items.is_empty() => {
            let mut calls = Vec::new();
            for item in items {
                match call_from_value(item) {
                    Some(Ok(c)) => calls.push(c),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {
                        return if calls.is_empty() {
                            None
                        } else {
                            Some(Err(format!("array item is not a call: {item}")))
                        };
                    }
                }
            }
            Some(Ok(calls))
        }
        Value::Object(_) => call_from_value(v).map(|r| r.map(|c| vec![c])),
        _ => None,
    }
}

/// Remove the spans `[a, b)` from `text`, along with ```json fences and blank lines.
pub fn prose_around(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::new();
    let mut last = 0;
    for &(a, b) in spans {
        out.push_str(&text[last..a]);
        last = b;
    }
    out.push_str(&text[last..]);
    let cleaned = out.replace("```json", "").replace("```", "");
    cleaned
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first call-shaped JSON anywhere in `text`: `Some(Ok((calls, prose)))`, `Some(Err)`
/// when something call-shaped is broken, `None` when there is nothing call-shaped.
pub fn find_calls(text: &str) -> Option<Result<(Vec<ToolCall>, String), String>> {
    let values = json_values(text);
    let mut calls = Vec::new();
    let mut spans = Vec::new();
    for (a, b, v) in &values {
        match calls_from_value(v) {
            Some(Ok(c)) => {
                calls.extend(c);
                spans.push((*a, *b));
            }
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
    }
    if calls.is_empty() {
        return None;
    }
    Some(Ok((calls, prose_around(text, &spans))))
}

/// Whether `text` looks like an attempted call that did not parse (an unclosed object with a
/// `"name"` key, say).
pub fn looks_like_call(text: &str) -> bool {
    let t = text.trim_start();
    (t.starts_with('{') || t.starts_with('[') || t.starts_with("```")) && text.contains("\"name\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_calls_in_fences_and_prose() {
        let text = "Sure! Let me check.\n```json\n{\"name\": \"get_order\", \"arguments\": {\"id\": 1}}\n```\nDone.";
        let (calls, prose) = find_calls(text).unwrap().unwrap();
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "get_order".into(),
                arguments: json!({"id": 1})
            }]
        );
        assert_eq!(prose, "Sure! Let me check.\nDone.");
    }

    #[test]
    fn string_arguments_and_parameters_are_accepted() {
        let v = json!({"name": "f", "arguments": "{\"a\": 1}"});
        assert_eq!(
            call_from_value(&v).unwrap().unwrap().arguments,
            json!({"a": 1})
        );
        let v = json!({"name": "f", "parameters": {"b": 2}});
        assert_eq!(
            call_from_value(&v).unwrap().unwrap().arguments,
            json!({"b": 2})
        );
        let v = json!({"type": "function", "function": {"name": "g", "arguments": {}}});
        assert_eq!(call_from_value(&v).unwrap().unwrap().name, "g");
        assert!(
            call_from_value(&json!({"name": "f", "arguments": "oops"}))
                .unwrap()
                .is_err()
        );
        assert!(call_from_value(&json!({"answer": 1})).is_none());
    }

    #[test]
    fn plain_json_that_is_not_a_call_is_not_one() {
        assert!(
            find_calls("{\"name\": \"Ann\", \"age\": 30}")
                .unwrap()
                .is_ok()
        ); // call-shaped: has a name
        assert!(find_calls("{\"age\": 30}").is_none());
        assert!(find_calls("no json here").is_none());
    }
}
