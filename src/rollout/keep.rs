//! What a verified conversation must also do to be kept as training data, and why a failed one
//! failed.
//!
//! tau-bench's reward says the final database is right and the outputs were said; a
//! conversation can earn it and still teach the wrong behaviour (an agent that looks up
//! `example_user_id`, a user who talks like the agent). [`keep_problem`] applies the rules below
//! to a rewarded conversation, first broken rule wins; each is a `not_kept` reason with its own
//! count in the summary. `eval` never applies them: its reward is tau-bench's.
//!
//! - `keep.gold_arguments`: a gold write was not called with the gold arguments, or a gold
//!   read with an id was not called with that id;
//! - `keep.invented_id`: a call used an id that is in neither the instruction, the user's lines,
//!   nor an earlier tool result;
//! - `keep.unsaid_value`: a write's string value that is not an id (a reason, an address, a
//!   memo) is, in any form, in neither the user's lines nor an earlier tool result: the agent
//!   chose it for the customer;
//! - `keep.unrecovered_error`: a tool answered `Error: ...` and the agent never called that tool
//!   successfully afterwards;
//! - `keep.needless_transfer`: the agent handed the customer to a human, which the gold actions
//!   do not;
//! - `keep.unconfirmed_write`: the agent made a write without the customer's "yes" to its
//!   words since the previous write (every domain's policy asks for it);
//! - `keep.ask_after_done`: with every gold write made, the agent still puts a change to the
//!   customer or asks for what one needs ("To freeze account acc_1012, please provide the
//!   reason."): a closing that teaches the agent to keep going after the job is done;
//! - `keep.agent_third_person`: the agent speaks of "the customer" to the customer;
//! - `keep.user_out_of_role`: a user line reads as the agent's ("How can I help you today?"),
//!   promises the agent's action ("Sure, I'll freeze account acc_1005.", [`acts_as_agent`]), or
//!   speaks of the customer in the third person ([`third_person`], or an opening with no word
//!   of the first person, [`opening_impersonal`]).
//!
//! [`fault`] labels a failed or filtered attempt `agent`, `user`, `task` or `unclear`, with the
//! evidence, from these deterministic signals.

use super::guide::{Step, confirmed};
use crate::domain::ground::{id_arguments, normalise};
use crate::domain::task::{RESPOND_ACTION_NAME, Task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Phrases of an assistant, not a customer: a user line containing one is out of role.
pub const AGENT_PHRASES: &[&str] = &[
    "how can i help you",
    "how can i assist you",
    "how may i help you",
    "how may i assist you",
    "i'd be happy to assist",
    "i'd be happy to help",
    "i would be happy to help",
    "is there anything else i can help",
    "feel free to let me know",
    "if you have any questions or need assistance",
    "if you have any other questions",
    "i'm ready to assist",
    "how can i assist",
    "is there anything i can help",
    "is there anything i can do for you",
    "what can i do for you",
    "how can i be of assistance",
    "i'm here to help",
    "would you like to proceed",
    "would you like me to",
    "do you want me to",
];

/// Words too common to show that a line is about the customer's situation.
const COMMON: &[&str] = &[
    "about",
    "also",
    "anything",
    "been",
    "could",
    "days",
    "from",
    "have",
    "hello",
    "help",
    "here",
    "hold",
    "information",
    "into",
    "just",
    "know",
    "like",
    "make",
    "more",
    "need",
    "only",
    "please",
    "proceed",
    "should",
    "some",
    "sure",
    "than",
    "thank",
    "thanks",
    "that",
    "their",
    "them",
    "then",
    "there",
    "they",
    "this",
    "today",
    "very",
    "want",
    "well",
    "were",
    "what",
    "when",
    "which",
    "will",
    "with",
    "would",
    "your",
    "you're",
    "okay",
];

/// The words of `text` that say something: ids (anything with a digit) and words of four
/// letters or more that are not [`COMMON`].
fn content_words(text: &str) -> std::collections::BTreeSet<String> {
    normalise(text)
        .split(|c: char| c.is_whitespace() || ",;:()[]{}\"!?.".contains(c))
        .map(|w| w.trim_matches(['\'', '-']).to_owned())
        .filter(|w| {
            w.chars().any(|c| c.is_ascii_digit())
                || (w.chars().filter(|c| c.is_alphabetic()).count() >= 4
                    && !COMMON.contains(&w.as_str()))
        })
        .collect()
}

/// Why a user's opening line would be sampled again: in the agent's voice, or about nothing the
/// instruction says (`off_task`: "(I'll hold on...)", "Just let me know what you need.") — an
/// opening that gives the agent nothing to act on.
pub fn opening_problem(line: &str, instruction: &str) -> Option<String> {
    if let Some(p) = out_of_role(line) {
        return Some(format!("agent_voice: \"{p}\""));
    }
    if opening_impersonal(line) {
        return Some(format!("third_person: {line:?}"));
    }
    let said = content_words(line);
    let situation = content_words(instruction);
    (said.intersection(&situation).next().is_none()).then(|| format!("off_task: {line:?}"))
}

/// Speaker labels under which a user model writes the agent's turn ("Agent: I have received
/// your request...").
const AGENT_LABELS: &[&str] = &["agent:", "assistant:", "customer service:", "support:"];

/// Whether a user line reads as the agent's: one of [`AGENT_PHRASES`], or a line of it under
/// the agent's speaker label.
pub fn out_of_role(line: &str) -> Option<&'static str> {
    let l = normalise(line).replace('’', "'");
    if let Some(p) = AGENT_PHRASES.iter().copied().find(|p| l.contains(p)) {
        return Some(p);
    }
    line.lines().find_map(agent_label)
}

