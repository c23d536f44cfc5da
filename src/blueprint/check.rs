//! Stage 1: the deterministic checks a blueprint must pass before any reviewer sees it.
//!
//! 1. **Format**: the proposer's answer is one JSON object with a non-empty `instruction`, an
//!    `actions` array of `{name, arguments}` and an `outputs` array of strings.
//! 2. **Execution**: every action runs, in order, in a fresh environment; an unknown tool, an
//!    argument the schema rejects, an `Error: ...` observation or a script fault rejects the
//!    blueprint. The database diff is recorded for the reviewers.
//! 3. **Policy**: every rule of the domain holds over the executed trace.
//! 4. **Duplicates**: the same user with the same actions was already accepted.

use super::Rejection;
use crate::domain::Domain;
use crate::domain::diff::{self, Edit};
use crate::domain::env::Fault;
use crate::domain::policy;
use crate::domain::task::{Action, RESPOND_ACTION_NAME, Task};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Parse a proposer's JSON answer into a task for `user_id` (an explicit `user_id` in the answer
/// must agree with it). Tolerates a ```json fence or prose around one JSON object.
pub fn parse(answer: &str, user_id: &str) -> Result<Task, Rejection> {
    let value = extract_object(answer).ok_or_else(|| {
        Rejection::new(
            "format.not_json",
            "the answer must contain one JSON object with instruction, actions and outputs",
        )
    })?;
    let obj = value.as_object().expect("extract_object returns objects");
    let instruction = match obj.get("instruction") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) => {
            return Err(Rejection::new(
                "format.missing_field",
                "\"instruction\" is empty",
            ));
        }
        Some(_) => {
            return Err(Rejection::new(
                "format.bad_field",
                "\"instruction\" must be a string",
            ));
        }
        None => {
            return Err(Rejection::new(
                "format.missing_field",
                "missing \"instruction\"",
            ));
        }
    };
    let actions = match obj.get("actions") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Action::from_json(a)
                    .map_err(|e| Rejection::new("format.bad_action", format!("actions[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(Rejection::new(
                "format.bad_field",
                "\"actions\" must be an array",
            ));
        }
        None => {
            return Err(Rejection::new(
                "format.missing_field",
                "missing \"actions\"",
            ));
        }
    };
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(Rejection::new(
                    "format.bad_output",
                    format!("outputs[{i}] must be a string"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(Rejection::new(
                "format.bad_field",
                "\"outputs\" must be an array of strings",
            ));
        }
    };
    if let Some(Value::String(u)) = obj.get("user_id") {
        if u != user_id {
            return Err(Rejection::new(
                "format.wrong_user",
                format!("the task must be for user {user_id}, not {u}"),
            ));
        }
    }
    Ok(Task {
        user_id: user_id.to_owned(),
        instruction,
        actions,
        outputs,
        extra: Map::new(),
    })
}

/// Parse an answer that holds only the instruction and outputs, for a plan whose actions are
/// fixed (`--plan fixed`): the task's actions are `actions`.
pub fn parse_with_actions(
    answer: &str,
    user_id: &str,
    actions: &[Action],
) -> Result<Task, Rejection> {
    let Some(Value::Object(mut obj)) = extract_object(answer) else {
        return Err(Rejection::new(
            "format.not_json",
            "the answer must contain one JSON object with instruction and outputs",
        ));
    };
    obj.insert(
        "actions".into(),
        Value::Array(actions.iter().map(Action::to_json).collect()),
    );
    parse(&Value::Object(obj).to_string(), user_id)
}

/// Words in a row an instruction may share with feedback it was revised from.
const FEEDBACK_PHRASE_WORDS: usize = 6;

/// Words of reviews and checks that never belong in what a customer is told.
const REVIEW_WORDS: [&str; 6] = [
    "reviewer",
    "database diff",
    "the diff",
    "blueprint",
    "tool call",
    "ground-truth",
];

/// `ground.feedback_in_instruction`: the instruction repeats the feedback it was revised from,
/// or speaks of reviews and diffs (text meant for the author, not for the customer).
pub fn feedback_in_instruction(
    task: &Task,
    feedback: &[String],
) -> Option<crate::domain::ground::Finding> {
    use crate::domain::ground::normalise;
    let text = normalise(&task.instruction);
    if let Some(w) = REVIEW_WORDS.iter().find(|w| text.contains(*w)) {
        return Some(crate::domain::ground::Finding {
            code: "ground.feedback_in_instruction".into(),
            detail: format!(
                "the instruction speaks of \"{w}\": it is what the customer is told, not a note to the author"
            ),
        });
    }
    let words: Vec<&str> = text.split(' ').collect();
    for f in feedback {
        let fw: Vec<String> = normalise(f).split(' ').map(str::to_owned).collect();
        let phrases: std::collections::HashSet<String> = fw
            .windows(FEEDBACK_PHRASE_WORDS)
            .map(|w| w.join(" "))
            .collect();
        if let Some(w) = words
            .windows(FEEDBACK_PHRASE_WORDS)
            .map(|w| w.join(" "))
            .find(|w| phrases.contains(w))
        {
            return Some(crate::domain::ground::Finding {
                code: "ground.feedback_in_instruction".into(),
                detail: format!(
                    "the instruction repeats the feedback (\"{w}\"): act on it, do not copy it"
                ),
            });
        }
    }
    None
}

