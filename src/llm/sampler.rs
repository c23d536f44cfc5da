//! Choosing the next token from logits: greedy, or seeded sampling with temperature, top-k and
//! top-p. The random stream is owned here (SplitMix64), so a seed gives the same choices on every
//! platform and candle version.

use serde::{Deserialize, Serialize};

/// How to pick tokens. `temperature <= 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p` (1.0: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams::greedy()
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// A sampler: parameters plus the random stream's state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

/// Index of the largest finite logit (the first on ties), or `None` if there is none.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            state: params.seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Next value of the stream in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Pick a token. Logits set to negative infinity are never picked; `None` when every
    /// logit is masked.
    pub fn sample(&mut self, logits: &[f32]) -> Option<u32> {
        let p = self.params;
        if p.is_greedy() {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cand.is_empty() {
            return None;
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && cand.len() > p.top_k {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| ((l - max) as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.next_f64() * total;
        for (i, &q) in probs.iter().enumerate() {
            if r < q {
                return Some(cand[i].0);
            }
            r -= q;
        }
        cand.last().map(|c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum_and_skips_masked() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, 0.5]), Some(2));
        assert_eq!(argmax(&[f32::NEG_INFINITY]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 42,
        };
        let run = |params| {
            let mut s = Sampler::new(params);
            (0..200)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        let a = run(params);
        assert_eq!(a, run(params));
        assert_ne!(a, run(SamplingParams { seed: 43, ..params }));
        // Top 5: the five tokens with logit 6*0.3 (ids 6, 13, 20, 27, 34).
        assert!(a.iter().all(|id| id % 7 == 6 && *id <= 34), "{a:?}");
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_keeps_the_dominant_token() {
        let mut logits = vec![0.0f32; 10];
        logits[3] = 10.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..100).all(|_| s.sample(&logits) == Some(3)));
    }

    #[test]
    fn masked_tokens_are_never_sampled() {
        let mut logits = vec![f32::NEG_INFINITY; 10];
        logits[2] = 0.0;
        logits[7] = 0.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            seed: 9,
        });
        assert!((0..100).all(|_| matches!(s.sample(&logits), Some(2 | 7))));
        assert_eq!(
            Sampler::new(SamplingParams {
                temperature: 1.0,
                ..Default::default()
            })
            .sample(&[f32::NEG_INFINITY]),
            None
        );
    }
}
