//! The engine: a loaded model, its tokenizer and chat template, and generation.
//!
//! An [`Engine`] is immutable and shared (`Arc`) by every conversation; each conversation owns a
//! [`KvCache`] and passes it to [`Engine::generate`], which reuses whatever prefix of the new
//! prompt the cache already holds. Nothing here assumes one request at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::llm::Tokenizer;
use crate::llm::error::{LlmError, Result};
use crate::llm::model::{self, KvCache, LoadOptions, Transformer};
use crate::llm::profile::Profile;
use crate::llm::sampler::{Sampler, SamplingParams};
use crate::llm::scheduler::{Batch, Done};

/// Prompt tokens per forward pass when prefilling (llama.cpp's default micro-batch is 512).
const PREFILL_CHUNK: usize = 128;
/// End-of-turn tokens of the chat formats we know, used when no profile says otherwise.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>"];

/// What a generation call should do.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateRequest {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Extra stop strings (the engine's own are always active unless `ignore_eos`).
    pub stop: Vec<String>,
    /// Keep going through end-of-turn tokens and stop strings (benchmarks, references).
    pub ignore_eos: bool,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            max_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Finish {
    /// An end-of-turn token was produced.
    StopToken { id: u32 },
    /// A stop string appeared; it is cut from the text.
    StopString { stop: String },
    /// `max_tokens` reached.
    Length,
    /// The constraint accepted a complete output.
    ConstraintDone,
    /// No token was allowed (all logits masked).
    NoAllowedToken,
}

/// The result of one generation call.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// Generated ids, including a final stop token if there was one.
    pub ids: Vec<u32>,
    /// Decoded text without the stop token or stop string.
    pub text: String,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the conversation's cache.
    pub cached_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

/// Per-step hook that can restrict the next token (constrained decoding plugs in here).
pub trait LogitsProcessor {
    /// Mask disallowed entries of `logits` (set them to negative infinity).
    fn process(&mut self, logits: &mut [f32]) -> Result<()>;
    /// Record the chosen token; return true when the output is complete.
    fn accept(&mut self, token: u32) -> Result<bool>;
}

impl<P: LogitsProcessor + ?Sized> LogitsProcessor for &mut P {
    fn process(&mut self, logits: &mut [f32]) -> Result<()> {
        (**self).process(logits)
    }
    fn accept(&mut self, token: u32) -> Result<bool> {
        (**self).accept(token)
    }
}

/// A loaded model ready to serve conversations.
pub struct Engine {
    model: Arc<Transformer>,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    stop_tokens: Vec<u32>,
    stop_strings: Vec<String>,
    profile: Option<Profile>,
    path: PathBuf,
    requantize_ms: u128,
}

/// Which model to load: a profile name, or a path to a GGUF file / checkpoint directory.
pub fn resolve(name_or_path: &str) -> Result<(Option<Profile>, PathBuf)> {
    let p = Path::new(name_or_path);
    if p.exists() && (p.is_dir() || name_or_path.ends_with(".gguf")) {
        return Ok((None, p.to_path_buf()));
    }
    let profile = Profile::find(name_or_path)?;
    let path = profile.model_path()?;
    Ok((Some(profile), path))
}

impl Engine {
    /// Load a profile by name or a checkpoint by path.
    pub fn load(name_or_path: &str, opts: &LoadOptions) -> Result<Self> {
        let (profile, path) = resolve(name_or_path)?;
        let loaded = model::load(&path, opts)?;
        let tok = &loaded.tokenizer;
        let mut stop_strings: Vec<String> =
            profile.as_ref().map(|p| p.stop.clone()).unwrap_or_default();
        let mut stop_tokens: Vec<u32> = tok.eos().into_iter().collect();
        // The checkpoint's own end-of-sequence text (tokenizer_config.json) is a stop token too.
        stop_tokens.extend(
            loaded
                .eos_token
                .as_deref()
                .and_then(|t| tok.token_id(t))
                .filter(|&id| tok.is_special(id)),
        );
        // Without a profile, the usual end-of-turn tokens stop generation.
        let defaults: &[&str] = if profile.is_none() { &END_OF_TURN } else { &[] };
        stop_strings.extend(defaults.iter().map(|s| s.to_string()));
        // Stop strings that are single special tokens are matched as tokens.
        stop_strings.retain(|s| match tok.token_id(s).filter(|&id| tok.is_special(id)) {
            Some(id) => {
                stop_tokens.push(id);
                false
            }
            None => !defaults.contains(&s.as_str()),
        });
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let mut chat_template = loaded.chat_template;
        if let Some(p) = &profile
            && let Some(t) = crate::llm::chat::template_override(&p.chat_template)?
        {
            chat_template = Some(t);
        }
        Ok(Engine {
            model: Arc::new(loaded.model),
            tokenizer: Arc::new(loaded.tokenizer),
            chat_template,
            bos_token: loaded.bos_token,
            eos_token: loaded.eos_token,
            stop_tokens,
            stop_strings,
            profile,
            path,
            requantize_ms: loaded.requantize_ms,
        })
    }

