//! Loading Hugging Face checkpoints (`config.json`, `*.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`) for llama, qwen2 and qwen3. Linear weights are quantized at load on
//! request (Q8_0 by default), which keeps 8B checkpoints within CPU memory, or kept dense in
//! the dtype [`LoadOptions::dense_dtype`] names (bf16 on a GPU), loaded onto the device as they
//! are stored and converted there.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::transformer::{Embedding, Layer, Linear, Transformer, rope_tables};
use super::{Architecture, Config, Llama3Scaling, LoadOptions, Loaded, inv_freqs};
use crate::llm::Tokenizer;
use crate::llm::error::{LlmError, Result};

#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    rope_scaling: Option<Value>,
}

fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_ctx() -> usize {
    4096
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LlmError::checkpoint(path, e.to_string()))
}

/// The text of a special token entry in `tokenizer_config.json` (a string or `{content}`).
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The safetensors files of a checkpoint directory (from the index when there is one).
fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| LlmError::checkpoint(&index, "no weight_map"))?;
        let mut files: Vec<_> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(LlmError::checkpoint(
        dir,
        "no model.safetensors or model.safetensors.index.json",
    ))
}

struct Weights<'a> {
    st: MmapedSafetensors,
    dir: &'a Path,
    opts: &'a LoadOptions,
    quantize_ms: u128,
}

impl Weights<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn dense(&self, name: &str) -> Result<Tensor> {
        self.dense_as(name, DType::F32)
    }

    fn opt_dense(&self, name: &str) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.dense(name).map(Some)
        } else {
            Ok(None)
        }
    }

    fn quantizable(&self, t: &Tensor) -> bool {
        self.opts.quantize_dense
            && t.dims()
                .last()
                .is_some_and(|&k| k % self.opts.requantize_to.block_size() == 0)
    }

    fn qtensor(&mut self, t: &Tensor) -> Result<QTensor> {
        let start = Instant::now();
        let q = QTensor::quantize(t, self.opts.requantize_to)?;
        self.quantize_ms += start.elapsed().as_millis();
        Ok(q)
    }

    /// A weight in `dt`, converted on the device it is loaded to.
    fn dense_as(&self, name: &str, dt: DType) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &self.opts.device)
            .map_err(|e| LlmError::checkpoint(self.dir, format!("{name}: {e}")))?;
        Ok(t.to_dtype(dt)?)
    }

    fn linear(&mut self, name: &str) -> Result<Linear> {
        if let Some(dt) = self.opts.dense_dtype {
            return Ok(Linear::Dense(self.dense_as(name, dt)?));
        }
        let t = self.dense(name)?;
        Ok(Linear::Candle(if self.quantizable(&t) {
            QMatMul::from_qtensor(self.qtensor(&t)?)?
        } else {
            QMatMul::Tensor(t)
        }))
    }
}

/// Read a safetensors checkpoint directory.
pub(super) fn load(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let hf: HfConfig = serde_json::from_value(read_json(&cfg_path)?)
        .map_err(|e| LlmError::checkpoint(&cfg_path, e.to_string()))?;
    let architecture = Architecture::from_hf_model_type(&hf.model_type)?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(LlmError::checkpoint(dir, "no tokenizer.json"));
    }
    let tokenizer = Tokenizer::from_tokenizer_json(&tok_path)?;
    let tok_cfg_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tok_cfg_path.is_file() {
        Some(read_json(&tok_cfg_path)?)
    } else {
        None
    };
    let chat_template = tok_cfg.as_ref().and_then(|c| match c.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // A list of named templates: take "default".
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    });
    let chat_template =
        chat_template.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    let bos_token = tok_cfg
        .as_ref()
        .and_then(|c| token_text(c.get("bos_token")));
    let eos_token = tok_cfg
        .as_ref()
        .and_then(|c| token_text(c.get("eos_token")));

    let n_kv_head = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
    let head_dim = hf
        .head_dim
        .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
    let llama3 = hf.rope_scaling.as_ref().and_then(|s| {
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str);
        (kind == Some("llama3"))
            .then(|| serde_json::from_value::<Llama3Scaling>(s.clone()).ok())
            .flatten()
    });
    let st = unsafe { MmapedSafetensors::multi(&weight_files(dir)?) }
        .map_err(|e| LlmError::checkpoint(dir, e.to_string()))?;
    let mut w = Weights {
        st,
        dir,
        opts,
        quantize_ms: 0,
    };
    let tied = hf.tie_word_embeddings || !w.has("lm_head.weight");
    let cfg = Config {
        architecture,
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        n_layer: hf.num_hidden_layers,
        n_head: hf.num_attention_heads,
        n_kv_head,
        head_dim,
        ffn_size: hf.intermediate_size,
        rms_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_interleaved: false,
        context_length: hf.max_position_embeddings,
        max_seq_len: hf.max_position_embeddings.min(opts.max_seq_len),
        tied_embeddings: tied,
        f16_attention: opts.f16_attention,
    };
    cfg.validate()?;

    let (embed, tied_head) = if let Some(dt) = opts.dense_dtype {
        let t = w.dense_as("model.embed_tokens.weight", dt)?;
        (Embedding::Dense(t.clone()), Linear::Dense(t))
    } else {
        let embed_t = w.dense("model.embed_tokens.weight")?;
        if w.quantizable(&embed_t) {
            let q = Arc::new(w.qtensor(&embed_t)?);
            (
                Embedding::Quantized(q.clone()),
                Linear::Candle(QMatMul::from_arc(q)?),
            )
        } else {
            (
                Embedding::Dense(embed_t.clone()),
                Linear::Candle(QMatMul::Tensor(embed_t)),
            )
        }
    };
    let lm_head = if tied {
        tied_head
    } else {
        w.linear("lm_head.weight")?
    };
    let norm = w.dense("model.norm.weight")?;
    let (cos, sin) = rope_tables(
        &inv_freqs(head_dim, cfg.rope_theta, llama3.as_ref()),
        cfg.max_seq_len,
        &opts.device,
    )?;
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let p = format!("model.layers.{i}");
        layers.push(Layer {
            attn_norm: w.dense(&format!("{p}.input_layernorm.weight"))?,
            wq: w.linear(&format!("{p}.self_attn.q_proj.weight"))?,
            wk: w.linear(&format!("{p}.self_attn.k_proj.weight"))?,
            wv: w.linear(&format!("{p}.self_attn.v_proj.weight"))?,
            wo: w.linear(&format!("{p}.self_attn.o_proj.weight"))?,
            bq: w.opt_dense(&format!("{p}.self_attn.q_proj.bias"))?,
            bk: w.opt_dense(&format!("{p}.self_attn.k_proj.bias"))?,
            bv: w.opt_dense(&format!("{p}.self_attn.v_proj.bias"))?,
            q_norm: w.opt_dense(&format!("{p}.self_attn.q_norm.weight"))?,
            k_norm: w.opt_dense(&format!("{p}.self_attn.k_norm.weight"))?,
            ffn_norm: w.dense(&format!("{p}.post_attention_layernorm.weight"))?,
            gate: w.linear(&format!("{p}.mlp.gate_proj.weight"))?,
            up: w.linear(&format!("{p}.mlp.up_proj.weight"))?,
            down: w.linear(&format!("{p}.mlp.down_proj.weight"))?,
        });
    }
    let requantize_ms = w.quantize_ms;
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
