//! Products of 4- and 8-bit block matrices with inputs rounded to 8 bits per block of 32
//! ([`Inputs::Q8`](super::Inputs::Q8)), in integers: per block, the integer dot product of the
//! weights' levels with the inputs' levels, scaled by both scales, plus for Q4 the block minimum
//! times the inputs' block sum. With AVX2 a block is one `vpmaddubsw`, one `vpmaddwd`, one
//! conversion and one FMA per input row; elsewhere (wasm, CPUs without AVX2) a portable loop.

use super::{BlockKind, QK, QuantMatrix};

/// Input rows rounded to 8 bits in blocks of 32 along K: value `i` of block `b` is
/// `d[b] * q[32 b + i]`, and `sums[b]` is `d[b] * Σ q` over the block.
pub(super) struct Q8Rows {
    q: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl Q8Rows {
    pub(super) fn quantize(x: &[f32]) -> Self {
        // Compiled for the CPU's widest vector unit, where the rounding is inline vector code
        // rather than a call per value.
        pulp::Arch::new().dispatch(Quantize(x))
    }
}

/// [`Q8Rows::quantize`]'s loop.
struct Quantize<'a>(&'a [f32]);

impl pulp::WithSimd for Quantize<'_> {
    type Output = Q8Rows;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> Q8Rows {
        let x = self.0;
        let blocks = x.len() / QK;
        let mut out = Q8Rows {
            q: vec![0; blocks * QK],
            d: Vec::with_capacity(blocks),
            sums: Vec::with_capacity(blocks),
        };
        for (block, q) in x.chunks_exact(QK).zip(out.q.chunks_exact_mut(QK)) {
            let amax = block.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(block) {
                // NaN rounds to 0 here; a NaN input makes `d` NaN, which every product with
                // this block then carries.
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(*q);
            }
            out.d.push(d);
            out.sums.push(d * sum as f32);
        }
        out
    }
}

