//! The script host: a child process that runs a domain's script calls, so that a script which
//! allocates past its heap limit ends the child, not the run.
//!
//! The parent (`apigen-mt` itself, through [`Client`]) starts `apigen-mt __script-host` when it
//! loads a domain (so that compiling, too, runs bounded) and talks to it in JSON Lines over its
//! stdin and stdout, one request and one reply at a time. The host compiles the same script folders, runs each call with [`super::meter`]
//! armed at the call's `max_heap_bytes`, and replies with the result and the call's changes,
//! which the parent applies to its own copy of the database. A request that would take a call
//! past its limit ends the host before the memory is taken; the parent reports `script stopped:
//! memory limit of N bytes exceeded` and the next call starts a fresh host.
//!
//! Databases do not travel on every call. Both sides keep the same short list of database
//! states under ids the parent chooses: a state is uploaded once and then named; a call that
//! changes the database makes a new state on both sides. The parent recognises a state by the
//! tables' `Arc` pointers (which it keeps alive while the state is listed, so they cannot be
//! reused or changed in place), so every episode that starts from the pristine database shares
//! one upload.
//!
//! Without a host program (library use, tests, platforms without one) calls run in-process,
//! where Starlark's own heap check, every thousand ticks, is the only memory bound.

use super::{CallFault, Changes, Limits, RuleStep, RuleTrace, Scripts, apply_changes, meter};
use crate::domain::db::{Db, Table};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};

/// The hidden subcommand that runs a host.
pub const SUBCOMMAND: &str = "__script-host";

/// How many database states both sides keep.
const STATES: usize = 64;

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Run script calls in host processes started from `program` (the `apigen-mt` binary), unless
/// `APIGEN_MT_SCRIPTS=in-process` is set. Called once by the binary's `main`.
pub fn enable(program: PathBuf) {
    if std::env::var("APIGEN_MT_SCRIPTS").is_ok_and(|v| v == "in-process") {
        return;
    }
    let _ = PROGRAM.set(program);
}

/// The host program, when calls are isolated.
pub fn program() -> Option<&'static Path> {
    PROGRAM.get().map(PathBuf::as_path)
}

#[derive(Debug, Serialize, Deserialize)]
enum DbRef {
    /// A state both sides hold.
    State(u64),
    /// A new state: its id and its tables.
    Upload(u64, Json),
}

