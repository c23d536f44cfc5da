//! Per-conversation key/value cache: f16 keys and values in shared pages.
//!
//! One `KvCache` belongs to one conversation and outlives its turns: it remembers the tokens it
//! holds, so a new turn whose prompt extends (or shares a prefix with) what is cached only runs
//! the new tokens. Positions live in pages of [`PAGE`] positions (every layer's keys and values
//! for those positions). Pages are reference-counted: cloning a cache — a conversation started
//! from a primed prefix, such as the agent's policy and tools — shares every page, and a page
//! is copied only when a cache that shares it writes into it (its partly filled last page, at
//! most `PAGE - 1` positions). Many conversations cloned from one prefix therefore hold the
//! prefix's keys and values once.
//!
//! Keys and values are stored as f16, as llama.cpp stores them; the attention that reads them
//! (`model::attention`) works in f32.
//!
//! A model that runs attention on its device (`model::pool`) keeps the keys and values there
//! instead: the cache then holds a page table of the device pool's pages, shared between clones
//! and copied on write the same way.

use std::sync::Arc;

use half::f16;

use super::pool::{DevPage, KvPool};
use crate::llm::error::Result;

/// Positions per page.
pub const PAGE: usize = 16;

/// Shape of the cached tensors: set by the first write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Geometry {
    /// Elements of one layer and head within a page.
    fn head_block(&self) -> usize {
        PAGE * self.head_dim
    }

    /// Elements of keys (or values) in one page.
    fn page_elems(&self) -> usize {
        self.layers * self.kv_heads * self.head_block()
    }

    fn offset(&self, layer: usize, head: usize) -> usize {
        (layer * self.kv_heads + head) * self.head_block()
    }
}

/// Keys and values of [`PAGE`] positions for every layer, laid out
/// `[layer][kv head][position][head_dim]`.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    k: Vec<f16>,
    v: Vec<f16>,
}

/// Keys and values for every layer, plus the token ids they stand for.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pages: Vec<Arc<Page>>,
    /// Pages in a device pool, for a model that attends on its device (then `pages` is empty).
    dev: Vec<Arc<DevPage>>,
    geometry: Option<Geometry>,
    tokens: Vec<u32>,
    /// Positions filled in every layer.
    len: usize,
}

impl KvCache {
    /// An empty cache (pages are allocated on first use).
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

    /// Forget everything.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keep only the first `len` positions (pages past them are released).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        self.len = len;
        self.tokens.truncate(len);
        self.pages.truncate(len.div_ceil(PAGE));
        self.dev.truncate(len.div_ceil(PAGE));
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

    /// Bytes of keys and values this cache's pages hold (shared pages counted in full).
    pub fn kv_bytes(&self) -> usize {
        self.pages.len() * self.page_bytes()
            + self
                .dev
                .first()
                .map_or(0, |p| self.dev.len() * p.pool().page_bytes())
    }

