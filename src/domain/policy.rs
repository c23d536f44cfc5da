//! Deterministic policy rules: Starlark functions over an executed action list.
//!
//! A domain may ship `rules/*.star`; each public function is a rule, called with the trace of a
//! task's gold actions run on a fresh database (every step with the state before it, and the final
//! state). A rule returns nothing when the trace complies and a message per violation otherwise.
//! Blueprint checks turn violations into rejections coded `policy.<rule>`; `domain check` reports
//! them for the domain's own tasks.

use crate::domain::Domain;
use crate::domain::script::{CallFault, RuleStep, RuleTrace};
use crate::domain::task::{Action, RESPOND_ACTION_NAME};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// The rule's function name; the rejection code is `policy.<rule>`.
    pub rule: String,
    pub message: String,
}

impl Violation {
    /// The stable rejection code.
    pub fn code(&self) -> String {
        format!("policy.{}", self.rule)
    }
}

/// Run `actions` on a fresh database and return the trace the rules see.
pub fn trace(domain: &Domain, user_id: &str, actions: &[Action]) -> RuleTrace {
    let mut env = domain.env();
    let mut steps = Vec::with_capacity(actions.len());
    for action in actions {
        let before = env.db().clone();
        let observation = if action.name == RESPOND_ACTION_NAME {
            String::new()
        } else {
            env.step(action).observation
        };
        steps.push(RuleStep {
            name: action.name.clone(),
            arguments: action.arguments.clone(),
            observation,
            before,
        });
    }
    RuleTrace {
        user_id: user_id.to_owned(),
        steps,
        after: env.db().clone(),
    }
}

/// Every rule's verdict on `actions` for `user_id`. A rule that itself fails (raises or runs past
/// its limits) is reported as a violation of that rule, with the failure as the message, so a
/// broken rule can never let a task through silently.
pub fn check(domain: &Domain, user_id: &str, actions: &[Action]) -> Vec<Violation> {
    let Some(rules) = domain.rules() else {
        return vec![];
    };
    let trace = trace(domain, user_id, actions);
    let mut violations = Vec::new();
    for (rule, _) in rules.functions() {
        match domain.call_rule(rule, &trace) {
            Ok(messages) => violations.extend(messages.into_iter().map(|message| Violation {
                rule: rule.to_owned(),
                message,
            })),
            Err(CallFault::Raised(e, Some(at))) => violations.push(Violation {
                rule: rule.to_owned(),
                message: format!("rule failed: {e} (at {at})"),
            }),
            Err(
                CallFault::Raised(e, None)
                | CallFault::LimitExceeded(e)
                | CallFault::Missing(e)
                | CallFault::Panicked(e),
            ) => violations.push(Violation {
                rule: rule.to_owned(),
                message: format!("rule failed: {e}"),
            }),
        }
    }
    violations
}
