//! `apigen-mt rollouts` (phase 2 on a run's blueprints) and `apigen-mt generate` (phase 1 then
//! phase 2 in one run directory).

use super::Models;
use super::blueprints::BlueprintsArgs;
use crate::cli::load::LoadArgs;
use crate::domain::Domain;
use crate::domain::task::{Task, read_tasks};
use crate::llm::profile::ModelRole;
use crate::role::Role;
use crate::rollout::run::{RolloutSummary, Rollouts, Settings};
use crate::rollout::{AgentRole, UserRole, UserStrategy, UserView};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The agent and simulated-user settings shared by `rollouts`, `generate` and `eval`.
#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    /// The agent model (profile name or file; default: the profile that is `default_for`
    /// agent, qwen2.5-coder-1.5b as shipped).
    #[arg(long, value_name = "M", alias = "agent-model")]
    pub agent: Option<String>,
    /// The simulated user's model (default: the profile that is `default_for` user,
    /// qwen2.5-coder-1.5b as shipped).
    #[arg(long, value_name = "M", alias = "user-model")]
    pub user: Option<String>,
    /// How the user picks each line: one sample (`plain`, tau-bench's user) or the best of
    /// --user-n samples by a judge's 0–10 score (`best-of-n`, APIGen-MT's).
    #[arg(long, value_enum, default_value_t = UserStrategy::Plain)]
    pub user_strategy: UserStrategy,
    /// How the user model sees the conversation: `tau-bench` (its prompt, the agent's lines as
    /// user turns) or `transcript` (a customer prompt and the conversation as one transcript to
    /// continue; keeps small user models in the customer's role). Default: transcript for
    /// rollouts and generate, tau-bench for eval (the benchmark's user, as it is).
    #[arg(long, value_enum)]
    pub user_view: Option<UserView>,
    /// Candidates per user turn for best-of-n.
    #[arg(long, default_value_t = 4)]
    pub user_n: usize,
    /// The best-of-n judge's model (default: the user's).
    #[arg(long, value_name = "M")]
    pub judge: Option<String>,
    /// Draw a user line again, up to N times, when it reads as the agent's ("How can I help
    /// you?") or states an id neither the instruction nor the agent's lines contain; counted in
    /// the summary's `user_resampled`. Default: 3 for rollouts and generate, 0 for eval
    /// (tau-bench's user, as it is).
    #[arg(long, value_name = "N")]
    pub user_resample: Option<usize>,
    /// Attempts per task.
    #[arg(long, default_value_t = 3)]
    pub trials: usize,
    /// Agent sampling temperature. Default: 0 for eval (tau-bench's); 0.7 for rollouts and
    /// generate, so that trials differ and a small model does not repeat one call forever.
    #[arg(long)]
    pub agent_temperature: Option<f32>,
    /// User sampling temperature. Default: 0.7 for rollouts and generate (at 1.0 a 1.5B user
    /// drifts off the customer's situation), 1.0 for eval (tau-bench leaves the provider's
    /// default).
    #[arg(long)]
    pub user_temperature: Option<f32>,
    /// Agent replies per episode before it is cut off (tau-bench: 30).
    #[arg(long, default_value_t = 30)]
    pub max_steps: usize,
    /// Run every tool call of an agent reply (tau-bench runs only the first).
    #[arg(long)]
    pub parallel_calls: bool,
    /// Decode agent replies under a grammar (plain text or one well-formed call to a domain
    /// tool). Default: on for rollouts and generate (data), off for eval (the model as it is).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub constrain_agent: Option<bool>,
    /// With --constrain-agent: an id-like argument (`*_id`, `*_ids`, `*_number`) of an agent's
    /// call may only be an id a user line or a tool result has given, so the agent asks for
    /// what it does not have instead of inventing it. Default: on for rollouts and generate,
    /// off for eval.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub agent_seen_ids: Option<bool>,
    /// Draw an agent reply again, up to N times, when its call would make the conversation
    /// unkeepable: a write that is none of the gold writes still to make, a hand-over the gold
    /// actions lack, or an id nobody gave; counted in the summary's `agent_resampled`. Default:
    /// 3 for rollouts and generate, 0 for eval (the agent is what is scored).
    #[arg(long, value_name = "N")]
    pub agent_resample: Option<usize>,
    /// With --constrain-agent: the agent's grammar offers a write tool only when a gold write
    /// of it is due (its gold reads made, and the customer's "yes" to the agent's words since
    /// the last write), with only the arguments the gold write uses, and a hand-over only when
    /// the gold actions hand over; the prompt is unchanged. Default: on for rollouts and
    /// generate, off (refused) for eval.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub agent_gold_writes: Option<bool>,
    /// Print every message of every episode to stderr as it happens.
    #[arg(long)]
    pub trace: bool,
    /// Tokens per agent reply, at most.
    #[arg(long, default_value_t = 512)]
    pub agent_max_tokens: usize,
    /// End an episode as `rollout.stalled` once this many agent replies in a row, with what
    /// answered them, are identical (a loop no sampling leaves). Default: 3 for rollouts and
    /// generate, where such a conversation is never good data; 0 (never) for eval, as tau-bench.
    #[arg(long, value_name = "N")]
    pub stall_after: Option<usize>,
    /// Keep a verified conversation only if it also keeps the keep rules (rollouts and
    /// generate; default true): every gold write called with the gold arguments and every gold
    /// read of an id with that id, no invented id, no tool error left unrecovered, no hand-over
    /// the gold actions lack, no user line in the agent's voice. Failed and filtered attempts get
    /// a `fault` (agent, user, task, unclear). The reward is tau-bench's either way.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub require_gold_tools: Option<bool>,
}