    /// Bytes of keys and values held by `caches` together, each shared page counted once.
    pub fn distinct_kv_bytes<'a>(caches: impl IntoIterator<Item = &'a KvCache>) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for c in caches {
            for p in &c.pages {
                if seen.insert(Arc::as_ptr(p) as usize) {
                    bytes += c.page_bytes();
                }
            }
            for p in &c.dev {
                if seen.insert(Arc::as_ptr(p) as usize) {
                    bytes += p.pool().page_bytes();
                }
            }
        }
        bytes
    }

    fn page_bytes(&self) -> usize {
        self.geometry
            .map_or(0, |g| 2 * g.page_elems() * std::mem::size_of::<f16>())
    }

    pub(crate) fn record(&mut self, tokens: &[u32]) {
        debug_assert_eq!(self.tokens.len() + tokens.len(), self.len);
        self.tokens.extend_from_slice(tokens);
    }

    /// First use, or a cache moved to another model (or between host and device): nothing
    /// cached can be kept.
    fn reset(&mut self, geometry: Geometry) {
        self.pages.clear();
        self.dev.clear();
        self.len = 0;
        self.tokens.clear();
        self.geometry = Some(geometry);
    }

    /// Make room for `t` positions after the current end: pages are allocated, and every page
    /// those positions fall in is made this cache's own (copied if another cache shares it).
    pub(crate) fn reserve(&mut self, t: usize, geometry: Geometry) {
        if self.geometry != Some(geometry) || !self.dev.is_empty() {
            self.reset(geometry);
        }
        let need = (self.len + t).div_ceil(PAGE);
        let elems = geometry.page_elems();
        while self.pages.len() < need {
            self.pages.push(Arc::new(Page {
                k: vec![f16::ZERO; elems],
                v: vec![f16::ZERO; elems],
            }));
        }
        for p in &mut self.pages[self.len / PAGE..need] {
            Arc::make_mut(p);
        }
    }

    /// [`reserve`](Self::reserve) in `pool`, a device pool: pages are allocated there, and a page
    /// the new positions fall in that another cache shares is copied on the device.
    pub(crate) fn reserve_in(
        &mut self,
        t: usize,
        geometry: Geometry,
        pool: &Arc<KvPool>,
    ) -> Result<()> {
        let same_pool = self.dev.first().is_none_or(|p| Arc::ptr_eq(p.pool(), pool));
        if self.geometry != Some(geometry) || !same_pool || !self.pages.is_empty() {
            self.reset(geometry);
        }
        let need = (self.len + t).div_ceil(PAGE);
        while self.dev.len() < need {
            self.dev.push(Arc::new(pool.alloc()?));
        }
        for p in &mut self.dev[self.len / PAGE..need] {
            if Arc::get_mut(p).is_none() {
                let own = pool.alloc()?;
                pool.copy_page(p, &own)?;
                *p = Arc::new(own);
            }
        }
        Ok(())
    }

    /// The device pool rows of positions `0..end` (`reserve_in` must have covered them).
    pub(crate) fn dev_rows(&self, end: usize) -> Vec<u32> {
        (0..end).map(|p| self.dev[p / PAGE].row(p % PAGE)).collect()
    }

    /// Write the keys and values of absolute position `pos` for `layer` (`n_kv_heads *
    /// head_dim` each, head after head). `reserve` must have covered `pos`.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let Some(g) = self.geometry else {
            unreachable!("write before reserve")
        };
        let page = Arc::get_mut(&mut self.pages[pos / PAGE]).expect("reserve made the page own");
        let (hd, local) = (g.head_dim, pos % PAGE);
        for h in 0..g.kv_heads {
            let at = g.offset(layer, h) + local * hd;
            for (dst, &src) in page.k[at..at + hd].iter_mut().zip(&k[h * hd..(h + 1) * hd]) {
                *dst = f16::from_f32(src);
            }
            for (dst, &src) in page.v[at..at + hd].iter_mut().zip(&v[h * hd..(h + 1) * hd]) {
                *dst = f16::from_f32(src);
            }
        }
    }

    /// Keys and values of `layer`, KV head `head`, in page `page`: `PAGE * head_dim` each.
    pub(crate) fn head(&self, layer: usize, head: usize, page: usize) -> (&[f16], &[f16]) {
        let g = self.geometry.expect("read before reserve");
        let at = g.offset(layer, head);
        let p = &self.pages[page];
        (&p.k[at..at + g.head_block()], &p.v[at..at + g.head_block()])
    }

    pub(crate) fn commit(&mut self, t: usize) {
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
    };

    fn filled(n: usize) -> KvCache {
        let mut c = KvCache::new();
        c.reserve(n, G);
        for pos in 0..n {
            for layer in 0..G.layers {
                let k = [pos as f32; 8];
                let v = [-(pos as f32); 8];
                c.write(layer, pos, &k, &v);
            }
        }
        c.commit(n);
        c.record(&(0..n as u32).collect::<Vec<_>>());
        c
    }

    #[test]
    fn reusable_prefix_leaves_one_token() {
        let c = filled(3);
        assert_eq!(c.reusable_prefix(&[0, 1, 2, 4]), 3);
        assert_eq!(c.reusable_prefix(&[0, 1, 2]), 2);
        assert_eq!(c.reusable_prefix(&[0, 9]), 1);
        assert_eq!(c.reusable_prefix(&[]), 0);
    }

    #[test]
    fn writes_land_in_their_page_and_head() {
        let c = filled(PAGE + 5);
        let (k, v) = c.head(1, 1, 1);
        assert_eq!(k[4 * 4].to_f32(), (PAGE + 4) as f32);
        assert_eq!(v[0].to_f32(), -(PAGE as f32));
        assert_eq!(c.kv_bytes(), 2 * 2 * G.page_elems() * 2);
    }

    #[test]
    fn clones_share_full_pages_and_copy_on_write() {
        let base = filled(2 * PAGE + 10);
        let mut a = base.clone();
        let mut b = base.clone();
        // Three caches, three pages each, all shared.
        assert_eq!(KvCache::distinct_kv_bytes([&base, &a, &b]), base.kv_bytes());
        for c in [&mut a, &mut b] {
            let pos = c.len();
            c.reserve(1, G);
            for layer in 0..G.layers {
                c.write(layer, pos, &[7.0; 8], &[7.0; 8]);
            }
            c.commit(1);
            c.record(&[99]);
        }
        // The partly filled last page was copied by each writer; the full ones stay shared.
        assert_eq!(
            KvCache::distinct_kv_bytes([&base, &a, &b]),
            base.kv_bytes() + 2 * base.kv_bytes() / 3
        );
        // The original does not see the clones' writes.
        let pos = 2 * PAGE + 10;
        assert_eq!(base.head(0, 0, 2).0[(pos % PAGE) * 4].to_f32(), 0.0);
        assert_eq!(a.head(0, 0, 2).0[(pos % PAGE) * 4].to_f32(), 7.0);
    }

    #[test]
    fn truncate_releases_pages() {
        let mut c = filled(3 * PAGE);
        c.truncate(PAGE + 1);
        assert_eq!(
            (c.len(), c.tokens().len(), c.kv_bytes()),
            (PAGE + 1, PAGE + 1, 2 * c.page_bytes())
        );
    }
}