/// The verbs of a domain's write tools, the first word of each name (`freeze_account`:
/// "freeze", `cancel_pending_order`: "cancel").
pub fn write_verbs<'a>(writes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut verbs: Vec<String> = writes
        .into_iter()
        .filter_map(|n| n.split('_').next())
        .filter(|v| v.len() >= 3)
        .map(str::to_owned)
        .collect();
    verbs.sort();
    verbs.dedup();
    verbs
}

/// The verbs of the writes a conversation is about: the gold writes and the writes called.
fn task_verbs(task: &Task, calls: &[Call], is_write: &impl Fn(&str) -> bool) -> Vec<String> {
    write_verbs(
        task.actions
            .iter()
            .map(|a| a.name.as_str())
            .chain(calls.iter().map(|c| c.name.as_str()))
            .filter(|n| is_write(n)),
    )
}

/// Whether a user line promises the agent's action on the customer's behalf ("Sure, I'll
/// freeze account acc_1005.", "I will proceed with the transfer."): `verbs` are
/// [`write_verbs`]. A customer asks for a change; the agent says it will make it.
pub fn acts_as_agent(line: &str, verbs: &[String]) -> Option<String> {
    let l = normalise(line).replace('’', "'");
    let promises = ["i'll", "i will", "let me"];
    for v in verbs
        .iter()
        .map(String::as_str)
        .chain(["proceed", "go ahead and"])
    {
        for p in promises {
            let phrase = format!("{p} {v}");
            if crate::domain::ground::contains_word(&l, &phrase) {
                return Some(phrase);
            }
        }
    }
    None
}

/// Whether a user line speaks of the customer in the third person ("Eleni Vasquez, zip code
/// 94614, wants her default address changed"): a verb of wanting and no word of the first
/// person. A customer says what they want.
pub fn third_person(line: &str) -> bool {
    let words = words_of(line);
    let wants = [
        "wants",
        "needs",
        "requests",
        "wishes",
        "requested",
        "requesting",
    ];
    words.iter().any(|w| wants.contains(&w.as_str())) && !first_person(&words)
}

/// The words of a line, lowercased, apostrophes kept ("i'm").
fn words_of(line: &str) -> Vec<String> {
    normalise(line)
        .replace('’', "'")
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether any of `words` is of the first person.
fn first_person(words: &[String]) -> bool {
    let first = [
        "i", "i'm", "i'd", "i've", "i'll", "me", "my", "mine", "myself", "we", "we're", "we'd",
        "our", "us",
    ];
    words.iter().any(|w| first.contains(&w.as_str()))
}

/// Whether an opening line of some length says nothing in the first person ("Frances
/// Hamilton, moving 100.0 from acc_1010 to acc_1007, frozen due to 'customer request'."): a
/// summary of the customer, not the customer speaking.
pub fn opening_impersonal(line: &str) -> bool {
    let words = words_of(line);
    words.len() >= 6 && !first_person(&words)
}

/// [`out_of_role`] or [`acts_as_agent`]: the phrase that puts a user line in the agent's role.
pub fn agent_voice(line: &str, verbs: &[String]) -> Option<String> {
    out_of_role(line)
        .map(str::to_owned)
        .or_else(|| acts_as_agent(line, verbs))
}

/// The agent's speaker label a row of a user line opens with.
fn agent_label(row: &str) -> Option<&'static str> {
    let row = row.trim_start_matches(['*', ' ', '\t']).to_lowercase();
    AGENT_LABELS.iter().copied().find(|a| row.starts_with(a))
}

