//! Run directories: where long jobs (blueprints, rollouts, evaluations) write their records so
//! that nothing written is ever lost and a re-run resumes where the last one stopped.
//!
//! - Records are JSON Lines, appended and flushed one by one ([`JsonlLog`]). A line cut short by
//!   a crash is dropped (and truncated away) when the file is reopened, so the file always holds
//!   whole records.
//! - `config.toml` holds the resolved settings of the run; reopening with different settings is
//!   an error that names the first differing key, because mixing two configurations in one
//!   output would make the data unreproducible.
//! - Small files (summaries) are replaced atomically ([`write_atomic`]).

pub mod order;
pub mod progress;

/// The files of a run directory; nothing outside this module spells them.
pub mod files {
    /// The resolved settings of the run (phase 1, or an eval).
    pub const CONFIG: &str = "config.toml";
    /// Phase 2's settings, beside phase 1's in a `generate` run.
    pub const ROLLOUTS_CONFIG: &str = "rollouts.toml";
    /// Counts, replaced atomically after every unit.
    pub const SUMMARY: &str = "summary.json";
    /// The lock a writing process holds.
    pub const LOCK: &str = ".lock";
    /// Phase 1: one commit line per item.
    pub const ITEMS: &str = "items.jsonl";
    /// Phase 1: accepted blueprints.
    pub const BLUEPRINTS: &str = "blueprints.jsonl";
    /// Phase 1: rejected proposals.
    pub const REJECTED: &str = "rejected.jsonl";
    /// Phase 2 and eval: one commit line per attempt.
    pub const TRAJECTORIES: &str = "trajectories.jsonl";
    /// Phase 2: kept conversations, the training data.
    pub const DATASET: &str = "dataset.jsonl";
    /// Eval: pass^k per task.
    pub const RESULTS: &str = "results.json";
    /// `apigen-mt report`'s page.
    pub const REPORT: &str = "report.html";
}

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A run directory problem.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: this run was started with different settings ({key}: {was} then, {now} now); use a new run directory or the same settings"
    )]
    ConfigMismatch {
        path: PathBuf,
        key: String,
        was: String,
        now: String,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A unit of work failed inside the program (a bug, not bad input).
    #[error("{unit} failed: {message}")]
    Unit { unit: String, message: String },
    #[error(
        "{path}: another apigen-mt process is writing to this run directory; wait for it to finish or stop it"
    )]
    Busy { path: PathBuf },
}

/// Why a unit was turned down or failed, in both phases. `code` is stable (phase 1:
/// `format.not_json`, `exec.tool_error`, `policy.<rule>`, `dedup.duplicate`, ...; phase 2:
/// `rollout.db_mismatch`, `rollout.max_steps`, ...); `detail` says why in words (phase 1's is the
/// feedback a proposer revises from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rejection {
    pub code: String,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Rejection {
        Rejection {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// Held while a unit is committed; an interrupt takes it before the process ends, so that it
/// never ends inside a commit.
static COMMITTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold off an interrupt while a unit's records are written.
pub fn committing() -> std::sync::MutexGuard<'static, ()> {
    COMMITTING.lock().unwrap_or_else(|e| e.into_inner())
}

/// On Ctrl-C: wait for the commit under way (if any), say what is kept and how to resume, and
/// exit with status 130. Units in flight are dropped; a re-run redoes them. A second call
/// (`generate` runs two phases) changes nothing.
pub fn resume_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        let _held = committing();
        let command: Vec<String> = std::env::args().collect();
        eprintln!(
            "\ninterrupted: every committed unit is kept and the units in flight are dropped; \
             to resume, run the same command again:\n  {}",
            command.join(" ")
        );
        std::process::exit(130);
    });
}

/// Exclusive use of a run directory while it is held: two processes appending to one run would
/// each redo the other's open work and write it twice. The lock is the operating system's on
/// `RUN/.lock`, so it goes away with the process however that ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Take `dir`'s lock (creating the directory), or fail at once with [`RunError::Busy`].
pub fn lock(dir: &Path) -> Result<RunLock, RunError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(files::LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(RunError::Busy { path: dir.into() }),
        Err(std::fs::TryLockError::Error(error)) => Err(RunError::Io { path, error }),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |error| RunError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// An append-only JSON Lines file of records of type `T`.
pub struct JsonlLog {
    path: PathBuf,
    file: File,
}

/// The whole records in `reader` (a journal named `path`, for errors) and the byte length they
/// take; a trailing line without its newline (a write cut short) is not counted.
pub fn read_records<T: DeserializeOwned>(
    path: &Path,
    mut reader: impl BufRead,
) -> Result<(Vec<T>, u64), RunError> {
    let mut records = Vec::new();
    let mut good_len = 0u64;
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io(path))?;
        if n == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            break; // cut short by a crash: the caller drops it
        }
        if !line.trim().is_empty() {
            let record = serde_json::from_str(&line).map_err(|e| RunError::Record {
                path: path.to_path_buf(),
                line: number,
                message: crate::domain::db::serde_message(&e),
            })?;
            records.push(record);
        }
        good_len += n as u64;
    }
    Ok((records, good_len))
}