/// `ground.copied_policy`: the instruction repeats a phrase of eight words or more of the
/// agent's policy ("Before a transfer or a freeze, list the details and get an explicit
/// 'yes'"): the customer's brief says what they want, not the agent's rules.
pub fn copied_policy(task: &Task, policy: &str) -> Option<crate::domain::ground::Finding> {
    use crate::domain::ground::{COPIED_PHRASE_WORDS, normalise};
    let clean = |t: &str| {
        normalise(t)
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '\'' {
                    c
                } else {
                    ' '
                }
            })
            .collect::<String>()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    let rules: std::collections::HashSet<String> = clean(policy)
        .windows(COPIED_PHRASE_WORDS)
        .map(|w| w.join(" "))
        .collect();
    let w = clean(&task.instruction)
        .windows(COPIED_PHRASE_WORDS)
        .map(|w| w.join(" "))
        .find(|w| rules.contains(w))?;
    Some(crate::domain::ground::Finding {
        code: "ground.copied_policy".into(),
        detail: format!(
            "the instruction copies \"{w}\" from the agent's policy: write what the customer wants, not the agent's rules"
        ),
    })
}

/// Words of an assistant or of a model talking about its job, never of a customer's brief.
const OFF_ROLE_WORDS: [&str; 7] = [
    // Addressed to the customer, an instruction never speaks of "the customer".
    "the customer",
    "i'm sorry, but",
    "i am sorry, but",
    "as an ai",
    "i don't have enough context",
    "provide more information",
    "let's try again",
];

/// `ground.instruction_off_role`: the instruction reads as the agent's line ("How can I help
/// you?") or the model's own ("I'm sorry, but I don't have enough context"), not as a brief for
/// the customer.
pub fn instruction_off_role(task: &Task) -> Option<crate::domain::ground::Finding> {
    let text = crate::domain::ground::normalise(&task.instruction).replace('’', "'");
    let code = "ground.instruction_off_role".to_owned();
    // Every one of tau-bench's 685 retail and airline instructions speaks to the customer
    // ("You are ...", "your order"); one that never does is about them, and the simulated user
    // then speaks of themselves in the third person.
    if !["you", "your", "yours", "yourself"]
        .iter()
        .any(|w| crate::domain::ground::contains_word(&text, w))
    {
        return Some(crate::domain::ground::Finding {
            code,
            detail: "the instruction never says \"you\": write it to the customer, in the second person (\"You are ..., you want ...\")".into(),
        });
    }
    let phrase = crate::rollout::keep::out_of_role(&text)
        .or_else(|| OFF_ROLE_WORDS.iter().copied().find(|w| text.contains(w)))?;
    Some(crate::domain::ground::Finding {
        code,
        detail: format!(
            "the instruction says \"{phrase}\", which is the agent's or the author's voice: write what the customer wants, in the second person"
        ),
    })
}

/// `ground.instruction_garbled`: the instruction has a letter of a script other than the Latin
/// one (the 1.5B proposer drifts into "非常に", Hebrew and German mid-sentence) or a
/// box-drawing or replacement character. None of tau-bench's 685 instructions has one; accented
/// Latin names ("Saoirse", "Zoë") pass.
pub fn instruction_garbled(task: &Task) -> Option<crate::domain::ground::Finding> {
    let odd = |c: char| {
        let u = c as u32;
        (c.is_alphabetic() && u > 0x24f && !(0x1e00..=0x1eff).contains(&u))
            || (0x2500..=0x259f).contains(&u)
            || c == '\u{fffd}'
    };
    let at = task.instruction.find(odd)?;
    let around: String = task.instruction[at..].chars().take(12).collect();
    Some(crate::domain::ground::Finding {
        code: "ground.instruction_garbled".into(),
        detail: format!(
            "the instruction drifts into another script or stray symbols at \"{around}\": write it in plain English"
        ),
    })
}