/// A user line without its sentences in the agent's voice ("I need order #W1 cancelled. How
/// can I assist you further?" keeps its first sentence); `None` when no sentence is left.
pub fn without_agent_voice(line: &str) -> Option<String> {
    // What follows the agent's speaker label is all the agent's.
    let mut before = 0;
    for row in line.split_inclusive('\n') {
        if agent_label(row).is_some() {
            break;
        }
        before += row.len();
    }
    let line = &line[..before];
    let mut kept = String::new();
    let mut start = 0;
    let bytes: Vec<(usize, char)> = line.char_indices().collect();
    for (i, &(at, c)) in bytes.iter().enumerate() {
        let end_of_sentence =
            matches!(c, '.' | '!' | '?') && bytes.get(i + 1).is_none_or(|(_, n)| n.is_whitespace());
        if end_of_sentence || i + 1 == bytes.len() {
            let sentence = &line[start..at + c.len_utf8()];
            if out_of_role(sentence).is_none() && !sentence.trim().is_empty() {
                kept.push_str(sentence);
            }
            start = at + c.len_utf8();
        }
    }
    let kept = kept.trim().to_owned();
    (!kept.is_empty()).then_some(kept)
}

/// Why a user line would be sampled again: it reads as the agent's (`agent_voice`, with
/// `verbs` of the domain's writes for [`acts_as_agent`]), or states
/// an id (a token with digits: an account, an order, a zip) that neither the instruction nor the
/// agent's lines so far contain (`unknown_id`), so the user invented it or took it from another
/// customer.
pub fn user_line_problem(
    line: &str,
    instruction: &str,
    agent_lines: &[&str],
    verbs: &[String],
) -> Option<String> {
    if let Some(p) = agent_voice(line, verbs) {
        return Some(format!("agent_voice: \"{p}\""));
    }
    if third_person(line) {
        return Some(format!("third_person: {line:?}"));
    }
    // The agent's words handed back ("Please provide the amount you wish to transfer, and I
    // will proceed."): not a customer's answer.
    let bare = |t: &str| {
        normalise(t)
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect::<String>()
    };
    let said = bare(line);
    if said.split_whitespace().count() >= 4
        && agent_lines.last().is_some_and(|a| bare(a).contains(&said))
    {
        return Some(format!("echo: {line:?}"));
    }
    let mut known = normalise(instruction);
    for l in agent_lines {
        known.push(' ');
        known.push_str(&normalise(l));
    }
    for token in line.split(|c: char| c.is_whitespace() || ",;:()[]{}\"'!?".contains(c)) {
        let t = token.trim_end_matches(['.', '-']).to_lowercase();
        let digits = t.chars().filter(char::is_ascii_digit).count();
        let letters = t.chars().any(|c| c.is_alphabetic() || c == '_' || c == '#');
        // An e-mail, letters with digits (`acc_1005`, `#w123`), or a long number (a zip).
        let id = t.contains('@')
            || (digits > 0 && letters && t.len() >= 4)
            || (digits >= 5 && digits == t.chars().count());
        if id && !crate::domain::ground::contains_word(&known, &t) {
            return Some(format!("unknown_id: {t}"));
        }
    }
    None
}

/// Whether `id` occurs in `seen` (normalised text), with or without its leading `#`.
pub(crate) fn id_given(seen: &str, id: &str) -> bool {
    let id = normalise(id);
    seen.contains(&id) || seen.contains(id.trim_start_matches('#'))
}

/// A broken keep rule: its code and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepProblem {
    pub code: String,
    pub detail: String,
}

fn problem(code: &str, detail: String) -> Option<KeepProblem> {
    Some(KeepProblem {
        code: code.into(),
        detail,
    })
}

/// One tool call of the agent, with its position in the conversation.
struct Call {
    at: usize,
    name: String,
    arguments: Map<String, Value>,
}

fn calls(messages: &[Value]) -> Vec<Call> {
    let mut out = Vec::new();
    for (at, m) in messages.iter().enumerate() {
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            let f = &c["function"];
            let arguments = match &f["arguments"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
                Value::Object(o) => o.clone(),
                _ => Map::new(),
            };
            out.push(Call {
                at,
                name: f["name"].as_str().unwrap_or_default().to_owned(),
                arguments,
            });
        }
    }
    out
}

/// Arguments equal as JSON, numbers compared by value (`250.5` and `250.50`).
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn text_of(m: &Value) -> String {
    m["content"].as_str().unwrap_or_default().to_owned()
}