    pub fn model(&self) -> &Transformer {
        &self.model
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    pub fn requantize_ms(&self) -> u128 {
        self.requantize_ms
    }

    /// Run a two-token forward pass so one-time work (candle repacks K-quant weights on their
    /// first product, pages get mapped) happens now rather than in the first request.
    pub fn warm_up(&self) -> Result<()> {
        let id = self.tokenizer.bos().or(self.tokenizer.eos()).unwrap_or(0);
        self.model.forward(&[id, id], &mut KvCache::new())?;
        self.model.forward(&[id], &mut KvCache::new())?;
        Ok(())
    }

    /// Logits of the next token after `prompt`, (re)using `cache`; truncated to the
    /// tokenizer's vocabulary (checkpoints pad the output layer).
    pub fn prefill(&self, cache: &mut KvCache, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        if prompt.is_empty() {
            return Err(LlmError::InvalidRequest("empty prompt".into()));
        }
        let reuse = cache.reusable_prefix(prompt);
        cache.truncate(reuse);
        // In chunks, as llama.cpp does in micro-batches: attention scores and the mask grow
        // with chunk × context, so one pass over a long prompt allocates gigabytes and slows.
        let mut logits = None;
        for chunk in prompt[reuse..].chunks(PREFILL_CHUNK) {
            logits = Some(self.model.forward(chunk, cache)?);
        }
        let logits = logits.ok_or_else(|| LlmError::InvalidRequest("nothing to prefill".into()))?;
        Ok((self.to_vec(&logits)?, reuse))
    }

    /// Logits after feeding one more token.
    pub fn step(&self, cache: &mut KvCache, token: u32) -> Result<Vec<f32>> {
        let logits = self.model.forward(&[token], cache)?;
        self.to_vec(&logits)
    }

    fn to_vec(&self, logits: &candle_core::Tensor) -> Result<Vec<f32>> {
        let mut v = logits
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<f32>()?;
        v.truncate(self.tokenizer.vocab_size());
        Ok(v)
    }

    /// Generate after `prompt` (token ids, already templated), continuing `cache`.
    pub fn generate(
        &self,
        cache: &mut KvCache,
        prompt: &[u32],
        req: &GenerateRequest,
        processor: Option<&mut dyn LogitsProcessor>,
    ) -> Result<Generation> {
        let mut batch = Batch::new(self);
        let processor = processor.map(|p| Box::new(p) as Box<dyn LogitsProcessor + '_>);
        let mut done = batch.admit(0, std::mem::take(cache), prompt.to_vec(), req, processor);
        while done.is_none() {
            done = batch.step(usize::MAX).pop();
        }
        let done = done.expect("the batch ran until its sequence finished");
        *cache = done.cache;
        done.result
    }

    /// [`Engine::generate`] for several sequences at once: each prompt is prefilled on its
    /// own, then every decode step runs all unfinished sequences in one forward pass
    /// ([`Transformer::forward_decode`]). Each result is bit-identical to what `generate`
    /// returns for the same job alone (greedy or seeded); only the timings differ, and
    /// `decode_ms` runs from a sequence's first decode pass until it finished. Every cache
    /// is left holding its sequence, even when another sequence failed.
    pub fn generate_batch(&self, jobs: &mut [BatchJob<'_>]) -> Result<Vec<Generation>> {
        let mut finished: Vec<Done> = Vec::with_capacity(jobs.len());
        {
            let mut batch = Batch::new(self);
            for (key, job) in jobs.iter_mut().enumerate() {
                let processor = job
                    .processor
                    .take()
                    .map(|p| Box::new(p) as Box<dyn LogitsProcessor + '_>);
                let cache = std::mem::take(&mut *job.cache);
                finished.extend(batch.admit(key, cache, job.prompt.to_vec(), job.req, processor));
            }
            // Every prompt first, then decoding: the batch decodes at full size from its
            // first step (the scheduler instead interleaves prefill chunks with decode steps).
            while !batch.is_empty() {
                finished.extend(batch.step(usize::MAX));
            }
        }
        let mut results: Vec<Option<Result<Generation>>> = jobs.iter().map(|_| None).collect();
        for done in finished {
            *jobs[done.key].cache = done.cache;
            results[done.key] = Some(done.result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LlmError::InvalidRequest("sequence lost".into()))))
            .collect()
    }

    /// The next chunk of `prompt` to run after `cache.len()` positions, and whether it is
    /// the last. Chunks start where the reused prefix ends, so a prompt is cut the same way
    /// whatever else runs beside it.
    pub(crate) fn prefill_chunk<'p>(&self, prompt: &'p [u32], done: usize) -> &'p [u32] {
        &prompt[done..(done + PREFILL_CHUNK).min(prompt.len())]
    }

    /// Next-token logits from the last row of a pass, as a vector over the vocabulary.
    pub(crate) fn logits_vec(&self, logits: &candle_core::Tensor) -> Result<Vec<f32>> {
        self.to_vec(logits)
    }

    /// The model's context length.
    pub fn max_positions(&self) -> usize {
        self.model.config().max_seq_len
    }

    pub(crate) fn decoding(&self, req: &GenerateRequest) -> Decoding {
        let stops = if req.ignore_eos {
            vec![]
        } else {
            self.stop_strings
                .iter()
                .chain(&req.stop)
                .filter(|s| !s.is_empty())
                .cloned()
                .collect()
        };
        Decoding {
            sampler: Sampler::new(req.sampling),
            stops,
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            ids: Vec::new(),
            text_end: None,
            finish: None,
        }
    }

    /// Take the next position's logits: choose a token, or end. Returns the token to run next,
    /// or `None` once the sequence has finished (`d.finish` says why).
    pub(crate) fn advance<'b, 'c: 'b>(
        &self,
        d: &mut Decoding,
        logits: &mut [f32],
        processor: Option<&'b mut (dyn LogitsProcessor + 'c)>,
    ) -> Result<Option<u32>> {
        if d.ids.len() >= d.max_tokens {
            d.finish = Some(Finish::Length);
            return Ok(None);
        }
        let mut processor = processor;
        if let Some(p) = &mut processor {
            p.process(logits)?;
        }
        let Some(tok) = d.sampler.sample(logits) else {
            d.finish = Some(Finish::NoAllowedToken);
            return Ok(None);
        };
        d.ids.push(tok);
        if !d.ignore_eos && self.stop_tokens.contains(&tok) {
            d.text_end = Some(d.ids.len() - 1);
            d.finish = Some(Finish::StopToken { id: tok });
            return Ok(None);
        }
        if let Some(p) = &mut processor
            && p.accept(tok)?
        {
            d.finish = Some(Finish::ConstraintDone);
            return Ok(None);
        }
        if !d.stops.is_empty() {
            let text = self.tokenizer.decode(&d.ids, false);
            if let Some(stop) = d.stops.iter().find(|s| text.contains(s.as_str())) {
                d.finish = Some(Finish::StopString { stop: stop.clone() });
                return Ok(None);
            }
        }
        if d.ids.len() >= d.max_tokens {
            d.finish = Some(Finish::Length);
            return Ok(None);
        }
        Ok(Some(tok))
    }

    pub(crate) fn generation(
        &self,
        d: Decoding,
        prompt_tokens: usize,
        cached_tokens: usize,
        prefill_ms: f64,
        decode_ms: f64,
    ) -> Generation {
        let finish = d.finish.unwrap_or(Finish::Length);
        let shown = &d.ids[..d.text_end.unwrap_or(d.ids.len())];
        let mut text = self.tokenizer.decode(shown, false);
        if let Finish::StopString { stop } = &finish
            && let Some(pos) = text.find(stop.as_str())
        {
            text.truncate(pos);
        }
        Generation {
            ids: d.ids,
            text,
            finish,
            prompt_tokens,
            cached_tokens,
            prefill_ms,
            decode_ms,
        }
    }
}

/// One sequence of [`Engine::generate_batch`]: what [`Engine::generate`] takes.
pub struct BatchJob<'a> {
    pub cache: &'a mut KvCache,
    pub prompt: &'a [u32],
    pub req: &'a GenerateRequest,
    pub processor: Option<&'a mut dyn LogitsProcessor>,
}

/// One sequence's decoding state between forward passes.
pub(crate) struct Decoding {
    sampler: Sampler,
    stops: Vec<String>,
    max_tokens: usize,
    ignore_eos: bool,
    ids: Vec<u32>,
    text_end: Option<usize>,
    finish: Option<Finish>,
}
