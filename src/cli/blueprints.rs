//! `apigen-mt blueprints`: phase 1 into a run directory.

use crate::blueprint::committee::Threshold;
use crate::blueprint::pipeline::{Pipeline, Role, Settings, Summary};
use crate::blueprint::plan::PlanMode;
use crate::blueprint::sampler::{ApiGraph, read_personas};
use crate::cli::load::LoadArgs;
use crate::domain::Domain;
use crate::domain::task::read_tasks;
use crate::llm::profile::ModelRole;
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct BlueprintsArgs {
    /// The domain folder.
    #[arg(long, value_name = "DIR")]
    pub domain: PathBuf,
    /// Load the domain's tables from this folder instead.
    #[arg(long, value_name = "DATA")]
    pub db: Option<PathBuf>,
    /// Blueprint tasks to attempt; each gets up to --max-turns proposals and ends accepted or
    /// rejected.
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Stop early once this many blueprints are accepted (default: attempt all --count tasks).
    #[arg(long, value_name = "N")]
    pub accept: Option<usize>,
    /// The proposer model (profile name or file; default: the default profile).
    #[arg(long)]
    pub proposer: Option<String>,
    /// Reviewer models, comma-separated (default: the default profile three times, sampled
    /// greedily, then at temperature 0.7 with two different seeds).
    #[arg(long, value_delimiter = ',')]
    pub reviewers: Vec<String>,
    /// Run seed: every random choice derives from it and the item's id.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Proposals per task (default: the domain's `[blueprints] max_turns`).
    #[arg(long)]
    pub max_turns: Option<usize>,
    /// Recombined blueprints to make once the tasks are done.
    #[arg(long, default_value_t = 0)]
    pub recombine: usize,
    /// Proposer sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Characters of database records shown to the proposer, at most.
    #[arg(long, default_value_t = 6000)]
    pub data_budget: usize,
    /// Write tasks only for these customers (comma-separated ids; default: any).
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<String>,
    /// How the proposer uses a sampled executable plan (an action chain drawn for the customer
    /// that runs cleanly and passes the rules): `fixed` makes it the blueprint's actions and the
    /// proposer writes the instruction and outputs; `suggest` shows it and the proposer may
    /// change it; `none` is the paper's setting, actions from the sampled tools alone.
    #[arg(long, value_enum, default_value_t = PlanMode::Fixed)]
    pub plan: PlanMode,
    /// The run directory (created; re-running the same command resumes it).
    #[arg(long, value_name = "RUN")]
    pub out: PathBuf,
    #[command(flatten)]
    pub concurrency: super::Concurrency,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Phase 1's pinned settings (`config.toml`).
#[derive(Serialize)]
struct BlueprintsPin<'a> {
    version: &'static str,
    domain: DomainPin<'a>,
    settings: &'a Settings,
    proposer: ModelPin<'a>,
    reviewers: Vec<ModelPin<'a>>,
    data_budget: usize,
    load: LoadPin<'a>,
}

#[derive(Serialize)]
struct DomainPin<'a> {
    name: &'a str,
    dir: &'a Path,
    db: &'a Path,
    db_hash: String,
}

#[derive(Serialize)]
struct ModelPin<'a> {
    model: &'a str,
    sha256: Vec<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Serialize)]
struct LoadPin<'a> {
    device: &'a str,
    threads: Option<usize>,
    requantize: bool,
}

/// `base`: accepted when this process started (a resumed run's rate counts only new work).
fn progress_line(s: &Summary, base: usize, started: std::time::Instant) -> String {
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    format!(
        "blueprints: {}/{} tasks, {} accepted ({} recombined), {} proposals, {:.1} accepted/min",
        s.items,
        s.target,
        s.accepted,
        s.recombined,
        s.funnel.proposed,
        if minutes > 0.0 {
            s.accepted.saturating_sub(base) as f64 / minutes
        } else {
            0.0
        }
    )
}

