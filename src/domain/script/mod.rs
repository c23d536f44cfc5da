//! Tool bodies and rules as sandboxed Starlark, a hermetic Python dialect.
//!
//! Starlark was chosen because tau-bench's Python tools port to it nearly line by line and its
//! dicts keep insertion order (tool results must come out in tau-bench's key order). Scripts have
//! no file, network or clock access; `load()` only reaches other scripts inside the same folder;
//! and every call runs under a work bound (ticks: function calls plus loop iterations), a heap
//! bound and a call-depth bound, so a runaway script stops with a clear error. The heap bound
//! holds before allocation only in the script host ([`host`]), where [`meter`] watches every
//! allocation; in-process, Starlark checks its heap every thousand ticks.
//!
//! A [`Scripts`] set is compiled once and frozen; calling a function is cheap and thread-safe.
//! The database reaches a script as `data` (see [`data`]) and comes back as a list of changes.
//! A panic inside a call is caught ([`crate::guard`]) and returned as [`CallFault::Panicked`].

pub mod builtins;
pub mod convert;
pub mod data;
pub mod host;
pub mod meter;

use crate::domain::db::Db;
use indexmap::IndexMap;
use serde_json::{Map, Value as Json};
use starlark::collections::SmallMap;
use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, LibraryExtension, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::syntax::{AstModule, Dialect};
use starlark::values::dict::AllocDict;
use starlark::values::list::AllocList;
use starlark::values::{OwnedFrozenValue, Value, ValueLike};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Resource bounds for one script call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Function calls plus loop iterations.
    pub max_ticks: u64,
    /// Bytes of Starlark heap.
    pub max_heap_bytes: usize,
    /// Nested calls.
    pub max_call_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ticks: 20_000_000,
            max_heap_bytes: 256 << 20,
            max_call_depth: 200,
        }
    }
}

/// What one call did to the database: per table, in the order the script's view lists them.
pub type Changes = Vec<(String, data::TableChanges)>;

/// Apply a call's changes to `db` (removals first, then upserts in order).
pub fn apply_changes(db: &mut Db, changes: Changes) {
    for (table, changes) in changes {
        let Some(target) = db.table_mut(&table) else {
            continue;
        };
        for id in &changes.removed {
            target.shift_remove(id);
        }
        for (id, record) in changes.upserts {
            target.insert(id, Arc::new(crate::domain::db::Record::new(record)));
        }
    }
}

/// A script set that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Syntax and top-level evaluation errors; the message names file, line and column.
    #[error("{0}")]
    Compile(String),
    #[error("function `{name}` is defined in both {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Why a call did not return normally. The environment turns these into `Error: ...`
/// observations, as tau-bench turns a raised exception into one.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CallFault {
    /// The script raised (`fail(...)`, a missing key, a type error, ...): the message, and where
    /// in the script (`file:line:col`) when known.
    #[error("{0}")]
    Raised(String, Option<String>),
    /// The script ran past a resource bound and was stopped; its changes were discarded.
    #[error("{0}")]
    LimitExceeded(String),
    /// No function of that name.
    #[error("no script function named `{0}`")]
    Missing(String),
    /// The interpreter itself failed (a panic inside it, or the script host died): the call's
    /// changes were discarded. The message names the function and the cause.
    #[error("{0}")]
    Panicked(String),
}

impl CallFault {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            CallFault::Raised(m, _)
            | CallFault::LimitExceeded(m)
            | CallFault::Missing(m)
            | CallFault::Panicked(m) => m,
        }
    }
}

/// Run one call under [`crate::guard::catch`]: a panic becomes [`CallFault::Panicked`].
fn guarded<T>(name: &str, f: impl FnOnce() -> Result<T, CallFault>) -> Result<T, CallFault> {
    crate::guard::catch(f).unwrap_or_else(|panic| {
        Err(CallFault::Panicked(format!(
            "script stopped: the interpreter failed in {name}: {panic}"
        )))
    })
}

