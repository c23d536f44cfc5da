//! The `data` argument every tool body receives: the database, seen from Starlark.
//!
//! `data["orders"]` is a [`TableValue`]: a lazy view of one table. A record becomes a real
//! Starlark dict the first time a script touches it, and the same dict is returned on every later
//! access in the same call, so `order = orders[id]; order["status"] = ...` mutates what the next
//! lookup sees, exactly as Python's dicts do. After the call [`TableValue::changes`] compares every
//! touched record with the original and reports only real changes, which the caller applies to
//! the Rust-side [`Db`](crate::domain::db::Db). Untouched records are never copied.

use super::convert;
use crate::domain::db::Table;
use allocative::Allocative;
use serde_json::Value as Json;
use starlark::any::ProvidesStaticType;
use starlark::collections::SmallMap;
use starlark::environment::{Methods, MethodsBuilder, MethodsStatic};
use starlark::starlark_module;
use starlark::values::list::AllocList;
use starlark::values::none::NoneOr;
use starlark::values::tuple::AllocTuple;
use starlark::values::{
    AllocValue, Heap, NoSerialize, StarlarkValue, Trace, Value, ValueLike, starlark_value,
};
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

/// What a script did to one table.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableChanges {
    /// Records removed, in the order they were removed.
    pub removed: Vec<String>,
    /// Records that differ from the original (new ids are appended in insertion order).
    pub upserts: Vec<(String, Json)>,
}

#[derive(Trace, Default, Debug, Allocative)]
struct Overlay<'v> {
    /// Every record a script has touched or assigned, by id.
    live: SmallMap<String, Value<'v>>,
    /// Ids removed from the original table (and not assigned again).
    #[allocative(skip)]
    #[trace(unsafe_ignore)]
    removed: Vec<String>,
    /// Ids that are new, or that were removed and assigned again: they go to the end.
    #[allocative(skip)]
    #[trace(unsafe_ignore)]
    appended: Vec<String>,
}

/// A lazy, mutable view of one table.
#[derive(Trace, ProvidesStaticType, NoSerialize, Allocative)]
pub struct TableValue<'v> {
    #[allocative(skip)]
    #[trace(unsafe_ignore)]
    name: String,
    #[allocative(skip)]
    #[trace(unsafe_ignore)]
    base: Arc<Table>,
    overlay: RefCell<Overlay<'v>>,
}

impl fmt::Debug for TableValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<table {}>", self.name)
    }
}

impl fmt::Display for TableValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<table {} ({} records)>", self.name, self.len())
    }
}

impl<'v> TableValue<'v> {
    pub fn new(name: String, base: Arc<Table>) -> Self {
        TableValue {
            name,
            base,
            overlay: RefCell::new(Overlay::default()),
        }
    }

    fn contains(&self, id: &str) -> bool {
        let o = self.overlay.borrow();
        o.live.contains_key(id)
            || (self.base.contains_key(id) && !o.removed.iter().any(|r| r == id))
    }

    fn len(&self) -> usize {
        let o = self.overlay.borrow();
        self.base.len() - o.removed.len()
            + o.appended
                .iter()
                .filter(|id| o.live.contains_key(*id))
                .count()
    }

    /// The record with this id, materialised on first access.
    fn get(&self, id: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        if let Some(v) = self.overlay.borrow().live.get(id) {
            return Some(*v);
        }
        if self.overlay.borrow().removed.iter().any(|r| r == id) {
            return None;
        }
        let record = self.base.get(id)?;
        let value = convert::to_starlark(heap, record);
        self.overlay.borrow_mut().live.insert(id.to_owned(), value);
        Some(value)
    }

    fn set(&self, id: &str, value: Value<'v>) {
        let mut o = self.overlay.borrow_mut();
        let was_removed = o.removed.iter().any(|r| r == id);
        let is_new = !self.base.contains_key(id) || was_removed;
        if is_new && !o.live.contains_key(id) && !o.appended.iter().any(|a| a == id) {
            o.appended.push(id.to_owned());
        }
        o.live.insert(id.to_owned(), value);
    }

