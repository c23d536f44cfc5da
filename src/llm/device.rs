//! Compute device and CPU thread count.
//!
//! candle sizes its quantized-matmul thread pool from `CANDLE_NUM_THREADS` (then
//! `RAYON_NUM_THREADS`) the first time it runs an op, so [`configure_threads`] must run before
//! any tensor work — in practice first thing in `main`.

use candle_core::Device;

use crate::llm::error::{LlmError, Result};

/// Parse `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(|e| {
            LlmError::Unsupported(format!("metal device: {e} (build with --features metal)"))
        }),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| LlmError::InvalidRequest(format!("bad device {other:?}")))?,
                None => {
                    return Err(LlmError::InvalidRequest(format!(
                        "unknown device {other:?} (cpu, cuda[:N], metal)"
                    )));
                }
            };
            Device::new_cuda(ordinal).map_err(|e| {
                // Candle's errors carry a backtrace; its first line says what failed.
                let e = e.to_string();
                let e = e.lines().next().unwrap_or_default();
                LlmError::Unsupported(if cfg!(feature = "cuda") {
                    format!(
                        "cuda device {ordinal}: {e} (no GPU here, or its driver is missing or older than the CUDA 13 this was built with)"
                    )
                } else {
                    format!("cuda device: {e} (build with --features cuda: scripts/build-cuda.sh)")
                })
            })
        }
    }
}

/// Default thread count: one on machines with two cores or fewer (two threads there collapse
/// when anything else runs), else the number of available cores minus one.
pub fn default_threads() -> usize {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if n <= 2 { 1 } else { n - 1 }
}

/// Set this crate's kernels' CPU thread count, and candle's: the same, or one where our kernels
/// run every quantized product (candle then has only element-wise ops). Only the first call in
/// a process has an effect, and only before the first tensor op; an explicit
/// `CANDLE_NUM_THREADS` in the environment is the count when `threads` is `None`. Returns the
/// count in force.
///
/// [`Engine::load`](crate::llm::Engine::load) calls it; call it earlier (first thing in `main`)
/// when other threads may be reading the environment.
pub fn configure_threads(threads: Option<usize>) -> usize {
    static CONFIGURED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CONFIGURED.get_or_init(|| set_threads(threads))
}

/// Our kernels' thread count, once [`configure_threads`] has run.
static KERNEL_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn set_threads(threads: Option<usize>) -> usize {
    let n = match threads {
        Some(n) => n.max(1),
        None => std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(default_threads),
    };
    let _ = KERNEL_THREADS.set(n);
    // Where this crate's kernels run every quantized product (CPUs with AVX2 or AVX-512
    // VNNI), candle is left the element-wise ops only, on the calling thread: with its own
    // pool as well, its worker spun on the second core against ours after each larger op
    // (Qwen2.5-Coder-1.5B, batch 8: a sixth of all samples, batch 8 slower than batch 4).
    let candle = if crate::llm::model::native_kernels() {
        1
    } else {
        n
    };
    // SAFETY: documented precondition: called at start-up, before other threads read the
    // environment.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", candle.to_string());
        std::env::set_var("RAYON_NUM_THREADS", candle.to_string());
    }
    n
}

/// Threads the inference layer's own CPU kernels use: what [`configure_threads`] set, else
/// `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else [`default_threads`], read once.
pub fn matmul_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&n) = KERNEL_THREADS.get() {
        return n;
    }
    *THREADS.get_or_init(|| {
        ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
            .iter()
            .find_map(|k| {
                std::env::var(k)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&n| n > 0)
            })
            .unwrap_or_else(default_threads)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(select_device("cpu").unwrap().is_cpu());
        assert!(select_device("tpu").is_err());
        assert!(select_device("cuda:x").is_err());
    }
}