/// A compiled, frozen set of Starlark files.
pub struct Scripts {
    globals: Globals,
    /// Function name → (file, value).
    functions: IndexMap<String, (PathBuf, OwnedFrozenValue)>,
}

/// The dialect every domain script is parsed with.
pub fn dialect() -> Dialect {
    Dialect {
        enable_f_strings: true,
        enable_keyword_only_arguments: true,
        enable_load_reexport: false,
        ..Dialect::Standard
    }
}

/// Starlark's standard library plus the Python builtins tau-bench's tools rely on.
pub fn globals(extra: Option<fn(&mut GlobalsBuilder)>) -> Globals {
    let mut b = GlobalsBuilder::extended_by(&[
        LibraryExtension::StructType,
        LibraryExtension::Map,
        LibraryExtension::Filter,
        LibraryExtension::Typing,
    ])
    .with(builtins::python_builtins)
    .with_namespace("json", builtins::json_namespace);
    if let Some(extra) = extra {
        b = b.with(extra);
    }
    b.build()
}

impl Scripts {
    /// Compile every `*.star` file in `dir` (sorted by name) except libraries, whose names start
    /// with `_` and which are only reached through `load("_x.star", ...)` (resolved inside `dir`).
    /// Public functions (names not starting with `_`) become callable.
    pub fn load_dir(
        dir: &Path,
        extra: Option<fn(&mut GlobalsBuilder)>,
    ) -> Result<Scripts, ScriptError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|error| ScriptError::Read {
                path: dir.into(),
                error,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "star"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('_'))
            })
            .collect();
        files.sort();
        let mut sources = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|error| ScriptError::Read {
                path: path.clone(),
                error,
            })?;
            sources.push((path, text));
        }
        Scripts::from_sources(dir, sources, extra)
    }

    /// Compile the given files; `dir` is where `load()` looks.
    pub fn from_sources(
        dir: &Path,
        sources: Vec<(PathBuf, String)>,
        extra: Option<fn(&mut GlobalsBuilder)>,
    ) -> Result<Scripts, ScriptError> {
        let globals = globals(extra);
        let loader = DirLoader {
            dir: dir.to_path_buf(),
            globals: &globals,
            cache: RefCell::new(HashMap::new()),
            depth: RefCell::new(0),
        };
        let mut functions: IndexMap<String, (PathBuf, OwnedFrozenValue)> = IndexMap::new();
        for (path, text) in sources {
            let frozen = loader.compile(&path, text)?;
            for name in frozen.names() {
                let name = name.as_str();
                if name.starts_with('_') {
                    continue;
                }
                // Names bound by load() are private to the loading file.
                let Ok(Some(value)) = frozen.get_option(name) else {
                    continue;
                };
                if value.value().get_type() != "function" {
                    continue;
                }
                if let Some((first, _)) = functions.get(name) {
                    return Err(ScriptError::Duplicate {
                        name: name.into(),
                        first: first.clone(),
                        second: path.clone(),
                    });
                }
                functions.insert(name.to_owned(), (path.clone(), value));
            }
        }
        Ok(Scripts { globals, functions })
    }

    /// Public function names with the file that defines each.
    pub fn functions(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.functions
            .iter()
            .map(|(n, (p, _))| (n.as_str(), p.as_path()))
    }

    fn function(&self, name: &str) -> Result<&OwnedFrozenValue, CallFault> {
        self.functions
            .get(name)
            .map(|(_, f)| f)
            .ok_or_else(|| CallFault::Missing(name.into()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The parameter names a function declares (for checking it against a schema).
    pub fn signature(&self, name: &str) -> Option<String> {
        self.functions.get(name).map(|(_, f)| f.value().to_repr())
    }

    /// Call `name(data, **args)` against `db`. The script's changes are applied to `db` when
    /// it returns or raises (as Python mutates in place before an exception), and discarded when
    /// it is stopped by a limit. Returns the function's result as JSON.
    pub fn call_with_db(
        &self,
        name: &str,
        db: &mut Db,
        args: &Map<String, Json>,
        limits: Limits,
    ) -> Result<Json, CallFault> {
        let (result, changes) = self.run_with_db(name, db, args, limits);
        apply_changes(db, changes);
        result
    }

    /// [`Scripts::call_with_db`] without applying: the result and the changes the script made
    /// (none when it was stopped by a limit or the interpreter failed).
    pub fn run_with_db(
        &self,
        name: &str,
        db: &Db,
        args: &Map<String, Json>,
        limits: Limits,
    ) -> (Result<Json, CallFault>, Changes) {
        let mut changes = Changes::new();
        let result = guarded(name, || {
            let func = self.function(name)?;
            Module::with_temp_heap(|module| {
                let heap = module.heap();
                let data_value = db_view(heap, db);
                module.set("__data", data_value);
                let named: Vec<(String, Value)> = args
                    .iter()
                    .map(|(k, v)| (k.clone(), convert::to_starlark(heap, v)))
                    .collect();
                let named_refs: Vec<(&str, Value)> =
                    named.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let func = module.heap().access_owned_frozen_value(func);
                let mut eval = Evaluator::new(&module);
                let outcome = configure(&mut eval, limits)
                    .and_then(|_| eval.eval_function(func, &[data_value], &named_refs));
                drop(eval);
                let outcome = outcome.map_err(fault_from_error);
                if matches!(outcome, Err(CallFault::LimitExceeded(_))) {
                    return outcome.map(|_| Json::Null);
                }
                let data_value = module.get("__data").expect("data stays in the module");
                let db_view = data_value
                    .downcast_ref::<data::DbValue>()
                    .expect("data is a DbValue");
                let mut found = Changes::new();
                for table in db_view.tables() {
                    let c = table.changes().map_err(|e| CallFault::Raised(e, None))?;
                    if !c.removed.is_empty() || !c.upserts.is_empty() {
                        found.push((table.name().to_owned(), c));
                    }
                }
                changes = found;
                let result = outcome?;
                convert::to_json(result)
                    .map_err(|e| CallFault::Raised(format!("{name} returned {e}"), None))
            })
        });
        if matches!(result, Err(CallFault::Panicked(_))) {
            changes.clear();
        }
        (result, changes)
    }

    /// Call a policy rule: `name(trace)` where `trace` is
    /// `{"user_id", "steps": [{"name", "arguments", "observation", "data"}], "final"}`, each step's
    /// `data` being the database *before* that step and `final` the database after the last one
    /// (read-only views in spirit: changes made to them are discarded). The rule returns `None`
    /// or `""` when the trace complies, a message or a list of messages when it does not.
    pub fn call_rule(
        &self,
        name: &str,
        trace: &RuleTrace,
        limits: Limits,
    ) -> Result<Vec<String>, CallFault> {
        guarded(name, || self.call_rule_unguarded(name, trace, limits))
    }

    fn call_rule_unguarded(
        &self,
        name: &str,
        trace: &RuleTrace,
        limits: Limits,
    ) -> Result<Vec<String>, CallFault> {
        let func = self.function(name)?;
        Module::with_temp_heap(|module| {
            let heap = module.heap();
            let steps: Vec<Value> = trace
                .steps
                .iter()
                .map(|s| {
                    heap.alloc(AllocDict([
                        ("name", heap.alloc(s.name.as_str())),
                        (
                            "arguments",
                            convert::to_starlark(heap, &Json::Object(s.arguments.clone())),
                        ),
                        ("observation", heap.alloc(s.observation.as_str())),
                        ("data", db_view(heap, &s.before)),
                    ]))
                })
                .collect();
            let trace_value = heap.alloc(AllocDict([
                ("user_id", heap.alloc(trace.user_id.as_str())),
                ("steps", heap.alloc(AllocList(steps))),
                ("final", db_view(heap, &trace.after)),
            ]));
            let func = module.heap().access_owned_frozen_value(func);
            let mut eval = Evaluator::new(&module);
            let result = configure(&mut eval, limits)
                .and_then(|_| eval.eval_function(func, &[trace_value], &[]))
                .map_err(fault_from_error)?;
            match convert::to_json(result)
                .map_err(|e| CallFault::Raised(format!("{name} returned {e}"), None))?
            {
                Json::Null => Ok(vec![]),
                Json::String(s) if s.is_empty() => Ok(vec![]),
                Json::String(s) => Ok(vec![s]),
                Json::Array(items) => Ok(items
                    .into_iter()
                    .filter_map(|i| match i {
                        Json::String(s) if s.is_empty() => None,
                        Json::String(s) => Some(s),
                        other => Some(other.to_string()),
                    })
                    .collect()),
                other => Err(CallFault::Raised(
                    format!("{name} must return None, a string or a list of strings, not {other}"),
                    None,
                )),
            }
        })
    }

    /// Call `name(*args)` without a database, returning its result as JSON.
    pub fn call(&self, name: &str, args: &[Json], limits: Limits) -> Result<Json, CallFault> {
        guarded(name, || self.call_unguarded(name, args, limits))
    }

    fn call_unguarded(&self, name: &str, args: &[Json], limits: Limits) -> Result<Json, CallFault> {
        let func = self.function(name)?;
        Module::with_temp_heap(|module| {
            let heap = module.heap();
            let pos: Vec<Value> = args.iter().map(|a| convert::to_starlark(heap, a)).collect();
            let func = module.heap().access_owned_frozen_value(func);
            let mut eval = Evaluator::new(&module);
            let result = configure(&mut eval, limits)
                .and_then(|_| eval.eval_function(func, &pos, &[]))
                .map_err(fault_from_error)?;
            convert::to_json(result)
                .map_err(|e| CallFault::Raised(format!("{name} returned {e}"), None))
        })
    }

    /// The globals scripts see (for tools that evaluate snippets).
    pub fn globals(&self) -> &Globals {
        &self.globals
    }
}

/// The database as the `data` value scripts see: a lazy view per table.
fn db_view<'v>(heap: starlark::values::Heap<'v>, db: &Db) -> Value<'v> {
    let mut tables = SmallMap::new();
    for t in db.table_names() {
        let view =
            data::TableValue::new(t.to_owned(), Arc::clone(db.table(t).expect("listed table")));
        tables.insert(t.to_owned(), heap.alloc(view));
    }
    heap.alloc(data::DbValue::new(tables))
}

