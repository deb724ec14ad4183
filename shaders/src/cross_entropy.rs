//! Softmax cross-entropy over the rows of a `[N, V]` matrix of logits.
//!
//! Burn composes the loss from its own operations (`log_softmax` is a max, a subtraction, an
//! exponential, a sum, a logarithm and another subtraction, then a gather), so a language
//! model's loss makes about ten passes over the `[batch x context, vocabulary]` logits forward
//! and backward, each allocating a matrix as large as the logits. The fused kernel makes one
//! pass forward (the row's maximum and log-sum-exp, kept per row) and one pass backward, which
//! writes `(softmax(row) - onehot(target)) * grad` over the logits themselves when nothing else
//! holds them. Its exponential works on whole vector registers (Cody-Waite range reduction and a
//! degree-6 polynomial, within 2 ulp of `f32::exp` over the range that matters) instead of a
//! call to the C library per element; pulp picks the widest instructions the CPU has at run
//! time.
//!
//! The kernel runs on burn-flex with f32 logits, with and without autodiff; everything else
//! (wgpu, half precision) takes [`reference_rows`], made of Burn's operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// The fused cross-entropy as an operation of a backend.
#[backend_extension(Flex, Autodiff)]
pub trait CrossEntropyOps: Backend {
    /// Each row's loss `logsumexp(row) - row[target]`: logits `[N, V]`, targets `[N]`, output
    /// `[N]`. A target outside `0..V` gives that row a NaN loss (and NaN gradients).
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>)
    -> FloatTensor<Self>;
}

/// Each row's cross-entropy, `-log softmax(logits[i])[targets[i]]`.
///
/// Takes the fused kernel on the CPU backend with f32 logits and [`reference_rows`] elsewhere;
/// both are differentiable.
///
/// # Shapes
/// - logits: `[N, V]`
/// - targets: `[N]`
/// - output: `[N]`
pub fn cross_entropy_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if fused_applies(&logits, &targets) {
        let out = <Dispatch as CrossEntropyOps>::cross_entropy_rows(
            logits.into_dispatch(),
            targets.into_dispatch(),
        );
        Tensor::from_dispatch(out)
    } else {
        reference_rows(logits, targets)
    }
}

/// Whether [`cross_entropy_rows`] takes the fused kernel for these tensors (and the fused
/// kernels are on: [`crate::set_fused_kernels`]).
pub fn fused_applies(logits: &Tensor<2>, targets: &Tensor<1, Int>) -> bool {
    crate::fused_kernels()
        && logits.device().inner() == Device::flex()
        && logits.dtype() == DType::F32
        && matches!(targets.dtype(), DType::I32 | DType::I64)
}

/// Each row's cross-entropy from Burn's operations (`log_softmax` and `gather`): the reference
/// the fused kernel is tested against, and the path of every other backend.
pub fn reference_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
        .neg()
}

impl CrossEntropyOps for Flex {
    fn cross_entropy_rows(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        forward(&logits, &targets).losses
    }
}

impl<C: CheckpointStrategy> CrossEntropyOps for Autodiff<Flex, C> {
    fn cross_entropy_rows(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let (logits, guard) = logits.into_parts();
        match CrossEntropyBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let rows = forward(&logits, &targets);
                let state = SavedRows {
                    logits,
                    lse: rows.lse,
                    targets: rows.targets,
                };
                prep.finish(state, rows.losses)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&logits, &targets).losses),
        }
    }
}

/// What the backward pass needs: the logits, each row's log-sum-exp and its target.
#[derive(Clone, Debug)]
struct SavedRows {
    logits: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<Option<usize>>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = SavedRows;

    fn backward(self, ops: Ops<SavedRows, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let saved = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad_rows: Vec<f32> = f32_values(grad);
            backward(saved, &grad_rows)
        });
    }
}

/// The forward pass's results.
struct Rows {
    losses: FlexTensor,
    lse: Vec<f32>,
    targets: Vec<Option<usize>>,
}

