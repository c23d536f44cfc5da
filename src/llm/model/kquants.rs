//! Linear layers over GGML's K-quant super-block formats (Q4_K, Q6_K), kept as stored in the
//! GGUF file, with AVX-512 VNNI and AVX2 kernels.
//!
//! candle runs these formats through kernels that pick a different path for one activation row
//! than for several (and, for Q4_K, expand each super-block's scales to f32 per row, a third
//! more bytes to stream per decode step). A batched decode needs each row's result to be the
//! same whatever rows run beside it, and gains only if a weight block, once loaded, serves every
//! row. Here each super-block is decoded once and used for up to [`TILE`] activation rows, and
//! every output is accumulated in exactly the order llama.cpp's AVX2 `vec_dot_q{4,6}_K_q8_K`
//! uses: activations quantized to Q8_K (8 bits per 256-block plus per-16 sums), exact integer
//! lanes per super-block, one fused multiply-add per super-block, llama.cpp's horizontal sum.
//! The VNNI build fuses the i16 multiply-add into `vpdpwssd`; its integer lanes are the same, so
//! the two instruction sets agree bit for bit.
//!
//! By default the weights are re-laid at load as 16-row tiles ([`super::ktiles`]), faster for
//! one row and for many, whose per-output order is that of llama.cpp's repacked kernels; the
//! row-major kernels here serve `APIGEN_MT_KQUANT=rows` (and candle's kernels past eight rows
//! there), kept for comparing the two.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};

use super::blocks::{by_columns, by_tiles, input_rows, output};
use super::ktiles::{self, Tiles, XRow};
use crate::llm::error::{LlmError, Result};

/// Elements per super-block.
const QK_K: usize = 256;
/// Activation rows sharing each decoded weight super-block.
const TILE: usize = 8;

/// The K-quant formats handled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KKind {
    Q4K,
    Q6K,
}

impl KKind {
    fn from_ggml(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4K => Some(KKind::Q4K),
            GgmlDType::Q6K => Some(KKind::Q6K),
            _ => None,
        }
    }

    /// Bytes per super-block as stored.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            KKind::Q4K => 144,
            KKind::Q6K => 210,
        }
    }
}

/// A `(n, k)` weight matrix in a K-quant format: the tensor as loaded, run by our kernels for
/// up to [`TILE`] rows and for rows of different sequences, and by candle's tiled product for a
/// longer stretch of one sequence's prompt (its packed layout is faster there; both read the
/// same stored bytes).
pub(crate) struct KLinear {
    kind: KKind,
    n: usize,
    k: usize,
    imp: Imp,
}

/// How a [`KLinear`] holds its weights: as tiles (the stored tensor is let go), or as stored,
/// for the row-major kernels and candle's.
enum Imp {
    Tiles(Tiles),
    Rows {
        tensor: Arc<QTensor>,
        candle: QMatMul,
    },
}

/// Which kernels run the K-quant products.
fn use_tiles() -> bool {
    // `APIGEN_MT_KQUANT=rows` keeps the row-major kernels (and candle's past eight rows), for
    // comparing the two.
    static TILES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TILES.get_or_init(|| std::env::var("APIGEN_MT_KQUANT").as_deref() != Ok("rows"))
}

/// The stored super-blocks of a [`KLinear`], row-major, as the kernels read them.
pub(crate) struct KView<'a> {
    kind: KKind,
    n: usize,
    k: usize,
    data: &'a [u8],
}

/// One activation row as GGML's Q8_K.
pub(crate) struct Q8KRow {
    pub(super) q: Vec<i8>,
    /// Scale per super-block.
    pub(super) d: Vec<f32>,
    /// Sum of each 16 consecutive quants.
    pub(super) bsums: Vec<i16>,
    /// `32 * (q[2i] + q[2i + 1])`: the Q6_K offset's share of each i16 lane, as llama.cpp's
    /// `maddubs(32, q8)` forms it per weight row, formed here once per activation row.
    pairs32: Vec<i16>,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

impl KLinear {
    /// Take a 2-D quantized CPU tensor of a supported format; `None` for other formats or
    /// shapes.
    pub(crate) fn from_arc(t: &Arc<QTensor>) -> Result<Option<Self>> {
        Self::from_arc_as(t, use_tiles())
    }

    /// As [`Self::from_arc`], as tiles or as stored, as asked.
    fn from_arc_as(t: &Arc<QTensor>, tiles: bool) -> Result<Option<Self>> {
        let Some(kind) = KKind::from_ggml(t.dtype()) else {
            return Ok(None);
        };
        let (n, k) = t.shape().dims2()?;
        if k % QK_K != 0 || !t.device().is_cpu() {
            return Ok(None);
        }
        let len = t.data()?.len();
        if len != n * k / QK_K * kind.block_bytes() {
            return Err(LlmError::Unsupported(format!(
                "{kind:?} tensor of {len} bytes for shape ({n}, {k})"
            )));
        }
        let imp = if tiles {
            Imp::Tiles(Tiles::pack(kind, n, k, &t.data()?))
        } else {
            Imp::Rows {
                candle: QMatMul::from_arc(t.clone())?,
                tensor: t.clone(),
            }
        };
        Ok(Some(KLinear { kind, n, k, imp }))
    }

