//! LayerNorm over the last axis, `(x - mean) / sqrt(var + eps) * gamma + beta`, forward and
//! backward in one pass each over the rows.
//!
//! Burn composes it from its own operations: a mean, a subtraction, a square, another mean, a
//! square root, a division, a product with the gain and a sum with the bias, each a pass over the
//! activations on one thread, and their backward passes (with sums over the rows for the gain's
//! and the bias's gradients) about twice as many. The fused kernel normalises blocks of rows
//! across the cores, keeping each row's mean and reciprocal deviation for the backward pass,
//! which writes the input's gradient and sums each block's share of the gain's and bias's.
//!
//! It runs on burn-flex with f32 tensors, with and without autodiff; everything else takes
//! [`reference`] (Burn's own `layer_norm`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::flex::{contiguous, each, values};

/// The fused LayerNorm as an operation of a backend.
#[backend_extension(Flex, Autodiff)]
pub trait NormOps: Backend {
    /// LayerNorm of `x`'s rows (its last axis, `C` wide) with gain and bias `[C]`.
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// LayerNorm over the last axis with gain `gamma` and bias `beta` (`[C]` each): the fused kernel
/// on the CPU backend with f32 tensors, [`reference`] elsewhere; both are differentiable.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    if fused_applies(&x, &gamma, &beta) {
        Tensor::from_dispatch(<Dispatch as NormOps>::layer_norm_rows(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        ))
    } else {
        reference(x, gamma, beta, epsilon)
    }
}

/// Whether [`layer_norm`] takes the fused kernel (and the fused kernels are on:
/// [`crate::set_fused_kernels`]).
pub fn fused_applies<const D: usize>(x: &Tensor<D>, gamma: &Tensor<1>, beta: &Tensor<1>) -> bool {
    let c = x.dims()[D - 1];
    crate::fused_kernels()
        && x.device().inner() == Device::flex()
        && [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3]
        && gamma.dims() == [c]
        && beta.dims() == [c]
}

/// Burn's LayerNorm: the reference the fused kernel is tested against, and the path of every
/// other backend.
pub fn reference<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon)
}

impl NormOps for Flex {
    fn layer_norm_rows(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f64) -> FlexTensor {
        forward(&contiguous(x), &gamma, &beta, eps).0
    }
}

impl<C: CheckpointStrategy> NormOps for Autodiff<Flex, C> {
    fn layer_norm_rows(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (x, x_guard) = x.into_parts();
        let (gamma, gamma_guard) = gamma.into_parts();
        let (beta, beta_guard) = beta.into_parts();
        match LayerNormBackward
            .prepare::<C>([x_guard, gamma_guard, beta_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x);
                let (y, stats) = forward(&x, &gamma, &beta, epsilon);
                prep.finish(Saved { x, gamma, stats }, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(&contiguous(x), &gamma, &beta, epsilon).0)
            }
        }
    }
}

/// What the backward pass needs: the input, the gain, each row's mean and `1 / sqrt(var + eps)`.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Vec<[f32; 2]>,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let Saved { x, gamma, stats } = ops.state;
        let (dx, dgamma, dbeta) = backward(&x, &gamma, &stats, &grad);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, dbeta);
        }
    }
}

/// A `[C]` parameter's values.
fn vector(x: &FlexTensor) -> Vec<f32> {
    x.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Rows per task.
const BLOCK_ROWS: usize = 32;

/// The output (the input's shape) and each row's `[mean, 1 / sqrt(var + eps)]`.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<[f32; 2]>) {
    let input = values(x);
    let (gamma, beta) = (vector(gamma), vector(beta));
    let c = gamma.len();
    assert!(
        c > 0 && input.len().is_multiple_of(c) && beta.len() == c,
        "LayerNorm: {} values in rows of {c}",
        input.len()
    );
    let rows = input.len() / c;
    let mut out = vec![0f32; input.len()];
    let mut stats = vec![[0f32; 2]; rows];
    let tasks: Vec<_> = input
        .chunks(BLOCK_ROWS * c)
        .zip(out.chunks_mut(BLOCK_ROWS * c))
        .zip(stats.chunks_mut(BLOCK_ROWS))
        .collect();
    each(tasks, |((x, y), stats)| {
        pulp::Arch::new().dispatch(Normalize {
            x,
            y,
            stats,
            gamma: &gamma,
            beta: &beta,
            eps: eps as f32,
        });
    });
    let shape = x.layout().shape().clone();
    (FlexTensor::from_data(TensorData::new(out, shape)), stats)
}

