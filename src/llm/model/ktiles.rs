//! Q4_K and Q6_K weights re-laid, once at load, as tiles of 16 weight rows, so that one
//! `vpdpbusd` multiplies four activation values (broadcast) into 16 weight rows at once and
//! each weight byte, once loaded, serves every activation row of a batch.
//!
//! The row-major kernels of [`super::kquants`] do the work of one weight row per step: per 64
//! weights and activation row a load, a `vpmaddubsw` and a `vpdpwssd`, then a horizontal sum per
//! output. In a tile the 16 lanes of a register are 16 outputs, so there is no horizontal sum,
//! the quants need no per-row shuffles, and the integer work per activation row falls to one
//! `vpdpbusd` per 64 products plus one multiply per sub-block scale. What makes batched decode
//! and prefill fast is that: the same integer and float operations run per output whether a
//! row is alone or one of many, so results are bit-identical at any batch size, and between
//! the AVX-512 VNNI, AVX2 and portable code (`vpdpbusd` is emulated exactly with
//! `vpmaddubsw` + `vpmaddwd`: unsigned quants of at most 63 never saturate).
//!
//! Per output the arithmetic is GGML's Q8_K scheme in exact integers — per super-block
//! `isum = sum_s scale_s * dot_s` (Q4_K also `msum = sum_s min_s * xsum_s`; Q6_K's `-32` offset
//! is folded into each `dot_s` as `-32 * xsum_s`) — then, per super-block in order,
//! `acc = fma(isum, d * xd, acc)` and for Q4_K `acc = fma(-msum, dmin * xd, acc)`. That is the
//! order llama.cpp's repacked CPU kernels use too, not its row-major `vec_dot` (which splits
//! each super-block over eight float lanes first); the two differ in the last bits.
//!
//! Layout of one tile's super-block (16 rows, 256 values each), 64-byte aligned:
//! - Q4_K, 2,432 bytes: scales `[sub-block 0..8][row 0..16]` u8; minimums the same; `d[row]`
//!   and `dmin[row]` as f32; quants `[group 0..32][row][4 bytes]`, byte `j` of a group holding
//!   value `8g + j` in its low nibble and `8g + 4 + j` in its high one.
//! - Q6_K, 3,392 bytes: scales `[sub-block 0..16][row]` i8; `d[row]` f32; then per sub-block
//!   (16 values) 192 bytes: the low four bits of its values in two lines laid out as Q4_K's
//!   groups, then their high two bits `[row][4 bytes]`, byte `j` holding those of values
//!   `16s + j`, `+ 4`, `+ 8` and `+ 12` in bits 0-1, 2-3, 4-5 and 6-7.
//!
//! Rows past `n` in the last tile are zero and never written out.

use super::kquants::{KKind, Q8KRow};
use super::pages::Pages;

/// Weight rows per tile: the i32 lanes of a 512-bit register.
pub(crate) const ROWS: usize = 16;
const QK_K: usize = 256;
/// Activation rows run together per pass over a tile's super-blocks.
const GROUP: usize = 8;

// Offsets in a tile's super-block: the scales first, so that the block is read front to back.
const Q4_BYTES: usize = 2432;
const Q4_SC: usize = 0;
const Q4_MIN: usize = 128;
const Q4_D: usize = 256;
const Q4_DMIN: usize = 320;
const Q4_QS: usize = 384;
const Q6_BYTES: usize = 3392;
const Q6_SC: usize = 0;
const Q6_D: usize = 256;
const Q6_QS: usize = 320;

/// Offset of the low four bits of Q6_K group `g` (values `8g..8g + 8`): each sub-block's two
/// such lines are followed by its high bits.
const fn q6_low(g: usize) -> usize {
    Q6_QS + 192 * (g / 2) + 64 * (g % 2)
}

/// Offset of the high two bits of Q6_K sub-block `s`.
const fn q6_high(s: usize) -> usize {
    Q6_QS + 192 * s + 128
}
/// 64-byte lines before a super-block's quants. The kernels touch them first, so that memory
/// is read strictly front to back: read out of order (the scales as each sub-block needs them),
/// the hardware prefetchers lost the stream and one core read about half as fast.
const Q4_HEAD: usize = Q4_QS / 64;
const Q6_HEAD: usize = Q6_QS / 64;

