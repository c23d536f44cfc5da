//! Constrained decoding on the real SmolLM2: JSON-schema output that parses and validates on
//! every seed, and tool calls in the model's format.

use std::sync::Arc;

use apigen_mt::llm::local::LocalBackend;
use apigen_mt::llm::model::LoadOptions;
use apigen_mt::llm::{
    Backend, ChatRequest, Constraint, Conversation, Engine, Message, ModelOutput, SamplingParams,
};
use serde_json::{Value, json};

use super::support::{model_file, model_lock};

const ACTIONS: [&str; 3] = [
    "get_order_details",
    "cancel_pending_order",
    "transfer_to_human_agents",
];

fn blueprint_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": 120},
            "actions": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"enum": ACTIONS},
                        "arguments": {"type": "object", "properties": {"order_id": {"type": "string", "pattern": "^#W[0-9]{7}$"}}, "required": ["order_id"], "additionalProperties": false}
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["instruction", "actions"],
        "additionalProperties": false
    })
}

/// The checks the schema states, written out.
fn validate_blueprint(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("not an object")?;
    if obj.keys().any(|k| k != "instruction" && k != "actions") {
        return Err(format!("extra keys in {v}"));
    }
    let instruction = obj
        .get("instruction")
        .and_then(Value::as_str)
        .ok_or("instruction is not a string")?;
    if instruction.is_empty() || instruction.chars().count() > 120 {
        return Err("instruction length".into());
    }
    let actions = obj
        .get("actions")
        .and_then(Value::as_array)
        .ok_or("actions is not an array")?;
    if actions.is_empty() || actions.len() > 3 {
        return Err(format!("{} actions", actions.len()));
    }
    for a in actions {
        let name = a
            .get("name")
            .and_then(Value::as_str)
            .ok_or("action without name")?;
        if !ACTIONS.contains(&name) {
            return Err(format!("unknown action {name}"));
        }
        let args = a
            .get("arguments")
            .and_then(Value::as_object)
            .ok_or("arguments not an object")?;
        let id = args
            .get("order_id")
            .and_then(Value::as_str)
            .ok_or("no order_id")?;
        let ok =
            id.len() == 9 && id.starts_with("#W") && id[2..].bytes().all(|b| b.is_ascii_digit());
        if !ok || args.len() != 1 || a.as_object().map_or(0, |o| o.len()) != 2 {
            return Err(format!("bad action {a}"));
        }
    }
    Ok(())
}

fn smollm() -> Option<LocalBackend> {
    local("smollm2-135m")
}

fn local(profile: &str) -> Option<LocalBackend> {
    model_file(profile)?;
    let engine = Engine::load(profile, &LoadOptions::default()).unwrap();
    Some(LocalBackend::new(Arc::new(engine)).unwrap())
}

#[test]
fn blueprint_json_is_valid_on_every_seed() {
    let _serial = model_lock();
    let Some(backend) = smollm() else { return };
    let messages = vec![
        Message::system(
            "You write task blueprints for a retail customer service simulator. Reply with JSON.",
        ),
        Message::user("Write a blueprint: a customer wants to cancel order #W2378156."),
    ];
    let mut valid = 0;
    let mut failures = vec![];
    for seed in 0..20 {
        let mut req = ChatRequest::new(messages.clone());
        req.max_tokens = 400;
        req.sampling = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 0,
            seed,
        };
        req.constraint = Some(Constraint::JsonSchema(blueprint_schema()));
        let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
        match serde_json::from_str::<Value>(&reply.raw)
            .map_err(|e| e.to_string())
            .and_then(|v| validate_blueprint(&v))
        {
            Ok(()) => valid += 1,
            Err(e) => failures.push(format!(
                "seed {seed}: {e}: {:?} ({:?})",
                reply.raw, reply.finish
            )),
        }
    }
    assert_eq!(valid, 20, "{}", failures.join("\n"));
}

