//! `domain check`: everything that can be verified about a domain without a model.
//!
//! Loading already proves the schemas are valid, every tool has a body and every body a schema,
//! and the scripts compile. On top of that, every task's gold actions are replayed on a fresh
//! database: no action may be unknown or break its schema, read tools must never change the
//! hash, every write tool that succeeds at least once must change it at least once, and no task
//! may break one of the domain's policy rules, and every task must pass the grounding checks
//! ([`crate::domain::ground`]): its instruction names its customer, and its write arguments and
//! outputs come from somewhere.

use crate::domain::Domain;
use crate::domain::task::{RESPOND_ACTION_NAME, read_tasks};
use crate::domain::tools::ToolKind;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One problem found, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub location: String,
    pub message: String,
}

/// What sort of problem it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A task file could not be read.
    TaskFile,
    /// An action names no tool.
    UnknownAction,
    /// An action broke its schema, or its script raised or ran past a limit.
    Fault,
    /// A tool's effect contradicts its kind.
    ToolKind,
    /// A task breaks one of the domain's policy rules.
    Policy,
    /// A task's instruction, actions and outputs do not describe the same customer and job
    /// (`ground.*` codes, see [`crate::domain::ground`]).
    Grounding,
}

/// The outcome of a check.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub tools: usize,
    pub tasks: usize,
    pub actions: usize,
    pub db_hash: String,
    pub problems: Vec<Problem>,
}

/// Replay every task of the domain (and of `extra_task_files`) and check tool effects. The
/// domain's own tasks are grounded only when `ground_own` (they are written for the domain's own
/// data, not for a database loaded with `--db`); the extra files always are.
pub fn check(domain: &Domain, extra_task_files: &[PathBuf], ground_own: bool) -> Report {
    let mut report = Report {
        tools: domain.tools().len(),
        db_hash: domain.pristine().hash(),
        ..Report::default()
    };
    let mut files: Vec<(PathBuf, bool)> = domain
        .task_files()
        .into_iter()
        .map(|(_, p)| (p, ground_own))
        .collect();
    files.extend(extra_task_files.iter().map(|p| (p.clone(), true)));
    // write tool → (successful calls, calls that changed the hash, first location)
    let mut writes: BTreeMap<String, (usize, usize, String)> = BTreeMap::new();
    let mut env = domain.env();
    let grounder = crate::domain::ground::Grounder::new(domain);
    for (file, ground) in files {
        let tasks = match read_tasks(&file) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(Problem {
                    kind: ProblemKind::TaskFile,
                    location: "tasks".into(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        for (ti, task) in tasks.iter().enumerate() {
            report.tasks += 1;
            for v in crate::domain::policy::check(domain, &task.user_id, &task.actions) {
                report.problems.push(Problem {
                    kind: ProblemKind::Policy,
                    location: format!("{} task {ti}", file.display()),
                    message: format!("{}: {}", v.code(), v.message),
                });
            }
            env.reset();
            let mut hash = env.hash();
            let mut observations = Vec::new();
            for (ai, action) in task.actions.iter().enumerate() {
                report.actions += 1;
                let location =
                    format!("{} task {ti} action {ai} ({})", file.display(), action.name);
                if action.name == RESPOND_ACTION_NAME {
                    continue;
                }
                let step = env.step(action);
                observations.push(step.observation.clone());
                let Some(tool) = domain.tool(&action.name) else {
                    report.problems.push(Problem {
                        kind: ProblemKind::UnknownAction,
                        location,
                        message: step.observation,
                    });
                    continue;
                };
                if let Some(fault) = &step.fault {
                    let message = match fault {
                        crate::domain::env::Fault::ScriptRaised(_, Some(at)) => {
                            format!("{} (at {at})", step.observation)
                        }
                        _ => step.observation.clone(),
                    };
                    report.problems.push(Problem {
                        kind: ProblemKind::Fault,
                        location: location.clone(),
                        message,
                    });
                }
                let new_hash = env.hash();
                let changed = new_hash != hash;
                hash = new_hash;
                match tool.kind {
                    ToolKind::Write => {
                        let entry =
                            writes
                                .entry(tool.name.clone())
                                .or_insert((0, 0, location.clone()));
                        if !step.observation.starts_with("Error") {
                            entry.0 += 1;
                            entry.1 += changed as usize;
                        }
                    }
                    kind if changed => report.problems.push(Problem {
                        kind: ProblemKind::ToolKind,
                        location,
                        message: format!("{kind:?} tool changed the database"),
                    }),
                    _ => {}
                }
            }
            for f in grounder
                .check(task, &observations)
                .into_iter()
                .filter(|_| ground)
            {
                report.problems.push(Problem {
                    kind: ProblemKind::Grounding,
                    location: format!("{} task {ti}", file.display()),
                    message: format!("{}: {}", f.code, f.detail),
                });
            }
        }
    }
    for (name, (ok, changed, location)) in writes {
        if ok > 0 && changed == 0 {
            report.problems.push(Problem {
                kind: ProblemKind::ToolKind,
                location,
                message: format!(
                    "write tool `{name}` succeeded {ok} times and never changed the database"
                ),
            });
        }
    }
    report
}

/// What tau-bench does to score a task, for every task: reset to the pristine database, run the
/// gold actions, hash the result. Returns one hash per task (the gold final states).
pub fn gold_hashes(domain: &Domain, tasks: &[crate::domain::task::Task]) -> Vec<String> {
    let mut env = domain.env();
    tasks
        .iter()
        .map(|task| {
            env.reset();
            for action in &task.actions {
                env.step(action);
            }
            env.hash()
        })
        .collect()
}
