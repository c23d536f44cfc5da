//! Evaluation: scoring a checkpoint on tasks with tau-bench's pass^k.
//!
//! pass^k is the chance that *all* of k independent trials of a task succeed, averaged over
//! tasks, estimated from n ≥ k trials with c successes as C(c, k) / C(n, k) (tau-bench's
//! unbiased estimator; pass^1 is the mean success rate).

use crate::domain::task::Task;
use crate::rollout::run::TrajectoryRecord;
use serde::Serialize;
use std::collections::BTreeMap;

/// C(n, k) as a float (exact for the small n of evaluation runs).
fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// pass^k over tasks given as (trials, successes). Tasks with fewer than `k` trials are an error,
/// because the estimator is undefined for them.
pub fn pass_hat_k(tasks: &[(usize, usize)], k: usize) -> Result<f64, String> {
    if tasks.is_empty() {
        return Err("no tasks".into());
    }
    let mut total = 0.0;
    for (i, &(n, c)) in tasks.iter().enumerate() {
        if n < k || c > n || k == 0 {
            return Err(format!(
                "task {i}: pass^{k} needs at least {k} trials and successes ≤ trials (has {n} trials, {c} successes)"
            ));
        }
        total += binomial(c, k) / binomial(n, k);
    }
    Ok(total / tasks.len() as f64)
}

/// `results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    pub agent: String,
    pub user: String,
    pub tasks: usize,
    pub trials: usize,
    /// Task id → reward of each trial, in trial order.
    pub per_task: BTreeMap<String, Vec<f64>>,
    /// k (as a string) → pass^k, for k = 1..trials.
    pub pass_k: BTreeMap<String, f64>,
    pub average_reward: f64,
    /// Failed trials per code.
    pub failures: BTreeMap<String, usize>,
    pub mean_steps: f64,
    pub complete: bool,
}

/// Results from the trials logged so far (tasks in `tasks` order).
pub fn results(tasks: &[(String, Task)], trials: usize, done: &[TrajectoryRecord]) -> Results {
    let mut per_task: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let (mut sum, mut n, mut steps) = (0.0, 0usize, 0usize);
    for (id, _) in tasks {
        let mut rewards = Vec::new();
        for t in 0..trials {
            if let Some(d) = done.iter().find(|d| d.blueprint_id == *id && d.trial == t) {
                rewards.push(d.episode.reward);
                sum += d.episode.reward;
                n += 1;
                steps += d.episode.steps;
                if let Some(c) = &d.episode.code {
                    *failures.entry(c.clone()).or_default() += 1;
                }
            }
        }
        per_task.insert(id.clone(), rewards);
    }
    let complete = per_task.values().all(|r| r.len() == trials);
    let counts: Vec<(usize, usize)> = per_task
        .values()
        .filter(|r| r.len() == trials)
        .map(|r| {
            (
                r.len(),
                r.iter().filter(|x| (**x - 1.0).abs() < 1e-6).count(),
            )
        })
        .collect();
    let pass_k = (1..=trials)
        .filter_map(|k| Some((k.to_string(), pass_hat_k(&counts, k).ok()?)))
        .collect();
    Results {
        agent: done.first().map(|d| d.agent.clone()).unwrap_or_default(),
        user: done.first().map(|d| d.user.clone()).unwrap_or_default(),
        tasks: tasks.len(),
        trials,
        per_task,
        pass_k,
        average_reward: if n > 0 { sum / n as f64 } else { 0.0 },
        failures,
        mean_steps: if n > 0 { steps as f64 / n as f64 } else { 0.0 },
        complete,
    }
}

/// The table printed on stderr.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let width = r.per_task.keys().map(String::len).max().unwrap_or(4).max(4);
    s += &format!("{:<width$}  rewards\n", "task");
    for (id, rewards) in &r.per_task {
        let cells: Vec<String> = rewards.iter().map(|x| format!("{x:.0}")).collect();
        s += &format!("{id:<width$}  {}\n", cells.join(" "));
    }
    s += &format!(
        "average reward {:.3} over {} tasks × {} trials\n",
        r.average_reward, r.tasks, r.trials
    );
    for (k, v) in &r.pass_k {
        s += &format!("pass^{k} {v:.3}\n");
    }
    for (c, n) in &r.failures {
        s += &format!("{c}: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::pass_hat_k;

    #[test]
    fn matches_the_estimator() {
        // One task, 4 trials, 2 successes: pass^1 = 0.5, pass^2 = C(2,2)/C(4,2) = 1/6.
        assert_eq!(pass_hat_k(&[(4, 2)], 1).unwrap(), 0.5);
        assert!((pass_hat_k(&[(4, 2)], 2).unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(pass_hat_k(&[(4, 4), (4, 0)], 3).unwrap(), 0.5);
        assert!(pass_hat_k(&[(2, 1)], 3).is_err());
        assert!(pass_hat_k(&[], 1).is_err());
    }
}
