//! Grounding: do a task's instruction, actions and outputs describe the same customer and the
//! same job? Execution and policy checks prove that the actions run; these checks prove that
//! the instruction is about the customer the actions act for and that nothing in the actions or
//! outputs comes from nowhere. They are deterministic and model-free, so `domain check --tasks`
//! runs them too.
//!
//! Codes (each with a detail a person can act on):
//!
//! - `ground.user_unidentified`: the instruction gives none of the identities of
//!   `[grounding] identity` for the task's customer (retail: full name with zip, e-mail or user
//!   id; airline: user id; mock: owner name or account id).
//! - `ground.user_mismatch`: the instruction gives another customer's identity, or an action is
//!   made for another customer (`user_id` argument).
//! - `ground.argument_unsourced`: an id-like argument of a write tool (its key ends in `_id`,
//!   `_ids` or `_number`, or is `id`) whose value is in neither the instruction, the customer's
//!   own records (followed through references), the domain's public tables (`[grounding]
//!   public`: the catalogue any read tool can list), nor what an earlier action returned.
//! - `ground.output_unsourced`: an expected output that no action's observation or record of the
//!   customer contains and no simple arithmetic over their numbers gives (a value, a count, the
//!   sum or difference of two, or the sum of up to five same-named fields of one record).
//! - `ground.copied_example`: the instruction repeats an example's customer, an id of an
//!   example that is not the customer's, or a phrase of eight words or more of an example.
//!
//! Matching is on lower-cased text with runs of whitespace collapsed, at word boundaries, so
//! "Yusuf Rossi" does not match "Yusuf Rossiter".

use crate::domain::Domain;
use crate::domain::task::{RESPOND_ACTION_NAME, Task};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};

/// The identity part that stands for the record's own key (its id).
pub const RECORD_ID: &str = "$id";

/// Words in a row an instruction may share with an example before it counts as copied.
pub const COPIED_PHRASE_WORDS: usize = 8;

/// One grounding problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: String,
    pub detail: String,
}

impl Finding {
    pub fn new(code: &str, detail: String) -> Finding {
        Finding {
            code: code.into(),
            detail,
        }
    }
}

