//! Block-quantized weight matrices and the matrix product that reads them without expanding
//! them: 8-bit (Q8_0's layout: 32 signed values and one scale per block) and 4-bit (Q4_1's: 32
//! nibbles, a scale and a minimum per block). Blocks run along the input dimension, as in GGUF,
//! so GGUF Q8_0, Q4_0 and Q4_1 tensors are kept exactly as the file stores them.
//!
//! Burn 0.22's CPU backend dequantizes a quantized weight in full on every matmul, which makes
//! quantized decoding slower than f32. Decoding is bound by reading weights, so this kernel
//! streams each block once, rebuilds its 32 values in registers and takes the dot products with
//! every input row there; on native targets the output rows are split across threads.
//!
//! N=outputs (rows), K=inputs (columns), T=input rows

#[cfg(not(target_family = "wasm"))]
mod dense;
mod int;

use crate::gguf::{GgmlType, QK};
use crate::{Error, Result};

/// Weight precision of a loaded model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// Every weight in f32.
    #[default]
    F32,
    /// Projections and output head in f16.
    F16,
    /// Projections in 8 bits (blocks of 32, one scale each).
    Q8,
    /// Projections in 4 bits (blocks of 32, a scale and a minimum each); the output head in
    /// 8 bits.
    Q4,
}

/// The weight precision asked for (`--dtype`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// A GGUF file's own f16, 8- or 4-bit weights on the CPU; f32 otherwise.
    #[default]
    Auto,
    /// Every weight in f32.
    F32,
    /// Projections and output head in f16.
    F16,
    /// Projections in 8-bit blocks.
    Q8,
    /// Projections in 4-bit blocks, the output head in 8 bits.
    Q4,
}

impl DtypeChoice {
    /// The precision asked for; `None` for automatic.
    pub fn weight_dtype(self) -> Option<WeightDtype> {
        match self {
            Self::Auto => None,
            Self::F32 => Some(WeightDtype::F32),
            Self::F16 => Some(WeightDtype::F16),
            Self::Q8 => Some(WeightDtype::Q8),
            Self::Q4 => Some(WeightDtype::Q4),
        }
    }
}

impl std::fmt::Display for DtypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

/// The two block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// `x = d * q`, `q` in -128..=127.
    Q8,
    /// `x = d * q + m`, `q` in 0..=15.
    Q4,
    /// IEEE half precision, `d = 1`.
    F16,
    /// IEEE single precision, `d = 1`: a model's own f32 weights on the decoding path.
    F32,
}

impl BlockKind {
    /// Whether the values are integer levels (Q8, Q4), which 8-bit inputs multiply in integers.
    pub fn integer(self) -> bool {
        matches!(self, Self::Q8 | Self::Q4)
    }
}

/// An `[N, K]` matrix stored in blocks of 32 along K.
#[derive(Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    kind: BlockKind,
    /// Q8: one byte per value; Q4: 16 bytes per block, value `i` in the low nibble of byte `i`
    /// and value `i + 16` in its high nibble; F16: two little-endian bytes per value.
    q: Vec<u8>,
    /// One scale per block.
    d: Vec<f32>,
    /// One minimum per block (Q4 only).
    m: Vec<f32>,
    /// The values of an F16 matrix (`q` is empty then).
    h: Vec<half::f16>,
    /// The values of an F32 matrix (`q` is empty then).
    f: Vec<f32>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({:?}, {}x{})",
            self.kind, self.rows, self.cols
        )
    }
}

fn check_shape(rows: usize, cols: usize) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(QK) || rows == 0 {
        return Err(Error::Shape(format!(
            "a {rows}x{cols} matrix cannot be block-quantized: the inputs must be a positive \
             multiple of {QK}"
        )));
    }
    Ok(())
}