impl RoleArgs {
    /// The agent and user roles, loading their models through `models`. `data`: the roles
    /// generate training data (rollouts, generate) rather than score a model (eval), which
    /// picks the defaults of --constrain-agent and --agent-temperature.
    pub fn roles(&self, models: &mut Models, data: bool) -> Result<(AgentRole, UserRole)> {
        let agent_name = match &self.agent {
            Some(a) => a.clone(),
            None => super::default_model_for(ModelRole::Agent)?,
        };
        let user_name = match &self.user {
            Some(u) => u.clone(),
            None => super::default_model_for(ModelRole::User)?,
        };
        let judge_name = self.judge.clone().unwrap_or_else(|| user_name.clone());
        if self.trials == 0 {
            bail!("--trials must be at least 1");
        }
        if !data && self.agent_resample.is_some_and(|n| n > 0) {
            bail!(
                "--agent-resample draws agent replies again against the gold actions; eval scores the agent as it samples"
            );
        }
        if !data && self.agent_gold_writes == Some(true) {
            bail!(
                "--agent-gold-writes shapes the agent's grammar by the gold actions; eval scores the agent as it samples"
            );
        }
        let agent = AgentRole {
            model: Role {
                name: agent_name.clone(),
                backend: models.get(&agent_name)?,
                temperature: self
                    .agent_temperature
                    .unwrap_or(if data { 0.7 } else { 0.0 }),
                max_tokens: self.agent_max_tokens,
            },
            max_steps: self.max_steps,
            parallel_calls: self.parallel_calls,
            constrained: self.constrain_agent.unwrap_or(data),
            trace: self.trace,
            stall_after: self.stall_after.unwrap_or(if data { 3 } else { 0 }),
            seen_ids: self.agent_seen_ids.unwrap_or(data),
            resample: self.agent_resample.unwrap_or(if data { 3 } else { 0 }),
            gold_writes: data && self.agent_gold_writes.unwrap_or(true),
        };
        let judge = Role {
            name: judge_name.clone(),
            backend: if self.user_strategy == UserStrategy::BestOfN {
                models.get(&judge_name)?
            } else {
                models.get(&user_name)?
            },
            temperature: 0.0,
            max_tokens: 24,
        };
        let user = UserRole {
            model: Role {
                name: user_name.clone(),
                backend: models.get(&user_name)?,
                temperature: self
                    .user_temperature
                    .unwrap_or(if data { 0.7 } else { 1.0 }),
                max_tokens: 128,
            },
            strategy: self.user_strategy,
            view: self.user_view.unwrap_or(if data {
                UserView::Transcript
            } else {
                UserView::TauBench
            }),
            n: self.user_n,
            judge,
            resample: self.user_resample.unwrap_or(if data { 3 } else { 0 }),
        };
        Ok((agent, user))
    }
}

#[derive(Debug, Args)]
pub struct RolloutsArgs {
    /// Tasks to roll out: a run's `blueprints.jsonl` (or any tau-bench task file).
    #[arg(long, value_name = "FILE")]
    pub blueprints: PathBuf,
    /// The domain (default: the one recorded in the `config.toml` beside the blueprints).
    #[arg(long, value_name = "DIR")]
    pub domain: Option<PathBuf>,
    /// Load the domain's tables from this folder instead.
    #[arg(long, value_name = "DATA")]
    pub db: Option<PathBuf>,
    /// Run seed: each attempt's seed derives from it, the task id and the trial.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run directory (re-running the same command resumes it).
    #[arg(long, value_name = "RUN")]
    pub out: PathBuf,
    #[command(flatten)]
    pub roles: RoleArgs,
    #[command(flatten)]
    pub concurrency: super::Concurrency,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub blueprints: BlueprintsArgs,
    #[command(flatten)]
    pub roles: RoleArgs,
}