/// One executed action, with the database as it was before it ran.
#[derive(Debug, Clone)]
pub struct RuleStep {
    pub name: String,
    pub arguments: Map<String, Json>,
    pub observation: String,
    pub before: Db,
}

/// What a policy rule sees: who the task is for, every step, and the final database.
#[derive(Debug, Clone)]
pub struct RuleTrace {
    pub user_id: String,
    pub steps: Vec<RuleStep>,
    pub after: Db,
}

fn configure(eval: &mut Evaluator, limits: Limits) -> starlark::Result<()> {
    eval.disable_gc();
    eval.set_max_tick_count(limits.max_ticks.max(1))
        .map_err(starlark::Error::new_other)?;
    eval.set_max_heap_size(limits.max_heap_bytes.max(1))
        .map_err(starlark::Error::new_other)?;
    eval.set_max_callstack_size(limits.max_call_depth.max(1))
        .map_err(starlark::Error::new_other)?;
    Ok(())
}

/// The short message of a runtime error, as tau-bench would print the exception.
fn fault_from_error(e: starlark::Error) -> CallFault {
    use starlark::ErrorKind;
    let message = match e.kind() {
        ErrorKind::Fail(inner) => inner.to_string().trim_start().to_owned(),
        ErrorKind::StackOverflow(inner) => {
            return CallFault::LimitExceeded(format!("script stopped: {inner}"));
        }
        ErrorKind::Value(inner)
        | ErrorKind::Function(inner)
        | ErrorKind::Scope(inner)
        | ErrorKind::Native(inner)
        | ErrorKind::Other(inner)
        | ErrorKind::Internal(inner)
        | ErrorKind::Parser(inner)
        | ErrorKind::Freeze(inner) => inner.to_string(),
        _ => e.without_diagnostic().to_string(),
    };
    if let Some(rest) = message.strip_prefix("Heap memory limit of ") {
        let bytes = rest.split(' ').next().unwrap_or("?");
        return CallFault::LimitExceeded(format!(
            "script stopped: memory limit of {bytes} bytes exceeded"
        ));
    }
    if message.contains("ticks has been exceeded") {
        let where_ = e
            .span()
            .map(|s| format!(" at {}", s.resolve_span()))
            .unwrap_or_default();
        return CallFault::LimitExceeded(format!("script stopped{where_}: {message}"));
    }
    CallFault::Raised(python_key_error(message), e.span().map(|s| s.to_string()))
}

