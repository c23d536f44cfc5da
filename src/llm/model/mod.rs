//! Model layer: the closed set of supported architectures, their configuration, and loading
//! weights from GGUF or safetensors checkpoints.
//!
//! All architectures share one decoder ([`Transformer`]); [`Architecture`] names what differs.
//! A loaded model is immutable and `Send + Sync`; conversations each own a [`KvCache`].

mod attention;
mod blocks;
mod btiles;
mod cache;
mod gguf;
mod kquants;
mod ktiles;
mod pages;
mod pool;
mod safetensors;
mod team;
mod transformer;

use std::path::Path;

use candle_core::DType;
use candle_core::Device;
use candle_core::quantized::GgmlDType;

pub use cache::{KvCache, PAGE};

/// Whether this crate's CPU kernels run the quantized products here (AVX2 or AVX-512 VNNI).
pub(crate) fn native_kernels() -> bool {
    blocks::supported()
}
pub use transformer::Transformer;

use crate::llm::error::{LlmError, Result};

/// Supported decoder architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3 (and SmolLM2): no biases.
    Llama,
    /// Qwen2 / Qwen2.5: biases on Q, K and V.
    Qwen2,
    /// Qwen3: per-head RMS norms on Q and K, no biases.
    Qwen3,
}

impl Architecture {
    /// Parse the name used by GGUF (`general.architecture`) and profiles.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Architecture::Llama),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            other => Err(LlmError::Unsupported(format!(
                "architecture {other:?} (supported: llama, qwen2, qwen3)"
            ))),
        }
    }

    /// Parse a Hugging Face `config.json` `model_type`.
    pub fn from_hf_model_type(name: &str) -> Result<Self> {
        Self::from_name(name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Hyper-parameters of a loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// GGUF llama files store Q/K permuted for pairwise (interleaved) RoPE.
    pub rope_interleaved: bool,
    /// Context length the checkpoint was trained for.
    pub context_length: usize,
    /// Positions this instance supports (RoPE tables and cache limit).
    pub max_seq_len: usize,
    pub tied_embeddings: bool,
    /// Attention operands (Q, K, V, weights) rounded to f16 precision, as llama.cpp computes.
    pub f16_attention: bool,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        let ok = self.n_head > 0
            && self.n_kv_head > 0
            && self.n_head.is_multiple_of(self.n_kv_head)
            && self.head_dim.is_multiple_of(2)
            && self.head_dim > 0
            && self.n_layer > 0
            && self.vocab_size > 0;
        if ok {
            Ok(())
        } else {
            Err(LlmError::Unsupported(format!(
                "inconsistent model configuration {self:?}"
            )))
        }
    }
}

/// Options that apply when loading weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// CPU threads (see [`configure_threads`](crate::llm::device::configure_threads)); `None`:
    /// `CANDLE_NUM_THREADS` or the machine default.
    pub threads: Option<usize>,
    /// Cap on positions (RoPE tables, KV cache); the checkpoint's own limit applies too.
    pub max_seq_len: usize,
    /// GGUF quant types re-quantized at load because candle has no fast kernels for them.
    pub requantize: Vec<GgmlDType>,
    /// Target of that re-quantization (and of dense safetensors weights on CPU).
    pub requantize_to: GgmlDType,
    /// Quantize dense (safetensors) linear weights; otherwise they stay f32 (or `dense_dtype`).
    pub quantize_dense: bool,
    /// Keep dense (safetensors) linear weights and the embedding table in this dtype (bf16, f16
    /// or f32), unquantized, their products run in it: what a GPU wants. `None`: as
    /// `quantize_dense` says.
    pub dense_dtype: Option<DType>,
    /// Run the 4/5/8-bit legacy block formats and the Q4_K/Q6_K super-block formats with this
    /// crate's CPU kernels (when the CPU has AVX-512 VNNI or AVX2) instead of candle's.
    pub native_blocks: bool,
    /// Round attention operands to f16 precision like llama.cpp (see [`Config::f16_attention`]).
    pub f16_attention: bool,
    /// Keep keys and values in device memory and attend with tensor operations (`model::pool`).
    /// Always so on a GPU; on the CPU the host kernel is faster, and this is for checking the
    /// device path without a GPU.
    pub tensor_attention: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            threads: None,
            max_seq_len: 32 * 1024,
            requantize: vec![GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1],
            requantize_to: GgmlDType::Q8_0,
            quantize_dense: true,
            dense_dtype: None,
            native_blocks: true,
            f16_attention: true,
            tensor_attention: false,
        }
    }
}

/// A checkpoint's weights plus what was read alongside them.
pub struct Loaded {
    pub model: Transformer,
    pub tokenizer: crate::llm::Tokenizer,
    /// The chat template stored with the checkpoint, if any.
    pub chat_template: Option<String>,
    /// Special token texts the template refers to (`bos_token`, `eos_token`).
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Milliseconds spent re-quantizing.
    pub requantize_ms: u128,
}

/// Load a GGUF file or a safetensors checkpoint directory.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    crate::llm::device::configure_threads(opts.threads);
    if path.is_dir() {
        safetensors::load(path, opts)
    } else {
        gguf::load(path, opts)
    }
}

/// Inverse RoPE frequencies, with Llama 3 style long-context scaling when given.
pub(crate) fn inv_freqs(head_dim: usize, theta: f32, llama3: Option<&Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32);
            match llama3 {
                None => f,
                Some(s) => s.apply(f),
            }
        })
        .collect()
}

/// Llama 3.1's `rope_scaling` (`rope_type = "llama3"`).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

impl Llama3Scaling {
    fn apply(&self, freq: f32) -> f32 {
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        let wavelen = 2.0 * std::f32::consts::PI / freq;
        if wavelen < high_wavelen {
            freq
        } else if wavelen > low_wavelen {
            freq / self.factor
        } else {
            let smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * freq / self.factor + smooth * freq
        }
    }
}
