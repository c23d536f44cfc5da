//! Context samplers (APIGen-MT §4.1.1): what the proposer sees for one attempt.
//!
//! - **API**: a dependency graph over the domain's tools — an edge A→B when one of B's parameters
//!   can be filled from A's output — derived from the domain's own task replays: a value A
//!   returned is passed to B later, or A's results carry an id field B takes (`order_id`); plus
//!   edges the caller adds. A walk picks 1–3 write tools as the core of a task and read tools that lead to them.
//! - **Data**: one user and the records reachable from them (their orders or reservations, then
//!   the products or flights those mention), trimmed to a character budget.
//! - **Persona**: one of the domain's `personas.jsonl` (or a user-supplied file).
//! - **Examples**: a few well-formed tasks from the domain's own task files or from blueprints
//!   already accepted in the run — never from test tasks.
//!
//! Every draw comes from [`rng_for`], seeded by the run seed and the item's id, so a resumed run
//! makes the same choices.

use crate::domain::Domain;
use crate::domain::task::{RESPOND_ACTION_NAME, Task};
use crate::domain::tools::ToolKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::Path;

/// The generator for one item: the same run seed and item id always give the same draws.
pub fn rng_for(run_seed: u64, item_id: &str) -> ChaCha8Rng {
    let digest = Sha256::digest(format!("{run_seed}:{item_id}").as_bytes());
    ChaCha8Rng::from_seed(digest.into())
}

/// Tool dependencies: `edges[a]` are the tools whose arguments `a`'s output can fill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApiGraph {
    kinds: BTreeMap<String, ToolKind>,
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl ApiGraph {
    /// Derive the graph from replays of `tasks`, then add `extra` edges `(from, to)`.
    pub fn derive(domain: &Domain, tasks: &[Task], extra: &[(String, String)]) -> ApiGraph {
        let kinds: BTreeMap<String, ToolKind> = domain
            .tools()
            .iter()
            .map(|t| (t.name.clone(), t.kind))
            .collect();
        let params: BTreeMap<String, BTreeSet<String>> = domain
            .tools()
            .iter()
            .map(|t| {
                let names = t.parameters()["properties"]
                    .as_object()
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default();
                (t.name.clone(), names)
            })
            .collect();
        // Id-like fields each tool's results carry, and value flows seen in the task replays.
        let mut outputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut flows: BTreeSet<(String, String)> = BTreeSet::new();
        let mut env = domain.env();
        for task in tasks {
            env.reset();
            let mut produced: Vec<(String, BTreeSet<String>)> = Vec::new();
            for action in task
                .actions
                .iter()
                .filter(|a| a.name != RESPOND_ACTION_NAME)
            {
                let mut used = Vec::new();
                for value in action.arguments.values() {
                    string_values(value, &mut used);
                }
                for (tool, values) in &produced {
                    if used.iter().any(|u| values.contains(u)) {
                        flows.insert((tool.clone(), action.name.clone()));
                    }
                }
                let obs = env.step(action).observation;
                if obs.starts_with("Error") || obs.is_empty() {
                    continue;
                }
                let mut values = Vec::new();
                match serde_json::from_str::<Value>(&obs) {
                    Ok(v @ (Value::Object(_) | Value::Array(_))) => {
                        collect_keys(&v, outputs.entry(action.name.clone()).or_default());
                        string_values(&v, &mut values);
                    }
                    _ => values.push(obs),
                }
                produced.push((action.name.clone(), values.into_iter().collect()));
            }
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let acts = |k: &ToolKind| matches!(k, ToolKind::Read | ToolKind::Write);
        let id_like = |p: &String| p.ends_with("_id") || p.ends_with("_ids");
        for (a, outs) in &outputs {
            for (b, ps) in &params {
                if a != b
                    && kinds.get(a).is_some_and(acts)
                    && kinds.get(b).is_some_and(acts)
                    && ps.iter().any(|p| id_like(p) && outs.contains(p))
                {
                    edges.entry(a.clone()).or_default().insert(b.clone());
                }
            }
        }
        for (a, b) in flows {
            if a != b && kinds.get(&a).is_some_and(acts) && kinds.get(&b).is_some_and(acts) {
                edges.entry(a).or_default().insert(b);
            }
        }
        for (a, b) in extra {
            edges.entry(a.clone()).or_default().insert(b.clone());
        }
        ApiGraph { kinds, edges }
    }

    /// The tools with an edge into `tool`.
    pub fn predecessors(&self, tool: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|(_, to)| to.contains(tool))
            .map(|(from, _)| from.as_str())
            .collect()
    }

    /// A walk for one task: `writes` write tools as its core, each preceded by up to `depth`
    /// read tools that can feed it. Returns tool names, feeders first, without repeats.
    pub fn walk(&self, rng: &mut impl Rng, writes: usize, depth: usize) -> Vec<String> {
        let write_tools: Vec<&String> = self
            .kinds
            .iter()
            .filter(|(_, k)| **k == ToolKind::Write)
            .map(|(n, _)| n)
            .collect();
        let mut out: Vec<String> = Vec::new();
        if write_tools.is_empty() {
            return out;
        }
        for _ in 0..writes.max(1) {
            let core = write_tools[rng.random_range(0..write_tools.len())];
            let mut chain = vec![core.clone()];
            let mut at = core.as_str();
            for _ in 0..depth {
                let feeders: Vec<&str> = self
                    .predecessors(at)
                    .into_iter()
                    .filter(|p| self.kinds.get(*p) == Some(&ToolKind::Read))
                    .collect();
                if feeders.is_empty() {
                    break;
                }
                at = feeders[rng.random_range(0..feeders.len())];
                chain.push(at.to_owned());
            }
            for tool in chain.into_iter().rev() {
                if !out.contains(&tool) {
                    out.push(tool);
                }
            }
        }
        out
    }
}

