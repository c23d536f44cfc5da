//! Executable domains: a database, tools that read and change it, and a policy.
//!
//! A domain is a folder of data (see `docs/domain-format.md`): a manifest, a policy, tool schemas
//! in OpenAI function format, tool bodies in sandboxed Starlark, tables of JSON records and
//! optional tasks. [`Domain::load`] validates it once; [`env::Env`] runs episodes with
//! tau-bench's semantics. This module never touches models.

pub mod calculate;
pub mod check;
pub mod db;
pub mod diff;
pub mod env;
pub mod generate;
pub mod ground;
pub mod manifest;
pub mod policy;

pub mod reward;
pub mod script;
pub mod task;
pub mod tools;

use crate::domain::db::serde_message;
use db::{Db, DbError};
use manifest::{MANIFEST_FILE, Manifest};
use script::{ScriptError, Scripts};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tools::{Body, Builtin, Tool, ToolKind};

/// A domain folder that cannot be loaded. Every variant names the file (and line when known).
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Script(#[from] ScriptError),
}

/// A loaded, validated domain. Cheap to share between threads; every episode starts from
/// [`Domain::pristine`], which is never modified.
pub struct Domain {
    pub root: PathBuf,
    pub manifest: Manifest,
    pub policy: String,
    tools: Vec<Tool>,
    index: HashMap<String, usize>,
    pub(crate) scripts: Scripts,
    rules: Option<Scripts>,
    /// Where script calls run when they are isolated (see [`script::host`]).
    host: Option<std::sync::Mutex<script::host::Client>>,
    pristine: Db,
    /// Where the database was loaded from.
    pub db_dir: PathBuf,
}

