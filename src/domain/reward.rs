//! tau-bench's reward: a conversation succeeds when the final database equals the state the gold
//! actions produce on a fresh database, and every expected output appears in something the agent
//! said to the user (case-insensitive, commas removed from the agent's text, as tau-bench does).

use crate::domain::Domain;
use crate::domain::task::{RESPOND_ACTION_NAME, Task};
use serde::Serialize;

/// The verdict on one conversation, with its parts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reward {
    /// 1.0 when both checks pass, else 0.0.
    pub reward: f64,
    /// The final database hash equals the gold one.
    pub db_match: bool,
    pub db_hash: String,
    pub gold_db_hash: String,
    /// Each expected output and whether the agent said it.
    pub outputs: Vec<(String, bool)>,
}

/// The hash tau-bench compares against: the gold actions (terminate tools excluded, as
/// `Env.calculate_reward` excludes them) run on a fresh database.
pub fn gold_hash(domain: &Domain, task: &Task) -> String {
    let mut env = domain.env();
    for action in task
        .actions
        .iter()
        .filter(|a| !domain.manifest.terminate_tools.contains(&a.name))
    {
        env.step(action);
    }
    env.hash()
}

/// Whether `output` counts as said in one of the agent's messages.
pub fn output_said(output: &str, messages: &[&str]) -> bool {
    let needle = output.to_lowercase();
    messages
        .iter()
        .any(|m| m.to_lowercase().replace(',', "").contains(&needle))
}

/// Score a finished conversation: `final_hash` is the database hash at its end, `messages` what the
/// agent said to the user (the `content` of its `respond` actions).
pub fn score(domain: &Domain, task: &Task, final_hash: &str, messages: &[&str]) -> Reward {
    let gold = gold_hash(domain, task);
    let db_match = gold == final_hash;
    let outputs: Vec<(String, bool)> = task
        .outputs
        .iter()
        .map(|o| (o.clone(), output_said(o, messages)))
        .collect();
    let ok = db_match && outputs.iter().all(|(_, said)| *said);
    Reward {
        reward: if ok { 1.0 } else { 0.0 },
        db_match,
        db_hash: final_hash.to_owned(),
        gold_db_hash: gold,
        outputs,
    }
}

/// The agent's messages among a list of actions.
pub fn messages(actions: &[crate::domain::task::Action]) -> Vec<&str> {
    actions
        .iter()
        .filter(|a| a.name == RESPOND_ACTION_NAME)
        .filter_map(|a| a.arguments.get("content").and_then(|c| c.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::output_said;

    #[test]
    fn outputs_match_like_tau_bench() {
        assert!(output_said("1234.5", &["Your total is $1,234.50."]));
        assert!(output_said("Jane", &["jane, your order is on its way"]));
        assert!(
            !output_said("12,5", &["12,5"]),
            "commas are removed from the message, not the output"
        );
        assert!(!output_said("42", &[]));
    }
}
