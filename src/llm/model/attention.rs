//! Attention of a sequence's new tokens against its paged f16 cache, on the CPU.
//!
//! One KV head at a time: its keys are streamed once, page by page (converted to f32 in a
//! page-sized scratch buffer), against every query row that shares the head (the grouped query
//! heads of each new token); then the causal softmax of each row; then the values are streamed
//! once the same way. Nothing of the size of the whole cache is materialized beyond the scores
//! of the rows in flight, and nothing is repacked: candle's generic matmuls copied K and V each
//! step and made decode slow down with context.
//!
//! Each output is computed the same way whatever other sequences or threads do, so batched
//! decoding stays bit-identical to decoding alone. The arithmetic has a fixed order: 8-lane
//! fused multiply-add accumulators for dot products, reduced in a fixed tree, positions summed
//! in order. The same code is built with AVX2 and FMA enabled where the CPU has them and
//! without elsewhere (slower, same results: `mul_add` is exact either way).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::cache::{KvCache, PAGE};

/// Scores held at once per KV head (rows in flight × positions): bounds memory in long
/// prefills.
const SCORE_BUDGET: usize = 1 << 20;

/// Head layout of an attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Round the softmax weights to f16 before the value product, as llama.cpp does.
    pub f16_weights: bool,
}

/// The query rows of a batch: `q[(head * rows + row) * head_dim ..]`.
#[derive(Clone, Copy)]
pub(crate) struct Queries<'a> {
    pub q: &'a [f32],
    pub rows: usize,
}

/// Output of KV head `g` for `t` new tokens starting at batch row `row0`, whose first
/// position is `pos0` (the cache already holds their keys and values): `t × n_rep × head_dim`,
/// token-major.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_group(
    heads: &Heads,
    cache: &KvCache,
    layer: usize,
    g: usize,
    pos0: usize,
    t: usize,
    queries: Queries<'_>,
    row0: usize,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if fma_available() {
        // SAFETY: the CPU has the features the wrapper is built with.
        return unsafe { attend_group_fma(heads, cache, layer, g, pos0, t, queries, row0) };
    }
    attend_group_body::<false>(heads, cache, layer, g, pos0, t, queries, row0)
}