impl QuantMatrix {
    /// Outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + 2 * self.h.len() + 4 * (self.f.len() + self.d.len() + self.m.len())
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix: Q8 symmetric by the block's largest
    /// magnitude, Q4 affine between the block's minimum and maximum.
    pub fn quantize(kind: BlockKind, values: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_shape(rows, cols)?;
        if values.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{} values do not make a {rows}x{cols} matrix",
                values.len()
            )));
        }
        let blocks = rows * cols / QK;
        let mut out = Self {
            rows,
            cols,
            kind,
            q: Vec::with_capacity(match kind {
                BlockKind::Q8 => rows * cols,
                BlockKind::Q4 => rows * cols / 2,
                BlockKind::F16 | BlockKind::F32 => 0,
            }),
            d: Vec::with_capacity(blocks),
            m: Vec::new(),
            h: Vec::new(),
            f: Vec::new(),
        };
        if kind == BlockKind::F32 {
            out.d = vec![1.0; blocks];
            out.f = values.to_vec();
            return Ok(out);
        }
        for block in values.chunks_exact(QK) {
            match kind {
                BlockKind::Q8 => {
                    let amax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
                    let d = amax / 127.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.d.push(d);
                    out.q.extend(
                        block
                            .iter()
                            .map(|&x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                    );
                }
                BlockKind::Q4 => {
                    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (max - min) / 15.0;
                    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                    out.d.push(d);
                    out.m.push(min);
                    let level = |x: f32| ((x - min) * inv).round().clamp(0.0, 15.0) as u8;
                    out.q.extend(
                        (0..QK / 2).map(|i| level(block[i]) | (level(block[i + QK / 2]) << 4)),
                    );
                }
                BlockKind::F16 => {
                    out.d.push(1.0);
                    out.h.extend(block.iter().map(|&x| half::f16::from_f32(x)));
                }
                BlockKind::F32 => unreachable!("returned above"),
            }
        }
        Ok(out)
    }

    /// Takes a GGUF tensor's blocks as they are (Q8_0 as Q8, Q4_0 and Q4_1 as Q4, F16 as F16,
    /// F32 as F32); `None` for other types.
    pub fn from_gguf(kind: GgmlType, raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        check_shape(rows, cols).ok()?;
        let half = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        let (block_bytes, kind_out) = match kind {
            GgmlType::Q8_0 => (2 + QK, BlockKind::Q8),
            GgmlType::Q4_0 => (2 + QK / 2, BlockKind::Q4),
            GgmlType::Q4_1 => (4 + QK / 2, BlockKind::Q4),
            GgmlType::F16 => (2 * QK, BlockKind::F16),
            GgmlType::F32 => (4 * QK, BlockKind::F32),
            _ => return None,
        };
        if raw.len() != rows * cols / QK * block_bytes {
            return None;
        }
        let mut out = Self {
            rows,
            cols,
            kind: kind_out,
            q: Vec::new(),
            d: Vec::new(),
            m: Vec::new(),
            h: Vec::new(),
            f: Vec::new(),
        };
        if kind == GgmlType::F32 {
            out.d = vec![1.0; rows * cols / QK];
            out.f = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return Some(out);
        }
        for b in raw.chunks_exact(block_bytes) {
            if kind == GgmlType::F16 {
                out.d.push(1.0);
                out.h.extend(
                    b.chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]])),
                );
                continue;
            }
            let d = half(b, 0);
            out.d.push(d);
            match kind {
                GgmlType::Q8_0 => out.q.extend_from_slice(&b[2..]),
                GgmlType::Q4_0 => {
                    // x = d * (q - 8): the same nibbles with a minimum of -8d.
                    out.m.push(-8.0 * d);
                    out.q.extend_from_slice(&b[2..]);
                }
                _ => {
                    out.m.push(half(b, 2));
                    out.q.extend_from_slice(&b[4..]);
                }
            }
        }
        Some(out)
    }

    /// Reorders the rows: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&mut self, order: &[usize]) {
        let row_q = self.q.len() / self.rows; // 0 for F16 and F32
        let row_b = self.cols / QK;
        let (q, d, m) = (self.q.clone(), self.d.clone(), self.m.clone());
        for (i, &from) in order.iter().enumerate() {
            self.q[i * row_q..(i + 1) * row_q]
                .copy_from_slice(&q[from * row_q..(from + 1) * row_q]);
            self.d[i * row_b..(i + 1) * row_b]
                .copy_from_slice(&d[from * row_b..(from + 1) * row_b]);
            if !m.is_empty() {
                self.m[i * row_b..(i + 1) * row_b]
                    .copy_from_slice(&m[from * row_b..(from + 1) * row_b]);
            }
        }
        let c = self.cols;
        if !self.h.is_empty() {
            let h = self.h.clone();
            for (i, &from) in order.iter().enumerate() {
                self.h[i * c..(i + 1) * c].copy_from_slice(&h[from * c..(from + 1) * c]);
            }
        }
        if !self.f.is_empty() {
            let f = self.f.clone();
            for (i, &from) in order.iter().enumerate() {
                self.f[i * c..(i + 1) * c].copy_from_slice(&f[from * c..(from + 1) * c]);
            }
        }
    }

    /// The matrix as row-major f32 values.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.d.len() * QK];
        self.unpack_blocks(0, &mut out);
        out
    }

    /// Blocks `first..` (as many as `out` holds whole blocks) into `out`, one after another.
    fn unpack_blocks(&self, first: usize, out: &mut [f32]) {
        let mut block = [0f32; QK];
        for (b, values) in (first..).zip(out.chunks_exact_mut(QK)) {
            self.unpack(b, &mut block);
            values.copy_from_slice(&block);
        }
    }

    /// Block `b`'s 32 values: its levels, scaled, plus its minimum (Q4).
    fn unpack(&self, b: usize, out: &mut [f32; QK]) {
        self.levels(b, out);
        let (d, m) = (self.d[b], self.m.get(b).copied().unwrap_or(0.0));
        for v in out.iter_mut() {
            *v = d * *v + m;
        }
    }

    /// Block `at`'s raw levels as f32 (`q` for Q8, the nibble for Q4, the value for F16).
    #[inline(always)]
    fn levels(&self, at: usize, w: &mut [f32; QK]) {
        match self.kind {
            BlockKind::Q8 => {
                if let Some(q) = self.q[at * QK..].first_chunk::<QK>() {
                    for i in 0..QK {
                        w[i] = f32::from(q[i] as i8);
                    }
                }
            }
            BlockKind::Q4 => {
                if let Some(q) = self.q[at * QK / 2..].first_chunk::<{ QK / 2 }>() {
                    for i in 0..QK / 2 {
                        w[i] = f32::from(q[i] & 0x0F);
                        w[i + QK / 2] = f32::from(q[i] >> 4);
                    }
                }
            }
            BlockKind::F16 => {
                use half::slice::HalfFloatSliceExt;
                // Uses the CPU's conversion instructions (F16C) when it has them.
                self.h[at * QK..(at + 1) * QK].convert_to_f32_slice(w);
            }
            BlockKind::F32 => w.copy_from_slice(&self.f[at * QK..(at + 1) * QK]),
        }
    }

    /// `x · selfᵀ` for `t` input rows: `x` is row-major `[T, K]`, the result `[T, N]`.
    pub fn matmul(&self, x: &[f32], t: usize) -> Vec<f32> {
        Self::matmul_many(&[self], x, t).pop().unwrap_or_default()
    }

    /// `x · mᵀ` for each matrix `m` of `matrices`, which share their inputs (K): `x` is
    /// row-major `[T, K]`, result `i` is `[T, N_i]`. For a few input rows (decoding) the output
    /// rows of all the matrices are split across threads together, so a layer's products that
    /// read the same input (query, key and value; gate and up) cost one parallel region; from
    /// 16 rows (a prompt) natively, each matrix is one product across the cores.
    ///
    /// # Panics
    /// If the matrices' inputs differ or `x` does not hold `t` rows of them.
    pub fn matmul_many(matrices: &[&QuantMatrix], x: &[f32], t: usize) -> Vec<Vec<f32>> {
        Self::matmul_many_with(matrices, x, t, Inputs::F32)
    }

    /// [`matmul_many`](Self::matmul_many) with the inputs read at `inputs`' precision.
    ///
    /// # Panics
    /// As [`matmul_many`](Self::matmul_many).
    pub fn matmul_many_with(
        matrices: &[&QuantMatrix],
        x: &[f32],
        t: usize,
        inputs: Inputs,
    ) -> Vec<Vec<f32>> {
        let Some(k) = matrices.first().map(|m| m.cols) else {
            return Vec::new();
        };
        assert!(
            matrices.iter().all(|m| m.cols == k) && x.len() == t * k,
            "matmul_many: {} input values for {t} rows of {k}, matrices {matrices:?}",
            x.len()
        );
        // A prompt's rows: one product per matrix, across the cores, already `[T, N]`.
        #[cfg(not(target_family = "wasm"))]
        if t >= dense::MIN_ROWS {
            return matrices.iter().map(|m| dense::product(m, x, t)).collect();
        }
        let rounded = (inputs == Inputs::Q8 && matrices.iter().any(|m| m.kind.integer()))
            .then(|| int::Q8Rows::quantize(x));
        let x_sums: Vec<f32> = if matrices
            .iter()
            .any(|m| m.kind == BlockKind::Q4 && rounded.is_none())
        {
            x.chunks_exact(QK).map(|c| c.iter().sum()).collect()
        } else {
            Vec::new()
        };
        // Each matrix's product is computed as `[N, T]` (a task's output rows are one slice of
        // it) and transposed at the end when T > 1.
        let mut outs: Vec<Vec<f32>> = matrices.iter().map(|m| vec![0f32; t * m.rows]).collect();
        // Output rows computed together by one task.
        const CHUNK: usize = 64;
        let work = |(which, start, part): (usize, usize, &mut [f32])| {
            let matrix = matrices[which];
            let rows = start..start + part.len() / t;
            if let Some(rounded) = rounded.as_ref().filter(|_| matrix.kind.integer()) {
                int::dots(matrix, rounded, t, rows, part);
                return;
            }
            // Compiled for the CPU's widest vector unit (AVX2 and FMA), detected at run time.
            pulp::Arch::new().dispatch(RowDots {
                matrix,
                x,
                x_sums: &x_sums,
                t,
                rows,
                out: part,
            });
        };
        let tasks: Vec<(usize, usize, &mut [f32])> = outs
            .iter_mut()
            .enumerate()
            .flat_map(|(which, out)| {
                out.chunks_mut(CHUNK * t)
                    .enumerate()
                    .map(move |(c, part)| (which, c * CHUNK, part))
            })
            .collect();
        cinder_shaders::team::for_each(tasks, work);
        if t > 1 {
            for out in &mut outs {
                let n = out.len() / t;
                let mut rows_first = vec![0f32; out.len()];
                for (i, row) in out.chunks_exact(t).enumerate() {
                    for (r, &v) in row.iter().enumerate() {
                        rows_first[r * n + i] = v;
                    }
                }
                *out = rows_first;
            }
        }
        outs
    }
}

