//! Chat templates: rendering a conversation (messages, tools) into the model's own prompt
//! format with minijinja, from the checkpoint's Jinja template (GGUF `tokenizer.chat_template`
//! or `tokenizer_config.json`) or an override in `models/templates/`.
//!
//! Templates written for Hugging Face's Jinja environment expect Python string methods
//! (`.strip()`, `.startswith()`), `raise_exception`, `strftime_now`, and a `tojson` that writes
//! JSON the way Python's `json.dumps` does (`", "` and `": "` separators, no HTML escaping); all
//! are provided here so the rendered prompt is byte-for-byte what the model was trained on.

mod json;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as JinjaValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::error::{LlmError, Result};

pub use json::python_json;

/// Override templates shipped in `models/templates/`: (file name, text).
const TEMPLATES: &[(&str, &str)] = &[(
    "chatml.jinja",
    include_str!("../../../models/templates/chatml.jinja"),
)];

/// A call the assistant asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// A JSON object (never a string holding JSON: parsers decode those).
    pub arguments: Value,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `tool` messages: the tool that produced the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
            tool_calls: vec![],
            name: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
    pub fn assistant_calls(calls: Vec<ToolCall>) -> Self {
        Message {
            tool_calls: calls,
            ..Self::new("assistant", "")
        }
    }
    pub fn tool(name: &str, content: impl Into<String>) -> Self {
        Message {
            name: Some(name.to_string()),
            ..Self::new("tool", content)
        }
    }

    /// The shape templates expect (OpenAI style: `tool_calls[].function.{name, arguments}`).
    fn to_template_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), Value::from(self.role.clone()));
        m.insert("content".into(), Value::from(self.content.clone()));
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| serde_json::json!({"type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
            m.insert("tool_calls".into(), Value::from(calls));
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), Value::from(n.clone()));
        }
        Value::Object(m)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> std::result::Result<JinjaValue, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn tojson(
    v: JinjaValue,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&v)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(match indent {
        Some(n) => json::python_json_indent(&json, n),
        None => python_json(&json),
    })
}

impl ChatTemplate {
    /// Compile `source`; `bos_token` / `eos_token` are the texts templates may refer to.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| -> String {
            // A fixed date keeps prompts reproducible (templates use it in system headers).
            fmt.replace("%d", "26")
                .replace("%b", "Jul")
                .replace("%B", "July")
                .replace("%Y", "2024")
                .replace("%m", "07")
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| LlmError::Template(format!("compiling: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Render `messages` (and `tools`, OpenAI function schemas) into a prompt string.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[Value],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| LlmError::Template(e.to_string()))?;
        let messages: Vec<Value> = messages.iter().map(Message::to_template_value).collect();
        let tools: Vec<Value> = tools.iter().map(normalize_tool).collect();
        let ctx = minijinja::context! {
            messages => JinjaValue::from(minijinja::value::Serde(&messages)),
            tools => if tools.is_empty() { JinjaValue::from(()) } else { JinjaValue::from(minijinja::value::Serde(&tools)) },
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            LlmError::Template(msg)
        })
    }
}

/// Tools may be given as bare function schemas `{name, description, parameters}`; templates
/// expect `{"type": "function", "function": {...}}`.
fn normalize_tool(t: &Value) -> Value {
    if t.get("function").is_some() {
        t.clone()
    } else {
        serde_json::json!({"type": "function", "function": t})
    }
}

/// The template text a profile's `chat_template` setting names, when it names a file rather than
/// the checkpoint's own (`gguf`, `tokenizer_config`). Files are looked up among the shipped
/// templates, then in `$APIGEN_MT_PROFILES/templates/`.
pub fn template_override(spec: &str) -> Result<Option<String>> {
    if matches!(spec, "gguf" | "tokenizer_config" | "checkpoint") {
        return Ok(None);
    }
    if let Some(dir) = std::env::var_os("APIGEN_MT_PROFILES") {
        let path = std::path::PathBuf::from(dir).join("templates").join(spec);
        if path.is_file() {
            return std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| LlmError::io(path, e));
        }
    }
    if let Some((_, t)) = TEMPLATES.iter().find(|(n, _)| *n == spec) {
        return Ok(Some(t.to_string()));
    }
    Err(LlmError::Template(format!("no template file {spec:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_override_renders_tools_and_calls() {
        let t = ChatTemplate::new(
            &template_override("chatml.jinja").unwrap().unwrap(),
            None,
            None,
        )
        .unwrap();
        let tools = vec![
            serde_json::json!({"name": "get_order", "description": "Look up", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}),
        ];
        let msgs = vec![
            Message::system("Be brief."),
            Message::user("Where is #1?"),
            Message::assistant_calls(vec![ToolCall {
                name: "get_order".into(),
                arguments: serde_json::json!({"id": "#1"}),
            }]),
            Message::tool("get_order", "{\"status\": \"shipped\"}"),
        ];
        let out = t.render(&msgs, &tools, true).unwrap();
        assert!(out.starts_with("<|im_start|>system\nBe brief."), "{out}");
        assert!(
            out.contains("{\"type\": \"function\", \"function\": {\"name\": \"get_order\""),
            "{out}"
        );
        assert!(out.contains("<tool_call>\n{\"name\": \"get_order\", \"arguments\": {\"id\": \"#1\"}}\n</tool_call>"), "{out}");
        assert!(
            out.contains("<tool_response>\n{\"status\": \"shipped\"}\n</tool_response>"),
            "{out}"
        );
        assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
    }

    #[test]
    fn raise_exception_is_an_error_value() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
        let e = t.render(&[], &[], false).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip().upper() }}|{{ messages[0].role.startswith('us') }}",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::user("  hi ")], &[], false).unwrap(),
            "HI|True"
        );
    }
}
