//! Per-conversation key/value cache.
//!
//! One `KvCache` belongs to one conversation and outlives its turns: it remembers the tokens it
//! holds, so a new turn whose prompt extends (or shares a prefix with) what is cached only runs
//! the new tokens. Buffers grow geometrically and are written in place, so a decode step copies
//! only its own keys and values.

use candle_core::{DType, Device, Tensor};

use crate::llm::error::Result;

#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// Buffers are written in place, so a clone must own its copy: two conversations that started
/// from one cached prefix must not see each other's later tokens.
impl Clone for LayerKv {
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| t.copy().unwrap_or_else(|_| t.clone());
        LayerKv {
            k: copy(&self.k),
            v: copy(&self.v),
        }
    }
}

/// Keys and values for every layer, plus the token ids they stand for.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    tokens: Vec<u32>,
    /// Positions filled in every layer's buffers.
    len: usize,
}

/// Smallest buffer length allocated, in positions.
const MIN_CAPACITY: usize = 256;

impl KvCache {
    /// An empty cache (layers are allocated on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token ids whose keys and values are cached, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forget everything (buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keep only the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        self.len = len;
        self.tokens.truncate(len);
    }

    /// How many leading tokens of `prompt` are already cached, leaving at least one token of
    /// `prompt` to run (the model needs an input to produce logits).
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        if common == prompt.len() {
            common.saturating_sub(1)
        } else {
            common
        }
    }

    pub(crate) fn record(&mut self, tokens: &[u32]) {
        debug_assert_eq!(self.tokens.len() + tokens.len(), self.len);
        self.tokens.extend_from_slice(tokens);
    }

    /// Write `k`, `v` (shape `(1, n_kv_heads, t, head_dim)`) at the current end of `layer` and
    /// return views of all cached keys and values (`(1, n_kv_heads, len + t, head_dim)`).
    /// `commit` advances the length; call it once per forward, after the last layer.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (_, n_kv, t, hd) = k.dims4()?;
        let start = self.len;
        let need = start + t;
        let slot = &mut self.layers[layer];
        let capacity = slot.as_ref().map_or(0, |s| s.k.dim(2).unwrap_or(0));
        if need > capacity {
            let new_cap = need
                .max(capacity * 2)
                .max(MIN_CAPACITY)
                .min(max_len.max(need));
            let alloc =
                |dtype: DType, dev: &Device| Tensor::zeros((1, n_kv, new_cap, hd), dtype, dev);
            let nk = alloc(k.dtype(), k.device())?;
            let nv = alloc(v.dtype(), v.device())?;
            if let Some(old) = slot.as_ref()
                && start > 0
            {
                nk.slice_set(&old.k.narrow(2, 0, start)?.contiguous()?, 2, 0)?;
                nv.slice_set(&old.v.narrow(2, 0, start)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(LayerKv { k: nk, v: nv });
        }
        let Some(s) = slot.as_ref() else {
            unreachable!("allocated above")
        };
        s.k.slice_set(&k.contiguous()?, 2, start)?;
        s.v.slice_set(&v.contiguous()?, 2, start)?;
        Ok((s.k.narrow(2, 0, need)?, s.v.narrow(2, 0, need)?))
    }

    pub(crate) fn commit(&mut self, t: usize) {
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reusable_prefix_leaves_one_token() {
        let mut c = KvCache::new();
        c.len = 3;
        c.tokens = vec![1, 2, 3];
        assert_eq!(c.reusable_prefix(&[1, 2, 3, 4]), 3);
        assert_eq!(c.reusable_prefix(&[1, 2, 3]), 2);
        assert_eq!(c.reusable_prefix(&[1, 9]), 1);
        assert_eq!(c.reusable_prefix(&[]), 0);
    }

    #[test]
    fn append_grows_and_keeps_old_entries() {
        let dev = Device::Cpu;
        let mut c = KvCache::new();
        let mut total = 0;
        for step in 0..300usize {
            let t = if step == 0 { 5 } else { 1 };
            let k = Tensor::full(step as f32, (1, 2, t, 4), &dev).unwrap();
            let (ks, vs) = c.append(0, &k, &k, 4096).unwrap();
            total += t;
            assert_eq!(ks.dims4().unwrap(), (1, 2, total, 4));
            assert_eq!(vs.dims4().unwrap(), (1, 2, total, 4));
            c.commit(t);
        }
        let (ks, _) = c
            .append(
                0,
                &Tensor::zeros((1, 2, 1, 4), DType::F32, &dev).unwrap(),
                &Tensor::zeros((1, 2, 1, 4), DType::F32, &dev).unwrap(),
                4096,
            )
            .unwrap();
        let first: f32 = ks
            .narrow(2, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let at_100: f32 = ks
            .narrow(2, 104, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert_eq!((first, at_100), (0.0, 100.0));
    }
}