/// Whether a product of `t` input rows takes the block kernels one output row at a time (short
/// parallel operations, best run by a [`team`](cinder_shaders::team)) rather than the path that
/// expands the weights and splits its own work across rayon's pool (natively, from 16 rows).
pub fn row_kernels(t: usize) -> bool {
    #[cfg(not(target_family = "wasm"))]
    return t < dense::MIN_ROWS;
    #[cfg(target_family = "wasm")]
    true
}

/// The precision a product reads its inputs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Inputs {
    /// As they are, f32: the product equals the one with the dequantized matrix to rounding.
    F32,
    /// Rounded to 8 bits in blocks of 32 (a scale per block, as llama.cpp's Q8_1) and
    /// multiplied with 4- and 8-bit matrices in integers, which is several times fewer
    /// instructions per weight; each input moves by at most half its block's step
    /// (`max |x| / 254`). F16 and F32 matrices, and prompts of 16 rows or more (which
    /// multiply dequantized weights), read f32 inputs either way.
    Q8,
}

impl std::fmt::Display for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

// In the browser the integer products have only their portable loop, and the f32 products
// their simd128 one, so the page keeps f32 inputs.
static EXACT_DECODE_INPUTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(cfg!(target_family = "wasm"));

/// Sets the input precision of the 4- and 8-bit products on the CPU decoding path for the
/// models quantized from now on (`--activations`); unless set, [`Inputs::Q8`] natively and
/// [`Inputs::F32`] in the browser.
pub fn set_decode_inputs(inputs: Inputs) {
    EXACT_DECODE_INPUTS.store(inputs == Inputs::F32, std::sync::atomic::Ordering::Relaxed);
}