/// The first keep rule a rewarded conversation breaks. `writes` says which tools change the
/// database; `terminate` are the hand-over tools.
pub fn keep_problem(
    task: &Task,
    messages: &[Value],
    is_write: impl Fn(&str) -> bool,
    terminate: &[String],
) -> Option<KeepProblem> {
    let calls = calls(messages);
    for gold in task
        .actions
        .iter()
        .filter(|a| a.name != RESPOND_ACTION_NAME)
    {
        let gold_value = Value::Object(gold.arguments.clone());
        let ok = if is_write(&gold.name) {
            calls.iter().any(|c| {
                c.name == gold.name && same(&Value::Object(c.arguments.clone()), &gold_value)
            })
        } else {
            let ids = id_arguments(&gold.arguments);
            // A lookup by name or e-mail has alternatives; a read of an id does not.
            ids.is_empty()
                || calls
                    .iter()
                    .any(|c| c.name == gold.name && id_arguments(&c.arguments) == ids)
        };
        if !ok {
            return problem(
                "keep.gold_arguments",
                format!(
                    "the agent never called {} with the gold arguments {}",
                    gold.name,
                    crate::pyjson::dumps(&gold_value)
                ),
            );
        }
    }
    // Ids must come from somewhere the agent could see.
    let mut seen = normalise(&task.instruction);
    let mut next_call = 0;
    for (at, m) in messages.iter().enumerate() {
        while next_call < calls.len() && calls[next_call].at == at {
            let c = &calls[next_call];
            for (key, v) in id_arguments(&c.arguments) {
                if !id_given(&seen, &v) {
                    return problem(
                        "keep.invented_id",
                        format!(
                            "{}: {key} {v:?} is in neither the instruction, the user's lines nor an earlier tool result",
                            c.name
                        ),
                    );
                }
            }
            next_call += 1;
        }
        match m["role"].as_str() {
            Some("user") | Some("tool") => {
                seen.push(' ');
                seen.push_str(&normalise(&text_of(m)));
            }
            _ => {}
        }
    }
    // A write's values (a reason, an address, a memo) come from the customer or the records.
    let mut told = String::new();
    let mut next_call = 0;
    for (at, m) in messages.iter().enumerate() {
        while next_call < calls.len() && calls[next_call].at == at {
            let c = &calls[next_call];
            next_call += 1;
            if !is_write(&c.name) {
                continue;
            }
            for (key, v) in &c.arguments {
                let Value::String(v) = v else { continue };
                if crate::domain::ground::id_like(key) || v.trim().is_empty() {
                    continue;
                }
                if !super::guide::option_said(&told, v) {
                    return problem(
                        "keep.unsaid_value",
                        format!(
                            "{}: {key} {v:?} is in neither the user's lines nor an earlier tool result",
                            c.name
                        ),
                    );
                }
            }
        }
        if matches!(m["role"].as_str(), Some("user") | Some("tool")) {
            told.push(' ');
            told.push_str(&normalise(&text_of(m)));
        }
    }
    // Every tool error recovered by a later successful call of the same tool.
    let tools: Vec<(usize, &str, bool)> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m["role"] == "tool")
        .map(|(i, m)| {
            (
                i,
                m["name"].as_str().unwrap_or_default(),
                text_of(m).starts_with("Error"),
            )
        })
        .collect();
    for (i, name, err) in &tools {
        if *err && !tools.iter().any(|(j, n, e)| j > i && n == name && !e) {
            return problem(
                "keep.unrecovered_error",
                format!("{name} answered an error at message {i} and never succeeded afterwards"),
            );
        }
    }
    if let Some(c) = calls.iter().find(|c| terminate.contains(&c.name)) {
        if !task.actions.iter().any(|a| a.name == c.name) {
            return problem(
                "keep.needless_transfer",
                format!("the agent called {} though the gold actions do not", c.name),
            );
        }
    }
    // Every write after the customer's yes to what the agent put to them.
    fn step<'m>(m: &'m Value, is_write: &impl Fn(&str) -> bool) -> Step<'m> {
        match m["role"].as_str() {
            Some("user") => Step::User(m["content"].as_str().unwrap_or_default()),
            Some("assistant") => {
                let names: Vec<&str> = m["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["function"]["name"].as_str())
                    .collect();
                if names.iter().any(|n| is_write(n)) {
                    Step::AgentWrite
                } else if names.is_empty() && !text_of(m).trim().is_empty() {
                    Step::AgentText
                } else {
                    Step::Other
                }
            }
            _ => Step::Other,
        }
    }
    for (at, m) in messages.iter().enumerate() {
        if matches!(step(m, &is_write), Step::AgentWrite)
            && !confirmed(messages[..at].iter().map(|m| step(m, &is_write)))
        {
            let c = calls.iter().find(|c| c.at == at && is_write(&c.name));
            return problem(
                "keep.unconfirmed_write",
                format!(
                    "the agent called {} without the customer's yes to it since the previous write",
                    c.map_or("a write", |c| c.name.as_str())
                ),
            );
        }
    }
    // With every gold write made, no more changes put to the customer.
    let gold_writes: Vec<&crate::domain::task::Action> =
        task.actions.iter().filter(|a| is_write(&a.name)).collect();
    let mut made = vec![false; gold_writes.len()];
    for c in &calls {
        if let Some(i) = gold_writes.iter().position(|g| {
            g.name == c.name
                && same(
                    &Value::Object(g.arguments.clone()),
                    &Value::Object(c.arguments.clone()),
                )
        }) {
            made[i] = true;
        }
        if !made.is_empty() && made.iter().all(|m| *m) {
            let after = messages[c.at + 1..]
                .iter()
                .filter(|m| m["role"] == "assistant")
                .map(text_of)
                .find(|t| super::guide::asks_for_change(&normalise(t)));
            if let Some(t) = after {
                return problem(
                    "keep.ask_after_done",
                    format!(
                        "with every gold write made the agent still asked: {:?}",
                        short(&t)
                    ),
                );
            }
            break;
        }
    }
    if let Some(t) = messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .map(text_of)
        .find(|t| super::guide::of_the_customer(t))
    {
        return problem(
            "keep.agent_third_person",
            format!("the agent spoke of the customer to them: {:?}", short(&t)),
        );
    }
    let verbs = task_verbs(task, &calls, &is_write);
    for (i, m) in messages.iter().filter(|m| m["role"] == "user").enumerate() {
        if third_person(&text_of(m)) || (i == 0 && opening_impersonal(&text_of(m))) {
            return problem(
                "keep.user_out_of_role",
                format!(
                    "the user spoke of the customer in the third person: {:?}",
                    short(&text_of(m))
                ),
            );
        }
        if let Some(p) = agent_voice(&text_of(m), &verbs) {
            return problem(
                "keep.user_out_of_role",
                format!(
                    "the user said \"{p}\", which is the agent's line: {:?}",
                    short(&text_of(m))
                ),
            );
        }
    }
    None
}

