//! The domain database: named tables of JSON records, cheap to reset and exact to hash.
//!
//! A table is a JSON object (`{id: record}`), like every tau-bench data file. Tables and records
//! sit behind `Arc`s so that resetting to the pristine state is a handful of pointer copies and a
//! tool call that changes one record copies only that record (and its table's index). The
//! canonical hash is tau-bench's: SHA-256 of `json.dumps(db, sort_keys=True,
//! separators=(",", ":"), ensure_ascii=False)`. This module does not run tools.

use crate::pyjson::{self, Style};
use indexmap::IndexMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One table: record id → record, in file order.
pub type Table = IndexMap<String, Arc<Record>>;

/// One record, with its canonical JSON text computed at most once. Records are immutable once
/// shared: a change makes a new `Record`, so the cached text can never go stale.
#[derive(Debug)]
pub struct Record {
    value: Value,
    canonical: std::sync::OnceLock<Box<str>>,
}

impl Record {
    pub fn new(value: Value) -> Record {
        Record {
            value,
            canonical: std::sync::OnceLock::new(),
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// `json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.
    pub fn canonical(&self) -> &str {
        self.canonical
            .get_or_init(|| pyjson::to_string(&self.value, Style::CANONICAL).into_boxed_str())
    }
}

impl std::ops::Deref for Record {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl Clone for Record {
    fn clone(&self) -> Record {
        Record {
            value: self.value.clone(),
            canonical: self.canonical.clone(),
        }
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.value == other.value
    }
}

/// A database: table name → table, in manifest order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Db {
    tables: IndexMap<String, Arc<Table>>,
}

/// A database file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: invalid JSON: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: a table file must hold a JSON object of records (id → record), found {found}")]
    NotAnObject { path: PathBuf, found: &'static str },
}

impl Db {
    /// Load `<dir>/<table>.json` for every table name.
    pub fn load(dir: &Path, tables: &[String]) -> Result<Db, DbError> {
        let mut db = Db::default();
        for name in tables {
            let path = dir.join(format!("{name}.json"));
            db.tables.insert(name.clone(), Arc::new(read_table(&path)?));
        }
        Ok(db)
    }

    /// Build a database from an in-memory JSON object of tables.
    pub fn from_json(value: Value) -> Result<Db, String> {
        let Value::Object(tables) = value else {
            return Err("a database must be a JSON object of tables".into());
        };
        let mut db = Db::default();
        for (name, table) in tables {
            let Value::Object(records) = table else {
                return Err(format!("table `{name}` must be a JSON object of records"));
            };
            let table: Table = records
                .into_iter()
                .map(|(k, v)| (k, Arc::new(Record::new(v))))
                .collect();
            db.tables.insert(name, Arc::new(table));
        }
        Ok(db)
    }

    /// The whole database as one JSON object (tables in manifest order).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, table) in &self.tables {
            let records: serde_json::Map<String, Value> = table
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect();
            out.insert(name.clone(), Value::Object(records));
        }
        Value::Object(out)
    }

    /// Table names in manifest order.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// A shared handle on one table.
    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables.get(name)
    }

    /// Mutable access to a table, copying its index first if it is shared.
    pub fn table_mut(&mut self, name: &str) -> Option<&mut Table> {
        self.tables.get_mut(name).map(Arc::make_mut)
    }

    /// One record.
    pub fn record(&self, table: &str, id: &str) -> Option<&Value> {
        self.tables.get(table)?.get(id).map(|r| &r.value)
    }

    /// The canonical hash (lowercase hex SHA-256), as defined by tau-bench's conformance data.
    pub fn hash(&self) -> String {
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort_unstable();
        let mut hasher = Sha256::new();
        let mut buf = String::with_capacity(1 << 16);
        buf.push('{');
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            pyjson::write_str(&mut buf, name, false);
            buf.push_str(":{");
            let table = &self.tables[name.as_str()];
            let mut ids: Vec<&String> = table.keys().collect();
            ids.sort_unstable();
            for (j, id) in ids.into_iter().enumerate() {
                if j > 0 {
                    buf.push(',');
                }
                pyjson::write_str(&mut buf, id, false);
                buf.push(':');
                buf.push_str(table[id.as_str()].canonical());
                if buf.len() > 1 << 15 {
                    hasher.update(buf.as_bytes());
                    buf.clear();
                }
            }
            buf.push('}');
        }
        buf.push('}');
        hasher.update(buf.as_bytes());
        hex(&hasher.finalize())
    }
}

/// Read one table file: a JSON object whose values are records.
pub fn read_table(path: &Path) -> Result<Table, DbError> {
    let bytes = std::fs::read(path).map_err(|error| DbError::Read {
        path: path.into(),
        error,
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| DbError::Json {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        message: serde_message(&e),
    })?;
    match value {
        Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| (k, Arc::new(Record::new(v))))
            .collect()),
        other => Err(DbError::NotAnObject {
            path: path.into(),
            found: json_kind(&other),
        }),
    }
}

/// The JSON type name of a value, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_is_sha256_of_sorted_compact_json() {
        let db = Db::from_json(
            json!({"users": {"b": {"z": 1, "a": "é"}, "a": {"x": 1.0}}, "orders": {}}),
        )
        .unwrap();
        // sha256(b'{"orders":{},"users":{"a":{"x":1.0},"b":{"a":"\xc3\xa9","z":1}}}')
        let text = "{\"orders\":{},\"users\":{\"a\":{\"x\":1.0},\"b\":{\"a\":\"é\",\"z\":1}}}";
        assert_eq!(db.hash(), hex(&Sha256::digest(text.as_bytes())));
    }
}

/// serde_json's message without its trailing " at line L column C" (the caller prints those).
pub fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}
