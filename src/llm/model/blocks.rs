//! Linear layers over GGML's 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), kept
//! bit-for-bit as stored in the GGUF file, with AVX-512 VNNI and AVX2 kernels.
//!
//! candle has fast CPU kernels for K-quants and Q8_0 but falls back to scalar code for the
//! 4- and 5-bit legacy formats that small models use (SmolLM2's Q4_1, most of
//! Qwen2.5-Coder-0.5B's Q5_0 tensors, whose 896-wide rows cannot be K-quantized). Re-quantizing
//! them to Q8_0 is fast but adds noise and bytes. Here the stored blocks are used directly:
//! activations are quantized to 8 bits per 32-block (as llama.cpp does), the integer dot products
//! are exact, and each block contributes `d_w * d_x * dot` (plus `m * s` for the `_1`
//! formats). On CPUs with neither instruction set the loader keeps using candle's kernels.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use std::sync::Mutex;

use super::btiles::{self, BTiles, XRef};
use super::team::Team;
use crate::llm::error::{LlmError, Result};

pub(super) const QK: usize = 32;

/// The block formats handled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl BlockKind {
    fn from_ggml(t: GgmlDType) -> Option<Self> {
        Some(match t {
            GgmlDType::Q4_0 => BlockKind::Q4_0,
            GgmlDType::Q4_1 => BlockKind::Q4_1,
            GgmlDType::Q5_0 => BlockKind::Q5_0,
            GgmlDType::Q5_1 => BlockKind::Q5_1,
            GgmlDType::Q8_0 => BlockKind::Q8_0,
            _ => return None,
        })
    }

    /// Bytes per block as stored.
    pub(super) fn block_bytes(self) -> usize {
        match self {
            BlockKind::Q4_0 => 18,
            BlockKind::Q4_1 => 20,
            BlockKind::Q5_0 => 22,
            BlockKind::Q5_1 => 24,
            BlockKind::Q8_0 => 34,
        }
    }

    /// Constant subtracted from the unsigned quant (`w = d * (u - offset)`); the `_1`
    /// formats use a per-block minimum instead.
    pub(super) fn offset(self) -> f32 {
        match self {
            BlockKind::Q4_0 => 8.0,
            BlockKind::Q5_0 => 16.0,
            BlockKind::Q8_0 => 128.0,
            BlockKind::Q4_1 | BlockKind::Q5_1 => 0.0,
        }
    }

    fn has_min(self) -> bool {
        matches!(self, BlockKind::Q4_1 | BlockKind::Q5_1)
    }
}

/// Whether this CPU runs the kernels (AVX-512 VNNI, or AVX2 with FMA).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) fn isa() -> Option<x86::Isa> {
    static ISA: std::sync::OnceLock<Option<x86::Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| match std::env::var("APIGEN_MT_KERNEL").as_deref() {
        // Force the AVX2 path (for comparing the two on one machine).
        Ok("avx2") => x86::detect().map(|_| x86::Isa::Avx2),
        _ => x86::detect(),
    })
}

/// A `(n, k)` weight matrix in one of the block formats.
pub(crate) struct BlockLinear {
    kind: BlockKind,
    n: usize,
    k: usize,
    /// Raw blocks, row-major (empty when `tiles` holds them).
    data: Vec<u8>,
    /// Per-block scale `d` and minimum `c` (`m` of the `_1` formats, 0 otherwise), as f32.
    /// The offset formats subtract their constant in the integer domain instead.
    d: Vec<f32>,
    c: Vec<f32>,
    /// The same blocks as 16-row tiles, on CPUs with AVX-512 VNNI.
    tiles: Option<BTiles>,
}

/// Whether to re-lay blocks as tiles: on AVX-512 VNNI unless `APIGEN_MT_BLOCKS=rows` asks for
/// the row-major kernels (for comparing the two; the results are the same bits).
fn use_tiles() -> bool {
    BTiles::supported() && std::env::var("APIGEN_MT_BLOCKS").as_deref() != Ok("rows")
}

/// One activation row quantized to 8 bits per 32-block.
struct QRow {
    q: Vec<i8>,
    d: Vec<f32>,
    /// `d * sum(q)` per block.
    s: Vec<f32>,
}