fn short(s: &str) -> String {
    let t: String = s.chars().take(160).collect();
    if t.len() < s.len() { t + "..." } else { t }
}

/// Who a failed or filtered attempt's failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultLabel {
    Agent,
    User,
    Task,
    Unclear,
}

/// A fault label with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub fault: FaultLabel,
    pub evidence: String,
}

/// Label a failed attempt (`code` is the episode's failure code, `keep` the broken keep rule of
/// a rewarded one), from deterministic signals: the user out of role or stopping before the
/// agent acted is the user's; a gold write needing a value the instruction never gives is the
/// task's; an agent
/// that invented an id, called a write the gold actions lack, left an error unrecovered or
/// never authenticated is the agent's.
pub fn fault(
    task: &Task,
    messages: &[Value],
    code: Option<&str>,
    keep: Option<&KeepProblem>,
    is_write: impl Fn(&str) -> bool,
) -> Fault {
    let f = |fault, evidence: String| Fault { fault, evidence };
    if let Some(k) = keep {
        return match k.code.as_str() {
            "keep.user_out_of_role" => f(FaultLabel::User, k.detail.clone()),
            _ => f(FaultLabel::Agent, k.detail.clone()),
        };
    }
    let calls = calls(messages);
    let verbs = task_verbs(task, &calls, &is_write);
    for m in messages.iter().filter(|m| m["role"] == "user") {
        if let Some(p) = agent_voice(&text_of(m), &verbs) {
            return f(
                FaultLabel::User,
                format!("the user said \"{p}\", the agent's line"),
            );
        }
        if third_person(&text_of(m)) {
            return f(
                FaultLabel::User,
                "the user spoke of the customer in the third person".into(),
            );
        }
    }
    if code == Some("rollout.user_stopped_early") {
        return f(
            FaultLabel::User,
            "the user ended the conversation before the agent acted".into(),
        );
    }
    // A value a gold write needs that the instruction never gives: no user could have said it.
    let instruction = normalise(&task.instruction);
    for gold in task.actions.iter().filter(|a| is_write(&a.name)) {
        for (key, v) in &gold.arguments {
            if crate::domain::ground::id_like(key) {
                continue;
            }
            let text = match v {
                Value::String(s) if !s.is_empty() => normalise(s),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            let two = v.as_f64().map(|x| format!("{x:.2}"));
            if !instruction.contains(&text) && two.is_none_or(|t| !instruction.contains(&t)) {
                return f(
                    FaultLabel::Task,
                    format!(
                        "{} needs {key} {v} but the instruction never says it",
                        gold.name
                    ),
                );
            }
        }
    }
    if let Some(c) = calls
        .iter()
        .find(|c| is_write(&c.name) && !task.actions.iter().any(|a| a.name == c.name))
    {
        return f(
            FaultLabel::Agent,
            format!(
                "the agent called the write {}, which the gold actions do not contain",
                c.name
            ),
        );
    }
    if let Some(k) = keep_problem(task, messages, &is_write, &[]) {
        if k.code != "keep.gold_arguments" {
            return f(FaultLabel::Agent, k.detail);
        }
    }
    let said_by_user: String = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| normalise(&text_of(m)))
        .collect::<Vec<_>>()
        .join(" ");
    // The ids the gold writes need: if the user never gave one the instruction holds, the user
    // withheld it; if they did, the agent did not use it.
    for gold in task.actions.iter().filter(|a| is_write(&a.name)) {
        for (key, v) in id_arguments(&gold.arguments) {
            let nv = normalise(&v);
            if instruction.contains(&nv) && !said_by_user.contains(&nv) {
                return f(
                    FaultLabel::User,
                    format!("the instruction gives {key} {v:?} but the user never said it"),
                );
            }
        }
        if !calls.iter().any(|c| c.name == gold.name) {
            return f(
                FaultLabel::Agent,
                format!("the agent never called {}, which the task needs", gold.name),
            );
        }
    }
    match code {
        Some("rollout.output_missing") => f(
            FaultLabel::Agent,
            "the agent did not say every expected output".into(),
        ),
        Some("rollout.db_mismatch") => f(
            FaultLabel::Agent,
            "the agent's changes differ from the gold actions'".into(),
        ),
        Some(c) => f(FaultLabel::Unclear, format!("failed with {c}")),
        None => f(FaultLabel::Unclear, "no deterministic signal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::task::Action;
    use serde_json::json;

    fn task() -> Task {
        let mut args = Map::new();
        args.insert("account_id".into(), json!("acc_1008"));
        Task {
            user_id: "acc_1008".into(),
            instruction: "You are Donald Liskov, account acc_1008.".into(),
            actions: vec![Action::new("get_account", args)],
            outputs: vec![],
            extra: Map::new(),
        }
    }

    fn call(name: &str, args: Value) -> Value {
        json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name, "arguments": args.to_string()}}]})
    }

    #[test]
    fn keep_rules_catch_what_the_reward_does_not() {
        let t = task();
        let no_writes = |_: &str| false;
        let user = |s: &str| json!({"role": "user", "content": s});
        let tool = |n: &str, s: &str| json!({"role": "tool", "name": n, "content": s});
        let good = vec![
            user("Hi, I am Donald Liskov, acc_1008."),
            call("get_account", json!({"account_id": "acc_1008"})),
            tool("get_account", "{\"balance\": 1}"),
        ];
        assert_eq!(keep_problem(&t, &good, no_writes, &[]), None);
        let mut wrong_id = good.clone();
        wrong_id.push(call("get_account", json!({"account_id": "acc_1001"})));
        wrong_id.push(tool("get_account", "{}"));
        let code = |m: &[Value]| {
            keep_problem(&t, m, no_writes, &["transfer_to_human_agents".to_owned()]).map(|p| p.code)
        };
        assert_eq!(code(&wrong_id).as_deref(), Some("keep.invented_id"));
        let mut errored = good.clone();
        errored.push(call("get_account", json!({"account_id": "acc_1008"})));
        errored.push(tool("get_account", "Error: account not found"));
        assert_eq!(code(&errored).as_deref(), Some("keep.unrecovered_error"));
        let mut handed = good.clone();
        handed.push(call("transfer_to_human_agents", json!({"summary": "x"})));
        assert_eq!(code(&handed).as_deref(), Some("keep.needless_transfer"));
        let mut helper = good.clone();
        helper.push(user("Hello! How can I help you today?"));
        assert_eq!(code(&helper).as_deref(), Some("keep.user_out_of_role"));
        assert_eq!(code(&good[..1]).as_deref(), Some("keep.gold_arguments"));
    }

    #[test]
    fn a_write_needs_the_customers_yes_since_the_last_write() {
        let mut t = task();
        let args = json!({"account_id": "acc_1008", "reason": "lost card"});
        t.actions.push(Action::new(
            "freeze_account",
            args.as_object().unwrap().clone(),
        ));
        let is_write = |n: &str| n == "freeze_account";
        let user = |s: &str| json!({"role": "user", "content": s});
        let agent = |s: &str| json!({"role": "assistant", "content": s});
        let tool = |n: &str| json!({"role": "tool", "name": n, "content": "{}"});
        let read = [
            user("I am Donald Liskov, acc_1008. I lost my card."),
            call("get_account", json!({"account_id": "acc_1008"})),
            tool("get_account"),
        ];
        let mut hasty = read.to_vec();
        hasty.extend([call("freeze_account", args.clone()), tool("freeze_account")]);
        let code = |m: &[Value]| keep_problem(&t, m, is_write, &[]).map(|p| p.code);
        assert_eq!(code(&hasty).as_deref(), Some("keep.unconfirmed_write"));
        let mut asked = read.to_vec();
        asked.extend([
            agent("I will freeze acc_1008 for a lost card. Shall I?"),
            user("Yes, go ahead."),
            call("freeze_account", args.clone()),
            tool("freeze_account"),
        ]);
        assert_eq!(code(&asked), None);
        // After the freeze, asking for it again, or for what it needs, is not a closing.
        for closing in [
            "Your account acc_1008 is frozen. Please confirm that you want it frozen.",
            "To freeze account acc_1008, please provide the reason.",
        ] {
            let mut again = asked.clone();
            again.push(agent(closing));
            assert_eq!(code(&again).as_deref(), Some("keep.ask_after_done"));
        }
        let mut done = asked.clone();
        done.push(agent("Account acc_1008 is now frozen. Anything else?"));
        assert_eq!(code(&done), None);
        // Before the write, the same words are the question the policy asks for.
        let mut before = read.to_vec();
        before.extend([agent("Please confirm: freeze acc_1008 for a lost card?")]);
        before.extend(asked[3..].iter().cloned());
        assert_eq!(code(&before), None);
        // Speaking of the customer to them.
        let mut spoken_of = asked.clone();
        spoken_of[3] = agent("I will freeze the customer's account acc_1008. Shall I?");
        assert_eq!(code(&spoken_of).as_deref(), Some("keep.agent_third_person"));
        // The customer promising the write is out of role.
        let mut promised = asked.clone();
        promised[4] = user("Sure, I'll freeze account acc_1008.");
        assert_eq!(code(&promised).as_deref(), Some("keep.user_out_of_role"));
        // The reason chosen for the customer, who never gave one.
        let mut chosen = asked.clone();
        chosen[0] = user("I am Donald Liskov, acc_1008. Please freeze it.");
        assert_eq!(code(&chosen).as_deref(), Some("keep.unsaid_value"));
    }

    #[test]
    fn each_fault_label_has_its_signal() {
        let t = task();
        let no_writes = |_: &str| false;
        let user = |s: &str| json!({"role": "user", "content": s});
        let label = |m: &[Value], code: Option<&str>| fault(&t, m, code, None, no_writes).fault;
        assert_eq!(
            label(
                &[user("How can I assist you today?")],
                Some("rollout.db_mismatch")
            ),
            FaultLabel::User
        );
        let mut freeze = task();
        let mut args = Map::new();
        args.insert("account_id".into(), json!("acc_1008"));
        args.insert("reason".into(), json!("lost card"));
        freeze.actions.push(Action::new("freeze_account", args));
        let writes = |n: &str| n == "freeze_account";
        assert_eq!(
            fault(
                &freeze,
                &[user("I am Donald Liskov.")],
                Some("rollout.db_mismatch"),
                None,
                writes
            )
            .fault,
            FaultLabel::Task,
            "the instruction never gives the reason"
        );
        assert_eq!(
            label(
                &[
                    user("I am Donald Liskov."),
                    call("get_account", json!({"account_id": "acc_9"}))
                ],
                Some("rollout.output_missing")
            ),
            FaultLabel::Agent
        );
        assert_eq!(
            label(&[user("I am Donald Liskov.")], Some("rollout.max_steps")),
            FaultLabel::Unclear
        );
    }
}

