//! Loading quantized llama / qwen2 / qwen3 weights from a GGUF file (llama.cpp's tensor names),
//! re-quantizing types that candle has no fast kernels for.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};

use super::blocks::{self, BlockLinear};
use super::kquants::KLinear;
use super::transformer::{Embedding, Layer, Linear, Transformer, rope_tables};
use super::{Architecture, Config, LoadOptions, Loaded, inv_freqs};
use crate::llm::Tokenizer;
use crate::llm::error::{LlmError, Result};

struct Reader<'a> {
    path: &'a Path,
    content: Content,
    file: BufReader<File>,
    opts: &'a LoadOptions,
    requantize_ms: u128,
}

impl Reader<'_> {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn raw(&mut self, name: &str) -> Result<QTensor> {
        if !self.has(name) {
            return Err(LlmError::checkpoint(
                self.path,
                format!("missing tensor {name}"),
            ));
        }
        Ok(self.content.tensor(&mut self.file, name, &Device::Cpu)?)
    }

    fn native_blocks(&self) -> bool {
        self.opts.native_blocks && self.opts.device.is_cpu() && blocks::supported()
    }

    /// A weight matrix on our own kernels when one takes its format.
    fn blocks(&mut self, t: &Arc<QTensor>) -> Result<Option<Linear>> {
        if !self.native_blocks() {
            return Ok(None);
        }
        if let Some(b) = BlockLinear::from_qtensor(t)? {
            return Ok(Some(Linear::Blocks(Arc::new(b))));
        }
        // `APIGEN_MT_KQUANT=candle` keeps K-quants on candle's kernels (for comparing the two).
        if std::env::var("APIGEN_MT_KQUANT").as_deref() == Ok("candle") {
            return Ok(None);
        }
        Ok(KLinear::from_arc(t)?.map(|k| Linear::KQuant(Arc::new(k))))
    }

    fn prepare(&mut self, t: QTensor, name: &str) -> Result<QTensor> {
        let last = t.shape().dims().last().copied().unwrap_or(0);
        let target = self.opts.requantize_to;
        if self.opts.requantize.contains(&t.dtype()) && last % target.block_size() == 0 {
            let start = Instant::now();
            let q =
                QTensor::quantize_onto(&t.dequantize(&Device::Cpu)?, target, &self.opts.device)?;
            self.requantize_ms += start.elapsed().as_millis();
            return Ok(q);
        }
        if self.opts.device.is_cpu() {
            Ok(t)
        } else {
            Ok(self
                .content
                .tensor(&mut self.file, name, &self.opts.device)?)
        }
    }

    fn linear(&mut self, name: &str) -> Result<Linear> {
        let t = Arc::new(self.raw(name)?);
        if let Some(b) = self.blocks(&t)? {
            return Ok(b);
        }
        let t = unshared(t)?;
        Ok(Linear::Candle(QMatMul::from_qtensor(
            self.prepare(t, name)?,
        )?))
    }

    fn dense(&mut self, name: &str) -> Result<Tensor> {
        Ok(self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)?
            .dequantize(&self.opts.device)?)
    }

    fn opt_dense(&mut self, name: &str) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.dense(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn meta_u32(&self, key: &str) -> Result<u32> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| LlmError::checkpoint(self.path, format!("missing metadata {key}")))?
            .to_u32()
            .map_err(|e| LlmError::checkpoint(self.path, format!("{key}: {e}")))
    }

    fn meta_f32(&self, key: &str) -> Option<f32> {
        self.content.metadata.get(key).and_then(|v| v.to_f32().ok())
    }

    fn meta_str(&self, key: &str) -> Option<String> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .cloned()
    }
}

/// Where the token-embedding table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbeddingSource {
    /// The copy as read, in host memory: row look-ups are fast in any format, and a tied
    /// output layer on our own kernels reads the stored blocks.
    Stored,
    /// Read again onto the model's device (re-quantized where the options say so).
    Prepared,
}

/// On any device but the CPU, the table must live on that device whatever the output layer
/// is: a look-up in a host copy gives host rows, and the first norm fails on mixed devices. On
/// the CPU, only a tied output layer that candle multiplies needs the prepared (fast-matmul)
/// copy.
pub(crate) fn embedding_source(
    device_is_cpu: bool,
    has_output: bool,
    tied_on_own_kernels: bool,
) -> EmbeddingSource {
    if device_is_cpu && (has_output || tied_on_own_kernels) {
        EmbeddingSource::Stored
    } else {
        EmbeddingSource::Prepared
    }
}

