//! What the CPU backend's kernels share: their tensors as contiguous f32 slices, and work split
//! across rayon's threads (one after another in the browser, which has none).

use burn::backend::flex::FlexTensor;
use burn::tensor::DType;

/// The tensor as one contiguous row-major buffer of f32 (copied only when it is not already).
pub(crate) fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.layout().contiguous_offsets().is_some() && x.dtype() == DType::F32 {
        x
    } else {
        FlexTensor::from_data(x.into_data().convert::<f32>())
    }
}

/// A [`contiguous`] tensor's values (empty for any other).
pub(crate) fn values(x: &FlexTensor) -> &[f32] {
    match x.layout().contiguous_offsets() {
        Some((start, end)) if x.dtype() == DType::F32 => &x.storage::<f32>()[start..end],
        _ => &[],
    }
}

/// Calls `f` on every item, across cores where there are threads.
pub(crate) fn each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    items.into_iter().for_each(f);
}

/// One operand of a [`product`]: its values, where the matrix starts in them, and its column and
/// row strides.
pub type Operand<'a> = (&'a [f32], usize, usize, usize);

/// Whether a product of this many multiply-adds is worth splitting across the cores (below it
/// the hand-off costs more than it saves).
#[cfg(not(target_family = "wasm"))]
fn parallel(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) >= 1 << 21
}

/// Checks that every element of a `rows x cols` matrix at `start` with strides `(cs, rs)` lies
/// inside `len` values.
fn inside(len: usize, start: usize, cs: usize, rs: usize, rows: usize, cols: usize) -> bool {
    rows == 0 || cols == 0 || start + (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst = beta lhs rhs` (plus `dst` when `accumulate`) for `lhs` `[m, k]` and `rhs` `[k, n]`;
/// `dst` is `[m, n]` with (row stride, column stride) `dst_strides`. On one thread: the callers
/// are tasks of a parallel loop.
///
/// # Panics
/// If an index the product reads or writes lies outside its slice.
pub fn product(
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: Operand,
    rhs: Operand,
    (m, n, k): (usize, usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (drs, dcs) = dst_strides;
    assert!(
        inside(dst.len(), 0, dcs, drs, m, n)
            && inside(lhs.0.len(), lhs.1, lhs.2, lhs.3, m, k)
            && inside(rhs.0.len(), rhs.1, rhs.2, rhs.3, k, n),
        "a [{m}, {k}] x [{k}, {n}] product reaches outside its buffers"
    );
    #[cfg(not(target_family = "wasm"))]
    #[allow(unsafe_code)]
    // SAFETY: the assertion above checks that the last (and so every) index of each operand,
    // from its start through its strides, lies inside its slice; `dst` is a mutable borrow, so
    // it overlaps neither input.
    unsafe {
        gemm_raw(
            dst.as_mut_ptr(),
            (drs, dcs),
            accumulate,
            lhs,
            rhs,
            (m, n, k),
            beta,
            false,
        );
    }
    // The browser has no `gemm` (and its callers never run there: see their `fused_applies`).
    #[cfg(target_family = "wasm")]
    for i in 0..m {
        for j in 0..n {
            let dot: f32 = (0..k)
                .map(|l| {
                    lhs.0[lhs.1 + i * lhs.3 + l * lhs.2] * rhs.0[rhs.1 + l * rhs.3 + j * rhs.2]
                })
                .sum();
            let o = &mut dst[i * drs + j * dcs];
            *o = if accumulate {
                *o + beta * dot
            } else {
                beta * dot
            };
        }
    }
}

/// `lhs rhs` for `lhs` `[m, k]` and `rhs` `[k, n]` as a new row-major `[m, n]` buffer, across
/// the cores when the product is large. The buffer is written once, by the product: it is
/// never zeroed first, and it is a `Vec<f32>`, which Burn's CPU tensors take over without a
/// copy.
///
/// # Panics
/// If an index the product reads lies outside its slice.
pub fn new_product(lhs: Operand, rhs: Operand, (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let len = m.saturating_mul(n);
    if k == 0 || len == 0 {
        return vec![0.0; len];
    }
    assert!(
        inside(lhs.0.len(), lhs.1, lhs.2, lhs.3, m, k)
            && inside(rhs.0.len(), rhs.1, rhs.2, rhs.3, k, n),
        "a [{m}, {k}] x [{k}, {n}] product reaches outside its inputs"
    );
    #[cfg(target_family = "wasm")]
    {
        let mut out = vec![0.0; len];
        product(&mut out, (n, 1), false, lhs, rhs, (m, n, k), 1.0);
        out
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let mut out = Vec::<f32>::with_capacity(len);
        #[allow(unsafe_code)]
        // SAFETY: the operands' indices are checked above; the destination is the buffer's own
        // `m x n` capacity, row-major, which overlaps neither input. Without `accumulate` gemm
        // never reads the destination (it zeroes its own factor for it and takes the kernels that
        // only store), and it writes every one of the `m x n` elements (k > 0 here), so all `len`
        // values are initialised before the length is set.
        unsafe {
            gemm_raw(
                out.as_mut_ptr(),
                (n, 1),
                false,
                lhs,
                rhs,
                (m, n, k),
                1.0,
                parallel(m, n, k),
            );
            out.set_len(len);
        }
        out
    }
}

/// gemm's pointer-and-stride call: `dst = beta lhs rhs` (plus `dst` when `accumulate`).
///
/// # Safety
/// Every index of the `[m, k]` and `[k, n]` operands from their starts through their strides
/// lies inside their slices, and `dst` points to memory writable at every index of an `[m, n]`
/// matrix with (row, column) strides `dst_strides` (and initialised there when `accumulate`),
/// overlapping neither operand.
#[cfg(not(target_family = "wasm"))]
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn gemm_raw(
    dst: *mut f32,
    (drs, dcs): (usize, usize),
    accumulate: bool,
    (lv, ls, lcs, lrs): Operand,
    (rv, rs, rcs, rrs): Operand,
    (m, n, k): (usize, usize, usize),
    beta: f32,
    across_cores: bool,
) {
    let parallelism = if across_cores {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dcs as isize,
            drs as isize,
            accumulate,
            lv.as_ptr().add(ls),
            lcs as isize,
            lrs as isize,
            rv.as_ptr().add(rs),
            rcs as isize,
            rrs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
}