#[cfg(test)]
mod user_line_tests {
    use super::{acts_as_agent, third_person, user_line_problem, write_verbs};

    #[test]
    fn an_opening_must_be_about_the_customers_situation() {
        use super::opening_problem as problem;
        let ins = "You are Freya Petrov, zip code 95844. You want to cancel your pending order #W6472811.";
        assert_eq!(problem("Hi, I'd like to cancel an order.", ins), None);
        assert_eq!(problem("Hello, this is Freya.", ins), None);
        assert_eq!(problem("It's about order W6472811", ins), None);
        assert!(
            problem("(I'll hold on...)", ins)
                .unwrap()
                .starts_with("off_task")
        );
        assert!(
            problem("Just let me know what you need.", ins)
                .unwrap()
                .starts_with("off_task")
        );
        assert!(
            problem("Hello. Is there anything I can help you with?", ins)
                .unwrap()
                .starts_with("agent_voice")
        );
        // A summary of the customer, not the customer speaking.
        assert!(
            problem(
                "Freya Petrov, zip 95844, cancelling pending order #W6472811.",
                ins
            )
            .unwrap()
            .starts_with("third_person")
        );
        assert_eq!(
            problem("Cancel pending order #W6472811 for me, please.", ins),
            None
        );
    }

    #[test]
    fn sentences_in_the_agents_voice_are_cut_from_a_user_line() {
        use super::without_agent_voice as cut;
        assert_eq!(
            cut("I need order #W1 cancelled. How can I assist you further?").as_deref(),
            Some("I need order #W1 cancelled.")
        );
        assert_eq!(
            cut("Hello! How can I help you today? My zip is 10001.").as_deref(),
            Some("Hello! My zip is 10001.")
        );
        assert_eq!(cut("How can I help you today?"), None);
        assert_eq!(
            cut("Yes, go ahead.\nAgent: The transfer is done. Anything else?").as_deref(),
            Some("Yes, go ahead.")
        );
        assert_eq!(cut("Agent: I have received your request."), None);
        assert_eq!(
            cut("Version 2.5 please.").as_deref(),
            Some("Version 2.5 please.")
        );
    }

