//! Sampled executable plans: for one customer, an action chain that runs cleanly on the data and
//! passes the domain's rules — reads that lead to 1–3 writes — drawn before the proposer writes
//! anything, so a blueprint starts from something that works.
//!
//! The sampler works for any domain from its tool schemas and data alone:
//!
//! 1. **What the customer knows**: every field of the customer's records (followed through
//!    references), of the public records those mention (`[grounding] public`: the products of
//!    their orders, the flights of their reservations), and of what earlier steps returned, by
//!    field name.
//! 2. **Writes**: a write tool is drawn (with the run's seed and the item id); each argument is
//!    filled from what the customer knows — by the same field name (`order_id`), by a suffix
//!    (`to_account_id` from `account_id`), a plural (`item_ids` from `item_id`), or the `id` of
//!    a record kept under the plural name (`payment_method_id` from `payment_methods.*.id`);
//!    enums by a draw; objects field by field. The write runs; one that returns `Error: ...`,
//!    changes nothing, or breaks a rule is drawn again, up to a bound.
//! 3. **Reads**: before each write, a read tool that takes one of its id arguments and returns
//!    it (`get_order_details(order_id)`); at the start, the reads that identify the customer
//!    (a lookup by their own fields, then the record itself; the lookup half the time where the
//!    domain's `[grounding] introduce` has the customer state their record's key).
//!
//! The plan is a suggestion or the blueprint's actions (`--plan suggest|fixed`); the proposer
//! writes the instruction and outputs around it.

use crate::domain::Domain;
use crate::domain::task::Action;
use crate::domain::tools::{Tool, ToolKind};
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How the proposer uses a sampled plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PlanMode {
    /// No plan: the proposer picks the actions from the sampled tools (the paper's setting).
    None,
    /// The plan is shown; the proposer may keep, trim or extend it.
    Suggest,
    /// The plan is the blueprint's actions; the proposer writes the instruction and outputs.
    Fixed,
}

/// A chain of actions that ran cleanly, with what each returned.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub observations: Vec<String>,
    /// How many of the actions are writes.
    pub writes: usize,
}

/// Draws of one write tool's arguments before trying another tool.
const WRITE_TRIES: usize = 15;

fn sampler_shuffle<'a, T>(xs: &[&'a T], rng: &mut impl Rng) -> Vec<&'a T> {
    crate::blueprint::sampler::sample_k(xs, xs.len(), rng)
        .into_iter()
        .copied()
        .collect()
}

/// Values the customer knows, by field name, in the order they were found.
#[derive(Debug, Default, Clone)]
struct Known {
    by_field: BTreeMap<String, Vec<Value>>,
    /// The strings of each record added (an order, a product), to keep a draw's arguments
    /// together: the items of the order drawn, not of another one.
    records: Vec<std::collections::HashSet<String>>,
    /// Keys of maps of records (a product's variants): alternatives to one another.
    groups: Vec<Vec<String>>,
    /// Free-text values (not ids) other customers have, by field name: a new address is one
    /// the customer states, and another customer's is as good as any.
    elsewhere: BTreeMap<String, Vec<Value>>,
}

impl Known {
    fn add(&mut self, v: &Value) {
        let mut strings = Vec::new();
        crate::blueprint::sampler::string_values(v, &mut strings);
        self.records.push(strings.into_iter().collect());
        self.walk(v, None);
    }

    /// The other members of a group `v` belongs to.
    fn siblings(&self, v: &str) -> Vec<&String> {
        self.groups
            .iter()
            .filter(|g| g.iter().any(|x| x == v))
            .flat_map(|g| g.iter().filter(|x| *x != v))
            .collect()
    }

