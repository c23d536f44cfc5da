//! The environment: tau-bench's episode mechanics over a [`Domain`].
//!
//! `reset` restores the pristine database; `step` runs one action and returns the observation
//! string exactly as tau-bench would: the tool's result, `Error: ...` when it refuses or raises,
//! `Unknown action <name>` for a tool that does not exist. Arguments are checked against the
//! tool's schema first. A terminate tool ends the episode. The domain's files are never modified.

use crate::domain::Domain;
use crate::domain::db::Db;
use crate::domain::script::CallFault;
use crate::domain::task::{Action, RESPOND_ACTION_NAME};
use crate::domain::tools::Body;
use serde_json::Value;

/// What one step produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The observation the agent sees (for `respond`, the message itself: the caller routes it
    /// to the user).
    pub observation: String,
    /// A terminate tool was called.
    pub done: bool,
    /// Set when the step failed for a reason other than the tool's own refusal: the action is
    /// unknown, its arguments broke the schema, or its script raised or ran past a limit.
    pub fault: Option<Fault>,
}

/// Why a step did not run the tool body to a normal return.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    UnknownAction,
    BadArguments(String),
    /// The script raised: its message and where (`file:line:col`) when known.
    ScriptRaised(String, Option<String>),
    LimitExceeded(String),
    /// The interpreter failed (a panic inside it, or the script host died).
    ScriptPanic(String),
}

/// One episode's state.
pub struct Env<'d> {
    domain: &'d Domain,
    db: Db,
    done: bool,
}

impl<'d> Env<'d> {
    pub fn new(domain: &'d Domain) -> Env<'d> {
        Env {
            domain,
            db: domain.pristine().clone(),
            done: false,
        }
    }

    /// Back to the pristine database.
    pub fn reset(&mut self) {
        self.db = self.domain.pristine().clone();
        self.done = false;
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn domain(&self) -> &'d Domain {
        self.domain
    }

    /// Whether a terminate tool has been called since the last reset.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The canonical hash of the current database.
    pub fn hash(&self) -> String {
        self.db.hash()
    }

    /// Run one action.
    pub fn step(&mut self, action: &Action) -> Step {
        if action.name == RESPOND_ACTION_NAME {
            let content = action
                .arguments
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Step {
                observation: content.to_owned(),
                done: false,
                fault: None,
            };
        }
        let Some(tool) = self.domain.tool(&action.name) else {
            return Step {
                observation: format!("Unknown action {}", action.name),
                done: false,
                fault: Some(Fault::UnknownAction),
            };
        };
        if let Err(e) = tool.check_arguments(&action.arguments) {
            return Step {
                observation: format!("Error: {e}"),
                done: false,
                fault: Some(Fault::BadArguments(e)),
            };
        }
        let (observation, fault) = match tool.body {
            Body::Builtin(b) => (b.invoke(&action.arguments), None),
            Body::Script => {
                match self
                    .domain
                    .call_tool(&tool.name, &mut self.db, &action.arguments)
                {
                    Ok(Value::String(s)) => (s, None),
                    Ok(Value::Null) => ("None".to_owned(), None),
                    Ok(other) => (crate::pyjson::dumps(&other), None),
                    Err(CallFault::Raised(e, at)) => {
                        (format!("Error: {e}"), Some(Fault::ScriptRaised(e, at)))
                    }
                    Err(CallFault::LimitExceeded(e)) => {
                        (format!("Error: {e}"), Some(Fault::LimitExceeded(e)))
                    }
                    Err(CallFault::Missing(e)) => {
                        (format!("Error: {e}"), Some(Fault::ScriptRaised(e, None)))
                    }
                    Err(CallFault::Panicked(e)) => (
                        format!(
                            "Error: {e} (arguments {})",
                            Value::Object(action.arguments.clone())
                        ),
                        Some(Fault::ScriptPanic(e)),
                    ),
                }
            }
        };
        let done = self
            .domain
            .manifest
            .terminate_tools
            .iter()
            .any(|t| *t == tool.name);
        self.done |= done;
        Step {
            observation,
            done,
            fault,
        }
    }
}
