//! What an action list changed: a JSON-patch-like list of edits between two databases.
//!
//! Blueprint checks record it and reviewers read it (APIGen-MT's `diff_patch`). Paths are JSON
//! pointers (`/orders/#W0000001/status`); arrays are compared index by index, with additions and
//! removals at the tail, which is how the domain tools change lists (`append`, `extend`).
//! Unchanged records are skipped by pointer comparison, so a diff costs what changed.

use crate::domain::db::Db;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// One edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Edit {
    Add {
        path: String,
        value: Value,
    },
    Remove {
        path: String,
        old: Value,
    },
    Replace {
        path: String,
        old: Value,
        value: Value,
    },
}

impl Edit {
    pub fn path(&self) -> &str {
        match self {
            Edit::Add { path, .. } | Edit::Remove { path, .. } | Edit::Replace { path, .. } => path,
        }
    }
}

/// The edits that turn `before` into `after`, table by table in `after`'s order.
pub fn diff(before: &Db, after: &Db) -> Vec<Edit> {
    let mut edits = Vec::new();
    for name in after.table_names() {
        let new = after.table(name).expect("listed table");
        let Some(old) = before.table(name) else {
            edits.push(Edit::Add {
                path: pointer(&[name]),
                value: after.to_json()[name].clone(),
            });
            continue;
        };
        if Arc::ptr_eq(old, new) {
            continue;
        }
        for (id, record) in new.iter() {
            match old.get(id) {
                Some(prev) if Arc::ptr_eq(prev, record) => {}
                Some(prev) => values(
                    &pointer(&[name, id]),
                    prev.value(),
                    record.value(),
                    &mut edits,
                ),
                None => edits.push(Edit::Add {
                    path: pointer(&[name, id]),
                    value: record.value().clone(),
                }),
            }
        }
        for (id, record) in old.iter() {
            if !new.contains_key(id) {
                edits.push(Edit::Remove {
                    path: pointer(&[name, id]),
                    old: record.value().clone(),
                });
            }
        }
    }
    edits
}

fn values(path: &str, old: &Value, new: &Value, edits: &mut Vec<Edit>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let p = format!("{path}/{}", escape(k));
                match a.get(k) {
                    Some(prev) => values(&p, prev, v, edits),
                    None => edits.push(Edit::Add {
                        path: p,
                        value: v.clone(),
                    }),
                }
            }
            for (k, v) in a {
                if !b.contains_key(k) {
                    edits.push(Edit::Remove {
                        path: format!("{path}/{}", escape(k)),
                        old: v.clone(),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, v) in b.iter().enumerate() {
                let p = format!("{path}/{i}");
                match a.get(i) {
                    Some(prev) => values(&p, prev, v, edits),
                    None => edits.push(Edit::Add {
                        path: p,
                        value: v.clone(),
                    }),
                }
            }
            for (i, v) in a.iter().enumerate().skip(b.len()).rev() {
                edits.push(Edit::Remove {
                    path: format!("{path}/{i}"),
                    old: v.clone(),
                });
            }
        }
        (a, b) if same(a, b) => {}
        (a, b) => edits.push(Edit::Replace {
            path: path.to_owned(),
            old: a.clone(),
            value: b.clone(),
        }),
    }
}

/// Equal values, where `1` and `1.0` differ (they serialise differently).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.is_f64() == y.is_f64() && x == y,
        _ => a == b,
    }
}

fn pointer(parts: &[&str]) -> String {
    parts.iter().map(|p| format!("/{}", escape(p))).collect()
}

/// JSON pointer escaping: `~` → `~0`, `/` → `~1`.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_only_what_changed() {
        let before = Db::from_json(
            json!({"t": {"a": {"s": "x", "l": [1], "n": 1}, "b/c": {"k": 1}}, "u": {"z": {}}}),
        )
        .unwrap();
        let mut after = before.clone();
        let t = after.table_mut("t").unwrap();
        t.insert(
            "a".into(),
            Arc::new(crate::domain::db::Record::new(
                json!({"s": "y", "l": [1, 2], "n": 1.0, "new": true}),
            )),
        );
        t.shift_remove("b/c");
        t.insert(
            "d".into(),
            Arc::new(crate::domain::db::Record::new(json!({"k": 2}))),
        );
        let edits = serde_json::to_value(diff(&before, &after)).unwrap();
        assert_eq!(
            edits,
            json!([
                {"op": "replace", "path": "/t/a/s", "old": "x", "value": "y"},
                {"op": "add", "path": "/t/a/l/1", "value": 2},
                {"op": "replace", "path": "/t/a/n", "old": 1, "value": 1.0},
                {"op": "add", "path": "/t/a/new", "value": true},
                {"op": "add", "path": "/t/d", "value": {"k": 2}},
                {"op": "remove", "path": "/t/b~1c", "old": {"k": 1}},
            ])
        );
        assert!(diff(&before, &before.clone()).is_empty());
    }
}