#[test]
fn tool_call_constraint_yields_a_call_in_the_model_format() {
    let _serial = model_lock();
    let Some(backend) = smollm() else { return };
    let tools = vec![
        json!({"name": "get_order_details", "description": "Look up an order", "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}),
        json!({"name": "cancel_pending_order", "description": "Cancel an order", "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "reason": {"enum": ["no longer needed", "ordered by mistake"]}}, "required": ["order_id", "reason"]}}),
    ];
    let mut req = ChatRequest::new(vec![Message::user(
        "Cancel my order #W2378156, I no longer need it.",
    )]);
    req.tools = tools;
    req.max_tokens = 120;
    req.constraint = Some(Constraint::ToolCall);
    let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
    assert!(reply.raw.starts_with("<tool_call>\n{"), "{:?}", reply.raw);
    match &reply.output {
        ModelOutput::ToolCalls { calls, .. } => {
            assert_eq!(calls.len(), 1);
            assert!(
                ["get_order_details", "cancel_pending_order"].contains(&calls[0].name.as_str())
            );
            assert!(
                calls[0]
                    .arguments
                    .get("order_id")
                    .is_some_and(Value::is_string),
                "{:?}",
                calls[0]
            );
        }
        other => panic!("{other:?} from {:?}", reply.raw),
    }
}

#[test]
fn text_or_tool_call_gives_either_a_clean_answer_or_a_clean_call() {
    let _serial = model_lock();
    // Qwen ends a turn with <|im_end|>, not its lower-numbered <|endoftext|>: the grammar must
    // let that token stop a free answer.
    for profile in ["smollm2-135m", "qwen2.5-coder-0.5b"] {
        let Some(backend) = local(profile) else {
            continue;
        };
        answers_or_calls(&backend);
    }
}

/// Each reply is a clean answer or a clean call. Sampled at temperature 0.8 a small model may
/// ramble to the token limit, so an answer may end by length; but at least one answer must end
/// on the end-of-turn token, which shows the grammar lets that token stop free text.
fn answers_or_calls(backend: &LocalBackend) {
    let mut stopped_answers = 0;
    let tools = vec![
        json!({"name": "get_order_details", "description": "Look up an order", "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}),
    ];
    for (prompt, seed) in [
        ("Look up my order #W2378156 please.", 0),
        ("Hello! What can you do?", 1),
        ("Tell me a short joke about databases.", 2),
        ("Order #W1 — where is it?", 3),
    ] {
        let mut req = ChatRequest::new(vec![Message::user(prompt)]);
        req.tools = tools.clone();
        req.max_tokens = 200;
        req.sampling = apigen_mt::llm::SamplingParams {
            temperature: 0.8,
            seed,
            ..Default::default()
        };
        req.constraint = Some(Constraint::TextOrToolCall);
        let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
        match &reply.output {
            ModelOutput::ToolCalls { calls, content } => {
                assert!(
                    ["<tool_call>\n", "```json\n", "{"]
                        .iter()
                        .any(|p| reply.raw.starts_with(p)),
                    "{:?}",
                    reply.raw
                );
                assert_eq!((calls.len(), content.trim()), (1, ""), "{:?}", reply.raw);
                assert_eq!(calls[0].name, "get_order_details");
            }
            ModelOutput::Text { content } => {
                assert!(
                    !content.contains(['<', '{', '`']),
                    "an answer never half-opens a call: {content:?}"
                );
                match reply.finish {
                    apigen_mt::llm::Finish::StopToken { .. } => stopped_answers += 1,
                    apigen_mt::llm::Finish::Length => {}
                    ref other => panic!("a free answer ended by {other:?}: {content:?}"),
                }
            }
            other => panic!("{other:?} from {:?}", reply.raw),
        }
    }
    assert!(
        stopped_answers > 0,
        "{}: no answer ended on the end-of-turn token",
        backend.name()
    );
}

/// Narrowed to the ids seen so far, a call can only name one of them: asked to look up the
/// schema's example user, the 0.5B calls with a seen id or answers in words; with no id seen the
/// tool is out of the grammar and the reply is words.
#[test]
fn a_call_narrowed_to_seen_ids_names_only_those() {
    let _serial = model_lock();
    let Some(backend) = local("qwen2.5-coder-0.5b") else {
        return;
    };
    let tools = vec![
        json!({"name": "get_user_details", "description": "Look up a user",
        "parameters": {"type": "object", "properties": {"user_id": {"type": "string",
        "description": "The user id, such as 'sara_doe_496'."}}, "required": ["user_id"]}}),
    ];
    let said = vec![Message::user(
        "Please call get_user_details for the user sara_doe_496.",
    )];
    for (seen, allowed) in [(vec!["mei_kim_1021"], true), (vec![], false)] {
        let seen: std::collections::BTreeSet<String> =
            seen.into_iter().map(str::to_owned).collect();
        let narrowed = apigen_mt::rollout::guide::grounded_tools(&tools, &seen);
        assert_eq!(narrowed.len(), usize::from(allowed));
        let mut req = ChatRequest::new(said.clone());
        req.tools = tools.clone();
        req.max_tokens = 60;
        req.constraint = Some(Constraint::TextOrCallTo(narrowed));
        let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
        assert!(
            !reply.raw.contains("sara_doe_496") || !reply.raw.contains('{'),
            "{:?}",
            reply.raw
        );
        match &reply.output {
            ModelOutput::ToolCalls { calls, .. } => {
                assert!(allowed, "no tool was allowed: {:?}", reply.raw);
                assert_eq!(
                    calls[0].arguments["user_id"], "mei_kim_1021",
                    "{:?}",
                    reply.raw
                );
            }
            ModelOutput::Text { content } => {
                assert!(!content.contains(['{', '<', '`']), "{content:?}")
            }
            other => panic!("{other:?} from {:?}", reply.raw),
        }
    }
}

/// Under the user's no-stop expression the 0.5B, told to end the conversation with
/// `###STOP###`, writes something else; without it, it writes the stop (so the constraint is
/// what changed the reply).
#[test]
fn a_user_line_under_the_no_stop_expression_cannot_end_the_conversation() {
    let _serial = model_lock();
    let Some(backend) = local("qwen2.5-coder-0.5b") else {
        return;
    };
    let said = vec![Message::user(
        "Reply with exactly ###STOP### and nothing else.",
    )];
    let mut req = ChatRequest::new(said);
    req.max_tokens = 12;
    let free = backend.reply(&mut Conversation::new(), &req).unwrap();
    assert!(apigen_mt::rollout::is_stop(&free.raw), "{:?}", free.raw);
    req.constraint = Some(Constraint::Regex(apigen_mt::rollout::NO_STOP.into()));
    let held = backend.reply(&mut Conversation::new(), &req).unwrap();
    assert!(!apigen_mt::rollout::is_stop(&held.raw), "{:?}", held.raw);
    assert!(!held.raw.trim().is_empty(), "{:?}", held.raw);
}

/// A call under a tool-call constraint has only the arguments its schema declares, even when
/// the schema leaves `additionalProperties` unsaid and the prompt asks for another one (a
/// gated write's grammar drops the `memo` no gold write uses; a memo the agent added anyway
/// changed the transfer record and failed the episode).
#[test]
fn a_call_has_only_the_arguments_its_schema_declares() {
    let _serial = model_lock();
    let Some(backend) = local("qwen2.5-coder-0.5b") else {
        return;
    };
    let tools = vec![
        json!({"type": "function", "function": {"name": "transfer_funds",
        "description": "Move money between accounts",
        "parameters": {"type": "object", "properties": {
            "from_account_id": {"type": "string"}, "to_account_id": {"type": "string"},
            "amount": {"type": "number", "multipleOf": 0.01}},
        "required": ["from_account_id", "to_account_id", "amount"]}}}),
    ];
    for constraint in [
        Constraint::CallTo(tools.clone()),
        Constraint::TextOrCallTo(tools.clone()),
    ] {
        let mut req = ChatRequest::new(vec![Message::user(
            "Call transfer_funds to move 10 from acc_1 to acc_2, with the arguments \
             from_account_id, to_account_id, amount and memo (the memo is \"rent\").",
        )]);
        req.tools = tools.clone();
        req.max_tokens = 80;
        req.constraint = Some(constraint);
        let call_only = matches!(req.constraint, Some(Constraint::CallTo(_)));
        let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
        // Closed at two decimals, the amount ends: the call parses.
        assert!(
            !call_only || matches!(reply.output, ModelOutput::ToolCalls { .. }),
            "{:?}",
            reply.raw
        );
        if let ModelOutput::ToolCalls { calls, .. } = &reply.output {
            let keys: Vec<&String> = calls[0]
                .arguments
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            assert!(
                keys.iter()
                    .all(|k| ["from_account_id", "to_account_id", "amount"].contains(&k.as_str())),
                "{:?}",
                reply.raw
            );
        }
    }
}
