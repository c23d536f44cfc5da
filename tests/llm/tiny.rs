//! Tiny random-weight llama / qwen2 / qwen3 checkpoints (safetensors + tokenizer.json +
//! tokenizer_config.json), written by the tests themselves, for load / forward / KV cache /
//! stop / constrained-decoding plumbing without real weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apigen_mt::llm::local::LocalBackend;
use apigen_mt::llm::model::{self, KvCache, LoadOptions};
use apigen_mt::llm::{
    Backend, ChatRequest, Constraint, Conversation, Engine, Finish, GenerateRequest, Message,
};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

const HIDDEN: usize = 64;
const FFN: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;

/// GPT-2's byte-to-character map (printable bytes as themselves, the rest shifted past 255).
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

const MERGES: [(&str, &str); 4] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")];
const SPECIALS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];

fn tokenizer_json() -> (Value, usize) {
    let mut vocab = serde_json::Map::new();
    let chars = byte_chars();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    for (a, b) in MERGES {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": vocab.len() + i, "content": s, "special": true}))
        .collect();
    let size = vocab.len() + SPECIALS.len();
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let tok = json!({
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}
    });
    (tok, size)
}

/// Deterministic pseudo-random values in [-scale, scale].
fn values(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Write a checkpoint of `arch` into a fresh directory and return it.
fn write_checkpoint(arch: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "apigen-mt-tiny-{arch}-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (tok, vocab) = tokenizer_json();
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": template, "eos_token": "<|im_end|>"}).to_string(),
    )
    .unwrap();
    let tied = arch != "llama";
    let mut config = json!({
        "model_type": arch, "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": tied
    });
    if arch == "qwen3" {
        config["head_dim"] = json!(HEAD_DIM);
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    let dev = Device::Cpu;
    let mut seed = 42u64;
    let mut ts: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, seed: &mut u64| {
        let n = shape.iter().product();
        ts.insert(
            name,
            Tensor::from_vec(values(n, seed, scale), shape, &dev).unwrap(),
        );
    };
    put(
        "model.embed_tokens.weight".into(),
        &[vocab, HIDDEN],
        1.0,
        &mut seed,
    );
    if !tied {
        put("lm_head.weight".into(), &[vocab, HIDDEN], 0.2, &mut seed);
    }
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut norms = vec![("model.norm.weight".to_string(), ones(HIDDEN))];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[HEADS * HEAD_DIM, HIDDEN],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[HIDDEN, HEADS * HEAD_DIM],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[FFN, HIDDEN],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            &[FFN, HIDDEN],
            0.3,
            &mut seed,
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[HIDDEN, FFN],
            0.3,
            &mut seed,
        );
        if arch == "qwen2" {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                &[HEADS * HEAD_DIM],
                0.1,
                &mut seed,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                &[KV_HEADS * HEAD_DIM],
                0.1,
                &mut seed,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                &[KV_HEADS * HEAD_DIM],
                0.1,
                &mut seed,
            );
        }
        if arch == "qwen3" {
            norms.push((format!("{p}.self_attn.q_norm.weight"), ones(HEAD_DIM)));
            norms.push((format!("{p}.self_attn.k_norm.weight"), ones(HEAD_DIM)));
        }
        norms.push((format!("{p}.input_layernorm.weight"), ones(HIDDEN)));
        norms.push((format!("{p}.post_attention_layernorm.weight"), ones(HIDDEN)));
    }
    ts.extend(norms);
    candle_core::safetensors::save(&ts, dir.join("model.safetensors")).unwrap();
    dir
}

const ARCHS: [&str; 3] = ["llama", "qwen2", "qwen3"];

fn exact() -> LoadOptions {
    LoadOptions {
        quantize_dense: false,
        f16_attention: false,
        ..Default::default()
    }
}

fn engine(dir: &Path, opts: &LoadOptions) -> Engine {
    Engine::load(dir.to_str().unwrap(), opts).unwrap()
}