/// The first balanced JSON object in `text` that parses (after stripping code fences).
pub fn extract_object(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(offset) = text[start..].find('{') {
        let open = start + offset;
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Ok(v @ Value::Object(_)) = serde_json::from_str(&text[open..=i]) {
                            return Some(v);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
        start = open + 1;
    }
    None
}

/// A blueprint that executed cleanly: what each action returned and what changed.
#[derive(Debug, Clone)]
pub struct Executed {
    pub observations: Vec<String>,
    pub diff: Vec<Edit>,
    pub final_hash: String,
}

/// Run every action in a fresh environment; the first failure rejects the blueprint.
pub fn execute(domain: &Domain, task: &Task) -> Result<Executed, Rejection> {
    if task.actions.iter().all(|a| a.name == RESPOND_ACTION_NAME) {
        return Err(Rejection::new(
            "exec.no_actions",
            "a blueprint needs at least one tool call",
        ));
    }
    let mut env = domain.env();
    let mut observations: Vec<String> = Vec::with_capacity(task.actions.len());
    for (i, action) in task.actions.iter().enumerate() {
        if action.name == RESPOND_ACTION_NAME {
            return Err(Rejection::new(
                "exec.respond_action",
                format!(
                    "actions[{i}]: ground-truth actions are tool calls only; put what the agent must say in outputs"
                ),
            ));
        }
        let step = env.step(action);
        let at = format!("actions[{i}] {}", action.name);
        match step.fault {
            Some(Fault::UnknownAction) => {
                let known: Vec<&str> = domain.tools().iter().map(|t| t.name.as_str()).collect();
                return Err(Rejection::new(
                    "exec.unknown_tool",
                    format!("{at}: no such tool (tools: {})", known.join(", ")),
                ));
            }
            Some(Fault::BadArguments(e)) => {
                return Err(Rejection::new("exec.bad_arguments", format!("{at}: {e}")));
            }
            Some(Fault::ScriptRaised(e, _) | Fault::LimitExceeded(e)) => {
                return Err(Rejection::new("exec.tool_error", format!("{at}: {e}")));
            }
            Some(Fault::ScriptPanic(e)) => {
                return Err(Rejection::new("exec.script_panic", format!("{at}: {e}")));
            }
            None if step.observation.starts_with("Error") => {
                // What the earlier actions returned is what the author needs to fix this one.
                let earlier: String = observations
                    .iter()
                    .zip(&task.actions)
                    .map(|(o, a)| {
                        format!(
                            "\n  {} returned {}",
                            a.name,
                            o.chars().take(300).collect::<String>()
                        )
                    })
                    .collect();
                let context = if earlier.is_empty() {
                    String::new()
                } else {
                    format!(" (earlier actions:{earlier})")
                };
                return Err(Rejection::new(
                    "exec.tool_error",
                    format!("{at} returned {:?}{context}", step.observation),
                ));
            }
            None => {}
        }
        if step.done && i + 1 < task.actions.len() {
            return Err(Rejection::new(
                "exec.after_terminate",
                format!("{at} ends the conversation but more actions follow"),
            ));
        }
        observations.push(step.observation);
    }
    Ok(Executed {
        observations,
        diff: diff::diff(domain.pristine(), env.db()),
        final_hash: env.hash(),
    })
}

/// Every policy rule the executed actions break, as rejections coded `policy.<rule>`.
pub fn policy(domain: &Domain, task: &Task) -> Vec<Rejection> {
    policy::check(domain, &task.user_id, &task.actions)
        .into_iter()
        .map(|v| Rejection::new(v.code(), v.message))
        .collect()
}

/// Accepted (user, actions) pairs, to reject exact repeats.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<String>,
}

impl Dedup {
    /// The identity of a blueprint: its user and its actions with canonical argument order.
    pub fn key(task: &Task) -> String {
        let actions: Vec<Value> = task
            .actions
            .iter()
            .map(|a| serde_json::json!([a.name, Value::Object(a.arguments.clone())]))
            .collect();
        crate::pyjson::to_string(
            &serde_json::json!([task.user_id, actions]),
            crate::pyjson::Style::CANONICAL,
        )
    }

    /// `Err(dedup.duplicate)` when this user already has a blueprint with these actions.
    pub fn check(&self, task: &Task) -> Result<(), Rejection> {
        if self.seen.contains(&Self::key(task)) {
            Err(Rejection::new(
                "dedup.duplicate",
                format!(
                    "user {} already has a blueprint with exactly these actions",
                    task.user_id
                ),
            ))
        } else {
            Ok(())
        }
    }

    /// Record an accepted blueprint; `Err` when it was already there.
    pub fn insert(&mut self, task: &Task) -> Result<(), Rejection> {
        self.check(task)?;
        self.seen.insert(Self::key(task));
        Ok(())
    }
}

