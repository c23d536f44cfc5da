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
use super::blocks::BlockLinear;
use super::cache::KvCache;
use super::kquants::KLinear;
use crate::llm::error::{LlmError, Result};

/// A linear layer without bias: stored GGML blocks or K-quant super-blocks run by our own
/// kernels, or anything candle multiplies (other formats, other CPUs, GPUs, dense tensors).
pub(crate) enum Linear {
    Blocks(Arc<BlockLinear>),
    KQuant(Arc<KLinear>),
    Candle(QMatMul),
}

impl Linear {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Blocks(b) => b.forward(x),
            Linear::KQuant(b) => b.forward(x),
            Linear::Candle(q) => Ok(q.forward(x)?),
        }
    }

    /// `forward` for rows that belong to different sequences, each row's result exactly what it
    /// would be alone. Our kernels compute every row the same way whatever the others are, so
    /// they take all the rows at once. So does candle's Q4_K product on x86 (it runs its
    /// repacked tiles for any number of rows; below 32 rows, where no AMX path is taken). Its
    /// other products take a different kernel for one row than for several (Q6_K's results
    /// differ in the last bits), so there each row runs on its own: exact, but without the
    /// batching gain. `llm::batch` pins this.
    pub(crate) fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Blocks(b) => b.forward(x),
            Linear::KQuant(b) => b.forward_rows(x),
            Linear::Candle(q) => {
                let rows = x.dim(0)?;
                if rows == 1 || (rows < 32 && q4k_rows_are_independent(q)) {
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
        let t = tokens.len();
        if t == 0 {
            return Err(LlmError::InvalidRequest("forward on zero tokens".into()));
        }
        let pos = cache.len();
        if pos + t > self.cfg.max_seq_len {
            return Err(LlmError::InvalidRequest(format!(
                "context overflow: {} cached + {t} new tokens > {} positions",
                pos, self.cfg.max_seq_len
            )));
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(LlmError::InvalidRequest(format!(
                "token id {bad} outside the vocabulary"
            )));
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let mask = if t > 1 {
            Some(self.causal_mask(t, pos)?)
        } else {
            None
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps)?;
            let a = self.attention(layer, i, &h, &cos, &sin, mask.as_ref(), cache)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps)?;
            x = (x + self.mlp(layer, &h, Linear::forward)?)?;
        }
        cache.commit(t);
        cache.record(tokens);
        Ok(x)
    }

    /// Additive mask `(n_rep * t, pos + t)`: row `g * t + i` is query `i` of a head in a group.
    fn causal_mask(&self, t: usize, pos: usize) -> Result<Tensor> {
        let n_rep = self.cfg.n_head / self.cfg.n_kv_head;
        let total = pos + t;
        let mut m = Vec::with_capacity(n_rep * t * total);
        for _ in 0..n_rep {
            for i in 0..t {
                for j in 0..total {
                    m.push(if j <= pos + i {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    });
                }
            }
        }
        Ok(Tensor::from_vec(m, (n_rep * t, total), &self.device)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project(layer, x, Linear::forward)?;
        let out = self.attend(layer, index, &q, &k, &v, cos, sin, mask, cache)?;
        layer.wo.forward(&out)
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

    /// Attention of one sequence's `t` projected rows against its cache; returns `(t, n_head *
    /// head_dim)`, before the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &Layer,
        index: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (t, _) = q.dims2()?;
        let hd = cfg.head_dim;
        let q = q.reshape((1, t, cfg.n_head, hd))?;
        let k = k.reshape((1, t, cfg.n_kv_head, hd))?;
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
        let v = v.reshape((1, t, cfg.n_kv_head, hd))?.transpose(1, 2)?;
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
        let (q, k, v) = if cfg.f16_attention {
            (f16_round(&q)?, f16_round(&k)?, f16_round(&v)?)
        } else {
            (q, k, v)
        };
        let (k, v) = cache.append(index, &k, &v, cfg.max_seq_len)?;
        // Grouped-query attention without copying K/V: the query heads sharing a KV head are
        // stacked as rows, `(1, n_kv, n_rep * t, hd)`.
        let n_rep = cfg.n_head / cfg.n_kv_head;
        let q = q.reshape((1, cfg.n_kv_head, n_rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let probs = if cfg.f16_attention {
            f16_round(&probs)?
        } else {
            probs
        };
        let out = probs.matmul(&v)?; // (1, n_kv, n_rep * t, hd)
        Ok(out
            .reshape((1, cfg.n_head, t, hd))?
            .transpose(1, 2)?
            .reshape((t, cfg.n_head * hd))?)
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
        for (&id, cache) in tokens.iter().zip(caches.iter()) {
            if id as usize >= self.cfg.vocab_size {
                return Err(LlmError::InvalidRequest(format!(
                    "token id {id} outside the vocabulary"
                )));
            }
            if cache.len() + 1 > self.cfg.max_seq_len {
                return Err(LlmError::InvalidRequest(format!(
                    "context overflow: {} cached + 1 new token > {} positions",
                    cache.len(),
                    self.cfg.max_seq_len
                )));
            }
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.forward(&ids)?;
        let tables: Vec<(Tensor, Tensor)> = caches
            .iter()
            .map(|c| {
                Ok((
                    self.cos.narrow(0, c.len(), 1)?,
                    self.sin.narrow(0, c.len(), 1)?,
                ))
            })
            .collect::<Result<_>>()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps)?;
            let (q, k, v) = self.project(layer, &h, Linear::forward_rows)?;
            let mut outs = Vec::with_capacity(n);
            for (s, cache) in caches.iter_mut().enumerate() {
                let (cos, sin) = &tables[s];
                outs.push(self.attend(
                    layer,
                    i,
                    &q.narrow(0, s, 1)?,
                    &k.narrow(0, s, 1)?,
                    &v.narrow(0, s, 1)?,
                    cos,
                    sin,
                    None,
                    cache,
                )?);
            }
            let a = layer.wo.forward_rows(&Tensor::cat(&outs, 0)?)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps)?;
            x = (x + self.mlp(layer, &h, Linear::forward_rows)?)?;
        }
        for (cache, &id) in caches.iter_mut().zip(tokens) {
            cache.commit(1);
            cache.record(&[id]);
        }
        self.logits(&x, Linear::forward_rows)
    }
}

/// Round to f16 precision (values stay f32): llama.cpp keeps K and V in f16 and converts Q and
/// the attention weights to f16 for its products; matching that keeps greedy decoding on the
/// same path as the reference engine without paying for f16 arithmetic.
fn f16_round(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}