    /// Keep the candidates found in one record with every id already drawn, when there are any.
    /// An id already drawn for another argument is not a candidate (a transfer's recipient is
    /// not its source).
    fn coherent<'a>(&self, pool: Vec<&'a Value>, drawn: &[String]) -> Vec<&'a Value> {
        if drawn.is_empty() {
            return pool;
        }
        let pool: Vec<&'a Value> = pool
            .into_iter()
            .filter(|v| v.as_str().is_none_or(|s| !drawn.iter().any(|d| d == s)))
            .collect();
        let together: Vec<&'a Value> = pool
            .iter()
            .copied()
            .filter(|v| {
                v.as_str().is_some_and(|s| {
                    self.records
                        .iter()
                        .any(|r| r.contains(s) && drawn.iter().all(|d| r.contains(d)))
                })
            })
            .collect();
        if together.is_empty() { pool } else { together }
    }

    fn walk(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::Object(m) => {
                if let Some(k) = key {
                    self.push(k, v.clone());
                }
                if m.len() >= 2 && m.values().all(Value::is_object) {
                    self.groups.push(m.keys().cloned().collect());
                }
                for (k, x) in m {
                    self.walk(x, Some(k));
                    // A record kept under a plural key: `payment_methods: {id: {...}}` gives
                    // `payment_method` and `payment_method_id` the record's `id`.
                    if let (Some(parent), Value::Object(inner)) = (key, x) {
                        if let Some(id) = inner.get("id") {
                            let singular = parent.strip_suffix('s').unwrap_or(parent);
                            self.push(&format!("{singular}_id"), id.clone());
                        }
                    }
                }
            }
            Value::Array(xs) => {
                if let Some(k) = key {
                    self.push(k, v.clone());
                }
                for x in xs {
                    self.walk(x, key);
                }
            }
            _ => {
                if let Some(k) = key {
                    self.push(k, v.clone());
                }
            }
        }
    }

    fn push(&mut self, k: &str, v: Value) {
        let e = self.by_field.entry(k.to_owned()).or_default();
        if !e.contains(&v) {
            e.push(v);
        }
    }

    /// Candidate values for a parameter named `param`.
    fn candidates(&self, param: &str, scalar: bool) -> Vec<&Value> {
        let singular = param.strip_suffix('s').unwrap_or(param);
        let mut out: Vec<&Value> = Vec::new();
        for (field, values) in &self.by_field {
            let f = field.as_str();
            let matches = f == param
                || f == singular
                || param.ends_with(&format!("_{f}"))
                || singular.ends_with(&format!("_{f}"));
            if matches && f != "id" {
                out.extend(
                    values
                        .iter()
                        .filter(|v| !scalar || !(v.is_object() || v.is_array())),
                );
            }
        }
        out
    }
}