/// The gradients of the input, the gain and the bias from the output's (contiguous) `grad`.
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    stats: &[[f32; 2]],
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (input, dy) = (values(x), values(grad));
    let gamma = vector(gamma);
    let c = gamma.len();
    assert!(
        input.len() == dy.len() && input.len() == stats.len() * c,
        "LayerNorm backward: {} inputs, {} gradients, {} rows of {c}",
        input.len(),
        dy.len(),
        stats.len()
    );
    let mut dx = vec![0f32; input.len()];
    let blocks = stats.len().div_ceil(BLOCK_ROWS);
    // Each block's sums for the gain and the bias, added up after.
    let mut partial = vec![0f32; blocks * 2 * c];
    let tasks: Vec<_> = input
        .chunks(BLOCK_ROWS * c)
        .zip(dy.chunks(BLOCK_ROWS * c))
        .zip(dx.chunks_mut(BLOCK_ROWS * c))
        .zip(stats.chunks(BLOCK_ROWS))
        .zip(partial.chunks_mut(2 * c))
        .collect();
    each(tasks, |((((x, dy), dx), stats), sums)| {
        let (dgamma, dbeta) = sums.split_at_mut(c);
        pulp::Arch::new().dispatch(NormalizeGrad {
            x,
            dy,
            dx,
            stats,
            gamma: &gamma,
            dgamma,
            dbeta,
        });
    });
    let mut dgamma = vec![0f32; c];
    let mut dbeta = vec![0f32; c];
    for sums in partial.chunks_exact(2 * c) {
        for (acc, v) in dgamma.iter_mut().zip(&sums[..c]) {
            *acc += v;
        }
        for (acc, v) in dbeta.iter_mut().zip(&sums[c..]) {
            *acc += v;
        }
    }
    let shape = x.layout().shape().clone();
    (
        FlexTensor::from_data(TensorData::new(dx, shape)),
        FlexTensor::from_data(TensorData::new(dgamma, [c])),
        FlexTensor::from_data(TensorData::new(dbeta, [c])),
    )
}

/// Normalises a block of rows.
struct Normalize<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    stats: &'a mut [[f32; 2]],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
}

impl pulp::WithSimd for Normalize<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let c = self.gamma.len();
        let rows = self.x.chunks_exact(c).zip(self.y.chunks_exact_mut(c));
        for ((x, y), stat) in rows.zip(self.stats.iter_mut()) {
            let mean = sum(s, x) / c as f32;
            let var = centered_squares(s, x, mean) / c as f32;
            let rstd = 1.0 / (var + self.eps).sqrt();
            *stat = [mean, rstd];
            let (mean_v, rstd_v) = (s.splat_f32s(mean), s.splat_f32s(rstd));
            let (xh, xt) = S::as_simd_f32s(x);
            let (yh, yt) = S::as_mut_simd_f32s(y);
            let (gh, gt) = S::as_simd_f32s(self.gamma);
            let (bh, bt) = S::as_simd_f32s(self.beta);
            for (((y, &x), &g), &b) in yh.iter_mut().zip(xh).zip(gh).zip(bh) {
                let xhat = s.mul_f32s(s.sub_f32s(x, mean_v), rstd_v);
                *y = s.mul_add_e_f32s(xhat, g, b);
            }
            for (((y, &x), &g), &b) in yt.iter_mut().zip(xt).zip(gt).zip(bt) {
                *y = (x - mean) * rstd * g + b;
            }
        }
    }
}

