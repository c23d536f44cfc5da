//! The real models' own chat templates, multi-turn cache reuse, and tool calls end to end.

use std::sync::Arc;

use apigen_mt::llm::local::LocalBackend;
use apigen_mt::llm::model::LoadOptions;
use apigen_mt::llm::{Backend, ChatRequest, Conversation, Engine, Message, ModelOutput};
use serde_json::json;

use super::support::{REFERENCED, model_file, model_lock, reference};

fn backend(profile: &str) -> Option<LocalBackend> {
    model_file(profile)?;
    Some(
        LocalBackend::new(Arc::new(
            Engine::load(profile, &LoadOptions::default()).unwrap(),
        ))
        .unwrap(),
    )
}

/// Split llama.cpp's ChatML reference prompt back into (system, user).
fn system_user(prompt: &str) -> (String, String) {
    let sys = prompt
        .split("<|im_start|>system\n")
        .nth(1)
        .and_then(|s| s.split("<|im_end|>").next())
        .unwrap();
    let user = prompt
        .split("<|im_start|>user\n")
        .nth(1)
        .and_then(|s| s.split("<|im_end|>").next())
        .unwrap();
    (sys.to_string(), user.to_string())
}

#[test]
fn gguf_templates_render_the_reference_prompts() {
    let _serial = model_lock();
    for &(profile, file) in REFERENCED {
        let (Some(reference), Some(backend)) = (reference(file), backend(profile)) else {
            continue;
        };
        for c in reference["continuations"].as_array().unwrap() {
            let prompt = c["prompt"].as_str().unwrap();
            let (sys, user) = system_user(prompt);
            let req = ChatRequest::new(vec![Message::system(sys), Message::user(user)]);
            assert_eq!(backend.prompt(&req).unwrap(), prompt, "{profile}");
        }
    }
}

#[test]
fn a_second_turn_reuses_the_conversation_cache() {
    let _serial = model_lock();
    let Some(backend) = backend("smollm2-135m") else {
        return;
    };
    let mut conv = Conversation::new();
    let mut messages = vec![
        Message::system("You are a helpful assistant."),
        Message::user("Name a color."),
    ];
    let mut req = ChatRequest::new(messages.clone());
    req.max_tokens = 12;
    let first = backend.reply(&mut conv, &req).unwrap();
    assert_eq!(first.usage.cached_tokens, 0);
    messages.push(Message::assistant(first.raw.clone()));
    messages.push(Message::user("Another one?"));
    req.messages = messages;
    let second = backend.reply(&mut conv, &req).unwrap();
    // Everything up to the first reply's last token was cached; only the new turn ran.
    assert!(
        second.usage.cached_tokens >= first.usage.prompt_tokens,
        "{:?} vs {:?}",
        second.usage,
        first.usage
    );
    assert!(
        second.usage.prompt_tokens - second.usage.cached_tokens < 20,
        "{:?}",
        second.usage
    );
    assert_eq!(conv.turns(), 2);
    // Same answer as from a fresh conversation: the cache changes cost, not output.
    let fresh = backend.reply(&mut Conversation::new(), &req).unwrap();
    assert_eq!(fresh.raw, second.raw);
}

#[test]
fn qwen_calls_a_tool_greedily() {
    let _serial = model_lock();
    let Some(backend) = backend("qwen2.5-coder-0.5b") else {
        return;
    };
    let tools = vec![
        json!({"name": "get_order_details", "description": "Get the status and details of an order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string", "description": "The order id, such as '#W0000000'."}}, "required": ["order_id"]}}),
    ];
    let mut req = ChatRequest::new(vec![
        Message::system("You are a retail customer service agent. Use the tools to help the user."),
        Message::user("What is the status of my order #W2378156?"),
    ]);
    req.tools = tools;
    req.max_tokens = 60;
    let prompt = backend.prompt(&req).unwrap();
    assert!(
        prompt.contains("<tools>") && prompt.contains("\"name\": \"get_order_details\""),
        "{prompt}"
    );
    let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
    match &reply.output {
        ModelOutput::ToolCalls { calls, .. } => {
            assert_eq!(calls[0].name, "get_order_details");
            assert_eq!(calls[0].arguments, json!({"order_id": "#W2378156"}));
        }
        other => panic!("{other:?}"),
    }
}
