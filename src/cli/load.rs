//! How every command loads models (`--device`, `--threads`, ...) and samples from them.

use clap::Args;

use crate::llm::device;
use crate::llm::engine::Engine;
use crate::llm::model::LoadOptions;

/// Options for loading a model, shared by every subcommand that runs one.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for matrix products (default: 1 on machines with 2 cores or fewer).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cap on context positions.
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_context: usize,
    /// Keep GGUF quant types as stored instead of re-quantizing slow ones to Q8_0.
    #[arg(long)]
    pub no_requantize: bool,
    /// Keep attention in f32 instead of rounding its operands to f16 like llama.cpp.
    #[arg(long)]
    pub f32_attention: bool,
    /// Keep keys and values in the device's memory and attend with tensor operations, as every
    /// GPU does, also on the CPU (where the host kernel is faster): for trying a GPU's path
    /// without one.
    #[arg(long)]
    pub tensor_attention: bool,
    /// How a safetensors checkpoint's linear weights are held: `q8_0` (quantized at load),
    /// `bf16`, `f16` or `f32` (dense, products in that dtype), or `auto`: bf16 on a GPU, Q8_0 on
    /// the CPU. GGUF weights keep their own quant types whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "q8_0", "bf16", "f16", "f32"])]
    pub dtype: String,
}

impl LoadArgs {
    /// Set the thread count (before any tensor work) and build load options.
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        device::configure_threads(self.threads);
        let mut opts = LoadOptions {
            device: device::select_device(&self.device)?,
            threads: self.threads,
            max_seq_len: self.max_context,
            ..Default::default()
        };
        opts.f16_attention = !self.f32_attention;
        opts.tensor_attention = self.tensor_attention;
        opts.dense_dtype = match self.dtype.as_str() {
            "bf16" => Some(candle_core::DType::BF16),
            "f16" => Some(candle_core::DType::F16),
            "f32" => Some(candle_core::DType::F32),
            "q8_0" => None,
            _ => (!opts.device.is_cpu()).then_some(candle_core::DType::BF16),
        };
        if self.no_requantize {
            opts.requantize.clear();
        }
        Ok(opts)
    }

    /// Load a profile by name or a checkpoint by path.
    pub fn load(&self, model: &str) -> anyhow::Result<Engine> {
        let opts = self.options()?;
        let started = std::time::Instant::now();
        let engine = Engine::load(model, &opts)?;
        let loaded = started.elapsed().as_secs_f64();
        engine.warm_up()?;
        eprintln!(
            "loaded {} ({}) in {:.2}s (re-quantizing {} ms, warm-up {:.2}s), {} thread(s)",
            model,
            engine.path().display(),
            loaded,
            engine.requantize_ms(),
            started.elapsed().as_secs_f64() - loaded,
            crate::llm::device::matmul_threads()
        );
        Ok(engine)
    }
}

/// Sampling flags; greedy unless `--temperature` is given.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> crate::llm::SamplingParams {
        match self.temperature {
            None => crate::llm::SamplingParams::greedy(),
            Some(t) => crate::llm::SamplingParams {
                temperature: t,
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                seed: self.seed,
            },
        }
    }
}
