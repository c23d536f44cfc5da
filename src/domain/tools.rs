//! Tool schemas (OpenAI function format plus a `kind`) and argument checking.
//!
//! Arguments are checked against the schema before a body runs, so a model that omits or
//! mistypes an argument gets a clear `Error: ...` observation rather than a script failure.
//! Enumerations are deliberately not enforced here: tau-bench's tool bodies refuse bad values
//! with their own messages ("Error: invalid reason"), and those must come through unchanged.

use serde_json::{Map, Value};

/// What a tool does to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolKind {
    /// Never changes the database.
    Read,
    /// May change the database.
    Write,
    /// Records a thought; no effect.
    Think,
    /// Anything else without database effect (calculators, hand-offs).
    Generic,
}

/// Built-in tools implemented in Rust with tau-bench's exact behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Think,
    Calculate,
    TransferToHumanAgents,
}

impl Builtin {
    pub const ALL: [(&'static str, Builtin); 3] = [
        ("think", Builtin::Think),
        ("calculate", Builtin::Calculate),
        ("transfer_to_human_agents", Builtin::TransferToHumanAgents),
    ];

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
    }

    /// Run the builtin on already-checked arguments.
    pub fn invoke(self, args: &Map<String, Value>) -> String {
        match self {
            Builtin::Think => String::new(),
            Builtin::TransferToHumanAgents => "Transfer successful".into(),
            Builtin::Calculate => {
                let expr = args
                    .get("expression")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                crate::domain::calculate::calculate(expr)
            }
        }
    }
}

/// How a tool's body is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Script,
    Builtin(Builtin),
}

/// One tool: its schema as the model sees it, its kind and its body.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub kind: ToolKind,
    /// `{"type": "function", "function": {...}}`, without `kind`.
    pub schema: Value,
    pub body: Body,
}

impl Tool {
    /// The `parameters` object of the schema.
    pub fn parameters(&self) -> &Value {
        &self.schema["function"]["parameters"]
    }

    /// Check `args` against the parameters schema. `Err` is the text after `Error: `.
    pub fn check_arguments(&self, args: &Map<String, Value>) -> Result<(), String> {
        let params = self.parameters();
        let props = params.get("properties").and_then(Value::as_object);
        if let Some(required) = params.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !args.contains_key(r) {
                    return Err(format!("missing required argument '{r}' for {}", self.name));
                }
            }
        }
        for (name, value) in args {
            let Some(schema) = props.and_then(|p| p.get(name)) else {
                return Err(format!("{} got an unexpected argument '{name}'", self.name));
            };
            check_value(schema, value, name)?;
        }
        Ok(())
    }
}

pub(crate) fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

fn check_value(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        return Err(format!(
            "argument '{path}' must be {}, got {}",
            types
                .iter()
                .map(|t| article(t))
                .collect::<Vec<_>>()
                .join(" or "),
            crate::domain::db::json_kind(value)
        ));
    }
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(item_schema, item, &format!("{path}[{i}]"))?;
                }
            }
        }
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        return Err(format!("argument '{path}' is missing required field '{r}'"));
                    }
                }
            }
            if let Some(props) = props {
                for (k, v) in map {
                    match props.get(k) {
                        Some(s) => check_value(s, v, &format!("{path}.{k}"))?,
                        None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                            return Err(format!("argument '{path}' has an unexpected field '{k}'"));
                        }
                        None => {}
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "array" | "object" => format!("an {ty}"),
        "null" => "null".into(),
        _ => format!("a {ty}"),
    }
}

/// Check that a schema is a usable OpenAI function schema. `Err` says what is wrong.
pub fn validate_schema(entry: &Value) -> Result<(), String> {
    let f = entry.get("function").ok_or("missing \"function\"")?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or("missing \"function.name\"")?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "tool name {name:?} must be letters, digits, '_' or '-'"
        ));
    }
    if entry.get("type").and_then(Value::as_str) != Some("function") {
        return Err("\"type\" must be \"function\"".into());
    }
    let params = f
        .get("parameters")
        .ok_or("missing \"function.parameters\"")?;
    if params.get("type").and_then(Value::as_str) != Some("object") {
        return Err("\"parameters.type\" must be \"object\"".into());
    }
    let props = match params.get("properties") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err("\"parameters.properties\" must be an object".into()),
    };
    if let Some(props) = props {
        for (k, v) in props {
            validate_property(v, k)?;
        }
    }
    if let Some(req) = params.get("required") {
        let Value::Array(req) = req else {
            return Err("\"parameters.required\" must be an array".into());
        };
        for r in req {
            let r = r
                .as_str()
                .ok_or("\"parameters.required\" must list strings")?;
            if !props.is_some_and(|p| p.contains_key(r)) {
                return Err(format!("required parameter '{r}' is not in \"properties\""));
            }
        }
    }
    Ok(())
}

fn validate_property(schema: &Value, path: &str) -> Result<(), String> {
    let Value::Object(s) = schema else {
        return Err(format!("parameter '{path}' must be a schema object"));
    };
    const TYPES: [&str; 7] = [
        "string", "integer", "number", "boolean", "array", "object", "null",
    ];
    match s.get("type") {
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        None if s.contains_key("anyOf") || s.contains_key("enum") => {}
        Some(t) => return Err(format!("parameter '{path}' has unknown type {t}")),
        None => return Err(format!("parameter '{path}' has no \"type\"")),
    }
    if let Some(items) = s.get("items") {
        validate_property(items, &format!("{path}[]"))?;
    }
    if let Some(Value::Object(props)) = s.get("properties") {
        for (k, v) in props {
            validate_property(v, &format!("{path}.{k}"))?;
        }
    }
    Ok(())
}