#[derive(Debug, Serialize, Deserialize)]
struct StepRef {
    name: String,
    arguments: Map<String, Json>,
    observation: String,
    db: DbRef,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// A tool body; a call that changes the database stores the result as state `new_state`.
    Tool {
        name: String,
        db: DbRef,
        args: Map<String, Json>,
        limits: Limits,
        new_state: u64,
        drop: Vec<u64>,
    },
    /// A policy rule over a trace.
    Rule {
        name: String,
        user_id: String,
        steps: Vec<StepRef>,
        after: DbRef,
        limits: Limits,
        drop: Vec<u64>,
    },
    /// A database generator (no domain needed).
    Generate {
        script: PathBuf,
        seed: u64,
        size: BTreeMap<String, i64>,
        tables: Vec<String>,
        limits: Limits,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    result: Result<Json, CallFault>,
    changes: Changes,
}

/// Serve requests on stdin until it closes. `scripts` and `rules` are the folders the parent's
/// domain compiled; both are optional (a generator host needs neither).
///
/// Compiling runs top-level statements and folds constants (`"x" * 2000000000` is built at
/// compile time), so it runs metered too, at `max_heap_bytes`. The host then writes one line,
/// `{"ready": true}` or `{"ready": false, "error": ...}`, before it reads any request.
pub fn serve(
    scripts: Option<&Path>,
    rules: Option<&Path>,
    max_heap_bytes: usize,
) -> anyhow::Result<()> {
    let load = |dir: Option<&Path>| -> Result<Option<Scripts>, String> {
        dir.map(|d| Scripts::load_dir(d, None).map_err(|e| e.to_string()))
            .transpose()
    };
    meter::arm(max_heap_bytes);
    let loaded = crate::guard::catch(|| Ok::<_, String>((load(scripts)?, load(rules)?)));
    meter::disarm();
    let mut out = std::io::stdout().lock();
    let (tools, rules) = match loaded {
        Ok(Ok(sets)) => {
            writeln!(out, "{}", serde_json::json!({"ready": true}))?;
            out.flush()?;
            sets
        }
        Ok(Err(e)) | Err(e) => {
            writeln!(out, "{}", serde_json::json!({"ready": false, "error": e}))?;
            out.flush()?;
            return Ok(());
        }
    };
    let mut states: HashMap<u64, Db> = HashMap::new();
    let stdin = std::io::stdin().lock();
    for line in stdin.lines() {
        let line = line?;
        let request: Request = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("script host: bad request: {e}"))?;
        let reply = match request {
            Request::Tool {
                name,
                db,
                args,
                limits,
                new_state,
                drop,
            } => {
                let reply = match (tools.as_ref(), resolve(&mut states, db)) {
                    (None, _) => missing_set(&name),
                    (_, Err(e)) => fault(e),
                    (Some(s), Ok(id)) => {
                        let base = &states[&id];
                        meter::arm(limits.max_heap_bytes);
                        let (result, changes) = s.run_with_db(&name, base, &args, limits);
                        meter::disarm();
                        if !changes.is_empty() {
                            let mut next = base.clone();
                            apply_changes(&mut next, changes.clone());
                            states.insert(new_state, next);
                        }
                        Reply { result, changes }
                    }
                };
                forget(&mut states, &drop);
                reply
            }
            Request::Rule {
                name,
                user_id,
                steps,
                after,
                limits,
                drop,
            } => {
                let reply = match rule_trace(&mut states, user_id, steps, after) {
                    Err(e) => fault(e),
                    Ok(trace) => match rules.as_ref() {
                        None => missing_set(&name),
                        Some(r) => {
                            meter::arm(limits.max_heap_bytes);
                            let result = r.call_rule(&name, &trace, limits);
                            meter::disarm();
                            Reply {
                                result: result.map(Json::from),
                                changes: vec![],
                            }
                        }
                    },
                };
                forget(&mut states, &drop);
                reply
            }
            Request::Generate {
                script,
                seed,
                size,
                tables,
                limits,
            } => {
                meter::arm(limits.max_heap_bytes);
                let result = crate::guard::catch(|| {
                    crate::domain::generate::generate_here(&script, seed, &size, &tables, limits)
                });
                meter::disarm();
                let result = match result {
                    Ok(Ok(db)) => Ok(db.to_json()),
                    Ok(Err(m)) => Err(CallFault::Raised(m, None)),
                    Err(panic) => Err(CallFault::Panicked(format!(
                        "script stopped: the interpreter failed in generate: {panic}"
                    ))),
                };
                Reply {
                    result,
                    changes: vec![],
                }
            }
        };
        serde_json::to_writer(&mut out, &reply)?;
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}

fn fault(message: String) -> Reply {
    Reply {
        result: Err(CallFault::Panicked(message)),
        changes: vec![],
    }
}

fn missing_set(name: &str) -> Reply {
    Reply {
        result: Err(CallFault::Missing(name.to_owned())),
        changes: vec![],
    }
}

fn resolve(states: &mut HashMap<u64, Db>, db: DbRef) -> Result<u64, String> {
    match db {
        DbRef::State(id) if states.contains_key(&id) => Ok(id),
        DbRef::State(id) => Err(format!("script host: unknown database state {id}")),
        DbRef::Upload(id, tables) => {
            let db = Db::from_json(tables).map_err(|e| format!("script host: {e}"))?;
            states.insert(id, db);
            Ok(id)
        }
    }
}

fn rule_trace(
    states: &mut HashMap<u64, Db>,
    user_id: String,
    steps: Vec<StepRef>,
    after: DbRef,
) -> Result<RuleTrace, String> {
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        let id = resolve(states, s.db)?;
        out.push(RuleStep {
            name: s.name,
            arguments: s.arguments,
            observation: s.observation,
            before: states[&id].clone(),
        });
    }
    let id = resolve(states, after)?;
    Ok(RuleTrace {
        user_id,
        steps: out,
        after: states[&id].clone(),
    })
}

