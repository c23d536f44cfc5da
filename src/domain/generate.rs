//! Seeded database generation: a domain's `generate.star` builds its tables.
//!
//! The script gets a `random` namespace (`random()`, `randint(a, b)`, `uniform(a, b)`,
//! `choice(seq)`, `sample(seq, k)`, `shuffle(list)`, `weighted_choice(seq, weights)`) backed by a
//! ChaCha generator seeded from the run seed, so the same seed and size give the same bytes on
//! every machine. `generate(size)` returns `{table: {id: record}}`.

use crate::domain::db::Db;
use crate::domain::script::{CallFault, Limits, Scripts, host};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use starlark::environment::GlobalsBuilder;
use starlark::starlark_module;
use starlark::values::list::{AllocList, ListRef};
use starlark::values::{Heap, Value as SValue, ValueLike};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

thread_local! {
    static RNG: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
}

fn err(msg: impl std::fmt::Display) -> starlark::Error {
    starlark::Error::new_other(anyhow::anyhow!("{msg}"))
}

fn with_rng<T>(f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

#[starlark_module]
fn random_namespace(builder: &mut GlobalsBuilder) {
    /// A float in [0, 1).
    fn random() -> starlark::Result<f64> {
        Ok(with_rng(|r| r.random::<f64>()))
    }

    /// An integer in [a, b], both ends included.
    fn randint(
        #[starlark(require = pos)] a: i32,
        #[starlark(require = pos)] b: i32,
    ) -> starlark::Result<i32> {
        if a > b {
            return Err(err(format!("randint({a}, {b}): empty range")));
        }
        Ok(with_rng(|r| r.random_range(a..=b)))
    }

    /// A float in [a, b).
    fn uniform<'v>(
        #[starlark(require = pos)] a: SValue<'v>,
        #[starlark(require = pos)] b: SValue<'v>,
    ) -> starlark::Result<f64> {
        let (a, b) = (number(a)?, number(b)?);
        Ok(a + (b - a) * with_rng(|r| r.random::<f64>()))
    }

    /// One element of a non-empty sequence.
    fn choice<'v>(
        #[starlark(require = pos)] seq: SValue<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<SValue<'v>> {
        let items: Vec<SValue> = seq.iterate(heap)?.collect();
        if items.is_empty() {
            return Err(err("choice() from an empty sequence"));
        }
        Ok(items[with_rng(|r| r.random_range(0..items.len()))])
    }

    /// One element, drawn with the given non-negative weights.
    fn weighted_choice<'v>(
        #[starlark(require = pos)] seq: SValue<'v>,
        #[starlark(require = pos)] weights: SValue<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<SValue<'v>> {
        let items: Vec<SValue> = seq.iterate(heap)?.collect();
        let weights: Vec<f64> = weights
            .iterate(heap)?
            .map(number)
            .collect::<Result<_, _>>()?;
        let total: f64 = weights.iter().sum();
        if items.len() != weights.len() || items.is_empty() || !(total > 0.0) {
            return Err(err(
                "weighted_choice() needs as many positive weights as items",
            ));
        }
        let mut x = with_rng(|r| r.random::<f64>()) * total;
        for (item, w) in items.iter().zip(&weights) {
            if x < *w {
                return Ok(*item);
            }
            x -= w;
        }
        Ok(*items.last().expect("non-empty"))
    }

    /// `k` distinct elements, in random order.
    fn sample<'v>(
        #[starlark(require = pos)] seq: SValue<'v>,
        #[starlark(require = pos)] k: i32,
        heap: Heap<'v>,
    ) -> starlark::Result<SValue<'v>> {
        let mut items: Vec<SValue> = seq.iterate(heap)?.collect();
        if k < 0 || k as usize > items.len() {
            return Err(err(format!(
                "sample larger than population ({k} > {})",
                items.len()
            )));
        }
        with_rng(|r| {
            for i in 0..k as usize {
                let j = r.random_range(i..items.len());
                items.swap(i, j);
            }
        });
        items.truncate(k as usize);
        Ok(heap.alloc(AllocList(items)))
    }

    /// A shuffled copy of a sequence.
    fn shuffle<'v>(
        #[starlark(require = pos)] seq: SValue<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<SValue<'v>> {
        let mut items: Vec<SValue> = match ListRef::from_value(seq) {
            Some(l) => l.content().to_vec(),
            None => seq.iterate(heap)?.collect(),
        };
        with_rng(|r| {
            for i in (1..items.len()).rev() {
                let j = r.random_range(0..=i);
                items.swap(i, j);
            }
        });
        Ok(heap.alloc(AllocList(items)))
    }
}