impl QRow {
    fn as_ref<'a>(&'a self, offsets: &'a [i32]) -> XRef<'a> {
        XRef {
            q: &self.q,
            d: &self.d,
            s: &self.s,
            offsets,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

impl BlockLinear {
    /// Take a 2-D quantized tensor of a supported format; `None` for other formats.
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
        Self::from_qtensor_as(t, use_tiles())
    }

    /// As [`Self::from_qtensor`], as tiles or row-major as asked (tiles need AVX-512 VNNI).
    fn from_qtensor_as(t: &QTensor, tiles: bool) -> Result<Option<Self>> {
        let Some(kind) = BlockKind::from_ggml(t.dtype()) else {
            return Ok(None);
        };
        let (n, k) = t.shape().dims2()?;
        if k % QK != 0 {
            return Ok(None);
        }
        let data = t.data()?.into_owned();
        let nb = n * k / QK;
        if data.len() != nb * kind.block_bytes() {
            return Err(LlmError::Unsupported(format!(
                "{kind:?} tensor of {} bytes for shape ({n}, {k})",
                data.len()
            )));
        }
        if tiles && BTiles::supported() {
            return Ok(Some(BlockLinear {
                kind,
                n,
                k,
                tiles: Some(BTiles::pack(kind, n, k, &data)),
                data: Vec::new(),
                d: Vec::new(),
                c: Vec::new(),
            }));
        }
        let bb = kind.block_bytes();
        let d: Vec<f32> = (0..nb).map(|i| f16_at(&data, i * bb)).collect();
        let c = (0..nb)
            .map(|i| {
                if kind.has_min() {
                    f16_at(&data, i * bb + 2)
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Some(BlockLinear {
            kind,
            n,
            k,
            data,
            d,
            c,
            tiles: None,
        }))
    }

    /// `x (.., k) -> (.., n)`; CPU tensors only.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (xs, lead) = input_rows(x, self.k)?;
        let qrows: Vec<QRow> = xs.chunks_exact(self.k).map(quantize_row).collect();
        #[cfg(target_arch = "x86_64")]
        if let Some(tiles) = &self.tiles {
            let offsets: Vec<Vec<i32>> = qrows
                .iter()
                .map(|r| btiles::lane_offsets(self.kind, &r.q))
                .collect();
            let xr: Vec<XRef> = qrows
                .iter()
                .zip(&offsets)
                .map(|(r, o)| r.as_ref(o))
                .collect();
            let out = by_tiles(self.n, xr.len(), btiles::ROWS, |t_lo, t_hi, part| {
                tiles.rows_into(&xr, t_lo, t_hi, part)
            })?;
            return output(out, lead, self.n);
        }
        let out = by_columns(self.n, qrows.len(), 1, |lo, hi, part| {
            self.rows_into(&qrows, lo, hi, part)
        })?;
        output(out, lead, self.n)
    }

    /// Output columns `lo..hi` for every activation row into `out` (`rows x (hi - lo)`).
    fn rows_into(&self, qrows: &[QRow], lo: usize, hi: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            match isa() {
                // SAFETY: `isa()` reports what this CPU supports.
                Some(isa) => unsafe { x86::rows_into(isa, self, lo, hi, qrows, out) },
                None => self.rows_scalar(qrows, lo, hi, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.rows_scalar(qrows, lo, hi, out)
    }

    /// Portable version of `rows_into` (slow; used where no SIMD kernel applies).
    fn rows_scalar(&self, qrows: &[QRow], lo: usize, hi: usize, out: &mut [f32]) {
        let nb = self.k / QK;
        let bb = self.kind.block_bytes();
        let w = hi - lo;
        for j in lo..hi {
            let row = &self.data[j * nb * bb..(j + 1) * nb * bb];
            for (r, qx) in qrows.iter().enumerate() {
                out[r * w + (j - lo)] = dot_row_scalar(
                    self.kind,
                    row,
                    &self.d[j * nb..(j + 1) * nb],
                    &self.c[j * nb..(j + 1) * nb],
                    qx,
                );
            }
        }
    }
}

/// The rows of a linear layer's input `x (.., k)` as f32, and its leading dimensions.
pub(crate) fn input_rows(x: &Tensor, k: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let Some((&got, lead)) = dims.split_last() else {
        return Err(LlmError::InvalidRequest(
            "scalar input to a linear layer".into(),
        ));
    };
    if got != k {
        return Err(LlmError::InvalidRequest(format!(
            "linear layer expects {k} inputs, got {got}"
        )));
    }
    let xs = x
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    Ok((xs, lead.to_vec()))
}

/// `rows x n` outputs as a tensor of shape `(lead.., n)`.
pub(crate) fn output(out: Vec<f32>, lead: Vec<usize>, n: usize) -> Result<Tensor> {
    let mut shape = lead;
    shape.push(n);
    Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
}

/// A `rows x n` product computed by `fill(lo, hi, part)`, which writes output columns `lo..hi`
/// of every row into `part` (`rows x (hi - lo)`). With several threads the columns are split
/// into fixed ranges, one per thread of the kernels' [`Team`] (spawning threads per product
/// cost a few percent of a decode step); the result does not depend on which thread runs
/// which range. Each range but the last starts and ends at a multiple of
/// `align`.
pub(crate) fn by_columns(
    n: usize,
    rows: usize,
    align: usize,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    let threads = crate::llm::device::matmul_threads();
    if threads <= 1 || n < 64 {
        let mut out = vec![0f32; rows * n];
        fill(0, n, &mut out);
        return Ok(out);
    }
    let team = Team::get(threads);
    let threads = team.threads();
    let chunk = n.div_ceil(threads).div_ceil(align) * align;
    let range = |t: usize| ((t * chunk).min(n), ((t + 1) * chunk).min(n));
    let slots: Vec<Mutex<Vec<f32>>> = (0..threads).map(|_| Mutex::new(Vec::new())).collect();
    team.run(threads, |t| {
        let (lo, hi) = range(t);
        let mut part = vec![0f32; rows * (hi - lo)];
        fill(lo, hi, &mut part);
        *slots[t].lock().unwrap_or_else(|e| e.into_inner()) = part;
    });
    let parts: Vec<Vec<f32>> = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let mut out = vec![0f32; rows * n];
    for (t, part) in parts.iter().enumerate() {
        let (lo, hi) = range(t);
        let w = hi - lo;
        if part.len() != rows * w {
            return Err(LlmError::Unsupported("matmul worker failed".into()));
        }
        for r in 0..rows {
            out[r * n + lo..r * n + hi].copy_from_slice(&part[r * w..(r + 1) * w]);
        }
    }
    Ok(out)
}

/// [`by_columns`] for a matrix stored as tiles of `tile` columns: `fill(t_lo, t_hi, part)`
/// writes the columns of tiles `t_lo..t_hi` (the last tile may be partly past `n`).
pub(crate) fn by_tiles(
    n: usize,
    rows: usize,
    tile: usize,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    by_columns(n, rows, tile, |lo, hi, part| {
        if lo < hi {
            fill(lo / tile, hi.div_ceil(tile), part)
        }
    })
}

/// llama.cpp's `quantize_row_q8_0` (scale rounded through f16 as stored there) plus the
/// `d * sum(q)` term its `q8_1` carries.
fn quantize_row(x: &[f32]) -> QRow {
    let nb = x.len() / QK;
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(nb);
    let mut s = Vec::with_capacity(nb);
    for b in 0..nb {
        let xs = &x[b * QK..(b + 1) * QK];
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let db = amax / 127.0;
        let id = if db != 0.0 { 1.0 / db } else { 0.0 };
        let mut sum = 0i32;
        for (i, &v) in xs.iter().enumerate() {
            let qi = round_half_away(v * id) as i32;
            q[b * QK + i] = qi as i8;
            sum += qi;
        }
        d.push(half::f16::from_f32(db).to_f32());
        s.push(half::f16::from_f32(db * sum as f32).to_f32());
    }
    QRow { q, d, s }
}

/// `x.round()` (half away from zero) for `|x| < 2^22`, without a call into libm (`roundf`
/// is not inlined on baseline x86-64): adding and taking away `1.5 * 2^23` rounds to nearest,
/// ties to even, and exact halves are then moved away from zero.
fn round_half_away(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let r = (x + MAGIC) - MAGIC;
    if (x - r).abs() == 0.5 {
        x + 0.5f32.copysign(x)
    } else {
        r
    }
}

/// The unsigned quants of block `b` of `row` (`w = d * (u - offset) + m`).
pub(super) fn unpack(kind: BlockKind, blk: &[u8]) -> [u8; QK] {
    let mut u = [0u8; QK];
    match kind {
        BlockKind::Q8_0 => {
            for i in 0..QK {
                u[i] = (blk[2 + i] as i8 as i16 + 128) as u8;
            }
        }
        BlockKind::Q4_0 | BlockKind::Q4_1 => {
            let qs = if kind == BlockKind::Q4_0 {
                &blk[2..18]
            } else {
                &blk[4..20]
            };
            for i in 0..16 {
                u[i] = qs[i] & 0x0F;
                u[i + 16] = qs[i] >> 4;
            }
        }
        BlockKind::Q5_0 | BlockKind::Q5_1 => {
            let at = if kind == BlockKind::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
            let qs = &blk[at + 4..at + 20];
            for i in 0..16 {
                u[i] = (qs[i] & 0x0F) | ((((qh >> i) & 1) as u8) << 4);
                u[i + 16] = (qs[i] >> 4) | ((((qh >> (i + 16)) & 1) as u8) << 4);
            }
        }
    }
    u
}

/// Portable reference of one row's dot product (the SIMD kernels are tested against it).
fn dot_row_scalar(kind: BlockKind, row: &[u8], d: &[f32], c: &[f32], qx: &QRow) -> f32 {
    let bb = kind.block_bytes();
    let off = kind.offset() as i32;
    let mut acc = 0f32;
    let mut mins = 0f32;
    for b in 0..d.len() {
        let u = unpack(kind, &row[b * bb..(b + 1) * bb]);
        let dot: i32 = u
            .iter()
            .zip(&qx.q[b * QK..(b + 1) * QK])
            .map(|(&a, &q)| (a as i32 - off) * q as i32)
            .sum();
        acc += d[b] * qx.d[b] * dot as f32;
        mins += c[b] * qx.s[b];
    }
    acc + mins
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    //! Two instantiations of the same kernels: AVX-512 VNNI (`vpdpbusd`) and plain AVX2
    //! (`vpmaddubsw` with the sign trick). Both form the same exact i32 lanes, so their results
    //! are bit-identical.

    use std::arch::x86_64::*;

    use super::{BlockKind, BlockLinear, QK, QRow};

    pub(in crate::llm::model) const Q4_0: u8 = 0;
    pub(in crate::llm::model) const Q4_1: u8 = 1;
    pub(in crate::llm::model) const Q5_0: u8 = 2;
    pub(in crate::llm::model) const Q5_1: u8 = 3;
    pub(in crate::llm::model) const Q8_0: u8 = 4;
    /// Bytes ahead of the current block to prefetch when streaming one row.
    const PREFETCH_AHEAD: usize = 1024;
    /// Activation rows sharing each unpacked weight block during prefill.
    const TILE: usize = 8;

    /// Instruction sets the kernels are built for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(in crate::llm::model) enum Isa {
        Vnni,
        Avx2,
    }

    pub(in crate::llm::model) fn detect() -> Option<Isa> {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c")
        {
            Some(Isa::Vnni)
        } else if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            Some(Isa::Avx2)
        } else {
            None
        }
    }

    fn code(kind: BlockKind) -> u8 {
        match kind {
            BlockKind::Q4_0 => Q4_0,
            BlockKind::Q4_1 => Q4_1,
            BlockKind::Q5_0 => Q5_0,
            BlockKind::Q5_1 => Q5_1,
            BlockKind::Q8_0 => Q8_0,
        }
    }

    /// The constant the offset formats subtract from their unsigned quants.
    pub(in crate::llm::model) const fn offset<const K: u8>() -> i32 {
        match K {
            Q4_0 => 8,
            Q5_0 => 16,
            Q8_0 => 128,
            _ => 0,
        }
    }

    /// Low and high nibbles of 16 bytes as 32 bytes (elements 0-15, then 16-31).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn nibbles(qs: __m128i) -> __m256i {
        let low = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16(qs, 4), low),
            _mm_and_si128(qs, low),
        )
    }

