//! Guarding a data-generating agent's turns, so that fewer conversations are lost to mistakes
//! that no kept conversation may contain (`eval` uses none of this: it scores the model as it
//! is).
//!
//! - **Seen ids** ([`grounded_tools`]): the grammar an agent reply is decoded under admits, for
//!   every id-like argument (`*_id`, `*_ids`, `*_number`), only values already in a user line or
//!   a tool result. A call with an id nobody gave (`get_user_details("sara_doe_496")`, the schema's
//!   example) cannot be written; a tool whose required id has no candidate yet is left out of the
//!   grammar, so the model asks instead. This is the keep rule `keep.invented_id` applied while
//!   decoding, and it needs no gold.
//! - **Turns drawn again** ([`turn_problem`]): a reply whose call would make the conversation
//!   unkeepable — a write that is none of the gold writes still to do (`write_off_gold`), a
//!   hand-over the gold actions lack (`needless_transfer`), an id nobody gave (`invented_id`,
//!   when the grammar is off) — or that only wastes a step — an argument copied from the
//!   schema's example (`schema_example`: `calculate("2 + 2")`), the call just answered again
//!   (`repeated_call`) — is sampled again, up to a bound, before anything is executed.
//!   The kept conversation is still the agent model's own samples, step by step; what the bound
//!   changes is how many attempts are lost to one bad sample (step-level rejection sampling
//!   against the verifier, where the method as published rejects whole conversations).
//! - **Writes gated** ([`gated_tools`]): the grammar offers a write tool only while a gold write
//!   of it is the next one to make, in the gold order (with only the arguments the gold write
//!   uses, a list as long as the gold one), a calculator or a scratchpad only where the gold
//!   actions use it or outputs are to be worked out, a hand-over only when the gold actions hand
//!   over: the rejections above applied while decoding. Its choices are only those said, and its
//!   free text (a passenger's name, a birth date, a street) only as it was said where the gold
//!   value was ([`said_values`]).
//! - **Notes** ([`Note`]): a gold write called before the gold read it rests on, or before the
//!   customer's yes ([`confirmed`]), is not made; the reply is drawn again under a note for that
//!   one reply — "call get_account now", "say what you are about to do and ask them to confirm"
//!   — and the note stays out of the record. The call or the words are the model's; the step
//!   is the one the policy puts before a write. Like the gold actions behind every guard here,
//!   the notes are privileged information the agent's record does not show: what is kept is a
//!   conversation a policy-following agent would have had, sampled from this agent.

use super::keep::same;
use crate::domain::ground::{id_arguments, id_like, normalise};
use crate::domain::task::{Action, RESPOND_ACTION_NAME, Task};
use crate::llm::chat::Message;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Whether a string could be an id: no whitespace, 2 to 64 characters, and a digit (`acc_1004`,
/// `#W5714368`, `1008292230`, `credit_card_123`, `ZFA04Y`, `HAT001`) or five or more capitals
/// and digits only (airline's reservation `TIZCTW`).
fn id_shaped(s: &str) -> bool {
    let n = s.chars().count();
    (2..=64).contains(&n)
        && !s.chars().any(char::is_whitespace)
        && (s.chars().any(|c| c.is_ascii_digit())
            || (n >= 5
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())))
}

/// What an id looks like, to tell one kind from another: its punctuation, the case of its
/// letters, and, for capitals-and-digits or digits alone, its length (`#W0000000`: `#`, upper;
/// `sara_doe_496`: `_`, lower; `ZFA04Y`: upper, 6; `6086499569`: digits, 10).
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    punctuation: BTreeSet<char>,
    lower: bool,
    upper: bool,
    len: Option<usize>,
}

fn shape(s: &str) -> Shape {
    let punctuation: BTreeSet<char> = s.chars().filter(|c| !c.is_alphanumeric()).collect();
    let lower = s.chars().any(char::is_lowercase);
    let upper = s.chars().any(char::is_uppercase);
    let len = (punctuation.is_empty() && !lower).then(|| s.chars().count());
    Shape {
        punctuation,
        lower,
        upper,
        len,
    }
}

fn strings_of(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            if id_shaped(s) {
                out.insert(s.clone());
            }
        }
        Value::Array(xs) => xs.iter().for_each(|x| strings_of(x, out)),
        Value::Object(m) => {
            for (k, x) in m {
                if id_shaped(k) {
                    out.insert(k.clone());
                }
                strings_of(x, out);
            }
        }
        _ => {}
    }
}

/// Id-shaped words of free text; a capital and digits also with a `#` in front (a customer
/// says "order W5714368" for `#W5714368`).
fn words_of(text: &str, out: &mut BTreeSet<String>) {
    for w in text.split(|c: char| c.is_whitespace() || ",;:()[]{}\"'!?`".contains(c)) {
        let w = w.trim_end_matches(['.', '-']);
        if id_shaped(w) {
            out.insert(w.to_owned());
            let mut cs = w.chars();
            if cs.next().is_some_and(|c| c.is_ascii_uppercase())
                && w.len() > 1
                && cs.all(|c| c.is_ascii_digit())
            {
                out.insert(format!("#{w}"));
            }
        }
    }
}

/// The id candidates the agent has been given so far: id-shaped words of the user's lines,
/// and id-shaped strings and keys of the tool results that are not errors (read as JSON where
/// they are JSON, as text otherwise).
pub fn seen_ids(messages: &[Message]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    given(messages, |g| match g {
        Given::Text(t) => words_of(t, &mut out),
        Given::Json(v) => strings_of(v, &mut out),
    });
    out
}