/// A tensor's values in row-major order, as f32.
fn f32_values(tensor: FlexTensor) -> Vec<f32> {
    let data = tensor.into_data();
    data.try_into_vec_as::<f32>().unwrap_or_default()
}

/// The logits as one contiguous row-major matrix (copied only when they are not already).
fn contiguous(logits: FlexTensor) -> FlexTensor {
    if logits.layout().contiguous_offsets().is_some() {
        logits
    } else {
        FlexTensor::from_data(logits.into_data())
    }
}

fn target_ids(targets: &FlexTensor, n: usize, v: usize) -> Vec<Option<usize>> {
    let data = targets.clone().into_data();
    let ids = data.try_into_vec_as::<i64>().unwrap_or_default();
    (0..n)
        .map(|i| {
            ids.get(i)
                .and_then(|&t| usize::try_from(t).ok())
                .filter(|&t| t < v)
        })
        .collect()
}

fn dims(logits: &FlexTensor) -> (usize, usize) {
    let shape = logits.layout().shape();
    let v = shape.last().copied().unwrap_or(0);
    let n = shape.iter().product::<usize>().checked_div(v).unwrap_or(0);
    (n, v)
}

fn forward(logits: &FlexTensor, targets: &FlexTensor) -> Rows {
    let logits = contiguous(logits.clone());
    let (n, v) = dims(&logits);
    let targets = target_ids(targets, n, v);
    // NaN until computed: a layout the kernel could not read shows as a NaN loss, not a zero.
    let mut lse = vec![f32::NAN; n];
    let mut losses = vec![f32::NAN; n];
    if let Some((start, end)) = logits.layout().contiguous_offsets() {
        let x = &logits.storage::<f32>()[start..end];
        for_row_blocks(x, v, &mut lse, |block, lse_block| {
            pulp::Arch::new().dispatch(LogSumExp {
                x: block,
                v,
                out: lse_block,
            });
        });
        for (i, loss) in losses.iter_mut().enumerate() {
            *loss = match targets[i] {
                Some(t) => lse[i] - x[i * v + t],
                None => f32::NAN,
            };
        }
    }
    Rows {
        losses: FlexTensor::from_data(TensorData::new(losses, [n])),
        lse,
        targets,
    }
}

fn backward(saved: SavedRows, grad_rows: &[f32]) -> FlexTensor {
    let SavedRows {
        logits,
        lse,
        targets,
    } = saved;
    let mut out = contiguous(logits);
    let (n, v) = dims(&out);
    // Written over the logits when this is their only holder, into a new matrix otherwise.
    if out.try_storage_mut::<f32>().is_none() {
        out = FlexTensor::from_data(out.into_data());
    }
    let grads: Vec<f32> = (0..n)
        .map(|i| grad_rows.get(i).copied().unwrap_or(f32::NAN))
        .collect();
    if let Some((start, end)) = out.layout().contiguous_offsets()
        && let Some(storage) = out.try_storage_mut::<f32>()
    {
        let x = &mut storage[start..end];
        for_row_blocks_mut(x, v, |first, block| {
            let rows = block.len() / v.max(1);
            pulp::Arch::new().dispatch(SoftmaxGrad {
                x: &mut *block,
                v,
                lse: &lse[first..first + rows],
                grads: &grads[first..first + rows],
            });
            for r in 0..rows {
                let i = first + r;
                match targets[i] {
                    Some(t) => block[r * v + t] -= grads[i],
                    None => block[r * v..(r + 1) * v].fill(f32::NAN),
                }
            }
        });
    }
    out
}

/// Rows handed to one task.
const BLOCK_ROWS: usize = 8;

/// Calls `f(rows, out_rows)` on blocks of rows (and their entries of `out`), across cores where
/// there are threads.
fn for_row_blocks(
    x: &[f32],
    v: usize,
    out: &mut [f32],
    f: impl Fn(&[f32], &mut [f32]) + Sync + Send,
) {
    if v == 0 {
        return;
    }
    let step = BLOCK_ROWS * v;
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        x.par_chunks(step)
            .zip(out.par_chunks_mut(BLOCK_ROWS))
            .for_each(|(rows, o)| f(rows, o));
    }
    #[cfg(target_family = "wasm")]
    for (rows, o) in x.chunks(step).zip(out.chunks_mut(BLOCK_ROWS)) {
        f(rows, o);
    }
}