    fn remove(&self, id: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        let value = self.get(id, heap)?;
        let mut o = self.overlay.borrow_mut();
        o.live.shift_remove(id);
        if let Some(pos) = o.appended.iter().position(|a| a == id) {
            o.appended.remove(pos);
        }
        if self.base.contains_key(id) && !o.removed.iter().any(|r| r == id) {
            o.removed.push(id.to_owned());
        }
        Some(value)
    }

    /// Ids in Python dict order: original order without removed ids, then appended ids.
    fn ids(&self) -> Vec<String> {
        let o = self.overlay.borrow();
        let mut ids: Vec<String> = self
            .base
            .keys()
            .filter(|k| !o.removed.iter().any(|r| r == *k) && !o.appended.iter().any(|a| a == *k))
            .cloned()
            .collect();
        ids.extend(
            o.appended
                .iter()
                .filter(|a| o.live.contains_key(a.as_str()))
                .cloned(),
        );
        ids
    }

    /// The whole table as JSON (materialises every record).
    pub fn to_json(&self) -> Result<Json, String> {
        let mut map = serde_json::Map::new();
        for id in self.ids() {
            let o = self.overlay.borrow();
            let json = match o.live.get(id.as_str()) {
                Some(v) => convert::to_json(*v)?,
                None => self
                    .base
                    .get(&id)
                    .map(|r| r.value().clone())
                    .unwrap_or(Json::Null),
            };
            map.insert(id, json);
        }
        Ok(Json::Object(map))
    }

    /// What the script changed, compared with the table it started from.
    pub fn changes(&self) -> Result<TableChanges, String> {
        let o = self.overlay.borrow();
        let mut changes = TableChanges {
            removed: o.removed.clone(),
            upserts: Vec::new(),
        };
        for (id, value) in o.live.iter() {
            let re_added = o.appended.iter().any(|a| a == id);
            if let Some(original) = self.base.get(id) {
                if !re_added && convert::matches_json(*value, original.value()) {
                    continue;
                }
            }
            let json =
                convert::to_json(*value).map_err(|e| format!("{}[{id:?}]: {e}", self.name))?;
            changes.upserts.push((id.clone(), json));
        }
        // Appended ids must be inserted in their assignment order, after in-place updates.
        changes
            .upserts
            .sort_by_key(|(id, _)| o.appended.iter().position(|a| a == id));
        Ok(changes)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<'v> AllocValue<'v> for TableValue<'v> {
    fn alloc_value(self, heap: Heap<'v>) -> Value<'v> {
        heap.alloc_complex_no_freeze(self)
    }
}

fn key_error(id: &str) -> starlark::Error {
    // Python's KeyError prints the repr of the key: tau-bench shows it as "Error: 'id'".
    starlark::Error::new_other(anyhow::anyhow!("{}", py_str_repr(id)))
}

/// Python's `repr()` of a plain string (single quotes unless the string contains one).
pub fn py_str_repr(s: &str) -> String {
    if s.contains('\'') && !s.contains('"') {
        format!("\"{s}\"")
    } else {
        format!("'{}'", s.replace('\'', "\\'"))
    }
}

#[starlark_value(type = "table")]
impl<'v> StarlarkValue<'v> for TableValue<'v> {
    fn get_methods() -> Option<&'static Methods> {
        static RES: MethodsStatic = MethodsStatic::new("table", table_methods);
        Some(RES.methods())
    }

    fn at(&self, index: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let id = index
            .unpack_str()
            .ok_or_else(|| key_error(&index.to_repr()))?;
        self.get(id, heap).ok_or_else(|| key_error(id))
    }

    fn set_at(&self, index: Value<'v>, new_value: Value<'v>) -> starlark::Result<()> {
        let id = index.unpack_str().ok_or_else(|| {
            starlark::Error::new_other(anyhow::anyhow!("table keys must be strings"))
        })?;
        self.set(id, new_value);
        Ok(())
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other.unpack_str().is_some_and(|id| self.contains(id)))
    }

    fn length(&self) -> starlark::Result<i32> {
        Ok(self.len() as i32)
    }

    fn iterate_collect(&self, heap: Heap<'v>) -> starlark::Result<Vec<Value<'v>>> {
        Ok(self.ids().into_iter().map(|id| heap.alloc(id)).collect())
    }

    fn to_bool(&self) -> bool {
        self.len() > 0
    }
}

