//! Continuous batching: many sequences decoding in each forward pass.
//!
//! [`Batch`] is the stepping core. Each [`step`](Batch::step) runs prefill chunks of sequences
//! that are still reading their prompt (up to a token budget, oldest first), then one
//! [`forward_decode`](crate::llm::model::Transformer::forward_decode) pass over every sequence
//! that has a token to run, and hands back the sequences that finished. Sequences join and leave
//! between steps; each keeps its own sampler, constraint and stop rules.
//!
//! [`Scheduler`] puts a `Batch` on a worker thread: callers on any thread [`submit`] a job
//! (cache, prompt, settings, constraint) and wait for its reply, while the worker admits
//! waiting jobs as others finish, capped by [`Limits`] (sequences in flight, and key/value
//! positions they may add).
//!
//! Batch invariance: a sequence's tokens do not depend on what runs beside it. Its prompt is
//! cut into the same chunks as when it runs alone (from the end of its reused prefix, in chunks
//! of the engine's prefill size), every row of a batched product is computed as it would be
//! alone, and attention runs per sequence. So a reply is bit-identical at any concurrency,
//! greedy or seeded.
//!
//! [`submit`]: Scheduler::submit

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::llm::engine::{Decoding, Engine, GenerateRequest, Generation, LogitsProcessor};
use crate::llm::error::{LlmError, Result};
use crate::llm::model::KvCache;

/// A finished sequence: its key, its cache (holding prompt and reply) and what it produced.
pub(crate) struct Done {
    pub key: usize,
    pub cache: KvCache,
    pub result: Result<Generation>,
}

/// One sequence in a [`Batch`].
struct Active<'p> {
    key: usize,
    cache: KvCache,
    prompt: Vec<u32>,
    /// Prompt positions in the cache so far (the reused prefix, then each chunk).
    read: usize,
    cached: usize,
    decoding: Decoding,
    processor: Option<Box<dyn LogitsProcessor + 'p>>,
    /// The token to run in the next decode pass.
    next: Option<u32>,
    admitted: Instant,
    prefill_ms: f64,
    decode_start: Option<Instant>,
    /// Set when the sequence has ended (finished or failed).
    ended: Option<Result<()>>,
}

/// Decode passes made and the rows they ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Decode passes (forward passes of one token per sequence).
    pub passes: u64,
    /// Sequence-tokens those passes ran (the sum of their batch sizes).
    pub rows: u64,
    /// The largest batch of one pass.
    pub peak: usize,
}

/// Sequences decoding together; see the module doc.
pub(crate) struct Batch<'e, 'p> {
    engine: &'e Engine,
    seqs: Vec<Active<'p>>,
    stats: BatchStats,
}