/// Read a GGUF checkpoint.
pub(super) fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let file = File::open(path).map_err(|e| LlmError::io(path, e))?;
    let mut file = BufReader::new(file);
    let content =
        Content::read(&mut file).map_err(|e| LlmError::checkpoint(path, e.to_string()))?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let mut r = Reader {
        path,
        content,
        file,
        opts,
        requantize_ms: 0,
    };
    let arch_name = r
        .meta_str("general.architecture")
        .ok_or_else(|| LlmError::checkpoint(path, "no general.architecture"))?;
    let architecture = Architecture::from_name(&arch_name)?;
    let a = arch_name.as_str();
    let hidden_size = r.meta_u32(&format!("{a}.embedding_length"))? as usize;
    let n_head = r.meta_u32(&format!("{a}.attention.head_count"))? as usize;
    let n_kv_head = r
        .meta_u32(&format!("{a}.attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(n_head);
    let head_dim = r
        .meta_u32(&format!("{a}.attention.key_length"))
        .map(|v| v as usize)
        .unwrap_or(hidden_size.checked_div(n_head).unwrap_or(0));
    let context_length = r
        .meta_u32(&format!("{a}.context_length"))
        .map(|v| v as usize)
        .unwrap_or(4096);
    let vocab_size = tokenizer.vocab_size();
    let has_output = r.has("output.weight");
    let cfg = Config {
        architecture,
        vocab_size,
        hidden_size,
        n_layer: r.meta_u32(&format!("{a}.block_count"))? as usize,
        n_head,
        n_kv_head,
        head_dim,
        ffn_size: r.meta_u32(&format!("{a}.feed_forward_length"))? as usize,
        rms_eps: r
            .meta_f32(&format!("{a}.attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-6),
        rope_theta: r
            .meta_f32(&format!("{a}.rope.freq_base"))
            .unwrap_or(10_000.0),
        rope_interleaved: architecture == Architecture::Llama,
        context_length,
        max_seq_len: context_length.min(opts.max_seq_len),
        tied_embeddings: !has_output,
        f16_attention: opts.f16_attention,
    };
    cfg.validate()?;

    let raw_embd = Arc::new(r.raw("token_embd.weight")?);
    // Tied output layer on the stored blocks when the kernel takes them.
    let tied_blocks = if has_output {
        None
    } else {
        r.blocks(&raw_embd)?
    };
    let embd = match embedding_source(opts.device.is_cpu(), has_output, tied_blocks.is_some()) {
        EmbeddingSource::Stored => raw_embd,
        EmbeddingSource::Prepared => Arc::new(r.prepare(unshared(raw_embd)?, "token_embd.weight")?),
    };
    let embed = match embd.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            Embedding::Dense(embd.dequantize(&opts.device)?)
        }
        _ => Embedding::Quantized(embd.clone()),
    };
    let lm_head = match (has_output, tied_blocks) {
        (true, _) => r.linear("output.weight")?,
        (false, Some(b)) => b,
        (false, None) => Linear::Candle(QMatMul::from_arc(embd)?),
    };
    let norm = r.dense("output_norm.weight")?;
    let mut inv = inv_freqs(cfg.head_dim, cfg.rope_theta, None);
    if r.has("rope_freqs.weight") {
        let factors = r
            .dense("rope_freqs.weight")?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        if factors.len() == inv.len() {
            inv.iter_mut().zip(&factors).for_each(|(f, s)| *f /= s);
        }
    }
    let (cos, sin) = rope_tables(&inv, cfg.max_seq_len, &opts.device)?;
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = format!("blk.{i}");
        layers.push(Layer {
            attn_norm: r.dense(&format!("{p}.attn_norm.weight"))?,
            wq: r.linear(&format!("{p}.attn_q.weight"))?,
            wk: r.linear(&format!("{p}.attn_k.weight"))?,
            wv: r.linear(&format!("{p}.attn_v.weight"))?,
            wo: r.linear(&format!("{p}.attn_output.weight"))?,
            bq: r.opt_dense(&format!("{p}.attn_q.bias"))?,
            bk: r.opt_dense(&format!("{p}.attn_k.bias"))?,
            bv: r.opt_dense(&format!("{p}.attn_v.bias"))?,
            q_norm: r.opt_dense(&format!("{p}.attn_q_norm.weight"))?,
            k_norm: r.opt_dense(&format!("{p}.attn_k_norm.weight"))?,
            ffn_norm: r.dense(&format!("{p}.ffn_norm.weight"))?,
            gate: r.linear(&format!("{p}.ffn_gate.weight"))?,
            up: r.linear(&format!("{p}.ffn_up.weight"))?,
            down: r.linear(&format!("{p}.ffn_down.weight"))?,
        });
    }
    let chat_template = r.meta_str("tokenizer.chat_template");
    let token_text = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).map(str::to_string);
    let bos_token = token_text(tokenizer.bos());
    let eos_token = token_text(tokenizer.eos());
    let requantize_ms = r.requantize_ms;
    let pool = super::transformer::pool_for(&cfg, opts);
    let model = Transformer {
        pool,
        cfg,
        embed,
        layers,
        norm,
        lm_head,
        cos,
        sin,
        device: opts.device.clone(),
    };
    Ok(Loaded {
        model,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        requantize_ms,
    })
}

/// A tensor no kernel kept a handle to.
fn unshared(t: Arc<QTensor>) -> Result<QTensor> {
    Arc::try_unwrap(t).map_err(|_| LlmError::Unsupported("a weight held by two layers".into()))
}

#[cfg(test)]
mod tests {
    use super::{EmbeddingSource, embedding_source};

    #[test]
    fn the_embedding_lives_on_the_models_device() {
        use EmbeddingSource::*;
        // (device is the CPU, separate output.weight, tied head on our kernels) -> source.
        let cases = [
            // A GPU, separate output head (Qwen2.5-Coder-1.5B, SmolLM2 with output.weight):
            // the table moves to the GPU; it used to stay in host memory.
            ((false, true, false), Prepared),
            // A GPU, tied head: candle's kernels multiply the device copy.
            ((false, false, false), Prepared),
            ((true, true, false), Stored),
            ((true, false, true), Stored),
            ((true, false, false), Prepared),
        ];
        for ((cpu, output, own), want) in cases {
            assert_eq!(
                embedding_source(cpu, output, own),
                want,
                "{cpu} {output} {own}"
            );
        }
    }
}