/// Open a side log (records written before their unit's commit line) keeping only the records
/// `committed` accepts: the lines of units that never committed are dropped from the file.
pub fn open_side_log<T: Serialize + DeserializeOwned>(
    path: &Path,
    committed: impl Fn(&T) -> bool,
) -> Result<(JsonlLog, Vec<T>), RunError> {
    let (log, mut records) = JsonlLog::open::<T>(path)?;
    let before = records.len();
    records.retain(|r| committed(r));
    if records.len() == before {
        return Ok((log, records));
    }
    drop(log);
    let mut text = String::new();
    for r in &records {
        let line = serde_json::to_string(r).map_err(|e| RunError::Record {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    Ok((JsonlLog::open::<serde_json::Value>(path)?.0, records))
}

impl JsonlLog {
    /// Open (creating if needed) and return the whole records already there. A trailing partial
    /// line — a write cut short — is removed from the file.
    pub fn open<T: DeserializeOwned>(path: &Path) -> Result<(JsonlLog, Vec<T>), RunError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path))?;
        let (records, good_len) = read_records(path, BufReader::new(&file))?;
        if file.metadata().map_err(io(path))?.len() > good_len {
            file.set_len(good_len).map_err(io(path))?;
            file.seek(SeekFrom::End(0)).map_err(io(path))?;
        }
        Ok((
            JsonlLog {
                path: path.to_path_buf(),
                file,
            },
            records,
        ))
    }

    /// Append one record as one line and flush it to the operating system.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), RunError> {
        let mut line = serde_json::to_string(record).map_err(|e| RunError::Record {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))
    }

    /// Force the records written so far onto the disk.
    pub fn sync(&self) -> Result<(), RunError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replace `path` with `contents` atomically (write a temporary file beside it, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), RunError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Overlay the keys of `value` (a JSON object) on `summary.json` in `dir`, keeping the keys
/// other stages wrote (phase 1 and phase 2 share one summary), and replace it atomically.
pub fn merge_summary(dir: &Path, value: &serde_json::Value) -> Result<(), RunError> {
    let path = dir.join(files::SUMMARY);
    let mut current = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    if let (Some(cur), Some(new)) = (current.as_object_mut(), value.as_object()) {
        for (k, v) in new {
            cur.insert(k.clone(), v.clone());
        }
    }
    let text = serde_json::to_string_pretty(&current).unwrap_or_default() + "\n";
    write_atomic(&path, text.as_bytes())
}

/// Create `dir` (if needed) and pin its settings: the first run writes `config.toml`; a later
/// run must bring the same settings, compared key by key except those in `volatile` (e.g. the
/// program version or a thread count, which do not change the output).
pub fn pin_config<C: Serialize>(dir: &Path, config: &C, volatile: &[&str]) -> Result<(), RunError> {
    pin_config_file(dir, files::CONFIG, config, volatile)
}

/// [`pin_config`] with another file name (a second stage of a run pins its own settings).
pub fn pin_config_file<C: Serialize>(
    dir: &Path,
    name: &str,
    config: &C,
    volatile: &[&str],
) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let now = serde_json::to_value(config)
        .map_err(|e| e.to_string())
        .and_then(|v| json_to_toml(&v).ok_or_else(|| "the settings are not a table".to_owned()))
        .map_err(|message| RunError::Config {
            path: path.clone(),
            message,
        })?;
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let was: toml::Value = toml::from_str(&text).map_err(|e| RunError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let was = plain_numbers(was);
        if let Some((key, a, b)) = first_difference("", &was, &now, volatile) {
            return Err(RunError::ConfigMismatch {
                path,
                key,
                was: a,
                now: b,
            });
        }
    }
    let text = toml::to_string_pretty(&now).map_err(|e| RunError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, text.as_bytes())
}