/// Calls `f(first_row, rows)` on blocks of rows, across cores where there are threads.
fn for_row_blocks_mut(x: &mut [f32], v: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if v == 0 {
        return;
    }
    let step = BLOCK_ROWS * v;
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        x.par_chunks_mut(step)
            .enumerate()
            .for_each(|(b, rows)| f(b * BLOCK_ROWS, rows));
    }
    #[cfg(target_family = "wasm")]
    for (b, rows) in x.chunks_mut(step).enumerate() {
        f(b * BLOCK_ROWS, rows);
    }
}

/// Each row's `max + ln(sum(exp(x - max)))`.
struct LogSumExp<'a> {
    x: &'a [f32],
    v: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for LogSumExp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        for (row, out) in self.x.chunks_exact(self.v).zip(self.out.iter_mut()) {
            let max = row_max(s, row);
            *out = if max == f32::NEG_INFINITY {
                // Every logit is -inf: nothing to normalise.
                max
            } else {
                max + row_sum_exp(s, row, max).ln()
            };
        }
    }
}

/// Each row becomes `exp(x - lse) * grad`.
struct SoftmaxGrad<'a> {
    x: &'a mut [f32],
    v: usize,
    lse: &'a [f32],
    grads: &'a [f32],
}

impl pulp::WithSimd for SoftmaxGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        for ((row, &lse), &g) in self
            .x
            .chunks_exact_mut(self.v)
            .zip(self.lse)
            .zip(self.grads)
        {
            let (head, tail) = S::as_mut_simd_f32s(row);
            let (lse_v, g_v) = (s.splat_f32s(lse), s.splat_f32s(g));
            for x in head {
                *x = s.mul_f32s(exp_simd(s, s.sub_f32s(*x, lse_v)), g_v);
            }
            for x in tail {
                *x = exp(*x - lse) * g;
            }
        }
    }
}

#[inline(always)]
fn row_max<S: pulp::Simd>(s: S, row: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(row);
    let mut acc = s.splat_f32s(f32::NEG_INFINITY);
    for &x in head {
        acc = s.max_f32s(acc, x);
    }
    // A NaN may be skipped here, but its exponential makes the row's sum (and loss) NaN, as
    // log_softmax's would be.
    tail.iter().fold(
        s.reduce_max_f32s(acc),
        |best, &x| if x > best { x } else { best },
    )
}

#[inline(always)]
fn row_sum_exp<S: pulp::Simd>(s: S, row: &[f32], shift: f32) -> f32 {
    let (head, tail) = S::as_simd_f32s(row);
    let shift_v = s.splat_f32s(shift);
    // Two accumulators, so consecutive exponentials do not wait on one another's sums.
    let (mut a0, mut a1) = (s.splat_f32s(0.0), s.splat_f32s(0.0));
    let (pairs, rest) = head.as_chunks::<2>();
    for [x0, x1] in pairs {
        a0 = s.add_f32s(a0, exp_simd(s, s.sub_f32s(*x0, shift_v)));
        a1 = s.add_f32s(a1, exp_simd(s, s.sub_f32s(*x1, shift_v)));
    }
    for &x in rest {
        a0 = s.add_f32s(a0, exp_simd(s, s.sub_f32s(x, shift_v)));
    }
    s.reduce_sum_f32s(s.add_f32s(a0, a1)) + tail.iter().map(|&x| exp(x - shift)).sum::<f32>()
}

/// Constants of [`exp`] and [`exp_simd`].
mod exp_consts {
    pub const LOG2_E: f32 = std::f32::consts::LOG2_E;
    /// Adding 1.5 * 2^23 rounds to an integer held in the low bits of the mantissa.
    pub const ROUND: f32 = 12_582_912.0;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    pub const LO: f32 = -87.0;
    pub const HI: f32 = 88.0;
}