#[cfg(target_arch = "x86_64")]
fn fma_available() -> bool {
    static FMA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FMA.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_group_fma(
    heads: &Heads,
    cache: &KvCache,
    layer: usize,
    g: usize,
    pos0: usize,
    t: usize,
    queries: Queries<'_>,
    row0: usize,
) -> Vec<f32> {
    attend_group_body::<true>(heads, cache, layer, g, pos0, t, queries, row0)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_group_body<const FMA: bool>(
    heads: &Heads,
    cache: &KvCache,
    layer: usize,
    g: usize,
    pos0: usize,
    t: usize,
    queries: Queries<'_>,
    row0: usize,
) -> Vec<f32> {
    let hd = heads.head_dim;
    let n_rep = heads.n_head / heads.n_kv;
    let width = n_rep * hd;
    let mut out = vec![0f32; t * width];
    let end = pos0 + t;
    let block = (SCORE_BUDGET / (n_rep * end).max(1)).clamp(1, t.max(1));
    let mut scores = vec![0f32; n_rep * block * end];
    let mut scratch = vec![0f32; PAGE * hd];
    let mut halves = vec![f16::ZERO; end];
    let mut i0 = 0;
    while i0 < t {
        let i1 = (i0 + block).min(t);
        // Positions visible to the block's last token.
        let visible = pos0 + i1;
        let pages = visible.div_ceil(PAGE);
        for pg in 0..pages {
            if pg + AHEAD < pages {
                prefetch(cache.head(layer, g, pg + AHEAD).0);
            }
            let (keys, _) = cache.head(layer, g, pg);
            let np = (visible - pg * PAGE).min(PAGE);
            to_f32::<FMA>(&keys[..np * hd], &mut scratch[..np * hd]);
            for i in i0..i1 {
                let Some(here) = seen_in_page(pos0 + i, pg, np) else {
                    continue;
                };
                for r in 0..n_rep {
                    let h = g * n_rep + r;
                    let at = (h * queries.rows + row0 + i) * hd;
                    let q = &queries.q[at..at + hd];
                    let row = &mut scores[((i - i0) * n_rep + r) * end..][..end];
                    let row = &mut row[pg * PAGE..pg * PAGE + here];
                    dots::<FMA>(q, &scratch[..here * hd], heads.scale, row);
                }
            }
        }
        for i in i0..i1 {
            let len = pos0 + i + 1;
            let rows = &mut scores[(i - i0) * n_rep * end..][..n_rep * end];
            softmax_rows(rows, end, len);
            if heads.f16_weights {
                for row in rows.chunks_exact_mut(end) {
                    round_f16::<FMA>(&mut row[..len], &mut halves[..len]);
                }
            }
        }
        for pg in 0..pages {
            if pg + AHEAD < pages {
                prefetch(cache.head(layer, g, pg + AHEAD).1);
            }
            let (_, values) = cache.head(layer, g, pg);
            let np = (visible - pg * PAGE).min(PAGE);
            to_f32::<FMA>(&values[..np * hd], &mut scratch[..np * hd]);
            for i in i0..i1 {
                let Some(here) = seen_in_page(pos0 + i, pg, np) else {
                    continue;
                };
                for r in 0..n_rep {
                    let weights = &scores[((i - i0) * n_rep + r) * end + pg * PAGE..][..here];
                    let o = &mut out[i * width + r * hd..][..hd];
                    weighted_sum::<FMA>(weights, &scratch[..weights.len() * hd], o);
                }
            }
        }
        i0 = i1;
    }
    out
}

/// Pages ahead of the one in use whose keys (or values) are requested from memory.
const AHEAD: usize = 4;

/// Ask for `block` (one layer and head of a page: 2 KB at head size 64) to be brought into the
/// second-level cache. A head's blocks lie a page's size apart, runs too short for the hardware
/// prefetcher: the loads of the f16 conversion were over two fifths of attention at 8k
/// positions, and converting a 50 MB cache's keys took twice as long as converting 50 MB laid
/// end to end. Requested `AHEAD` pages early into L2 (requests into L1 hold its few miss
/// buffers and halved nothing), the paged keys convert as fast as contiguous ones. Changes no
/// result.
#[inline(always)]
fn prefetch(block: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T2, _mm_prefetch};
        let bytes = std::mem::size_of_val(block);
        let base = block.as_ptr() as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch of an address within `block` (prefetches never fault).
            unsafe { _mm_prefetch::<_MM_HINT_T2>(base.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = block;
}

/// How many of page `pg`'s first `np` positions a token at position `last` sees (causal), if
/// any.
#[inline(always)]
fn seen_in_page(last: usize, pg: usize, np: usize) -> Option<usize> {
    (pg * PAGE <= last).then(|| (last + 1 - pg * PAGE).min(np))
}

/// f16 to f32 (exact); `FMA` builds convert 8 at a time with F16C, inline (`half`'s slice
/// conversion dispatches at run time, a call per 8 values, a fifth of long-context attention).
#[inline(always)]
fn to_f32<const FMA: bool>(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        use std::arch::x86_64::*;
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        // SAFETY: `FMA` is only set inside a function built with AVX2, FMA and F16C, called
        // only where the CPU has them; accesses stay within the first `whole` elements.
        unsafe {
            for i in (0..whole).step_by(8) {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in whole..n {
            dst[i] = src[i].to_f32();
        }
        return;
    }
    src.convert_to_f32_slice(&mut dst[..src.len()]);
}

/// `out[p] = dot(q, keys[p]) * scale` for consecutive rows of `q.len()` keys, each dot exactly
/// as [`dot`] computes it; `FMA` builds run four rows at a time, so that their accumulation
/// chains overlap (one chain at a time waited on each multiply-add's latency).
#[inline(always)]
fn dots<const FMA: bool>(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    let hd = q.len();
    #[cfg(target_arch = "x86_64")]
    if FMA && hd % 8 == 0 && keys.len() >= out.len() * hd {
        // SAFETY: as for `dot`; lengths checked above.
        unsafe { dots_fma(q, keys, scale, out) };
        return;
    }
    for (p, o) in out.iter_mut().enumerate() {
        *o = dot::<FMA>(q, &keys[p * hd..(p + 1) * hd]) * scale;
    }
}

/// # Safety
/// AVX2 and FMA are available, `q.len()` is a multiple of 8 and `keys` holds `out.len()` rows
/// of `q.len()`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_fma(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const R: usize = 4;
    let hd = q.len();
    let hsum = |acc: __m256| {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    };
    let n = out.len();
    let mut p = 0;
    // SAFETY: loads stay within `q` and the first `n` rows of `keys`; stores within `out`.
    unsafe {
        let scale8 = _mm256_set1_ps(scale);
        while p + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); 8];
            for i in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = _mm256_loadu_ps(keys.as_ptr().add((p + r) * hd + i));
                    *a = _mm256_fmadd_ps(qv, k, *a);
                }
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(p), _mm256_mul_ps(hsum8(&acc), scale8));
            p += 8;
        }
        while p + R <= n {
            let mut acc = [_mm256_setzero_ps(); R];
            for i in (0..hd).step_by(8) {
                let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = _mm256_loadu_ps(keys.as_ptr().add((p + r) * hd + i));
                    *a = _mm256_fmadd_ps(qv, k, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                out[p + r] = hsum(*a) * scale;
            }
            p += R;
        }
        while p < n {
            out[p] = dot_fma(q, &keys[p * hd..(p + 1) * hd]) * scale;
            p += 1;
        }
    }
}