#[test]
fn incremental_decoding_matches_a_full_forward() {
    for arch in ARCHS {
        let dir = write_checkpoint(arch, "forward");
        let loaded = model::load(&dir, &exact()).unwrap();
        assert_eq!(loaded.model.config().architecture.name(), arch);
        let ids = loaded
            .tokenizer
            .encode("<|im_start|>user\nthe thin hen<|im_end|>", true)
            .unwrap();
        assert!(ids.len() > 8);
        let full = loaded.model.forward_all(&ids, &mut KvCache::new()).unwrap();
        let (t, vocab) = full.dims2().unwrap();
        assert_eq!((t, vocab), (ids.len(), loaded.tokenizer.vocab_size()));
        // Prefill half, then one token at a time: every position's logits agree.
        let mut cache = KvCache::new();
        let half = ids.len() / 2;
        let mut rows = vec![loaded.model.forward(&ids[..half], &mut cache).unwrap()];
        for &id in &ids[half..] {
            rows.push(loaded.model.forward(&[id], &mut cache).unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        assert_eq!(cache.tokens(), ids.as_slice());
        for (i, row) in rows.iter().enumerate() {
            let pos = half - 1 + i;
            let want = full.get(pos).unwrap();
            let diff = (row - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Keys and values are cached as f16: a key computed by a product over more rows
            // (summed in another order) can round to the neighbouring f16 value.
            assert!(diff < 5e-3, "{arch}: position {pos} differs by {diff}");
        }
        let any_bad = full
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .any(|v| !v.is_finite());
        assert!(!any_bad, "{arch}: non-finite logits");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn quantized_load_stays_close_to_exact() {
    let dir = write_checkpoint("qwen2", "quant");
    let a = model::load(&dir, &exact()).unwrap();
    let b = model::load(&dir, &LoadOptions::default()).unwrap();
    let ids = a.tokenizer.encode("the hen in the thin", false).unwrap();
    let la = a.model.forward(&ids, &mut KvCache::new()).unwrap();
    let lb = b.model.forward(&ids, &mut KvCache::new()).unwrap();
    let scale = la
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = (la - lb)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 0.1 * scale,
        "Q8_0 logits off by {diff} (scale {scale})"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stop_strings_cut_text_and_turns_reuse_the_cache() {
    let dir = write_checkpoint("llama", "stop");
    let e = engine(&dir, &exact());
    let prompt = e
        .tokenizer()
        .encode(
            "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
            true,
        )
        .unwrap();
    let free = e
        .generate(
            &mut KvCache::new(),
            &prompt,
            &GenerateRequest {
                max_tokens: 24,
                ignore_eos: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(free.ids.len(), 24);
    assert_eq!(free.finish, Finish::Length);
    // Stop on a piece of what greedy decoding produced: the text ends right before it.
    let chars: Vec<char> = free.text.chars().collect();
    let cut = chars.len() / 2;
    let stop: String = chars[cut..cut + 2].iter().collect();
    let first = free.text.find(&stop).unwrap();
    let req = GenerateRequest {
        max_tokens: 24,
        stop: vec![stop.clone()],
        ..Default::default()
    };
    let stopped = e
        .generate(&mut KvCache::new(), &prompt, &req, None)
        .unwrap();
    assert_eq!(stopped.finish, Finish::StopString { stop });
    assert_eq!(stopped.text, free.text[..first]);
    // The same cache serves a longer prompt by running only the new tokens.
    let mut cache = KvCache::new();
    e.generate(
        &mut cache,
        &prompt,
        &GenerateRequest {
            max_tokens: 4,
            ignore_eos: true,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut longer = cache.tokens().to_vec();
    longer.extend(e.tokenizer().encode("<|im_end|>\n", true).unwrap());
    let again = e
        .generate(
            &mut cache,
            &longer,
            &GenerateRequest {
                max_tokens: 4,
                ignore_eos: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(again.cached_tokens, longer.len() - 2);
    let fresh = e
        .generate(
            &mut KvCache::new(),
            &longer,
            &GenerateRequest {
                max_tokens: 4,
                ignore_eos: true,
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(again.ids, fresh.ids);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn constraints_force_valid_json_from_random_weights() {
    let dir = write_checkpoint("qwen3", "constrain");
    let backend = LocalBackend::new(Arc::new(engine(&dir, &LoadOptions::default()))).unwrap();
    let schema = json!({"type": "object", "properties": {"kind": {"enum": ["the", "hen"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["kind", "n"], "additionalProperties": false});
    for seed in 0..3 {
        let mut req = ChatRequest::new(vec![Message::user("json please")]);
        req.constraint = Some(Constraint::JsonSchema(schema.clone()));
        req.sampling = apigen_mt::llm::SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed,
        };
        req.max_tokens = 64;
        let reply = backend.reply(&mut Conversation::new(), &req).unwrap();
        let v: Value = serde_json::from_str(&reply.raw)
            .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", reply.raw, reply.finish));
        assert!(["the", "hen"].contains(&v["kind"].as_str().unwrap()), "{v}");
        assert!(v["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)), "{v}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broken_checkpoints_are_errors() {
    let dir = write_checkpoint("qwen2", "broken");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    assert!(model::load(&dir, &exact()).is_err());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), json!({"model_type": "qwen2", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4}).to_string()).unwrap();
    assert!(model::load(&dir, &exact()).is_err());
    std::fs::remove_dir_all(&dir).ok();
    assert!(model::load(Path::new("/nonexistent/model.gguf"), &exact()).is_err());
}

#[test]
fn one_engine_serves_conversations_from_many_threads() {
    let dir = write_checkpoint("qwen2", "threads");
    let backend = Arc::new(LocalBackend::new(Arc::new(engine(&dir, &exact()))).unwrap());
    let request = |i: usize| {
        let mut req = ChatRequest::new(vec![Message::user(format!("the hen {i}"))]);
        req.max_tokens = 12;
        req
    };
    let sequential: Vec<String> = (0..4)
        .map(|i| {
            backend
                .reply(&mut Conversation::new(), &request(i))
                .unwrap()
                .raw
        })
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let b = backend.clone();
            let req = request(i);
            std::thread::spawn(move || {
                let mut conv = Conversation::new();
                let first = b.reply(&mut conv, &req).unwrap().raw;
                // A second turn on the same conversation, interleaved with the other threads.
                let mut next = req.clone();
                next.messages.push(Message::assistant(first.clone()));
                next.messages.push(Message::user("in"));
                let second = b.reply(&mut conv, &next).unwrap();
                assert!(second.usage.cached_tokens > 0);
                first
            })
        })
        .collect();
    let parallel: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(parallel, sequential);
    std::fs::remove_dir_all(&dir).ok();
}

/// Largest absolute difference between two tensors of one shape.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn device_attention_matches_the_host_kernel() {
    // The path a GPU takes (keys and values in a device pool, attention as tensor operations),
    // run on the CPU, against the host kernel: prefill, a prefix shared by cloned caches
    // (copy-on-write of the shared page), conversations of different lengths decoded in one
    // batch, and a truncated cache taken up again.
    for arch in ARCHS {
        for f16_attention in [false, true] {
            let dir = write_checkpoint(arch, "pool");
            let opts = LoadOptions {
                f16_attention,
                ..exact()
            };
            let host = model::load(&dir, &opts).unwrap();
            let dev = model::load(
                &dir,
                &LoadOptions {
                    tensor_attention: true,
                    ..opts
                },
            )
            .unwrap();
            let what = format!("{arch}, f16 attention {f16_attention}");
            let ids = host
                .tokenizer
                .encode(
                    "<|im_start|>user\nthe thin hen in the thin hen sat on the thin hen<|im_end|>",
                    true,
                )
                .unwrap();
            assert!(ids.len() > model::PAGE, "the prompt spans pages");
            let (mut hc, mut dc) = (KvCache::new(), KvCache::new());
            let a = host.model.forward_all(&ids, &mut hc).unwrap();
            let b = dev.model.forward_all(&ids, &mut dc).unwrap();
            let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let tol = 1e-3 * scale.to_scalar::<f32>().unwrap().max(1.0);
            assert!(max_diff(&a, &b) < tol, "{what}: prefill differs");
            // The device pool holds the keys and values (f32 rows of f16 values: twice the
            // host pages' bytes).
            assert_eq!(
                dc.kv_bytes(),
                2 * hc.kv_bytes(),
                "{what}: not in the device pool"
            );
            let vocab = host.tokenizer.vocab_size() as u32;
            let mut hs = [hc.clone(), hc.clone(), hc];
            let mut ds = [dc.clone(), dc.clone(), dc];
            // The second conversation runs two tokens alone first: the batch then mixes lengths.
            let a = host.model.forward(&[5, 6], &mut hs[1]).unwrap();
            let b = dev.model.forward(&[5, 6], &mut ds[1]).unwrap();
            assert!(
                max_diff(&a, &b) < tol,
                "{what}: a shared prefix's extension differs"
            );
            for step in 0..2 * model::PAGE as u32 {
                let tokens: Vec<u32> = (0..3).map(|i| (step * 7 + i * 11 + 3) % vocab).collect();
                let a = host
                    .model
                    .forward_decode(&tokens, &mut hs.iter_mut().collect::<Vec<_>>())
                    .unwrap();
                let b = dev
                    .model
                    .forward_decode(&tokens, &mut ds.iter_mut().collect::<Vec<_>>())
                    .unwrap();
                assert_eq!(a.dims(), b.dims());
                let d = max_diff(&a, &b);
                assert!(d < tol, "{what}: decode step {step} differs by {d}");
            }
            for (h, d) in hs.iter().zip(&ds) {
                assert_eq!(h.tokens(), d.tokens());
            }
            // The clones hold the prefix's full pages once.
            let each: usize = ds.iter().map(|c| c.kv_bytes()).sum();
            assert!(
                KvCache::distinct_kv_bytes(&ds) < each,
                "{what}: no page shared"
            );
            // A truncated cache is taken up where it was cut.
            let cut = ids.len() + 3;
            hs[0].truncate(cut);
            ds[0].truncate(cut);
            let a = host.model.forward(&[9, 10, 11], &mut hs[0]).unwrap();
            let b = dev.model.forward(&[9, 10, 11], &mut ds[0]).unwrap();
            assert!(max_diff(&a, &b) < tol, "{what}: after truncation");
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}

#[test]
fn dense_bf16_and_f16_weights_stay_close_to_exact() {
    // What a GPU loads by default (`--dtype auto`): dense bf16 weights, products in bf16.
    for arch in ARCHS {
        let dir = write_checkpoint(arch, "dtype");
        let reference = model::load(&dir, &exact()).unwrap();
        let ids = reference
            .tokenizer
            .encode("the hen in the thin", false)
            .unwrap();
        let want = reference.model.forward(&ids, &mut KvCache::new()).unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        for (dt, rel) in [
            (candle_core::DType::BF16, 0.05),
            (candle_core::DType::F16, 0.01),
            (candle_core::DType::F32, 1e-4),
        ] {
            for tensor_attention in [false, true] {
                let opts = LoadOptions {
                    dense_dtype: Some(dt),
                    tensor_attention,
                    ..exact()
                };
                let got = model::load(&dir, &opts).unwrap();
                let mut cache = KvCache::new();
                let logits = got.model.forward(&ids, &mut cache).unwrap();
                let d = max_diff(&want, &logits);
                assert!(
                    d < rel * scale.max(1.0),
                    "{arch} {dt:?} (tensor attention {tensor_attention}): off by {d} (scale {scale})"
                );
                // Decoding on from the cache works in that dtype too.
                let next = got.model.forward(&[7], &mut cache).unwrap();
                assert_eq!(next.dims(), want.dims());
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
