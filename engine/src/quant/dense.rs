//! Products of many input rows at once (a prompt's) with a block matrix: each task's weight rows
//! are expanded to f32 once and multiplied with every input row by `gemm`'s register-blocked
//! kernels, which reuse each loaded weight and input across a tile of outputs where the block
//! kernels reload them per row or per group of four.

use super::{BlockKind, QK, QuantMatrix};

/// Input rows from which [`QuantMatrix::matmul_many_with`](super::QuantMatrix::matmul_many_with)
/// takes this path natively.
pub(super) const MIN_ROWS: usize = 16;

/// Output rows `rows` of `m · x` for every row of `x` (`t` rows of `m.cols`), row-major
/// `[rows, T]` into `out`, from the rows' f32 values; the inputs are read as they are.
///
/// # Panics
/// If `x` does not hold `t` rows of the matrix's inputs, or `out` is not `rows.len() * t` long.
pub(super) fn dots(
    m: &QuantMatrix,
    x: &[f32],
    t: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let k = m.cols;
    assert!(
        rows.end <= m.rows && x.len() == t * k && out.len() == rows.len() * t,
        "dense product: {} inputs for {t} rows of {m:?}, rows {rows:?}, {} outputs",
        x.len(),
        out.len()
    );
    let blocks = k / QK;
    let expanded: Vec<f32>;
    let w: &[f32] = if m.kind == BlockKind::F32 {
        &m.f[rows.start * k..rows.end * k]
    } else {
        let mut w = vec![0f32; rows.len() * k];
        let mut block = [0f32; QK];
        for (i, at) in (rows.start * blocks..rows.end * blocks).enumerate() {
            m.unpack(at, &mut block);
            w[i * QK..(i + 1) * QK].copy_from_slice(&block);
        }
        expanded = w;
        &expanded
    };
    // out [n, t] = w [n, k] · xᵀ [k, t], xᵀ read from x = [t, k] through its strides.
    cinder_shaders::product(
        out,
        (t, 1),
        false,
        (w, 0, 1, k),
        (x, 0, k, 1),
        (rows.len(), t, k),
        1.0,
    );
}