/// The eight horizontal sums of `acc`, each added in `hsum`'s tree order (high half onto low
/// half, then lanes two apart, then the last pair), as one vector: the same bits as eight
/// separate reductions in a third of the shuffles.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum8(acc: &[std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Per pair of keys (x, y): [x0+x4, x1+x5, x2+x6, x3+x7 | the same for y].
    let halves = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(x, y),
            _mm256_permute2f128_ps::<0x31>(x, y),
        )
    };
    let (ab, cd) = (halves(acc[0], acc[1]), halves(acc[2], acc[3]));
    let (ef, gh) = (halves(acc[4], acc[5]), halves(acc[6], acc[7]));
    // Lanes two apart: [a: s0+s2, s1+s3, c: s0+s2, s1+s3 | b.., d..].
    let apart = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    };
    let (abcd, efgh) = (apart(ab, cd), apart(ef, gh));
    // The last pair: [a, c, e, g | b, d, f, h].
    let sums = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(abcd, efgh),
        _mm256_shuffle_ps::<0b11_01_11_01>(abcd, efgh),
    );
    _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `sum(a * b)` with 8 fused accumulators, reduced in a fixed tree (llama.cpp's
/// `hsum_float_8` order); `FMA` selects the AVX2 instructions, same results.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is only set inside a function built with AVX2 and FMA, called only
        // where the CPU has them.
        return unsafe { dot_fma(a, b) };
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (x, y) in ta.iter().zip(tb) {
        s = x.mul_add(*y, s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n / 8 * 8;
    // SAFETY: loads stay within the first `whole` elements of both slices.
    let mut s = unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < whole {
            acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc,
            );
            i += 8;
        }
        let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    };
    for i in whole..n {
        s = a[i].mul_add(b[i], s);
    }
    s
}

