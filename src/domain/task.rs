//! Tasks in tau-bench's shape: `user_id`, `instruction`, `actions`, `outputs`.
//!
//! tau-bench's files spell an action's arguments `kwargs`; ours spell them `arguments`. Both are
//! read, and each task is written back with the spelling it was read with. Unknown fields are kept.

use crate::domain::db::serde_message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The action name for a message to the user (not a tool).
pub const RESPOND_ACTION_NAME: &str = "respond";

/// One tool call (or a `respond`).
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub name: String,
    pub arguments: Map<String, Value>,
    /// Written back as `kwargs` (tau-bench's spelling) rather than `arguments`.
    pub kwargs_style: bool,
}

impl Action {
    pub fn new(name: impl Into<String>, arguments: Map<String, Value>) -> Action {
        Action {
            name: name.into(),
            arguments,
            kwargs_style: false,
        }
    }

    /// Parse `{"name": ..., "arguments"|"kwargs": {...}}`. `Err` says what is wrong.
    pub fn from_json(value: &Value) -> Result<Action, String> {
        let obj = value.as_object().ok_or("an action must be a JSON object")?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or("an action needs a string \"name\"")?;
        let (args, kwargs_style) = match (obj.get("arguments"), obj.get("kwargs")) {
            (Some(a), None) => (a, false),
            (None, Some(k)) => (k, true),
            (None, None) => return Ok(Action::new(name, Map::new())),
            (Some(_), Some(_)) => {
                return Err("an action has both \"arguments\" and \"kwargs\"".into());
            }
        };
        let arguments = match args {
            Value::Object(m) => m.clone(),
            // Models sometimes send arguments as a JSON string.
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => m,
                _ => return Err("\"arguments\" must be a JSON object".into()),
            },
            _ => return Err("\"arguments\" must be a JSON object".into()),
        };
        Ok(Action {
            name: name.to_owned(),
            arguments,
            kwargs_style,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(self.name.clone()));
        let key = if self.kwargs_style {
            "kwargs"
        } else {
            "arguments"
        };
        m.insert(key.into(), Value::Object(self.arguments.clone()));
        Value::Object(m)
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Action::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// A task: what the simulated user wants, the gold actions and the outputs the agent must say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub user_id: String,
    pub instruction: String,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Any other fields, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A task file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Read a JSON array of tasks (or JSON Lines, one task per line).
pub fn read_tasks(path: &Path) -> Result<Vec<Task>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|error| TaskError::Read {
        path: path.into(),
        error,
    })?;
    parse_tasks(path, &text)
}

/// [`read_tasks`] on text already read (`path` names it in errors).
pub fn parse_tasks(path: &Path, text: &str) -> Result<Vec<Task>, TaskError> {
    let parse_err = |e: serde_json::Error, line_offset: usize| TaskError::Parse {
        path: path.into(),
        line: e.line() + line_offset,
        column: e.column(),
        message: serde_message(&e),
    };
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|e| parse_err(e, 0));
    }
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        tasks.push(serde_json::from_str(line).map_err(|e| parse_err(e, i))?);
    }
    Ok(tasks)
}

/// Write tasks as a pretty JSON array, the shape tau-bench's files have.
pub fn write_tasks(path: &Path, tasks: &[Task]) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(tasks).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
