//! Keys and values in the model's device memory, and attention over them as tensor operations:
//! the path every GPU takes (on the CPU, `model::attention`'s kernel over host pages is faster
//! and is the default; [`LoadOptions::tensor_attention`](super::LoadOptions) runs this one there
//! too, which is how the tests check it without a GPU).
//!
//! The layout is vLLM's paged one. A [`KvPool`] belongs to one loaded model and holds, per layer,
//! one key and one value tensor of `pages × PAGE` rows of `kv_heads × head_dim` values, on the
//! model's device; it grows (doubling, contents copied) when it runs out of pages. A
//! conversation's [`KvCache`](super::KvCache) holds a page table: reference-counted [`DevPage`]s,
//! shared between clones of the cache exactly as its host pages are, the partly filled last page
//! copied on the device when a cache that shares it writes into it. A page goes back to the
//! pool's free list when the last cache holding it drops it.
//!
//! One pass over a batch (one sequence's new tokens, or one token of each of several sequences)
//! costs a fixed number of device operations per layer whatever the batch size: the new keys and
//! values are scattered into their rows with one `scatter_set` each, every sequence's keys and
//! values are gathered into a padded `(batch, kv_heads, positions, head_dim)` block with one
//! `index_select` each, and the scores, the causal mask, the softmax and the value product are
//! batched matrix operations. Keys and values are rounded to f16 precision as the host cache
//! stores them (kept in f32 so that every device's products take them).

use std::sync::{Arc, Mutex, RwLock};

use candle_core::{DType, Device, Tensor};

use super::cache::PAGE;
use crate::llm::error::{LlmError, Result};

/// Pages a pool starts with when it is first used.
const FIRST_PAGES: usize = 64;

/// The key and value rows of every layer of one model, on its device.
pub(crate) struct KvPool {
    device: Device,
    layers: usize,
    /// Values per row: `kv_heads * head_dim`.
    width: usize,
    /// Per layer: keys and values, `(pages * PAGE, width)` f32. Passes read (and write their
    /// own rows) under the read lock; growing takes the write lock.
    tensors: RwLock<Vec<(Tensor, Tensor)>>,
    /// Free page ids and the number of pages the tensors hold.
    free: Mutex<FreeList>,
}

#[derive(Default)]
struct FreeList {
    free: Vec<u32>,
    pages: usize,
}

/// One page of a pool: `PAGE` positions of every layer. Dropping it frees it.
pub(crate) struct DevPage {
    id: u32,
    pool: Arc<KvPool>,
}

impl Drop for DevPage {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.free.push(self.id);
    }
}

impl std::fmt::Debug for DevPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevPage({})", self.id)
    }
}

impl DevPage {
    pub(crate) fn pool(&self) -> &Arc<KvPool> {
        &self.pool
    }

    /// The pool row of position `local` (`< PAGE`) of this page.
    pub(crate) fn row(&self, local: usize) -> u32 {
        self.id * PAGE as u32 + local as u32
    }
}

impl KvPool {
    pub(crate) fn new(device: &Device, layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        KvPool {
            device: device.clone(),
            layers,
            width: kv_heads * head_dim,
            tensors: RwLock::new(Vec::new()),
            free: Mutex::new(FreeList::default()),
        }
    }

    /// Bytes of keys and values one page holds.
    pub(crate) fn page_bytes(&self) -> usize {
        2 * self.layers * PAGE * self.width * std::mem::size_of::<f32>()
    }

