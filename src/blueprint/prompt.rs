//! What the proposer, reviewers and summariser are told, and the JSON shapes their answers are
//! constrained to. Prompts follow the paper's structure (§1.3): the domain policy, the sampled
//! tools, data, persona and examples, then the task; answers are JSON so small models can be held
//! to them by constrained decoding.

use super::brief::Answer;
use super::plan::Plan;
use super::sampler::{DataContext, Persona};
use crate::domain::Domain;
use crate::domain::diff::Edit;
use crate::domain::task::Task;
use serde_json::{Value, json};

/// Everything sampled for one attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Context {
    pub tools: Vec<String>,
    pub data: DataContext,
    pub persona: Option<Persona>,
    pub examples: Vec<Task>,
    /// A sampled action chain that runs on this customer's data.
    pub plan: Option<Plan>,
    /// The plan's actions are the task's actions; the proposer writes instruction and outputs.
    pub fixed: bool,
    /// A fixed plan's writes as the customer asks for them.
    pub requests: Vec<String>,
    /// What a fixed plan's reads returned that the customer could be told: the outputs' choices.
    pub answers: Vec<Answer>,
}

/// The JSON schema of a blueprint answer: a short thought, then the task. Action names are an
/// enum of the sampled tools, each with its own argument schema.
pub fn blueprint_schema(domain: &Domain, tools: &[String]) -> Value {
    let variants: Vec<Value> = tools
        .iter()
        .filter_map(|t| domain.tool(t))
        .map(|t| {
            // No arguments beyond the schema's: small models otherwise add fields of the record.
            let mut arguments = t.parameters().clone();
            if let Some(obj) = arguments.as_object_mut() {
                obj.insert("additionalProperties".into(), Value::Bool(false));
            }
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {
            "thought": {"type": "string", "maxLength": 600},
            "instruction": {"type": "string", "minLength": 20, "maxLength": 1200},
            "actions": {"type": "array", "minItems": 1, "maxItems": 10, "items": {"anyOf": variants}},
            "outputs": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 80}}
        },
        "required": ["thought", "instruction", "actions", "outputs"],
        "additionalProperties": false
    })
}

/// The JSON schema of an answer around a fixed plan: the instruction, and outputs chosen among
/// the values the plan's reads returned (none when they returned none).
pub fn fixed_plan_schema(answers: &[Answer]) -> Value {
    let values: Vec<&str> = answers.iter().map(|a| a.value.as_str()).collect();
    let outputs = if values.is_empty() {
        json!({"type": "array", "maxItems": 0})
    } else {
        json!({"type": "array", "maxItems": 2, "items": {"enum": values}})
    };
    json!({
        "type": "object",
        "properties": {
            "thought": {"type": "string", "maxLength": 400},
            "instruction": {"type": "string", "minLength": 20, "maxLength": 1200},
            "outputs": outputs
        },
        "required": ["thought", "instruction", "outputs"],
        "additionalProperties": false
    })
}

/// The JSON schema of an instruction-only answer (recombination).
pub fn instruction_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"thought": {"type": "string", "maxLength": 400}, "instruction": {"type": "string", "minLength": 20, "maxLength": 1500}},
        "required": ["thought", "instruction"],
        "additionalProperties": false
    })
}

/// The JSON schema of a review (the paper's rubric, one point each).
pub fn review_schema() -> Value {
    let bit = json!({"type": "integer", "enum": [0, 1]});
    json!({
        "type": "object",
        "properties": {
            "reflection": {"type": "string", "maxLength": 600},
            "correctness": bit, "completeness": bit, "satisfaction": bit, "creativity": bit,
            "total": {"type": "integer", "enum": [0, 1, 2, 3, 4]},
            "correction": {"type": "string", "maxLength": 400}
        },
        "required": ["reflection", "correctness", "completeness", "satisfaction", "creativity", "total", "correction"],
        "additionalProperties": false
    })
}

