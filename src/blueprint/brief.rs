//! What a fixed plan asks of the customer, in words, and what they could be told: the brief a
//! proposer writes a planned blueprint's instruction and outputs from.
//!
//! - **Requests**: one line per write action, in the second person, from the domain's
//!   `[grounding.requests]` template for the tool (`{arg}` is the argument's value) or a generic
//!   line built from the tool's name. Ids are described as the customer would know them, from
//!   what the plan's reads returned (an item id becomes `Water Bottle (750ml, glass)`); every
//!   other value is kept word for word, which is what `ground.write_unasked` asks of the
//!   instruction.
//! - **Answers**: the short values the plan's reads returned (a balance, a status, a price), each
//!   with the field it came from. A fixed plan's outputs are drawn from these by constrained
//!   decoding, so an output is sourced by construction; one whose field the instruction never
//!   asks about is dropped (`outputs_dropped` in the funnel).

use super::plan::Plan;
use crate::domain::Domain;
use crate::domain::ground::id_like;
use crate::domain::tools::ToolKind;
use serde_json::Value;

/// A value the customer could be told, and the field of a read's result it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    pub value: String,
    pub field: String,
}

/// Answers offered to the proposer, at most.
const MAX_ANSWERS: usize = 24;

/// Longest answer offered (outputs are bare values).
const MAX_ANSWER_CHARS: usize = 40;

/// The requests of a plan's writes, one line each.
pub fn requests(domain: &Domain, plan: &Plan) -> Vec<String> {
    let results: Vec<Value> = plan
        .observations
        .iter()
        .map(|o| serde_json::from_str(o).unwrap_or(Value::Null))
        .collect();
    plan.actions
        .iter()
        .filter(|a| domain.is_write(&a.name))
        .map(|a| {
            let say = |key: &str| -> String {
                a.arguments
                    .get(key)
                    .map(|v| describe(key, v, &results))
                    .unwrap_or_default()
            };
            let template = domain
                .manifest
                .grounding
                .requests
                .get(&a.name)
                .and_then(|ts| {
                    ts.iter().find(|t| {
                        crate::domain::template_fields(t)
                            .iter()
                            .all(|f| a.arguments.contains_key(f))
                    })
                });
            match template {
                Some(template) => tidy(&crate::domain::fill_template(template, say)),
                None => {
                    let args: Vec<String> = a
                        .arguments
                        .keys()
                        .map(|k| format!("{}: {}", k.replace('_', " "), say(k)))
                        .collect();
                    format!(
                        "You want to {} ({}).",
                        a.name.replace('_', " "),
                        args.join("; ")
                    )
                }
            }
        })
        .collect()
}

/// A filled template without the marks of blank fields (`Main St, , Austin`).
fn tidy(s: &str) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    while out.contains(", ,") {
        out = out.replace(", ,", ",");
    }
    out
}