fn generator_globals(b: &mut GlobalsBuilder) {
    b.namespace("random", random_namespace);
}

/// Run a domain's generator script with a seed and size knobs; returns the database. With a
/// script host ([`crate::domain::script::host`]) the script runs in a child process of its own,
/// so a generator that allocates past `limits.max_heap_bytes` stops with a clear error.
pub fn generate(
    script: &Path,
    seed: u64,
    size: &BTreeMap<String, i64>,
    tables: &[String],
    limits: Limits,
) -> Result<Db, String> {
    let Some(program) = host::program() else {
        return generate_here(script, seed, size, tables, limits);
    };
    let json = host::Client::generate(program, script, seed, size, tables, limits).map_err(
        |e| match e {
            // Already said in full by `generate_here` inside the host.
            CallFault::Raised(m, _) => m,
            other => failed(script, other),
        },
    )?;
    Db::from_json(json).map_err(|e| format!("{}: {e}", script.display()))
}

fn failed(script: &Path, fault: CallFault) -> String {
    match fault {
        CallFault::LimitExceeded(m) => format!(
            "{}: generate(): {m} (the bounds are [generator.limits] in domain.toml)",
            script.display()
        ),
        other => format!("{}: generate(): {}", script.display(), other.message()),
    }
}

/// [`generate`] in this process.
pub fn generate_here(
    script: &Path,
    seed: u64,
    size: &BTreeMap<String, i64>,
    tables: &[String],
    limits: Limits,
) -> Result<Db, String> {
    let dir = script.parent().unwrap_or(Path::new("."));
    let text = std::fs::read_to_string(script).map_err(|e| format!("{}: {e}", script.display()))?;
    let scripts = Scripts::from_sources(
        dir,
        vec![(script.to_path_buf(), text)],
        Some(generator_globals),
    )
    .map_err(|e| e.to_string())?;
    if !scripts.has("generate") {
        return Err(format!(
            "{}: no `def generate(size)` function",
            script.display()
        ));
    }
    RNG.with(|r| *r.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
    let size_json = Value::Object(
        size.iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect(),
    );
    let out = scripts
        .call("generate", &[size_json], limits)
        .map_err(|e| failed(script, e))?;
    let Value::Object(mut map) = out else {
        return Err(format!(
            "{}: generate() must return a dict of tables",
            script.display()
        ));
    };
    let mut ordered = serde_json::Map::new();
    for t in tables {
        let table = map
            .shift_remove(t)
            .ok_or_else(|| format!("{}: generate() returned no table `{t}`", script.display()))?;
        ordered.insert(t.clone(), table);
    }
    if let Some((extra, _)) = map.iter().next() {
        return Err(format!(
            "{}: generate() returned table `{extra}`, which domain.toml does not list",
            script.display()
        ));
    }
    Db::from_json(Value::Object(ordered)).map_err(|e| format!("{}: {e}", script.display()))
}

/// Write each table as `<dir>/<table>.json` (pretty, two-space indent, like tau-bench's files).
pub fn write_db(db: &Db, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = db.to_json();
    for (name, table) in json.as_object().expect("db is an object") {
        let tmp = dir.join(format!(".{name}.json.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(table).map_err(std::io::Error::other)? + "\n",
        )?;
        std::fs::rename(&tmp, dir.join(format!("{name}.json")))?;
    }
    Ok(())
}

/// An int or float argument as f64.
fn number(v: SValue) -> starlark::Result<f64> {
    if let Some(f) = v.downcast_ref::<starlark::values::float::StarlarkFloat>() {
        return Ok(f.0);
    }
    match <i64 as starlark::values::UnpackValue>::unpack_value(v)? {
        Some(i) => Ok(i as f64),
        None => Err(err(format!("expected a number, got {}", v.get_type()))),
    }
}
