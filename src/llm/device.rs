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
                LlmError::Unsupported(format!("cuda device: {e} (build with --features cuda)"))
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

/// Set candle's CPU thread count (and this crate's kernels'). Only the first call in a process
/// has an effect, and only before the first tensor op; an explicit `CANDLE_NUM_THREADS` in the
/// environment wins when `threads` is `None`. Returns the count in force.
///
/// [`Engine::load`](crate::llm::Engine::load) calls it; call it earlier (first thing in `main`)
/// when other threads may be reading the environment.
pub fn configure_threads(threads: Option<usize>) -> usize {
    static CONFIGURED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CONFIGURED.get_or_init(|| set_threads(threads))
}

fn set_threads(threads: Option<usize>) -> usize {
    let n = match threads {
        Some(n) => n.max(1),
        None => match std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            Some(n) => return n,
            None => default_threads(),
        },
    };
    // SAFETY: documented precondition: called at start-up, before other threads read the
    // environment.
    unsafe {
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    n
}

/// Threads the inference layer's own CPU kernels use: `CANDLE_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else [`default_threads`], read once.
pub fn matmul_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
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
