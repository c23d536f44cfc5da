//! The phase-1 loop: sample a context, propose, check (stage 1), review (stage 2), accept or
//! feed the failure back and revise (stage 3); then recombine accepted blueprints of the same
//! user into longer ones.
//!
//! Items are processed in order, each with its own seeded generator, so a run is reproducible.
//! An item is the unit of durability: its rejections, its blueprint (if accepted) and finally its
//! line in `items.jsonl` are appended when it ends; on restart, records of an item without that
//! line are discarded and the item is redone, giving the same accepted set as an uninterrupted run.

use super::Rejection;
use super::check::{self, Dedup, Executed};
use super::committee::{self, Review, Threshold, Verdict};
use super::plan::{self, PlanMode};
use super::prompt::{self, Context};
use super::sampler::{self, ApiGraph, Mix, Persona};
use crate::domain::Domain;
use crate::domain::diff::Edit;
use crate::domain::ground::Grounder;
use crate::domain::task::{Action, Task};
use crate::llm::{Constraint, Conversation, Message};
use crate::role::Meter;
use crate::run::order::{Cancel, Flow, Plan, run_in_order};
use crate::run::{JsonlLog, RunError, files, open_side_log};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use crate::role::Role;

/// Settings of a blueprint run (mirrored by the command-line flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Stop early once this many blueprints are accepted.
    pub count: usize,
    pub seed: u64,
    /// Proposals per item, the first included (the paper: 3 retail, 5 airline).
    pub max_turns: usize,
    pub threshold: Threshold,
    /// Characters of database records shown to the proposer, at most.
    pub data_budget: usize,
    /// Recombined blueprints to make after the items are done.
    pub recombine: usize,
    /// Items (tasks) to attempt; each gets up to `max_turns` proposals.
    pub max_items: usize,
    /// The table of customers.
    pub user_table: String,
    /// Sample only these customers (empty: all of the table).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_users: Vec<String>,
    /// How the proposer uses a sampled executable plan.
    #[serde(default = "plan_none")]
    pub plan: PlanMode,
    /// Item `i` sees the blueprints accepted by items before `i - view_lag` only (as examples
    /// and for duplicate checks), so that up to `view_lag + 1` items can run at once and the
    /// run is the same at any concurrency. 0: every item sees all before it, one at a time.
    #[serde(default = "default_view_lag")]
    pub view_lag: usize,
}

/// The default [`Settings::view_lag`]: as many items as the engine decodes together.
pub const VIEW_LAG: usize = 16;

fn default_view_lag() -> usize {
    VIEW_LAG
}

/// Customers drawn for an item before giving up on a plan (the item then has none).
const PLAN_USER_DRAWS: usize = 5;

fn plan_none() -> PlanMode {
    PlanMode::None
}

/// An accepted blueprint as written to `blueprints.jsonl`: a tau-bench task plus provenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlueprintRecord {
    pub id: String,
    pub user_id: String,
    pub instruction: String,
    pub actions: Vec<Value>,
    pub outputs: Vec<String>,
    pub diff: Vec<Edit>,
    pub reviews: Vec<Review>,
    pub verdict: Verdict,
    pub attempts: usize,
    pub context: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recombined_from: Vec<String>,
}

impl BlueprintRecord {
    /// The tau-bench task this record is.
    pub fn task(&self) -> Task {
        Task {
            user_id: self.user_id.clone(),
            instruction: self.instruction.clone(),
            actions: self
                .actions
                .iter()
                .filter_map(|a| Action::from_json(a).ok())
                .collect(),
            outputs: self.outputs.clone(),
            extra: Map::new(),
        }
    }
}

/// One rejection, as written to `rejected.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedRecord {
    pub id: String,
    pub attempt: usize,
    pub code: String,
    pub detail: String,
    /// The proposal that was rejected (the model's raw answer), for analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
}

/// What one item did, as written to `items.jsonl` (its commit record).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ItemRecord {
    pub id: String,
    pub accepted: bool,
    pub funnel: Funnel,
    /// Tokens per stage (see [`Meter`]).
    pub tokens: BTreeMap<String, usize>,
    pub seconds: BTreeMap<String, f64>,
}