    fn view<'a>(&self, data: &'a [u8]) -> KView<'a> {
        KView {
            kind: self.kind,
            n: self.n,
            k: self.k,
            data,
        }
    }

    /// `x (.., k) -> (.., n)` for one sequence's rows.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / self.k.max(1);
        match &self.imp {
            Imp::Rows { candle, .. } if rows > TILE => Ok(candle.forward(x)?),
            _ => self.forward_rows(x),
        }
    }

    /// `x (.., k) -> (.., n)` on our kernels: every row's result is the same whatever the other
    /// rows are.
    pub(crate) fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        let (xs, lead) = input_rows(x, self.k)?;
        let rows: Vec<Q8KRow> = xs.chunks_exact(self.k).map(quantize_row_q8k).collect();
        let out = match &self.imp {
            Imp::Tiles(tiles) => {
                let xr: Vec<XRow> = rows.iter().map(|r| XRow::new(self.kind, r)).collect();
                by_tiles(self.n, xr.len(), ktiles::ROWS, |t_lo, t_hi, part| {
                    tiles.rows_into(&xr, t_lo, t_hi, part)
                })?
            }
            Imp::Rows { tensor, .. } => {
                let data = tensor.data()?;
                let view = self.view(&data);
                by_columns(self.n, rows.len(), 1, |lo, hi, part| {
                    view.rows_into(&rows, lo, hi, part)
                })?
            }
        };
        output(out, lead, self.n)
    }

    /// The stored tensor, when kept.
    #[cfg(test)]
    fn stored(&self) -> &QTensor {
        match &self.imp {
            Imp::Rows { tensor, .. } => tensor,
            Imp::Tiles(_) => panic!("a tiled KLinear keeps no stored tensor"),
        }
    }
}

impl KView<'_> {
    /// Output columns `lo..hi` for every activation row into `out` (`rows x (hi - lo)`).
    fn rows_into(&self, rows: &[Q8KRow], lo: usize, hi: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = super::blocks::isa() {
            // SAFETY: `isa()` reports what this CPU supports.
            unsafe { x86::rows_into(isa, self, lo, hi, rows, out) };
            return;
        }
        self.rows_scalar(rows, lo, hi, out)
    }

    /// Portable version of `rows_into` (slow; the SIMD kernels are tested against it).
    fn rows_scalar(&self, rows: &[Q8KRow], lo: usize, hi: usize, out: &mut [f32]) {
        let w = hi - lo;
        for j in lo..hi {
            for (r, x) in rows.iter().enumerate() {
                out[r * w + (j - lo)] = self.dot_scalar(j, x);
            }
        }
    }

    fn row_bytes(&self) -> usize {
        self.k / QK_K * self.kind.block_bytes()
    }

    /// Weight row `j` against `x`, super-block by super-block in plain arithmetic.
    fn dot_scalar(&self, j: usize, x: &Q8KRow) -> f32 {
        let bb = self.kind.block_bytes();
        let row = &self.data[j * self.row_bytes()..(j + 1) * self.row_bytes()];
        let mut total = 0f32;
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let q8 = &x.q[b * QK_K..(b + 1) * QK_K];
            let w = unpack(self.kind, blk);
            match self.kind {
                KKind::Q4K => {
                    let (sc, m) = q4k_scales(blk);
                    let mut sumi = 0i32;
                    let mut summ = 0i32;
                    for s in 0..8 {
                        let dot: i32 = (0..32)
                            .map(|i| w[s * 32 + i] as i32 * q8[s * 32 + i] as i32)
                            .sum();
                        sumi += sc[s] as i32 * dot;
                        summ += m[s] as i32
                            * (x.bsums[b * 16 + 2 * s] as i32 + x.bsums[b * 16 + 2 * s + 1] as i32);
                    }
                    total += x.d[b] * f16_at(blk, 0) * sumi as f32
                        - x.d[b] * f16_at(blk, 2) * summ as f32;
                }
                KKind::Q6K => {
                    let mut sumi = 0i32;
                    for s in 0..16 {
                        let dot: i32 = (0..16)
                            .map(|i| (w[s * 16 + i] as i32 - 32) * q8[s * 16 + i] as i32)
                            .sum();
                        sumi += blk[192 + s] as i8 as i32 * dot;
                    }
                    total += x.d[b] * f16_at(blk, 208) * sumi as f32;
                }
            }
        }
        total
    }
}