/// Draw a plan for `user_id` with `writes` writes (1–3), or `None` when no write could be made
/// to run on this customer's data.
/// `peers` are other customers' records shown beside this one's (a transfer's recipient).
pub fn sample(
    domain: &Domain,
    user_id: &str,
    peers: &[Value],
    writes: usize,
    rng: &mut impl Rng,
) -> Option<Plan> {
    let db = domain.pristine();
    let user_table = &domain.manifest.blueprints.user_table;
    let user = db.record(user_table, user_id)?.clone();
    let mut known = Known::default();
    let mut with_id = user.clone();
    if let Value::Object(m) = &mut with_id {
        let key = format!("{}_id", user_table.strip_suffix('s').unwrap_or(user_table));
        m.entry(key).or_insert(Value::String(user_id.to_owned()));
    }
    known.add(&with_id);
    // Two other customers' free-text fields (addresses), for values a customer would state.
    if let Some(table) = db.table(user_table) {
        let others: Vec<&std::sync::Arc<crate::domain::db::Record>> = table
            .iter()
            .filter(|(id, _)| *id != user_id)
            .map(|(_, r)| r)
            .collect();
        for r in crate::blueprint::sampler::sample_k(&others, 2, rng) {
            let mut k = Known::default();
            k.walk(r.value(), None);
            for (f, vs) in k.by_field {
                if !crate::domain::ground::id_like(&f) {
                    known
                        .elsewhere
                        .entry(f)
                        .or_default()
                        .extend(vs.into_iter().filter(|v| v.is_string()));
                }
            }
        }
    }
    let grounder = crate::domain::ground::Grounder::new(domain);
    let records = grounder.customer_records(user_id);
    for r in records.iter().chain(peers) {
        known.add(r);
    }
    // Values only other customers' records hold (a transfer's recipient account).
    let strings = |rs: &[Value]| {
        let mut v = Vec::new();
        rs.iter()
            .for_each(|r| crate::blueprint::sampler::string_values(r, &mut v));
        v
    };
    let own: std::collections::HashSet<String> = strings(&records).into_iter().collect();
    let peer_only: std::collections::HashSet<String> = strings(peers)
        .into_iter()
        .filter(|v| !own.contains(v) && v != user_id)
        .collect();
    // Public records the customer's records mention (the products they ordered).
    let mut mentioned = std::collections::HashSet::new();
    for r in &records {
        let mut strings = Vec::new();
        crate::blueprint::sampler::string_values(r, &mut strings);
        for s in strings {
            for t in &domain.manifest.grounding.public {
                if let Some(rec) = db.record(t, &s) {
                    if mentioned.insert((t.clone(), s.clone())) {
                        known.add(rec);
                    }
                }
            }
        }
    }
    let write_tools: Vec<&Tool> = domain
        .tools()
        .iter()
        .filter(|t| t.kind == ToolKind::Write)
        .collect();
    if write_tools.is_empty() {
        return None;
    }
    let reads: Vec<&Tool> = domain
        .tools()
        .iter()
        .filter(|t| t.kind == ToolKind::Read)
        .collect();
    let mut env = domain.env();
    let mut plan = Plan {
        actions: vec![],
        observations: vec![],
        writes: 0,
    };
    // Identify the customer: a lookup by their own fields, then their record.
    let mut finders: Vec<Action> = Vec::new();
    for t in &reads {
        if let Some(args) = fill_exact(t, &known) {
            let a = Action::new(t.name.clone(), args);
            let obs = domain.env().step(&a).observation;
            if !obs.starts_with("Error") && obs.contains(user_id) {
                finders.push(a);
            }
        }
    }
    let (by_id, lookups): (Vec<Action>, Vec<Action>) = finders
        .into_iter()
        .partition(|a| a.arguments.values().any(|v| v.as_str() == Some(user_id)));
    // A customer who states their record's key (the domain's introduction says it) needs no
    // lookup; half of their plans go without one, for shapes beyond the one chain.
    let states_key = domain
        .manifest
        .grounding
        .introduce
        .as_ref()
        .is_some_and(|t| t.contains(&format!("{{{}}}", crate::domain::ground::RECORD_ID)));
    if !lookups.is_empty() && (!states_key || rng.random_range(0..2) == 0) {
        let a = lookups[rng.random_range(0..lookups.len())].clone();
        run(&mut env, &mut plan, &mut known, a);
    }
    if let Some(a) = by_id.into_iter().next() {
        run(&mut env, &mut plan, &mut known, a);
    }
    // Each write slot: the write tools in a random order, each tried with up to WRITE_TRIES
    // draws of its arguments; the first that runs and keeps to the rules wins. Every feasible
    // tool is then about as likely as any other, in every slot: a tool already in the plan
    // again (two transfers, two cancellations) is a shape of its own.
    for _ in 0..writes.max(1) {
        let order: Vec<&Tool> = sampler_shuffle(&write_tools, rng);
        let mut done = false;
        for tool in order {
            for _ in 0..WRITE_TRIES {
                if done {
                    break;
                }
                let Some(args) = fill(tool, &known, rng) else {
                    continue;
                };
                let write = Action::new(tool.name.clone(), args);
                // The same change twice (a second new address) is not a task.
                let ids = crate::domain::ground::id_arguments(&write.arguments);
                if plan.actions.iter().any(|a| {
                    a.name == write.name && crate::domain::ground::id_arguments(&a.arguments) == ids
                }) {
                    continue;
                }
                // Reads that lead to this write: a read taking one of its ids and returning it.
                // Another customer's record (the recipient's account) is read half the time:
                // the customer names it, and the write itself fails on one that is not there.
                let mut leads: Vec<Action> = Vec::new();
                for (key, value) in crate::domain::ground::id_arguments(&write.arguments) {
                    if peer_only.contains(&value) && rng.random_range(0..2) == 0 {
                        continue;
                    }
                    for r in &reads {
                        let params = props(r);
                        let required = required(r);
                        if required.len() != 1
                            || plan.actions.iter().chain(&leads).any(|a| {
                                a.name == r.name
                                    && a.arguments.values().any(|v| v.as_str() == Some(&value))
                            })
                        {
                            continue;
                        }
                        let p = &required[0];
                        if !(key == *p
                            || key.ends_with(&format!("_{p}"))
                            || key
                                .strip_suffix('s')
                                .is_some_and(|k| k == p || k.ends_with(&format!("_{p}"))))
                            || !params.contains_key(p)
                        {
                            continue;
                        }
                        let mut args = Map::new();
                        args.insert(p.clone(), Value::String(value.clone()));
                        let a = Action::new(r.name.clone(), args);
                        let obs = domain.env().step(&a).observation;
                        if !obs.starts_with("Error") && obs.contains(&value) {
                            leads.push(a);
                            break;
                        }
                    }
                }
                // Try the write on a copy of the episode first.
                let mut trial = plan.clone();
                let mut trial_env = domain.env();
                let mut trial_known = known.clone();
                for a in &plan.actions {
                    trial_env.step(a);
                }
                for a in leads {
                    run(&mut trial_env, &mut trial, &mut trial_known, a);
                }
                let before = trial_env.hash();
                let step = trial_env.step(&write);
                if step.fault.is_some()
                    || step.observation.starts_with("Error")
                    || trial_env.hash() == before
                {
                    continue;
                }
                trial.actions.push(write);
                trial.observations.push(step.observation.clone());
                if !crate::domain::policy::check(domain, user_id, &trial.actions).is_empty() {
                    continue;
                }
                trial_known.add(&parse(&step.observation));
                trial.writes += 1;
                plan = trial;
                known = trial_known;
                done = true;
            }
            if done {
                break;
            }
        }
    }
    (plan.writes > 0).then_some(plan)
}