/// Output rows `rows` of `matrix · x` for every row of `x` (`t` of them), row-major
/// `[rows, T]` into `out`.
///
/// # Panics
/// If `matrix` is not Q4 or Q8, `x` does not hold `t` rows of the matrix's inputs, or `out`
/// is not `rows.len() * t` long.
pub(super) fn dots(
    matrix: &QuantMatrix,
    x: &Q8Rows,
    t: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let blocks = matrix.cols / QK;
    assert!(
        matrix.kind.integer()
            && rows.end <= matrix.rows
            && x.q.len() == t * blocks * QK
            && x.d.len() == t * blocks
            && x.sums.len() == t * blocks
            && out.len() == rows.len() * t,
        "integer products: {t} input rows for {matrix:?}, rows {rows:?}, {} outputs",
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
    {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX-512 F, BW and VNNI, and the sizes were checked above.
        unsafe {
            avx512::dots(matrix, x, t, rows, out)
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU has AVX2 and FMA, and the sizes were checked above.
        unsafe {
            avx2::dots(matrix, x, t, rows, out)
        };
        return;
    }
    portable(matrix, x, t, rows, out);
}

/// [`dots`] in plain Rust.
fn portable(m: &QuantMatrix, x: &Q8Rows, t: usize, rows: std::ops::Range<usize>, out: &mut [f32]) {
    let blocks = m.cols / QK;
    let mut acc = vec![0f32; t];
    for (i, row) in rows.enumerate() {
        acc.fill(0.0);
        for b in 0..blocks {
            let at = row * blocks + b;
            let mut w = [0i8; QK];
            if m.kind == BlockKind::Q4 {
                let q = &m.q[at * QK / 2..(at + 1) * QK / 2];
                for i in 0..QK / 2 {
                    w[i] = (q[i] & 0x0F) as i8;
                    w[i + QK / 2] = (q[i] >> 4) as i8;
                }
            } else {
                for (v, &q) in w.iter_mut().zip(&m.q[at * QK..(at + 1) * QK]) {
                    *v = q as i8;
                }
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = r * blocks + b;
                let xq = &x.q[xb * QK..(xb + 1) * QK];
                let dot: i32 = w
                    .iter()
                    .zip(xq)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
                *a += m.d[at] * x.d[xb] * dot as f32;
                if m.kind == BlockKind::Q4 {
                    *a += m.m[at] * x.sums[xb];
                }
            }
        }
        out[i * t..(i + 1) * t].copy_from_slice(&acc);
    }
}

/// Calls `$group::<R, Q4>(m, x, t, first, rows, out)` for the input rows in groups of up to
/// four (`first` = 0, 4, 8, ...; `R` the group's size, `Q4` whether `m` is Q4): the vector
/// kernels' shared dispatch. Unsafe to expand: it calls `$group`, whose requirements are the
/// caller's.
#[cfg(target_arch = "x86_64")]
macro_rules! in_groups_of_four {
    ($group:ident, $m:expr, $x:expr, $t:expr, $rows:expr, $out:expr) => {{
        let (m, x, t, rows, out) = ($m, $x, $t, $rows, $out);
        let q4 = m.kind == BlockKind::Q4;
        let mut first = 0;
        while first < t {
            match (q4, (t - first).min(4)) {
                (true, 4) => $group::<4, true>(m, x, t, first, rows.clone(), out),
                (true, 3) => $group::<3, true>(m, x, t, first, rows.clone(), out),
                (true, 2) => $group::<2, true>(m, x, t, first, rows.clone(), out),
                (true, _) => $group::<1, true>(m, x, t, first, rows.clone(), out),
                (false, 4) => $group::<4, false>(m, x, t, first, rows.clone(), out),
                (false, 3) => $group::<3, false>(m, x, t, first, rows.clone(), out),
                (false, 2) => $group::<2, false>(m, x, t, first, rows.clone(), out),
                (false, _) => $group::<1, false>(m, x, t, first, rows.clone(), out),
            }
            first += 4;
        }
    }};
}

// The kernel reads its blocks through raw pointers after one size check per call: written with
// safe fixed-size arrays (pulp's casts), its loop kept a copy through the stack per block and
// bound checks, and SmolLM2 decoded some 20% slower and prefilled a third slower.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{BlockKind, Q8Rows, QK, QuantMatrix};
    use core::arch::x86_64::*;

    /// [`super::dots`] with AVX2: input rows in groups of up to four, so each weight block is
    /// loaded and unpacked once per group and the group's sums stay in registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and the sizes must be those [`super::dots`] checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(
        m: &QuantMatrix,
        x: &Q8Rows,
        t: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        // SAFETY: as this function's.
        unsafe { in_groups_of_four!(group_dots, m, x, t, rows, out) };
    }

    /// Weight rows `rows` of `m` (Q4 when `Q4`, else Q8) dotted with input rows
    /// `first..first + R` of `x`, into columns `first..first + R` of the row-major `[rows, t]`
    /// `out`. Blocks alternate between two sums per input row, so consecutive blocks' FMAs do
    /// not wait on each other.
    ///
    /// # Safety
    /// As [`dots`]; `first + R <= t`.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn group_dots<const R: usize, const Q4: bool>(
        m: &QuantMatrix,
        x: &Q8Rows,
        t: usize,
        first: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let blocks = m.cols / QK;
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let block_bytes = if Q4 { QK / 2 } else { QK };
        // SAFETY (every pointer read below): each weight row holds `blocks` blocks of
        // `block_bytes`, `blocks` scales (and minimums for Q4); each input row `blocks` blocks of
        // 32 levels, scales and sums, as `dots`' caller checked.
        let xq = unsafe { x.q.as_ptr().add(first * blocks * QK) };
        let xd = unsafe { x.d.as_ptr().add(first * blocks) };
        for (i, row) in rows.enumerate() {
            let w = unsafe { m.q.as_ptr().add(row * blocks * block_bytes) };
            let d = unsafe { m.d.as_ptr().add(row * blocks) };
            let mut sums = [[_mm256_setzero_ps(); 2]; R];
            // Block `b` into sum `h`.
            macro_rules! block {
                ($b:expr, $h:expr) => {{
                    let b = $b;
                    let (wv, sign) = unsafe {
                        if Q4 {
                            let raw = _mm_loadu_si128(w.add(b * QK / 2).cast());
                            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
                            (_mm256_and_si256(both, low_nibbles), ones)
                        } else {
                            let v = _mm256_loadu_si256(w.add(b * QK).cast());
                            (_mm256_sign_epi8(v, v), v)
                        }
                    };
                    let db = unsafe { *d.add(b) };
                    for j in 0..R {
                        let (mut xv, xs) = unsafe {
                            (
                                _mm256_loadu_si256(xq.add((j * blocks + b) * QK).cast()),
                                *xd.add(j * blocks + b),
                            )
                        };
                        if !Q4 {
                            xv = _mm256_sign_epi8(xv, sign);
                        }
                        let products = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                        sums[j][$h] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(products),
                            _mm256_set1_ps(db * xs),
                            sums[j][$h],
                        );
                    }
                }};
            }
            let mut b = 0;
            while b + 1 < blocks {
                block!(b, 0);
                block!(b + 1, 1);
                b += 2;
            }
            if b < blocks {
                block!(b, 0);
            }
            for j in 0..R {
                let mut total = horizontal_sum(_mm256_add_ps(sums[j][0], sums[j][1]));
                if Q4 {
                    let mins = &m.m[row * blocks..(row + 1) * blocks];
                    let x_sums = &x.sums[(first + j) * blocks..(first + j + 1) * blocks];
                    total += min_term(mins, x_sums);
                }
                out[i * t + first + j] = total;
            }
        }
    }

    /// The sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn horizontal_sum(v: __m256) -> f32 {
        let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
    }

    /// `Σ a b`, eight at a time.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn min_term(a: &[f32], b: &[f32]) -> f32 {
        let (a8, a_rest) = a.as_chunks::<8>();
        let (b8, b_rest) = b.as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (u, v) in a8.iter().zip(b8) {
            // SAFETY: each chunk is eight f32s.
            let (u, v) = unsafe { (_mm256_loadu_ps(u.as_ptr()), _mm256_loadu_ps(v.as_ptr())) };
            acc = _mm256_fmadd_ps(u, v, acc);
        }
        horizontal_sum(acc) + a_rest.iter().zip(b_rest).map(|(u, v)| u * v).sum::<f32>()
    }
}

