//! The 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) re-laid, once at load, as
//! tiles of 16 weight rows for the AVX-512 VNNI kernels: each 512-bit register holds one
//! 4-element lane of 16 rows, one `vpdpbusd` multiplies it by four activation quants
//! (broadcast), and each weight byte, once loaded, serves every activation row of a batch.
//!
//! Each output keeps llama.cpp's arithmetic exactly, as the row-major kernels of
//! [`super::blocks`] do: per block the exact integer dot product of each 4-element lane, then
//! per lane `acc[l] = fma(lane, d_w * d_x, acc[l])` in block order, then llama.cpp's horizontal
//! sum of the eight lanes (`hsum_float_8`), plus the `_1` formats' `sum m * s` in block order.
//! Here the eight lanes of one output sit in eight registers (16 outputs each) instead of one,
//! so results equal the row kernels' bit for bit — at any batch size, on either instruction
//! set (AVX2 machines keep the row kernels) — and greedy decoding still agrees with llama.cpp's
//! as before. Costs per block and activation row fall from an unpack, two `vpdpbusd`, a
//! subtraction, a conversion and a multiply-add per row to one `vpdpbusd`, conversion and
//! multiply-add per lane for 16 rows.
//!
//! Layout: pairs of blocks (`b = 2p, 2p + 1`), 64-byte aligned, read strictly front to back:
//! - one line of scales: block `2p`'s 16 f16 `d` (row order), then block `2p + 1`'s;
//! - `_1` formats: one line of minimums `m`, the same way;
//! - per block: for the 5-bit formats a line of fifth bits, `[row][4 bytes]`, bit `l` of byte
//!   `j` the fifth bit of element `4l + j`; then the quants: for Q8_0 eight lines (lane `l`:
//!   `[row][4 bytes]`, unsigned, `q + 128`), otherwise four lines (line `g`: `[row][4 bytes]`,
//!   byte `j` holding element `8g + j` in its low nibble and `8g + 4 + j` in its high one).
//!
//! Rows past `n` in the last tile are zero and never written out.

use super::blocks::{BlockKind, QK};
use super::pages::Pages;

/// Weight rows per tile: the f32 lanes of a 512-bit register.
pub(crate) const ROWS: usize = 16;

/// Where things are in a pair of blocks of one format.
#[derive(Clone, Copy)]
struct Layout {
    min: bool,
    five: bool,
    q8: bool,
    /// Scale (and minimum) lines.
    head: usize,
    /// Bytes of one block after the head: fifth bits, then quants.
    body: usize,
    pair: usize,
}

impl Layout {
    const fn new(min: bool, five: bool, q8: bool) -> Layout {
        let head = if min { 128 } else { 64 };
        let body = if five { 64 } else { 0 } + if q8 { 512 } else { 256 };
        Layout {
            min,
            five,
            q8,
            head,
            body,
            pair: head + 2 * body,
        }
    }

    const fn of(kind: BlockKind) -> Layout {
        match kind {
            BlockKind::Q4_0 => Layout::new(false, false, false),
            BlockKind::Q4_1 => Layout::new(true, false, false),
            BlockKind::Q5_0 => Layout::new(false, true, false),
            BlockKind::Q5_1 => Layout::new(true, true, false),
            BlockKind::Q8_0 => Layout::new(false, false, true),
        }
    }

    /// Offset of block `b`'s fifth bits (or its quants, for formats without them).
    const fn body_at(&self, b: usize) -> usize {
        (b / 2) * self.pair + self.head + (b % 2) * self.body
    }

    /// Offset of block `b`'s 16 scales.
    const fn d_at(&self, b: usize) -> usize {
        (b / 2) * self.pair + 32 * (b % 2)
    }
}

/// A `(n, k)` block-format matrix as tiles.
pub(crate) struct BTiles {
    kind: BlockKind,
    n: usize,
    k: usize,
    lines: Pages,
}

