//! The decoder shared by every supported architecture: pre-norm attention with grouped KV heads
//! and RoPE, then a SwiGLU MLP. [`Architecture`](super::Architecture) selects the differences
//! (QKV biases for Qwen2, per-head Q/K norms for Qwen3, interleaved RoPE for llama GGUF files).
//!
//! Weights are immutable and shared; all per-conversation state lives in a [`KvCache`], so one
//! loaded model serves any number of conversations.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::Config;
use super::attention::{self, Heads, Queries};
use super::blocks::BlockLinear;
use super::cache::{Geometry, KvCache};
use super::kquants::KLinear;
use super::pool::{self, HeadShape, KvPool, PassRows, SeqRows, f16_round};
use crate::llm::error::{LlmError, Result};

/// A linear layer without bias: stored GGML blocks or K-quant super-blocks run by our own
/// kernels, anything candle multiplies (other formats, other CPUs, GPUs), or a dense matrix in
/// its own dtype (bf16 or f16 on a GPU's tensor cores; the input is converted to it and the
/// result back to f32).
pub(crate) enum Linear {
    Blocks(Arc<BlockLinear>),
    KQuant(Arc<KLinear>),
    Candle(QMatMul),
    Dense(Tensor),
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Blocks(b) => b.forward(x),
            Linear::KQuant(b) => b.forward(x),
            Linear::Candle(q) => Ok(q.forward(x)?),
            Linear::Dense(w) => dense_product(x, w),
        }
    }

    /// `forward` for rows that belong to different sequences, each row's result exactly what it
    /// would be alone. Our kernels compute every row the same way whatever the others are, so
    /// they take all the rows at once. So does candle's Q4_K product on x86 (it runs its
    /// repacked tiles for any number of rows; below 32 rows, where no AMX path is taken). Its
    /// other products take a different kernel for one row than for several (Q6_K's results
    /// differ in the last bits), so there each row runs on its own: exact, but without the
    /// batching gain. `llm::batch` pins this. On a GPU every product takes all the rows at once:
    /// a row by row product would waste the device, and its libraries promise no batch
    /// invariance anyway (`scripts/gpu-check.sh` measures it).
    pub(crate) fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Blocks(b) => b.forward(x),
            Linear::KQuant(b) => b.forward_rows(x),
            Linear::Dense(w) if !x.device().is_cpu() => dense_product(x, w),
            Linear::Dense(w) => {
                let rows = x.dim(0)?;
                let outs = (0..rows)
                    .map(|r| dense_product(&x.narrow(0, r, 1)?, w))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outs, 0)?)
            }
            Linear::Candle(q) => {
                let rows = x.dim(0)?;
                if rows == 1 || !x.device().is_cpu() || (rows < 32 && q4k_rows_are_independent(q)) {
                    return Ok(q.forward(x)?);
                }
                let outs = (0..rows)
                    .map(|r| q.forward(&x.narrow(0, r, 1)?))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::cat(&outs, 0)?)
            }
        }
    }
}

/// `x @ w^T` for `x` `(n, k)` (f32) and `w` `(out, k)` in its own dtype; f32 out.
fn dense_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.to_dtype(w.dtype())?.matmul(&w.t()?)?;
    Ok(y.to_dtype(DType::F32)?)
}

/// How a layer's matrix products run: [`Linear::forward`] for one sequence's rows,
/// [`Linear::forward_rows`] for rows of different sequences.
type Product = fn(&Linear, &Tensor) -> Result<Tensor>;

/// Whether candle's product for `q` computes each row the same way whatever the other rows are
/// (checked for Q4_K on x86, where one and several rows take the same repacked kernel).
fn q4k_rows_are_independent(q: &QMatMul) -> bool {
    cfg!(target_arch = "x86_64")
        && matches!(q, QMatMul::QTensor(t) if t.dtype() == candle_core::quantized::GgmlDType::Q4K)
}

/// Token embedding table.
pub(crate) enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
        })
    }
}

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub bq: Option<Tensor>,
    pub bk: Option<Tensor>,
    pub bv: Option<Tensor>,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// Loaded weights of a decoder-only transformer.
pub struct Transformer {
    pub(crate) cfg: Config,
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) device: Device,
    /// Keys and values on the device, attention as tensor operations (`model::pool`): always
    /// off the CPU; on it when [`LoadOptions::tensor_attention`](super::LoadOptions) asks.
    pub(crate) pool: Option<Arc<KvPool>>,
}