/// Starlark says ``Key `"x"` was not found``; Python's KeyError, as tau-bench prints it, is `'x'`.
fn python_key_error(message: String) -> String {
    let inner = message
        .strip_prefix("Key `")
        .and_then(|m| m.strip_suffix("` was not found"));
    match inner.and_then(|k| serde_json::from_str::<String>(k).ok()) {
        Some(key) => data::py_str_repr(&key),
        None => message,
    }
}

/// Resolves `load("name.star", ...)` inside one folder, compiling each file once.
struct DirLoader<'g> {
    dir: PathBuf,
    globals: &'g Globals,
    cache: RefCell<HashMap<PathBuf, FrozenModule>>,
    depth: RefCell<usize>,
}

impl DirLoader<'_> {
    fn compile(&self, path: &Path, text: String) -> Result<FrozenModule, ScriptError> {
        let name = path.display().to_string();
        let ast = AstModule::parse(&name, text, &dialect())
            .map_err(|e| ScriptError::Compile(e.to_string()))?;
        Module::with_temp_heap(|module| {
            {
                let mut eval = Evaluator::new(&module);
                eval.set_loader(self);
                eval.set_max_tick_count(Limits::default().max_ticks)
                    .map_err(|e| ScriptError::Compile(e.to_string()))?;
                eval.eval_module(ast, self.globals)
                    .map_err(|e| ScriptError::Compile(e.to_string()))?;
            }
            module
                .freeze()
                .map_err(|e| ScriptError::Compile(format!("{name}: {e:?}")))
        })
    }
}