/// A block of rows' input gradients, and its sums for the gain's and the bias's:
/// `dx = rstd (g - mean(g) - xhat mean(g xhat))` with `g = dy gamma`, `xhat = (x - mean) rstd`;
/// `dgamma += dy xhat`, `dbeta += dy`.
struct NormalizeGrad<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    stats: &'a [[f32; 2]],
    gamma: &'a [f32],
    dgamma: &'a mut [f32],
    dbeta: &'a mut [f32],
}

impl pulp::WithSimd for NormalizeGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let c = self.gamma.len();
        let (gh, gt) = S::as_simd_f32s(self.gamma);
        let rows = self.x.chunks_exact(c).zip(self.dy.chunks_exact(c));
        for (((x, dy), dx), &[mean, rstd]) in rows.zip(self.dx.chunks_exact_mut(c)).zip(self.stats)
        {
            let (mean_v, rstd_v) = (s.splat_f32s(mean), s.splat_f32s(rstd));
            let (xh, xt) = S::as_simd_f32s(x);
            let (dyh, dyt) = S::as_simd_f32s(dy);
            // Sums of g and g xhat over the row; the gain's and bias's shares on the way.
            let (mut sg, mut sgx) = (s.splat_f32s(0.0), s.splat_f32s(0.0));
            {
                let (dgh, dgt) = S::as_mut_simd_f32s(self.dgamma);
                let (dbh, dbt) = S::as_mut_simd_f32s(self.dbeta);
                for ((((&x, &dy), &g), dg), db) in xh.iter().zip(dyh).zip(gh).zip(dgh).zip(dbh) {
                    let xhat = s.mul_f32s(s.sub_f32s(x, mean_v), rstd_v);
                    let gy = s.mul_f32s(dy, g);
                    sg = s.add_f32s(sg, gy);
                    sgx = s.mul_add_e_f32s(gy, xhat, sgx);
                    *dg = s.mul_add_e_f32s(dy, xhat, *dg);
                    *db = s.add_f32s(*db, dy);
                }
                let (mut tg, mut tgx) = (0f32, 0f32);
                for ((((&x, &dy), &g), dg), db) in xt.iter().zip(dyt).zip(gt).zip(dgt).zip(dbt) {
                    let xhat = (x - mean) * rstd;
                    tg += dy * g;
                    tgx += dy * g * xhat;
                    *dg += dy * xhat;
                    *db += dy;
                }
                let n = c as f32;
                let mg = (s.reduce_sum_f32s(sg) + tg) / n;
                let mgx = (s.reduce_sum_f32s(sgx) + tgx) / n;
                let (mg_v, mgx_v) = (s.splat_f32s(mg), s.splat_f32s(mgx));
                let (dxh, dxt) = S::as_mut_simd_f32s(dx);
                for (((dx, &x), &dy), &g) in dxh.iter_mut().zip(xh).zip(dyh).zip(gh) {
                    let xhat = s.mul_f32s(s.sub_f32s(x, mean_v), rstd_v);
                    let gy = s.mul_f32s(dy, g);
                    let inner = s.sub_f32s(s.sub_f32s(gy, mg_v), s.mul_f32s(xhat, mgx_v));
                    *dx = s.mul_f32s(rstd_v, inner);
                }
                for (((dx, &x), &dy), &g) in dxt.iter_mut().zip(xt).zip(dyt).zip(gt) {
                    let xhat = (x - mean) * rstd;
                    *dx = rstd * (dy * g - mg - xhat * mgx);
                }
            }
        }
    }
}

#[inline(always)]
fn sum<S: pulp::Simd>(s: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut acc = s.splat_f32s(0.0);
    for &v in head {
        acc = s.add_f32s(acc, v);
    }
    s.reduce_sum_f32s(acc) + tail.iter().sum::<f32>()
}

#[inline(always)]
fn centered_squares<S: pulp::Simd>(s: S, x: &[f32], mean: f32) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mean_v = s.splat_f32s(mean);
    let mut acc = s.splat_f32s(0.0);
    for &v in head {
        let d = s.sub_f32s(v, mean_v);
        acc = s.mul_add_e_f32s(d, d, acc);
    }
    s.reduce_sum_f32s(acc) + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}