/// `e^x` for `x <= 0` (softmax arguments), within 2 ulp of the exact value: Cephes' `expf`
/// (range reduction by `ln 2` in two parts, a degree-5 polynomial, then the power of two put
/// into the exponent bits). Written with correctly rounded operations only (`mul_add` is a
/// fused multiply-add on every target), so the loop the compiler vectorizes in the AVX2 build
/// gives the same bits as the portable build's scalar code; libm's `expf` is a call per element
/// and was a third of long-context decode.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = p.mul_add(r * r, r) + 1.0;
    // SAFETY: `n` is a whole number in [-126, 0] (x was clamped); without the saturating
    // cast's checks the loop over a row vectorizes.
    let n: i32 = unsafe { n.to_int_unchecked() };
    y * f32::from_bits(((n + 127) << 23) as u32)
}

/// `o += Σ_p weights[p] · values[p]` (rows of `o.len()` values), one fused multiply-add per
/// element and position, positions in order. The AVX2 build keeps a 64-wide stretch of `o` in
/// registers across all positions instead of loading and storing it for each one (that traffic
/// was a third of long-context attention); the order of operations, and so the bits, are the
/// portable build's.
#[inline(always)]
fn weighted_sum<const FMA: bool>(weights: &[f32], values: &[f32], o: &mut [f32]) {
    let hd = o.len();
    #[cfg(target_arch = "x86_64")]
    if FMA && hd % 64 == 0 && values.len() >= weights.len() * hd {
        // SAFETY: `FMA` is only set where the CPU has AVX2 and FMA; lengths checked above.
        unsafe { weighted_sum_fma(weights, values, o) };
        return;
    }
    for (p, &w) in weights.iter().enumerate() {
        for (o, &v) in o.iter_mut().zip(&values[p * hd..(p + 1) * hd]) {
            *o = w.mul_add(v, *o);
        }
    }
}

/// # Safety
/// AVX2 and FMA are available, `o.len()` is a multiple of 64 and `values` holds
/// `weights.len()` rows of `o.len()`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum_fma(weights: &[f32], values: &[f32], o: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = o.len();
    // SAFETY: every access is within `o` (64-wide stretches of it) or within row `p` of `values`.
    unsafe {
        for c in (0..hd).step_by(64) {
            let out = o.as_mut_ptr().add(c);
            let mut acc: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(out.add(8 * k)));
            for (p, &w) in weights.iter().enumerate() {
                let wv = _mm256_set1_ps(w);
                let row = values.as_ptr().add(p * hd + c);
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * k)), *a);
                }
            }
            for (k, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(8 * k), *a);
            }
        }
    }
}

/// `row` rounded to f16 precision (to nearest, ties to even), in place; `FMA` builds convert
/// 8 at a time with F16C, inline (through `half`'s slices, `halves` the f16 buffer, this was a
/// fifth of long-context attention).
#[inline(always)]
fn round_f16<const FMA: bool>(row: &mut [f32], halves: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        use std::arch::x86_64::*;
        let whole = row.len() / 8 * 8;
        // SAFETY: `FMA` is only set inside a function built with AVX2, FMA and F16C, called
        // only where the CPU has them; accesses stay within the first `whole` elements.
        unsafe {
            for i in (0..whole).step_by(8) {
                let p = row.as_mut_ptr().add(i);
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
                _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
            }
        }
        for v in &mut row[whole..] {
            *v = f16::from_f32(*v).to_f32();
        }
        return;
    }
    halves.convert_from_f32_slice(row);
    halves.convert_to_f32_slice(row);
}