impl<'e, 'p> Batch<'e, 'p> {
    pub fn new(engine: &'e Engine) -> Self {
        Batch {
            engine,
            seqs: Vec::new(),
            stats: BatchStats::default(),
        }
    }

    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Add a sequence. Returns it at once, failed, when the request cannot run (an empty
    /// prompt, or one longer than the model's context).
    pub fn admit(
        &mut self,
        key: usize,
        mut cache: KvCache,
        prompt: Vec<u32>,
        req: &GenerateRequest,
        processor: Option<Box<dyn LogitsProcessor + 'p>>,
    ) -> Option<Done> {
        let refuse = |cache, why: String| {
            Some(Done {
                key,
                cache,
                result: Err(LlmError::InvalidRequest(why)),
            })
        };
        if prompt.is_empty() {
            return refuse(cache, "empty prompt".into());
        }
        let max = self.engine.max_positions();
        if prompt.len() > max {
            return refuse(
                cache,
                format!(
                    "context overflow: a prompt of {} tokens > {max} positions",
                    prompt.len()
                ),
            );
        }
        let reuse = cache.reusable_prefix(&prompt);
        cache.truncate(reuse);
        self.seqs.push(Active {
            key,
            cache,
            read: reuse,
            cached: reuse,
            decoding: self.engine.decoding(req),
            processor,
            prompt,
            next: None,
            admitted: Instant::now(),
            prefill_ms: 0.0,
            decode_start: None,
            ended: None,
        });
        None
    }

    /// One round: prefill chunks up to `prefill_budget` prompt tokens (at least one chunk when
    /// any sequence is reading its prompt), then one decode pass over every sequence with a
    /// token to run. Returns the sequences that finished, in admission order.
    pub fn step(&mut self, prefill_budget: usize) -> Vec<Done> {
        let engine = self.engine;
        let mut spent = 0;
        for s in self.seqs.iter_mut() {
            while s.ended.is_none()
                && s.read < s.prompt.len()
                && (spent == 0 || spent < prefill_budget)
            {
                let chunk = engine.prefill_chunk(&s.prompt, s.read);
                spent += chunk.len();
                let last = s.read + chunk.len() == s.prompt.len();
                match engine.model().forward(chunk, &mut s.cache) {
                    Err(e) => s.ended = Some(Err(e)),
                    Ok(logits) => {
                        s.read += chunk.len();
                        if last {
                            s.prefill_ms = s.admitted.elapsed().as_secs_f64() * 1e3;
                            let advanced = engine.logits_vec(&logits).and_then(|mut l| {
                                engine.advance(&mut s.decoding, &mut l, s.processor.as_deref_mut())
                            });
                            s.settle(advanced);
                        }
                    }
                }
            }
            if spent >= prefill_budget {
                break;
            }
        }
        self.decode();
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.seqs.len() {
            if self.seqs[i].ended.is_some() {
                let s = self.seqs.remove(i);
                done.push(s.finish(engine));
            } else {
                i += 1;
            }
        }
        done
    }

    /// One decode pass over the sequences that have a token to run.
    fn decode(&mut self) {
        let engine = self.engine;
        let max = engine.max_positions();
        for s in self.seqs.iter_mut().filter(|s| s.next.is_some()) {
            if s.cache.len() + 1 > max {
                s.next = None;
                s.ended = Some(Err(LlmError::InvalidRequest(format!(
                    "context overflow: {} cached + 1 new token > {max} positions",
                    s.cache.len()
                ))));
            }
        }
        let mut running: Vec<&mut Active<'p>> =
            self.seqs.iter_mut().filter(|s| s.next.is_some()).collect();
        if running.is_empty() {
            return;
        }
        self.stats.passes += 1;
        self.stats.rows += running.len() as u64;
        self.stats.peak = self.stats.peak.max(running.len());
        let now = Instant::now();
        let tokens: Vec<u32> = running.iter().filter_map(|s| s.next).collect();
        let rows = {
            let mut caches: Vec<&mut KvCache> = running.iter_mut().map(|s| &mut s.cache).collect();
            engine
                .model()
                .forward_decode(&tokens, &mut caches)
                .and_then(|l| {
                    l.to_device(&candle_core::Device::Cpu)?
                        .to_vec2::<f32>()
                        .map_err(Into::into)
                })
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let why = e.to_string();
                for s in running {
                    s.next = None;
                    s.ended = Some(Err(LlmError::InvalidRequest(format!(
                        "decode pass failed: {why}"
                    ))));
                }
                return;
            }
        };
        let vocab = engine.tokenizer().vocab_size();
        for (s, mut logits) in running.into_iter().zip(rows) {
            s.decode_start.get_or_insert(now);
            logits.truncate(vocab);
            let advanced = engine.advance(&mut s.decoding, &mut logits, s.processor.as_deref_mut());
            s.settle(advanced);
        }
    }
}

impl Active<'_> {
    /// Take the outcome of choosing a token: run it next, or end.
    fn settle(&mut self, advanced: Result<Option<u32>>) {
        match advanced {
            Ok(Some(tok)) => self.next = Some(tok),
            Ok(None) => {
                self.next = None;
                self.ended = Some(Ok(()));
            }
            Err(e) => {
                self.next = None;
                self.ended = Some(Err(e));
            }
        }
    }

    fn finish(self, engine: &Engine) -> Done {
        let decode_ms = self
            .decode_start
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        let result = match self.ended {
            Some(Err(e)) => Err(e),
            _ => Ok(engine.generation(
                self.decoding,
                self.prompt.len(),
                self.cached,
                self.prefill_ms,
                decode_ms,
            )),
        };
        Done {
            key: self.key,
            cache: self.cache,
            result,
        }
    }
}

/// How much the [`Scheduler`] runs at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences decoding together (the batch size of a decode pass).
    pub max_sequences: usize,
    /// Key/value positions the sequences in flight may add between them: each counts its
    /// prompt tokens past the prefix its cache already holds, plus `max_tokens`. A shared
    /// prefix is held by reference, so it is not counted again. A job larger than this alone
    /// still runs, by itself.
    pub max_new_positions: usize,
    /// Prompt tokens prefilled between two decode passes, so that a long prompt joining the
    /// batch delays the others' next token by about one chunk, not by the whole prompt.
    pub prefill_budget: usize,
}

impl Default for Limits {
    /// 16 sequences: on a 2-core CPU aggregate decode speed stops growing between 8 and 16
    /// (`docs/inference.md`), and a GPU wants more; 131,072 new positions is 3.5 GiB of f16
    /// keys and values for a 1.5B Qwen (28 KiB per position); 128 prompt tokens per round.
    fn default() -> Self {
        Limits {
            max_sequences: 16,
            max_new_positions: 128 * 1024,
            prefill_budget: 128,
        }
    }
}