/// Per-lane sums an activation row adds to every dot product of an offset format:
/// `-offset * sum(x[4l..4l + 4])` for each 4-element lane (empty for the `_1` formats).
pub(crate) fn lane_offsets(kind: BlockKind, q: &[i8]) -> Vec<i32> {
    let off = kind.offset() as i32;
    if off == 0 {
        return Vec::new();
    }
    q.chunks_exact(4)
        .map(|c| -off * c.iter().map(|&v| v as i32).sum::<i32>())
        .collect()
}

impl BTiles {
    /// Whether this CPU runs the tile kernels (AVX-512 VNNI).
    pub(crate) fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            super::blocks::isa() == Some(super::blocks::x86::Isa::Vnni)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Re-lay `n` rows of `k` values stored as GGML blocks (`data`, row-major), tiles in
    /// parallel on the kernels' pool.
    pub(crate) fn pack(kind: BlockKind, n: usize, k: usize, data: &[u8]) -> BTiles {
        let lay = Layout::of(kind);
        let nb = k / QK;
        let tile_bytes = nb.div_ceil(2) * lay.pair;
        let mut lines = Pages::zeroed(n.div_ceil(ROWS) * tile_bytes);
        lines.fill_chunks(tile_bytes, |t, bytes| {
            for r in 0..ROWS.min(n - t * ROWS) {
                pack_row(kind, nb, data, t * ROWS + r, r, bytes);
            }
        });
        BTiles { kind, n, k, lines }
    }

    pub(crate) fn tiles(&self) -> usize {
        self.n.div_ceil(ROWS)
    }

    /// Outputs of tiles `t_lo..t_hi` (columns `16 t_lo..min(16 t_hi, n)`) for every activation
    /// row (`q`, `d`, `s` per row as [`super::blocks`] quantizes them, `offsets` from
    /// [`lane_offsets`]) into `out` (`rows x width`, `width` the number of those columns).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn rows_into(&self, xs: &[XRef], t_lo: usize, t_hi: usize, out: &mut [f32]) {
        let lo = t_lo * ROWS;
        let width = (t_hi * ROWS).min(self.n) - lo;
        let nb = self.k / QK;
        let lay = Layout::of(self.kind);
        assert!(t_hi <= self.tiles() && out.len() >= xs.len() * width && Self::supported());
        assert!(xs.iter().all(|x| x.q.len() >= self.k
            && x.d.len() >= nb
            && (!lay.min || x.s.len() >= nb)
            && (self.kind.offset() == 0.0 || x.offsets.len() >= nb * 8)));
        let tile_bytes = nb.div_ceil(2) * lay.pair;
        let mut lanes = [[0f32; ROWS]; x86::GROUP];
        let groups = xs.len().div_ceil(x86::GROUP);
        // With several passes over a tile (more rows than a group), the next tile is fetched
        // from memory while the later passes compute from cache, a share of its lines per
        // block; one pass streams, and the hardware prefetchers follow it.
        let ahead = if groups > 1 {
            (tile_bytes / 64).div_ceil(groups * nb.max(1))
        } else {
            0
        };
        for t in t_lo..t_hi {
            let cols = ((t + 1) * ROWS).min(self.n) - t * ROWS;
            // SAFETY: tile `t` spans `tile_bytes` bytes of `lines`.
            let tile = unsafe { self.lines.as_ptr().add(t * tile_bytes) };
            for (g, rows) in xs.chunks(x86::GROUP).enumerate() {
                let fetch = x86::Ahead {
                    from: tile.wrapping_add(tile_bytes + 64 * ahead * nb * g),
                    end: if t + 1 < t_hi {
                        tile.wrapping_add(2 * tile_bytes)
                    } else {
                        tile
                    },
                    lines: ahead,
                };
                // SAFETY: the CPU runs AVX-512 VNNI (asserted); sizes checked above.
                unsafe { x86::tile(self.kind, tile, nb, rows, &fetch, &mut lanes) };
                for (a, lane) in lanes.iter().take(rows.len()).enumerate() {
                    let at = (g * x86::GROUP + a) * width + t * ROWS - lo;
                    out[at..at + cols].copy_from_slice(&lane[..cols]);
                }
            }
        }
    }
}

/// One activation row as the tile kernels read it.
pub(crate) struct XRef<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) s: &'a [f32],
    pub(crate) offsets: &'a [i32],
}