// The same products with AVX-512 and its 8-bit dot product (VNNI): two blocks per 512-bit
// register and one `vpdpbusd` where AVX2 takes `vpmaddubsw` and `vpmaddwd`, about half the
// instructions per weight. Where a row's block count is odd, its last block takes AVX2's steps.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use super::avx2::{horizontal_sum, min_term};
    use super::{BlockKind, Q8Rows, QK, QuantMatrix};
    use core::arch::x86_64::*;

    /// [`super::dots`] with AVX-512: input rows in groups of up to four, as the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, and the sizes must be those [`super::dots`]
    /// checks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn dots(
        m: &QuantMatrix,
        x: &Q8Rows,
        t: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        // SAFETY: as this function's.
        unsafe { in_groups_of_four!(group_dots, m, x, t, rows, out) };
    }

    /// As the AVX2 kernel's `group_dots`, a pair of blocks at a time: lanes 0-7 of a product
    /// hold block `b`'s sums and lanes 8-15 block `b + 1`'s.
    ///
    /// # Safety
    /// As [`dots`]; `first + R <= t`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[inline(never)]
    unsafe fn group_dots<const R: usize, const Q4: bool>(
        m: &QuantMatrix,
        x: &Q8Rows,
        t: usize,
        first: usize,
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let blocks = m.cols / QK;
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        // A pair's two scales spread over lanes 0-7 and 8-15.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let block_bytes = if Q4 { QK / 2 } else { QK };
        // SAFETY (every pointer read below): as the AVX2 kernel's.
        let xq = unsafe { x.q.as_ptr().add(first * blocks * QK) };
        let xd = unsafe { x.d.as_ptr().add(first * blocks) };
        for (i, row) in rows.enumerate() {
            let w = unsafe { m.q.as_ptr().add(row * blocks * block_bytes) };
            let d = unsafe { m.d.as_ptr().add(row * blocks) };
            let mut sums = [[_mm512_setzero_ps(); 2]; R];
            // Blocks `b` and `b + 1` into sum `h`.
            macro_rules! pair {
                ($b:expr, $h:expr) => {{
                    let b = $b;
                    let (wv, negative) = unsafe {
                        if Q4 {
                            // Bytes of blocks b and b + 1; each byte's low nibble is a value of
                            // the block's first half, its high nibble one of the second half.
                            let raw = _mm256_loadu_si256(w.add(b * QK / 2).cast());
                            let both = _mm512_inserti64x4::<1>(
                                _mm512_castsi256_si512(raw),
                                _mm256_srli_epi16::<4>(raw),
                            );
                            // [b low, b+1 low, b high, b+1 high] -> [b low, b high, b+1 ...]
                            let ordered = _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both);
                            (_mm512_and_si512(ordered, low_nibbles), 0)
                        } else {
                            // |w| as unsigned bytes; the inputs take the weights' signs.
                            let v = _mm512_loadu_si512(w.add(b * QK).cast());
                            (_mm512_abs_epi8(v), _mm512_movepi8_mask(v))
                        }
                    };
                    let dw = unsafe { _mm_castsi128_ps(_mm_loadl_epi64(d.add(b).cast())) };
                    for j in 0..R {
                        let (mut xv, dx) = unsafe {
                            (
                                _mm512_loadu_si512(xq.add((j * blocks + b) * QK).cast()),
                                _mm_castsi128_ps(_mm_loadl_epi64(xd.add(j * blocks + b).cast())),
                            )
                        };
                        if !Q4 {
                            xv = _mm512_mask_sub_epi8(xv, negative, zero, xv);
                        }
                        let products = _mm512_dpbusd_epi32(zero, wv, xv);
                        let scale = _mm512_permutexvar_ps(
                            spread,
                            _mm512_castps128_ps512(_mm_mul_ps(dw, dx)),
                        );
                        sums[j][$h] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scale, sums[j][$h]);
                    }
                }};
            }
            let mut b = 0;
            while b + 3 < blocks {
                pair!(b, 0);
                pair!(b + 2, 1);
                b += 4;
            }
            if b + 1 < blocks {
                pair!(b, 0);
                b += 2;
            }
            // An odd row's last block, 256 bits wide.
            let mut last = [0f32; R];
            if b < blocks {
                let ones = _mm256_set1_epi16(1);
                let (wv, sign) = unsafe {
                    if Q4 {
                        let raw = _mm_loadu_si128(w.add(b * QK / 2).cast());
                        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
                        (_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), ones)
                    } else {
                        let v = _mm256_loadu_si256(w.add(b * QK).cast());
                        (_mm256_sign_epi8(v, v), v)
                    }
                };
                let db = unsafe { *d.add(b) };
                for (j, last) in last.iter_mut().enumerate() {
                    let (mut xv, xs) = unsafe {
                        (
                            _mm256_loadu_si256(xq.add((j * blocks + b) * QK).cast()),
                            *xd.add(j * blocks + b),
                        )
                    };
                    if !Q4 {
                        xv = _mm256_sign_epi8(xv, sign);
                    }
                    let products = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                    *last = horizontal_sum(_mm256_mul_ps(
                        _mm256_cvtepi32_ps(products),
                        _mm256_set1_ps(db * xs),
                    ));
                }
            }
            for j in 0..R {
                let mut total =
                    _mm512_reduce_add_ps(_mm512_add_ps(sums[j][0], sums[j][1])) + last[j];
                if Q4 {
                    let mins = &m.m[row * blocks..(row + 1) * blocks];
                    let x_sums = &x.sums[(first + j) * blocks..(first + j + 1) * blocks];
                    total += min_term(mins, x_sums);
                }
                out[i * t + first + j] = total;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_integer_products_equal_the_vector_ones() {
        // The portable loop (wasm, CPUs without AVX2) against each vector kernel this CPU has
        // (AVX2; AVX-512 with VNNI), for every group size (1 to 4 input rows and a group of 1
        // after 4) and odd block counts: 3 (one pair and a last block) and 7 (two pairs at
        // once, a pair, a last block).
        let (n, t) = (9, 5);
        for k in [96, 224] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
                .collect();
            let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.61).cos()).collect();
            let rounded = Q8Rows::quantize(&x);
            for kind in [BlockKind::Q8, BlockKind::Q4] {
                let q = QuantMatrix::quantize(kind, &w, n, k).unwrap();
                let mut portable_out = vec![0f32; n * t];
                portable(&q, &rounded, t, 0..n, &mut portable_out);
                let mut kernels = vec![("picked", vec![0f32; n * t])];
                dots(&q, &rounded, t, 0..n, &mut kernels[0].1);
                #[cfg(target_arch = "x86_64")]
                #[allow(unsafe_code)]
                {
                    let has = |f: &str| match f {
                        "avx2" => {
                            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
                        }
                        _ => {
                            is_x86_feature_detected!("avx512f")
                                && is_x86_feature_detected!("avx512bw")
                                && is_x86_feature_detected!("avx512vnni")
                        }
                    };
                    if has("avx2") {
                        let mut out = vec![0f32; n * t];
                        // SAFETY: the CPU has AVX2 and FMA; the sizes are `dots`' own.
                        unsafe { avx2::dots(&q, &rounded, t, 0..n, &mut out) };
                        kernels.push(("AVX2", out));
                    }
                    if has("avx512") {
                        let mut out = vec![0f32; n * t];
                        // SAFETY: the CPU has AVX-512 F, BW and VNNI; the sizes are `dots`'.
                        unsafe { avx512::dots(&q, &rounded, t, 0..n, &mut out) };
                        kernels.push(("AVX-512", out));
                    }
                }
                for (name, out) in &kernels {
                    for (a, b) in portable_out.iter().zip(out) {
                        // Integer block sums are exact; only the float sums' order differs.
                        assert!(
                            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                            "{kind:?}, {k} inputs, {name}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