/// The device pool a model loaded with `opts` attends over, if any.
pub(crate) fn pool_for(cfg: &Config, opts: &super::LoadOptions) -> Option<Arc<KvPool>> {
    (!opts.device.is_cpu() || opts.tensor_attention).then(|| {
        Arc::new(KvPool::new(
            &opts.device,
            cfg.n_layer,
            cfg.n_kv_head,
            cfg.head_dim,
        ))
    })
}

/// RoPE tables `(max_len, head_dim / 2)` for the given per-pair inverse frequencies.
pub(crate) fn rope_tables(
    inv_freq: &[f32],
    max_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(max_len * half);
    let mut sin = Vec::with_capacity(max_len * half);
    for p in 0..max_len {
        for &f in inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (max_len, half), device)?,
        Tensor::from_vec(sin, (max_len, half), device)?,
    ))
}

fn add_bias(x: Tensor, b: &Option<Tensor>) -> Result<Tensor> {
    Ok(match b {
        Some(b) => x.broadcast_add(b)?,
        None => x,
    })
}

impl Transformer {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Run `tokens` after what `cache` holds; returns the logits of the last position
    /// (`(vocab,)`, f32). The cache then holds `tokens` too.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden(tokens, cache)?;
        let t = tokens.len();
        let last = h.narrow(0, t - 1, 1)?.contiguous()?;
        self.logits(&last, Linear::forward)?
            .squeeze(0)
            .map_err(Into::into)
    }

    /// Like [`forward`](Self::forward) but returns every position's logits (`(t, vocab)`).
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let h = self.hidden(tokens, cache)?;
        self.logits(&h, Linear::forward)
    }

    fn logits(&self, h: &Tensor, product: Product) -> Result<Tensor> {
        let h = candle_nn::ops::rms_norm(h, &self.norm, self.cfg.rms_eps)?;
        product(&self.lm_head, &h)?
            .to_dtype(DType::F32)
            .map_err(Into::into)
    }

    /// The SwiGLU MLP of `layer` on its normalized input `h`.
    fn mlp(&self, layer: &Layer, h: &Tensor, product: Product) -> Result<Tensor> {
        let g = product(&layer.gate, h)?;
        let u = product(&layer.up, h)?;
        product(&layer.down, &(candle_nn::ops::silu(&g)? * u)?)
    }

    /// Final hidden states `(t, hidden)` before the output norm.
    fn hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(LlmError::InvalidRequest("forward on zero tokens".into()));
        }
        self.run(tokens, &mut [cache], &[tokens.len()], Linear::forward)
    }

    /// One decode step for several sequences at once: `tokens[i]` follows what `caches[i]`
    /// holds. Every matrix product runs once over all the rows, which is where a decode step
    /// spends its time; attention runs per sequence, each against its own cache. Returns the
    /// next-token logits, `(n, vocab)`, row `i` bit-identical to `forward(&[tokens[i]],
    /// caches[i])`: each row of a product is computed the same way whatever the other rows are.
    pub fn forward_decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let n = tokens.len();
        if n == 0 || n != caches.len() {
            return Err(LlmError::InvalidRequest(format!(
                "a batched decode needs one token per cache ({n} tokens, {} caches)",
                caches.len()
            )));
        }
        let x = self.run(tokens, caches, &vec![1; n], Linear::forward_rows)?;
        self.logits(&x, Linear::forward_rows)
    }

    /// Run `rows[s]` new tokens of sequence `s` after what `caches[s]` holds, the tokens of all
    /// sequences one after another in `tokens`; returns the final hidden states `(n, hidden)`.
    /// The caches then hold their tokens too.
    fn run(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        rows: &[usize],
        product: Product,
    ) -> Result<Tensor> {
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(LlmError::InvalidRequest(format!(
                "token id {bad} outside the vocabulary"
            )));
        }
        for (cache, &t) in caches.iter().zip(rows) {
            if cache.len() + t > self.cfg.max_seq_len {
                return Err(LlmError::InvalidRequest(format!(
                    "context overflow: {} cached + {t} new tokens > {} positions",
                    cache.len(),
                    self.cfg.max_seq_len
                )));
            }
        }
        let geometry = Geometry {
            layers: self.cfg.n_layer,
            kv_heads: self.cfg.n_kv_head,
            head_dim: self.cfg.head_dim,
        };
        let mut spans = Vec::with_capacity(caches.len());
        let mut positions = Vec::with_capacity(tokens.len());
        let mut row0 = 0;
        for (cache, &t) in caches.iter_mut().zip(rows) {
            match &self.pool {
                Some(pool) => cache.reserve_in(t, geometry, pool)?,
                None => cache.reserve(t, geometry),
            }
            let pos0 = cache.len();
            spans.push(Span { row0, pos0, t });
            positions.extend((pos0..pos0 + t).map(|p| p as u32));
            row0 += t;
        }
        let at = Tensor::new(positions.as_slice(), &self.device)?;
        let (cos, sin) = (
            self.cos.index_select(&at, 0)?,
            self.sin.index_select(&at, 0)?,
        );
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        let device_pass = match &self.pool {
            Some(pool) => Some((pool.read(), self.pass_rows(caches, &spans)?)),
            None => None,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps)?;
            let a = match &device_pass {
                Some((tensors, groups)) => {
                    self.device_attention(layer, &tensors[i], groups, &h, (&cos, &sin), product)?
                }
                None => self.attention(layer, i, &h, (&cos, &sin), caches, &spans, product)?,
            };
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps)?;
            x = (x + self.mlp(layer, &h, product)?)?;
        }
        drop(device_pass);
        let mut start = 0;
        for (cache, span) in caches.iter_mut().zip(&spans) {
            cache.commit(span.t);
            cache.record(&tokens[start..start + span.t]);
            start += span.t;
        }
        Ok(x)
    }

    /// Self-attention of one layer over the rows of every sequence, output projection included.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        caches: &mut [&mut KvCache],
        spans: &[Span],
        product: Product,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, _) = x.dims2()?;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let (q, k, v) = self.rotated(layer, x, (cos, sin), product)?;
        let host = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        // q: (heads, n, hd); k: (kv heads, n, hd); v: (n, kv heads * hd).
        let (q, k, v) = (host(q)?, host(k)?, host(v)?);
        let mut krow = vec![0f32; nkv * hd];
        for (cache, span) in caches.iter_mut().zip(spans) {
            for i in 0..span.t {
                let r = span.row0 + i;
                for h in 0..nkv {
                    krow[h * hd..(h + 1) * hd].copy_from_slice(&k[(h * n + r) * hd..][..hd]);
                }
                cache.write(
                    index,
                    span.pos0 + i,
                    &krow,
                    &v[r * nkv * hd..(r + 1) * nkv * hd],
                );
            }
        }
        let heads = Heads {
            n_head: nh,
            n_kv: nkv,
            head_dim: hd,
            scale: (1.0 / (hd as f64).sqrt()) as f32,
            f16_weights: cfg.f16_attention,
        };
        let queries = Queries { q: &q, rows: n };
        let tasks: Vec<(usize, usize)> = (0..spans.len())
            .flat_map(|s| (0..nkv).map(move |g| (s, g)))
            .collect();
        let caches: &[&mut KvCache] = caches;
        let run = |&(s, g): &(usize, usize)| {
            let span = &spans[s];
            attention::attend_group(
                &heads, caches[s], index, g, span.pos0, span.t, queries, span.row0,
            )
        };
        let threads = crate::llm::device::matmul_threads();
        let parts: Vec<Vec<f32>> = if threads > 1 && tasks.len() > 1 {
            let slots: Vec<std::sync::Mutex<Vec<f32>>> =
                tasks.iter().map(|_| Default::default()).collect();
            super::team::Team::get(threads).run(tasks.len(), |i| {
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = run(&tasks[i]);
            });
            slots
                .into_iter()
                .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
                .collect()
        } else {
            tasks.iter().map(run).collect()
        };
        let n_rep = nh / nkv;
        let width = n_rep * hd;
        let mut out = vec![0f32; n * nh * hd];
        for (&(s, g), part) in tasks.iter().zip(&parts) {
            let span = &spans[s];
            for i in 0..span.t {
                let r = span.row0 + i;
                out[r * nh * hd + g * width..][..width]
                    .copy_from_slice(&part[i * width..(i + 1) * width]);
            }
        }
        let out = Tensor::from_vec(out, (n, nh * hd), &self.device)?;
        product(&layer.wo, &out)
    }

    /// The device pool rows of a pass: one group when every sequence runs as many new tokens
    /// (one sequence's prompt, or one token of each in a decode step), else one per sequence.
    fn pass_rows(&self, caches: &[&mut KvCache], spans: &[Span]) -> Result<Vec<(usize, PassRows)>> {
        let width = self.cfg.n_kv_head * self.cfg.head_dim;
        let seq = |c: &KvCache, s: &Span| SeqRows {
            rows: c.dev_rows(s.pos0 + s.t),
            pos0: s.pos0,
        };
        let uniform = spans.windows(2).all(|w| w[0].t == w[1].t);
        if uniform {
            let seqs: Vec<SeqRows> = caches.iter().zip(spans).map(|(c, s)| seq(c, s)).collect();
            return Ok(vec![(
                0,
                PassRows::new(&seqs, spans[0].t, width, &self.device)?,
            )]);
        }
        caches
            .iter()
            .zip(spans)
            .map(|(c, s)| {
                Ok((
                    s.row0,
                    PassRows::new(&[seq(c, s)], s.t, width, &self.device)?,
                ))
            })
            .collect()
    }

    /// [`attention`](Self::attention) over the device pool: `groups` are the pass's rows, each
    /// group's rows starting at its row.
    fn device_attention(
        &self,
        layer: &Layer,
        tensors: &(Tensor, Tensor),
        groups: &[(usize, PassRows)],
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        product: Product,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (q, k, v) = self.rotated(layer, x, (cos, sin), product)?;
        let heads = HeadShape {
            n_head: cfg.n_head,
            n_kv: cfg.n_kv_head,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f64).sqrt(),
            f16_weights: cfg.f16_attention,
        };
        // q: (1, heads, n, hd); k: (1, kv heads, n, hd); v: (n, kv heads * hd).
        let (q, k) = (q.squeeze(0)?, k.squeeze(0)?);
        let n = v.dim(0)?;
        let mut outs = Vec::with_capacity(groups.len());
        for (i, (row0, rows)) in groups.iter().enumerate() {
            let end = groups.get(i + 1).map_or(n, |g| g.0);
            let len = end - row0;
            outs.push(pool::attend(
                tensors,
                rows,
                &heads,
                &q.narrow(1, *row0, len)?,
                &k.narrow(1, *row0, len)?,
                &v.narrow(0, *row0, len)?,
            )?);
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one group")
        } else {
            Tensor::cat(&outs, 0)?
        };
        product(&layer.wo, &out)
    }

    /// Q, K and V of `x`, Q and K normalized (where the architecture does) and rotated: Q
    /// `(1, heads, n, hd)` (rounded to f16 precision when the model says), K `(1, kv heads, n,
    /// hd)`, V `(n, kv heads * hd)`.
    fn rotated(
        &self,
        layer: &Layer,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        product: Product,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (n, _) = x.dims2()?;
        let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
        let (q, k, v) = self.project(layer, x, product)?;
        let q = q.reshape((1, n, nh, hd))?;
        let k = k.reshape((1, n, nkv, hd))?;
        let q = match &layer.q_norm {
            Some(w) => candle_nn::ops::rms_norm(&q, w, cfg.rms_eps)?,
            None => q,
        };
        let k = match &layer.k_norm {
            Some(w) => candle_nn::ops::rms_norm(&k, w, cfg.rms_eps)?,
            None => k,
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let (q, k) = if cfg.rope_interleaved {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        };
        let q = if cfg.f16_attention { f16_round(&q)? } else { q };
        Ok((q, k, v))
    }

    /// The Q, K and V projections of `x` (`(t, hidden)`), biases added: one row per token.
    fn project(
        &self,
        layer: &Layer,
        x: &Tensor,
        product: Product,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            add_bias(product(&layer.wq, x)?, &layer.bq)?,
            add_bias(product(&layer.wk, x)?, &layer.bk)?,
            add_bias(product(&layer.wv, x)?, &layer.bv)?,
        ))
    }
}

/// The rows of one sequence within a pass.
struct Span {
    /// First row in the pass.
    row0: usize,
    /// Position of that row in its sequence.
    pos0: usize,
    /// Rows (new tokens).
    t: usize,
}
