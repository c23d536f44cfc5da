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