pub fn run(args: BlueprintsArgs) -> Result<ExitCode> {
    let mut models = super::Models::new(args.load.clone());
    let summary = run_with(&args, &mut models, |_| Ok(()))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(if summary.complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Phase 1 into `args.out`, with models from `models` (shared with phase 2 by `generate`). The run directory is locked and its settings pinned before any
/// model loads, so a busy directory or a re-run with other settings is refused at once; then
/// `before_models` runs (`generate` loads phase 2's models there), then phase 1's models load.
pub fn run_with(
    args: &BlueprintsArgs,
    models: &mut super::Models,
    before_models: impl FnOnce(&mut super::Models) -> Result<()>,
) -> Result<Summary> {
    let domain = Domain::load(&args.domain, args.db.as_deref())
        .with_context(|| format!("cannot load domain {}", args.domain.display()))?;
    let proposer_name = match &args.proposer {
        Some(p) => p.clone(),
        None => super::default_model_for(ModelRole::Proposer)?,
    };
    let reviewer_names = if args.reviewers.is_empty() {
        vec![super::default_model_for(ModelRole::Reviewer)?; 3]
    } else {
        args.reviewers.clone()
    };
    let section = &domain.manifest.blueprints;
    let settings = Settings {
        count: args.accept.unwrap_or(args.count),
        seed: args.seed,
        max_turns: args.max_turns.unwrap_or(section.max_turns),
        threshold: Threshold::default(),
        data_budget: args.data_budget,
        recombine: args.recombine,
        max_items: args.count,
        user_table: section.user_table.clone(),
        only_users: args.users.clone(),
        plan: args.plan,
        view_lag: crate::blueprint::pipeline::VIEW_LAG,
    };
    let mut examples = Vec::new();
    for (name, path) in domain.task_files() {
        if !name.contains("test") {
            examples.extend(read_tasks(&path)?);
        }
    }
    let personas_path = domain.root.join("personas.jsonl");
    let personas = if personas_path.exists() {
        read_personas(&personas_path).map_err(anyhow::Error::msg)?
    } else {
        vec![]
    };
    let graph = ApiGraph::derive(&domain, &examples, &[]);
    let hashes = super::model_hashes;
    let config = BlueprintsPin {
        version: env!("CARGO_PKG_VERSION"),
        domain: DomainPin {
            name: domain.name(),
            dir: &args.domain,
            db: &domain.db_dir,
            db_hash: domain.pristine().hash(),
        },
        settings: &settings,
        proposer: ModelPin {
            model: &proposer_name,
            sha256: hashes(&proposer_name),
            temperature: Some(args.temperature),
        },
        reviewers: reviewer_names
            .iter()
            .map(|n| ModelPin {
                model: n,
                sha256: hashes(n),
                temperature: None,
            })
            .collect(),
        data_budget: args.data_budget,
        load: LoadPin {
            device: &args.load.device,
            threads: args.load.threads,
            requantize: !args.load.no_requantize,
        },
    };
    // How far to go (tasks to attempt, early stop) does not change any item, so a run can be
    // extended or cut short by re-running with another --count or --accept.
    let _lock = crate::run::lock(&args.out)?;
    crate::run::resume_on_interrupt();
    crate::run::pin_config(
        &args.out,
        &config,
        &["version", "load", "settings.count", "settings.max_items"],
    )?;
    before_models(models)?;
    let mut backend = |name: &str| models.get(name);
    let proposer = Role {
        name: proposer_name.clone(),
        backend: backend(&proposer_name)?,
        temperature: args.temperature,
        max_tokens: 1024,
    };
    let reviewers: Vec<Role> = reviewer_names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Ok(Role {
                name: format!("{n}#{i}"),
                backend: backend(n)?,
                temperature: if i == 0 { 0.0 } else { 0.7 },
                max_tokens: 400,
            })
        })
        .collect::<Result<_>>()?;
    let summariser = Role {
        name: proposer_name.clone(),
        backend: backend(&proposer_name)?,
        temperature: 0.0,
        max_tokens: 200,
    };
    let pipeline = Pipeline {
        domain: &domain,
        proposer,
        reviewers,
        summariser,
        settings,
        graph,
        personas,
        examples,
        grounder: crate::domain::ground::Grounder::new(&domain),
        concurrency: args.concurrency.concurrency,
    };
    let started = std::time::Instant::now();
    let bar = crate::run::progress::Bar::start("blueprints", pipeline.settings.max_items);
    let mut base = None;
    let summary = pipeline.run(&args.out, |s| {
        let base = *base.get_or_insert(s.accepted);
        bar.update(s.items, progress_line(s, base, started));
    })?;
    drop(bar);
    Ok(summary)
}