/// Tasks with ids: a blueprint's `id`, else its position in the file.
pub fn read_identified_tasks(path: &Path) -> Result<Vec<(String, Task)>> {
    let tasks = read_tasks(path)?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let id = match t.extra.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => i.to_string(),
        };
        if !seen.insert(id.clone()) {
            bail!("{}: task id {id:?} appears twice", path.display());
        }
        out.push((id, t));
    }
    Ok(out)
}

/// The domain a blueprint file was made for, from the run's `config.toml`.
fn domain_of_run(blueprints: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let config = blueprints
        .parent()
        .unwrap_or(Path::new("."))
        .join(crate::run::files::CONFIG);
    let text = std::fs::read_to_string(&config).with_context(|| {
        format!(
            "no --domain given and cannot read {} to find the run's domain",
            config.display()
        )
    })?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("{}: invalid TOML", config.display()))?;
    let dir = v
        .get("domain")
        .and_then(|d| d.get("dir"))
        .and_then(|d| d.as_str())
        .with_context(|| format!("{}: no domain.dir; pass --domain", config.display()))?;
    let db = v
        .get("domain")
        .and_then(|d| d.get("db"))
        .and_then(|d| d.as_str())
        .map(PathBuf::from);
    Ok((PathBuf::from(dir), db))
}

/// Phase 2's pinned settings (`rollouts.toml`; an eval's `config.toml`). Settings added after
/// the first version are written only when they change what that version did, so that runs it
/// started still resume.
#[derive(Serialize)]
struct RolloutsPin<'a> {
    version: &'static str,
    agent: AgentPin<'a>,
    user: UserPin<'a>,
    trials: usize,
    seed: u64,
    domain: DomainPin<'a>,
    load: LoadPin<'a>,
    /// What the tasks are: `blueprints` (rollouts) or `tasks` and `task_ids` (eval).
    #[serde(flatten)]
    tasks: serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    require_gold_tools: Option<bool>,
}

#[derive(Serialize)]
struct AgentPin<'a> {
    model: &'a str,
    sha256: Vec<Option<String>>,
    temperature: f32,
    max_steps: usize,
    parallel_calls: bool,
    max_tokens: usize,
    constrained: bool,
    #[serde(skip_serializing_if = "never_stalls")]
    stall_after: usize,
    #[serde(skip_serializing_if = "is_false")]
    seen_ids: bool,
    #[serde(skip_serializing_if = "is_zero")]
    resample: usize,
    #[serde(skip_serializing_if = "is_false")]
    gold_writes: bool,
}

#[derive(Serialize)]
struct UserPin<'a> {
    model: &'a str,
    sha256: Vec<Option<String>>,
    temperature: f32,
    strategy: UserStrategy,
    n: usize,
    judge: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    resample: usize,
    #[serde(skip_serializing_if = "is_tau_bench")]
    view: UserView,
}

#[derive(Serialize)]
struct DomainPin<'a> {
    name: &'a str,
    db_hash: String,
}

#[derive(Serialize)]
struct LoadPin<'a> {
    device: &'a str,
    threads: Option<usize>,
}

fn never_stalls(n: &usize) -> bool {
    *n <= 1
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_tau_bench(v: &UserView) -> bool {
    *v == UserView::TauBench
}

/// `base`: verified when this process started (a resumed run's rate counts only new work).
fn progress_line(
    s: &RolloutSummary,
    base: usize,
    planned: usize,
    started: std::time::Instant,
) -> String {
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    format!(
        "rollouts: {}/{} attempts, {} verified, {} kept, {:.2} verified/min",
        s.rollouts,
        planned,
        s.verified,
        s.kept,
        if minutes > 0.0 {
            s.verified.saturating_sub(base) as f64 / minutes
        } else {
            0.0
        }
    )
}

/// Where and how a phase-2 run goes.
pub struct Phase2<'a> {
    pub seed: u64,
    pub concurrency: usize,
    /// Keep verified conversations as data (rollouts, generate), or only score (eval).
    pub keep: bool,
    pub out: &'a Path,
    /// The file its settings are pinned in.
    pub config_name: &'a str,
    /// What the tasks are, pinned beside the settings.
    pub tasks_config: Value,
}

