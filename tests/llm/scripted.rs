//! The scripted backend drives the same parsing path as a real model.

use apigen_mt::llm::scripted::ScriptedBackend;
use apigen_mt::llm::{Backend, ChatRequest, Conversation, Message, ModelOutput, ToolFormat};

#[test]
fn replays_replies_in_order_and_parses_them() {
    let backend = ScriptedBackend::new(
        ToolFormat::Hermes,
        [
            "<tool_call>\n{\"name\": \"get_user\", \"arguments\": {\"id\": \"u1\"}}\n</tool_call>",
            "Done, anything else?",
            "{\"name\": \"x\", \"arguments\": {",
        ],
    );
    let mut conv = Conversation::new();
    let req = ChatRequest::new(vec![Message::user("hi")]);
    let a = backend.reply(&mut conv, &req).unwrap();
    assert_eq!(a.output.calls()[0].name, "get_user");
    let b = backend.reply(&mut conv, &req).unwrap();
    assert_eq!(
        b.output,
        ModelOutput::Text {
            content: "Done, anything else?".into()
        }
    );
    let c = backend.reply(&mut conv, &req).unwrap();
    assert!(matches!(c.output, ModelOutput::Malformed { .. }));
    assert_eq!(conv.turns(), 3);
    assert_eq!(backend.requests().len(), 3);
    assert_eq!(backend.remaining(), 0);
    assert!(
        backend.reply(&mut conv, &req).is_err(),
        "running out of replies is an error, not a panic"
    );
}

#[test]
fn is_usable_as_a_shared_trait_object() {
    let backend: std::sync::Arc<dyn Backend> =
        std::sync::Arc::new(ScriptedBackend::new(ToolFormat::Xlam, ["[]", "[]"]));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let b = backend.clone();
            std::thread::spawn(move || {
                b.reply(&mut Conversation::new(), &ChatRequest::new(vec![]))
                    .map(|r| r.raw)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), "[]");
    }
}
