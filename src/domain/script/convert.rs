//! JSON ⇄ Starlark values.
//!
//! Integers stay integers and floats stay floats in both directions, and dicts keep their key
//! order, so a record that goes into a script and comes back unchanged is equal to the original.

use super::data::{DbValue, TableValue};
use serde_json::{Map, Number, Value as Json};
use starlark::values::dict::{AllocDict, DictRef};
use starlark::values::float::StarlarkFloat;
use starlark::values::list::{AllocList, ListRef};
use starlark::values::tuple::TupleRef;
use starlark::values::{Heap, UnpackValue, Value, ValueLike};

/// Allocate a JSON value on a Starlark heap.
pub fn to_starlark<'v>(heap: Heap<'v>, json: &Json) -> Value<'v> {
    match json {
        Json::Null => Value::new_none(),
        Json::Bool(b) => Value::new_bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                heap.alloc(i)
            } else if let Some(u) = n.as_u64() {
                heap.alloc(u as f64)
            } else {
                heap.alloc(StarlarkFloat(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => heap.alloc(s.as_str()),
        Json::Array(items) => heap.alloc(AllocList(items.iter().map(|x| to_starlark(heap, x)))),
        Json::Object(map) => heap.alloc(AllocDict(
            map.iter()
                .map(|(k, v)| (heap.alloc(k.as_str()), to_starlark(heap, v))),
        )),
    }
}

/// Convert a Starlark value to JSON (tuples become arrays; dict keys become strings the way
/// Python's `json` turns them into strings).
pub fn to_json(value: Value) -> Result<Json, String> {
    to_json_depth(value, 0)
}

const MAX_DEPTH: usize = 256;

fn to_json_depth(value: Value, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err("value nested too deeply to convert to JSON".into());
    }
    if value.is_none() {
        return Ok(Json::Null);
    }
    if let Some(b) = value.unpack_bool() {
        return Ok(Json::Bool(b));
    }
    if let Some(s) = value.unpack_str() {
        return Ok(Json::String(s.to_owned()));
    }
    if let Some(f) = value.downcast_ref::<StarlarkFloat>() {
        return Ok(Number::from_f64(f.0)
            .map(Json::Number)
            .unwrap_or(Json::Null));
    }
    if value.get_type() == "int" {
        return match i64::unpack_value(value) {
            Ok(Some(i)) => Ok(Json::from(i)),
            _ => Err(format!("integer {value} does not fit in 64 bits")),
        };
    }
    if let Some(list) = ListRef::from_value(value) {
        return list
            .iter()
            .map(|x| to_json_depth(x, depth + 1))
            .collect::<Result<_, _>>()
            .map(Json::Array);
    }
    if let Some(tuple) = TupleRef::from_value(value) {
        return tuple
            .content()
            .iter()
            .map(|x| to_json_depth(*x, depth + 1))
            .collect::<Result<_, _>>()
            .map(Json::Array);
    }
    if let Some(dict) = DictRef::from_value(value) {
        let mut map = Map::new();
        for (k, v) in dict.iter() {
            map.insert(key_string(k)?, to_json_depth(v, depth + 1)?);
        }
        return Ok(Json::Object(map));
    }
    if let Some(table) = value.downcast_ref::<TableValue>() {
        return table.to_json();
    }
    if let Some(db) = value.downcast_ref::<DbValue>() {
        return db.to_json();
    }
    Err(format!(
        "a value of type `{}` cannot be converted to JSON",
        value.get_type()
    ))
}

/// Python's `json` coerces str, int, float, bool and None keys to strings.
fn key_string(key: Value) -> Result<String, String> {
    if let Some(s) = key.unpack_str() {
        return Ok(s.to_owned());
    }
    if key.is_none() {
        return Ok("null".into());
    }
    if let Some(b) = key.unpack_bool() {
        return Ok(if b { "true" } else { "false" }.into());
    }
    if let Some(f) = key.downcast_ref::<StarlarkFloat>() {
        return Ok(crate::pyjson::float_repr(f.0));
    }
    if key.get_type() == "int" {
        return Ok(key.to_str());
    }
    Err(format!(
        "keys must be str, int, float, bool or None, not {}",
        key.get_type()
    ))
}

/// Whether a Starlark value equals a JSON value, with the same int/float and key-order rules as
/// [`to_json`] — without allocating. Used to find which touched records really changed.
pub fn matches_json(value: Value, json: &Json) -> bool {
    match json {
        Json::Null => value.is_none(),
        Json::Bool(b) => value.unpack_bool() == Some(*b),
        Json::String(s) => value.unpack_str() == Some(s.as_str()),
        Json::Number(n) => {
            if let Some(f) = value.downcast_ref::<StarlarkFloat>() {
                return n.is_f64() && n.as_f64().is_some_and(|x| x.to_bits() == f.0.to_bits());
            }
            if value.get_type() != "int" {
                return false;
            }
            match (n.as_i64(), i64::unpack_value(value)) {
                (Some(x), Ok(Some(y))) => x == y,
                _ => false,
            }
        }
        Json::Array(items) => match ListRef::from_value(value) {
            Some(list) => {
                list.len() == items.len() && list.iter().zip(items).all(|(v, j)| matches_json(v, j))
            }
            None => false,
        },
        Json::Object(map) => match DictRef::from_value(value) {
            Some(dict) => {
                dict.len() == map.len()
                    && dict.iter().zip(map).all(|((k, v), (jk, jv))| {
                        k.unpack_str() == Some(jk.as_str()) && matches_json(v, jv)
                    })
            }
            None => false,
        },
    }
}