fn tool_lines(domain: &Domain, tools: &[String]) -> String {
    tools
        .iter()
        .filter_map(|t| domain.tool(t))
        .map(|t| format!("- {}", crate::pyjson::dumps(&t.schema["function"])))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The proposer's system message.
pub fn proposer_system(domain: &Domain) -> String {
    format!(
        "You write realistic customer-service tasks for training AI agents in the {name} domain. \
A task is what a simulated customer wants (the instruction), the exact tool calls an agent following the policy must make to fulfil it \
(the actions), and the facts the agent must tell the customer (the outputs).\n\n## Domain policy\n\n{policy}",
        name = domain.name(),
        policy = domain.policy.trim()
    )
}

/// The proposer's system message around a fixed plan: the actions already follow the policy,
/// so it is left out (on retail it is most of the prompt).
pub fn fixed_proposer_system(domain: &Domain) -> String {
    format!(
        "You write realistic customer-service tasks for training AI agents in the {name} domain ({description}). \
A task is what a simulated customer wants (the instruction), given to the person who plays the customer, and the facts the agent must tell them \
(the outputs). The tool calls that fulfil it are given and already follow the domain's policy.",
        name = domain.name(),
        description = domain.manifest.description.trim().trim_end_matches('.')
    )
}

/// The proposer's request for a new task.
pub fn proposer_user(domain: &Domain, ctx: &Context) -> String {
    if let (Some(plan), true) = (&ctx.plan, ctx.fixed) {
        return fixed_brief(domain, ctx, plan);
    }
    let mut s = String::new();
    s.push_str(&format!(
        "## Tools to use (the task's actions come from these)\n{}\n\n",
        tool_lines(domain, &ctx.tools)
    ));
    s.push_str(&format!("## The customer\nuser id: {}\n", ctx.data.user_id));
    for (table, id, record) in &ctx.data.records {
        let whose = if id != &ctx.data.user_id && ctx.data.records[0].0 == *table {
            " (another customer)"
        } else {
            ""
        };
        s.push_str(&format!(
            "{table} {id}{whose}: {}\n",
            crate::pyjson::dumps(record)
        ));
    }
    if let Some(p) = &ctx.persona {
        s.push_str(&format!(
            "\n## Persona\n{} Style: {} Typical wish: {}\n",
            p.persona, p.style, p.goals_hint
        ));
    }
    if !ctx.examples.is_empty() {
        s.push_str("\n## Examples of good tasks (other customers)\n");
        for e in &ctx.examples {
            let actions: Vec<Value> = e
                .actions
                .iter()
                .map(|a| json!({"name": a.name, "arguments": a.arguments}))
                .collect();
            s.push_str(&format!(
                "{}\n",
                crate::pyjson::dumps(
                    &json!({"instruction": e.instruction, "actions": actions, "outputs": e.outputs})
                )
            ));
        }
    }
    if let Some(plan) = &ctx.plan {
        s.push_str("\n## A plan that runs on this data (keep, trim or extend it)\n");
        for (a, o) in plan.actions.iter().zip(&plan.observations) {
            let shown: String = o.chars().take(600).collect();
            let more = if o.chars().count() > 600 { " ..." } else { "" };
            s.push_str(&format!(
                "{} -> {shown}{more}\n",
                crate::pyjson::dumps(&json!({"name": a.name, "arguments": a.arguments}))
            ));
        }
    }
    s.push_str(&identity_hint(domain, ctx));
    s.push_str(
        "\n## Your task\nWrite one new task for this customer. Rules:\n\
- Use only ids, names and values that appear in the customer's data above; never invent them.\n\
- The actions must follow the policy exactly and must all succeed when run in order on this data.\n\
- The instruction is written to the customer in the second person (\"You are ...\"), says who they are and what they want \
and gives every detail the agent needs (but not tool names or ids the customer would not know), and matches the persona.\n\
- Outputs are bare values the agent must say, taken from the data or the actions' results (e.g. \"2015.04\", \"pending\"), never sentences; use [] when the customer only wants changes made.\n\
Answer with one JSON object: {\"thought\": ..., \"instruction\": ..., \"actions\": [{\"name\": ..., \"arguments\": {...}}], \"outputs\": [...]}.",
    );
    s
}

/// The brief of a fixed plan: the customer, their persona, the plan's actions, what the
/// customer wants and what they could be told. Neither the policy, the tool schemas nor the raw
/// records: the plan already runs and follows the rules.
fn fixed_brief(domain: &Domain, ctx: &Context, plan: &Plan) -> String {
    let mut s = format!("## The customer\nuser id: {}\n", ctx.data.user_id);
    if let Some(p) = &ctx.persona {
        s.push_str(&format!("\n## Persona\n{} Style: {}\n", p.persona, p.style));
    }
    s.push_str("\n## The actions (the task's actions are exactly these; they run on this data)\n");
    for a in &plan.actions {
        s.push_str(&format!(
            "{}\n",
            crate::pyjson::dumps(&json!({"name": a.name, "arguments": a.arguments}))
        ));
    }
    s.push_str(&identity_hint(domain, ctx));
    s.push_str("\n## What the customer wants (the instruction asks for all of it)\n");
    if ctx.requests.is_empty() {
        s.push_str("- Only information: nothing is changed.\n");
    }
    for r in &ctx.requests {
        s.push_str(&format!("- {r}\n"));
    }
    if !ctx.answers.is_empty() {
        s.push_str("\n## What the agent can look up for them (field: value)\n");
        for a in &ctx.answers {
            s.push_str(&format!("- {}: {}\n", a.field.replace('_', " "), a.value));
        }
    }
    s.push_str(
        "\n## Your task\nWrite the instruction of this customer and the outputs. Rules:\n\
- The instruction is written to the customer in the second person (\"You are ...\"). It says who they are, as shown above, \
so the agent can authenticate them.\n\
- It asks for every change listed under \"What the customer wants\", keeping each quoted value word for word, and for nothing else; \
add a short reason or situation that fits the persona, in your own words.\n\
- Outputs: at most two values from \"What the agent can look up\" that the customer asks about in the instruction (\"What is my balance?\"); \
usually none: use [] when the customer only wants the changes made.\n\
Answer with one JSON object: {\"thought\": ..., \"instruction\": ..., \"outputs\": [...]}.",
    );
    s
}

/// How this customer can say who they are (the domain's `[grounding] identity`).
fn identity_hint(domain: &Domain, ctx: &Context) -> String {
    let Some((_, _, record)) = ctx.data.records.first() else {
        return String::new();
    };
    let ways: Vec<String> = domain
        .manifest
        .grounding
        .identity
        .iter()
        .filter_map(|alt| {
            let parts: Option<Vec<String>> = alt
                .iter()
                .map(|part| {
                    part.split(' ')
                        .map(|p| {
                            if p == crate::domain::ground::RECORD_ID {
                                return Some(ctx.data.user_id.clone());
                            }
                            let mut at = record;
                            for k in p.split('.') {
                                at = at.get(k)?;
                            }
                            at.as_str()
                                .map(str::to_owned)
                                .or_else(|| Some(at.to_string()))
                        })
                        .collect::<Option<Vec<String>>>()
                        .map(|w| w.join(" "))
                })
                .collect();
            parts.map(|p| p.join(", "))
        })
        .collect();
    if ways.is_empty() {
        return String::new();
    }
    format!(
        "\n## Who the customer is\nThe instruction must identify the customer by one of: {}.\n",
        ways.iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" or ")
    )
}

