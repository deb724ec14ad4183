//! Products of many input rows at once (a prompt's) with a block matrix: the weight rows are
//! expanded to f32 (in parallel, a slab of rows at a time) and multiplied with every input row by
//! `gemm`'s register-blocked kernels across the cores, which reuse each loaded weight and input
//! across a tile of outputs where the block kernels reload them per row or per group of four.

use rayon::prelude::*;

use super::{BlockKind, QK, QuantMatrix};

/// Input rows from which [`QuantMatrix::matmul_many_with`](super::QuantMatrix::matmul_many_with)
/// takes this path natively.
pub(super) const MIN_ROWS: usize = 16;

/// Weight rows expanded to f32 at a time: 2,048 rows of SmolLM2's 576 columns are 4.7 MB, so a
/// large matrix (an output head) never exists in f32 as a whole.
pub(super) const SLAB_ROWS: usize = 2048;

/// `x · mᵀ` for the `t` rows of `x` (each `m.cols` long): row-major `[t, m.rows]`, from the
/// weights' f32 values; the inputs are read as they are.
///
/// # Panics
/// If `x` does not hold `t` rows of the matrix's inputs.
pub(super) fn product(m: &QuantMatrix, x: &[f32], t: usize) -> Vec<f32> {
    let (n, k) = (m.rows, m.cols);
    assert!(
        x.len() == t * k,
        "dense product: {} inputs for {t} rows of {m:?}",
        x.len()
    );
    // outᵀ [n, t] = w [n, k] · xᵀ [k, t], xᵀ read from x = [t, k] through its strides, and
    // then transposed: gemm splits a product across the cores by its left operand's rows (here
    // the weights'), and writes a row-major result fastest (written transposed, a prompt's
    // products ran 40% slower, and with the tokens on the left, as slow).
    let rhs = (x, 0, k, 1);
    let mut out = vec![0f32; t * n];
    if m.kind == BlockKind::F32 {
        let product = cinder_shaders::new_product((&m.f[..n * k], 0, 1, k), rhs, (n, t, k));
        transpose_into(&product, t, &mut out, 0);
        return out;
    }
    let blocks = k / QK;
    let mut w = vec![0f32; SLAB_ROWS.min(n) * k];
    for start in (0..n).step_by(SLAB_ROWS) {
        let rows = SLAB_ROWS.min(n - start);
        let w = &mut w[..rows * k];
        w.par_chunks_mut(64 * k)
            .enumerate()
            .for_each(|(c, part)| m.unpack_blocks((start + c * 64) * blocks, part));
        let product = cinder_shaders::new_product((&*w, 0, 1, k), rhs, (rows, t, k));
        transpose_into(&product, t, &mut out, start);
    }
    out
}

/// Writes the row-major `[rows, t]` `src` into columns `start..start + rows` of the row-major
/// `[t, n]` `dst`, across the cores: a task fills 8 rows of `dst`, reading 8 consecutive values
/// of each row of `src` and writing each of its 8 rows in order (a value at a time down the
/// whole of `dst` was 9% of an f32 prompt's profile, on one core).
fn transpose_into(src: &[f32], t: usize, dst: &mut [f32], start: usize) {
    const TILE: usize = 8;
    let n = dst.len() / t;
    dst.par_chunks_mut(TILE * n)
        .enumerate()
        .for_each(|(c, rows_out)| {
            let first = c * TILE;
            let width = rows_out.len() / n;
            for (i, row) in src.chunks_exact(t).enumerate() {
                for (j, &v) in row[first..first + width].iter().enumerate() {
                    rows_out[j * n + start + i] = v;
                }
            }
        });
}