/// Roll out `tasks` into `out` with progress on stderr.
pub fn roll_out(
    domain: &Domain,
    tasks: &[(String, Task)],
    roles: &RoleArgs,
    models: &mut Models,
    run: Phase2<'_>,
) -> Result<RolloutSummary> {
    let Phase2 {
        seed,
        concurrency,
        keep,
        out,
        config_name,
        tasks_config: extra_config,
    } = run;
    // Data generation constrains the agent; evaluation (which keeps nothing) does not.
    let (agent, user) = roles.roles(models, keep)?;
    let load = models.load_args();
    let require_gold_tools = keep && roles.require_gold_tools.unwrap_or(true);
    let config = RolloutsPin {
        version: env!("CARGO_PKG_VERSION"),
        agent: AgentPin {
            model: &agent.model.name,
            sha256: super::model_hashes(&agent.model.name),
            temperature: agent.model.temperature,
            max_steps: agent.max_steps,
            parallel_calls: agent.parallel_calls,
            max_tokens: agent.model.max_tokens,
            constrained: agent.constrained,
            stall_after: agent.stall_after,
            seen_ids: agent.seen_ids,
            resample: agent.resample,
            gold_writes: agent.gold_writes,
        },
        user: UserPin {
            model: &user.model.name,
            sha256: super::model_hashes(&user.model.name),
            temperature: user.model.temperature,
            strategy: user.strategy,
            n: user.n,
            judge: &user.judge.name,
            resample: user.resample,
            view: user.view,
        },
        trials: roles.trials,
        seed,
        domain: DomainPin {
            name: domain.name(),
            db_hash: domain.pristine().hash(),
        },
        load: LoadPin {
            device: &load.device,
            threads: load.threads,
        },
        tasks: match extra_config {
            Value::Object(m) => m,
            _ => Default::default(),
        },
        require_gold_tools: keep.then_some(require_gold_tools),
    };
    let _lock = crate::run::lock(out)?;
    crate::run::resume_on_interrupt();
    crate::run::pin_config_file(out, config_name, &config, &["version", "load"])?;
    let rollouts = Rollouts {
        domain,
        agent,
        user,
        settings: Settings {
            trials: roles.trials,
            seed,
            keep,
            require_gold_tools,
        },
        concurrency,
    };
    let planned = tasks.len() * roles.trials;
    let started = std::time::Instant::now();
    let bar = crate::run::progress::Bar::start("rollouts", planned);
    let mut base = None;
    let summary = rollouts.run(out, tasks, |s| {
        let base = *base.get_or_insert(s.verified);
        bar.update(s.rollouts, progress_line(s, base, planned, started));
    })?;
    drop(bar);
    Ok(summary)
}

pub fn run(args: RolloutsArgs) -> Result<ExitCode> {
    let (dir, db) = match &args.domain {
        Some(d) => (d.clone(), args.db.clone()),
        None => {
            let (d, db) = domain_of_run(&args.blueprints)?;
            (d, args.db.clone().or(db))
        }
    };
    let domain = Domain::load(&dir, db.as_deref())
        .with_context(|| format!("cannot load domain {}", dir.display()))?;
    let tasks = read_identified_tasks(&args.blueprints)?;
    let mut models = Models::new(args.load.clone());
    let summary = roll_out(
        &domain,
        &tasks,
        &args.roles,
        &mut models,
        Phase2 {
            seed: args.seed,
            concurrency: args.concurrency.concurrency,
            keep: true,
            out: &args.out,
            config_name: crate::run::files::ROLLOUTS_CONFIG,
            tasks_config: json!({"blueprints": args.blueprints}),
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}

pub fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let bp = &args.blueprints;
    // The domain first: a wrong path is reported before any model takes its time to load.
    let domain = Domain::load(&bp.domain, bp.db.as_deref())
        .with_context(|| format!("cannot load domain {}", bp.domain.display()))?;
    let mut models = Models::new(args.blueprints.load.clone());
    // Phase 1 locks the run and pins its settings, then phase 2's models are loaded before
    // phase 1's, so that a missing one is reported now and not after phase 1's hour of work.
    let phase1 = super::blueprints::run_with(&args.blueprints, &mut models, |models| {
        args.roles
            .roles(models, true)
            .map(|_| ())
            .context("cannot load phase 2's models")
    })?;
    let path = bp.out.join(crate::run::files::BLUEPRINTS);
    let tasks = read_identified_tasks(&path)?;
    if tasks.is_empty() {
        eprintln!(
            "no blueprint was accepted ({} tasks attempted); nothing to roll out",
            phase1.items
        );
    }
    let summary = roll_out(
        &domain,
        &tasks,
        &args.roles,
        &mut models,
        Phase2 {
            seed: bp.seed,
            concurrency: bp.concurrency.concurrency,
            keep: true,
            out: &bp.out,
            config_name: crate::run::files::ROLLOUTS_CONFIG,
            tasks_config: json!({}),
        },
    )?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"blueprints": phase1, "rollouts": summary}))?
    );
    Ok(ExitCode::SUCCESS)
}