fn run(env: &mut crate::domain::env::Env<'_>, plan: &mut Plan, known: &mut Known, a: Action) {
    let obs = env.step(&a).observation;
    known.add(&parse(&obs));
    plan.actions.push(a);
    plan.observations.push(obs);
}

fn parse(obs: &str) -> Value {
    serde_json::from_str(obs).unwrap_or(Value::Null)
}

fn props(t: &Tool) -> Map<String, Value> {
    t.parameters()["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn required(t: &Tool) -> Vec<String> {
    t.parameters()["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Arguments for a read whose every required parameter is a field the customer has by exactly
/// that name (a lookup by name and zip, or by the customer's id).
fn fill_exact(t: &Tool, known: &Known) -> Option<Map<String, Value>> {
    let req = required(t);
    if req.is_empty() {
        return None;
    }
    let mut args = Map::new();
    for p in req {
        let v = known.by_field.get(&p)?.iter().find(|v| v.is_string())?;
        args.insert(p, v.clone());
    }
    Some(args)
}

/// Arguments for `t`: every required parameter, and each optional one half the time, filled
/// from what the customer knows.
fn fill(t: &Tool, known: &Known, rng: &mut impl Rng) -> Option<Map<String, Value>> {
    let params = props(t);
    let req = required(t);
    let mut args = Map::new();
    let mut drawn: Vec<String> = Vec::new();
    for (name, schema) in &params {
        let needed = req.contains(name);
        if !needed && rng.random_range(0..2) == 0 {
            continue;
        }
        // `new_item_ids` beside `item_ids`: for each item, another member of its group (another
        // variant of the same product).
        if let Some(old) = name
            .strip_prefix("new_")
            .and_then(|o| args.get(o))
            .and_then(Value::as_array)
        {
            let mut new = Vec::new();
            for v in old {
                let sibs = known.siblings(v.as_str()?);
                if sibs.is_empty() {
                    return None;
                }
                new.push(Value::String(sibs[rng.random_range(0..sibs.len())].clone()));
            }
            args.insert(name.clone(), Value::Array(new));
            continue;
        }
        match value_for(name, schema, known, &drawn, rng) {
            Some(v) => {
                if crate::domain::ground::id_like(name) {
                    let mut s = Vec::new();
                    crate::blueprint::sampler::string_values(&v, &mut s);
                    drawn.extend(s);
                }
                args.insert(name.clone(), v);
            }
            None if needed => return None,
            None => {}
        }
    }
    Some(args)
}

fn value_for(
    name: &str,
    schema: &Value,
    known: &Known,
    drawn: &[String],
    rng: &mut impl Rng,
) -> Option<Value> {
    if let Some(Value::Array(options)) = schema.get("enum") {
        return (!options.is_empty()).then(|| options[rng.random_range(0..options.len())].clone());
    }
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("string");
    match ty {
        "array" => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            let item_ty = items
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string");
            // A whole list the customer has under this name (a reservation's passengers).
            let lists: Vec<&Value> = known
                .candidates(name, false)
                .into_iter()
                .filter(|v| v.is_array())
                .collect();
            if item_ty == "object" {
                if !lists.is_empty() && rng.random_range(0..3) != 0 {
                    let list = lists[rng.random_range(0..lists.len())];
                    let projected: Option<Vec<Value>> = list
                        .as_array()?
                        .iter()
                        .map(|x| project(x, &items, known, drawn, rng))
                        .collect();
                    return projected.map(Value::Array);
                }
                let one = value_for(name, &items, known, drawn, rng)?;
                return Some(Value::Array(vec![one]));
            }
            let pool: Vec<&Value> = known
                .candidates(name, true)
                .into_iter()
                .filter(|v| type_ok(item_ty, v))
                .collect();
            let pool = known.coherent(pool, drawn);
            if pool.is_empty() {
                return None;
            }
            let n = 1 + usize::from(pool.len() > 1 && rng.random_range(0..4) == 0);
            let picked = crate::blueprint::sampler::sample_k(&pool, n, rng);
            Some(Value::Array(
                picked.into_iter().map(|v| (*v).clone()).collect(),
            ))
        }
        "object" => {
            let whole: Vec<&Value> = known
                .candidates(name, false)
                .into_iter()
                .filter(|v| v.is_object())
                .collect();
            if !whole.is_empty() {
                return project(
                    whole[rng.random_range(0..whole.len())],
                    schema,
                    known,
                    drawn,
                    rng,
                );
            }
            let mut m = Map::new();
            let req: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for (k, s) in schema["properties"].as_object()? {
                match value_for(k, s, known, drawn, rng) {
                    Some(v) => {
                        m.insert(k.clone(), v);
                    }
                    None if req.contains(&k.as_str()) => return None,
                    None => {}
                }
            }
            Some(Value::Object(m))
        }
        ty => {
            let pool: Vec<&Value> = known
                .candidates(name, true)
                .into_iter()
                .filter(|v| type_ok(ty, v))
                .collect();
            let pool = if crate::domain::ground::id_like(name) {
                known.coherent(pool, drawn)
            } else {
                let mut pool = pool;
                if let Some(more) = known.elsewhere.get(name) {
                    pool.extend(more.iter().filter(|v| type_ok(ty, v)));
                }
                pool
            };
            if !pool.is_empty() {
                return Some(pool[rng.random_range(0..pool.len())].clone());
            }
            match ty {
                "integer" => Some(Value::from(rng.random_range(0..=2))),
                // An amount: a round figure a customer would name.
                "number" => {
                    let amounts = [10.0, 20.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0];
                    Some(Value::from(amounts[rng.random_range(0..amounts.len())]))
                }
                _ => None,
            }
        }
    }
}

/// Keep the schema's fields of an object the customer has (a flight without its price).
fn project(
    x: &Value,
    schema: &Value,
    known: &Known,
    drawn: &[String],
    rng: &mut impl Rng,
) -> Option<Value> {
    let props = schema.get("properties").and_then(Value::as_object)?;
    let obj = x.as_object()?;
    let mut m = Map::new();
    for (k, s) in props {
        match obj.get(k) {
            Some(v) if type_ok(s.get("type").and_then(Value::as_str).unwrap_or(""), v) => {
                m.insert(k.clone(), v.clone());
            }
            _ => {
                if let Some(v) = value_for(k, s, known, drawn, rng) {
                    m.insert(k.clone(), v);
                }
            }
        }
    }
    Some(Value::Object(m))
}

/// A scalar of JSON-schema type `ty`; any scalar where the type is not a scalar one.
fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" | "integer" | "number" | "boolean" => crate::domain::tools::type_matches(ty, v),
        _ => !(v.is_object() || v.is_array()),
    }
}
