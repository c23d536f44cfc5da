//! Rollouts into a run directory: every task is tried `trials` times; every attempt is logged in
//! `trajectories.jsonl`, and each unique successful conversation is kept in `dataset.jsonl`.
//!
//! An attempt is the unit of durability: its `dataset.jsonl` line (if kept) is appended first,
//! its `trajectories.jsonl` line last. On restart, dataset lines without their trajectory line
//! are dropped and the attempt is run again; finished attempts are never redone.

use super::keep::{self, Fault};
use super::{AgentRole, Episode, EpisodeSpec, UserRole, UserStrategy, prime_agent, run_episode};
use crate::domain::Domain;
use crate::domain::task::Task;
use crate::run::order::{Flow, Plan, run_in_order};
use crate::run::{JsonlLog, RunError, files, merge_summary, open_side_log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Settings of a rollout run (mirrored by the command-line flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Attempts per task (the paper: up to 3).
    pub trials: usize,
    pub seed: u64,
    /// Keep successful conversations in `dataset.jsonl` (off for evaluation).
    pub keep: bool,
    /// Keep a successful conversation only if it also keeps the keep rules
    /// ([`super::keep`]): the gold calls with the gold arguments, no invented id, no unrecovered
    /// error, no needless hand-over, a user in role. Otherwise a blueprint that changes nothing
    /// is "solved" by an agent that chats and looks nothing up.
    pub require_gold_tools: bool,
}

/// One attempt, as logged in `trajectories.jsonl`: these fields and the episode's, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct TrajectoryRecord {
    /// `<task id>#<trial>`.
    pub id: String,
    /// The blueprint's (or task's) id.
    pub blueprint_id: String,
    pub trial: usize,
    pub seed: u64,
    pub agent: String,
    pub user: String,
    pub user_strategy: UserStrategy,
    /// Kept in `dataset.jsonl`: successful and not a repeat of a kept conversation.
    pub kept: bool,
    /// The kept attempt this successful one repeats word for word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// Why a successful attempt was not kept, other than being a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_kept: Option<String>,
    /// The keep rule a rewarded attempt broke (`keep.*`), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_kept_code: Option<String>,
    /// Who a failed or filtered attempt's failure is on, with the evidence (data runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(flatten)]
    pub episode: Episode,
}

/// Read back in two passes over one JSON value (serde's `flatten` cannot read the exact
/// numbers this crate's JSON keeps).
impl<'de> Deserialize<'de> for TrajectoryRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Meta {
            id: String,
            blueprint_id: String,
            trial: usize,
            seed: u64,
            agent: String,
            user: String,
            user_strategy: UserStrategy,
            kept: bool,
            #[serde(default)]
            duplicate_of: Option<String>,
            #[serde(default)]
            not_kept: Option<String>,
            #[serde(default)]
            not_kept_code: Option<String>,
            #[serde(default)]
            fault: Option<Fault>,
        }
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        let m: Meta = serde_json::from_value(v.clone()).map_err(D::Error::custom)?;
        let episode: Episode = serde_json::from_value(v).map_err(D::Error::custom)?;
        Ok(TrajectoryRecord {
            id: m.id,
            blueprint_id: m.blueprint_id,
            trial: m.trial,
            seed: m.seed,
            agent: m.agent,
            user: m.user,
            user_strategy: m.user_strategy,
            kept: m.kept,
            duplicate_of: m.duplicate_of,
            not_kept: m.not_kept,
            not_kept_code: m.not_kept_code,
            fault: m.fault,
            episode,
        })
    }
}

/// A kept conversation, as written in `dataset.jsonl` (the canonical training record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub id: String,
    pub blueprint_id: String,
    pub trial: usize,
    pub domain: String,
    pub agent: String,
    pub user: String,
    pub messages: Vec<Value>,
    /// The tools offered to the agent, as OpenAI function schemas.
    pub tools: Vec<Value>,
}

/// The rollout part of `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub tasks: usize,
    pub rollouts: usize,
    pub verified: usize,
    pub kept: usize,
    /// Successful attempts left out by a keep rule (see `not_kept`).
    #[serde(default)]
    pub filtered: usize,
    /// Filtered attempts per keep rule (`keep.*`).
    #[serde(default)]
    pub not_kept: BTreeMap<String, usize>,
    /// Failed and filtered attempts per fault label (`agent`, `user`, `task`, `unclear`).
    #[serde(default)]
    pub faults: BTreeMap<String, usize>,
    /// User lines drawn again, by reason (`agent_voice`, `unknown_id`): `user.resampled`.
    #[serde(default)]
    pub user_resampled: BTreeMap<String, usize>,
    /// Agent replies drawn again, by reason (`write_off_gold`, `needless_transfer`,
    /// `invented_id`): `agent.resampled`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_resampled: BTreeMap<String, usize>,
    /// Failed attempts per code.
    pub failures: BTreeMap<String, usize>,
    /// Means over kept conversations.
    pub mean_user_turns: f64,
    pub mean_tool_calls: f64,
    pub tokens: BTreeMap<String, usize>,
    pub seconds: BTreeMap<String, f64>,
    pub complete: bool,
}