/// A generation job for the [`Scheduler`]: what [`Engine::generate`] takes, owned.
pub struct Job {
    pub cache: KvCache,
    pub prompt: Vec<u32>,
    pub req: GenerateRequest,
    pub processor: Option<Box<dyn LogitsProcessor + Send>>,
}

/// What a job gives back: its cache (holding prompt and reply, or as it was on failure) and
/// the generation.
pub type Outcome = (KvCache, Result<Generation>);

struct Waiting {
    job: Job,
    reply: mpsc::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<BatchStats>,
}

/// Continuous batching on a worker thread; see the module doc.
pub struct Scheduler {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Start the worker for `engine`.
    pub fn new(engine: Arc<Engine>, limits: Limits) -> Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Mutex::new(BatchStats::default()),
        });
        let inner = shared.clone();
        let worker = std::thread::Builder::new()
            .name("apigen-mt-scheduler".into())
            .spawn(move || work(&engine, &inner, limits))
            .map_err(|e| LlmError::InvalidRequest(format!("cannot start the scheduler: {e}")))?;
        Ok(Scheduler {
            shared,
            worker: Some(worker),
        })
    }

    /// Queue a job; the receiver gets its outcome when it finishes.
    pub fn submit(&self, job: Job) -> mpsc::Receiver<Outcome> {
        let (tx, rx) = mpsc::channel();
        let mut q = lock(&self.shared.queue);
        q.waiting.push_back(Waiting { job, reply: tx });
        drop(q);
        self.shared.wake.notify_one();
        rx
    }

    /// Decode passes so far, over every job this scheduler served.
    pub fn stats(&self) -> BatchStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submit a job and wait for it.
    pub fn generate(&self, job: Job) -> Result<Outcome> {
        self.submit(job)
            .recv()
            .map_err(|_| LlmError::InvalidRequest("the scheduler stopped before replying".into()))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // A panic while holding the lock leaves the queue itself consistent (pushes and pops).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Positions a job may add to the cache (see [`Limits::max_new_positions`]).
fn new_positions(job: &Job) -> usize {
    job.prompt.len() - job.cache.reusable_prefix(&job.prompt).min(job.prompt.len())
        + job.req.max_tokens
}

/// The worker loop: admit, step, reply, until shut down with nothing left.
fn work(engine: &Engine, shared: &Shared, limits: Limits) {
    let mut batch = Batch::new(engine);
    let mut replies: Vec<Option<(mpsc::Sender<Outcome>, usize)>> = Vec::new();
    let mut in_flight = 0usize;
    loop {
        {
            let mut q = lock(&shared.queue);
            while q.waiting.is_empty() && batch.is_empty() && !q.shutdown {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.shutdown && q.waiting.is_empty() && batch.is_empty() {
                return;
            }
            while let Some(w) = q.waiting.front() {
                let need = new_positions(&w.job);
                let fits = batch.len() < limits.max_sequences.max(1)
                    && (batch.is_empty() || in_flight + need <= limits.max_new_positions);
                if !fits {
                    break;
                }
                let Waiting { job, reply } = q.waiting.pop_front().expect("front exists");
                let key = replies.iter().position(Option::is_none).unwrap_or_else(|| {
                    replies.push(None);
                    replies.len() - 1
                });
                replies[key] = Some((reply, need));
                in_flight += need;
                let processor = job.processor.map(|p| p as Box<dyn LogitsProcessor>);
                if let Some(done) = batch.admit(key, job.cache, job.prompt, &job.req, processor) {
                    answer(&mut replies, &mut in_flight, done);
                }
            }
        }
        let stepped = catch_unwind(AssertUnwindSafe(|| batch.step(limits.prefill_budget)));
        // The batch's counts carry across a panic (below), so they are the scheduler's.
        *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = batch.stats();
        match stepped {
            Ok(finished) => {
                for done in finished {
                    answer(&mut replies, &mut in_flight, done);
                }
            }
            Err(_) => {
                // A bug in a forward pass or a constraint: fail what was running (their
                // callers get an error, not a hang) and go on serving.
                let carried = batch.stats;
                batch = Batch::new(engine);
                batch.stats = carried;
                for r in replies.iter_mut() {
                    if let Some((tx, _)) = r.take() {
                        let _ = tx.send((
                            KvCache::new(),
                            Err(LlmError::InvalidRequest(
                                "generation failed inside the engine (a panic)".into(),
                            )),
                        ));
                    }
                }
                in_flight = 0;
            }
        }
    }
}

fn answer(
    replies: &mut [Option<(mpsc::Sender<Outcome>, usize)>],
    in_flight: &mut usize,
    done: Done,
) {
    if let Some((tx, need)) = replies.get_mut(done.key).and_then(Option::take) {
        *in_flight -= need;
        // The caller may have stopped waiting; nothing to do then.
        let _ = tx.send((done.cache, done.result));
    }
}