/// One thing the agent has been given ([`given`]).
enum Given<'a> {
    Text(&'a str),
    Json(&'a Value),
}

/// What the agent has been given, in order: each user line, and each tool result that is not
/// an error (an error repeats the bad value it was given back: not a source), as JSON where it
/// is a JSON object or array and as text otherwise.
fn given(messages: &[Message], mut f: impl FnMut(Given<'_>)) {
    for m in messages {
        match m.role.as_str() {
            "user" => f(Given::Text(&m.content)),
            "tool" if m.content.starts_with("Error") => {}
            "tool" => match serde_json::from_str::<Value>(&m.content) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => f(Given::Json(&v)),
                _ => f(Given::Text(&m.content)),
            },
            _ => {}
        }
    }
}

/// The names an object schema requires.
fn required_of(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// The first example a schema's description gives ("such as '#W0000000'").
fn example_of(schema: &Map<String, Value>) -> Option<&str> {
    let d = schema.get("description")?.as_str()?;
    let rest = &d[d.find("such as '")? + "such as '".len()..];
    Some(&rest[..rest.find('\'')?])
}

/// `schema` narrowed so that every id-like string in it (by the key it sits under, through
/// arrays and nested objects) is one of `seen` — of the shape of the schema's example where it
/// gives one, so an order id is never a zip code; `None` when a required one has no candidate.
fn narrow(
    schema: &Value,
    key: &str,
    seen: &BTreeSet<String>,
    example: Option<&str>,
) -> Option<Value> {
    let Value::Object(s) = schema else {
        return Some(schema.clone());
    };
    let mut s = s.clone();
    let example = example_of(&s).or(example).map(str::to_owned);
    match s.get("type").and_then(Value::as_str) {
        Some("string") if id_like(key) && !s.contains_key("enum") => {
            let want = example.as_deref().map(shape);
            let fit: Vec<Value> = seen
                .iter()
                .filter(|v| want.as_ref().is_none_or(|w| shape(v) == *w))
                .cloned()
                .map(Value::String)
                .collect();
            if fit.is_empty() {
                return None;
            }
            s.insert("enum".into(), Value::Array(fit));
        }
        Some("array") => {
            if let Some(items) = s.get("items") {
                match narrow(items, key, seen, example.as_deref()) {
                    Some(items) => {
                        s.insert("items".into(), items);
                    }
                    // No item can be written: only the empty array, which no caller means.
                    None => return None,
                }
            }
        }
        Some("object") => {
            let required = required_of(&Value::Object(s.clone()));
            if let Some(Value::Object(props)) = s.get("properties") {
                let mut kept = Map::new();
                for (k, p) in props {
                    match narrow(p, k, seen, None) {
                        Some(p) => {
                            kept.insert(k.clone(), p);
                        }
                        None if required.contains(k) => return None,
                        None => {}
                    }
                }
                s.insert("properties".into(), Value::Object(kept));
            }
        }
        _ => {}
    }
    Some(Value::Object(s))
}

/// The tool schemas (OpenAI function form or bare `{name, parameters}`) with every id-like
/// argument limited to `seen`; a tool whose required ids have no candidate is left out.
pub fn grounded_tools(tools: &[Value], seen: &BTreeSet<String>) -> Vec<Value> {
    let mut out = Vec::new();
    for t in tools {
        let mut t = t.clone();
        let f = if t.get("function").is_some() {
            &mut t["function"]
        } else {
            &mut t
        };
        let params = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        if let Some(p) = narrow(&params, "", seen, None) {
            f["parameters"] = p;
            out.push(t);
        }
    }
    out
}

/// The examples a tool's schema gives in its descriptions ("The user id, such as
/// 'sara_doe_496'."), by argument name.
fn schema_examples(tool: &Value) -> Vec<(String, String)> {
    fn walk(schema: &Value, key: &str, out: &mut Vec<(String, String)>) {
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            for (i, _) in d.match_indices("such as '") {
                let rest = &d[i + "such as '".len()..];
                if let Some(end) = rest.find('\'') {
                    out.push((key.to_owned(), rest[..end].to_owned()));
                }
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, key, out);
        }
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (k, p) in props {
                walk(p, k, out);
            }
        }
    }
    let f = tool.get("function").unwrap_or(tool);
    let mut out = Vec::new();
    if let Some(p) = f.get("parameters") {
        walk(p, "", &mut out);
    }
    out
}

/// What the agent has been told: its user lines and tool results, normalised.
fn said(messages: &[Message]) -> String {
    let mut known = String::new();
    for m in messages
        .iter()
        .filter(|m| m.role == "user" || m.role == "tool")
    {
        known.push(' ');
        known.push_str(&normalise(&m.content));
    }
    known
}

/// Whether the choice `option` ("suspected fraud") was said in `known` (normalised), in any
/// form: each of its words of three letters or more begins, by its first four letters, a word
/// that was said ("suspicion of fraud", "I lost my card").
pub(crate) fn option_said(known: &str, option: &str) -> bool {
    let words: Vec<&str> = known
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let option = normalise(option);
    let mut parts = option
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .peekable();
    if parts.peek().is_none() {
        return crate::domain::ground::contains_word(known, &option);
    }
    parts.all(|p| {
        let stem: String = p.chars().take(4).collect();
        words.iter().any(|w| w.starts_with(&stem))
    })
}

/// One agent call, for [`turn_problem`].
pub struct Turn<'a> {
    pub name: &'a str,
    pub arguments: &'a Map<String, Value>,
}

/// What [`turn_problem`] judges a call against.
pub struct Context<'a, W: Fn(&str) -> bool> {
    /// The agent's conversation so far (the call not yet in it).
    pub messages: &'a [Message],
    /// The domain's tool schemas.
    pub tools: &'a [Value],
    pub task: &'a Task,
    /// The writes the episode has already made.
    pub done: &'a [Action],
    pub is_write: W,
    pub terminate: &'a [String],
    /// Tools that neither read nor change the database (`calculate`, `think`).
    pub aside: &'a [String],
}

/// Why an agent's call would be drawn again, and what it did: `write_off_gold` (a write that
/// is none of the gold writes not yet made), `needless_transfer` (a hand-over the gold actions
/// lack), `invented_id` (an id argument in no user line or tool result), `schema_example` (an
/// argument copied from the tool's description: `calculate("2 + 2")`, `#W0000000`) or
/// `repeated_call` (the call just made, whose answer the agent already has).
pub fn turn_problem<W: Fn(&str) -> bool>(call: Turn<'_>, cx: &Context<'_, W>) -> Option<String> {
    let Turn { name, arguments } = call;
    let Context {
        messages,
        tools,
        task,
        done,
        terminate,
        ..
    } = *cx;
    let is_write = &cx.is_write;
    if terminate.iter().any(|t| t == name) {
        return (!task.actions.iter().any(|a| a.name == name))
            .then(|| format!("needless_transfer: {name}"));
    }
    if is_write(name) {
        let call = Value::Object(arguments.clone());
        let args = |a: &Action| Value::Object(a.arguments.clone());
        let made = |a: &Action| {
            done.iter()
                .any(|d| d.name == a.name && same(&args(d), &args(a)))
        };
        let mut pending = task
            .actions
            .iter()
            .filter(|a| a.name != RESPOND_ACTION_NAME && !made(a));
        let Some(gold) = pending.find(|a| a.name == name && same(&args(a), &call)) else {
            return Some(format!("write_off_gold: {name}"));
        };
        if let Some(read) = read_missing(task, gold, messages, is_write, terminate) {
            return Some(format!("reads_first: {}", read.name));
        }
        if !confirmed(messages.iter().map(step_of(is_write))) {
            return Some(format!("unconfirmed_write: {name}"));
        }
    }
    let known = said(messages);
    // An example that is also a real value (`USA`, `JFK`, `acc_1001`) is copied only when
    // nobody gave it.
    if let Some(tool) = tools.iter().find(|t| {
        t.get("function")
            .unwrap_or(t)
            .get("name")
            .and_then(Value::as_str)
            == Some(name)
    }) {
        for (key, example) in schema_examples(tool) {
            let given = match arguments.get(&key) {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(xs)) => xs.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if given.iter().any(|g| g.trim() == example)
                && !crate::domain::ground::contains_word(&known, &normalise(&example))
            {
                return Some(format!("schema_example: {key} {example:?}"));
            }
        }
    }
    // The call just answered: the last message is its result.
    let answered = match messages.last() {
        Some(m) if m.role == "tool" => messages.iter().rev().find(|m| !m.tool_calls.is_empty()),
        _ => None,
    };
    if let Some(last) = answered {
        let call = Value::Object(arguments.clone());
        if last
            .tool_calls
            .iter()
            .any(|c| c.name == name && same(&c.arguments, &call))
        {
            return Some(format!("repeated_call: {name}"));
        }
    }
    for (key, v) in id_arguments(arguments) {
        if !super::keep::id_given(&known, &v) {
            return Some(format!("invented_id: {key} {v:?}"));
        }
    }
    None
}

/// The first gold read of an id before `gold` (a write of `task`) that the agent has not made
/// yet: the keep rules ask for the gold reads, and a write comes after what it is based on.
fn read_missing<'t, W: Fn(&str) -> bool>(
    task: &'t Task,
    gold: &Action,
    messages: &[Message],
    is_write: &W,
    terminate: &[String],
) -> Option<&'t Action> {
    let at = task
        .actions
        .iter()
        .position(|a| std::ptr::eq(a, gold))
        .unwrap_or(0);
    task.actions[..at]
        .iter()
        .filter(|a| !is_write(&a.name) && !terminate.contains(&a.name))
        .find(|read| {
            let ids = id_arguments(&read.arguments);
            !ids.is_empty()
                && !messages.iter().flat_map(|m| &m.tool_calls).any(|c| {
                    c.name == read.name
                        && c.arguments
                            .as_object()
                            .is_some_and(|o| id_arguments(o) == ids)
                })
        })
}