impl Domain {
    /// Load the domain in `dir`, with its tables from `db_dir` (default: the manifest's `db.dir`).
    pub fn load(dir: &Path, db_dir: Option<&Path>) -> Result<Domain, DomainError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(dir)?;
        let text = read(&manifest_path)?;
        let invalid = |line: usize, message: String| DomainError::Invalid {
            path: manifest_path.clone(),
            line,
            message,
        };
        for b in &manifest.builtins {
            if Builtin::from_name(b).is_none() {
                let known: Vec<&str> = Builtin::ALL.iter().map(|(n, _)| *n).collect();
                return Err(invalid(
                    find_line(&text, b),
                    format!("unknown builtin tool {b:?} (known: {})", known.join(", ")),
                ));
            }
        }
        let policy_path = dir.join(&manifest.policy);
        let policy = read(&policy_path)?;
        let scripts_dir = dir.join(&manifest.scripts);
        let host = start_host(dir, &manifest, &scripts_dir)?;
        let scripts = Scripts::load_dir(&scripts_dir, None)?;
        let tools_path = dir.join(&manifest.tools);
        let tools = load_tools(&tools_path, &manifest, &scripts)?;
        for t in &manifest.terminate_tools {
            if !tools.iter().any(|x| &x.name == t) {
                return Err(invalid(
                    find_line(&text, t),
                    format!("terminate tool {t:?} is not in {}", manifest.tools),
                ));
            }
        }
        for (tool, templates) in &manifest.grounding.requests {
            let Some(t) = tools.iter().find(|x| &x.name == tool) else {
                return Err(invalid(
                    find_line(&text, tool),
                    format!(
                        "[grounding.requests] names tool {tool:?}, which is not in {}",
                        manifest.tools
                    ),
                ));
            };
            let params = &t.parameters()["properties"];
            for template in templates {
                for name in template_fields(template) {
                    if params.get(&name).is_none() {
                        return Err(invalid(
                            find_line(&text, template),
                            format!(
                                "[grounding.requests] {tool}: {{{name}}} is not an argument of {tool}"
                            ),
                        ));
                    }
                }
            }
        }
        let rules = match &manifest.rules {
            Some(r) => Some(Scripts::load_dir(&dir.join(r), None)?),
            None => None,
        };
        let db_dir = db_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join(&manifest.db.dir));
        let pristine = Db::load(&db_dir, &manifest.db.tables)?;
        let index = tools
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Domain {
            root: dir.to_path_buf(),
            manifest,
            policy,
            tools,
            index,
            scripts,
            rules,
            host,
            pristine,
            db_dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.index.get(name).map(|i| &self.tools[*i])
    }

    /// Whether `name` is one of the domain's write tools.
    pub fn is_write(&self, name: &str) -> bool {
        self.tool(name)
            .is_some_and(|t| t.kind == tools::ToolKind::Write)
    }

    /// The policy rules, when the domain has a `rules` folder.
    pub fn rules(&self) -> Option<&Scripts> {
        self.rules.as_ref()
    }

    /// Run the tool body `name` against `db` under the manifest's limits, in the script host
    /// when calls are isolated; the call's changes are applied to `db`.
    pub fn call_tool(
        &self,
        name: &str,
        db: &mut Db,
        args: &serde_json::Map<String, Value>,
    ) -> Result<Value, script::CallFault> {
        let limits = self.manifest.limits;
        match &self.host {
            Some(host) => host
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .call_tool(name, db, args, limits),
            None => self.scripts.call_with_db(name, db, args, limits),
        }
    }

    /// Run the policy rule `name` over `trace`, like [`Domain::call_tool`].
    pub fn call_rule(
        &self,
        name: &str,
        trace: &script::RuleTrace,
    ) -> Result<Vec<String>, script::CallFault> {
        let limits = self.manifest.limits;
        match (&self.host, &self.rules) {
            (_, None) => Err(script::CallFault::Missing(name.to_owned())),
            (Some(host), Some(_)) => host
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .call_rule(name, trace, limits),
            (None, Some(rules)) => rules.call_rule(name, trace, limits),
        }
    }

    /// The database every episode starts from.
    pub fn pristine(&self) -> &Db {
        &self.pristine
    }

    /// The tool schemas exactly as a model sees them (OpenAI function format, no `kind`).
    pub fn tool_schemas(&self) -> Vec<Value> {
        self.tools.iter().map(|t| t.schema.clone()).collect()
    }

    /// A fresh environment on the pristine database.
    pub fn env(&self) -> env::Env<'_> {
        env::Env::new(self)
    }

    /// Paths of the task files named in the manifest.
    pub fn task_files(&self) -> Vec<(String, PathBuf)> {
        self.manifest
            .tasks
            .iter()
            .map(|(k, v)| (k.clone(), self.root.join(v)))
            .collect()
    }
}

/// With a script host, start it for this domain: it compiles the scripts first, because
/// compiling runs top-level code and folds constants, which must not take this process's memory
/// either. A compile error is left to this process's own compile, which names file and line.
fn start_host(
    dir: &Path,
    manifest: &Manifest,
    scripts_dir: &Path,
) -> Result<Option<std::sync::Mutex<script::host::Client>>, DomainError> {
    let Some(program) = script::host::program() else {
        return Ok(None);
    };
    let rules_dir = manifest.rules.as_ref().map(|r| dir.join(r));
    let mut client = script::host::Client::new(
        program,
        Some(scripts_dir),
        rules_dir.as_deref(),
        manifest.limits.max_heap_bytes,
    );
    let refused = |m: String| Err(DomainError::Script(ScriptError::Compile(m)));
    match client.start() {
        Ok(()) | Err(script::CallFault::Raised(..)) => Ok(Some(std::sync::Mutex::new(client))),
        Err(script::CallFault::LimitExceeded(m)) => refused(format!(
            "{}: compiling the scripts: {m} ([limits] max_heap_bytes)",
            scripts_dir.display()
        )),
        Err(other) => refused(format!("{}: {}", scripts_dir.display(), other.message())),
    }
}

fn read(path: &Path) -> Result<String, DomainError> {
    std::fs::read_to_string(path).map_err(|error| DomainError::Read {
        path: path.into(),
        error,
    })
}