/// The stages a proposal passed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Funnel {
    pub proposed: usize,
    pub format_ok: usize,
    pub executed: usize,
    pub policy_ok: usize,
    /// Passed the grounding checks (`ground.*`).
    #[serde(default)]
    pub grounded: usize,
    pub committee_ok: usize,
    pub accepted: usize,
    /// Outputs of fixed-plan proposals dropped because the instruction never asks about them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outputs_dropped: usize,
    /// Request lines of the brief added to fixed-plan instructions that left a write unasked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requests_added: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Funnel {
    fn add(&mut self, o: &Funnel) {
        self.proposed += o.proposed;
        self.format_ok += o.format_ok;
        self.executed += o.executed;
        self.policy_ok += o.policy_ok;
        self.grounded += o.grounded;
        self.committee_ok += o.committee_ok;
        self.accepted += o.accepted;
        self.outputs_dropped += o.outputs_dropped;
        self.requests_added += o.requests_added;
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub domain: String,
    /// Tasks to attempt.
    pub target: usize,
    pub accepted: usize,
    pub recombined: usize,
    pub items: usize,
    pub funnel: Funnel,
    pub rejections: BTreeMap<String, usize>,
    pub tokens: BTreeMap<String, usize>,
    pub seconds: BTreeMap<String, f64>,
    pub complete: bool,
}

/// Everything the loop needs.
pub struct Pipeline<'d> {
    pub domain: &'d Domain,
    pub proposer: Role,
    pub reviewers: Vec<Role>,
    pub summariser: Role,
    pub settings: Settings,
    pub graph: ApiGraph,
    pub personas: Vec<Persona>,
    /// Well-formed example tasks (the domain's non-test tasks).
    pub examples: Vec<Task>,
    /// The grounding checks, built once for the domain.
    pub grounder: Grounder<'d>,
    /// Items in flight at once (at most `view_lag + 1` run together).
    pub concurrency: usize,
}

/// A phase-1 item's id.
fn item_id(index: usize) -> String {
    format!("bp-{index:05}")
}

/// The index of an item's id (`None` for recombined blueprints).
fn item_index(id: &str) -> Option<usize> {
    id.strip_prefix("bp-")?.parse().ok()
}

/// Conversations whose cache holds the reviewers' system prompt (the domain's policy), one per
/// reviewer model, made once per run: every committee starts from a clone, so the policy is
/// processed once and not once per item.
#[derive(Default)]
struct Primed {
    reviewers: Vec<(usize, Conversation)>,
}

impl Primed {
    /// A conversation to start a committee on `backend` from.
    fn reviewer(&self, backend: usize) -> Conversation {
        self.reviewers
            .iter()
            .find(|(k, _)| *k == backend)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
}

/// Which model a role runs on (roles on one model share caches).
fn backend_key(role: &Role) -> usize {
    std::sync::Arc::as_ptr(&role.backend) as *const () as usize
}

/// What the commit side of a run holds: the open files, the duplicate check over everything
/// committed, the summary.
struct Journal {
    files: Files,
    dedup: Dedup,
    summary: Summary,
}

struct ItemState {
    record: ItemRecord,
    rejected: Vec<RejectedRecord>,
    /// The item's model calls and checks; its record's tokens and seconds when it commits.
    meter: Meter,
}

impl ItemState {
    fn new(id: &str) -> Self {
        ItemState {
            record: ItemRecord {
                id: id.into(),
                ..Default::default()
            },
            rejected: vec![],
            meter: Meter::default(),
        }
    }
    fn reject(&mut self, attempt: usize, r: &Rejection) {
        self.rejected.push(RejectedRecord {
            id: self.record.id.clone(),
            attempt,
            code: r.code.clone(),
            detail: r.detail.clone(),
            proposal: None,
        });
    }

    fn reject_proposal(&mut self, attempt: usize, r: &Rejection, raw: &str) {
        self.reject(attempt, r);
        let cut: String = raw.chars().take(4000).collect();
        self.rejected.last_mut().expect("just pushed").proposal = Some(cut);
    }
    /// Ask `role` on behalf of `stage` (its tokens and seconds counted on this item), under
    /// `schema` if any; the raw reply.
    fn ask(
        &mut self,
        role: &Role,
        stage: &str,
        conv: &mut Conversation,
        messages: Vec<Message>,
        schema: Option<Value>,
        seed: u64,
    ) -> Result<String, String> {
        let mut req = role.request(messages, seed);
        req.constraint = schema.map(Constraint::JsonSchema);
        Ok(role.ask(&mut self.meter, stage, conv, &req)?.raw)
    }
    fn time(&mut self, stage: &str, since: Instant) {
        self.meter.time(stage, since);
    }
}

/// The files of a run directory, opened for appending, with what they already hold.
struct Files {
    blueprints: JsonlLog,
    rejected: JsonlLog,
    items: JsonlLog,
    accepted: Vec<BlueprintRecord>,
    done: Vec<ItemRecord>,
    rejections: Vec<RejectedRecord>,
}

impl Files {
    /// Open the logs and drop records of items that never committed.
    fn open(out: &Path) -> Result<Files, RunError> {
        let (items, done) = JsonlLog::open::<ItemRecord>(&out.join(files::ITEMS))?;
        let committed: std::collections::HashSet<String> =
            done.iter().map(|i| i.id.clone()).collect();
        let (blueprints, accepted) =
            open_side_log(&out.join(files::BLUEPRINTS), |b: &BlueprintRecord| {
                committed.contains(&b.id)
            })?;
        let (rejected, rejections) =
            open_side_log(&out.join(files::REJECTED), |r: &RejectedRecord| {
                committed.contains(&r.id)
            })?;
        Ok(Files {
            blueprints,
            rejected,
            items,
            accepted,
            done,
            rejections,
        })
    }