fn forget(states: &mut HashMap<u64, Db>, ids: &[u64]) {
    for id in ids {
        states.remove(id);
    }
}

/// A state the host holds, with the tables that identify it kept alive.
struct Known {
    key: Vec<usize>,
    _tables: Vec<Arc<Table>>,
    id: u64,
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// The parent's side: one host process, started on first use and again after it dies.
pub struct Client {
    program: PathBuf,
    args: Vec<OsString>,
    max_heap_bytes: usize,
    process: Option<Process>,
    /// Least recently used first.
    known: Vec<Known>,
    next_id: u64,
    drop: Vec<u64>,
}

fn key(db: &Db) -> (Vec<usize>, Vec<Arc<Table>>) {
    let tables: Vec<Arc<Table>> = db
        .table_names()
        .filter_map(|t| db.table(t).cloned())
        .collect();
    (
        tables.iter().map(|t| Arc::as_ptr(t) as usize).collect(),
        tables,
    )
}

impl Client {
    /// A client for a host that compiles `scripts` and `rules` under `max_heap_bytes`.
    pub fn new(
        program: &Path,
        scripts: Option<&Path>,
        rules: Option<&Path>,
        max_heap_bytes: usize,
    ) -> Client {
        let mut args: Vec<OsString> = vec![
            SUBCOMMAND.into(),
            "--max-heap-bytes".into(),
            max_heap_bytes.to_string().into(),
        ];
        if let Some(s) = scripts {
            args.extend(["--scripts".into(), s.as_os_str().to_owned()]);
        }
        if let Some(r) = rules {
            args.extend(["--rules".into(), r.as_os_str().to_owned()]);
        }
        Client {
            program: program.to_path_buf(),
            args,
            max_heap_bytes,
            process: None,
            known: Vec::new(),
            next_id: 0,
            drop: Vec::new(),
        }
    }