fn load_tools(
    path: &Path,
    manifest: &Manifest,
    scripts: &Scripts,
) -> Result<Vec<Tool>, DomainError> {
    let text = read(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DomainError::Syntax {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: serde_message(&e),
    })?;
    let invalid = |line: usize, message: String| DomainError::Invalid {
        path: path.into(),
        line,
        message,
    };
    let Value::Array(entries) = value else {
        return Err(invalid(1, "tool schemas must be a JSON array".into()));
    };
    let mut tools: Vec<Tool> = Vec::new();
    for (i, mut entry) in entries.into_iter().enumerate() {
        let name = entry
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let line = if name.is_empty() {
            1
        } else {
            find_line(&text, &format!("\"{name}\""))
        };
        let what = if name.is_empty() {
            format!("tool #{}", i + 1)
        } else {
            format!("tool `{name}`")
        };
        tools::validate_schema(&entry).map_err(|m| invalid(line, format!("{what}: {m}")))?;
        let kind = match entry.as_object_mut().and_then(|o| o.shift_remove("kind")) {
            Some(k) => serde_json::from_value::<ToolKind>(k.clone()).map_err(|_| {
                invalid(line, format!("{what}: \"kind\" must be \"read\", \"write\", \"think\" or \"generic\", not {k}"))
            })?,
            None => return Err(invalid(line, format!("{what}: missing \"kind\" (read, write, think or generic)"))),
        };
        if tools.iter().any(|t| t.name == name) {
            return Err(invalid(line, format!("{what} is defined twice")));
        }
        let builtin = manifest
            .builtins
            .iter()
            .any(|b| *b == name)
            .then(|| Builtin::from_name(&name))
            .flatten();
        let body = match (builtin, scripts.has(&name)) {
            (Some(_), true) => {
                return Err(invalid(
                    line,
                    format!("{what} is both a builtin (domain.toml) and a script function"),
                ));
            }
            (Some(b), false) => Body::Builtin(b),
            (None, true) => Body::Script,
            (None, false) => {
                let hint = if Builtin::from_name(&name).is_some() {
                    format!(
                        " (add \"{name}\" to `builtins` in domain.toml to use the built-in one)"
                    )
                } else {
                    String::new()
                };
                return Err(invalid(
                    line,
                    format!(
                        "{what} has no body: define `def {name}(data, ...)` in {}/*.star{hint}",
                        manifest.scripts
                    ),
                ));
            }
        };
        tools.push(Tool {
            name,
            kind,
            schema: entry,
            body,
        });
    }
    for (f, file) in scripts.functions() {
        if !tools.iter().any(|t| t.name == f) {
            let src = std::fs::read_to_string(file).unwrap_or_default();
            return Err(DomainError::Invalid {
                path: file.into(),
                line: find_line(&src, &format!("def {f}(")),
                message: format!(
                    "function `{f}` has no schema in {} (name private helpers with a leading `_`)",
                    manifest.tools
                ),
            });
        }
    }
    for b in &manifest.builtins {
        if !tools.iter().any(|t| &t.name == b) {
            return Err(invalid(
                1,
                format!("builtin tool `{b}` is listed in domain.toml but has no schema here"),
            ));
        }
    }
    Ok(tools)
}

/// 1-based line of the first occurrence of `needle` (1 when absent).
pub(crate) fn find_line(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map(|at| line_col(text, at).0)
        .unwrap_or(1)
}

/// 1-based (line, column) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// `template` with each `{name}` replaced by `say(name)`; `{{` and `}}` are braces, and a brace
/// without its partner is kept as it is.
pub fn fill_template(template: &str, mut say: impl FnMut(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(end) = tail.strip_prefix('{').and_then(|t| t.find('}')) {
            out.push_str(&say(&tail[1..=end]));
            rest = &tail[end + 2..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The `{name}` fields of a template.
pub fn template_fields(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    fill_template(template, |name| {
        out.push(name.to_owned());
        String::new()
    });
    out
}

#[cfg(test)]
mod tests {
    /// Episodes run on many threads at once: a loaded domain must be shareable.
    #[test]
    fn domain_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Domain>();
    }
}