    /// 0x10 in every byte whose bit is set in `qh` (AVX2 version of a mask move).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fifth_bits_avx2(qh: u32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let marked = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_and_si256(
            _mm256_cmpeq_epi8(marked, _mm256_set1_epi64x(-1)),
            _mm256_set1_epi8(0x10),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    fn fifth_bits_vnni(qh: u32) -> __m256i {
        _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10))
    }

    /// Per lane (4 consecutive elements, as llama.cpp groups them): `sum((u - offset) * x)`,
    /// exact in i32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    fn lane_dots_vnni<const K: u8>(u: __m256i, x: __m256i) -> __m256i {
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x);
        if offset::<K>() == 0 {
            dot
        } else {
            let xo = _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_set1_epi8(offset::<K>() as u8 as i8),
                x,
            );
            _mm256_sub_epi32(dot, xo)
        }
    }

    /// The same lanes with AVX2: signed weights `w = u - offset`, `|w| * (x * sign(w))` in
    /// pairs (at most 2 * 128 * 127, no i16 overflow), then pairs of pairs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn lane_dots_avx2<const K: u8>(u: __m256i, x: __m256i) -> __m256i {
        let w = match K {
            Q8_0 => _mm256_xor_si256(u, _mm256_set1_epi8(-128)),
            _ => _mm256_sub_epi8(u, _mm256_set1_epi8(offset::<K>() as i8)),
        };
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// Horizontal sum of 8 lanes in llama.cpp's order (`hsum_float_8`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::llm::model) fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    /// `sum_b m[b] * s[b]` in block order (the minimum term of the `_1` formats, summed the
    /// way llama.cpp sums it).
    fn mins(m: &[f32], s: &[f32]) -> f32 {
        m.iter().zip(s).fold(0.0, |t, (a, b)| t + a * b)
    }

    macro_rules! kernels {
        ($module:ident, $features:literal, $fifth_bits:ident, $lane_dots:ident) => {
            pub(super) mod $module {
                use std::arch::x86_64::*;

                use super::super::{BlockLinear, QK, QRow};
                use super::{
                    PREFETCH_AHEAD, Q4_0, Q5_0, Q8_0, TILE, hsum, mins, nibbles, offset,
                    $fifth_bits, $lane_dots,
                };

                /// The 32 unsigned quants of the block at `blk`.
                #[inline]
                #[target_feature(enable = $features)]
                unsafe fn unpack<const K: u8>(blk: *const u8) -> __m256i {
                    // SAFETY (all loads): the caller passes a pointer to a whole block of format K.
                    unsafe {
                        match K {
                            Q8_0 => _mm256_xor_si256(
                                _mm256_loadu_si256(blk.add(2) as *const __m256i),
                                _mm256_set1_epi8(-128),
                            ),
                            Q4_0 | super::Q4_1 => {
                                nibbles(_mm_loadu_si128(
                                    blk.add(if K == Q4_0 { 2 } else { 4 }) as *const __m128i
                                ))
                            }
                            _ => {
                                let at = if K == Q5_0 { 2 } else { 4 };
                                let qh = (blk.add(at) as *const u32).read_unaligned();
                                let nib =
                                    nibbles(_mm_loadu_si128(blk.add(at + 4) as *const __m128i));
                                _mm256_or_si256(nib, $fifth_bits(qh))
                            }
                        }
                    }
                }

                /// Weight row `j` of `w` against one activation row, streaming the row once. One
                /// 8-lane accumulator in block order: the same lanes and order as llama.cpp's AVX2
                /// dot products, so results match the reference engine closely (greedy decoding
                /// of small models is sensitive to the last bits).
                #[target_feature(enable = $features)]
                unsafe fn dot_row<const K: u8>(w: &BlockLinear, j: usize, qx: &QRow) -> f32 {
                    let nb = w.k / QK;
                    let bb = w.kind.block_bytes();
                    let (d, c) = (&w.d[j * nb..(j + 1) * nb], &w.c[j * nb..(j + 1) * nb]);
                    // SAFETY: `rows_into` checked that row j (nb blocks of bb bytes) and nb
                    // activation blocks exist; prefetches use wrapping arithmetic, never fault.
                    unsafe {
                        let row = w.data.as_ptr().add(j * nb * bb);
                        let mut acc = _mm256_setzero_ps();
                        for b in 0..nb {
                            if b % 2 == 0 {
                                _mm_prefetch::<_MM_HINT_T0>(
                                    row.wrapping_add(b * bb + PREFETCH_AHEAD) as *const i8,
                                );
                            }
                            let x = _mm256_loadu_si256(qx.q.as_ptr().add(b * QK) as *const __m256i);
                            let dot = $lane_dots::<K>(unpack::<K>(row.add(b * bb)), x);
                            let scale =
                                _mm256_set1_ps(*d.get_unchecked(b) * *qx.d.get_unchecked(b));
                            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc);
                        }
                        hsum(acc)
                            + if offset::<K>() == 0 {
                                mins(c, &qx.s[..nb])
                            } else {
                                0.0
                            }
                    }
                }

                /// Weight row `j` against `A` activation rows: each block is unpacked once and
                /// used for every activation row. Each output keeps its own accumulator in block
                /// order, so results equal `dot_row`'s bit for bit.
                #[target_feature(enable = $features)]
                unsafe fn dot_tile<const K: u8, const A: usize>(
                    w: &BlockLinear,
                    j: usize,
                    qxs: &[QRow],
                ) -> [f32; A] {
                    let nb = w.k / QK;
                    let bb = w.kind.block_bytes();
                    let (d, c) = (&w.d[j * nb..(j + 1) * nb], &w.c[j * nb..(j + 1) * nb]);
                    let qxs = &qxs[..A];
                    // SAFETY: as in `dot_row`, for each of the A activation rows.
                    unsafe {
                        let row = w.data.as_ptr().add(j * nb * bb);
                        let mut acc = [_mm256_setzero_ps(); A];
                        for b in 0..nb {
                            let u = unpack::<K>(row.add(b * bb));
                            let dw = *d.get_unchecked(b);
                            for (a, qx) in acc.iter_mut().zip(qxs) {
                                let x =
                                    _mm256_loadu_si256(qx.q.as_ptr().add(b * QK) as *const __m256i);
                                let scale = _mm256_set1_ps(dw * *qx.d.get_unchecked(b));
                                *a = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps($lane_dots::<K>(u, x)),
                                    scale,
                                    *a,
                                );
                            }
                        }
                        let mut out = [0f32; A];
                        for ((o, a), qx) in out.iter_mut().zip(acc).zip(qxs) {
                            *o = hsum(a)
                                + if offset::<K>() == 0 {
                                    mins(c, &qx.s[..nb])
                                } else {
                                    0.0
                                };
                        }
                        out
                    }
                }

                /// Columns `lo..hi` for every activation row (bounds checked by the caller).
                #[target_feature(enable = $features)]
                pub(in super::super) unsafe fn rows_k<const K: u8>(
                    w: &BlockLinear,
                    lo: usize,
                    hi: usize,
                    qrows: &[QRow],
                    out: &mut [f32],
                ) {
                    let width = hi - lo;
                    // SAFETY: bounds were checked by `rows_into`.
                    unsafe {
                        if let [qx] = qrows {
                            for j in lo..hi {
                                out[j - lo] = dot_row::<K>(w, j, qx);
                            }
                            return;
                        }
                        for j in lo..hi {
                            let mut i = 0;
                            while i < qrows.len() {
                                if qrows.len() - i >= TILE {
                                    for (t, v) in dot_tile::<K, TILE>(w, j, &qrows[i..])
                                        .into_iter()
                                        .enumerate()
                                    {
                                        out[(i + t) * width + (j - lo)] = v;
                                    }
                                    i += TILE;
                                } else {
                                    out[i * width + (j - lo)] = dot_row::<K>(w, j, &qrows[i]);
                                    i += 1;
                                }
                            }
                        }
                    }
                }
            }
        };
    }

    kernels!(
        vnni,
        "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma",
        fifth_bits_vnni,
        lane_dots_vnni
    );
    kernels!(avx2, "avx2,fma", fifth_bits_avx2, lane_dots_avx2);

    /// Output columns `lo..hi` of `w` for every activation row into `out` (`rows x (hi - lo)`).
    ///
    /// # Safety
    /// The CPU must support `isa`.
    pub(super) unsafe fn rows_into(
        isa: Isa,
        w: &BlockLinear,
        lo: usize,
        hi: usize,
        qrows: &[QRow],
        out: &mut [f32],
    ) {
        let nb = w.k / QK;
        assert!(
            hi <= w.n
                && w.data.len() >= w.n * nb * w.kind.block_bytes()
                && w.d.len() >= w.n * nb
                && w.c.len() >= w.n * nb
        );
        assert!(
            qrows
                .iter()
                .all(|q| q.q.len() >= nb * QK && q.d.len() >= nb && q.s.len() >= nb)
        );
        assert!(out.len() >= qrows.len() * (hi - lo));
        macro_rules! dispatch {
            ($m:ident) => {
                match code(w.kind) {
                    Q4_0 => $m::rows_k::<Q4_0>(w, lo, hi, qrows, out),
                    Q4_1 => $m::rows_k::<Q4_1>(w, lo, hi, qrows, out),
                    Q5_0 => $m::rows_k::<Q5_0>(w, lo, hi, qrows, out),
                    Q5_1 => $m::rows_k::<Q5_1>(w, lo, hi, qrows, out),
                    _ => $m::rows_k::<Q8_0>(w, lo, hi, qrows, out),
                }
            };
        }
        // SAFETY: bounds asserted above; CPU features are the caller's promise.
        unsafe {
            match isa {
                Isa::Vnni => dispatch!(vnni),
                Isa::Avx2 => dispatch!(avx2),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMATS: [GgmlDType; 5] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
    ];

    /// Every format against dequantize-then-f32 matmul.
    #[test]
    fn matches_dequantized_matmul() {
        if !supported() {
            eprintln!("SKIPPED: no AVX2 or AVX-512 VNNI on this CPU");
            return;
        }
        let dev = Device::Cpu;
        let (n, k) = (42, 160);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let x: Vec<f32> = (0..3 * k)
            .map(|i| (i * 104729 % 997) as f32 / 498.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(x, (3, k), &dev).unwrap();
        let x11: Vec<f32> = (0..11 * k)
            .map(|i| (i * 7 % 13) as f32 / 6.0 - 1.0)
            .collect();
        let x11 = Tensor::from_vec(x11, (11, k), &dev).unwrap();
        for t in FORMATS {
            let q = QTensor::quantize(&w, t).unwrap();
            let want = x.matmul(&q.dequantize(&dev).unwrap().t().unwrap()).unwrap();
            let lin = BlockLinear::from_qtensor_as(&q, false).unwrap().unwrap();
            let got = lin.forward(&x).unwrap();
            let err = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 0.02 * scale, "{t:?}: max error {err} (scale {scale})");
            // Tiled (many activation rows) and streamed (one row) paths give the same bits.
            let many = lin.forward(&x11).unwrap();
            for i in 0..11 {
                let one = lin.forward(&x11.narrow(0, i, 1).unwrap()).unwrap();
                assert_eq!(
                    many.get(i).unwrap().to_vec1::<f32>().unwrap(),
                    one.get(0).unwrap().to_vec1::<f32>().unwrap(),
                    "{t:?} row {i}"
                );
            }
            // The scalar reference agrees with the SIMD kernel on every output.
            let qr = quantize_row(&x.get(0).unwrap().to_vec1::<f32>().unwrap());
            let nb = k / QK;
            let bb = lin.kind.block_bytes();
            let mut simd = vec![0f32; n];
            lin.rows_into(std::slice::from_ref(&qr), 0, n, &mut simd);
            for (j, &v) in simd.iter().enumerate() {
                let row = &lin.data[j * nb * bb..(j + 1) * nb * bb];
                let scalar = dot_row_scalar(
                    lin.kind,
                    row,
                    &lin.d[j * nb..(j + 1) * nb],
                    &lin.c[j * nb..(j + 1) * nb],
                    &qr,
                );
                assert!(
                    (v - scalar).abs() <= 1e-4 * scalar.abs().max(1.0),
                    "{t:?} row {j}: {v} vs {scalar}"
                );
            }
        }
    }

    /// Both instruction sets form the same integer lanes and float operations.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_vnni_kernels_agree_bit_for_bit() {
        let Some(best) = x86::detect() else {
            eprintln!("SKIPPED: no AVX2 on this CPU");
            return;
        };
        let dev = Device::Cpu;
        let (n, k) = (13, 256);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 31 % 101) as f32 / 50.0 - 1.0) * 0.7)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        for t in FORMATS {
            let lin = BlockLinear::from_qtensor_as(&QTensor::quantize(&w, t).unwrap(), false)
                .unwrap()
                .unwrap();
            for rows in [1, 3, 9] {
                let qrows: Vec<QRow> = (0..rows)
                    .map(|r| {
                        quantize_row(
                            &(0..k)
                                .map(|i| (((i + r * 17) * 7 % 29) as f32 / 14.0 - 1.0) * 3.0)
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                let run = |isa| {
                    let mut out = vec![0f32; rows * n];
                    // SAFETY: `detect` found this instruction set (AVX2 is implied by VNNI here).
                    unsafe { x86::rows_into(isa, &lin, 0, n, &qrows, &mut out) };
                    out
                };
                let avx2 = run(x86::Isa::Avx2);
                if best == x86::Isa::Vnni {
                    assert_eq!(avx2, run(x86::Isa::Vnni), "{t:?}, {rows} rows");
                }
                let mut scalar = vec![0f32; rows * n];
                lin.rows_scalar(&qrows, 0, n, &mut scalar);
                for (a, b) in avx2.iter().zip(&scalar) {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{t:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// The tile kernels give the row kernels' bits, whatever the batch and wherever a row
    /// falls in a tile (n not a multiple of 16, an odd number of blocks per row).
    #[test]
    fn tiles_give_the_row_kernels_bits() {
        if !BTiles::supported() {
            eprintln!("SKIPPED: no AVX-512 VNNI on this CPU");
            return;
        }
        let dev = Device::Cpu;
        let (n, k) = (37, 160);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 0.4)
            .collect();
        let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
        let x: Vec<f32> = (0..9 * k)
            .map(|i| ((i * 104_729 % 997) as f32 / 498.0 - 1.0) * (1 + i % 5) as f32)
            .collect();
        let x = Tensor::from_vec(x, (9, k), &dev).unwrap();
        for t in FORMATS {
            let q = QTensor::quantize(&w, t).unwrap();
            let rows = BlockLinear::from_qtensor_as(&q, false).unwrap().unwrap();
            let tiles = BlockLinear::from_qtensor_as(&q, true).unwrap().unwrap();
            assert!(tiles.tiles.is_some() && rows.tiles.is_none());
            for m in [1, 2, 3, 4, 7, 9] {
                let xm = x.narrow(0, 0, m).unwrap();
                let a = rows.forward(&xm).unwrap().to_vec2::<f32>().unwrap();
                let b = tiles.forward(&xm).unwrap().to_vec2::<f32>().unwrap();
                for (i, (ra, rb)) in a.iter().zip(&b).enumerate() {
                    let (ra, rb): (Vec<u32>, Vec<u32>) = (
                        ra.iter().map(|v| v.to_bits()).collect(),
                        rb.iter().map(|v| v.to_bits()).collect(),
                    );
                    assert_eq!(ra, rb, "{t:?}, {m} rows, row {i}");
                }
            }
        }
    }

    #[test]
    fn rounds_half_away_from_zero_like_roundf() {
        for x in [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999997,
            -0.49999997,
            126.5,
            -127.0,
            63.500004,
            1e-30,
            3.4999998,
        ] {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
        let mut x = -130.0f32;
        while x < 130.0 {
            assert_eq!(round_half_away(x), x.round(), "{x}");
            x += 0.0078125 * 1.37;
        }
    }

    #[test]
    fn k_quants_are_left_to_candle() {
        let w = Tensor::zeros((8, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(BlockLinear::from_qtensor(&q).unwrap().is_none());
    }
}