/// Everything a rollout run needs.
pub struct Rollouts<'d> {
    pub domain: &'d Domain,
    pub agent: AgentRole,
    pub user: UserRole,
    pub settings: Settings,
    /// Attempts in flight at once, each on its own thread; their model calls are decoded
    /// together by the engine. The files written do not depend on it.
    pub concurrency: usize,
}

/// The seed of one attempt, from the run seed, the task id and the trial.
pub fn attempt_seed(run_seed: u64, task_id: &str, trial: usize) -> u64 {
    let d = Sha256::digest(format!("{run_seed}:{task_id}:{trial}").as_bytes());
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

fn conversation_key(messages: &[Value]) -> String {
    let d = Sha256::digest(
        serde_json::to_string(messages)
            .unwrap_or_default()
            .as_bytes(),
    );
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The open logs of a run directory.
pub struct Logs {
    trajectories: JsonlLog,
    dataset: JsonlLog,
    pub done: Vec<TrajectoryRecord>,
}

impl Logs {
    /// Open `trajectories.jsonl` and `dataset.jsonl` in `out`, dropping kept records of
    /// attempts that never committed.
    pub fn open(out: &Path) -> Result<Logs, RunError> {
        std::fs::create_dir_all(out).map_err(|error| RunError::Io {
            path: out.into(),
            error,
        })?;
        let (trajectories, done) =
            JsonlLog::open::<TrajectoryRecord>(&out.join(files::TRAJECTORIES))?;
        let committed: HashSet<&str> = done
            .iter()
            .filter(|t| t.kept)
            .map(|t| t.id.as_str())
            .collect();
        let (dataset, _) = open_side_log::<Value>(&out.join(files::DATASET), |r| {
            r["id"].as_str().is_some_and(|id| committed.contains(id))
        })?;
        Ok(Logs {
            trajectories,
            dataset,
            done,
        })
    }

    fn commit(
        &mut self,
        record: TrajectoryRecord,
        kept: Option<DatasetRecord>,
    ) -> Result<(), RunError> {
        if let Some(k) = &kept {
            self.dataset.append(k)?;
        }
        self.trajectories.append(&record)?;
        self.done.push(record);
        Ok(())
    }

    pub fn sync(&self) -> Result<(), RunError> {
        self.dataset.sync()?;
        self.trajectories.sync()
    }
}

impl Rollouts<'_> {
    /// Run (or resume) every task's trials into `out`, calling `progress` after each attempt.
    /// `tasks` are `(id, task)` pairs; ids must be unique. Up to `concurrency` attempts run at
    /// once; each is committed once every attempt before it (task order, then trial) is, so a
    /// crash loses at most the attempts in flight and the files are the same at any
    /// concurrency.
    pub fn run(
        &self,
        out: &Path,
        tasks: &[(String, Task)],
        mut progress: impl FnMut(&RolloutSummary),
    ) -> Result<RolloutSummary, RunError> {
        let mut logs = Logs::open(out)?;
        let mut summary = self.summarise(tasks.len(), &logs.done);
        progress(&summary);
        let pending = tasks.iter().any(|(id, _)| {
            (0..self.settings.trials)
                .any(|t| !logs.done.iter().any(|d| d.id == format!("{id}#{t}")))
        });
        let prefix = if pending {
            // A long policy and many tool schemas take minutes to run through a model on a CPU:
            // say so rather than sit silent.
            eprintln!("caching the agent's prompt (the policy and the tool schemas)...");
            let started = std::time::Instant::now();
            let conv =
                prime_agent(self.domain, &self.agent).map_err(|message| RunError::Config {
                    path: out.into(),
                    message,
                })?;
            eprintln!(
                "cached {} tokens in {:.1}s",
                conv.cached_tokens(),
                started.elapsed().as_secs_f64()
            );
            Some(conv)
        } else {
            None
        };
        // The attempts still to run, in the order they are committed.
        let todo: Vec<(usize, usize)> = tasks
            .iter()
            .enumerate()
            .flat_map(|(t, (task_id, _))| {
                let done = &logs.done;
                (0..self.settings.trials)
                    .filter(move |trial| !done.iter().any(|d| d.id == format!("{task_id}#{trial}")))
                    .map(move |trial| (t, trial))
            })
            .collect();
        // Attempts finish in any order; they are committed in `todo`'s, so the files are the
        // same for any number of workers.
        let name = |u: usize| {
            let (t, trial) = todo[u];
            format!("{}#{trial}", tasks[t].0)
        };
        run_in_order(
            Plan {
                units: todo.len(),
                workers: self.concurrency,
                window: None,
                name: &name,
            },
            &mut (&mut logs, &mut summary),
            |_, _| (),
            |u, (), _| {
                let (t, trial) = todo[u];
                let (task_id, task) = &tasks[t];
                run_episode(&EpisodeSpec {
                    domain: self.domain,
                    task,
                    agent: &self.agent,
                    user: &self.user,
                    seed: attempt_seed(self.settings.seed, task_id, trial),
                    agent_prefix: prefix.as_ref(),
                })
            },
            |(logs, summary), u, episode| {
                let (t, trial) = todo[u];
                let (task_id, task) = &tasks[t];
                self.commit(logs, task_id, task, trial, episode)?;
                **summary = self.summarise(tasks.len(), &logs.done);
                merge_summary(out, &json!({ "rollouts": summary }))?;
                progress(summary);
                Ok(Flow::Go)
            },
        )?;
        summary.complete = true;
        merge_summary(out, &json!({ "rollouts": summary }))?;
        logs.sync()?;
        Ok(summary)
    }

    /// Judge a finished attempt (kept, duplicate, filtered, fault) and commit it.
    fn commit(
        &self,
        logs: &mut Logs,
        task_id: &str,
        task: &Task,
        trial: usize,
        episode: Episode,
    ) -> Result<(), RunError> {
        let id = format!("{task_id}#{trial}");
        let seed = attempt_seed(self.settings.seed, task_id, trial);
        let key = conversation_key(&episode.messages);
        let duplicate_of = if episode.reward == 1.0 {
            logs.done
                .iter()
                .filter(|d| d.kept && d.blueprint_id == *task_id)
                .find(|d| conversation_key(&d.episode.messages) == key)
                .map(|d| d.id.clone())
        } else {
            None
        };
        let is_write = |n: &str| self.domain.is_write(n);
        let problem =
            (self.settings.keep && self.settings.require_gold_tools && episode.reward == 1.0)
                .then(|| {
                    keep::keep_problem(
                        task,
                        &episode.messages,
                        is_write,
                        &self.domain.manifest.terminate_tools,
                    )
                })
                .flatten();
        let fault =
            (self.settings.keep && (episode.reward != 1.0 || problem.is_some())).then(|| {
                keep::fault(
                    task,
                    &episode.messages,
                    episode.code.as_deref(),
                    problem.as_ref(),
                    is_write,
                )
            });
        let not_kept = problem.as_ref().map(|p| p.detail.clone());
        let kept = self.settings.keep
            && episode.reward == 1.0
            && duplicate_of.is_none()
            && not_kept.is_none();
        let dataset = kept.then(|| DatasetRecord {
            id: id.clone(),
            blueprint_id: task_id.to_owned(),
            trial,
            domain: self.domain.name().to_owned(),
            agent: self.agent.model.name.clone(),
            user: self.user.model.name.clone(),
            messages: episode.messages.clone(),
            tools: self.domain.tool_schemas(),
        });
        let record = TrajectoryRecord {
            id,
            blueprint_id: task_id.to_owned(),
            trial,
            seed,
            agent: self.agent.model.name.clone(),
            user: self.user.model.name.clone(),
            user_strategy: self.user.strategy,
            kept,
            duplicate_of,
            not_kept,
            not_kept_code: problem.map(|p| p.code),
            fault,
            episode,
        };
        logs.commit(record, dataset)
    }

    fn summarise(&self, tasks: usize, done: &[TrajectoryRecord]) -> RolloutSummary {
        let mut s = RolloutSummary {
            tasks,
            rollouts: done.len(),
            ..Default::default()
        };
        let (mut turns, mut calls) = (0usize, 0usize);
        for d in done {
            let e = &d.episode;
            if e.reward == 1.0 {
                s.verified += 1;
            }
            if d.not_kept.is_some() {
                s.filtered += 1;
                let code = d
                    .not_kept_code
                    .clone()
                    .unwrap_or_else(|| "keep.gold_tools".into());
                *s.not_kept.entry(code).or_default() += 1;
            }
            if let Some(f) = &d.fault {
                let label = serde_json::to_value(f.fault)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                *s.faults.entry(label).or_default() += 1;
            }
            if d.kept {
                s.kept += 1;
                turns += e.user_turns;
                calls += e.tool_calls;
            }
            if let Some(c) = &e.code {
                *s.failures.entry(c.clone()).or_default() += 1;
            }
            for (k, v) in &e.tokens {
                *s.tokens.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &e.user_resampled {
                *s.user_resampled.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &e.agent_resampled {
                *s.agent_resampled.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &e.seconds {
                *s.seconds.entry(k.clone()).or_default() += v;
            }
        }
        if s.kept > 0 {
            s.mean_user_turns = turns as f64 / s.kept as f64;
            s.mean_tool_calls = calls as f64 / s.kept as f64;
        }
        s
    }
}
