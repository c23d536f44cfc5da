//! `apigen-mt eval`: score an agent model on tau-bench-style tasks with pass^k.

use super::Models;
use super::rollouts::{RoleArgs, read_identified_tasks, roll_out};
use crate::cli::load::LoadArgs;
use crate::domain::Domain;
use crate::domain::task::Task;
use crate::eval::{Results, results, table};
use crate::rollout::run::Logs;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The domain folder.
    #[arg(long, value_name = "DIR")]
    pub domain: PathBuf,
    /// Load the domain's tables from this folder instead (e.g. tau-bench's own data).
    #[arg(long, value_name = "DATA")]
    pub db: Option<PathBuf>,
    /// Tasks: a tau-bench task file (`tasks_test.json`) or a run's `blueprints.jsonl`.
    #[arg(long, value_name = "FILE")]
    pub tasks: PathBuf,
    /// Which tasks, by position in the file (`0-4,12`) or by id (`bp-00003`); default: all.
    #[arg(long, value_name = "IDS")]
    pub task_ids: Option<String>,
    /// Run seed: each trial's seed derives from it, the task id and the trial.
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

/// Pick tasks by `0-4,7` positions and/or ids.
pub fn select(tasks: Vec<(String, Task)>, spec: &str) -> Result<Vec<(String, Task)>> {
    let mut picked: Vec<usize> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = part.split_once('-').and_then(|(a, b)| {
            Some((
                a.trim().parse::<usize>().ok()?,
                b.trim().parse::<usize>().ok()?,
            ))
        });
        let indices: Vec<usize> = if let Some((a, b)) = range {
            if a > b {
                bail!("--task-ids: {part:?} is an empty range");
            }
            (a..=b).collect()
        } else if let Ok(i) = part.parse::<usize>() {
            vec![i]
        } else {
            match tasks.iter().position(|(id, _)| id == part) {
                Some(i) => vec![i],
                None => bail!("--task-ids: no task with id {part:?}"),
            }
        };
        for i in indices {
            if i >= tasks.len() {
                bail!(
                    "--task-ids: task {i} does not exist (the file has {} tasks)",
                    tasks.len()
                );
            }
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
    }
    Ok(picked.into_iter().map(|i| tasks[i].clone()).collect())
}

pub fn write_results(out: &Path, r: &Results) -> Result<()> {
    crate::run::write_atomic(
        &out.join(crate::run::files::RESULTS),
        (serde_json::to_string_pretty(r)? + "\n").as_bytes(),
    )?;
    Ok(())
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let domain = Domain::load(&args.domain, args.db.as_deref())
        .with_context(|| format!("cannot load domain {}", args.domain.display()))?;
    let all = read_identified_tasks(&args.tasks)?;
    let tasks = match &args.task_ids {
        Some(spec) => select(all, spec)?,
        None => all,
    };
    if tasks.is_empty() {
        bail!("{}: no tasks to evaluate", args.tasks.display());
    }
    let mut models = Models::new(args.load.clone());
    roll_out(
        &domain,
        &tasks,
        &args.roles,
        &mut models,
        super::rollouts::Phase2 {
            seed: args.seed,
            concurrency: args.concurrency.concurrency,
            keep: false,
            out: &args.out,
            config_name: crate::run::files::CONFIG,
            tasks_config: json!({"tasks": args.tasks, "task_ids": tasks.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()}),
        },
    )?;
    let logs = Logs::open(&args.out)?;
    let r = results(&tasks, args.roles.trials, &logs.done);
    write_results(&args.out, &r)?;
    eprint!("{}", table(&r));
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}
