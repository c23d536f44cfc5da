//! Greedy decoding against llama.cpp's continuations on the same GGUF files.

use apigen_mt::llm::model::LoadOptions;
use apigen_mt::llm::{Engine, GenerateRequest, KvCache};

use super::support::{REFERENCED, model_file, model_lock, reference};

const COMPARED: usize = 16;

#[test]
fn greedy_continuations_agree_with_llama_cpp() {
    let _serial = model_lock();
    let mut failures = vec![];
    for &(profile, reference_file) in REFERENCED {
        let (Some(reference), Some(_)) = (reference(reference_file), model_file(profile)) else {
            continue;
        };
        let engine = Engine::load(profile, &LoadOptions::default()).unwrap();
        let cases = reference["continuations"].as_array().unwrap();
        let mut agree = 0;
        let mut report = vec![];
        for c in cases {
            let prompt: Vec<u32> = serde_json::from_value(c["prompt_ids"].clone()).unwrap();
            let want: Vec<u32> = serde_json::from_value(c["greedy_ids"].clone()).unwrap();
            let n = want.len().min(COMPARED);
            let req = GenerateRequest {
                max_tokens: n,
                ignore_eos: true,
                ..Default::default()
            };
            let got = engine
                .generate(&mut KvCache::new(), &prompt, &req, None)
                .unwrap();
            if got.ids[..n] == want[..n] {
                agree += 1;
            } else {
                report.push(format!(
                    "  llama.cpp {:?}\n  ours      {:?}",
                    &want[..n],
                    &got.ids
                ));
            }
        }
        eprintln!(
            "{profile}: {agree}/{} prompts agree on the first {COMPARED} tokens",
            cases.len()
        );
        if agree < 6 {
            failures.push(format!(
                "{profile}: only {agree}/{} agree:\n{}",
                cases.len(),
                report.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