/// Lower-case, whitespace runs to one space, trimmed.
pub fn normalise(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `needle` occurs in `hay` (both normalised) not glued to a letter or digit on either side.
pub fn contains_word(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    // `#W123` is matched by `W123` too: the hash is a prefix people drop.
    if let Some(bare) = needle.strip_prefix('#') {
        if !bare.is_empty() && contains_word(hay, bare) {
            return true;
        }
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut from = 0;
    while let Some(at) = hay[from..].find(needle) {
        let start = from + at;
        let end = start + needle.len();
        if !word(hay[..start].chars().next_back()) && !word(hay[end..].chars().next()) {
            return true;
        }
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// Whether an argument key names an identifier.
pub fn id_like(key: &str) -> bool {
    key == "id" || key.ends_with("_id") || key.ends_with("_ids") || key.ends_with("_number")
}

/// Every `(key, value)` of an id-like key in `args`, arrays of strings under such a key included.
pub fn id_arguments(args: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    fn walk(v: &Value, key: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) if id_like(key) => out.push((key.to_owned(), s.clone())),
            Value::Array(xs) => xs.iter().for_each(|x| walk(x, key, out)),
            Value::Object(m) => m.iter().for_each(|(k, x)| walk(x, k, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in args {
        walk(v, k, &mut out);
    }
    out
}

fn strings_into(v: &Value, keys: bool, out: &mut HashSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Number(n) => {
            out.insert(n.to_string());
        }
        Value::Object(m) => {
            for (k, x) in m {
                if keys {
                    out.insert(k.clone());
                }
                strings_into(x, keys, out);
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| strings_into(x, keys, out)),
        _ => {}
    }
}

fn numbers_into(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Number(n) => out.extend(n.as_f64()),
        Value::Object(m) => m.values().for_each(|x| numbers_into(x, out)),
        Value::Array(xs) => xs.iter().for_each(|x| numbers_into(x, out)),
        _ => {}
    }
}

fn counts_into(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Object(m) => {
            out.push(m.len() as f64);
            m.values().for_each(|x| counts_into(x, out));
        }
        Value::Array(xs) => {
            out.push(xs.len() as f64);
            xs.iter().for_each(|x| counts_into(x, out));
        }
        _ => {}
    }
}

/// Numbers of the same key in one object, per key (prices of an order's items).
fn same_key_numbers(v: &Value, out: &mut std::collections::BTreeMap<String, Vec<f64>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match x {
                    Value::Number(n) => out.entry(k.clone()).or_default().extend(n.as_f64()),
                    _ => same_key_numbers(x, out),
                }
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| same_key_numbers(x, out)),
        _ => {}
    }
}

/// Read the value at a dotted path (`name.first_name`) of a record; `$id` is the record's key.
fn field(record: &Value, id: &str, path: &str) -> Option<String> {
    if path == RECORD_ID {
        return Some(id.to_owned());
    }
    let mut at = record;
    for part in path.split('.') {
        at = at.get(part)?;
    }
    match at {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One identity of a customer: the values an instruction must all contain (e.g. a full name
/// and a zip), and the spec it came from.
#[derive(Debug, Clone)]
struct Identity {
    spec: String,
    values: Vec<String>,
}

/// The grounding checks of one domain, with what they precompute (the public tables, every
/// customer's identities).
pub struct Grounder<'d> {
    domain: &'d Domain,
    user_table: String,
    /// `(user id, identities)` for every customer.
    identities: Vec<(String, Vec<Identity>)>,
    public: HashSet<String>,
    /// Whether an instruction may name other customers' record ids (domains with peers: a
    /// transfer to someone else's account).
    peers: bool,
}

impl<'d> Grounder<'d> {
    pub fn new(domain: &'d Domain) -> Grounder<'d> {
        let user_table = domain.manifest.blueprints.user_table.clone();
        let specs = &domain.manifest.grounding.identity;
        let db = domain.pristine();
        let identities = db
            .table(&user_table)
            .map(|t| {
                t.iter()
                    .map(|(id, rec)| (id.clone(), identities_of(rec.value(), id, specs)))
                    .collect()
            })
            .unwrap_or_default();
        let mut public = HashSet::new();
        for table in &domain.manifest.grounding.public {
            if let Some(t) = db.table(table) {
                for (id, rec) in t.iter() {
                    public.insert(id.clone());
                    strings_into(rec.value(), true, &mut public);
                }
            }
        }
        Grounder {
            domain,
            user_table,
            identities,
            public,
            peers: domain.manifest.blueprints.peers > 0,
        }
    }

    fn identities(&self, user: &str) -> &[Identity] {
        self.identities
            .iter()
            .find(|(id, _)| id == user)
            .map(|(_, i)| i.as_slice())
            .unwrap_or(&[])
    }

    /// The customer's records: their own, every record of the user table sharing a non-id
    /// identity with it (a person with several accounts), and what those reference, transitively
    /// (not through other customers' records).
    pub fn customer_records(&self, user: &str) -> Vec<Value> {
        let db = self.domain.pristine();
        let own: Vec<String> = self
            .identities(user)
            .iter()
            .filter(|i| i.spec != RECORD_ID)
            .flat_map(|i| i.values.clone())
            .collect();
        let mut roots: Vec<String> = vec![user.to_owned()];
        for (id, ids) in &self.identities {
            if id != user
                && ids.iter().any(|i| {
                    i.spec != RECORD_ID
                        && !i.values.is_empty()
                        && i.values.iter().all(|v| own.contains(v))
                })
            {
                roots.push(id.clone());
            }
        }
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut out = Vec::new();
        let mut queue: Vec<Value> = Vec::new();
        for r in roots {
            if let Some(rec) = db.record(&self.user_table, &r) {
                seen.insert((self.user_table.clone(), r.clone()));
                let mut v = rec.clone();
                // The key is part of what the customer knows.
                if let Value::Object(m) = &mut v {
                    m.entry(RECORD_ID).or_insert(Value::String(r));
                }
                queue.push(v);
            }
        }
        while let Some(v) = queue.pop() {
            let mut refs = HashSet::new();
            strings_into(&v, false, &mut refs);
            out.push(v);
            // In a fixed order: plans are drawn from these records, and a run is reproducible.
            let mut refs: Vec<String> = refs.into_iter().collect();
            refs.sort();
            for s in refs {
                for table in db.table_names() {
                    if table == self.user_table
                        || self
                            .domain
                            .manifest
                            .grounding
                            .public
                            .iter()
                            .any(|p| p == table)
                    {
                        continue;
                    }
                    if let Some(rec) = db.record(table, &s) {
                        if seen.insert((table.to_owned(), s.clone())) {
                            queue.push(rec.clone());
                        }
                    }
                }
            }
        }
        out
    }

    /// Every string (and map key, and number as text) the customer's records hold.
    pub fn reachable(&self, user: &str) -> HashSet<String> {
        let mut out = HashSet::new();
        out.insert(user.to_owned());
        for r in self.customer_records(user) {
            strings_into(&r, true, &mut out);
        }
        out
    }

    /// Whether the instruction identifies `user` by one of its identities.
    fn identified(&self, text: &str, user: &str) -> Option<&Identity> {
        self.identities(user).iter().find(|i| {
            !i.values.is_empty() && i.values.iter().all(|v| contains_word(text, &normalise(v)))
        })
    }

    /// The identity and customer check: `user_unidentified` and `user_mismatch`.
    pub fn check_user(&self, task: &Task) -> Vec<Finding> {
        let text = normalise(&task.instruction);
        let mut out = Vec::new();
        if self.identified(&text, &task.user_id).is_none() {
            let ways: Vec<String> = self
                .domain
                .manifest
                .grounding
                .identity
                .iter()
                .map(|alt| alt.join(" + "))
                .collect();
            let example: Vec<String> = self
                .identities(&task.user_id)
                .iter()
                .map(|i| i.values.join(", "))
                .collect();
            out.push(Finding::new(
                "ground.user_unidentified",
                format!(
                    "the instruction must say who the customer {} is so the agent can authenticate them ({}): e.g. {}",
                    task.user_id,
                    ways.join(" or "),
                    example.join(" / ")
                ),
            ));
        }
        let own: Vec<&Identity> = self.identities(&task.user_id).iter().collect();
        for (id, ids) in &self.identities {
            if *id == task.user_id {
                continue;
            }
            let hit = ids.iter().find(|i| {
                !(self.peers && i.spec == RECORD_ID)
                    && !i.values.is_empty()
                    && i.values.iter().all(|v| contains_word(&text, &normalise(v)))
                    // Shared by the customer's own identity (two people with one name and zip).
                    && !own.iter().any(|o| o.spec == i.spec && o.values == i.values)
            });
            if let Some(i) = hit {
                out.push(Finding::new(
                    "ground.user_mismatch",
                    format!(
                        "the instruction names {} ({}), which is customer {id}, but the task is for {}",
                        i.values.join(", "),
                        i.spec,
                        task.user_id
                    ),
                ));
                break;
            }
        }
        for (i, a) in task.actions.iter().enumerate() {
            if let Some(Value::String(u)) = a.arguments.get("user_id") {
                if *u != task.user_id {
                    out.push(Finding::new(
                        "ground.user_mismatch",
                        format!(
                            "actions[{i}] {} acts for user {u}, but the task is for {}",
                            a.name, task.user_id
                        ),
                    ));
                    break;
                }
            }
        }
        out
    }

    /// `argument_unsourced` and `output_unsourced`, given each action's observation (in order;
    /// `respond` actions have none and may be missing).
    pub fn check_sources(&self, task: &Task, observations: &[String]) -> Vec<Finding> {
        let text = normalise(&task.instruction);
        let reach = self.reachable(&task.user_id);
        let mut seen_obs: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        let mut obs = observations.iter();
        for (i, a) in task.actions.iter().enumerate() {
            if a.name == RESPOND_ACTION_NAME {
                continue;
            }
            let is_write = self.domain.is_write(&a.name);
            if is_write {
                for (key, value) in id_arguments(&a.arguments) {
                    let sourced = reach.contains(&value)
                        || self.public.contains(&value)
                        || contains_word(&text, &normalise(&value))
                        || seen_obs.iter().any(|o| o.contains(value.as_str()));
                    if !sourced {
                        out.push(Finding::new(
                            "ground.argument_unsourced",
                            format!(
                                "actions[{i}] {}: {key} {value:?} is not in the instruction, the customer's data or an earlier action's result; use an id the customer has or that an earlier action returns",
                                a.name
                            ),
                        ));
                    }
                }
            }
            if let Some(o) = obs.next() {
                seen_obs.push(o);
            }
        }
        let mut values: Vec<Value> = observations
            .iter()
            .map(|o| serde_json::from_str(o).unwrap_or_else(|_| Value::String(o.clone())))
            .collect();
        values.extend(self.customer_records(&task.user_id));
        let mut texts: Vec<String> = values.iter().map(|v| normalise(&v.to_string())).collect();
        texts.extend(observations.iter().map(|o| normalise(o)));
        for o in &task.outputs {
            if !output_sourced(o, &texts, &values, &self.public) {
                let hint = if o.split_whitespace().count() > 4 {
                    " (outputs are bare values such as \"2015.04\" or \"pending\", not sentences)"
                } else {
                    ""
                };
                out.push(Finding::new(
                    "ground.output_unsourced",
                    format!(
                        "output {o:?} is not in any action's result or the customer's data, nor a sum, difference or count of their numbers{hint}"
                    ),
                ));
            }
        }
        out
    }

    /// `copied_example`: the instruction repeats one of `examples` (another customer, their ids,
    /// or a long phrase).
    pub fn check_copied(&self, task: &Task, examples: &[Task]) -> Vec<Finding> {
        let text = normalise(&task.instruction);
        let reach = self.reachable(&task.user_id);
        let own: HashSet<String> = self
            .identities(&task.user_id)
            .iter()
            .flat_map(|i| i.values.iter().map(|v| normalise(v)))
            .collect();
        let words: Vec<&str> = text.split(' ').collect();
        let shingles: HashSet<String> = words
            .windows(COPIED_PHRASE_WORDS)
            .map(|w| w.join(" "))
            .collect();
        for (n, e) in examples.iter().enumerate() {
            if e.user_id != task.user_id {
                for i in self.identities(&e.user_id) {
                    let vs: Vec<String> = i.values.iter().map(|v| normalise(v)).collect();
                    if !vs.is_empty()
                        && vs
                            .iter()
                            .all(|v| !own.contains(v) && contains_word(&text, v))
                    {
                        return vec![Finding::new(
                            "ground.copied_example",
                            format!(
                                "the instruction names {} from example {} (customer {}); write it for this customer",
                                i.values.join(", "),
                                n + 1,
                                e.user_id
                            ),
                        )];
                    }
                }
            }
            for a in &e.actions {
                for (_, v) in id_arguments(&a.arguments) {
                    // Where tasks involve other customers (peers), their ids are shown too.
                    let peer = self.peers && self.identities.iter().any(|(id, _)| *id == v);
                    if !peer && !reach.contains(&v) && contains_word(&text, &normalise(&v)) {
                        return vec![Finding::new(
                            "ground.copied_example",
                            format!(
                                "the instruction mentions {v:?} from example {}, which is not this customer's",
                                n + 1
                            ),
                        )];
                    }
                }
            }
            let ew: Vec<String> = normalise(&e.instruction)
                .split(' ')
                .map(str::to_owned)
                .collect();
            if let Some(w) = ew
                .windows(COPIED_PHRASE_WORDS)
                .map(|w| w.join(" "))
                .find(|s| shingles.contains(s))
            {
                return vec![Finding::new(
                    "ground.copied_example",
                    format!(
                        "the instruction copies \"{w}\" from example {}; write a new one in your own words",
                        n + 1
                    ),
                )];
            }
        }
        vec![]
    }

    /// `[grounding] introduce` filled in for `user`: the sentence a customer opens with.
    pub fn introduction(&self, user: &str) -> Option<String> {
        let template = self.domain.manifest.grounding.introduce.as_ref()?;
        let record = self.domain.pristine().record(&self.user_table, user)?;
        let mut missing = false;
        let out = crate::domain::fill_template(template, |path| {
            field(record, user, path).unwrap_or_else(|| {
                missing = true;
                String::new()
            })
        });
        (!missing).then_some(out)
    }

    /// `task` with the customer's introduction put first when its instruction does not say who
    /// they are as a person would (by an identity other than the bare record key, where the
    /// domain has one: a name, an e-mail).
    pub fn introduce(&self, task: &mut Task) {
        let text = normalise(&task.instruction);
        let ids = self.identities(&task.user_id);
        let personal = ids.iter().any(|i| i.spec != RECORD_ID);
        let said = ids.iter().any(|i| {
            (!personal || i.spec != RECORD_ID)
                && !i.values.is_empty()
                && i.values.iter().all(|v| contains_word(&text, &normalise(v)))
        });
        if said {
            return;
        }
        if let Some(intro) = self.introduction(&task.user_id) {
            task.instruction = format!("{intro} {}", task.instruction);
        }
    }

    /// `write_unasked`: a value a write sets (a reason, an amount, a new address line) that the
    /// instruction never states, so no customer following it would ask for that change. Used for
    /// generated blueprints; tau-bench's own instructions often paraphrase such values.
    pub fn check_asked(&self, task: &Task) -> Vec<Finding> {
        self.unasked(task).into_iter().map(|(_, f)| f).collect()
    }

    /// [`check_asked`](Self::check_asked)'s findings, each with the index of its action.
    pub fn unasked(&self, task: &Task) -> Vec<(usize, Finding)> {
        let text = normalise(&task.instruction);
        // What the customer's own record says (their name, zip, status): naming a record by it
        // names every record of theirs.
        let mut own = HashSet::new();
        if let Some(user) = self
            .domain
            .pristine()
            .record(&self.user_table, &task.user_id)
        {
            let mut values = Vec::new();
            crate::blueprint::sampler::string_values(user, &mut values);
            own.extend(values.iter().map(|v| normalise(v)));
        }
        let mut out = Vec::new();
        for (i, a) in task.actions.iter().enumerate() {
            if !self.domain.is_write(&a.name) {
                continue;
            }
            for (key, v) in &a.arguments {
                if id_like(key) {
                    continue;
                }
                let said = value_said(&text, v);
                if !said {
                    out.push((i, Finding::new(
                        "ground.write_unasked",
                        format!(
                            "actions[{i}] {} sets {key} to {v}, which the instruction never asks for: say it in the instruction",
                            a.name
                        ),
                    )));
                }
            }
            // The record a write acts on must be one the instruction refers to: by its id, or by
            // something of it the customer would say (a destination, a product, an owner's
            // name), not merely by what every record of theirs shares.
            // Top-level ids only: the order or reservation acted on, not the items or flights
            // inside it (a new flight is the agent's to find).
            for (key, id) in &a.arguments {
                let Some(id) = id.as_str().filter(|_| id_like(key)) else {
                    continue;
                };
                if id == task.user_id || contains_word(&text, &normalise(id)) {
                    continue;
                }
                let Some(record) = self.record_by_id(id) else {
                    continue;
                };
                if !referred_to(record, &text, &own, &[id, &task.user_id]) {
                    out.push((i, Finding::new(
                        "ground.write_unasked",
                        format!(
                            "actions[{i}] {} acts on {key} {id}, which the instruction never refers to (neither its id nor anything of it): say which one",
                            a.name
                        ),
                    )));
                }
            }
            // The items a write swaps, returns or adds, named by what they are: an id in a
            // list (`item_ids`, `new_item_ids`) that the instruction does not give must be
            // referred to by something of the public record that holds it (the product's name
            // or an option), or the customer cannot ask for it.
            for (key, ids) in &a.arguments {
                let Some(ids) = ids.as_array().filter(|_| id_like(key)) else {
                    continue;
                };
                for id in ids.iter().filter_map(Value::as_str) {
                    if contains_word(&text, &normalise(id)) {
                        continue;
                    }
                    let Some(record) = self.public_record_holding(id) else {
                        continue;
                    };
                    if !referred_to(record, &text, &own, &[]) {
                        out.push((i, Finding::new(
                            "ground.write_unasked",
                            format!(
                                "actions[{i}] {} puts {id} in {key}, which the instruction never names (neither its id nor what it is): say which item",
                                a.name
                            ),
                        )));
                    }
                }
            }
        }
        out
    }

    /// The record of a public table (a catalogue) that holds `id` as a key or a value, at any
    /// depth (the product of a variant).
    fn public_record_holding(&self, id: &str) -> Option<&Value> {
        fn holds(v: &Value, id: &str) -> bool {
            match v {
                Value::String(s) => s == id,
                Value::Array(xs) => xs.iter().any(|x| holds(x, id)),
                Value::Object(m) => m.iter().any(|(k, x)| k == id || holds(x, id)),
                _ => false,
            }
        }
        let db = self.domain.pristine();
        self.domain.manifest.grounding.public.iter().find_map(|t| {
            db.table(t)?
                .iter()
                .map(|(_, r)| r.value())
                .find(|r| holds(r, id))
        })
    }

    /// The record of any table kept under `id`.
    fn record_by_id(&self, id: &str) -> Option<&Value> {
        let db = self.domain.pristine();
        db.table_names().find_map(|t| db.record(t, id))
    }

    /// What the checks found for a task that passed them, in words, for reviewers.
    pub fn explain(&self, task: &Task) -> String {
        let text = normalise(&task.instruction);
        let who = match self.identified(&text, &task.user_id) {
            Some(i) => format!(
                "the instruction identifies customer {} by {} ({})",
                task.user_id,
                i.spec,
                i.values.join(", ")
            ),
            None => format!(
                "the instruction does not identify customer {}",
                task.user_id
            ),
        };
        format!(
            "- {who};\n- every id the write actions use is in the instruction, the customer's data or an earlier action's result;\n- every output is in an action's result or the customer's data (or a sum or count of them)."
        )
    }

    /// Everything but `copied_example`.
    pub fn check(&self, task: &Task, observations: &[String]) -> Vec<Finding> {
        let mut out = self.check_user(task);
        out.extend(self.check_sources(task, observations));
        out
    }
}

/// Whether the (normalised) instruction `text` states `v`: a string or number as it is, a list
/// or an object every string and number in it (those under id-like keys aside: the passengers'
/// names and birth dates, not the flight numbers the agent looks up).
fn value_said(text: &str, v: &Value) -> bool {
    match v {
        Value::String(s) if s.trim().is_empty() => true,
        Value::String(s) => contains_word(text, &normalise(s)),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            [n.to_string(), format!("{x:.2}"), format!("{x}")]
                .iter()
                .any(|t| contains_word(text, t))
        }
        Value::Array(xs) => xs.iter().all(|x| value_said(text, x)),
        Value::Object(m) => m.iter().all(|(k, x)| id_like(k) || value_said(text, x)),
        _ => true,
    }
}

fn identities_of(record: &Value, id: &str, specs: &[Vec<String>]) -> Vec<Identity> {
    specs
        .iter()
        .filter_map(|alt| {
            let values: Option<Vec<String>> = alt
                .iter()
                .map(|part| {
                    let words: Option<Vec<String>> =
                        part.split(' ').map(|p| field(record, id, p)).collect();
                    words.map(|w| w.join(" "))
                })
                .collect();
            values.map(|values| Identity {
                spec: alt.join(" + "),
                values,
            })
        })
        .collect()
}

/// A bare number in an output: `$1,234.50`, `12`, `-3.5`.
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim().trim_start_matches('$').replace(',', "");
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    {
        return None;
    }
    t.parse().ok()
}

fn output_sourced(o: &str, texts: &[String], values: &[Value], public: &HashSet<String>) -> bool {
    let on = normalise(o);
    if on.is_empty() {
        return false;
    }
    if texts.iter().any(|t| contains_word(t, &on)) || public.contains(o) {
        return true;
    }
    let Some(x) = parse_number(o) else {
        return false;
    };
    let near = |y: f64| (x - y).abs() < 0.006;
    let mut pool = Vec::new();
    let mut counts = Vec::new();
    for v in values {
        numbers_into(v, &mut pool);
        counts_into(v, &mut counts);
    }
    if pool.iter().chain(&counts).any(|y| near(*y)) {
        return true;
    }
    pool.sort_by(f64::total_cmp);
    pool.dedup();
    if pool.len() <= 2000 {
        for (i, a) in pool.iter().enumerate() {
            for b in &pool[i + 1..] {
                if near(a + b) || near(b - a) {
                    return true;
                }
            }
        }
    }
    for v in values {
        let mut by_key = std::collections::BTreeMap::new();
        same_key_numbers(v, &mut by_key);
        for xs in by_key.values() {
            if near(xs.iter().sum()) || subset_sum(xs, x, 5) {
                return true;
            }
        }
    }
    false
}

/// Some 2..=k of `xs` sum to `x` (within a cent).
fn subset_sum(xs: &[f64], x: f64, k: usize) -> bool {
    fn go(xs: &[f64], x: f64, left: usize, acc: f64, taken: usize) -> bool {
        if taken >= 2 && (acc - x).abs() < 0.006 {
            return true;
        }
        if left == 0 || xs.is_empty() {
            return false;
        }
        go(&xs[1..], x, left - 1, acc + xs[0], taken + 1) || go(&xs[1..], x, left, acc, taken)
    }
    xs.len() <= 40 && go(xs, x, k, 0.0, 0)
}

/// A set of findings' codes, for summaries.
pub fn codes(findings: &[Finding]) -> BTreeSet<String> {
    findings.iter().map(|f| f.code.clone()).collect()
}

/// Whether the instruction `text` (normalised) refers to `record` by one of its strings of three
/// characters or more that is not also the customer's own (`own`) nor one of `except` (the id
/// the record is kept under, the customer's id).
fn referred_to(record: &Value, text: &str, own: &HashSet<String>, except: &[&str]) -> bool {
    let mut values = Vec::new();
    crate::blueprint::sampler::string_values(record, &mut values);
    let except: Vec<String> = except.iter().map(|e| normalise(e)).collect();
    values.iter().any(|s| {
        let s = normalise(s);
        s.chars().count() >= 3
            && !own.contains(&s)
            && !except.contains(&s)
            && contains_word(text, &s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_at_boundaries() {
        assert!(contains_word(
            "you are yusuf rossi in 19122.",
            "yusuf rossi"
        ));
        assert!(!contains_word("you are yusuf rossiter", "yusuf rossi"));
        assert!(contains_word("order #w2378156 please", "#w2378156"));
        assert!(!contains_word("zip 191223", "19122"));
        assert!(contains_word("(zip 19122)", "19122"));
    }

    #[test]
    fn numbers_and_sums_count_as_sourced() {
        let values =
            vec![serde_json::json!({"items": [{"price": 10.5}, {"price": 2.25}, {"price": 1.0}]})];
        let texts = vec![normalise(&values[0].to_string())];
        let public = HashSet::new();
        assert!(output_sourced("10.5", &texts, &values, &public));
        assert!(output_sourced("$12.75", &texts, &values, &public));
        assert!(output_sourced("13.75", &texts, &values, &public));
        assert!(output_sourced("3", &texts, &values, &public), "a count");
        assert!(!output_sourced("99.99", &texts, &values, &public));
        assert!(!output_sourced(
            "The total is 12.75 dollars.",
            &texts,
            &values,
            &public
        ));
    }

    #[test]
    fn id_arguments_reach_into_arrays_and_objects() {
        let args = serde_json::json!({"order_id": "#W1", "item_ids": ["1", "2"], "flights": [{"flight_number": "HAT1", "date": "2024-05-01"}], "reason": "x"});
        let got = id_arguments(args.as_object().unwrap());
        let keys: Vec<&str> = got
            .iter()
            .map(|(k, v)| {
                if k == "item_ids" {
                    v.as_str()
                } else {
                    k.as_str()
                }
            })
            .collect();
        // Argument order as written (serde_json keeps insertion order here).
        assert_eq!(keys, vec!["order_id", "1", "2", "flight_number"]);
    }
}
