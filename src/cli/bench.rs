//! `bench NAME`: prefill and decode speed (tok/s, median of runs) as JSON.

use clap::Args;
use serde_json::json;

use super::load::LoadArgs;
use crate::llm::KvCache;
use crate::llm::constrain::Constrainer;
use crate::llm::engine::{BatchJob, Engine, GenerateRequest};

/// The prompt llama.cpp's benchmark script uses, so figures compare like for like.
pub const BENCH_PROMPT: &str =
    "Write a short story about a robot who learns to cook. Once upon a time,";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Profile name or checkpoint path.
    pub name: String,
    /// Tokens to generate per decode run (greedy, end-of-turn ignored).
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Prompt length for the prefill measurement (and the context of a second decode speed,
    /// `then_decode_tok_per_s`, 32 tokens after it).
    #[arg(long, default_value_t = 256)]
    pub prefill_tokens: usize,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also decode this many sequences at once, for each size in the list (e.g. `1,2,4,8,16`):
    /// adds a `batched` array with aggregate and per-sequence decode speed and prefill speed.
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    pub batch: Vec<usize>,
    /// Instead of the speed figures, measure the key/value memory of `--episodes`
    /// conversations that all start from this file's text (e.g. an agent's system prompt and
    /// tools): the prefix is computed once and each conversation adds its own turn and
    /// `--gen-tokens` decoded tokens, all decoded together. Also reports how fast the prefix
    /// was prefilled.
    #[arg(long, value_name = "FILE")]
    pub shared_prefix: Option<std::path::PathBuf>,
    /// Conversations for `--shared-prefix`.
    #[arg(long, default_value_t = 16)]
    pub episodes: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Tokens decoded after the prefill prompt, for the decode speed at that context.
const LONG_DECODE_TOKENS: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let engine = args.load.load(&args.name)?;
    if let Some(path) = &args.shared_prefix {
        let report = shared_prefix(&engine, path, args.episodes.max(1), args.gen_tokens)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let tok = engine.tokenizer();
    let prompt = tok.encode(BENCH_PROMPT, false)?;
    let mut long = Vec::new();
    while long.len() < args.prefill_tokens {
        long.extend(tok.encode(
            " Then the robot tried again, and again, with more care each time.",
            false,
        )?);
    }
    long.truncate(args.prefill_tokens.max(1));
    let runs = args.runs.max(1);
    // Warm-up (first-op thread pool start, page faults).
    engine.generate(
        &mut KvCache::new(),
        &prompt,
        &GenerateRequest {
            max_tokens: 4,
            ignore_eos: true,
            ..Default::default()
        },
        None,
    )?;
    // Prefill the long prompt, then decode a little after it: decode slows as the context grows.
    let (mut prefill, mut long_decode) = (vec![], vec![]);
    for _ in 0..runs {
        let g = engine.generate(
            &mut KvCache::new(),
            &long,
            &GenerateRequest {
                max_tokens: LONG_DECODE_TOKENS + 1,
                ignore_eos: true,
                ..Default::default()
            },
            None,
        )?;
        prefill.push(long.len() as f64 / (g.prefill_ms / 1e3));
        long_decode.push((g.ids.len().saturating_sub(1)) as f64 / (g.decode_ms / 1e3));
    }
    let mut decode = vec![];
    let mut first_ms = vec![];
    let mut text = String::new();
    for _ in 0..runs {
        let req = GenerateRequest {
            max_tokens: args.gen_tokens,
            ignore_eos: true,
            ..Default::default()
        };
        let g = engine.generate(&mut KvCache::new(), &prompt, &req, None)?;
        decode.push((g.ids.len().saturating_sub(1)) as f64 / (g.decode_ms / 1e3));
        first_ms.push(g.prefill_ms);
        text = g.text;
    }
    let constrained = constrained_decode(&engine, &prompt)?;
    let mut batched = Vec::new();
    for &size in &args.batch {
        batched.push(batched_decode(
            &engine,
            &prompt,
            size.max(1),
            args.gen_tokens,
            runs,
        )?);
    }
    let report = json!({
        "model": args.name,
        "file": engine.path().file_name().map(|f| f.to_string_lossy().into_owned()),
        "device": args.load.device,
        "threads": crate::llm::device::matmul_threads(),
        "runs": runs,
        "prefill": {"prompt_tokens": long.len(), "tok_per_s": (median(prefill) * 10.0).round() / 10.0,
                    "then_decode_tok_per_s": (median(long_decode) * 100.0).round() / 100.0},
        "decode": {"prompt_tokens": prompt.len(), "gen_tokens": args.gen_tokens, "prompt_ms": (median(first_ms) * 10.0).round() / 10.0,
                   "tok_per_s": (median(decode) * 100.0).round() / 100.0},
        "constrained": constrained,
        "batched": batched,
        "text": text.chars().take(200).collect::<String>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Decode `size` sequences together (each its own copy of the prompt and its own cache, greedy,
/// end-of-turn ignored). Aggregate tok/s counts every sequence's tokens; per-sequence tok/s is
/// what each one sees; prefill is the prompts' tokens over the time until the last prompt is
/// read (prompts run one after another).
fn batched_decode(
    engine: &Engine,
    prompt: &[u32],
    size: usize,
    gen_tokens: usize,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let req = GenerateRequest {
        max_tokens: gen_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let (mut aggregate, mut per_sequence, mut prefill) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let mut caches: Vec<KvCache> = (0..size).map(|_| KvCache::new()).collect();
        let mut jobs: Vec<BatchJob> = caches
            .iter_mut()
            .map(|cache| BatchJob {
                cache,
                prompt,
                req: &req,
                processor: None,
            })
            .collect();
        let gens = engine.generate_batch(&mut jobs)?;
        let decode_s = gens.iter().map(|g| g.decode_ms).fold(0f64, f64::max) / 1e3;
        let tokens: usize = gens.iter().map(|g| g.ids.len().saturating_sub(1)).sum();
        aggregate.push(tokens as f64 / decode_s);
        per_sequence.push(tokens as f64 / size as f64 / decode_s);
        // Every sequence is admitted at once and its `prefill_ms` runs from then to the end
        // of its own prompt: the last of them is the batch's prefill time.
        let prefill_s = gens.iter().map(|g| g.prefill_ms).fold(0f64, f64::max) / 1e3;
        prefill.push((prompt.len() * size) as f64 / prefill_s);
    }
    Ok(json!({
        "batch": size,
        "decode_tok_per_s": (median(aggregate) * 100.0).round() / 100.0,
        "per_sequence_tok_per_s": (median(per_sequence) * 100.0).round() / 100.0,
        "prefill_tok_per_s": (median(prefill) * 10.0).round() / 10.0,
    }))
}

/// Key/value memory of `episodes` conversations cloned from one computed prefix, each then
/// given its own short turn and `gen_tokens` decoded tokens in one batch. Reports the pages the
/// caches hold (each shared page once) and the heap the clones and their decoding added (the
/// process allocator's count), both against the ideal: the prefix once plus every
/// conversation's own positions.
fn shared_prefix(
    engine: &Engine,
    path: &std::path::Path,
    episodes: usize,
    gen_tokens: usize,
) -> anyhow::Result<serde_json::Value> {
    use crate::domain::script::meter;
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let tok = engine.tokenizer();
    let prefix = tok.encode(&text, false)?;
    if prefix.is_empty() {
        anyhow::bail!("{}: no tokens", path.display());
    }
    let mut base = KvCache::new();
    let started = std::time::Instant::now();
    engine.prefill(&mut base, &prefix)?;
    let prefill_s = started.elapsed().as_secs_f64();
    let per_position =
        base.kv_bytes() / base.len().div_ceil(crate::llm::model::PAGE) / crate::llm::model::PAGE;
    let prompts: Vec<Vec<u32>> = (0..episodes)
        .map(|i| {
            let mut p = prefix.clone();
            p.extend(tok.encode(
                &format!(
                    "\nCustomer {i}: hello, I need help with order number {}.",
                    1000 + 37 * i
                ),
                false,
            )?);
            Ok(p)
        })
        .collect::<anyhow::Result<_>>()?;
    let req = GenerateRequest {
        max_tokens: gen_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    // One throwaway conversation first, so that buffers made once (candle's lazily packed
    // weights) are not counted as the conversations' memory.
    engine.generate(&mut base.clone(), &prompts[0], &req, None)?;
    meter::arm(usize::MAX);
    let mut caches: Vec<KvCache> = (0..episodes).map(|_| base.clone()).collect();
    let mut jobs: Vec<BatchJob> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(cache, prompt)| BatchJob {
            cache,
            prompt,
            req: &req,
            processor: None,
        })
        .collect();
    let gens = engine.generate_batch(&mut jobs);
    drop(jobs);
    let added = meter::used();
    meter::disarm();
    gens?;
    let own: usize = caches.iter().map(|c| c.len() - prefix.len()).sum();
    let ideal = (prefix.len() + own) * per_position;
    let pages = KvCache::distinct_kv_bytes(caches.iter().chain([&base]));
    let heap = base.kv_bytes() as f64 + added.max(0) as f64;
    let copies = (prefix.len() * episodes + own) * per_position;
    Ok(json!({
        "prefix_tokens": prefix.len(),
        "prefix_prefill_tok_per_s": (prefix.len() as f64 / prefill_s * 10.0).round() / 10.0,
        "episodes": episodes,
        "own_positions": own,
        "kv_bytes_per_position": per_position,
        "ideal_bytes": ideal,
        "pages_bytes": pages,
        "pages_over_ideal": ((pages as f64 / ideal as f64) * 1000.0).round() / 1000.0,
        "heap_bytes": heap,
        "heap_over_ideal": ((heap / ideal as f64) * 1000.0).round() / 1000.0,
        "deep_copies_bytes": copies,
    }))
}

/// A blueprint-shaped JSON schema (instruction + actions with enumerated names), the kind of
/// constraint the pipeline uses.
fn blueprint_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "instruction": {"type": "string", "maxLength": 300},
            "actions": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
                "type": "object",
                "properties": {"name": {"enum": ["get_order_details", "cancel_pending_order", "modify_pending_order_address"]},
                               "arguments": {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": false}}
        },
        "required": ["instruction", "actions"], "additionalProperties": false
    })
}

/// Decode under a JSON-schema constraint and report the mask's share of a step.
fn constrained_decode(engine: &Engine, prompt: &[u32]) -> anyhow::Result<serde_json::Value> {
    let Some(eos) = engine
        .stop_tokens()
        .first()
        .copied()
        .or(engine.tokenizer().eos())
    else {
        return Ok(json!(null));
    };
    let started = std::time::Instant::now();
    let constrainer = Constrainer::new(engine.tokenizer().clone(), eos)?;
    let setup_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = std::time::Instant::now();
    let mut grammar = constrainer.json_schema(&blueprint_schema())?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let req = GenerateRequest {
        max_tokens: 96,
        ..Default::default()
    };
    let g = engine.generate(&mut KvCache::new(), prompt, &req, Some(&mut grammar))?;
    let steps = g.ids.len().max(1) as f64;
    let step_ms = g.decode_ms / steps;
    let mask_us = grammar.mean_mask_us();
    Ok(json!({
        "tokens": g.ids.len(),
        "trie_setup_ms": (setup_ms * 10.0).round() / 10.0,
        "grammar_compile_ms": (compile_ms * 100.0).round() / 100.0,
        "decode_step_ms": (step_ms * 100.0).round() / 100.0,
        "mask_us_per_token": (mask_us * 10.0).round() / 10.0,
        "mask_fraction_of_step": ((mask_us / 1e3 / step_ms) * 1e4).round() / 1e4,
    }))
}