/// A JSON value as TOML: numbers as integers where they are, else floats; nulls left out.
fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => number(&n.to_string())?,
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(o) => toml::Value::Table(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect(),
        ),
    })
}

fn number(text: &str) -> Option<toml::Value> {
    text.parse::<i64>()
        .map(toml::Value::Integer)
        .ok()
        .or_else(|| text.parse::<f64>().ok().map(toml::Value::Float))
}

/// Settings files written by earlier versions spelled numbers as serde_json's private
/// `{"$serde_json::private::Number" = "30"}` tables; read those as the numbers they are.
fn plain_numbers(v: toml::Value) -> toml::Value {
    const KEY: &str = "$serde_json::private::Number";
    match v {
        toml::Value::Table(t) => {
            if t.len() == 1
                && let Some(n) = t.get(KEY).and_then(|n| n.as_str()).and_then(number)
            {
                return n;
            }
            toml::Value::Table(t.into_iter().map(|(k, v)| (k, plain_numbers(v))).collect())
        }
        toml::Value::Array(a) => toml::Value::Array(a.into_iter().map(plain_numbers).collect()),
        other => other,
    }
}

fn first_difference(
    prefix: &str,
    a: &toml::Value,
    b: &toml::Value,
    volatile: &[&str],
) -> Option<(String, String, String)> {
    if volatile.contains(&prefix) {
        return None;
    }
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(&key, p, q, volatile),
                    (p, q) if volatile.contains(&key.as_str()) => {
                        let _ = (p, q);
                        None
                    }
                    (p, q) => Some((key, show(p), show(q))),
                }
            })
        }
        (x, y) if x == y => None,
        (x, y) => Some((prefix.to_owned(), x.to_string(), y.to_string())),
    }
}

fn show(v: Option<&toml::Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_run_directory_has_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(matches!(err, RunError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another apigen-mt process"));
        drop(held);
        lock(dir.path()).expect("free again once the holder is gone");
    }

    #[test]
    fn settings_are_pinned_with_plain_numbers_and_old_spellings_still_match() {
        let dir = tempfile::tempdir().unwrap();
        let config = json!({"trials": 3, "agent": {"temperature": 0.7, "model": "m", "x": null}});
        pin_config(dir.path(), &config, &[]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        assert!(text.contains("trials = 3"), "{text}");
        assert!(text.contains("temperature = 0.7"), "{text}");
        assert!(!text.contains("private") && !text.contains("x ="), "{text}");
        // A file in the earlier spelling is the same settings.
        std::fs::write(
            dir.path().join("config.toml"),
            "[trials]\n\"$serde_json::private::Number\" = \"3\"\n[agent]\nmodel = \"m\"\n\
             [agent.temperature]\n\"$serde_json::private::Number\" = \"0.7\"\n",
        )
        .unwrap();
        pin_config(dir.path(), &config, &[]).unwrap();
        let changed = json!({"trials": 2, "agent": {"temperature": 0.7, "model": "m"}});
        let err = pin_config(dir.path(), &changed, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("trials: 3 then, 2 now"), "{err}");
    }

    #[test]
    fn a_cut_short_line_is_dropped_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3, \"b\"").unwrap();
        let (mut log, records) = JsonlLog::open::<Value>(&path).unwrap();
        assert_eq!(records, vec![json!({"a": 1}), json!({"a": 2})]);
        log.append(&json!({"a": 4})).unwrap();
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\": 1}\n{\"a\": 2}\n{\"a\":4}\n"
        );
        let (_, records) = JsonlLog::open::<Value>(&path).unwrap();
        assert_eq!(records.len(), 3);
    }

    #[test]
    fn a_corrupt_whole_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"a\": 1}\nnot json\n").unwrap();
        let err = JsonlLog::open::<Value>(&path).err().unwrap().to_string();
        assert!(err.contains("r.jsonl:2: expected"), "{err}");
    }

    #[test]
    fn settings_are_pinned_except_volatile_keys() {
        let dir = tempfile::tempdir().unwrap();
        pin_config(
            dir.path(),
            &json!({"seed": 1, "version": "0.1", "model": {"name": "a"}}),
            &["version"],
        )
        .unwrap();
        pin_config(
            dir.path(),
            &json!({"seed": 1, "version": "0.2", "model": {"name": "a"}}),
            &["version"],
        )
        .unwrap();
        let err = pin_config(
            dir.path(),
            &json!({"seed": 1, "version": "0.2", "model": {"name": "b"}}),
            &["version"],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("(model.name: \"a\" then, \"b\" now)"),
            "{err}"
        );
    }
}
