//! One self-contained HTML page for a run directory: the funnels, the codes, tokens and time per
//! role, diversity, pass^k, and a viewer of every blueprint and conversation.
//!
//! The page is `page.html` with the run's records embedded as one JSON document; its script
//! draws everything (inline SVG, no network, no external script or font) and renders lists
//! lazily, a page of rows at a time, so a run of 10,000 conversations still opens at once. To
//! keep that document small, the system prompt every conversation repeats (the domain's policy)
//! is stored once and referred to by number.
//!
//! Each conversation carries the database changes its tool calls made and the changes its task's
//! gold actions make, both replayed here on the domain's pristine database, so the page can show
//! where the final state parted from the gold one (the run itself records only the two hashes).

use crate::domain::Domain;
use crate::domain::diff::{Edit, diff};
use crate::domain::task::{Action, Task};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

const PAGE: &str = include_str!("page.html");
const MARK: &str = "/*RUN-DATA*/";

/// What a run directory holds, read by the caller: every record as JSON.
#[derive(Debug, Default)]
pub struct RunData {
    /// Shown as the page's title (the run directory as given).
    pub title: String,
    /// `blueprints`, `rollouts`, `generate` or `eval`.
    pub kind: String,
    pub config: Value,
    pub rollouts_config: Value,
    pub summary: Value,
    pub results: Value,
    pub items: Vec<Value>,
    pub blueprints: Vec<Value>,
    pub rejected: Vec<Value>,
    pub trajectories: Vec<Value>,
    /// The tasks the trajectories ran, by id (their gold actions give the gold database).
    pub tasks: HashMap<String, Task>,
}

/// What the page shows, counted (the caller reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub conversations: usize,
    pub blueprints: usize,
    pub rejected: usize,
    /// Conversations whose database changes could be replayed.
    pub replayed: usize,
}

/// The page for `run`; `domain` (when it could be loaded) gives the tool list for coverage and
/// the database replays; `domain_note` says why it could not.
pub fn render(run: RunData, domain: Option<&Domain>, domain_note: &str) -> (String, Counts) {
    let mut strings = Interned::default();
    let mut replayed = 0;
    // Trials of one task share its gold changes.
    let mut golds: HashMap<String, Vec<Edit>> = HashMap::new();
    let trajectories: Vec<Value> = run
        .trajectories
        .iter()
        .map(|t| {
            let mut t = compact(t, &mut strings);
            let id = t["blueprint_id"].as_str().unwrap_or_default().to_owned();
            if let (Some(d), Some(task)) = (domain, run.tasks.get(&id)) {
                let gold = golds
                    .entry(id)
                    .or_insert_with(|| changes(d, task.actions.iter()))
                    .clone();
                let messages = t["messages"].as_array().map(Vec::as_slice);
                let agent = changes(d, agent_calls(messages.unwrap_or_default()).iter());
                t["db_changes"] = json!({"agent": agent, "gold": gold});
                replayed += 1;
            }
            t
        })
        .collect();
    let domain_json = domain.map(|d| {
        json!({
            "name": d.name(),
            "tools": d.tools().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        })
    });
    let counts = Counts {
        conversations: trajectories.len(),
        blueprints: run.blueprints.len(),
        rejected: run.rejected.len(),
        replayed,
    };
    let data = json!({
        "title": run.title,
        "kind": run.kind,
        "made_by": format!("apigen-mt {}", env!("CARGO_PKG_VERSION")),
        "config": run.config,
        "rollouts_config": run.rollouts_config,
        "summary": run.summary,
        "results": run.results,
        "domain": domain_json,
        "domain_note": domain_note,
        "items": run.items,
        "blueprints": run.blueprints,
        "rejected": run.rejected,
        "trajectories": trajectories,
        "strings": strings.list,
    });
    (page(&data), counts)
}

/// `PAGE` with `data` in its script: JSON is a JavaScript expression, and escaping `<` keeps
/// any `</script>` inside a record from ending the script element.
fn page(data: &Value) -> String {
    let json = data.to_string().replace('<', "\\u003c");
    PAGE.replacen(MARK, &json, 1)
}

/// Strings stored once in the page.
#[derive(Default)]
struct Interned {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Interned {
    fn get(&mut self, s: &str) -> usize {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        self.list.push(s.to_owned());
        self.index.insert(s.to_owned(), self.list.len() - 1);
        self.list.len() - 1
    }
}

/// A trajectory record with its system messages' text replaced by `{"$s": n}`, the number of
/// the interned string.
fn compact(t: &Value, strings: &mut Interned) -> Value {
    let mut t = t.clone();
    if let Some(messages) = t.get_mut("messages").and_then(Value::as_array_mut) {
        for m in messages.iter_mut().filter(|m| m["role"] == "system") {
            if let Some(text) = m["content"].as_str() {
                let n = strings.get(text);
                m["content"] = json!({ "$s": n });
            }
        }
    }
    t
}

/// The database changes `actions` make from the pristine database (terminate tools skipped, as
/// the reward does).
fn changes<'a>(domain: &Domain, actions: impl Iterator<Item = &'a Action>) -> Vec<Edit> {
    let terminate = &domain.manifest.terminate_tools;
    let mut env = domain.env();
    for a in actions.filter(|a| !terminate.contains(&a.name)) {
        env.step(a);
    }
    diff(domain.pristine(), env.db())
}

/// The tool calls of the agent's messages, in order (calls whose arguments do not parse are left
/// out: the episode ran them as errors, which change nothing).
fn agent_calls(messages: &[Value]) -> Vec<Action> {
    messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .filter_map(|call| {
            let f = &call["function"];
            let mut obj = Map::new();
            obj.insert("name".into(), f["name"].clone());
            obj.insert("arguments".into(), f["arguments"].clone());
            Action::from_json(&Value::Object(obj)).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_script_tag_in_a_record_stays_inside_the_data() {
        let html = page(&json!({"x": "</script><script>alert(1)</script>"}));
        assert_eq!(
            html.matches("</script>").count(),
            PAGE.matches("</script>").count()
        );
        assert!(html.contains("\\u003c/script>"));
    }

    #[test]
    fn system_prompts_are_stored_once() {
        let mut strings = Interned::default();
        let t = json!({"messages": [
            {"role": "system", "content": "policy"},
            {"role": "user", "content": "hi"},
        ]});
        let a = compact(&t, &mut strings);
        let b = compact(&t, &mut strings);
        assert_eq!(a["messages"][0]["content"], json!({"$s": 0}));
        assert_eq!(a, b);
        assert_eq!(a["messages"][1]["content"], "hi");
        assert_eq!(strings.list, vec!["policy".to_owned()]);
    }
}