/// The ids of the gold read a premature call of the gold write `name(arguments)` is missing
/// ([`read_missing`]); none when it misses none.
pub fn read_ids<W: Fn(&str) -> bool>(
    task: &Task,
    call: Turn<'_>,
    messages: &[Message],
    is_write: W,
    terminate: &[String],
) -> Vec<String> {
    let wanted = Value::Object(call.arguments.clone());
    task.actions
        .iter()
        .filter(|a| a.name == call.name && same(&Value::Object(a.arguments.clone()), &wanted))
        .find_map(|gold| read_missing(task, gold, messages, &is_write, terminate))
        .map(|read| {
            id_arguments(&read.arguments)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default()
}

/// One message of a conversation, as [`confirmed`] reads it.
pub enum Step<'a> {
    /// The agent spoke to the customer.
    AgentText,
    /// The agent called a tool that changes the database.
    AgentWrite,
    /// The customer spoke.
    User(&'a str),
    /// Anything else: a read, a tool result.
    Other,
}

/// How [`confirmed`] reads one of the agent's messages.
fn step_of<W: Fn(&str) -> bool>(is_write: &W) -> impl Fn(&Message) -> Step<'_> + '_ {
    move |m| match m.role.as_str() {
        "user" => Step::User(&m.content),
        "assistant" if m.tool_calls.iter().any(|c| is_write(&c.name)) => Step::AgentWrite,
        "assistant" if m.tool_calls.is_empty() && !m.content.trim().is_empty() => Step::AgentText,
        _ => Step::Other,
    }
}

/// Words by which a customer says yes to what the agent has put to them.
const YES: &[&str] = &[
    "yes",
    "yeah",
    "yep",
    "sure",
    "i confirm",
    "confirmed",
    "correct",
    "proceed",
    "ok",
    "okay",
    "go ahead",
    "please do",
    "do it",
    "that's right",
];

/// Whether a customer's line says yes: one of [`YES`], and it does not open with a no.
pub fn says_yes(line: &str) -> bool {
    let l = normalise(line);
    let first = first_word(&l);
    if says_no(line) {
        return false;
    }
    // A question is not an answer: "Is it okay?" asks back.
    let first_sentence = l.split_inclusive(['.', '!', '?']).next().unwrap_or("");
    if first_sentence.trim_end().ends_with('?') {
        return false;
    }
    // "Confirm." alone is a yes; "Please confirm." hands the question back.
    if first == "confirm" {
        return true;
    }
    // A yes word in a question is none: "How can I proceed?" asks what comes next.
    l.split_inclusive(['.', '!', '?'])
        .filter(|s| !s.trim_end().ends_with('?'))
        .any(|s| {
            YES.iter()
                .any(|y| crate::domain::ground::contains_word(s, y))
        })
}

/// Whether the conversation so far lets the agent make a write now: since its last write (or
/// the start), the agent has said something to the customer and the customer has said yes
/// after it. The domains' policies all ask for it ("list the details and get an explicit
/// 'yes'"); tau-bench's gold conversations do it before every write.
pub fn confirmed<'a>(steps: impl DoubleEndedIterator<Item = Step<'a>>) -> bool {
    // Read backwards to the last write: a yes, with the agent's words before it, and no "no"
    // from the customer since ("No, I said 250.50." takes the yes back).
    let mut yes = false;
    let mut latest = true;
    for s in steps.rev() {
        match s {
            Step::AgentWrite => return false,
            Step::User(line) if latest && says_no(line) => return false,
            Step::User(line) if says_yes(line) => yes = true,
            Step::AgentText if yes => return true,
            _ => {}
        }
        if matches!(s, Step::User(_)) {
            latest = false;
        }
    }
    false
}

/// Whether a customer's line opens with a no ("No, I said 250.50.", "Wait, ...").
fn says_no(line: &str) -> bool {
    matches!(
        first_word(&normalise(line)),
        "no" | "not" | "nope" | "don't" | "dont" | "wait"
    )
}

/// The first word of a normalised line, its punctuation trimmed (an apostrophe kept).
fn first_word(l: &str) -> &str {
    l.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
}

/// The tools the agent's grammar offers for its next reply when the gold writes gate it
/// (`--agent-gold-writes`): reads as they are; a hand-over only if the gold actions hand over;
/// a write only when a gold write of that tool is still to be made, and then with only the
/// arguments those gold writes use besides the required ones (so no free-text `memo` that no
/// one asked for). What such a reply says is still the model's: this is the rejection of
/// [`turn_problem`] applied while decoding, and no write it could make would be kept. (The
/// gold reads before a write and the customer's yes are not part of the gate: a write called
/// before them is turned into the read or the question it needs, [`Note`].)
pub fn gated_tools<W: Fn(&str) -> bool>(tools: &[Value], cx: &Context<'_, W>) -> Vec<Value> {
    let Context {
        task,
        done,
        terminate,
        ..
    } = *cx;
    let is_write = &cx.is_write;
    let known = said(cx.messages);
    let mut out = Vec::new();
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            continue;
        };
        if terminate.iter().any(|x| x == name) {
            if task.actions.iter().any(|a| a.name == name) {
                out.push(t.clone());
            }
            continue;
        }
        // A calculator or a scratchpad only where the gold actions use it or there are
        // outputs to work out: a 1.5B agent otherwise fills its turns with
        // `calculate("123 * 456")` and `think` calls that no kept conversation should teach.
        if cx.aside.iter().any(|x| x == name) {
            if task.actions.iter().any(|a| a.name == name) || !task.outputs.is_empty() {
                out.push(t.clone());
            }
            continue;
        }
        if !is_write(name) {
            out.push(t.clone());
            continue;
        }
        // One write at a time, in the gold order.
        let due: Vec<&Action> = next_write(task, done, is_write)
            .filter(|a| a.name == name)
            .into_iter()
            .collect();
        if due.is_empty() {
            continue;
        }
        let mut t = t.clone();
        let f = if t.get("function").is_some() {
            &mut t["function"]
        } else {
            &mut t
        };
        let params = &mut f["parameters"];
        let required = required_of(params);
        let mut unsaid = false;
        if let Some(Value::Object(props)) = params.get_mut("properties") {
            props.retain(|k, _| {
                required.contains(k) || due.iter().any(|a| a.arguments.contains_key(k))
            });
            // A number with no more decimals than the gold values have (two at least): once
            // the arguments are closed, a model that wanted to go on after `"amount": 100.0`
            // otherwise writes zeros until its tokens run out.
            for (k, p) in props.iter_mut() {
                if p.get("type").and_then(Value::as_str) == Some("number")
                    && p.get("multipleOf").is_none()
                {
                    let places = due
                        .iter()
                        .filter_map(|a| a.arguments.get(k).and_then(Value::as_f64))
                        .map(decimals)
                        .max()
                        .unwrap_or(0)
                        .max(2);
                    p["multipleOf"] = serde_json::json!(10f64.powi(-(places as i32)));
                }
            }
            // A choice (`reason`: "lost card", "suspected fraud", ...) only among those said.
            for (k, p) in props.iter_mut() {
                let Some(Value::Array(options)) = p.get_mut("enum") else {
                    continue;
                };
                options.retain(|o| o.as_str().is_none_or(|o| option_said(&known, o)));
                unsaid |= options.is_empty() && required.contains(k);
            }
            // A list (the passengers, the items) as long as the gold one: a 1.5B agent keeps
            // the passenger it replaces beside the new one ("number of passengers does not
            // match").
            for (k, p) in props.iter_mut() {
                if p.get("type").and_then(Value::as_str) != Some("array") {
                    continue;
                }
                let lens: BTreeSet<usize> = due
                    .iter()
                    .filter_map(|a| a.arguments.get(k).and_then(Value::as_array).map(Vec::len))
                    .collect();
                if let (1, Some(&n)) = (lens.len(), lens.first()) {
                    p["minItems"] = serde_json::json!(n);
                    p["maxItems"] = serde_json::json!(n);
                }
            }
            // Free text only as it was said.
            let mut gold = std::collections::BTreeMap::new();
            for a in &due {
                strings_by_key(&Value::Object(a.arguments.clone()), "", &mut gold);
            }
            let values = said_values(cx.messages);
            for (k, p) in props.iter_mut() {
                *p = narrow_said(p, k, &gold, &values);
            }
        }
        if !unsaid {
            out.push(t);
        }
    }
    out
}