    /// Start the host (when it is not running) and wait until it has compiled the scripts.
    /// A compile error is left to the caller's own compile to report, with its file and line;
    /// compiling past the memory limit is [`CallFault::LimitExceeded`].
    pub fn start(&mut self) -> Result<(), CallFault> {
        if self.process.is_some() {
            return Ok(());
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CallFault::Panicked(format!(
                    "cannot start the script host {}: {e}",
                    self.program.display()
                ))
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut ready = String::new();
        let read = stdout.read_line(&mut ready);
        self.process = Some(Process {
            child,
            stdin,
            stdout,
        });
        let ready: Option<Json> = match read {
            Ok(n) if n > 0 => serde_json::from_str(&ready).ok(),
            _ => None,
        };
        match ready {
            Some(r) if r["ready"] == true => Ok(()),
            Some(r) => {
                self.stop();
                Err(CallFault::Raised(
                    r["error"].as_str().unwrap_or("cannot compile").to_owned(),
                    None,
                ))
            }
            None => Err(self.died("compiling the scripts", self.max_heap_bytes)),
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Name `db` for the host, uploading it when the host does not hold it yet.
    fn db_ref(&mut self, db: &Db) -> DbRef {
        let (key, tables) = key(db);
        if let Some(i) = self.known.iter().position(|k| k.key == key) {
            let k = self.known.remove(i);
            let id = k.id;
            self.known.push(k);
            return DbRef::State(id);
        }
        let id = self.fresh_id();
        self.remember(key, tables, id);
        DbRef::Upload(id, db.to_json())
    }

    fn remember(&mut self, key: Vec<usize>, tables: Vec<Arc<Table>>, id: u64) {
        self.known.push(Known {
            key,
            _tables: tables,
            id,
        });
        while self.known.len() > STATES {
            let old = self.known.remove(0);
            self.drop.push(old.id);
        }
    }

    fn exchange(
        &mut self,
        request: &Request,
        what: &str,
        limits: Limits,
    ) -> Result<Reply, CallFault> {
        self.start()?;
        let process = self.process.as_mut().expect("started");
        let mut line = serde_json::to_vec(request)
            .map_err(|e| CallFault::Panicked(format!("cannot encode the call to {what}: {e}")))?;
        line.push(b'\n');
        let sent = process
            .stdin
            .write_all(&line)
            .and_then(|_| process.stdin.flush());
        let mut reply = String::new();
        let received = sent.and_then(|_| process.stdout.read_line(&mut reply));
        match received {
            Ok(n) if n > 0 => serde_json::from_str(&reply).map_err(|e| {
                self.stop();
                CallFault::Panicked(format!(
                    "the script host's reply to {what} is unreadable: {e}"
                ))
            }),
            _ => Err(self.died(what, limits.max_heap_bytes)),
        }
    }

    /// The host is gone (or broken): say why, and forget every state it held.
    fn died(&mut self, what: &str, max_heap_bytes: usize) -> CallFault {
        let status = self.stop();
        match status.and_then(|s| s.code()) {
            Some(meter::MEMORY_EXIT_CODE) => CallFault::LimitExceeded(format!(
                "script stopped: memory limit of {max_heap_bytes} bytes exceeded"
            )),
            _ => CallFault::Panicked(format!(
                "script stopped: the script host exited during {what} ({})",
                status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
            )),
        }
    }

    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.known.clear();
        self.drop.clear();
        let mut p = self.process.take()?;
        drop(p.stdin);
        let _ = p.child.kill();
        p.child.wait().ok()
    }

    /// A tool body against `db`, applying its changes as [`Scripts::call_with_db`] does.
    pub fn call_tool(
        &mut self,
        name: &str,
        db: &mut Db,
        args: &Map<String, Json>,
        limits: Limits,
    ) -> Result<Json, CallFault> {
        let db_ref = self.db_ref(db);
        let new_state = self.fresh_id();
        let request = Request::Tool {
            name: name.to_owned(),
            db: db_ref,
            args: args.clone(),
            limits,
            new_state,
            drop: std::mem::take(&mut self.drop),
        };
        let reply = self.exchange(&request, name, limits)?;
        if !reply.changes.is_empty() {
            apply_changes(db, reply.changes);
            let (key, tables) = key(db);
            self.remember(key, tables, new_state);
        }
        reply.result
    }

    /// A policy rule over `trace`.
    pub fn call_rule(
        &mut self,
        name: &str,
        trace: &RuleTrace,
        limits: Limits,
    ) -> Result<Vec<String>, CallFault> {
        let steps = trace
            .steps
            .iter()
            .map(|s| StepRef {
                name: s.name.clone(),
                arguments: s.arguments.clone(),
                observation: s.observation.clone(),
                db: self.db_ref(&s.before),
            })
            .collect();
        let request = Request::Rule {
            name: name.to_owned(),
            user_id: trace.user_id.clone(),
            steps,
            after: self.db_ref(&trace.after),
            limits,
            drop: std::mem::take(&mut self.drop),
        };
        let reply = self.exchange(&request, name, limits)?;
        match reply.result? {
            Json::Array(items) => Ok(items
                .into_iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect()),
            other => Err(CallFault::Panicked(format!(
                "the script host's reply to {name} is not a list: {other}"
            ))),
        }
    }

    /// Run a generator script in a host of its own; returns the database as JSON.
    pub fn generate(
        program: &Path,
        script: &Path,
        seed: u64,
        size: &BTreeMap<String, i64>,
        tables: &[String],
        limits: Limits,
    ) -> Result<Json, CallFault> {
        let mut client = Client::new(program, None, None, limits.max_heap_bytes);
        let request = Request::Generate {
            script: script.to_path_buf(),
            seed,
            size: size.clone(),
            tables: tables.to_vec(),
            limits,
        };
        let reply = client.exchange(&request, "generate", limits);
        client.stop();
        reply?.result
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
    }
}