/// A `(n, k)` K-quant matrix as tiles.
pub(crate) struct Tiles {
    kind: KKind,
    n: usize,
    k: usize,
    lines: Pages,
}

/// An activation row as Q8_K plus the per-sub-block sums the tile kernels add in.
pub(crate) struct XRow<'a> {
    q: &'a [i8],
    d: &'a [f32],
    /// Q4_K: the sum of each 32 quants; Q6_K: `-32 *` the sum of each 16.
    sums: Vec<i32>,
}

impl<'a> XRow<'a> {
    pub(crate) fn new(kind: KKind, x: &'a Q8KRow) -> Self {
        let sums = match kind {
            KKind::Q4K => x
                .bsums
                .chunks_exact(2)
                .map(|p| p[0] as i32 + p[1] as i32)
                .collect(),
            KKind::Q6K => x.bsums.iter().map(|&s| -32 * s as i32).collect(),
        };
        XRow {
            q: &x.q,
            d: &x.d,
            sums,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

impl Tiles {
    fn block_bytes(kind: KKind) -> usize {
        match kind {
            KKind::Q4K => Q4_BYTES,
            KKind::Q6K => Q6_BYTES,
        }
    }

    /// Re-lay `n` rows of `k` values stored as GGML super-blocks (`data`, row-major), tiles in
    /// parallel on the kernels' pool.
    pub(crate) fn pack(kind: KKind, n: usize, k: usize, data: &[u8]) -> Tiles {
        let nb = k / QK_K;
        let bb = Self::block_bytes(kind);
        let tiles = n.div_ceil(ROWS);
        let mut lines = Pages::zeroed(tiles * nb * bb);
        lines.fill_chunks(nb * bb, |t, bytes| {
            for r in 0..ROWS.min(n - t * ROWS) {
                pack_row(kind, nb, data, t * ROWS + r, r, bytes);
            }
        });
        Tiles { kind, n, k, lines }
    }

    #[cfg(test)]
    fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn tiles(&self) -> usize {
        self.n.div_ceil(ROWS)
    }

    fn tile_ptr(&self, t: usize) -> *const u8 {
        let nb = self.k / QK_K;
        // SAFETY (for callers' reads): tile `t` spans `nb` super-blocks of `block_bytes`.
        unsafe {
            self.lines
                .as_ptr()
                .add(t * nb * Self::block_bytes(self.kind))
        }
    }

    /// Outputs of tiles `t_lo..t_hi` (columns `16 t_lo..min(16 t_hi, n)`) for every row of
    /// `xs` into `out` (`xs.len() x width`, `width` the number of those columns).
    pub(crate) fn rows_into(&self, xs: &[XRow], t_lo: usize, t_hi: usize, out: &mut [f32]) {
        let lo = t_lo * ROWS;
        let width = (t_hi * ROWS).min(self.n) - lo;
        assert!(t_hi <= self.tiles() && out.len() >= xs.len() * width);
        let nb = self.k / QK_K;
        assert!(xs.iter().all(|x| x.q.len() >= self.k
            && x.d.len() >= nb
            && x.sums.len()
                >= nb
                    * match self.kind {
                        KKind::Q4K => 8,
                        KKind::Q6K => 16,
                    }));
        let mut lanes = [[0f32; ROWS]; GROUP];
        for t in t_lo..t_hi {
            let cols = ((t + 1) * ROWS).min(self.n) - t * ROWS;
            for (g, rows) in xs.chunks(GROUP).enumerate() {
                self.tile(t, rows, &mut lanes);
                for (a, lane) in lanes.iter().take(rows.len()).enumerate() {
                    let at = (g * GROUP + a) * width + t * ROWS - lo;
                    out[at..at + cols].copy_from_slice(&lane[..cols]);
                }
            }
        }
    }

    /// Tile `t` against up to [`GROUP`] rows.
    fn tile(&self, t: usize, xs: &[XRow], out: &mut [[f32; ROWS]; GROUP]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = super::blocks::isa() {
            // SAFETY: `isa()` reports what this CPU supports; `rows_into` checked the sizes.
            unsafe { x86::tile(isa, self.kind, self.tile_ptr(t), self.k / QK_K, xs, out) };
            return;
        }
        for (a, x) in xs.iter().enumerate() {
            out[a] = self.tile_scalar(t, x);
        }
    }

    /// Portable version of one tile against one row, the same operations in the same order.
    fn tile_scalar(&self, t: usize, x: &XRow) -> [f32; ROWS] {
        let nb = self.k / QK_K;
        let bb = Self::block_bytes(self.kind);
        // SAFETY: tile `t` spans `nb * bb` bytes of `lines`.
        let tile = unsafe { std::slice::from_raw_parts(self.tile_ptr(t), nb * bb) };
        let f32_at = |p: &[u8], at: usize| f32::from_le_bytes(p[at..at + 4].try_into().unwrap());
        let mut acc = [0f32; ROWS];
        for b in 0..nb {
            let p = &tile[b * bb..(b + 1) * bb];
            let xq = &x.q[b * QK_K..(b + 1) * QK_K];
            let xd = x.d[b];
            for (r, acc) in acc.iter_mut().enumerate() {
                match self.kind {
                    KKind::Q4K => {
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for s in 0..8 {
                            let mut dot = 0i32;
                            for g in 4 * s..4 * s + 4 {
                                for i in 0..4 {
                                    let w = p[Q4_QS + g * 64 + r * 4 + i];
                                    dot += (w & 0xF) as i32 * xq[8 * g + i] as i32;
                                    dot += (w >> 4) as i32 * xq[8 * g + 4 + i] as i32;
                                }
                            }
                            isum += p[Q4_SC + s * ROWS + r] as i32 * dot;
                            msum += p[Q4_MIN + s * ROWS + r] as i32 * x.sums[b * 8 + s];
                        }
                        *acc = (-(msum as f32)).mul_add(f32_at(p, Q4_DMIN + 4 * r) * xd, *acc);
                        *acc = (isum as f32).mul_add(f32_at(p, Q4_D + 4 * r) * xd, *acc);
                    }
                    KKind::Q6K => {
                        let mut isum = 0i32;
                        for s in 0..16 {
                            let mut dot = x.sums[b * 16 + s];
                            for g in 4 * s..4 * s + 4 {
                                for i in 0..4 {
                                    let e = 4 * g + i;
                                    let nib =
                                        p[q6_low(e / 8) + r * 4 + e % 4] >> (4 * (e % 8 / 4)) & 0xF;
                                    let high = (p[q6_high(s) + r * 4 + i] >> (2 * (g % 4))) & 3;
                                    dot += (nib | high << 4) as i32 * xq[e] as i32;
                                }
                            }
                            isum += p[Q6_SC + s * ROWS + r] as i8 as i32 * dot;
                        }
                        *acc = (isum as f32).mul_add(f32_at(p, Q6_D + 4 * r) * xd, *acc);
                    }
                }
            }
        }
        acc
    }
}

/// Weight row `j` of `data` into lane `r` of its tile's bytes.
fn pack_row(kind: KKind, nb: usize, data: &[u8], j: usize, r: usize, tile: &mut [u8]) {
    let stored = kind.block_bytes();
    let bb = Tiles::block_bytes(kind);
    for b in 0..nb {
        let blk = &data[(j * nb + b) * stored..(j * nb + b + 1) * stored];
        let out = &mut tile[b * bb..(b + 1) * bb];
        let u = super::kquants::unpack(kind, blk);
        match kind {
            KKind::Q4K => {
                for g in 0..32 {
                    for i in 0..4 {
                        out[Q4_QS + g * 64 + r * 4 + i] = u[8 * g + i] | (u[8 * g + 4 + i] << 4);
                    }
                }
                let (sc, m) = super::kquants::q4k_scales(blk);
                for s in 0..8 {
                    out[Q4_SC + s * ROWS + r] = sc[s];
                    out[Q4_MIN + s * ROWS + r] = m[s];
                }
                out[Q4_D + 4 * r..Q4_D + 4 * r + 4].copy_from_slice(&f16_at(blk, 0).to_le_bytes());
                out[Q4_DMIN + 4 * r..Q4_DMIN + 4 * r + 4]
                    .copy_from_slice(&f16_at(blk, 2).to_le_bytes());
            }
            KKind::Q6K => {
                for g in 0..32 {
                    for i in 0..4 {
                        out[q6_low(g) + r * 4 + i] =
                            (u[8 * g + i] & 0xF) | ((u[8 * g + 4 + i] & 0xF) << 4);
                    }
                }
                for p in 0..16 {
                    for i in 0..4 {
                        out[q6_high(p) + r * 4 + i] = (0..4)
                            .map(|q| (u[16 * p + 4 * q + i] >> 4) << (2 * q))
                            .fold(0, |a, b| a | b);
                    }
                }
                for s in 0..16 {
                    out[Q6_SC + s * ROWS + r] = blk[192 + s];
                }
                out[Q6_D + 4 * r..Q6_D + 4 * r + 4]
                    .copy_from_slice(&f16_at(blk, 208).to_le_bytes());
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! One kernel body per format, instantiated over 512-bit registers (AVX-512 VNNI) and over
    //! pairs of 256-bit ones (AVX2): each `V` is 16 i32 lanes, each `F` 16 f32 lanes.

    use std::arch::x86_64::*;

    use super::super::blocks::x86::Isa;
    use super::{
        GROUP, KKind, Q4_BYTES, Q4_D, Q4_DMIN, Q4_HEAD, Q4_MIN, Q4_QS, Q4_SC, Q6_BYTES, Q6_D,
        Q6_HEAD, Q6_SC, QK_K, ROWS, XRow, q6_high, q6_low,
    };

    /// # Safety
    /// The CPU supports `isa`; `tile` points to `nb` super-blocks of `kind`'s tile layout; each
    /// row of `xs` holds `nb` super-blocks of quants, scales and sums.
    pub(super) unsafe fn tile(
        isa: Isa,
        kind: KKind,
        tile: *const u8,
        nb: usize,
        xs: &[XRow],
        out: &mut [[f32; ROWS]; GROUP],
    ) {
        // `C` independent sums per row, so that few rows still fill the pipeline; the integer
        // sums are exact, so how they are split does not change a bit.
        macro_rules! go {
            ($m:ident, $f:ident) => {
                // SAFETY: the caller's promises.
                unsafe {
                    match xs.len() {
                        1 => $m::$f::<1, 1>(tile, nb, xs, out),
                        2 => $m::$f::<2, 2>(tile, nb, xs, out),
                        3 => $m::$f::<3, 2>(tile, nb, xs, out),
                        4 => $m::$f::<4, 2>(tile, nb, xs, out),
                        5 => $m::$f::<5, 1>(tile, nb, xs, out),
                        6 => $m::$f::<6, 1>(tile, nb, xs, out),
                        7 => $m::$f::<7, 1>(tile, nb, xs, out),
                        _ => $m::$f::<8, 1>(tile, nb, xs, out),
                    }
                }
            };
        }
        match (isa, kind) {
            (Isa::Vnni, KKind::Q4K) => go!(vnni, q4k),
            (Isa::Vnni, KKind::Q6K) => go!(vnni, q6k),
            (Isa::Avx2, KKind::Q4K) => go!(avx2, q4k),
            (Isa::Avx2, KKind::Q6K) => go!(avx2, q6k),
        }
    }

    /// Four activation quants at `p` as one i32.
    #[inline(always)]
    unsafe fn quad(p: *const i8) -> i32 {
        // SAFETY: the caller's promise of four readable bytes.
        unsafe { (p as *const i32).read_unaligned() }
    }

    macro_rules! kernels {
        ($features:literal) => {
            /// # Safety
            /// As [`super::tile`], with `A == xs.len()` rows.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4k<const A: usize, const C: usize>(
                tile: *const u8,
                nb: usize,
                xs: &[XRow],
                out: &mut [[f32; ROWS]; GROUP],
            ) {
                let xs = &xs[..A];
                // SAFETY: as documented.
                unsafe {
                    let mut acc = [zero_f(); A];
                    for b in 0..nb {
                        let p = tile.add(b * Q4_BYTES);
                        for line in 0..Q4_HEAD {
                            prefetch(p.add(64 * line));
                        }
                        let dmin = load_f(p.add(Q4_DMIN));
                        for a in 0..A {
                            let mut msum = zero();
                            for s in 0..8 {
                                let xsum = splat(*xs[a].sums.get_unchecked(b * 8 + s));
                                msum = mul_add(msum, widen_u8(p.add(Q4_MIN + ROWS * s)), xsum);
                            }
                            acc[a] = fma(acc[a], msum, dmin, *xs[a].d.get_unchecked(b), true);
                        }
                        let mut isum = [zero(); A];
                        for s in 0..8 {
                            let mut dot = [[zero(); C]; A];
                            for gg in 0..4 {
                                let g = 4 * s + gg;
                                let bits = load(p.add(Q4_QS + 64 * g));
                                let (lo, hi) = (low4(bits), high4(bits));
                                for a in 0..A {
                                    let x = xs[a].q.as_ptr().add(b * QK_K + 8 * g);
                                    let c = (2 * gg) % C;
                                    dot[a][c] = dpbusd(dot[a][c], lo, quad(x));
                                    let c = (2 * gg + 1) % C;
                                    dot[a][c] = dpbusd(dot[a][c], hi, quad(x.add(4)));
                                }
                            }
                            let sc = widen_u8(p.add(Q4_SC + ROWS * s));
                            for a in 0..A {
                                let mut d = dot[a][0];
                                for c in 1..C {
                                    d = add(d, dot[a][c]);
                                }
                                isum[a] = mul_add(isum[a], d, sc);
                            }
                        }
                        let d = load_f(p.add(Q4_D));
                        for a in 0..A {
                            acc[a] = fma(acc[a], isum[a], d, *xs[a].d.get_unchecked(b), false);
                        }
                    }
                    for a in 0..A {
                        store(acc[a], &mut out[a]);
                    }
                }
            }

            /// As [`q4k`], for Q6_K.
            ///
            /// # Safety
            /// As [`super::tile`], with `A == xs.len()` rows.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6k<const A: usize, const C: usize>(
                tile: *const u8,
                nb: usize,
                xs: &[XRow],
                out: &mut [[f32; ROWS]; GROUP],
            ) {
                let xs = &xs[..A];
                // SAFETY: as documented.
                unsafe {
                    let mut acc = [zero_f(); A];
                    for b in 0..nb {
                        let p = tile.add(b * Q6_BYTES);
                        for line in 0..Q6_HEAD {
                            prefetch(p.add(64 * line));
                        }
                        let mut isum = [zero(); A];
                        for s in 0..16 {
                            let mut dot = [[zero(); C]; A];
                            for a in 0..A {
                                dot[a][0] = splat(*xs[a].sums.get_unchecked(b * 16 + s));
                            }
                            let low = [load(p.add(q6_low(2 * s))), load(p.add(q6_low(2 * s + 1)))];
                            let qh = load(p.add(q6_high(s)));
                            for gg in 0..4 {
                                let g = 4 * s + gg;
                                let nib = if gg % 2 == 0 {
                                    low4(low[gg / 2])
                                } else {
                                    high4(low[gg / 2])
                                };
                                let w = six(nib, qh, gg);
                                for a in 0..A {
                                    let x = xs[a].q.as_ptr().add(b * QK_K + 4 * g);
                                    let c = gg % C;
                                    dot[a][c] = dpbusd(dot[a][c], w, quad(x));
                                }
                            }
                            let sc = widen_i8(p.add(Q6_SC + ROWS * s));
                            for a in 0..A {
                                let mut d = dot[a][0];
                                for c in 1..C {
                                    d = add(d, dot[a][c]);
                                }
                                isum[a] = mul_add(isum[a], d, sc);
                            }
                        }
                        let d = load_f(p.add(Q6_D));
                        for a in 0..A {
                            acc[a] = fma(acc[a], isum[a], d, *xs[a].d.get_unchecked(b), false);
                        }
                    }
                    for a in 0..A {
                        store(acc[a], &mut out[a]);
                    }
                }
            }
        };
    }

    mod vnni {
        use super::*;

        type V = __m512i;
        type F = __m512;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn zero() -> V {
            _mm512_setzero_si512()
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn zero_f() -> F {
            _mm512_setzero_ps()
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn splat(v: i32) -> V {
            _mm512_set1_epi32(v)
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn add(a: V, b: V) -> V {
            _mm512_add_epi32(a, b)
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }

        /// 64 aligned bytes.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller's promise.
            unsafe { _mm512_load_si512(p as *const __m512i) }
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn load_f(p: *const u8) -> F {
            // SAFETY: 64 aligned bytes.
            unsafe { _mm512_load_ps(p as *const f32) }
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn low4(v: V) -> V {
            _mm512_and_si512(v, _mm512_set1_epi8(0xF))
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn high4(v: V) -> V {
            _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0xF))
        }

        /// `nib | (bits 2q..2q + 2 of each byte of qh) << 4`: a Q6_K quant from its two parts.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn six(nib: V, qh: V, q: usize) -> V {
            let h = match q {
                0 => _mm512_slli_epi16(qh, 4),
                1 => _mm512_slli_epi16(qh, 2),
                2 => qh,
                _ => _mm512_srli_epi16(qh, 2),
            };
            _mm512_or_si512(nib, _mm512_and_si512(h, _mm512_set1_epi8(0x30)))
        }

        /// 16 bytes at `p` zero-extended to 16 i32 lanes.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn widen_u8(p: *const u8) -> V {
            // SAFETY: 16 readable bytes.
            _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) })
        }

        /// 16 bytes at `p` sign-extended to 16 i32 lanes.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn widen_i8(p: *const u8) -> V {
            // SAFETY: 16 readable bytes.
            _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) })
        }

        /// `acc + sum of four u8 * i8 products` per lane.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn dpbusd(acc: V, w: V, x: i32) -> V {
            _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x))
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn mul_add(acc: V, a: V, b: V) -> V {
            _mm512_add_epi32(acc, _mm512_mullo_epi32(a, b))
        }

        /// `acc ± cvt(i) * (d * xd)`, fused, per lane.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn fma(acc: F, i: V, d: F, xd: f32, negate: bool) -> F {
            let s = _mm512_mul_ps(d, _mm512_set1_ps(xd));
            let v = _mm512_cvtepi32_ps(i);
            if negate {
                _mm512_fnmadd_ps(v, s, acc)
            } else {
                _mm512_fmadd_ps(v, s, acc)
            }
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn store(v: F, out: &mut [f32; ROWS]) {
            // SAFETY: 16 writable floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) }
        }

        kernels!("avx512f,avx512bw,avx512vnni");
    }

    mod avx2 {
        //! `vpdpbusd` as `vpmaddubsw` + `vpmaddwd`: exact for unsigned quants below 64, whose
        //! pair sums never saturate 16 bits.
        use super::*;

        #[derive(Clone, Copy)]
        struct V([__m256i; 2]);
        #[derive(Clone, Copy)]
        struct F([__m256; 2]);

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn zero() -> V {
            V([_mm256_setzero_si256(); 2])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn zero_f() -> F {
            F([_mm256_setzero_ps(); 2])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn splat(v: i32) -> V {
            V([_mm256_set1_epi32(v); 2])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn add(a: V, b: V) -> V {
            V([
                _mm256_add_epi32(a.0[0], b.0[0]),
                _mm256_add_epi32(a.0[1], b.0[1]),
            ])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn prefetch(p: *const u8) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }

        /// 64 aligned bytes.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const u8) -> V {
            // SAFETY: the caller's promise.
            unsafe {
                V([
                    _mm256_load_si256(p as *const __m256i),
                    _mm256_load_si256(p.add(32) as *const __m256i),
                ])
            }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load_f(p: *const u8) -> F {
            // SAFETY: 64 aligned bytes.
            unsafe {
                F([
                    _mm256_load_ps(p as *const f32),
                    _mm256_load_ps(p.add(32) as *const f32),
                ])
            }
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn low4(v: V) -> V {
            let m4 = _mm256_set1_epi8(0xF);
            V([_mm256_and_si256(v.0[0], m4), _mm256_and_si256(v.0[1], m4)])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn high4(v: V) -> V {
            let m4 = _mm256_set1_epi8(0xF);
            V([
                _mm256_and_si256(_mm256_srli_epi16(v.0[0], 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(v.0[1], 4), m4),
            ])
        }

        /// `nib | (bits 2q..2q + 2 of each byte of qh) << 4`: a Q6_K quant from its two parts.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn six(nib: V, qh: V, q: usize) -> V {
            let m = _mm256_set1_epi8(0x30);
            V(std::array::from_fn(|h| {
                let v = qh.0[h];
                let v = match q {
                    0 => _mm256_slli_epi16(v, 4),
                    1 => _mm256_slli_epi16(v, 2),
                    2 => v,
                    _ => _mm256_srli_epi16(v, 2),
                };
                _mm256_or_si256(nib.0[h], _mm256_and_si256(v, m))
            }))
        }

        /// 16 bytes at `p` zero-extended to 16 i32 lanes.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn widen_u8(p: *const u8) -> V {
            // SAFETY: 16 readable bytes.
            unsafe {
                V([
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i)),
                ])
            }
        }

        /// 16 bytes at `p` sign-extended to 16 i32 lanes.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn widen_i8(p: *const u8) -> V {
            // SAFETY: 16 readable bytes.
            unsafe {
                V([
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)),
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8) as *const __m128i)),
                ])
            }
        }

        /// `acc + sum of four u8 * i8 products` per lane.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn dpbusd(acc: V, w: V, x: i32) -> V {
            let x = _mm256_set1_epi32(x);
            let ones = _mm256_set1_epi16(1);
            let f = |a: __m256i, w: __m256i| {
                _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones))
            };
            V([f(acc.0[0], w.0[0]), f(acc.0[1], w.0[1])])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn mul_add(acc: V, a: V, b: V) -> V {
            V([
                _mm256_add_epi32(acc.0[0], _mm256_mullo_epi32(a.0[0], b.0[0])),
                _mm256_add_epi32(acc.0[1], _mm256_mullo_epi32(a.0[1], b.0[1])),
            ])
        }

        /// `acc ± cvt(i) * (d * xd)`, fused, per lane.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn fma(acc: F, i: V, d: F, xd: f32, negate: bool) -> F {
            let xd = _mm256_set1_ps(xd);
            let f = |acc: __m256, i: __m256i, d: __m256| {
                let s = _mm256_mul_ps(d, xd);
                let v = _mm256_cvtepi32_ps(i);
                if negate {
                    _mm256_fnmadd_ps(v, s, acc)
                } else {
                    _mm256_fmadd_ps(v, s, acc)
                }
            };
            F([f(acc.0[0], i.0[0], d.0[0]), f(acc.0[1], i.0[1], d.0[1])])
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(v: F, out: &mut [f32; ROWS]) {
            // SAFETY: 16 writable floats.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), v.0[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(8), v.0[1]);
            }
        }

        kernels!("avx2,fma");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::super::kquants::quantize_row_q8k;
    use super::*;

    fn weights(n: usize, k: usize) -> Tensor {
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                let v = ((i * 7919 + 104729) % 1009) as f32 / 504.0 - 1.0;
                v * if i % 37 == 0 { 3.0 } else { 0.3 }
            })
            .collect();
        Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap()
    }

    fn activations(rows: usize, k: usize) -> Vec<Vec<f32>> {
        (0..rows)
            .map(|r| {
                (0..k)
                    .map(|i| {
                        let i = r * k + i;
                        ((i * 104729 % 997) as f32 / 498.0 - 1.0)
                            * if i.is_multiple_of(11) { 4.0 } else { 1.0 }
                    })
                    .collect()
            })
            .collect()
    }

    fn kind(t: GgmlDType) -> KKind {
        match t {
            GgmlDType::Q4K => KKind::Q4K,
            _ => KKind::Q6K,
        }
    }

    /// `rows x n` through `rows_into`, tiles split at `split`.
    fn run(tiles: &Tiles, q8: &[Q8KRow], split: usize) -> Vec<f32> {
        let xr: Vec<XRow> = q8.iter().map(|r| XRow::new(tiles.kind, r)).collect();
        let n = tiles.n();
        let mut out = vec![0f32; xr.len() * n];
        let cut = (split * ROWS).min(n);
        let mut left = vec![0f32; xr.len() * cut];
        let mut right = vec![0f32; xr.len() * (n - cut)];
        tiles.rows_into(&xr, 0, split, &mut left);
        tiles.rows_into(&xr, split, tiles.tiles(), &mut right);
        for r in 0..xr.len() {
            out[r * n..r * n + cut].copy_from_slice(&left[r * cut..(r + 1) * cut]);
            out[r * n + cut..(r + 1) * n]
                .copy_from_slice(&right[r * (n - cut)..(r + 1) * (n - cut)]);
        }
        out
    }

    /// The tiled product against dequantize-then-f32 matmul, every row alone against all rows
    /// together (bit for bit), and the SIMD kernels against the portable code (bit for bit).
    #[test]
    fn tiles_match_the_dequantized_product_bit_for_bit_at_any_batch() {
        let (n, k) = (37, 768);
        let xs = activations(11, k);
        let q8: Vec<Q8KRow> = xs.iter().map(|r| quantize_row_q8k(r)).collect();
        let x = Tensor::from_vec(xs.concat(), (11, k), &Device::Cpu).unwrap();
        for t in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = QTensor::quantize(&weights(n, k), t).unwrap();
            let want = x
                .matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let tiles = Tiles::pack(kind(t), n, k, &q.data().unwrap());
            let got = run(&tiles, &q8, 1);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 0.02 * scale, "{t:?}: {a} vs {b}");
            }
            for i in 0..11 {
                let one = run(&tiles, &q8[i..i + 1], 2);
                assert_eq!(one[..], got[i * n..(i + 1) * n], "{t:?} row {i}");
            }
            let xr: Vec<XRow> = q8.iter().map(|r| XRow::new(tiles.kind, r)).collect();
            for tile in 0..tiles.tiles() {
                for (i, x) in xr.iter().enumerate() {
                    let lanes = tiles.tile_scalar(tile, x);
                    let cols = ((tile + 1) * ROWS).min(n) - tile * ROWS;
                    assert_eq!(
                        lanes[..cols],
                        got[i * n + tile * ROWS..i * n + tile * ROWS + cols],
                        "{t:?} tile {tile} row {i}: portable code"
                    );
                }
            }
        }
    }

    /// Both instruction sets form the same integer lanes and float operations.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_vnni_tiles_agree_bit_for_bit() {
        use super::super::blocks::x86 as isa;
        if isa::detect() != Some(isa::Isa::Vnni) {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU to compare AVX2 with");
            return;
        }
        let (n, k) = (40, 1024);
        let xs = activations(9, k);
        let q8: Vec<Q8KRow> = xs.iter().map(|r| quantize_row_q8k(r)).collect();
        for t in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = Arc::new(QTensor::quantize(&weights(n, k), t).unwrap());
            let tiles = Tiles::pack(kind(t), n, k, &q.data().unwrap());
            let xr: Vec<XRow> = q8.iter().map(|r| XRow::new(tiles.kind, r)).collect();
            for tile in 0..tiles.tiles() {
                for rows in [&xr[..], &xr[..1], &xr[3..8]] {
                    let mut out = [[[0f32; ROWS]; GROUP]; 2];
                    for (which, out) in [isa::Isa::Avx2, isa::Isa::Vnni].into_iter().zip(&mut out) {
                        for (c, chunk) in rows.chunks(GROUP).enumerate() {
                            let mut lanes = [[0f32; ROWS]; GROUP];
                            // SAFETY: VNNI was detected, which implies AVX2 here.
                            unsafe {
                                x86::tile(
                                    which,
                                    tiles.kind,
                                    tiles.tile_ptr(tile),
                                    k / QK_K,
                                    chunk,
                                    &mut lanes,
                                )
                            };
                            if c == 0 {
                                *out = lanes;
                            }
                        }
                    }
                    assert_eq!(out[0], out[1], "{t:?} tile {tile}");
                }
            }
        }
    }
}