impl FileLoader for DirLoader<'_> {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        let rel = Path::new(path);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(starlark::Error::new_other(anyhow::anyhow!(
                "load(\"{path}\"): only files inside the script folder can be loaded"
            )));
        }
        let full = self.dir.join(rel);
        if let Some(m) = self.cache.borrow().get(&full) {
            return Ok(m.clone());
        }
        if *self.depth.borrow() > 16 {
            return Err(starlark::Error::new_other(anyhow::anyhow!(
                "load(\"{path}\"): loads nested too deeply"
            )));
        }
        let text = std::fs::read_to_string(&full)
            .map_err(|e| starlark::Error::new_other(anyhow::anyhow!("load(\"{path}\"): {e}")))?;
        *self.depth.borrow_mut() += 1;
        let result = self.compile(&full, text);
        *self.depth.borrow_mut() -= 1;
        let module = result.map_err(|e| starlark::Error::new_other(anyhow::anyhow!("{e}")))?;
        self.cache.borrow_mut().insert(full, module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scripts(src: &str) -> Scripts {
        Scripts::from_sources(
            Path::new("."),
            vec![(PathBuf::from("t.star"), src.to_owned())],
            None,
        )
        .unwrap()
    }

    fn db() -> Db {
        Db::from_json(json!({"t": {"a": {"n": 1}, "b": {"n": 2.5}, "c": {"n": [1, 2]}}})).unwrap()
    }

    fn args(v: serde_json::Value) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn table_edits_follow_python_dict_order() {
        let s = scripts(
            "def f(data):\n    t = data['t']\n    t.pop('a')\n    t['d'] = {'n': 4}\n    t['a'] = {'n': 9}\n    t['b']['n'] += 1\n    return json.dumps(list(t.keys()))\n",
        );
        let mut db = db();
        let out = s
            .call_with_db("f", &mut db, &Map::new(), Limits::default())
            .unwrap();
        assert_eq!(out, json!("[\"b\", \"c\", \"d\", \"a\"]"));
        let keys: Vec<&String> = db.table("t").unwrap().keys().collect();
        assert_eq!(keys, ["b", "c", "d", "a"]);
        assert_eq!(db.record("t", "b").unwrap(), &json!({"n": 3.5}));
        assert_eq!(db.record("t", "a").unwrap(), &json!({"n": 9}));
    }

    #[test]
    fn untouched_and_unchanged_records_stay_shared() {
        let s = scripts(
            "def f(data, k):\n    r = data['t'][k]\n    r['n'] = r['n']\n    return str(r['n'])\n",
        );
        let mut db = db();
        let before = db.clone();
        let out = s
            .call_with_db("f", &mut db, &args(json!({"k": "b"})), Limits::default())
            .unwrap();
        assert_eq!(out, json!("2.5"));
        assert!(
            Arc::ptr_eq(db.table("t").unwrap(), before.table("t").unwrap()),
            "no change, no copy"
        );
    }

    #[test]
    fn errors_keep_earlier_changes_and_limits_discard_them() {
        let s = scripts(
            "def raises(data):\n    data['t']['a']['n'] = 7\n    fail('boom')\n\ndef spins(data):\n    data['t']['a']['n'] = 8\n    for i in range(100000):\n        pass\n",
        );
        let mut db = db();
        assert_eq!(
            s.call_with_db("raises", &mut db, &Map::new(), Limits::default()),
            Err(CallFault::Raised(
                "boom".into(),
                Some("t.star:3:5-17".into())
            ))
        );
        assert_eq!(db.record("t", "a").unwrap(), &json!({"n": 7}));
        let limits = Limits {
            max_ticks: 1000,
            ..Limits::default()
        };
        let fault = s
            .call_with_db("spins", &mut db, &Map::new(), limits)
            .unwrap_err();
        assert!(
            matches!(fault, CallFault::LimitExceeded(ref m) if m.contains("1000 ticks")),
            "{fault:?}"
        );
        assert_eq!(db.record("t", "a").unwrap(), &json!({"n": 7}));
    }

    #[test]
    fn python_builtins_behave_like_python() {
        let s = scripts(concat!(
            "def f(data):\n",
            "    x = 0\n",
            "    x += 0.1\n",
            "    x += 0.2\n",
            "    return json.dumps([x, round(2.675, 2), round(2.5), sum([1, 2.5]), count([1, 2, 1], 1), str(0.00001), str(1e16), {'k': 'é'}])\n",
        ));
        let out = s
            .call_with_db("f", &mut db(), &Map::new(), Limits::default())
            .unwrap();
        assert_eq!(
            out,
            json!(
                "[0.30000000000000004, 2.67, 2, 3.5, 2, \"1e-05\", \"1e+16\", {\"k\": \"\\u00e9\"}]"
            )
        );
    }

    #[test]
    fn missing_key_reads_like_a_python_key_error() {
        let s = scripts("def f(data):\n    return data['t']['zzz']\n");
        let fault = s
            .call_with_db("f", &mut db(), &Map::new(), Limits::default())
            .unwrap_err();
        assert!(
            matches!(fault, CallFault::Raised(ref m, Some(ref at)) if m == "'zzz'" && at.starts_with("t.star:2:")),
            "{fault:?}"
        );
    }
}