    #[test]
    fn user_lines_in_role_and_with_known_ids_pass() {
        let ins = "You are Ada Turing, account acc_1003. Freeze it.";
        let v = write_verbs(["freeze_account", "transfer_funds", "get_account"]);
        assert_eq!(v, ["freeze", "get", "transfer"]);
        assert_eq!(
            user_line_problem("Please freeze acc_1003.", ins, &[], &v),
            None
        );
        assert_eq!(
            user_line_problem("It's $250 on 2024-05-16, thanks!", ins, &[], &v),
            None
        );
        // An id the agent said is known to the user.
        assert_eq!(
            user_line_problem(
                "Yes, order #W1234567.",
                ins,
                &["Is it order #W1234567?"],
                &v
            ),
            None
        );
        for agent in [
            "How can I help you today?",
            "Sure! Would you like to proceed with the transaction?",
        ] {
            assert!(
                user_line_problem(agent, ins, &[], &v)
                    .unwrap()
                    .starts_with("agent_voice"),
                "{agent}"
            );
        }
        let asked = ["Please provide the amount you wish to transfer, and I will proceed."];
        assert!(
            user_line_problem(
                "Please provide the amount you wish to transfer.",
                ins,
                &asked,
                &v
            )
            .unwrap()
            .starts_with("echo")
        );
        assert_eq!(
            user_line_problem("Yes, please proceed.", ins, &asked, &v),
            None
        );
        assert_eq!(
            user_line_problem("Agent: I have received your request.", ins, &[], &v).as_deref(),
            Some("agent_voice: \"agent:\"")
        );
        assert_eq!(
            user_line_problem("My account is acc_1005.", ins, &[], &v).as_deref(),
            Some("unknown_id: acc_1005")
        );
        assert_eq!(
            user_line_problem("I'm at zip 94107.", ins, &[], &v).as_deref(),
            Some("unknown_id: 94107")
        );
        // The customer answering a confirmation with the agent's promise.
        assert_eq!(
            user_line_problem("Sure, I'll freeze account acc_1003.", ins, &[], &v).as_deref(),
            Some("agent_voice: \"i'll freeze\"")
        );
        assert_eq!(
            acts_as_agent("OK, I will go ahead and move it.", &v).as_deref(),
            Some("i will go ahead and")
        );
        assert_eq!(acts_as_agent("Yes, please freeze it.", &v), None);
        assert_eq!(
            acts_as_agent("I want to transfer $5 and freeze acc_1003.", &v),
            None
        );
        // The customer spoken of, not speaking.
        assert!(
            user_line_problem(
                "Ada Turing, account acc_1003, wants it frozen for a lost card.",
                ins,
                &[],
                &v
            )
            .unwrap()
            .starts_with("third_person")
        );
        assert!(!third_person(
            "I'm Ada Turing and my card is lost: she wants it frozen."
        ));
        assert!(!third_person("Yes."));
        // A word that only starts with a verb is not the verb.
        assert_eq!(acts_as_agent("I'll freezer-bag it.", &v), None);
    }
}