fn collect_keys(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                into.insert(k.clone());
                collect_keys(x, into);
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| collect_keys(x, into)),
        _ => {}
    }
}

/// The records a task can be about: one user and what their record leads to.
#[derive(Debug, Clone, Serialize)]
pub struct DataContext {
    pub user_id: String,
    /// `(table, id, record)`, the user first, then breadth-first by reference.
    pub records: Vec<(String, String, Value)>,
    /// Records reachable but left out for the budget.
    pub omitted: usize,
}

/// A random user id from `user_table`.
pub fn sample_user(domain: &Domain, user_table: &str, rng: &mut impl Rng) -> Option<String> {
    let table = domain.pristine().table(user_table)?;
    if table.is_empty() {
        return None;
    }
    table
        .get_index(rng.random_range(0..table.len()))
        .map(|(id, _)| id.clone())
}

/// The user's record and the records reachable from it within `hops` references (a string value
/// that is the id of a record in another table is a reference), while the compact JSON stays within
/// `budget` characters.
pub fn user_context(
    domain: &Domain,
    user_table: &str,
    user_id: &str,
    hops: usize,
    budget: usize,
) -> Option<DataContext> {
    let db = domain.pristine();
    let user = db.record(user_table, user_id)?.clone();
    let mut used = user.to_string().len();
    let mut records = vec![(user_table.to_owned(), user_id.to_owned(), user)];
    let mut seen: HashSet<(String, String)> =
        HashSet::from([(user_table.to_owned(), user_id.to_owned())]);
    let mut queue: VecDeque<(Value, usize)> = VecDeque::from([(records[0].2.clone(), 0)]);
    let mut omitted = 0;
    while let Some((value, depth)) = queue.pop_front() {
        if depth >= hops {
            continue;
        }
        let mut refs = Vec::new();
        string_values(&value, &mut refs);
        for s in refs {
            for table in db.table_names().filter(|t| *t != user_table) {
                let Some(record) = db.record(table, &s) else {
                    continue;
                };
                if !seen.insert((table.to_owned(), s.clone())) {
                    continue;
                }
                let size = record.to_string().len();
                if used + size > budget {
                    omitted += 1;
                    continue;
                }
                used += size;
                records.push((table.to_owned(), s.clone(), record.clone()));
                queue.push_back((record.clone(), depth + 1));
            }
        }
    }
    Some(DataContext {
        user_id: user_id.to_owned(),
        records,
        omitted,
    })
}

/// Every string inside `v`, depth first.
pub(crate) fn string_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Object(m) => m.values().for_each(|x| string_values(x, out)),
        Value::Array(xs) => xs.iter().for_each(|x| string_values(x, out)),
        _ => {}
    }
}

/// Someone the simulated customer can be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub id: String,
    pub persona: String,
    pub style: String,
    pub goals_hint: String,
}

/// Read a personas file (JSON Lines); errors name the file and line.
pub fn read_personas(path: &Path) -> Result<Vec<Persona>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                format!(
                    "{}:{}: {}",
                    path.display(),
                    i + 1,
                    crate::domain::db::serde_message(&e)
                )
            })
        })
        .collect()
}

/// `k` distinct items of `pool` (all of it when smaller), in random order.
pub fn sample_k<'a, T>(pool: &'a [T], k: usize, rng: &mut impl Rng) -> Vec<&'a T> {
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    let k = k.min(idx.len());
    for i in 0..k {
        let j = rng.random_range(i..idx.len());
        idx.swap(i, j);
    }
    idx[..k].iter().map(|i| &pool[*i]).collect()
}

/// How much of each sampler one attempt uses: varied per attempt for diversity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mix {
    pub writes: usize,
    pub feeder_depth: usize,
    pub examples: usize,
    pub data_budget: usize,
    pub persona: bool,
}

impl Mix {
    /// One draw: 1–3 write tools (1 most often), 1–2 feeders each, 0–3 examples, a data budget
    /// between half and all of `max_budget`, and a persona nine times in ten.
    pub fn draw(rng: &mut impl Rng, max_budget: usize) -> Mix {
        let writes = match rng.random_range(0..20) {
            0..=10 => 1,
            11..=17 => 2,
            _ => 3,
        };
        Mix {
            writes,
            feeder_depth: rng.random_range(1..=2),
            examples: rng.random_range(0..=3),
            data_budget: rng.random_range(max_budget / 2..=max_budget.max(1)),
            persona: rng.random_range(0..10) != 0,
        }
    }
}