/// The message asking the proposer to revise after a failure.
pub fn revise_user(feedback: &str) -> String {
    format!(
        "Your task was rejected:\n{feedback}\n\nWrite a corrected task for the same customer. Answer with one JSON object as before."
    )
}

fn task_json(task: &Task) -> String {
    let actions: Vec<Value> = task
        .actions
        .iter()
        .map(|a| json!({"name": a.name, "arguments": a.arguments}))
        .collect();
    crate::pyjson::dumps(
        &json!({"instruction": task.instruction, "actions": actions, "outputs": task.outputs}),
    )
}

fn diff_text(diff: &[Edit]) -> String {
    if diff.is_empty() {
        return "(no change: an information-only task)".into();
    }
    diff.iter()
        .map(|e| crate::pyjson::dumps(&serde_json::to_value(e).unwrap_or(Value::Null)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The reviewer's system message: the paper's guidelines and rubric.
pub fn reviewer_system(domain: &Domain) -> String {
    format!(
        "You review customer-service tasks written for training AI agents in the {} domain. You see the task (instruction, actions, outputs), \
the tools, and the database diff the actions produce. The diff should reflect only changes the instruction asks for; an empty diff is \
fine for information-only tasks. Reflect briefly, then score each criterion 0 or 1:\n\
- correctness: the actions implement the instruction and follow the policy;\n\
- completeness: the instruction gives every detail the actions need, and the actions cover everything it asks;\n\
- satisfaction: the outputs answer every question the instruction asks (empty when it asks none);\n\
- creativity: a plausible, non-trivial scenario.\n\
total is the sum. correction says concretely what to fix (empty when nothing).\n\n## Domain policy\n\n{}",
        domain.name(),
        domain.policy.trim()
    )
}

/// The reviewer's request.
pub fn reviewer_user(domain: &Domain, task: &Task, diff: &[Edit], grounding: &str) -> String {
    let tools: Vec<String> = task
        .actions
        .iter()
        .map(|a| a.name.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    format!(
        "## Tools\n{}\n\n## Task (customer {})\n{}\n\n## Database diff\n{}\n\n## Deterministic checks (passed)\n{grounding}\n\nJudge whether the instruction asks for exactly what the actions do, no more and no less.\n\nAnswer with one JSON object: {{\"reflection\", \"correctness\", \"completeness\", \"satisfaction\", \"creativity\", \"total\", \"correction\"}}.",
        tool_lines(domain, &tools),
        task.user_id,
        task_json(task),
        diff_text(diff)
    )
}

/// The summariser's request: turn the reviews into one actionable feedback paragraph.
pub fn summariser_user(task: &Task, diff: &[Edit], reviews: &[Value]) -> String {
    format!(
        "Reviewers judged this task. Summarise where they agree and disagree and write concise, actionable feedback for the author \
(what to change). Do not re-judge the task yourself.\n\n## Task\n{}\n\n## Database diff\n{}\n\n## Reviews\n{}\n\nAnswer with the feedback only.",
        task_json(task),
        diff_text(diff),
        reviews
            .iter()
            .map(crate::pyjson::dumps)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The request for one instruction covering a combination of tasks.
pub fn recombine_user(parts: &[Task]) -> String {
    format!(
        "These tasks belong to the same customer:\n{}\n\nWrite ONE coherent instruction in the second person in which the customer wants all of this in a \
single conversation, with every detail the actions need. Answer with one JSON object: {{\"thought\": ..., \"instruction\": ...}}.",
        parts.iter().map(task_json).collect::<Vec<_>>().join("\n")
    )
}