/// The longest run of words a free-text candidate of [`said_values`] takes.
const SAID_WORDS: usize = 6;

/// The free-text values the agent has been given, as they were written: every string of a tool
/// result read as JSON, and every run of one to [`SAID_WORDS`] words of a user line (or of a
/// tool result that is not JSON), within the parts a comma, semicolon, colon, bracket or
/// sentence end bounds, with quotes and closing punctuation trimmed ("Gustavo", "Gustavo
/// Quinn", "2020-10-23", "402 Cottonwood Street", "Apt 28B"), from what [`given`] gives.
pub fn said_values(messages: &[Message]) -> BTreeSet<String> {
    fn text(t: &str, out: &mut BTreeSet<String>) {
        for part in
            t.split(|c: char| ",;:()[]{}\"!?\n".contains(c) || c == '\u{201c}' || c == '\u{201d}')
        {
            for sentence in part.split(". ") {
                let words: Vec<&str> = sentence
                    .split_whitespace()
                    .map(|w| w.trim_matches(|c: char| "'`*".contains(c)))
                    .filter(|w| !w.is_empty())
                    .collect();
                for i in 0..words.len() {
                    for j in i + 1..=(i + SAID_WORDS).min(words.len()) {
                        let v = words[i..j].join(" ");
                        let v = v.trim_end_matches(['.', '\'']);
                        if !v.is_empty() {
                            out.insert(v.to_owned());
                        }
                    }
                }
            }
        }
    }
    fn json(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => {
                out.insert(s.clone());
            }
            Value::Array(xs) => xs.iter().for_each(|x| json(x, out)),
            Value::Object(m) => m.values().for_each(|x| json(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    given(messages, |g| match g {
        Given::Text(t) => text(t, &mut out),
        Given::Json(v) => json(v, &mut out),
    });
    out
}

/// The strings of `v` by the key they sit under, through arrays and nested objects
/// (`passengers[0].first_name` under `first_name`).
fn strings_by_key(v: &Value, key: &str, out: &mut std::collections::BTreeMap<String, Vec<String>>) {
    match v {
        Value::String(s) => out.entry(key.to_owned()).or_default().push(s.clone()),
        Value::Array(xs) => xs.iter().for_each(|x| strings_by_key(x, key, out)),
        Value::Object(m) => m.iter().for_each(|(k, x)| strings_by_key(x, k, out)),
        _ => {}
    }
}

/// `schema` with each free-text string (not an id, not a choice) whose gold values were all
/// said limited to the values said ([`said_values`]) of their kind — with digits, as a date or
/// a street is, or without, as a name is —: a 1.5B agent that writes "Declaran" for the
/// "Declan" the customer gave, or a birth date nobody said, cannot. A value not said yet, or
/// said in other words than the gold one, leaves the string free.
fn narrow_said(
    schema: &Value,
    key: &str,
    gold: &std::collections::BTreeMap<String, Vec<String>>,
    said: &BTreeSet<String>,
) -> Value {
    let Value::Object(s) = schema else {
        return schema.clone();
    };
    let mut s = s.clone();
    match s.get("type").and_then(Value::as_str) {
        Some("string") if !id_like(key) && !s.contains_key("enum") => {
            if let Some(g) = gold.get(key).filter(|g| g.iter().all(|v| said.contains(v))) {
                let digits = |v: &str| v.chars().any(|c| c.is_ascii_digit());
                let kinds: BTreeSet<bool> = g.iter().map(|v| digits(v)).collect();
                let fit: Vec<Value> = said
                    .iter()
                    .filter(|v| kinds.contains(&digits(v)))
                    .cloned()
                    .map(Value::String)
                    .collect();
                s.insert("enum".into(), Value::Array(fit));
            }
        }
        Some("array") => {
            if let Some(items) = s.get("items") {
                let items = narrow_said(items, key, gold, said);
                s.insert("items".into(), items);
            }
        }
        Some("object") => {
            if let Some(Value::Object(props)) = s.get_mut("properties") {
                for (k, p) in props.iter_mut() {
                    *p = narrow_said(p, k, gold, said);
                }
            }
        }
        _ => {}
    }
    Value::Object(s)
}

/// The decimal places of `x` as it prints (`2015.04`: 2), at most 6.
fn decimals(x: f64) -> usize {
    let t = format!("{x}");
    t.split_once('.').map_or(0, |(_, f)| f.len()).min(6)
}

/// A note shown to the agent model for one reply and kept out of the record, when it called a
/// gold write before what the write needs: the reply drawn under it is the model's own, the
/// step the write was missing.
pub enum Note {
    /// A gold read before the write is not made: the reply is a call to that read tool.
    Read { tool: String, text: String },
    /// The customer has not said yes since the last write: the reply is words, putting the
    /// write to them.
    Confirm { text: String },
    /// The customer has just said yes and the agent answered in words: the reply is the call
    /// of the gold write that was put to them.
    Act { tool: String, text: String },
    /// Every gold write is made and the agent asked about a change again: the reply is words,
    /// telling the customer what was done.
    Done { text: String },
}

/// `words_after_yes: TOOL` when the customer's last line is the yes to what the agent put to
/// them ([`confirmed`]) and a gold write of TOOL, its gold reads made, is still to be made: an
/// answer in words then leaves the customer waiting for a change they agreed to (a 1.5B agent
/// says "I will proceed to freeze your account." and never calls `freeze_account`).
pub fn words_after_yes<W: Fn(&str) -> bool>(cx: &Context<'_, W>) -> Option<String> {
    if cx.messages.last().is_none_or(|m| m.role != "user")
        || !confirmed(cx.messages.iter().map(step_of(&cx.is_write)))
    {
        return None;
    }
    next_write(cx.task, cx.done, &cx.is_write)
        .filter(|a| read_missing(cx.task, a, cx.messages, &cx.is_write, cx.terminate).is_none())
        .map(|a| format!("words_after_yes: {}", a.name))
}

/// The first gold write not made yet, in the gold order. Writes are offered one at a time in
/// that order ([`gated_tools`]): one can take away the chance of the next (a freeze made before
/// the transfer out of the account leaves the transfer failing), and the gold order is one
/// that runs.
fn next_write<'t, W: Fn(&str) -> bool>(
    task: &'t Task,
    done: &[Action],
    is_write: &W,
) -> Option<&'t Action> {
    let args = |a: &Action| Value::Object(a.arguments.clone());
    task.actions.iter().filter(|a| is_write(&a.name)).find(|a| {
        !done
            .iter()
            .any(|d| d.name == a.name && same(&args(d), &args(a)))
    })
}

/// Whether `problem` is one a note turns into the step it stands for ([`note_for`]): a gold
/// write before its gold read or the customer's yes, an answer in words after the yes, a
/// change asked about again once every gold write is made, a gold write's tool called with
/// other values past the bound (`off_gold_put`: put to the customer first).
pub fn noted_problem(problem: &str) -> bool {
    [
        "reads_first",
        "unconfirmed_write",
        "words_after_yes",
        "confirm_after_done",
        "off_gold_put",
    ]
    .iter()
    .any(|p| problem.starts_with(p))
}

/// The note for a write `turn_problem` found premature (`reads_first: TOOL` or
/// `unconfirmed_write: TOOL`); `None` for any other problem.
pub fn note_for(problem: &str, name: &str, arguments: &Map<String, Value>) -> Option<Note> {
    let args = crate::pyjson::dumps(&Value::Object(arguments.clone()));
    if let Some(read) = problem.strip_prefix("reads_first: ") {
        return Some(Note::Read {
            tool: read.to_owned(),
            text: format!(
                "(Note to the agent, not from the customer: before you call {name} with {args}, \
check the records it acts on. Call {read} now.)"
            ),
        });
    }
    if let Some(tool) = problem.strip_prefix("words_after_yes: ") {
        return Some(Note::Act {
            tool: tool.to_owned(),
            text: format!(
                "(Note to the agent, not from the customer: the customer has said yes to what \
you put to them. Call {tool} now, with the details you gave them.)"
            ),
        });
    }
    if problem.starts_with("confirm_after_done") {
        return Some(Note::Done {
            text: "(Note to the agent, not from the customer: the change the customer asked for \
is made; do not ask them to confirm anything. In one short message, tell the customer what was \
done.)"
                .into(),
        });
    }
    (problem.starts_with("unconfirmed_write") || problem.starts_with("off_gold_put")).then(|| Note::Confirm {
        text: format!(
            "(Note to the agent, not from the customer: before you call {name} with {args}, the \
policy asks for the customer's explicit yes. Do not call a tool now. In one short message, tell \
the customer exactly what you are about to do, with these details in plain words, and ask them \
to confirm.)"
        ),
    })
}

/// Words of the notes that a reply repeating a note instead of following it contains.
pub fn echoes_note(content: &str) -> bool {
    let l = content.to_lowercase();
    [
        "note to the agent",
        "not from the customer",
        "do not call a tool",
        "the policy asks for",
        "do not ask them to confirm",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// Whether an agent's words (normalised) put a change to the customer or ask for what one
/// needs: "please confirm", "are you okay with this?", "please provide the reason". Once every
/// gold write is made, such a line asks about a change nobody wants.
pub fn asks_for_change(flat: &str) -> bool {
    [
        "please confirm",
        "are you okay with this",
        "are you ok with this",
        "do you want to proceed",
        "would you like to proceed",
        "shall i proceed",
        "can you confirm",
        "could you confirm",
        "do you confirm",
        "please provide",
        "could you provide",
        "can you provide",
        "please specify",
        "confirm your",
        "review the details",
    ]
    .iter()
    .any(|a| flat.contains(a))
}

/// Whether an agent's words speak of "the customer" to the customer ("I will freeze the
/// customer's account"): the agent addresses the person it talks to.
pub fn of_the_customer(content: &str) -> bool {
    crate::domain::ground::contains_word(&normalise(content), "the customer")
}

/// Whether gold writes are still to be made, given the writes made so far.
pub fn writes_pending(task: &Task, done: &[Action], is_write: impl Fn(&str) -> bool) -> bool {
    next_write(task, done, &is_write).is_some()
}

/// Why an agent's answer in words would be drawn again: under three words (`terse_reply`:
/// "True", "json_object"), talk about the machinery instead of the customer's matter — a
/// tool's name, "function", "tool call", a placeholder, an exception, "as an AI" (`meta_reply`)
/// —, the
/// agent's own last answer word for word (`repeated_reply`: the confirmation asked again after
/// the write was made, "I will proceed to freeze ..." three times over), or a blanket refusal
/// ("I'm sorry, but I cannot assist with that.", `refusal`), which a data-generating agent has
/// no cause for: every task it is given can be done within the policy. With every gold write
/// made (`writes_done`), a request to confirm ("To freeze account acc_1001, are you okay with
/// this?") asks about a change nobody wants (`confirm_after_done`). Words about "the customer"
/// to the customer are `third_person`.
pub fn text_problem(
    content: &str,
    tools: &[Value],
    messages: &[Message],
    writes_done: bool,
) -> Option<String> {
    let words = content.split_whitespace().count();
    if words < 3 {
        return Some(format!("terse_reply: {content:?}"));
    }
    let l = content.to_lowercase();
    for marker in [
        "function",
        "tool call",
        "json_object",
        "placeholder",
        "typeerror",
        "exception",
        "as an ai",
    ] {
        if l.contains(marker) {
            return Some(format!("meta_reply: {marker}"));
        }
    }
    for t in tools {
        let f = t.get("function").unwrap_or(t);
        if let Some(name) = f.get("name").and_then(Value::as_str) {
            if name.contains('_') && l.contains(name) {
                return Some(format!("meta_reply: {name}"));
            }
        }
    }
    let flat = normalise(content);
    let last = messages
        .iter()
        .rev()
        .find(|m| m.role == "assistant" && m.tool_calls.is_empty() && !m.content.trim().is_empty());
    if last.is_some_and(|m| normalise(&m.content) == flat) {
        return Some("repeated_reply".into());
    }
    let refuses = ["cannot", "can't", "can not", "unable to"].iter().any(|w| {
        ["assist with that", "help with that", "assist you with that"]
            .iter()
            .any(|what| flat.contains(&format!("{w} {what}")))
    });
    if refuses {
        return Some("refusal".into());
    }
    if of_the_customer(content) {
        return Some("third_person".into());
    }
    if writes_done && asks_for_change(&flat) {
        return Some("confirm_after_done".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_user_details", "parameters": {
                "type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}}}),
            json!({"type": "function", "function": {"name": "find_user_id_by_email", "parameters": {
                "type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}}}),
            json!({"type": "function", "function": {"name": "update_reservation_flights", "parameters": {
                "type": "object", "properties": {
                    "reservation_id": {"type": "string"},
                    "flights": {"type": "array", "items": {"type": "object", "properties": {
                        "flight_number": {"type": "string"}, "date": {"type": "string"}},
                        "required": ["flight_number", "date"]}},
                    "cabin": {"type": "string", "enum": ["economy", "business"]}},
                "required": ["reservation_id", "flights", "cabin"]}}}),
        ]
    }

    #[test]
    fn ids_come_only_from_what_the_agent_was_given() {
        let names = |ts: &[Value]| -> Vec<String> {
            ts.iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        // Nothing given yet: only the look-up by e-mail can be called.
        let none = grounded_tools(&tools(), &BTreeSet::new());
        assert_eq!(names(&none), ["find_user_id_by_email"]);

        let messages = vec![
            Message::system("policy 1234"),
            Message::user("Hi, I'm sara, order W5714368, thanks."),
            Message::tool("find_user_id_by_email", "sara_doe_496"),
            Message::tool(
                "get_reservation_details",
                r#"{"reservation_id": "ZFA04Y", "flights": [{"flight_number": "HAT001", "date": "2024-05-16"}]}"#,
            ),
        ];
        let seen = seen_ids(&messages);
        for id in [
            "W5714368",
            "#W5714368",
            "sara_doe_496",
            "ZFA04Y",
            "HAT001",
            "2024-05-16",
        ] {
            assert!(seen.contains(id), "{id} missing from {seen:?}");
        }
        assert!(
            !seen.contains("1234"),
            "the policy is not something the customer gave"
        );
        let ts = grounded_tools(&tools(), &seen);
        assert_eq!(names(&ts).len(), 3);
        let p = &ts[2]["function"]["parameters"]["properties"];
        assert!(
            p["reservation_id"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("ZFA04Y"))
        );
        assert!(p["flights"]["items"]["properties"]["flight_number"]["enum"].is_array());
        assert!(
            p["flights"]["items"]["properties"]["date"]
                .get("enum")
                .is_none()
        );
        assert_eq!(p["cabin"]["enum"], json!(["economy", "business"]));
    }

    #[test]
    fn an_id_takes_only_candidates_of_its_examples_shape() {
        let order = json!({"name": "get_order_details", "parameters": {"type": "object",
            "properties": {"order_id": {"type": "string", "description": "The order id, such as '#W0000000'."}},
            "required": ["order_id"]}});
        let reservation = json!({"name": "cancel_reservation", "parameters": {"type": "object",
            "properties": {"reservation_id": {"type": "string", "description": "The reservation ID, such as 'ZFA04Y'."}},
            "required": ["reservation_id"]}});
        let items = json!({"name": "return_items", "parameters": {"type": "object",
            "properties": {"item_ids": {"type": "array", "items": {"type": "string"},
                "description": "The item ids, each such as '1008292230'."}},
            "required": ["item_ids"]}});
        let tools = [order, reservation, items];
        // A zip code is not an order id: the look-up stays out until an order id is given.
        let zip = seen_ids(&[Message::user("I'm Mei Kim, zip 19122.")]);
        assert!(grounded_tools(&tools, &zip).is_empty(), "{zip:?}");
        let messages = [
            Message::user("Order W5714368, zip 19122."),
            Message::tool(
                "get_user_details",
                r#"{"reservations": ["TIZCTW", "8JX2WO"], "items": ["1008292230"]}"#,
            ),
            Message::tool("get_order_details", "Error: order #W9999999 not found"),
        ];
        let seen = seen_ids(&messages);
        assert!(
            !seen.contains("#W9999999"),
            "an error's echo is not a source"
        );
        let ts = grounded_tools(&tools, &seen);
        let allowed = |i: usize, path: &str| ts[i].pointer(path).unwrap().clone();
        assert_eq!(
            allowed(0, "/parameters/properties/order_id/enum"),
            json!(["#W5714368"])
        );
        assert_eq!(
            allowed(1, "/parameters/properties/reservation_id/enum"),
            json!(["8JX2WO", "TIZCTW"])
        );
        assert_eq!(
            allowed(2, "/parameters/properties/item_ids/items/enum"),
            json!(["1008292230"])
        );
    }

    /// The gated tools for `task` after `messages`, with `write` the one write tool.
    fn gated_for(tools: &[Value], task: &Task, messages: &[Message], write: &str) -> Vec<Value> {
        let cx = Context {
            messages,
            tools,
            task,
            done: &[],
            is_write: |n: &str| n == write,
            terminate: &[],
            aside: &[],
        };
        gated_tools(tools, &cx)
    }

    /// Look up acc_1003, then freeze it for a lost card.
    fn freeze_task() -> Task {
        serde_json::from_value(json!({
            "user_id": "u1", "instruction": "freeze acc_1003",
            "actions": [{"name": "get_account", "kwargs": {"account_id": "acc_1003"}},
                        {"name": "freeze_account", "kwargs": {"account_id": "acc_1003", "reason": "lost card"}}],
            "outputs": []
        }))
        .unwrap()
    }

    #[test]
    fn off_gold_writes_transfers_and_invented_ids_are_named() {
        let task = freeze_task();
        let is_write = |n: &str| n == "freeze_account";
        let said = vec![Message::user("Please freeze acc_1003, I lost my card.")];
        let args = |v: Value| v.as_object().unwrap().clone();
        let gold = args(json!({"account_id": "acc_1003", "reason": "lost card"}));
        let terminate = ["transfer_to_human_agents".to_owned()];
        let tools = [
            json!({"name": "calculate", "parameters": {"type": "object", "properties": {
            "expression": {"type": "string", "description": "The expression, such as '2 + 2'."}}}}),
        ];
        let check = |name: &str, a: &Map<String, Value>, done: &[Action]| {
            let cx = Context {
                messages: &said,
                tools: &tools,
                task: &task,
                done,
                is_write,
                terminate: &terminate,
                aside: &[],
            };
            turn_problem(Turn { name, arguments: a }, &cx)
        };
        // The gold write itself, but before the gold look-up that comes first.
        assert_eq!(
            check("freeze_account", &gold, &[]).as_deref(),
            Some("reads_first: get_account")
        );
        let wrong = args(json!({"account_id": "acc_1003", "reason": "customer request"}));
        assert_eq!(
            check("freeze_account", &wrong, &[]).as_deref(),
            Some("write_off_gold: freeze_account")
        );
        // A gold write made once is not pending any more.
        let done = [Action::new("freeze_account", gold.clone())];
        assert!(check("freeze_account", &gold, &done).is_some());
        assert!(
            check(
                "transfer_to_human_agents",
                &args(json!({"summary": "x"})),
                &[]
            )
            .unwrap()
            .starts_with("needless_transfer")
        );
        assert_eq!(
            check("get_account", &args(json!({"account_id": "acc_1003"})), &[]),
            None
        );
        assert!(
            check("get_account", &args(json!({"account_id": "acc_1001"})), &[])
                .unwrap()
                .starts_with("invented_id")
        );
        assert_eq!(
            check("calculate", &args(json!({"expression": "2 + 2"})), &[]).as_deref(),
            Some("schema_example: expression \"2 + 2\"")
        );
        assert_eq!(
            check("calculate", &args(json!({"expression": "250.5 * 2"})), &[]),
            None
        );
        // An example that is also what the customer said is theirs to use.
        let said_it = vec![Message::user("What is 2 + 2?")];
        let cx = Context {
            messages: &said_it,
            tools: &tools,
            task: &task,
            done: &[],
            is_write,
            terminate: &terminate,
            aside: &[],
        };
        let sum = args(json!({"expression": "2 + 2"}));
        assert_eq!(
            turn_problem(
                Turn {
                    name: "calculate",
                    arguments: &sum
                },
                &cx
            ),
            None
        );
    }

    #[test]
    fn a_gold_write_waits_for_the_gold_reads_before_it() {
        let task = freeze_task();
        let args = json!({"account_id": "acc_1003", "reason": "lost card"})
            .as_object()
            .unwrap()
            .clone();
        let asked = vec![Message::user("Freeze acc_1003, I lost my card.")];
        let mut read = asked.clone();
        read.push(Message::assistant_calls(vec![crate::llm::ToolCall {
            name: "get_account".into(),
            arguments: json!({"account_id": "acc_1003"}),
        }]));
        read.push(Message::tool("get_account", "{}"));
        let mut agreed = read.clone();
        agreed.push(Message::assistant(
            "I will freeze acc_1003 for a lost card. Shall I go ahead?",
        ));
        agreed.push(Message::user("Yes, please."));
        let is_write = |n: &str| n == "freeze_account";
        for (messages, want) in [
            (&asked, Some("reads_first: get_account")),
            (&read, Some("unconfirmed_write: freeze_account")),
            (&agreed, None),
        ] {
            let cx = Context {
                messages,
                tools: &[],
                task: &task,
                done: &[],
                is_write,
                terminate: &[],
                aside: &[],
            };
            let turn = Turn {
                name: "freeze_account",
                arguments: &args,
            };
            assert_eq!(turn_problem(turn, &cx).as_deref(), want);
        }
        assert!(writes_pending(&task, &[], is_write));
        let made = [Action::new("freeze_account", args.clone())];
        assert!(!writes_pending(&task, &made, is_write));
    }

    #[test]
    fn a_yes_is_a_yes_only_after_the_agent_has_spoken_and_until_the_next_write() {
        for yes in [
            "Yes, please.",
            "sure",
            "OK, go ahead",
            "That's correct, proceed.",
            "Confirm.",
            "I confirm.",
            "I understand and will proceed with the transfer.",
        ] {
            assert!(says_yes(yes), "{yes}");
        }
        for no in [
            "No, wait.",
            "I want to freeze acc_1003.",
            "Nope, that's not it",
            "Please confirm.",
            "Is it okay?",
            "Okay? What will it cost?",
            "I appreciate your assistance. How can I proceed?",
        ] {
            assert!(!says_yes(no), "{no}");
        }
        let yes = || Step::User("yes");
        assert!(confirmed([Step::AgentText, yes()].into_iter()));
        assert!(confirmed([Step::AgentText, yes(), Step::Other].into_iter()));
        // A yes before the agent said anything is the opening, not an answer.
        assert!(!confirmed([yes(), Step::Other].into_iter()));
        // One yes, one write.
        assert!(!confirmed(
            [Step::AgentText, yes(), Step::AgentWrite, Step::Other].into_iter()
        ));
        assert!(!confirmed([Step::AgentText, Step::User("no")].into_iter()));
        // A no since the yes takes it back.
        assert!(!confirmed(
            [
                Step::AgentText,
                yes(),
                Step::AgentText,
                Step::User("No, I said 250.50.")
            ]
            .into_iter()
        ));
    }

    #[test]
    fn a_gated_number_has_no_more_decimals_than_the_gold_ones() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "transfer_funds",
            "parameters": {"type": "object", "properties": {"amount": {"type": "number"}},
            "required": ["amount"]}}}),
        ];
        for (amount, step) in [
            (json!(100.0), 0.01),
            (json!(12.5), 0.01),
            (json!(1.125), 0.001),
        ] {
            let mut task = freeze_task();
            let mut args = Map::new();
            args.insert("amount".into(), amount);
            task.actions = vec![Action::new("transfer_funds", args)];
            let gated = gated_for(&tools, &task, &[], "transfer_funds");
            let p = &gated[0]["function"]["parameters"]["properties"]["amount"];
            assert!(
                (p["multipleOf"].as_f64().unwrap() - step).abs() < 1e-12,
                "{p}"
            );
        }
    }

    #[test]
    fn a_calculator_is_offered_only_for_outputs_or_a_gold_call_of_it() {
        let tools = vec![
            json!({"name": "get_account", "parameters": {"type": "object"}}),
            json!({"name": "calculate", "parameters": {"type": "object"}}),
            json!({"name": "think", "parameters": {"type": "object"}}),
        ];
        let aside = ["calculate".to_owned(), "think".to_owned()];
        let offered = |task: &Task| {
            let cx = Context {
                messages: &[],
                tools: &tools,
                task,
                done: &[],
                is_write: |_: &str| false,
                terminate: &[],
                aside: &aside,
            };
            gated_tools(&tools, &cx)
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let mut task = freeze_task();
        assert_eq!(offered(&task), ["get_account"]);
        task.outputs = vec!["2015.04".into()];
        assert_eq!(offered(&task), ["get_account", "calculate", "think"]);
        task.outputs.clear();
        task.actions.push(Action::new("calculate", Map::new()));
        assert_eq!(offered(&task), ["get_account", "calculate"]);
    }

    #[test]
    fn a_gated_name_or_date_is_one_the_customer_said() {
        let tools = vec![json!({"type": "function", "function": {
            "name": "update_reservation_passengers", "parameters": {"type": "object",
            "properties": {"reservation_id": {"type": "string"}, "passengers": {"type": "array",
                "items": {"type": "object", "properties": {"first_name": {"type": "string"},
                    "last_name": {"type": "string"}, "dob": {"type": "string"}},
                    "required": ["first_name", "last_name", "dob"]}}},
            "required": ["reservation_id", "passengers"]}}})];
        let mut task = freeze_task();
        let args: Map<String, Value> = serde_json::from_value(json!({"reservation_id": "GWYR1C",
            "passengers": [{"first_name": "Declan", "last_name": "Quinn", "dob": "2020-10-23"}]}))
        .unwrap();
        task.actions = vec![Action::new("update_reservation_passengers", args)];
        let gated = |messages: &[Message]| {
            let g = gated_for(&tools, &task, messages, "update_reservation_passengers");
            g[0]["function"]["parameters"]["properties"].clone()
        };
        let enum_of = |props: &Value, field: &str| -> Option<Vec<String>> {
            props["passengers"]["items"]["properties"][field]["enum"]
                .as_array()
                .map(|xs| xs.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        };
        // Nothing said yet: the strings are free.
        let props = gated(&[]);
        assert_eq!(enum_of(&props, "first_name"), None);
        let said = [
            Message::user(
                "I'm soren_quinn_2567. Please make the passenger of reservation GWYR1C \"Declan Quinn\", born 2020-10-23.",
            ),
            Message::tool(
                "get_reservation_details",
                r#"{"reservation_id": "GWYR1C", "passengers": [{"first_name": "Soren", "dob": "1990-01-02"}]}"#,
            ),
            Message::tool("get_user_details", "Error: user not found: Declaran"),
        ];
        let props = gated(&said);
        let first = enum_of(&props, "first_name").unwrap();
        assert!(first.contains(&"Declan".to_owned()), "{first:?}");
        assert!(first.contains(&"Soren".to_owned()), "{first:?}");
        assert!(
            !first.iter().any(|v| v.contains("Declaran")),
            "an error is no source: {first:?}"
        );
        assert!(
            !first.iter().any(|v| v.chars().any(|c| c.is_ascii_digit())),
            "{first:?}"
        );
        let dob = enum_of(&props, "dob").unwrap();
        assert!(
            dob.contains(&"2020-10-23".to_owned()) && dob.contains(&"1990-01-02".to_owned()),
            "{dob:?}"
        );
        assert!(
            dob.iter().all(|v| v.chars().any(|c| c.is_ascii_digit())),
            "{dob:?}"
        );
        // As many passengers as the gold write has.
        assert_eq!(props["passengers"]["maxItems"], json!(1));
        assert_eq!(props["passengers"]["minItems"], json!(1));
        // An id is the seen-id grammar's to narrow, not this one's.
        assert!(props["reservation_id"].get("enum").is_none());
        // Said in other words than the gold value: left free.
        let other = [Message::user(
            "The passenger is declan quinn, born October 23, 2020.",
        )];
        assert_eq!(enum_of(&gated(&other), "dob"), None);
    }

    #[test]
    fn the_grammar_offers_a_write_only_when_a_gold_write_of_it_is_due() {
        let task = freeze_task();
        let tools = vec![
            json!({"type": "function", "function": {"name": "get_account", "parameters": {
                "type": "object", "properties": {"account_id": {"type": "string"}}, "required": ["account_id"]}}}),
            json!({"type": "function", "function": {"name": "freeze_account", "parameters": {
                "type": "object", "properties": {"account_id": {"type": "string"},
                    "reason": {"type": "string"}, "note": {"type": "string"}},
                "required": ["account_id", "reason"]}}}),
            json!({"type": "function", "function": {"name": "transfer_funds", "parameters": {
                "type": "object", "properties": {"amount": {"type": "number"}}}}}),
            json!({"type": "function", "function": {"name": "transfer_to_human_agents", "parameters": {
                "type": "object", "properties": {"summary": {"type": "string"}}}}}),
        ];
        let is_write = |n: &str| n == "freeze_account" || n == "transfer_funds";
        let terminate = ["transfer_to_human_agents".to_owned()];
        let offered_for = |task: &Task, messages: &[Message], done: &[Action]| {
            let cx = Context {
                messages,
                tools: &tools,
                task,
                done,
                is_write,
                terminate: &terminate,
                aside: &[],
            };
            gated_tools(&tools, &cx)
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let offered = |messages: &[Message], done: &[Action]| offered_for(&task, messages, done);
        let m = vec![Message::user("Freeze acc_1003, I lost my card.")];
        // The freeze is to be made, the transfer is not; no hand-over in the gold actions.
        assert_eq!(offered(&m, &[]), ["get_account", "freeze_account"]);
        let cx = Context {
            messages: &m,
            tools: &tools,
            task: &task,
            done: &[],
            is_write,
            terminate: &terminate,
            aside: &[],
        };
        // The optional argument no gold write uses is not offered.
        let freeze = &gated_tools(&tools, &cx)[1]["function"]["parameters"]["properties"];
        assert!(freeze.get("reason").is_some() && freeze.get("note").is_none());
        // A required choice nobody said leaves the write out; said, it is the only choice.
        let choice = vec![
            json!({"type": "function", "function": {"name": "freeze_account", "parameters": {
            "type": "object", "properties": {"account_id": {"type": "string"},
                "reason": {"type": "string", "enum": ["lost card", "suspected fraud"]}},
            "required": ["account_id", "reason"]}}}),
        ];
        let quiet = [Message::user("Freeze acc_1003, please.")];
        let cx = Context {
            messages: &quiet,
            tools: &choice,
            task: &task,
            done: &[],
            is_write,
            terminate: &terminate,
            aside: &[],
        };
        assert!(gated_tools(&choice, &cx).is_empty());
        let cx = Context {
            messages: &m,
            tools: &choice,
            task: &task,
            done: &[],
            is_write,
            terminate: &terminate,
            aside: &[],
        };
        assert_eq!(
            gated_tools(&choice, &cx)[0]["function"]["parameters"]["properties"]["reason"]["enum"],
            json!(["lost card"])
        );
        // Made once, the gold write is not due any more.
        let args = json!({"account_id": "acc_1003", "reason": "lost card"});
        let made = [Action::new(
            "freeze_account",
            args.as_object().unwrap().clone(),
        )];
        assert_eq!(offered(&m, &made), ["get_account"]);
        // Two gold writes: the transfer out of the account, then its freeze, one at a time.
        let both: Task = serde_json::from_value(json!({
            "user_id": "u1", "instruction": "move 10 out of acc_1003, then freeze it",
            "actions": [{"name": "transfer_funds", "kwargs": {"amount": 10.0}},
                        {"name": "freeze_account", "kwargs": {"account_id": "acc_1003", "reason": "lost card"}}],
            "outputs": []
        }))
        .unwrap();
        let names = |done: &[Action]| offered_for(&both, &m, done);
        assert_eq!(names(&[]), ["get_account", "transfer_funds"]);
        let transferred = [Action::new(
            "transfer_funds",
            json!({"amount": 10.0}).as_object().unwrap().clone(),
        )];
        assert_eq!(names(&transferred), ["get_account", "freeze_account"]);
    }

    #[test]
    fn an_answer_about_the_machinery_or_of_a_word_is_drawn_again() {
        let tools = [json!({"name": "find_user_id_by_name_zip"})];
        for bad in [
            "True",
            "json_object",
            "Use the find_user_id_by_name_zip tool first.",
            "TypeError: null",
        ] {
            assert!(text_problem(bad, &tools, &[], false).is_some(), "{bad}");
        }
        // With the writes made, a closing that asks to confirm again.
        assert!(
            text_problem(
                "Before you freeze account acc_1002, please review the details and confirm your action.",
                &tools,
                &[],
                true
            )
            .is_some()
        );
        assert_eq!(
            text_problem(
                "Your order #W1 is cancelled; the refund goes to your card.",
                &tools,
                &[],
                true
            ),
            None
        );
    }

    #[test]
    fn the_last_answer_again_or_a_blanket_refusal_is_drawn_again() {
        let tools = [json!({"name": "freeze_account"})];
        let asked = "I am about to freeze account acc_1004. Are you okay with this?";
        let history = [
            Message::user("Freeze acc_1004, suspected fraud."),
            Message::assistant(asked),
            Message::user("Yes."),
        ];
        let problem = |line: &str, done: bool| text_problem(line, &tools, &history, done);
        assert_eq!(
            problem(&format!("  {asked}"), false).as_deref(),
            Some("repeated_reply")
        );
        assert_eq!(
            problem("I'm sorry, but I cannot assist with that.", true).as_deref(),
            Some("refusal")
        );
        assert_eq!(
            problem("I'm sorry, but I can't cancel a delivered order.", false),
            None,
            "a refusal the policy gives reasons for is an answer"
        );
        assert_eq!(problem("Your account acc_1004 is now frozen.", true), None);
        // With the gold writes made, a request to confirm is about a change nobody asked for;
        // before them it is the question the policy wants.
        let ask = "To freeze account acc_1001 on account request, are you okay with this?";
        assert_eq!(problem(ask, true).as_deref(), Some("confirm_after_done"));
        assert_eq!(problem(ask, false), None);
        assert_eq!(
            problem(
                "I'm sorry, but as an AI assistant, I am unable to modify it.",
                false
            )
            .as_deref(),
            Some("meta_reply: as an ai")
        );
        assert_eq!(
            problem(
                "To freeze account acc_1012, please provide the reason.",
                true
            )
            .as_deref(),
            Some("confirm_after_done")
        );
        assert_eq!(
            problem("I will freeze the customer's account acc_1004.", false).as_deref(),
            Some("third_person")
        );
    }

    #[test]
    fn the_call_just_answered_is_not_made_again() {
        let task: Task = serde_json::from_value(json!({
            "user_id": "u1", "instruction": "x", "actions": [], "outputs": []
        }))
        .unwrap();
        let args = json!({"account_id": "acc_1003"})
            .as_object()
            .unwrap()
            .clone();
        let said = vec![
            Message::user("acc_1003 please"),
            Message::assistant_calls(vec![crate::llm::ToolCall {
                name: "get_account".into(),
                arguments: Value::Object(args.clone()),
            }]),
            Message::tool("get_account", "{\"id\": \"acc_1003\"}"),
        ];
        let cx = Context {
            messages: &said,
            tools: &[],
            task: &task,
            done: &[],
            is_write: |_: &str| false,
            terminate: &[],
            aside: &[],
        };
        let turn = Turn {
            name: "get_account",
            arguments: &args,
        };
        assert_eq!(
            turn_problem(turn, &cx).as_deref(),
            Some("repeated_call: get_account")
        );
        assert_eq!(
            turn_problem(
                Turn {
                    name: "get_account",
                    arguments: &args
                },
                &Context {
                    messages: &said[..1],
                    ..cx
                }
            ),
            None
        );
    }
}