/// Softmax in place of the first `len` values of each row of `rows` (rows `stride` apart),
/// each row's positions summed in order. The rows' sums run side by side, up to eight at a
/// time, so that the chains of additions overlap (one at a time waited on each addition).
#[inline(always)]
fn softmax_rows(rows: &mut [f32], stride: usize, len: usize) {
    const MAX: usize = 8;
    for group in rows.chunks_mut(stride * MAX) {
        let count = group.len().div_ceil(stride);
        let mut sums = [0f32; MAX];
        for row in group.chunks_mut(stride) {
            let row = &mut row[..len];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            // A loop the compiler vectorizes.
            for v in row.iter_mut() {
                *v = exp(*v - max);
            }
        }
        for p in 0..len {
            for (r, sum) in sums.iter_mut().enumerate().take(count) {
                *sum += group[r * stride + p];
            }
        }
        for (row, sum) in group.chunks_mut(stride).zip(sums) {
            for v in row[..len].iter_mut() {
                *v /= sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cache::Geometry;
    use super::*;

    /// The softmax exponential against libm over its whole domain, at ulp scale.
    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
            x += 0.000_37;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) >= 0.0 && exp(-200.0) < 1e-37);
    }

    /// Against a plain two-pass reference over the same f16 values, across page boundaries
    /// and for a prefill block of several tokens.
    /// Head widths 12 (the portable value loop everywhere) and 64 and 128 (the AVX2 build's
    /// register-blocked one).
    #[test]
    fn matches_a_plain_reference() {
        for hd in [12, 64, 128] {
            check_against_reference(hd);
        }
    }

    fn check_against_reference(hd: usize) {
        let geometry = Geometry {
            layers: 1,
            kv_heads: 2,
            head_dim: hd,
        };
        let heads = Heads {
            n_head: 6,
            n_kv: 2,
            head_dim: hd,
            scale: 0.3,
            f16_weights: false,
        };
        let (pos0, t) = (PAGE + 7, 5);
        let total = pos0 + t;
        let val = |p: usize, h: usize, d: usize, s: usize| {
            (((p * 31 + h * 17 + d * 7 + s) % 23) as f32 / 11.0 - 1.0) * 0.9
        };
        let mut cache = KvCache::new();
        cache.reserve(total, geometry);
        for p in 0..total {
            let k: Vec<f32> = (0..2 * hd).map(|e| val(p, e / hd, e % hd, 0)).collect();
            let v: Vec<f32> = (0..2 * hd).map(|e| val(p, e / hd, e % hd, 5)).collect();
            cache.write(0, p, &k, &v);
        }
        cache.commit(total);
        let rows = t + 2; // the sequence starts at batch row 2
        let q: Vec<f32> = (0..6 * rows * hd)
            .map(|e| (e * 13 % 29) as f32 / 14.0 - 1.0)
            .collect();
        let queries = Queries { q: &q, rows };
        let r16 = |x: f32| f16::from_f32(x).to_f32();
        for g in 0..2 {
            let got = attend_group(&heads, &cache, 0, g, pos0, t, queries, 2);
            // The AVX2 build and the portable one give the same bits, with and without the
            // f16 rounding of the weights.
            assert_eq!(
                got,
                attend_group_body::<false>(&heads, &cache, 0, g, pos0, t, queries, 2)
            );
            let rounded = Heads {
                f16_weights: true,
                ..heads
            };
            assert_eq!(
                attend_group(&rounded, &cache, 0, g, pos0, t, queries, 2),
                attend_group_body::<false>(&rounded, &cache, 0, g, pos0, t, queries, 2)
            );
            for i in 0..t {
                for r in 0..3 {
                    let h = g * 3 + r;
                    let qrow = &q[(h * rows + 2 + i) * hd..][..hd];
                    let last = pos0 + i;
                    let s: Vec<f32> = (0..=last)
                        .map(|p| {
                            (0..hd).map(|d| qrow[d] * r16(val(p, g, d, 0))).sum::<f32>()
                                * heads.scale
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for d in 0..hd {
                        let want: f32 = (0..=last).map(|p| e[p] / z * r16(val(p, g, d, 5))).sum();
                        let have = got[i * 3 * hd + r * hd + d];
                        assert!(
                            (want - have).abs() < 1e-4,
                            "hd{hd} g{g} i{i} r{r} d{d}: {have} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