/// All of stage 1 in order. Returns the execution record, or every rejection found by the first
/// failing check (policy can report several rules at once).
pub fn stage1(
    domain: &Domain,
    answer: &str,
    user_id: &str,
    dedup: &Dedup,
) -> Result<(Task, Executed), Vec<Rejection>> {
    let task = parse(answer, user_id).map_err(|r| vec![r])?;
    let executed = execute(domain, &task).map_err(|r| vec![r])?;
    let violations = policy(domain, &task);
    if !violations.is_empty() {
        return Err(violations);
    }
    dedup.check(&task).map_err(|r| vec![r])?;
    Ok((task, executed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task of customer `u1` with instruction `i` and nothing else.
    fn task(i: &str) -> Task {
        Task {
            user_id: "u1".into(),
            instruction: i.into(),
            actions: vec![],
            outputs: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn an_instruction_in_the_agents_or_the_models_voice_is_off_role() {
        let code = |i: &str| instruction_off_role(&task(i)).map(|f| f.code);
        assert_eq!(code("You are Ada. You want acc_1003 frozen."), None);
        assert_eq!(
            code("You are Barbara. I'm sorry, but I don't have enough context to help.").as_deref(),
            Some("ground.instruction_off_role")
        );
        assert!(code("Hello! How can I help you today?").is_some());
        assert!(code("If the balance is wrong, transfer the customer to a human agent.").is_some());
        // About the customer, never to them.
        assert!(
            code("Anders Esposito, 79939 wants their default address changed to '5619 Prairie Wind Drive'.")
                .is_some()
        );
    }

    #[test]
    fn an_instruction_in_another_script_or_with_stray_symbols_is_garbled() {
        let code = |i: &str| instruction_garbled(&task(i)).map(|f| f.code);
        assert_eq!(
            code("You are Saoirse Ramírez, zip code 98489. You want order #W1 cancelled."),
            None
        );
        for bad in [
            "You are Wesley Takahashi. You are非常に IhreizedName.",
            "You want the shoes, סקision category.",
            "You want a KGOOD║recommendation.",
        ] {
            assert_eq!(
                code(bad).as_deref(),
                Some("ground.instruction_garbled"),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_instruction_that_copies_the_policy_is_flagged() {
        let policy = "- Before a transfer or a freeze, list the details and get an explicit \"yes\" from the customer.";
        let code = |i: &str| copied_policy(&task(i), policy).map(|f| f.code);
        assert_eq!(
            code("You are Grace, account acc_1004. You want it frozen. Before a transfer or a freeze, list the details and get an explicit").as_deref(),
            Some("ground.copied_policy")
        );
        assert_eq!(
            code("You are Grace, account acc_1004. You want it frozen for a lost card."),
            None
        );
    }

    #[test]
    fn finds_the_json_object_in_prose_and_fences() {
        let text = "Thought: easy.\n```json\n{\"instruction\": \"say {hi}\", \"actions\": [], \"outputs\": [\"a}\"]}\n```\nDone {not json}";
        let v = extract_object(text).unwrap();
        assert_eq!(v["instruction"], "say {hi}");
        assert!(extract_object("no json here { nope").is_none());
        assert_eq!(extract_object("{bad} then {\"ok\": 1}").unwrap()["ok"], 1);
    }

    #[test]
    fn format_errors_have_stable_codes() {
        let code = |s: &str| parse(s, "u1").unwrap_err().code;
        assert_eq!(code("nothing"), "format.not_json");
        assert_eq!(code("{\"actions\": []}"), "format.missing_field");
        assert_eq!(
            code("{\"instruction\": 3, \"actions\": []}"),
            "format.bad_field"
        );
        assert_eq!(
            code("{\"instruction\": \"x\", \"actions\": [{\"arguments\": {}}]}"),
            "format.bad_action"
        );
        assert_eq!(
            code("{\"instruction\": \"x\", \"actions\": [], \"outputs\": [{}]}"),
            "format.bad_output"
        );
        assert_eq!(
            code("{\"user_id\": \"u2\", \"instruction\": \"x\", \"actions\": []}"),
            "format.wrong_user"
        );
        let task = parse("{\"instruction\": \" x \", \"actions\": [{\"name\": \"t\", \"arguments\": \"{\\\"a\\\": 1}\"}], \"outputs\": [12]}", "u1").unwrap();
        assert_eq!(
            (
                task.instruction.as_str(),
                task.actions[0].arguments["a"].clone(),
                task.outputs[0].as_str()
            ),
            ("x", 1.into(), "12")
        );
    }
}