    fn commit(
        &mut self,
        state: ItemState,
        blueprint: Option<BlueprintRecord>,
    ) -> Result<(), RunError> {
        for r in &state.rejected {
            self.rejected.append(r)?;
        }
        if let Some(b) = &blueprint {
            self.blueprints.append(b)?;
        }
        let mut record = state.record;
        record.tokens = state.meter.tokens;
        record.seconds = state.meter.seconds;
        self.items.append(&record)?;
        self.rejections.extend(state.rejected);
        self.accepted.extend(blueprint);
        self.done.push(record);
        Ok(())
    }
}

impl<'d> Pipeline<'d> {
    /// Run (or resume) into `out`: attempt `max_items` items (stopping early once `count` are
    /// accepted), then make up to `recombine` recombined blueprints, calling `progress` after
    /// every item.
    ///
    /// Up to `concurrency` items run at once, committed in id order. Item `i` sees (as examples
    /// and for duplicate checks) the blueprints accepted by items before `i - view_lag` only,
    /// so it starts once those are committed and its view is the same at any concurrency; a
    /// duplicate of a blueprint accepted by one of the `view_lag` items just before it is
    /// rejected when it is committed.
    pub fn run(&self, out: &Path, mut progress: impl FnMut(&Summary)) -> Result<Summary, RunError> {
        let files = Files::open(out)?;
        let mut dedup = Dedup::default();
        for b in &files.accepted {
            let _ = dedup.insert(&b.task());
        }
        let summary = self.summarise(&files);
        progress(&summary);
        let mut journal = Journal {
            files,
            dedup,
            summary,
        };
        let done: std::collections::HashSet<&str> =
            journal.files.done.iter().map(|d| d.id.as_str()).collect();
        let todo: Vec<usize> = (0..self.settings.max_items)
            .filter(|i| !done.contains(item_id(*i).as_str()))
            .collect();
        drop(done);
        let lag = self.settings.view_lag;
        let primed = if journal.summary.accepted < self.settings.count && !todo.is_empty()
            || self.settings.recombine > journal.summary.recombined
        {
            self.prime_reviewers()
        } else {
            Primed::default()
        };
        if journal.summary.accepted < self.settings.count {
            let name = |u: usize| item_id(todo[u]);
            run_in_order(
                Plan {
                    units: todo.len(),
                    workers: self.concurrency,
                    window: Some(lag),
                    name: &name,
                },
                &mut journal,
                |j, u| {
                    let i = todo[u];
                    let view: Vec<BlueprintRecord> = j
                        .files
                        .accepted
                        .iter()
                        .filter(|b| item_index(&b.id).is_some_and(|k| k + lag < i))
                        .cloned()
                        .collect();
                    view
                },
                |u, view, cancel| {
                    let mut dedup = Dedup::default();
                    for b in &view {
                        let _ = dedup.insert(&b.task());
                    }
                    self.item(&item_id(todo[u]), &view, &dedup, &primed, cancel)
                },
                |j, _, (state, blueprint)| {
                    j.summary =
                        self.finish_item(out, &mut j.files, &mut j.dedup, state, blueprint)?;
                    progress(&j.summary);
                    Ok(if j.summary.accepted >= self.settings.count {
                        Flow::Stop
                    } else {
                        Flow::Go
                    })
                },
            )?;
        }
        let Journal {
            mut files,
            mut dedup,
            mut summary,
        } = journal;
        let mut r = files
            .done
            .iter()
            .filter(|i| i.id.starts_with("rc-"))
            .count();
        let mut tries = 0;
        while summary.recombined < self.settings.recombine && tries < self.settings.recombine * 10 {
            let id = format!("rc-{r:05}");
            r += 1;
            tries += 1;
            let Some((state, blueprint)) = self.recombine(&id, &files.accepted, &dedup, &primed)
            else {
                break;
            };
            let _held = crate::run::committing();
            summary = self.finish_item(out, &mut files, &mut dedup, state, blueprint)?;
            progress(&summary);
        }
        summary.complete = true;
        self.write_summary(out, &summary)?;
        files.blueprints.sync()?;
        files.rejected.sync()?;
        files.items.sync()?;
        Ok(summary)
    }