fn table_this<'v>(this: Value<'v>) -> starlark::Result<&'v TableValue<'v>> {
    this.downcast_ref::<TableValue>()
        .ok_or_else(|| starlark::Error::new_other(anyhow::anyhow!("expected a table")))
}

#[starlark_module]
fn table_methods(builder: &mut MethodsBuilder) {
    /// The record ids, in order.
    fn keys<'v>(this: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let this = table_this(this)?;
        Ok(heap.alloc(AllocList(this.ids())))
    }

    /// The records, in order.
    fn values<'v>(this: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let this = table_this(this)?;
        let ids = this.ids();
        let values: Vec<Value<'v>> = ids.iter().filter_map(|id| this.get(id, heap)).collect();
        Ok(heap.alloc(AllocList(values)))
    }

    /// `(id, record)` pairs, in order.
    fn items<'v>(this: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let this = table_this(this)?;
        let ids = this.ids();
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(v) = this.get(&id, heap) {
                items.push(heap.alloc(AllocTuple([heap.alloc(id), v])));
            }
        }
        Ok(heap.alloc(AllocList(items)))
    }

    /// The record with this id, or `default`.
    fn get<'v>(
        this: Value<'v>,
        #[starlark(require = pos)] id: &str,
        #[starlark(require = pos, default = NoneOr::None)] default: NoneOr<Value<'v>>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        let this = table_this(this)?;
        Ok(this
            .get(id, heap)
            .unwrap_or(default.into_option().unwrap_or(Value::new_none())))
    }

    /// Remove a record and return it (or `default`; a missing id without default is an error).
    fn pop<'v>(
        this: Value<'v>,
        #[starlark(require = pos)] id: &str,
        #[starlark(require = pos)] default: Option<Value<'v>>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        let this = table_this(this)?;
        match (this.remove(id, heap), default) {
            (Some(v), _) => Ok(v),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(key_error(id)),
        }
    }
}

/// The database as a whole: `data["users"]` gives a [`TableValue`].
#[derive(Trace, ProvidesStaticType, NoSerialize, Allocative, Debug)]
pub struct DbValue<'v> {
    tables: SmallMap<String, Value<'v>>,
}

impl fmt::Display for DbValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<data: ")?;
        for (i, name) in self.tables.keys().enumerate() {
            write!(f, "{}{name}", if i > 0 { ", " } else { "" })?;
        }
        write!(f, ">")
    }
}

impl<'v> DbValue<'v> {
    pub fn new(tables: SmallMap<String, Value<'v>>) -> Self {
        DbValue { tables }
    }

    /// Every table view, in order.
    pub fn tables(&self) -> impl Iterator<Item = &TableValue<'v>> {
        self.tables
            .values()
            .filter_map(|v| v.downcast_ref::<TableValue>())
    }

    pub fn to_json(&self) -> Result<Json, String> {
        let mut map = serde_json::Map::new();
        for t in self.tables() {
            map.insert(t.name().to_owned(), t.to_json()?);
        }
        Ok(Json::Object(map))
    }
}

impl<'v> AllocValue<'v> for DbValue<'v> {
    fn alloc_value(self, heap: Heap<'v>) -> Value<'v> {
        heap.alloc_complex_no_freeze(self)
    }
}

#[starlark_value(type = "data")]
impl<'v> StarlarkValue<'v> for DbValue<'v> {
    fn at(&self, index: Value<'v>, _heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let name = index.unpack_str().unwrap_or_default();
        self.tables
            .get(name)
            .copied()
            .ok_or_else(|| key_error(name))
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other
            .unpack_str()
            .is_some_and(|n| self.tables.contains_key(n)))
    }

    fn iterate_collect(&self, heap: Heap<'v>) -> starlark::Result<Vec<Value<'v>>> {
        Ok(self.tables.keys().map(|k| heap.alloc(k.as_str())).collect())
    }

    fn length(&self) -> starlark::Result<i32> {
        Ok(self.tables.len() as i32)
    }
}