/// The 8 six-bit scales and 8 six-bit minimums of a Q4_K super-block (`get_scale_min_k4`).
pub(super) fn q4k_scales(blk: &[u8]) -> ([u8; 8], [u8; 8]) {
    let q = &blk[4..16];
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            m[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            m[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, m)
}

/// The 256 unsigned quants of a super-block in element order (Q4_K: 0..15, Q6_K: 0..63).
pub(super) fn unpack(kind: KKind, blk: &[u8]) -> [u8; QK_K] {
    let mut u = [0u8; QK_K];
    match kind {
        KKind::Q4K => {
            let qs = &blk[16..144];
            for c in 0..4 {
                for l in 0..32 {
                    u[c * 64 + l] = qs[c * 32 + l] & 0xF;
                    u[c * 64 + 32 + l] = qs[c * 32 + l] >> 4;
                }
            }
        }
        KKind::Q6K => {
            let (ql, qh) = (&blk[0..128], &blk[128..192]);
            for h in 0..2 {
                let (ql, qh) = (&ql[h * 64..], &qh[h * 32..]);
                let y = &mut u[h * 128..];
                for l in 0..32 {
                    y[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
    }
    u
}

/// GGML's `quantize_row_q8_K`: per 256-block the value of largest magnitude maps to -127,
/// rounding to nearest, ties to even.
pub(super) fn quantize_row_q8k(x: &[f32]) -> Q8KRow {
    let nb = x.len() / QK_K;
    let mut q = vec![0i8; x.len()];
    let mut d = vec![0f32; nb];
    let mut bsums = vec![0i16; nb * 16];
    for b in 0..nb {
        let xs = &x[b * QK_K..(b + 1) * QK_K];
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            continue;
        }
        let iscale = -127.0 / max;
        let qb = &mut q[b * QK_K..(b + 1) * QK_K];
        for (o, &v) in qb.iter_mut().zip(xs) {
            // Round to nearest, ties to even (`round_ties_even`, which calls `rintf` without
            // SSE4.1): adding and taking away 1.5 * 2^23 does it exactly below 2^22.
            const MAGIC: f32 = 12_582_912.0;
            *o = (((iscale * v) + MAGIC - MAGIC) as i32).min(127) as i8;
        }
        for (s, chunk) in qb.chunks_exact(16).enumerate() {
            bsums[b * 16 + s] = chunk.iter().map(|&v| v as i16).sum();
        }
        d[b] = 1.0 / iscale;
    }
    let pairs32 = q
        .chunks_exact(2)
        .map(|p| 32 * (p[0] as i16 + p[1] as i16))
        .collect();
    Q8KRow {
        q,
        d,
        bsums,
        pairs32,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! One kernel per format, instantiated for AVX-512 VNNI and for AVX2.

    use std::arch::x86_64::*;

    use super::super::blocks::x86::{Isa, hsum};
    use super::{KKind, KView, Q8KRow, QK_K, TILE};

    /// Bytes ahead of the current super-block to prefetch when streaming a row.
    const PREFETCH_AHEAD: usize = 2048;

    /// Shuffles that copy i16 lane `i` (both its bytes) to every i16 lane of a 128-bit half.
    const I16_LANE: [[u8; 32]; 8] = {
        let mut t = [[0u8; 32]; 8];
        let mut i = 0;
        while i < 8 {
            let mut b = 0;
            while b < 32 {
                t[i][b] = (2 * i + b % 2) as u8;
                b += 1;
            }
            i += 1;
        }
        t
    };

    /// Shuffles that spread bytes `2i` and `2i + 1` over the low and high 8 bytes.
    const BYTE_PAIR: [[u8; 16]; 8] = {
        let mut t = [[0u8; 16]; 8];
        let mut i = 0;
        while i < 8 {
            let mut b = 0;
            while b < 16 {
                t[i][b] = (2 * i + b / 8) as u8;
                b += 1;
            }
            i += 1;
        }
        t
    };

    /// i16 lane `i` of `v` (whose two halves are equal) in every lane
    /// (`get_scale_shuffle_k4`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn broadcast_i16(v: __m256i, i: usize) -> __m256i {
        // SAFETY: a 32-byte table row.
        _mm256_shuffle_epi8(v, unsafe {
            _mm256_loadu_si256(I16_LANE[i].as_ptr() as *const __m256i)
        })
    }

    /// Scales `2i` and `2i + 1` of 16 i8 scales, eight copies each, as 16 i16 lanes
    /// (`get_scale_shuffle`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn scale_pair(scales: __m128i, i: usize) -> __m256i {
        // SAFETY: a 16-byte table row.
        let pick = unsafe { _mm_loadu_si128(BYTE_PAIR[i].as_ptr() as *const __m128i) };
        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick))
    }

    /// `sum + a[2i] * b[2i] + a[2i+1] * b[2i+1]` per i32 lane, exact.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn madd_add_avx2(sum: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(sum, _mm256_madd_epi16(a, b))
    }

    /// The Q4_K scales (i16 lanes 0-7) and minimums (lanes 8-15) of the super-block at `blk`.
    ///
    /// # Safety
    /// `blk` points to a whole Q4_K super-block.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4k_scales_mins(blk: *const u8) -> __m256i {
        const KMASK1: u32 = 0x3f3f_3f3f;
        const KMASK2: u32 = 0x0f0f_0f0f;
        const KMASK3: u32 = 0x0303_0303;
        // SAFETY: the 12 scale bytes follow the two f16 scales.
        let u = unsafe {
            let p = blk.add(4) as *const u32;
            [
                p.read_unaligned(),
                p.add(1).read_unaligned(),
                p.add(2).read_unaligned(),
            ]
        };
        let u3 = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
        let u1 = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
        let u2 = u[1] & KMASK1;
        let u0 = u[0] & KMASK1;
        _mm256_cvtepu8_epi16(_mm_set_epi32(u3 as i32, u2 as i32, u1 as i32, u0 as i32))
    }

    macro_rules! kernels {
        ($module:ident, $features:literal, $madd_add:ident) => {
            pub(super) mod $module {
                use std::arch::x86_64::*;

                use super::super::{KView, Q8KRow, QK_K};
                use super::{
                    PREFETCH_AHEAD, broadcast_i16, hsum, q4k_scales_mins, scale_pair, $madd_add,
                };

                /// The f16 at `p`.
                ///
                /// # Safety
                /// `p` points to two readable bytes.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn f16(p: *const u8) -> f32 {
                    // SAFETY: the caller's promise.
                    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
                        (p as *const u16).read_unaligned()
                    } as i32)))
                }

                /// Weight row `j` of a Q4_K matrix against `A` activation rows: each
                /// super-block is decoded once and used for every row; each output keeps
                /// llama.cpp's accumulators and order, so any `A` gives the same bits.
                ///
                /// # Safety
                /// Row `j` and every row of `xs` hold `w.k` elements (checked by `rows_into`).
                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn q4k<const A: usize>(
                    w: &KView<'_>,
                    j: usize,
                    xs: &[Q8KRow],
                ) -> [f32; A] {
                    let nb = w.k / QK_K;
                    let xs = &xs[..A];
                    let q8: [*const i8; A] = std::array::from_fn(|a| xs[a].q.as_ptr());
                    // SAFETY: as documented; prefetches use wrapping arithmetic.
                    unsafe {
                        let row = w.data.as_ptr().add(j * nb * 144);
                        let m4 = _mm256_set1_epi8(0xF);
                        let mut acc = [_mm256_setzero_ps(); A];
                        let mut acc_m = [_mm_setzero_ps(); A];
                        for b in 0..nb {
                            let blk = row.add(b * 144);
                            for line in [0, 64, 128] {
                                _mm_prefetch::<_MM_HINT_T0>(
                                    blk.wrapping_add(PREFETCH_AHEAD + line) as *const i8,
                                );
                            }
                            let mins_scales = q4k_scales_mins(blk);
                            let sc128 = _mm256_castsi256_si128(mins_scales);
                            let scales = _mm256_set_m128i(sc128, sc128);
                            let mut sumi = [_mm256_setzero_si256(); A];
                            for c in 0..4 {
                                let bits =
                                    _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                                let lo = _mm256_and_si256(bits, m4);
                                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                                let (sl, sh) = (
                                    broadcast_i16(scales, 2 * c),
                                    broadcast_i16(scales, 2 * c + 1),
                                );
                                for a in 0..A {
                                    let y = q8[a].add(b * QK_K + 64 * c);
                                    let yl = _mm256_loadu_si256(y as *const __m256i);
                                    let yh = _mm256_loadu_si256(y.add(32) as *const __m256i);
                                    sumi[a] = $madd_add(sumi[a], sl, _mm256_maddubs_epi16(lo, yl));
                                    sumi[a] = $madd_add(sumi[a], sh, _mm256_maddubs_epi16(hi, yh));
                                }
                            }
                            let dw = f16(blk);
                            let dminw = f16(blk.add(2));
                            let mins = _mm256_extracti128_si256::<1>(mins_scales);
                            for a in 0..A {
                                let x = &xs[a];
                                let xd = *x.d.get_unchecked(b);
                                let d = xd * dw;
                                let dmin = -xd * dminw;
                                let q8sums = _mm256_loadu_si256(
                                    x.bsums.as_ptr().add(b * 16) as *const __m256i
                                );
                                let q8s = _mm_hadd_epi16(
                                    _mm256_castsi256_si128(q8sums),
                                    _mm256_extracti128_si256::<1>(q8sums),
                                );
                                let prod = _mm_madd_epi16(mins, q8s);
                                acc_m[a] = _mm_fmadd_ps(
                                    _mm_set1_ps(dmin),
                                    _mm_cvtepi32_ps(prod),
                                    acc_m[a],
                                );
                                acc[a] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(d),
                                    _mm256_cvtepi32_ps(sumi[a]),
                                    acc[a],
                                );
                            }
                        }
                        let mut out = [0f32; A];
                        for a in 0..A {
                            let m = _mm_add_ps(acc_m[a], _mm_movehl_ps(acc_m[a], acc_m[a]));
                            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                            out[a] = hsum(acc[a]) + _mm_cvtss_f32(m);
                        }
                        out
                    }
                }

                /// As [`q4k`], for Q6_K.
                ///
                /// # Safety
                /// As for [`q4k`].
                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn q6k<const A: usize>(
                    w: &KView<'_>,
                    j: usize,
                    xs: &[Q8KRow],
                ) -> [f32; A] {
                    let nb = w.k / QK_K;
                    let xs = &xs[..A];
                    let q8: [*const i8; A] = std::array::from_fn(|a| xs[a].q.as_ptr());
                    // SAFETY: as for `q4k`.
                    unsafe {
                        let row = w.data.as_ptr().add(j * nb * 210);
                        let m4 = _mm256_set1_epi8(0xF);
                        let m2 = _mm256_set1_epi8(3);
                        let m32s = _mm256_set1_epi8(32);
                        let mut acc = [_mm256_setzero_ps(); A];
                        for b in 0..nb {
                            let blk = row.add(b * 210);
                            for line in [0, 64, 128, 192] {
                                _mm_prefetch::<_MM_HINT_T0>(
                                    blk.wrapping_add(PREFETCH_AHEAD + line) as *const i8,
                                );
                            }
                            let scales = _mm_loadu_si128(blk.add(192) as *const __m128i);
                            let mut sumi = [_mm256_setzero_si256(); A];
                            for h in 0..2 {
                                let ql = blk.add(64 * h);
                                let lo = _mm256_loadu_si256(ql as *const __m256i);
                                let hi = _mm256_loadu_si256(ql.add(32) as *const __m256i);
                                let qh =
                                    _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                                let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
                                let h1 = _mm256_slli_epi16(
                                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2),
                                    4,
                                );
                                let h2 = _mm256_slli_epi16(
                                    _mm256_and_si256(_mm256_srli_epi16(qh, 4), m2),
                                    4,
                                );
                                let h3 = _mm256_slli_epi16(
                                    _mm256_and_si256(_mm256_srli_epi16(qh, 6), m2),
                                    4,
                                );
                                let q6 = [
                                    _mm256_or_si256(_mm256_and_si256(lo, m4), h0),
                                    _mm256_or_si256(_mm256_and_si256(hi, m4), h1),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(lo, 4), m4),
                                        h2,
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(hi, 4), m4),
                                        h3,
                                    ),
                                ];
                                // Sub-blocks 8h + 2c and 8h + 2c + 1 (16 elements each).
                                let sc: [__m256i; 4] =
                                    std::array::from_fn(|c| scale_pair(scales, 4 * h + c));
                                for a in 0..A {
                                    let y = q8[a].add(b * QK_K + 128 * h);
                                    for c in 0..4 {
                                        let yc =
                                            _mm256_loadu_si256(y.add(32 * c) as *const __m256i);
                                        let p = _mm256_sub_epi16(
                                            _mm256_maddubs_epi16(q6[c], yc),
                                            _mm256_maddubs_epi16(m32s, yc),
                                        );
                                        sumi[a] = $madd_add(sumi[a], sc[c], p);
                                    }
                                }
                            }
                            let dw = f16(blk.add(208));
                            for a in 0..A {
                                let d = *xs[a].d.get_unchecked(b) * dw;
                                acc[a] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(d),
                                    _mm256_cvtepi32_ps(sumi[a]),
                                    acc[a],
                                );
                            }
                        }
                        let mut out = [0f32; A];
                        for a in 0..A {
                            out[a] = hsum(acc[a]);
                        }
                        out
                    }
                }
            }
        };
    }

    kernels!(avx2, "avx2,fma,f16c", madd_add_avx2);

    /// The same kernels on 512-bit registers: two 32-element sub-blocks per instruction, the
    /// i16 multiply-add fused into `vpdpwssd`. The two halves of each i32 accumulator are added
    /// before the float step, which gives exactly the 8 integer lanes of the AVX2 kernel.
    mod vnni {
        use std::arch::x86_64::*;

        use super::super::{KView, Q8KRow, QK_K};
        use super::{PREFETCH_AHEAD, hsum};

        /// `vpermw` indices: table `i` takes source i16 lane `per * i + l / width` into lane `l`.
        const fn spread(per: usize, width: usize) -> [[u16; 32]; 4] {
            let mut t = [[0u16; 32]; 4];
            let mut i = 0;
            while i < 4 {
                let mut l = 0;
                while l < 32 {
                    t[i][l] = (per * i + l / width) as u16;
                    l += 1;
                }
                i += 1;
            }
            t
        }

        /// Q4_K: scale `2c` of the source in lanes 0-15, scale `2c + 1` in 16-31.
        const PAIR_LANES: [[u16; 32]; 4] = spread(2, 16);

        /// Q6_K: 16-element sub-block scales, 8 lanes each, four sub-blocks (`4q..4q + 4`)
        /// per 512-bit register.
        const QUAD_LANES: [[u16; 32]; 4] = spread(4, 8);

        /// Shift counts for the Q6_K high bits: two per register half.
        const HIGH_SHIFTS: [[u16; 32]; 2] = {
            let mut t = [[0u16; 32]; 2];
            let mut l = 0;
            while l < 32 {
                t[0][l] = if l < 16 { 0 } else { 2 };
                t[1][l] = if l < 16 { 4 } else { 6 };
                l += 1;
            }
            t
        };

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn table(t: &[u16; 32]) -> __m512i {
            // SAFETY: 64 readable bytes.
            unsafe { _mm512_loadu_si512(t.as_ptr() as *const __m512i) }
        }

        /// `d` and `dmin` of a Q4_K super-block: two f16 at `p`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
            // SAFETY: the caller passes a pointer to two f16 values.
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(
                unsafe { (p as *const u32).read_unaligned() } as i32,
            ));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }

        /// 16 i32 lanes to llama.cpp's 8 as floats.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn fold(v: __m512i) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_add_epi32(
                _mm512_castsi512_si256(v),
                _mm512_extracti64x4_epi64::<1>(v),
            ))
        }

        /// As the AVX2 `q4k`.
        ///
        /// # Safety
        /// As the AVX2 `q4k`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub(in super::super) unsafe fn q4k<const A: usize>(
            w: &KView<'_>,
            j: usize,
            xs: &[Q8KRow],
        ) -> [f32; A] {
            let nb = w.k / QK_K;
            let xs = &xs[..A];
            let q8: [*const i8; A] = std::array::from_fn(|a| xs[a].q.as_ptr());
            // SAFETY: as documented; prefetches use wrapping arithmetic.
            unsafe {
                let row = w.data.as_ptr().add(j * nb * 144);
                let m4 = _mm512_set1_epi8(0xF);
                let pair: [__m512i; 4] = std::array::from_fn(|c| table(&PAIR_LANES[c]));
                let mut acc = [_mm256_setzero_ps(); A];
                let mut acc_m = [_mm_setzero_ps(); A];
                for b in 0..nb {
                    let blk = row.add(b * 144);
                    for line in [0, 64, 128] {
                        _mm_prefetch::<_MM_HINT_T0>(
                            blk.wrapping_add(PREFETCH_AHEAD + line) as *const i8
                        );
                    }
                    let mins_scales = super::q4k_scales_mins(blk);
                    let wide = _mm512_castsi256_si512(mins_scales);
                    let mut sumi = [_mm512_setzero_si512(); A];
                    for (c, &lanes) in pair.iter().enumerate() {
                        let bits = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                        let q4 = _mm512_and_si512(
                            _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(bits),
                                _mm256_srli_epi16(bits, 4),
                            ),
                            m4,
                        );
                        let sc = _mm512_permutexvar_epi16(lanes, wide);
                        for a in 0..A {
                            let y =
                                _mm512_loadu_si512(q8[a].add(b * QK_K + 64 * c) as *const __m512i);
                            sumi[a] = _mm512_dpwssd_epi32(sumi[a], sc, _mm512_maddubs_epi16(q4, y));
                        }
                    }
                    let (dw, dminw) = f16_pair(blk);
                    let mins = _mm256_extracti128_si256::<1>(mins_scales);
                    for a in 0..A {
                        let x = &xs[a];
                        let xd = *x.d.get_unchecked(b);
                        let d = xd * dw;
                        let dmin = -xd * dminw;
                        let q8sums =
                            _mm256_loadu_si256(x.bsums.as_ptr().add(b * 16) as *const __m256i);
                        let q8s = _mm_hadd_epi16(
                            _mm256_castsi256_si128(q8sums),
                            _mm256_extracti128_si256::<1>(q8sums),
                        );
                        let prod = _mm_madd_epi16(mins, q8s);
                        acc_m[a] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[a]);
                        acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(d), fold(sumi[a]), acc[a]);
                    }
                }
                let mut out = [0f32; A];
                for a in 0..A {
                    let m = _mm_add_ps(acc_m[a], _mm_movehl_ps(acc_m[a], acc_m[a]));
                    let m = _mm_add_ss(m, _mm_movehdup_ps(m));
                    out[a] = hsum(acc[a]) + _mm_cvtss_f32(m);
                }
                out
            }
        }

        /// As the AVX2 `q6k`.
        ///
        /// # Safety
        /// As the AVX2 `q6k`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub(in super::super) unsafe fn q6k<const A: usize>(
            w: &KView<'_>,
            j: usize,
            xs: &[Q8KRow],
        ) -> [f32; A] {
            let nb = w.k / QK_K;
            let xs = &xs[..A];
            let q8: [*const i8; A] = std::array::from_fn(|a| xs[a].q.as_ptr());
            let p32: [*const i16; A] = std::array::from_fn(|a| xs[a].pairs32.as_ptr());
            // SAFETY: as for `q4k`.
            unsafe {
                let row = w.data.as_ptr().add(j * nb * 210);
                let m4 = _mm512_set1_epi8(0xF);
                let m2 = _mm512_set1_epi8(3);
                let quad: [__m512i; 4] = std::array::from_fn(|q| table(&QUAD_LANES[q]));
                let shifts = [table(&HIGH_SHIFTS[0]), table(&HIGH_SHIFTS[1])];
                let mut acc = [_mm256_setzero_ps(); A];
                for b in 0..nb {
                    let blk = row.add(b * 210);
                    for line in [0, 64, 128, 192] {
                        _mm_prefetch::<_MM_HINT_T0>(
                            blk.wrapping_add(PREFETCH_AHEAD + line) as *const i8
                        );
                    }
                    let scales = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128(
                        blk.add(192) as *const __m128i,
                    )));
                    let mut sumi = [_mm512_setzero_si512(); A];
                    for h in 0..2 {
                        // Elements 128h + 0..64 from the low nibbles, + 64..128 from the high.
                        let ql = _mm512_loadu_si512(blk.add(64 * h) as *const __m512i);
                        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                            blk.add(128 + 32 * h) as *const __m256i
                        ));
                        let high = |s: __m512i| {
                            _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, s), m2), 4)
                        };
                        let q6 = [
                            _mm512_or_si512(_mm512_and_si512(ql, m4), high(shifts[0])),
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                high(shifts[1]),
                            ),
                        ];
                        let sc = [
                            _mm512_permutexvar_epi16(quad[2 * h], scales),
                            _mm512_permutexvar_epi16(quad[2 * h + 1], scales),
                        ];
                        for a in 0..A {
                            for g in 0..2 {
                                let at = b * QK_K + 128 * h + 64 * g;
                                let y = _mm512_loadu_si512(q8[a].add(at) as *const __m512i);
                                let m = _mm512_loadu_si512(p32[a].add(at / 2) as *const __m512i);
                                let p = _mm512_sub_epi16(_mm512_maddubs_epi16(q6[g], y), m);
                                sumi[a] = _mm512_dpwssd_epi32(sumi[a], sc[g], p);
                            }
                        }
                    }
                    let dw = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                        (blk.add(208) as *const u16).read_unaligned() as i32,
                    )));
                    for a in 0..A {
                        let d = *xs[a].d.get_unchecked(b) * dw;
                        acc[a] = _mm256_fmadd_ps(_mm256_set1_ps(d), fold(sumi[a]), acc[a]);
                    }
                }
                let mut out = [0f32; A];
                for a in 0..A {
                    out[a] = hsum(acc[a]);
                }
                out
            }
        }
    }

    /// Output columns `lo..hi` of `w` for every activation row into `out` (`rows x (hi - lo)`).
    ///
    /// # Safety
    /// The CPU must support `isa`.
    pub(super) unsafe fn rows_into(
        isa: Isa,
        w: &KView<'_>,
        lo: usize,
        hi: usize,
        xs: &[Q8KRow],
        out: &mut [f32],
    ) {
        let nb = w.k / QK_K;
        assert!(hi <= w.n && w.data.len() >= w.n * nb * w.kind.block_bytes());
        assert!(
            xs.iter()
                .all(|x| x.q.len() >= nb * QK_K && x.d.len() >= nb && x.bsums.len() >= nb * 16)
        );
        assert!(out.len() >= xs.len() * (hi - lo));
        let width = hi - lo;
        macro_rules! tile {
            ($m:ident, $f:ident, $a:literal, $j:expr, $i:expr) => {{
                // SAFETY: bounds asserted above; CPU features are the caller's promise.
                let vals = unsafe { $m::$f::<$a>(w, $j, &xs[$i..]) };
                for (t, v) in vals.into_iter().enumerate() {
                    out[($i + t) * width + ($j - lo)] = v;
                }
            }};
        }
        macro_rules! run {
            ($m:ident, $f:ident) => {
                for j in lo..hi {
                    let mut i = 0;
                    while i < xs.len() {
                        match (xs.len() - i).min(TILE) {
                            1 => tile!($m, $f, 1, j, i),
                            2 => tile!($m, $f, 2, j, i),
                            3 => tile!($m, $f, 3, j, i),
                            4 => tile!($m, $f, 4, j, i),
                            5 => tile!($m, $f, 5, j, i),
                            6 => tile!($m, $f, 6, j, i),
                            7 => tile!($m, $f, 7, j, i),
                            _ => tile!($m, $f, 8, j, i),
                        }
                        i += (xs.len() - i).min(TILE);
                    }
                }
            };
        }
        match (isa, w.kind) {
            (Isa::Vnni, KKind::Q4K) => run!(vnni, q4k),
            (Isa::Vnni, KKind::Q6K) => run!(vnni, q6k),
            (Isa::Avx2, KKind::Q4K) => run!(avx2, q4k),
            (Isa::Avx2, KKind::Q6K) => run!(avx2, q6k),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;

    use super::*;

    fn weights(n: usize, k: usize, seed: usize) -> Tensor {
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                let v = ((i * 7919 + seed * 104729) % 1009) as f32 / 504.0 - 1.0;
                v * if i % 37 == 0 { 3.0 } else { 0.3 }
            })
            .collect();
        Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap()
    }

    fn activations(rows: usize, k: usize) -> Tensor {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                ((i * 104729 % 997) as f32 / 498.0 - 1.0) * if i % 11 == 0 { 4.0 } else { 1.0 }
            })
            .collect();
        Tensor::from_vec(x, (rows, k), &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Each format against dequantize-then-f32 matmul, the SIMD kernels against the scalar
    /// reference, and any number of rows against one row at a time, bit for bit.
    #[test]
    fn matches_dequantized_matmul_and_rows_are_independent() {
        let dev = Device::Cpu;
        let (n, k) = (37, 768);
        let x = activations(11, k);
        for (t, tiled) in [GgmlDType::Q4K, GgmlDType::Q6K]
            .into_iter()
            .flat_map(|t| [(t, false), (t, true)])
        {
            let q = Arc::new(QTensor::quantize(&weights(n, k, 1), t).unwrap());
            let want = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let lin = KLinear::from_arc_as(&q, tiled).unwrap().unwrap();
            let got = lin.forward_rows(&x).unwrap();
            let err = max_abs(&(&got - &want).unwrap());
            assert!(err < 0.02 * max_abs(&want), "{t:?}: max error {err}");
            for i in 0..11 {
                let one = lin.forward_rows(&x.narrow(0, i, 1).unwrap()).unwrap();
                assert_eq!(
                    got.get(i).unwrap().to_vec1::<f32>().unwrap(),
                    one.get(0).unwrap().to_vec1::<f32>().unwrap(),
                    "{t:?} row {i}"
                );
            }
            let rows: Vec<Q8KRow> = x
                .to_vec2::<f32>()
                .unwrap()
                .iter()
                .map(|r| quantize_row_q8k(r))
                .collect();
            let mut scalar = vec![0f32; rows.len() * n];
            let data = q.data().unwrap();
            lin.view(&data).rows_scalar(&rows, 0, n, &mut scalar);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in got.iter().zip(&scalar) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{t:?} (tiles: {tiled}): {a} vs {b}"
                );
            }
        }
    }

    /// Ours against candle's own K-quant product, which follows the same Q8_K scheme.
    #[test]
    fn agrees_with_candle() {
        let (n, k) = (48, 512);
        let x = activations(1, k);
        for (t, tiled) in [GgmlDType::Q4K, GgmlDType::Q6K]
            .into_iter()
            .flat_map(|t| [(t, false), (t, true)])
        {
            let q = QTensor::quantize(&weights(n, k, 2), t).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(
                QTensor::quantize(&weights(n, k, 2), t).unwrap(),
            )
            .unwrap();
            use candle_core::Module;
            let want = theirs.forward(&x).unwrap();
            let got = KLinear::from_arc_as(&Arc::new(q), tiled)
                .unwrap()
                .unwrap()
                .forward(&x)
                .unwrap();
            let err = max_abs(&(&got - &want).unwrap());
            assert!(
                err <= 1e-3 * max_abs(&want),
                "{t:?} (tiles: {tiled}): {err}"
            );
        }
    }

    /// Both instruction sets form the same integer lanes and float operations.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_vnni_kernels_agree_bit_for_bit() {
        use super::super::blocks::x86 as isa;
        let Some(best) = isa::detect() else {
            eprintln!("SKIPPED: no AVX2 on this CPU");
            return;
        };
        if best != isa::Isa::Vnni {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU to compare AVX2 with");
            return;
        }
        let (n, k) = (19, 1024);
        let x = activations(9, k).to_vec2::<f32>().unwrap();
        let rows: Vec<Q8KRow> = x.iter().map(|r| quantize_row_q8k(r)).collect();
        for t in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let lin = KLinear::from_arc_as(
                &Arc::new(QTensor::quantize(&weights(n, k, 3), t).unwrap()),
                false,
            )
            .unwrap()
            .unwrap();
            let data = lin.stored().data().unwrap();
            let view = lin.view(&data);
            let run = |which| {
                let mut out = vec![0f32; rows.len() * n];
                // SAFETY: `detect` found VNNI, which implies AVX2 here.
                unsafe { x86::rows_into(which, &view, 0, n, &rows, &mut out) };
                out
            };
            assert_eq!(run(isa::Isa::Avx2), run(isa::Isa::Vnni), "{t:?}");
        }
    }

    #[test]
    fn q8k_rounds_like_ggml() {
        // The largest magnitude is -127, so the scale is exactly 1 and halves are ties.
        let mut x = vec![0f32; QK_K];
        x[..5].copy_from_slice(&[-127.0, 63.5, 0.5, 1.5, -2.5]);
        let r = quantize_row_q8k(&x);
        assert_eq!(r.q[..5], [-127, 64, 0, 2, -2]);
        assert_eq!(r.d[0], 1.0);
        assert_eq!(r.bsums[0], -127 + 64 + 2 - 2);
        let zero = quantize_row_q8k(&[0f32; QK_K]);
        assert_eq!((zero.d[0], zero.bsums[0]), (0.0, 0));
    }

    #[test]
    fn other_formats_are_left_to_others() {
        let w = Tensor::zeros((8, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(KLinear::from_arc(&Arc::new(q)).unwrap().is_none());
    }
}