    /// Commit an item's records and refresh the summary on disk. A blueprint that repeats one
    /// committed since the item's view was taken is rejected here.
    fn finish_item(
        &self,
        out: &Path,
        files: &mut Files,
        dedup: &mut Dedup,
        mut state: ItemState,
        mut blueprint: Option<BlueprintRecord>,
    ) -> Result<Summary, RunError> {
        if let Some(b) = &blueprint
            && let Err(r) = dedup.check(&b.task())
        {
            state.reject(b.attempts, &r);
            state.record.accepted = false;
            state.record.funnel.accepted = state.record.funnel.accepted.saturating_sub(1);
            blueprint = None;
        }
        if let Some(b) = &blueprint {
            let _ = dedup.insert(&b.task());
        }
        files.commit(state, blueprint)?;
        let summary = self.summarise(files);
        self.write_summary(out, &summary)?;
        Ok(summary)
    }

    fn write_summary(&self, out: &Path, summary: &Summary) -> Result<(), RunError> {
        crate::run::merge_summary(out, &serde_json::to_value(summary).unwrap_or_default())
    }

    fn summarise(&self, files: &Files) -> Summary {
        let mut s = Summary {
            domain: self.domain.name().into(),
            target: self.settings.max_items,
            items: files.done.len(),
            ..Default::default()
        };
        for i in &files.done {
            s.funnel.add(&i.funnel);
            for (k, v) in &i.tokens {
                *s.tokens.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &i.seconds {
                *s.seconds.entry(k.clone()).or_default() += v;
            }
        }
        for r in &files.rejections {
            *s.rejections.entry(r.code.clone()).or_default() += 1;
        }
        s.recombined = files
            .accepted
            .iter()
            .filter(|b| !b.recombined_from.is_empty())
            .count();
        s.accepted = files.accepted.len() - s.recombined;
        s
    }

    /// Other customers' records shown beside this one's (`[blueprints] peers` of them).
    fn draw_user(&self, rng: &mut impl Rng) -> Option<String> {
        if self.settings.only_users.is_empty() {
            sampler::sample_user(self.domain, &self.settings.user_table, rng)
        } else {
            let i = rng.random_range(0..self.settings.only_users.len());
            Some(self.settings.only_users[i].clone())
        }
    }

    fn peer_records(&self, user: &str, rng: &mut impl Rng) -> Vec<(String, Value)> {
        let n = self.domain.manifest.blueprints.peers;
        let Some(table) = self.domain.pristine().table(&self.settings.user_table) else {
            return vec![];
        };
        if n == 0 {
            return vec![];
        }
        let others: Vec<(&String, &Arc<crate::domain::db::Record>)> =
            table.iter().filter(|(id, _)| *id != user).collect();
        sampler::sample_k(&others, n, rng)
            .into_iter()
            .map(|(id, r)| ((*id).clone(), r.value().clone()))
            .collect()
    }

    /// Sample the context of one item.
    fn context(
        &self,
        rng: &mut impl Rng,
        accepted: &[BlueprintRecord],
        dedup: &Dedup,
    ) -> Option<(Context, Mix)> {
        let mix = Mix::draw(rng, self.settings.data_budget);
        let tools = self.graph.walk(rng, mix.writes, mix.feeder_depth);
        let mut user = self.draw_user(rng)?;
        // With plans, a customer with nothing to change (no open orders, a frozen account) is
        // redrawn, a few times, and so is a plan this customer already has a blueprint of (its
        // proposals could only be duplicates).
        let mut plan_drawn = None;
        if self.settings.plan != PlanMode::None {
            for _ in 0..PLAN_USER_DRAWS {
                let peers = self.peer_records(&user, rng);
                let values: Vec<Value> = peers.iter().map(|p| p.1.clone()).collect();
                plan_drawn = plan::sample(self.domain, &user, &values, mix.writes, rng)
                    .filter(|p| {
                        self.settings.plan != PlanMode::Fixed
                            || dedup
                                .check(&Task {
                                    user_id: user.clone(),
                                    instruction: String::new(),
                                    actions: p.actions.clone(),
                                    outputs: vec![],
                                    extra: Default::default(),
                                })
                                .is_ok()
                    })
                    .map(|p| (p, peers));
                if plan_drawn.is_some() {
                    break;
                }
                user = self.draw_user(rng)?;
            }
        }
        let mut data = sampler::user_context(
            self.domain,
            &self.settings.user_table,
            &user,
            2,
            mix.data_budget,
        )?;
        let peers = match &plan_drawn {
            Some((_, peers)) => peers.clone(),
            None => self.peer_records(&user, rng),
        };
        for (id, record) in peers {
            data.records
                .push((self.settings.user_table.clone(), id, record));
        }
        let persona = if mix.persona && !self.personas.is_empty() {
            Some(self.personas[rng.random_range(0..self.personas.len())].clone())
        } else {
            None
        };
        let mut pool: Vec<Task> = self.examples.clone();
        pool.extend(accepted.iter().map(|b| b.task()));
        let examples: Vec<Task> = sampler::sample_k(&pool, mix.examples, rng)
            .into_iter()
            .cloned()
            .collect();
        let plan = plan_drawn.map(|(p, _)| p);
        // A small proposer copies examples' customers and sentences; a fixed plan is anchor
        // enough, so it comes without them.
        let examples = if plan.is_some() && self.settings.plan == PlanMode::Fixed {
            vec![]
        } else {
            examples
        };
        let mut tools = tools;
        if let Some(p) = &plan {
            // The plan's tools first, then the walk's others (suggest mode may extend it).
            let mut ts: Vec<String> = Vec::new();
            for a in &p.actions {
                if !ts.contains(&a.name) {
                    ts.push(a.name.clone());
                }
            }
            for t in tools {
                if !ts.contains(&t) {
                    ts.push(t);
                }
            }
            tools = ts;
        }
        let fixed = plan.is_some() && self.settings.plan == PlanMode::Fixed;
        let (requests, answers) = match (&plan, fixed) {
            (Some(p), true) => (
                super::brief::requests(self.domain, p),
                super::brief::answers(
                    self.domain,
                    p,
                    &self
                        .grounder
                        .introduction(&data.user_id)
                        .unwrap_or_default(),
                ),
            ),
            _ => (vec![], vec![]),
        };
        Some((
            Context {
                tools,
                data,
                persona,
                examples,
                plan,
                fixed,
                requests,
                answers,
            },
            mix,
        ))
    }

    /// Cache the reviewers' system prompt, once per reviewer model (a model that cannot is
    /// left to process it per committee).
    fn prime_reviewers(&self) -> Primed {
        let mut primed = Primed::default();
        let system = prompt::reviewer_system(self.domain);
        for role in &self.reviewers {
            let key = backend_key(role);
            if primed.reviewers.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let mut conv = Conversation::new();
            let req = role.request(vec![Message::system(system.clone())], 0);
            if role.backend.prime(&mut conv, &req).is_ok() {
                primed.reviewers.push((key, conv));
            }
        }
        primed
    }

    fn review(
        &self,
        state: &mut ItemState,
        task: &Task,
        diff: &[Edit],
        primed: &Primed,
        rng: &mut impl Rng,
    ) -> Vec<Review> {
        let report = self.grounder.explain(task);
        // Reviewers on the same model read the same prompt: later ones start from the first one's
        // cache, so the prompt is processed once per committee.
        let mut first: Option<(usize, Conversation)> = None;
        let mut reviews = Vec::with_capacity(self.reviewers.len());
        for (k, role) in self.reviewers.iter().enumerate() {
            crate::run::progress::doing(format!("committee {}/{}", k + 1, self.reviewers.len()));
            let key = backend_key(role);
            let mut conv = match &first {
                Some((k, c)) if *k == key => c.clone(),
                _ => primed.reviewer(key),
            };
            let messages = vec![
                Message::system(prompt::reviewer_system(self.domain)),
                Message::user(prompt::reviewer_user(self.domain, task, diff, &report)),
            ];
            reviews.push(
                match state.ask(
                    role,
                    "reviewers",
                    &mut conv,
                    messages,
                    Some(prompt::review_schema()),
                    rng.random(),
                ) {
                    Ok(raw) => Review::parse(&role.name, &raw),
                    Err(e) => Review::unreadable(&role.name, &e),
                },
            );
            if first.is_none() {
                first = Some((key, conv));
            }
        }
        reviews
    }

    fn feedback(
        &self,
        state: &mut ItemState,
        task: &Task,
        diff: &[Edit],
        reviews: &[Review],
        rng: &mut impl Rng,
    ) -> String {
        crate::run::progress::doing("feedback for a revision");
        let reviews_json: Vec<Value> = reviews
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        let messages = vec![Message::user(prompt::summariser_user(
            task,
            diff,
            &reviews_json,
        ))];
        let text = match state.ask(
            &self.summariser,
            "summariser",
            &mut Conversation::new(),
            messages,
            None,
            rng.random(),
        ) {
            Ok(raw) => raw.trim().to_owned(),
            Err(_) => String::new(),
        };
        if text.is_empty() {
            reviews
                .iter()
                .filter(|r| !r.correction.is_empty())
                .map(|r| r.correction.clone())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            text
        }
    }

    /// One item: up to `max_turns` proposals, each checked and reviewed.
    fn item(
        &self,
        id: &str,
        accepted: &[BlueprintRecord],
        dedup: &Dedup,
        primed: &Primed,
        cancel: &Cancel,
    ) -> (ItemState, Option<BlueprintRecord>) {
        let mut state = ItemState::new(id);
        let mut rng = sampler::rng_for(self.settings.seed, id);
        let Some((ctx, mix)) = self.context(&mut rng, accepted, dedup) else {
            state.reject(
                0,
                &Rejection::new(
                    "context.no_user",
                    format!("table `{}` has no records", self.settings.user_table),
                ),
            );
            return (state, None);
        };
        let schema = if ctx.fixed && ctx.plan.is_some() {
            prompt::fixed_plan_schema(&ctx.answers)
        } else {
            prompt::blueprint_schema(self.domain, &ctx.tools)
        };
        let mut feedback_given: Vec<String> = Vec::new();
        let mut messages = vec![
            Message::system(prompt::proposer_system(self.domain)),
            Message::user(prompt::proposer_user(self.domain, &ctx)),
        ];
        let mut conv = Conversation::new();
        for turn in 1..=self.settings.max_turns.max(1) {
            if cancel.cancelled() {
                break;
            }
            crate::run::progress::doing(format!(
                "proposal {turn}/{}",
                self.settings.max_turns.max(1)
            ));
            // Revisions sample hotter, so a small model does not copy the answer it is revising.
            let mut proposer = self.proposer.clone();
            proposer.temperature = (proposer.temperature + 0.3 * (turn - 1) as f32).min(1.2);
            let answer = state.ask(
                &proposer,
                "proposer",
                &mut conv,
                messages.clone(),
                Some(schema.clone()),
                rng.random(),
            );
            state.record.funnel.proposed += 1;
            let raw = match answer {
                Ok(raw) => raw,
                Err(e) => {
                    state.reject(turn, &Rejection::new("model.error", e));
                    break;
                }
            };
            let outcome = self.check(
                &mut state,
                turn,
                &raw,
                &ctx,
                dedup,
                primed,
                &feedback_given,
                &mut rng,
            );
            let feedback = match outcome {
                Ok((task, executed, reviews, verdict)) => {
                    state.record.funnel.accepted += 1;
                    state.record.accepted = true;
                    let context = json!({
                        "tools": ctx.tools, "persona": ctx.persona.as_ref().map(|p| p.id.clone()),
                        "examples": ctx.examples.len(), "records": ctx.data.records.iter().map(|r| format!("{}/{}", r.0, r.1)).collect::<Vec<_>>(),
                        "mix": mix,
                        "plan": ctx.plan.as_ref().map(|p| json!({"actions": p.actions, "writes": p.writes, "mode": self.settings.plan})),
                    });
                    return (
                        state,
                        Some(record(
                            id,
                            &task,
                            executed.diff,
                            reviews,
                            verdict,
                            turn,
                            context,
                            vec![],
                        )),
                    );
                }
                Err(feedback) => feedback,
            };
            feedback_given.push(feedback.clone());
            messages.push(Message::assistant(raw));
            messages.push(Message::user(prompt::revise_user(&feedback)));
        }
        (state, None)
    }

    /// Stage 1 then the committee; `Err` is the feedback for a revision.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn check(
        &self,
        state: &mut ItemState,
        turn: usize,
        raw: &str,
        ctx: &Context,
        dedup: &Dedup,
        primed: &Primed,
        feedback_given: &[String],
        rng: &mut impl Rng,
    ) -> Result<(Task, Executed, Vec<Review>, Verdict), String> {
        let fail = |state: &mut ItemState, rs: Vec<Rejection>| {
            for r in &rs {
                state.reject_proposal(turn, r, raw);
            }
            Err(rs
                .iter()
                .map(|r| format!("- [{}] {}", r.code, r.detail))
                .collect::<Vec<_>>()
                .join("\n"))
        };
        let started = Instant::now();
        let parsed = crate::guard::catch(|| match (&ctx.plan, ctx.fixed) {
            (Some(p), true) => check::parse_with_actions(raw, &ctx.data.user_id, &p.actions),
            _ => check::parse(raw, &ctx.data.user_id),
        })
        .unwrap_or_else(|panic| {
            Err(crate::blueprint::Rejection::new(
                "format.reader_failed",
                format!("the blueprint reader failed on this answer: {panic}"),
            ))
        });
        let task = match parsed {
            Ok(mut t) => {
                // A planned blueprint's customer says who they are as the domain spells it.
                if ctx.plan.is_some() {
                    self.grounder.introduce(&mut t);
                }
                // A fixed plan's write that the instruction leaves unasked (its target never
                // named, a value never said) gets the brief's own request line for it, which
                // names both: the plan is the task, and the line says what it does.
                if ctx.fixed && t.actions.len() == ctx.plan.as_ref().map_or(0, |p| p.actions.len())
                {
                    let unasked: std::collections::BTreeSet<usize> = self
                        .grounder
                        .unasked(&t)
                        .into_iter()
                        .map(|(i, _)| i)
                        .collect();
                    let writes: Vec<usize> = (0..t.actions.len())
                        .filter(|&i| self.domain.is_write(&t.actions[i].name))
                        .collect();
                    for (k, i) in writes.iter().enumerate() {
                        let due = ctx.requests.get(k).filter(|line| {
                            unasked.contains(i) && !t.instruction.contains(line.as_str())
                        });
                        if let Some(line) = due {
                            t.instruction = format!("{} {line}", t.instruction.trim_end());
                            state.record.funnel.requests_added += 1;
                        }
                    }
                }
                // An output the customer never asks about is not the task's: dropped, counted.
                if ctx.fixed {
                    let unasked = super::brief::unasked(&t.instruction, &t.outputs, &ctx.answers);
                    let before = t.outputs.len();
                    t.outputs.retain(|o| !unasked.contains(o));
                    state.record.funnel.outputs_dropped += before - t.outputs.len();
                }
                t
            }
            Err(r) => return fail(state, vec![r]),
        };
        state.record.funnel.format_ok += 1;
        let executed = match check::execute(self.domain, &task) {
            Ok(e) => e,
            Err(r) => return fail(state, vec![r]),
        };
        state.record.funnel.executed += 1;
        let mut violations = check::policy(self.domain, &task);
        if violations.is_empty() {
            violations.extend(dedup.check(&task).err());
        }
        if !violations.is_empty() {
            state.time("checks", started);
            return fail(state, violations);
        }
        state.record.funnel.policy_ok += 1;
        let mut findings = self.grounder.check(&task, &executed.observations);
        findings.extend(self.grounder.check_copied(&task, &ctx.examples));
        findings.extend(self.grounder.check_asked(&task));
        findings.extend(check::feedback_in_instruction(&task, feedback_given));
        findings.extend(check::instruction_off_role(&task));
        findings.extend(check::instruction_garbled(&task));
        findings.extend(check::copied_policy(&task, &self.domain.policy));
        state.time("checks", started);
        if !findings.is_empty() {
            let rs = findings
                .into_iter()
                .map(|f| Rejection::new(f.code, f.detail))
                .collect();
            return fail(state, rs);
        }
        state.record.funnel.grounded += 1;
        let reviews = self.review(state, &task, &executed.diff, primed, rng);
        let verdict = committee::verdict(&reviews, &self.settings.threshold);
        if !verdict.accepted {
            let feedback = self.feedback(state, &task, &executed.diff, &reviews, rng);
            let votes: Vec<String> = reviews
                .iter()
                .map(|r| format!("{}:{}", r.reviewer, r.total))
                .collect();
            state.reject_proposal(
                turn,
                &Rejection::new(
                    "committee.rejected",
                    format!("totals {}; {feedback}", votes.join(" ")),
                ),
                raw,
            );
            return Err(format!("- [committee.rejected] {feedback}"));
        }
        state.record.funnel.committee_ok += 1;
        Ok((task, executed, reviews, verdict))
    }