    /// A free page, the pool grown if it has none.
    pub(crate) fn alloc(self: &Arc<Self>) -> Result<DevPage> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.free.is_empty() {
            self.grow(&mut free)?;
        }
        let id = free.free.pop().expect("a grown pool has free pages");
        Ok(DevPage {
            id,
            pool: self.clone(),
        })
    }

    /// Double the pages (at least [`FIRST_PAGES`]), copying what the old tensors hold.
    fn grow(&self, free: &mut FreeList) -> Result<()> {
        let old = free.pages;
        let pages = (2 * old).max(FIRST_PAGES);
        if pages * PAGE > u32::MAX as usize {
            return Err(LlmError::InvalidRequest(format!(
                "key/value pool of {pages} pages is past what 32-bit rows address"
            )));
        }
        let mut tensors = self.tensors.write().unwrap_or_else(|e| e.into_inner());
        let fresh = |old: Option<&Tensor>| -> Result<Tensor> {
            let t = Tensor::zeros((pages * PAGE, self.width), DType::F32, &self.device)
                .map_err(|e| oom(e, pages * PAGE * self.width * 4 * 2 * self.layers))?;
            if let Some(old) = old {
                t.slice_set(old, 0, 0)?;
            }
            Ok(t)
        };
        let grown = (0..self.layers)
            .map(|l| {
                let old = tensors.get(l);
                Ok((fresh(old.map(|p| &p.0))?, fresh(old.map(|p| &p.1))?))
            })
            .collect::<Result<Vec<_>>>()?;
        *tensors = grown;
        // Low ids first out of the free list.
        free.free.extend((old as u32..pages as u32).rev());
        free.pages = pages;
        Ok(())
    }

    /// Copy every layer's keys and values of page `from` into page `to`.
    pub(crate) fn copy_page(&self, from: &DevPage, to: &DevPage) -> Result<()> {
        let tensors = self.tensors.read().unwrap_or_else(|e| e.into_inner());
        for (k, v) in tensors.iter() {
            for t in [k, v] {
                let src = t.narrow(0, from.id as usize * PAGE, PAGE)?.copy()?;
                t.slice_set(&src, 0, to.id as usize * PAGE)?;
            }
        }
        Ok(())
    }

    /// The tensors for one pass, under the read lock (the pool does not grow meanwhile).
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Tensor, Tensor)>> {
        self.tensors.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn oom(e: candle_core::Error, bytes: usize) -> LlmError {
    LlmError::InvalidRequest(format!(
        "could not allocate {} MiB of key/value pages on the device: {e}",
        bytes >> 20
    ))
}

/// What a pass over several sequences needs, uploaded once and used by every layer.
pub(crate) struct PassRows {
    /// `(n, width)`: the pool row each new token's keys and values go to, repeated across the
    /// row (the index shape `scatter_set` takes).
    write: Tensor,
    /// `(batch * visible)`: the pool row of each position of each sequence, padded past a
    /// sequence's end with row 0 (masked).
    gather: Tensor,
    /// `(batch, 1, t, visible)` additive causal mask; `None` when nothing is masked.
    mask: Option<Tensor>,
    batch: usize,
    t: usize,
    visible: usize,
}

/// One sequence of a pass: its pool rows for positions `0..pos0 + t` (the new ones included),
/// and where its new tokens start.
pub(crate) struct SeqRows {
    pub rows: Vec<u32>,
    pub pos0: usize,
}

impl PassRows {
    /// `seqs` all run `t` new tokens (one sequence's tokens, or one token of each sequence).
    pub(crate) fn new(
        seqs: &[SeqRows],
        t: usize,
        width: usize,
        device: &Device,
    ) -> Result<PassRows> {
        let batch = seqs.len();
        let visible = seqs.iter().map(|s| s.rows.len()).max().unwrap_or(0);
        let mut write = Vec::with_capacity(batch * t);
        let mut gather = Vec::with_capacity(batch * visible);
        for s in seqs {
            write.extend_from_slice(&s.rows[s.pos0..s.pos0 + t]);
            gather.extend_from_slice(&s.rows);
            gather.extend(std::iter::repeat_n(0, visible - s.rows.len()));
        }
        let masked = t > 1 || seqs.iter().any(|s| s.rows.len() < visible);
        let mask = if masked {
            let mut m = vec![0f32; batch * t * visible];
            for (b, s) in seqs.iter().enumerate() {
                for i in 0..t {
                    let row = &mut m[(b * t + i) * visible..][..visible];
                    // Position p is visible to new token i when p <= pos0 + i.
                    for v in &mut row[s.pos0 + i + 1..] {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            Some(Tensor::from_vec(m, (batch, 1, t, visible), device)?)
        } else {
            None
        };
        let n = write.len();
        let write = Tensor::from_vec(write, (n, 1), device)?
            .broadcast_as((n, width))?
            .contiguous()?;
        let gather = Tensor::from_vec(gather, batch * visible, device)?;
        Ok(PassRows {
            write,
            gather,
            mask,
            batch,
            t,
            visible,
        })
    }
}

/// Geometry of the heads for [`attend`].
pub(crate) struct HeadShape {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f64,
    /// Round the softmax weights to f16 precision before the value product.
    pub f16_weights: bool,
}

/// Write the new keys and values of one layer into the pool, then attend: `q` is
/// `(n_head, n, head_dim)`, `k` `(n_kv, n, head_dim)` and `v` `(n, n_kv * head_dim)` for the
/// `n = batch * t` new rows, sequence after sequence; returns `(n, n_head * head_dim)`.
pub(crate) fn attend(
    (keys, values): &(Tensor, Tensor),
    rows: &PassRows,
    heads: &HeadShape,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<Tensor> {
    let (nh, nkv, hd) = (heads.n_head, heads.n_kv, heads.head_dim);
    let (b, t, len) = (rows.batch, rows.t, rows.visible);
    let n = b * t;
    let n_rep = nh / nkv;
    let width = nkv * hd;
    // The cache holds f16 values, as llama.cpp's does.
    let k = f16_round(&k.transpose(0, 1)?.reshape((n, width))?)?;
    let v = f16_round(&v.reshape((n, width))?)?;
    keys.scatter_set(&rows.write, &k, 0)?;
    values.scatter_set(&rows.write, &v, 0)?;
    let gathered = |t_: &Tensor| -> Result<Tensor> {
        Ok(t_
            .index_select(&rows.gather, 0)?
            .reshape((b, len, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (kg, vg) = (gathered(keys)?, gathered(values)?);
    // (n_head, n, hd) -> (b, n_kv, n_rep * t, hd), head h = g * n_rep + r.
    let q = q
        .reshape((nkv, n_rep, b, t, hd))?
        .permute((2, 0, 1, 3, 4))?
        .contiguous()?
        .reshape((b, nkv, n_rep * t, hd))?;
    let scores = (q.matmul(&kg.t()?)? * heads.scale)?;
    let scores = scores.reshape((b, nh, t, len))?;
    let scores = match &rows.mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    let weights = if heads.f16_weights {
        f16_round(&weights)?
    } else {
        weights
    };
    let out = weights.reshape((b, nkv, n_rep * t, len))?.matmul(&vg)?;
    // (b, n_kv, n_rep, t, hd) -> (b, t, n_kv, n_rep, hd) -> (n, n_head * hd).
    Ok(out
        .reshape((b, nkv, n_rep, t, hd))?
        .permute((0, 3, 1, 2, 4))?
        .contiguous()?
        .reshape((n, nh * hd))?)
}

/// Round to f16 precision (values stay f32): llama.cpp converts Q to f16 for its products (and
/// keeps K and V in f16, as the cache does); matching that keeps greedy decoding on the same
/// path as the reference engine without paying for f16 arithmetic.
pub(crate) fn f16_round(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}