/// The input precision set by [`set_decode_inputs`].
pub fn decode_inputs() -> Inputs {
    if EXACT_DECODE_INPUTS.load(std::sync::atomic::Ordering::Relaxed) {
        Inputs::F32
    } else {
        Inputs::Q8
    }
}

/// Output rows `rows` of `matrix · x` for every input row, row-major `[rows, T]` into `out`.
/// Each block's levels are rebuilt once and dotted with every input row in vector registers;
/// the block scale is applied to the vector of partial sums, and for Q4 the block minimum
/// times the block sum of the inputs (`x_sums`) is added separately.
struct RowDots<'a> {
    matrix: &'a QuantMatrix,
    x: &'a [f32],
    x_sums: &'a [f32],
    t: usize,
    rows: std::ops::Range<usize>,
    out: &'a mut [f32],
}

impl pulp::WithSimd for RowDots<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let m = self.matrix;
        let (k, t) = (m.cols, self.t);
        if m.kind == BlockKind::F32 {
            // The row as it is, four sums in flight: this loop only streams the weights.
            for (i, row) in self.rows.clone().enumerate() {
                let (wv, wt) = S::as_simd_f32s(&m.f[row * k..(row + 1) * k]);
                for r in 0..t {
                    let (xv, xt) = S::as_simd_f32s(&self.x[r * k..(r + 1) * k]);
                    let mut acc = [simd.splat_f32s(0.0); 4];
                    let (w4, w_rest) = wv.as_chunks::<4>();
                    let (x4, x_rest) = xv.as_chunks::<4>();
                    for (w, x) in w4.iter().zip(x4) {
                        for j in 0..4 {
                            acc[j] = simd.mul_add_e_f32s(w[j], x[j], acc[j]);
                        }
                    }
                    for (w, x) in w_rest.iter().zip(x_rest) {
                        acc[0] = simd.mul_add_e_f32s(*w, *x, acc[0]);
                    }
                    let sum =
                        simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
                    let tail: f32 = wt.iter().zip(xt).map(|(a, b)| a * b).sum();
                    self.out[i * t + r] = simd.reduce_sum_f32s(sum) + tail;
                }
            }
            return;
        }
        let blocks = k / QK;
        let mut w = [0f32; QK];
        let mut acc = vec![simd.splat_f32s(0.0); t];
        let mut offsets = vec![0f32; t];
        for (i, row) in self.rows.clone().enumerate() {
            acc.fill(simd.splat_f32s(0.0));
            offsets.fill(0.0);
            for b in 0..blocks {
                let at = row * blocks + b;
                m.levels(at, &mut w);
                let (wv, _) = S::as_simd_f32s(&w);
                let d = simd.splat_f32s(m.d[at]);
                for (r, a) in acc.iter_mut().enumerate() {
                    let start = r * k + b * QK;
                    let (xv, _) = S::as_simd_f32s(&self.x[start..start + QK]);
                    let mut dot = simd.splat_f32s(0.0);
                    for (wl, xl) in wv.iter().zip(xv) {
                        dot = simd.mul_add_e_f32s(*wl, *xl, dot);
                    }
                    *a = simd.mul_add_e_f32s(d, dot, *a);
                    if m.kind == BlockKind::Q4 {
                        offsets[r] += m.m[at] * self.x_sums[r * blocks + b];
                    }
                }
            }
            for r in 0..t {
                self.out[i * t + r] = simd.reduce_sum_f32s(acc[r]) + offsets[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3)
            .collect()
    }

    #[test]
    fn quantization_error_is_within_half_a_step() {
        let w = matrix(4, 64);
        for (kind, levels) in [
            (BlockKind::Q8, 254.0),
            (BlockKind::Q4, 15.0),
            (BlockKind::F16, 2048.0),
            (BlockKind::F32, f32::INFINITY),
        ] {
            let q = QuantMatrix::quantize(kind, &w, 4, 64).unwrap();
            let back = q.dequantize();
            let step = 0.6 / levels; // values span at most [-0.3, 0.3]
            let worst = w
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Half a step, plus rounding: the level comes from a quotient of up to 15 (Q4) or
            // 127 (Q8) levels computed with three roundings, and d q + m rounds twice, all
            // within 8 ε of the largest magnitude, 0.3.
            let bound = step / 2.0 + 8.0 * f32::EPSILON * 0.3;
            assert!(worst <= bound, "{kind:?}: {worst} > {bound}");
            if kind == BlockKind::F32 {
                assert_eq!(back, w);
            }
        }
    }

    #[test]
    fn matmul_equals_the_product_with_the_dequantized_matrix() {
        let (n, k, t) = (130, 96, 3);
        let w = matrix(n, k);
        let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for kind in [BlockKind::Q8, BlockKind::Q4, BlockKind::F16, BlockKind::F32] {
            let q = QuantMatrix::quantize(kind, &w, n, k).unwrap();
            let dense = q.dequantize();
            let y = q.matmul(&x, t);
            for r in 0..t {
                for c in 0..n {
                    let terms = (0..k).map(|i| dense[c * k + i] * x[r * k + i]);
                    let expected: f32 = terms.sum();
                    // Q4 sums d q x and m x apart, terms up to |w| + 2 |m| <= |w| + 0.6.
                    let offset = if kind == BlockKind::Q4 { 0.6 } else { 0.0 };
                    let magnitude: f32 = (0..k)
                        .map(|i| (dense[c * k + i].abs() + offset) * x[r * k + i].abs())
                        .sum();
                    // Two k-term sums in different orders (the kernel's per block, scaled once
                    // per block): each within k ε of the exact sum, relative to the terms'
                    // magnitudes, plus the per-block scalings.
                    let bound = (2 * k + k / 32 + 2) as f32 * f32::EPSILON * magnitude;
                    let diff = (y[r * n + c] - expected).abs();
                    assert!(diff <= bound, "{kind:?} [{r}, {c}]: {diff} > {bound}");
                }
            }
        }
    }

    #[test]
    fn eight_bit_inputs_move_the_product_by_at_most_half_a_step_per_input() {
        let (n, k, t) = (70, 128, 3);
        let w = matrix(n, k);
        let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        for kind in [BlockKind::Q8, BlockKind::Q4] {
            let q = QuantMatrix::quantize(kind, &w, n, k).unwrap();
            let dense = q.dequantize();
            let exact = QuantMatrix::matmul_many(&[&q], &x, t).remove(0);
            let rounded = QuantMatrix::matmul_many_with(&[&q], &x, t, Inputs::Q8).remove(0);
            let mut worst = 0f32;
            for r in 0..t {
                for c in 0..n {
                    // Each input moves by at most half its block's step, max |x| / 254.
                    let mut bound = 0f32;
                    let mut magnitude = 0f32;
                    for (b, block) in x[r * k..(r + 1) * k].chunks_exact(QK).enumerate() {
                        let step = block.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        for (i, &v) in block.iter().enumerate() {
                            let wv = dense[c * k + b * QK + i].abs();
                            bound += wv * step / 2.0;
                            magnitude += (wv + 0.6) * (v.abs() + step);
                        }
                    }
                    bound += (2 * k + 8) as f32 * f32::EPSILON * magnitude;
                    let diff = (rounded[r * n + c] - exact[r * n + c]).abs();
                    assert!(diff <= bound, "{kind:?} [{r}, {c}]: {diff} > {bound}");
                    worst = worst.max(diff / bound);
                }
            }
            // The rounding is there: the products differ, within the bound.
            assert!(worst > 0.0, "{kind:?}: 8-bit inputs changed nothing");
        }
    }

    #[test]
    fn many_rows_give_the_products_of_one_row_at_a_time() {
        // From dense::MIN_ROWS input rows natively the weights are expanded and multiplied by
        // gemm; row by row they go through the block kernels. Both read f32 inputs here, and
        // 8-bit inputs do not apply to that many rows.
        let (n, k, t) = (70, 96, 19);
        let w = matrix(n, k);
        let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for kind in [BlockKind::Q8, BlockKind::Q4, BlockKind::F16, BlockKind::F32] {
            let q = QuantMatrix::quantize(kind, &w, n, k).unwrap();
            for inputs in [Inputs::F32, Inputs::Q8] {
                let all = QuantMatrix::matmul_many_with(&[&q, &q], &x, t, inputs);
                assert_eq!(all.len(), 2);
                for r in 0..t {
                    let one = q.matmul(&x[r * k..(r + 1) * k], 1);
                    for c in 0..n {
                        let (a, b) = (all[1][r * n + c], one[c]);
                        let magnitude: f32 = (0..k)
                            .map(|i| (w[c * k + i].abs() + 0.6) * x[r * k + i].abs())
                            .sum();
                        let bound = (2 * k + 8) as f32 * f32::EPSILON * magnitude;
                        assert!((a - b).abs() <= bound, "{kind:?} [{r}, {c}]: {a} vs {b}");
                        assert_eq!(a, all[0][r * n + c]);
                    }
                }
            }
        }
        // A matrix of more rows than one slab of expanded weights: each slab's outputs land in
        // their own columns.
        let (n, k, t) = (dense::SLAB_ROWS + 70, 64, dense::MIN_ROWS);
        let w = matrix(n, k);
        let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let q = QuantMatrix::quantize(BlockKind::Q4, &w, n, k).unwrap();
        let all = q.matmul(&x, t);
        for r in 0..t {
            let one = q.matmul(&x[r * k..(r + 1) * k], 1);
            for c in 0..n {
                let (a, b) = (all[r * n + c], one[c]);
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "[{r}, {c}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn gguf_blocks_are_kept_exactly() {
        // One Q4_1 block: d = 0.5, m = -1, nibbles 0..15 then 15..0.
        let mut raw = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        raw.extend(half::f16::from_f32(-1.0).to_le_bytes());
        raw.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let q = QuantMatrix::from_gguf(GgmlType::Q4_1, &raw, 1, 32).expect("not decoded");
        let values = q.dequantize();
        assert_eq!(values, crate::gguf::dequantize(GgmlType::Q4_1, &raw));
        // d q + m rounds at most twice: within ε of the largest value, 6.5.
        let bound = f32::EPSILON * 6.5;
        assert!((values[0] + 1.0).abs() <= bound && (values[16] - 6.5).abs() <= bound);
        assert!(QuantMatrix::quantize(BlockKind::Q8, &[0.0; 20], 1, 20).is_err());
    }
}