    /// Combine 2–3 accepted blueprints of one user into one longer task.
    fn recombine(
        &self,
        id: &str,
        accepted: &[BlueprintRecord],
        dedup: &Dedup,
        primed: &Primed,
    ) -> Option<(ItemState, Option<BlueprintRecord>)> {
        let mut by_user: BTreeMap<&str, Vec<&BlueprintRecord>> = BTreeMap::new();
        for b in accepted.iter().filter(|b| b.recombined_from.is_empty()) {
            by_user.entry(&b.user_id).or_default().push(b);
        }
        let groups: Vec<Vec<&BlueprintRecord>> =
            by_user.into_values().filter(|g| g.len() >= 2).collect();
        if groups.is_empty() {
            return None;
        }
        let mut rng = sampler::rng_for(self.settings.seed, id);
        let group = &groups[rng.random_range(0..groups.len())];
        let k = rng.random_range(2..=group.len().min(3));
        let parts: Vec<&BlueprintRecord> = sampler::sample_k(group, k, &mut rng)
            .into_iter()
            .copied()
            .collect();
        let mut state = ItemState::new(id);
        state.record.funnel.proposed += 1;
        let tasks: Vec<Task> = parts.iter().map(|p| p.task()).collect();
        let mut combined = Task {
            user_id: tasks[0].user_id.clone(),
            instruction: String::new(),
            actions: tasks.iter().flat_map(|t| t.actions.clone()).collect(),
            outputs: tasks.iter().flat_map(|t| t.outputs.clone()).collect(),
            extra: Map::new(),
        };
        state.record.funnel.format_ok += 1;
        let executed = match check::execute(self.domain, &combined) {
            Ok(e) => e,
            Err(r) => {
                state.reject(1, &r);
                return Some((state, None));
            }
        };
        state.record.funnel.executed += 1;
        let mut violations = check::policy(self.domain, &combined);
        if violations.is_empty() {
            violations.extend(dedup.check(&combined).err());
        }
        if !violations.is_empty() {
            violations.iter().for_each(|r| state.reject(1, r));
            return Some((state, None));
        }
        state.record.funnel.policy_ok += 1;
        let messages = vec![
            Message::system(prompt::proposer_system(self.domain)),
            Message::user(prompt::recombine_user(&tasks)),
        ];
        let answer = state.ask(
            &self.proposer,
            "proposer",
            &mut Conversation::new(),
            messages,
            Some(prompt::instruction_schema()),
            rng.random(),
        );
        let instruction = match answer.map(|raw| {
            check::extract_object(&raw).and_then(|v| v["instruction"].as_str().map(str::to_owned))
        }) {
            Ok(Some(i)) if !i.trim().is_empty() => i,
            Ok(_) => {
                state.reject(
                    1,
                    &Rejection::new(
                        "format.missing_field",
                        "the combined instruction is missing",
                    ),
                );
                return Some((state, None));
            }
            Err(e) => {
                state.reject(1, &Rejection::new("model.error", e));
                return Some((state, None));
            }
        };
        combined.instruction = instruction;
        let findings = self.grounder.check(&combined, &executed.observations);
        if !findings.is_empty() {
            for f in findings {
                state.reject(1, &Rejection::new(f.code, f.detail));
            }
            return Some((state, None));
        }
        state.record.funnel.grounded += 1;
        let reviews = self.review(&mut state, &combined, &executed.diff, primed, &mut rng);
        let verdict = committee::verdict(&reviews, &self.settings.threshold);
        if !verdict.accepted {
            let votes: Vec<String> = reviews
                .iter()
                .map(|r| format!("{}:{}", r.reviewer, r.total))
                .collect();
            state.reject(
                1,
                &Rejection::new("committee.rejected", format!("totals {}", votes.join(" "))),
            );
            return Some((state, None));
        }
        state.record.funnel.committee_ok += 1;
        state.record.funnel.accepted += 1;
        state.record.accepted = true;
        let from: Vec<String> = parts.iter().map(|p| p.id.clone()).collect();
        let context = json!({"recombined": from});
        Some((
            state,
            Some(record(
                id,
                &combined,
                executed.diff,
                reviews,
                verdict,
                1,
                context,
                from,
            )),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    id: &str,
    task: &Task,
    diff: Vec<Edit>,
    reviews: Vec<Review>,
    verdict: Verdict,
    attempts: usize,
    context: Value,
    from: Vec<String>,
) -> BlueprintRecord {
    BlueprintRecord {
        id: id.into(),
        user_id: task.user_id.clone(),
        instruction: task.instruction.clone(),
        actions: task
            .actions
            .iter()
            .map(|a| json!({"name": a.name, "arguments": a.arguments}))
            .collect(),
        outputs: task.outputs.clone(),
        diff,
        reviews,
        verdict,
        attempts,
        context,
        recombined_from: from,
    }
}