/// [`exp`] on a vector of lanes.
#[inline(always)]
pub fn exp_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
    use exp_consts::*;
    // The bound first: x86's min and max return their second operand when one is NaN, so a
    // NaN goes through.
    let x = s.min_f32s(s.splat_f32s(HI), s.max_f32s(s.splat_f32s(LO), x));
    let t = s.mul_add_e_f32s(x, s.splat_f32s(LOG2_E), s.splat_f32s(ROUND));
    let n = s.sub_f32s(t, s.splat_f32s(ROUND));
    let ni = s.sub_u32s(s.transmute_u32s_f32s(t), s.splat_u32s(ROUND.to_bits()));
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-LN2_HI), x);
    let r = s.mul_add_e_f32s(n, s.splat_f32s(-LN2_LO), r);
    let mut p = s.splat_f32s(P[0]);
    for &c in &P[1..] {
        p = s.mul_add_e_f32s(p, r, s.splat_f32s(c));
    }
    let y = s.mul_add_e_f32s(p, s.mul_f32s(r, r), s.add_f32s(r, s.splat_f32s(1.0)));
    let biased = s.add_u32s(ni, s.splat_u32s(127));
    let scale = s.transmute_f32s_u32s(s.wrapping_dyn_shl_u32s(biased, s.splat_u32s(23)));
    s.mul_f32s(y, scale)
}

/// Each value of `row` becomes `exp(x - shift)`; returns their sum.
#[inline(always)]
pub fn exp_shifted<S: pulp::Simd>(s: S, row: &mut [f32], shift: f32) -> f32 {
    let shift_v = s.splat_f32s(shift);
    let mut acc = s.splat_f32s(0.0);
    let (head, tail) = S::as_mut_simd_f32s(row);
    for x in head {
        *x = exp_simd(s, s.sub_f32s(*x, shift_v));
        acc = s.add_f32s(acc, *x);
    }
    let mut sum = s.reduce_sum_f32s(acc);
    for x in tail {
        *x = exp(*x - shift);
        sum += *x;
    }
    sum
}

/// `e^x` for f32, vectorisable: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (ln 2 split in two
/// parts so `r` is exact), `e^r` by a degree-6 polynomial, `2^n` built in the exponent bits.
/// Inputs are clamped to [-87, 88] (results below 1.7e-38 are not needed here: they vanish
/// next to the row's largest term, which is 1).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(LO, HI);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits());
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = P[1..].iter().fold(P[0], |p, &c| p * r + c);
    let y = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    y * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            let ulp = (libm.to_bits() as i64 - ours.to_bits() as i64).abs() as f32;
            worst = worst.max(ulp);
            x += 0.001_3;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    struct Lanes<'a>(&'a mut [f32]);

    impl pulp::WithSimd for Lanes<'_> {
        type Output = ();
        fn with_simd<S: pulp::Simd>(self, s: S) {
            let (head, _) = S::as_mut_simd_f32s(self.0);
            for x in head {
                *x = exp_simd(s, *x);
            }
        }
    }

    #[test]
    fn vector_exp_is_within_two_ulp_and_keeps_nan() {
        let mut xs: Vec<f32> = (0..140_000).map(|i| -87.0 + i as f32 * 0.00125).collect();
        xs.truncate(xs.len() / 64 * 64);
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        pulp::Arch::new().dispatch(Lanes(&mut xs));
        let worst = xs
            .iter()
            .zip(&want)
            .map(|(a, b)| (a.to_bits() as i64 - b.to_bits() as i64).abs())
            .max()
            .unwrap_or(0);
        assert!(worst <= 2, "{worst} ulp");
        let mut special = vec![f32::NAN; 64];
        special[1] = f32::NEG_INFINITY;
        special[2] = 1000.0;
        pulp::Arch::new().dispatch(Lanes(&mut special));
        assert!(special[0].is_nan() && special[3].is_nan());
        assert!(special[1] < 1e-37 && special[2] > 1e38 && special[2].is_finite());
    }
}