/// A value as the customer would say it.
fn describe(key: &str, v: &Value, results: &[Value]) -> String {
    match v {
        Value::String(s) if id_like(key) => named(s, results).unwrap_or_else(|| s.clone()),
        // Free text is quoted, to be kept word for word; a blank optional field says nothing.
        Value::String(s) if s.contains(' ') => format!("\"{s}\""),
        Value::String(s) => s.clone(),
        Value::Array(xs) => xs
            .iter()
            .map(|x| describe(key, x, results))
            .collect::<Vec<_>>()
            .join(" and "),
        Value::Object(m) => m
            .values()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => describe(key, other, results),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// How a read's result names the record with id `id`: its `name`, its `options`' values, or
/// both (`Water Bottle (750ml, glass)`).
fn named(id: &str, results: &[Value]) -> Option<String> {
    fn find<'a>(v: &'a Value, id: &str) -> Option<&'a serde_json::Map<String, Value>> {
        match v {
            Value::Object(m) => {
                let holds = m.iter().any(|(k, x)| id_like(k) && x.as_str() == Some(id));
                if holds && (m.contains_key("name") || m.contains_key("options")) {
                    return Some(m);
                }
                m.values().find_map(|x| find(x, id))
            }
            Value::Array(xs) => xs.iter().find_map(|x| find(x, id)),
            _ => None,
        }
    }
    let m = results.iter().find_map(|r| find(r, id))?;
    let options: Vec<String> = m
        .get("options")
        .and_then(Value::as_object)
        .map(|o| {
            o.values()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let name = m.get("name").and_then(Value::as_str);
    match (name, options.is_empty()) {
        (Some(n), true) => Some(format!("the {n}")),
        (Some(n), false) => Some(format!("the {n} ({})", options.join(", "))),
        (None, false) => Some(format!("the one with {}", options.join(", "))),
        (None, true) => None,
    }
}

/// The short values the plan's reads returned, first found first: not ids, not a lookup's bare
/// result, and nothing the customer says to introduce themselves (`known`: their name).
pub fn answers(domain: &Domain, plan: &Plan, known: &str) -> Vec<Answer> {
    let known = crate::domain::ground::normalise(known);
    fn walk(v: &Value, field: &str, out: &mut Vec<Answer>) {
        let value = match v {
            Value::Object(m) => return m.iter().for_each(|(k, x)| walk(x, k, out)),
            Value::Array(xs) => return xs.iter().for_each(|x| walk(x, field, out)),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        let value = value.trim().to_owned();
        if field.is_empty()
            || id_like(field)
            || value.is_empty()
            || value.chars().count() > MAX_ANSWER_CHARS
            || value.contains('\n')
            || out.iter().any(|a| a.value == value)
        {
            return;
        }
        out.push(Answer {
            value,
            field: field.to_owned(),
        });
    }
    let mut out = Vec::new();
    for (a, o) in plan.actions.iter().zip(&plan.observations) {
        if !domain
            .tool(&a.name)
            .is_some_and(|t| t.kind == ToolKind::Read)
        {
            continue;
        }
        if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str::<Value>(o) {
            walk(&v, "", &mut out);
        }
    }
    out.retain(|a| {
        !crate::domain::ground::contains_word(&known, &crate::domain::ground::normalise(&a.value))
    });
    out.truncate(MAX_ANSWERS);
    out
}

/// The outputs whose field the instruction never mentions: the customer would not ask for
/// them, so a fixed plan's blueprint drops them. An output that is not one of `answers` is left
/// to the other checks.
pub fn unasked(instruction: &str, outputs: &[String], answers: &[Answer]) -> Vec<String> {
    let text = crate::domain::ground::normalise(instruction);
    outputs
        .iter()
        .filter(|o| {
            answers.iter().find(|a| &a.value == *o).is_some_and(|a| {
                !a.field
                    .split('_')
                    .filter(|w| w.len() > 2)
                    .any(|w| text.contains(&w.to_lowercase()))
            })
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_fill_names_and_keep_braces() {
        let say = |k: &str| format!("<{k}>");
        assert_eq!(
            crate::domain::fill_template("cancel {order_id} because {reason} {{x}}", say),
            "cancel <order_id> because <reason> {x}"
        );
        assert_eq!(
            crate::domain::fill_template("open { brace", say),
            "open { brace"
        );
    }

    #[test]
    fn ids_are_described_by_what_the_reads_returned() {
        let order = json!({"order_id": "#W1", "items": [
            {"name": "Water Bottle", "item_id": "111", "options": {"capacity": "750ml", "material": "glass"}}
        ]});
        let product = json!({"name": "Water Bottle", "variants": {"222": {"item_id": "222", "options": {"capacity": "1000ml"}}}});
        let results = [order, product];
        assert_eq!(
            describe("item_ids", &json!(["111"]), &results),
            "the Water Bottle (750ml, glass)"
        );
        assert_eq!(
            describe("new_item_ids", &json!(["222"]), &results),
            "the one with 1000ml"
        );
        assert_eq!(describe("order_id", &json!("#W1"), &results), "#W1");
        assert_eq!(
            describe("reason", &json!("no longer needed"), &results),
            "\"no longer needed\""
        );
        assert_eq!(describe("state", &json!("NM"), &results), "NM");
        assert_eq!(tidy("to 1 Main St, , Austin"), "to 1 Main St, Austin");
    }

    #[test]
    fn outputs_must_be_asked_about() {
        let answers = vec![Answer {
            value: "3755.92".into(),
            field: "balance".into(),
        }];
        assert!(unasked("What is my balance now?", &["3755.92".into()], &answers).is_empty());
        assert_eq!(
            unasked("Freeze my account.", &["3755.92".into()], &answers),
            ["3755.92"]
        );
        assert!(unasked("Freeze it.", &["other".into()], &answers).is_empty());
    }
}
