//! Batch invariance on a real model: a sequence decodes to the same tokens alone and beside
//! other sequences in one forward pass, greedy and seeded, so runs are reproducible at any
//! batch size.

use apigen_mt::llm::engine::BatchJob;
use apigen_mt::llm::model::LoadOptions;
use apigen_mt::llm::{Engine, GenerateRequest, KvCache, SamplingParams};

use super::support::{model_file, model_lock};

const PROMPTS: [&str; 8] = [
    "Write a short story about a robot who learns to cook. Once upon a time,",
    "def fibonacci(n):",
    "The capital of France is",
    "List three colours:",
    "<|im_start|>user\nCancel my order #W123, please.<|im_end|>\n<|im_start|>assistant\n",
    "Translate to German: good morning",
    "1, 2, 3, 5, 8,",
    "SELECT name FROM users WHERE",
];

#[test]
fn a_sequence_decodes_the_same_alone_and_in_a_batch() {
    let _serial = model_lock();
    let profile = "qwen2.5-coder-0.5b";
    if model_file(profile).is_none() {
        return;
    }
    let engine = Engine::load(profile, &LoadOptions::default()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| engine.tokenizer().encode(p, false).unwrap())
        .collect();
    // Greedy for half, seeded sampling for the rest; different lengths so sequences leave the
    // batch at different steps.
    let reqs: Vec<GenerateRequest> = (0..PROMPTS.len())
        .map(|i| GenerateRequest {
            max_tokens: 12 + 3 * i,
            sampling: if i % 2 == 0 {
                SamplingParams::greedy()
            } else {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.95,
                    seed: 100 + i as u64,
                }
            },
            ..Default::default()
        })
        .collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&reqs)
        .map(|(p, r)| {
            engine
                .generate(&mut KvCache::new(), p, r, None)
                .unwrap()
                .ids
        })
        .collect();
    let mut caches: Vec<KvCache> = (0..PROMPTS.len()).map(|_| KvCache::new()).collect();
    let mut jobs: Vec<BatchJob> = caches
        .iter_mut()
        .zip(&prompts)
        .zip(&reqs)
        .map(|((cache, prompt), req)| BatchJob {
            cache,
            prompt,
            req,
            processor: None,
        })
        .collect();
    let together: Vec<Vec<u32>> = engine
        .generate_batch(&mut jobs)
        .unwrap()
        .into_iter()
        .map(|g| g.ids)
        .collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "prompt {i} ({:?})", PROMPTS[i]);
    }
    assert!(
        alone
            .iter()
            .map(Vec::len)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1
    );
    // And a batch of one equals the batch of eight's row.
    let mut cache = KvCache::new();
    let mut one = [BatchJob {
        cache: &mut cache,
        prompt: &prompts[3],
        req: &reqs[3],
        processor: None,
    }];
    assert_eq!(engine.generate_batch(&mut one).unwrap()[0].ids, alone[3]);
}

/// The backend seam: eight callers on eight threads, each waiting on `Backend::reply`, are
/// decoded together by the scheduler; every reply (plain, seeded, JSON-constrained, tool call)
/// equals the same request made alone, and each conversation's next turn reuses its cache.
#[test]
fn concurrent_replies_through_the_backend_equal_replies_alone() {
    use std::sync::Arc;

    use apigen_mt::llm::local::LocalBackend;
    use apigen_mt::llm::scheduler::Limits;
    use apigen_mt::llm::{Backend, ChatRequest, Constraint, Conversation, Message};

    let _serial = model_lock();
    let profile = "qwen2.5-coder-0.5b";
    if model_file(profile).is_none() {
        return;
    }
    let engine = Arc::new(Engine::load(profile, &LoadOptions::default()).unwrap());
    let tool = serde_json::json!({"type": "function", "function": {
        "name": "get_order_details",
        "description": "Look up an order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                       "required": ["order_id"]}}});
    let requests: Vec<ChatRequest> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = ChatRequest::new(vec![
                Message::system("You are a helpful assistant."),
                Message::user(*p),
            ]);
            r.max_tokens = 10 + 2 * i;
            if i % 2 == 1 {
                r.sampling = SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.95,
                    seed: 7 + i as u64,
                };
            }
            match i % 4 {
                2 => {
                    r.max_tokens = 40;
                    r.constraint = Some(Constraint::JsonSchema(serde_json::json!({
                        "type": "object",
                        "properties": {"answer": {"type": "string"}},
                        "required": ["answer"]})));
                }
                3 => {
                    r.max_tokens = 40;
                    r.tools = vec![tool.clone()];
                    r.constraint = Some(Constraint::ToolCall);
                }
                _ => {}
            }
            r
        })
        .collect();
    let alone_backend = LocalBackend::new(engine.clone())
        .unwrap()
        .with_limits(Limits {
            max_sequences: 1,
            ..Limits::default()
        });
    let alone: Vec<String> = requests
        .iter()
        .map(|r| {
            alone_backend
                .reply(&mut Conversation::new(), r)
                .unwrap()
                .raw
        })
        .collect();
    let backend = LocalBackend::new(engine).unwrap();
    let together: Vec<(String, Conversation)> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let backend = &backend;
                s.spawn(move || {
                    let mut conv = Conversation::new();
                    let reply = backend.reply(&mut conv, r).unwrap();
                    (reply.raw, conv)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, (b, _))) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i} ({:?})", PROMPTS[i]);
    }
    assert_eq!(alone_backend.batch_stats().peak, 1);
    let stats = backend.batch_stats();
    assert!(
        stats.peak > 1,
        "the replies were never decoded together: {stats:?}"
    );
    // A second turn on a conversation served in the batch reuses its cached prompt.
    let (first, mut conv) = together.into_iter().next().unwrap();
    let mut next = requests[0].clone();
    next.messages.push(Message::assistant(first));
    next.messages.push(Message::user("And then?"));
    let reply = backend.reply(&mut conv, &next).unwrap();
    assert!(reply.usage.cached_tokens > 10, "{:?}", reply.usage);
    assert_eq!(conv.turns(), 2);
}