/// Weight row `j` of `data` into row `r` of its tile's bytes.
fn pack_row(kind: BlockKind, nb: usize, data: &[u8], j: usize, r: usize, tile: &mut [u8]) {
    let stored = kind.block_bytes();
    let lay = Layout::of(kind);
    for b in 0..nb {
        let blk = &data[(j * nb + b) * stored..(j * nb + b + 1) * stored];
        let u = super::blocks::unpack(kind, blk);
        let d = lay.d_at(b) + 2 * r;
        tile[d..d + 2].copy_from_slice(&blk[0..2]);
        if lay.min {
            tile[d + 64..d + 66].copy_from_slice(&blk[2..4]);
        }
        let mut at = lay.body_at(b);
        if lay.five {
            for i in 0..4 {
                tile[at + 4 * r + i] = (0..8)
                    .map(|l| ((u[4 * l + i] >> 4) & 1) << l)
                    .fold(0, |a, v| a | v);
            }
            at += 64;
        }
        if lay.q8 {
            for l in 0..8 {
                for i in 0..4 {
                    tile[at + 64 * l + 4 * r + i] = u[4 * l + i];
                }
            }
        } else {
            for g in 0..4 {
                for i in 0..4 {
                    tile[at + 64 * g + 4 * r + i] =
                        (u[8 * g + i] & 0xF) | ((u[8 * g + 4 + i] & 0xF) << 4);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // lanes and rows index several arrays in step
mod x86 {
    use std::arch::x86_64::*;

    use super::super::blocks::BlockKind;
    use super::super::blocks::x86::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, offset};
    use super::{Layout, QK, ROWS, XRef};

    /// Activation rows per pass over a tile: each holds eight accumulators, and the 32
    /// registers must keep three rows' worth plus the weights.
    pub(super) const GROUP: usize = 3;

    const fn layout(k: u8) -> Layout {
        match k {
            Q4_0 => Layout::of(BlockKind::Q4_0),
            Q4_1 => Layout::of(BlockKind::Q4_1),
            Q5_0 => Layout::of(BlockKind::Q5_0),
            Q5_1 => Layout::of(BlockKind::Q5_1),
            _ => Layout::of(BlockKind::Q8_0),
        }
    }

    /// Lines to prefetch while a pass runs: `lines` per block from `from`, none at `end` or
    /// past it.
    pub(super) struct Ahead {
        pub(super) from: *const u8,
        pub(super) end: *const u8,
        pub(super) lines: usize,
    }

    /// # Safety
    /// The CPU supports AVX-512 VNNI; `tile` points to `nb` blocks of `kind`'s tile layout;
    /// each row of `xs` holds `nb` blocks (and their sums and offsets).
    pub(super) unsafe fn tile(
        kind: BlockKind,
        tile: *const u8,
        nb: usize,
        xs: &[XRef],
        ahead: &Ahead,
        out: &mut [[f32; ROWS]; GROUP],
    ) {
        macro_rules! rows {
            ($k:ident) => {
                // SAFETY: the caller's promises.
                unsafe {
                    match xs.len() {
                        1 => kernel::<$k, 1>(tile, nb, xs, ahead, out),
                        2 => kernel::<$k, 2>(tile, nb, xs, ahead, out),
                        _ => kernel::<$k, 3>(tile, nb, xs, ahead, out),
                    }
                }
            };
        }
        match kind {
            BlockKind::Q4_0 => rows!(Q4_0),
            BlockKind::Q4_1 => rows!(Q4_1),
            BlockKind::Q5_0 => rows!(Q5_0),
            BlockKind::Q5_1 => rows!(Q5_1),
            BlockKind::Q8_0 => rows!(Q8_0),
        }
    }

    /// 0x10 in each byte whose bit `l` is set in `h`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn fifth(h: __m512i, l: usize) -> __m512i {
        {
            let moved = match l {
                0 => _mm512_slli_epi16::<4>(h),
                1 => _mm512_slli_epi16::<3>(h),
                2 => _mm512_slli_epi16::<2>(h),
                3 => _mm512_slli_epi16::<1>(h),
                4 => h,
                5 => _mm512_srli_epi16::<1>(h),
                6 => _mm512_srli_epi16::<2>(h),
                _ => _mm512_srli_epi16::<3>(h),
            };
            _mm512_and_si512(moved, _mm512_set1_epi8(0x10))
        }
    }

    /// # Safety
    /// As [`tile`], with `A == xs.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")]
    unsafe fn kernel<const K: u8, const A: usize>(
        tile: *const u8,
        nb: usize,
        xs: &[XRef],
        ahead: &Ahead,
        out: &mut [[f32; ROWS]; GROUP],
    ) {
        let lay = layout(K);
        let xs = &xs[..A];
        let low = _mm512_set1_epi8(0x0F);
        // SAFETY: every offset lies within the tile's `nb` blocks (the caller's promise); the
        // activation reads within each row's `nb` blocks.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 8]; A];
            let mut mins = [_mm512_setzero_ps(); A];
            for b in 0..nb {
                for i in 0..ahead.lines {
                    let p = ahead.from.wrapping_add(64 * (b * ahead.lines + i));
                    if p < ahead.end {
                        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    }
                }
                if b % 2 == 0 {
                    let p = tile.add(lay.d_at(b));
                    for line in 0..lay.head / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(p.add(64 * line) as *const i8);
                    }
                }
                let dw =
                    _mm512_cvtph_ps(_mm256_load_si256(tile.add(lay.d_at(b)) as *const __m256i));
                let mut scale = [_mm512_setzero_ps(); A];
                for a in 0..A {
                    scale[a] = _mm512_mul_ps(dw, _mm512_set1_ps(*xs[a].d.get_unchecked(b)));
                }
                if lay.min {
                    let m = _mm512_cvtph_ps(_mm256_load_si256(
                        tile.add(lay.d_at(b) + 64) as *const __m256i
                    ));
                    for a in 0..A {
                        let s = _mm512_set1_ps(*xs[a].s.get_unchecked(b));
                        mins[a] = _mm512_add_ps(mins[a], _mm512_mul_ps(m, s));
                    }
                }
                let mut q = tile.add(lay.body_at(b));
                let h = if lay.five {
                    let h = _mm512_load_si512(q as *const __m512i);
                    q = q.add(64);
                    h
                } else {
                    _mm512_setzero_si512()
                };
                for l in 0..8 {
                    let w = if lay.q8 {
                        _mm512_load_si512(q.add(64 * l) as *const __m512i)
                    } else {
                        let bits = _mm512_load_si512(q.add(64 * (l / 2)) as *const __m512i);
                        let nib = if l % 2 == 0 {
                            _mm512_and_si512(bits, low)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(bits), low)
                        };
                        if lay.five {
                            _mm512_or_si512(nib, fifth(h, l))
                        } else {
                            nib
                        }
                    };
                    for a in 0..A {
                        let x =
                            (xs[a].q.as_ptr().add(b * QK + 4 * l) as *const i32).read_unaligned();
                        let init = if offset::<K>() == 0 {
                            _mm512_setzero_si512()
                        } else {
                            _mm512_set1_epi32(*xs[a].offsets.get_unchecked(b * 8 + l))
                        };
                        let dot = _mm512_dpbusd_epi32(init, w, _mm512_set1_epi32(x));
                        acc[a][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale[a], acc[a][l]);
                    }
                }
            }
            for a in 0..A {
                // llama.cpp's `hsum_float_8`, lane-wise over 16 outputs.
                let v = &acc[a];
                let s4 = [
                    _mm512_add_ps(v[0], v[4]),
                    _mm512_add_ps(v[1], v[5]),
                    _mm512_add_ps(v[2], v[6]),
                    _mm512_add_ps(v[3], v[7]),
                ];
                let s2 = [_mm512_add_ps(s4[0], s4[2]), _mm512_add_ps(s4[1], s4[3])];
                let mut r = _mm512_add_ps(s2[0], s2[1]);
                if offset::<K>() == 0 {
                    r = _mm512_add_ps(r, mins[a]);
                }
                _mm512_storeu_ps(out[a].as_mut_ptr(), r);
            }
        }
    }
}
