//! Causal scaled dot-product attention, `softmax(Q Kᵀ / sqrt(D), causal) V`, forward and
//! backward, for training and whole-sequence passes (queries and keys of the same positions).
//!
//! Burn's attention under autodiff is composed of its own operations (a product, a scaling, a
//! mask, the softmax's max, subtraction, exponential, sum and division, another product), each a
//! pass over a `[B, H, T, T]` tensor that it allocates, and their backward passes as many again,
//! all on one thread. The fused kernel takes one task per (sequence, head) across the cores and
//! works through the queries in blocks of [`BLOCK`] rows: the block's scores against the keys it
//! may see go to a buffer of the task's own, the softmax runs over that buffer in place, and the
//! products go through `gemm`'s register-blocked kernels. Nothing of size `T x T` is stored
//! between the passes: the forward pass keeps each row's log-sum-exp, and the backward pass
//! recomputes the block's probabilities from it (the scheme of FlashAttention, with whole rows
//! per block since a row of scores fits the cache at these lengths).
//!
//! The kernel runs natively on burn-flex with f32 tensors, with and without autodiff; everything
//! else (wgpu, the browser, half precision) takes [`reference`], Burn's own attention.
//!
//! B=batch, H=heads, T=positions, D=head size

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Tensor};

/// Query rows per block of a task.
pub const BLOCK: usize = 64;

/// The fused causal attention as an operation of a backend.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionOps: Backend {
    /// `softmax(q kᵀ / sqrt(D), causal) v` for `q`, `k`, `v` of one shape `[B, H, T, D]`:
    /// query `i` sees keys `0..=i`.
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Causal attention of `T` queries over the keys and values of the same `T` positions, scaled
/// by `1 / sqrt(D)`: the fused kernel on the CPU backend with f32 tensors, [`reference`]
/// elsewhere; both are differentiable.
///
/// # Shapes
/// - q, k, v: `[B, H, T, D]`
/// - output: `[B, H, T, D]`
pub fn causal(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    if fused_applies(&q, &k, &v) {
        let out = <Dispatch as AttentionOps>::causal_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
        );
        Tensor::from_dispatch(out)
    } else {
        reference(q, k, v)
    }
}

/// Whether [`causal`] takes the fused kernel for these tensors: natively, on the CPU backend,
/// f32, one shape for all three, and the fused kernels on ([`crate::set_fused_kernels`]).
pub fn fused_applies(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    cfg!(not(target_family = "wasm"))
        && crate::fused_kernels()
        && q.device().inner() == Device::flex()
        && [q, k, v].iter().all(|t| t.dtype() == DType::F32)
        && q.dims() == k.dims()
        && q.dims() == v.dims()
}

/// Burn's attention with its causal flag: the reference the fused kernel is tested against, and
/// the path of every other backend.
pub fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: q.dims()[2] > 1,
    };
    attention(q, k, v, None, None, options)
}

impl AttentionOps for Flex {
    fn causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        kernel::forward(&q, &k, &v).0
    }
}

impl<C: CheckpointStrategy> AttentionOps for Autodiff<Flex, C> {
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (q, q_guard) = q.into_parts();
        let (k, k_guard) = k.into_parts();
        let (v, v_guard) = v.into_parts();
        match AttentionBackward
            .prepare::<C>([q_guard, k_guard, v_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = kernel::forward(&q, &k, &v);
                prep.finish(Saved { q, k, v, lse }, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(kernel::forward(&q, &k, &v).0),
        }
    }
}

/// What the backward pass needs: the inputs and each query row's log-sum-exp of its scores.
#[derive(Clone, Debug)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    lse: Vec<f32>,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Saved { q, k, v, lse } = ops.state;
        let (dq, dk, dv) = kernel::backward(&q, &k, &v, &lse, &grad);
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, dq);
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, dk);
        }
        if let Some(node) = node_v {
            grads.register::<Flex>(node.id, dv);
        }
    }
}

/// The kernels on burn-flex's tensors, read in place through their strides.
mod kernel {
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    use super::BLOCK;
    use crate::cross_entropy::{exp_shifted, exp_simd};
    use crate::flex::{each, product};

    /// A `[B, H, T, D]` f32 tensor's values and where element `(b, h, t, d)` lies in them.
    struct View {
        tensor: FlexTensor,
        offset: usize,
        strides: [usize; 4],
    }

    impl View {
        /// The tensor as it is when its strides are non-negative, else a contiguous copy.
        fn new(tensor: &FlexTensor) -> Self {
            let mut tensor = tensor.clone();
            if !tensor.layout().has_positive_strides() || tensor.dtype() != burn::tensor::DType::F32
            {
                tensor = FlexTensor::from_data(tensor.into_data().convert::<f32>());
            }
            let layout = tensor.layout();
            let strides: Vec<usize> = layout.strides().iter().map(|&s| s as usize).collect();
            let strides = [strides[0], strides[1], strides[2], strides[3]];
            let offset = layout.start_offset();
            Self {
                tensor,
                offset,
                strides,
            }
        }

        fn values(&self) -> &[f32] {
            self.tensor.storage::<f32>()
        }

        /// Where head `h` of sequence `b` starts, and its row and column strides.
        fn head(&self, b: usize, h: usize) -> Matrix {
            Matrix {
                start: self.offset + b * self.strides[0] + h * self.strides[1],
                row: self.strides[2],
                col: self.strides[3],
            }
        }

        /// Whether every element of a `dims` tensor lies inside the values.
        fn fits(&self, dims: [usize; 4]) -> bool {
            if dims.contains(&0) {
                return true;
            }
            let last: usize = self.offset
                + dims
                    .iter()
                    .zip(&self.strides)
                    .map(|(&n, &s)| (n - 1) * s)
                    .sum::<usize>();
            last < self.values().len()
        }
    }

    /// One head's `[T, D]` matrix inside a view's values.
    #[derive(Clone, Copy)]
    struct Matrix {
        start: usize,
        row: usize,
        col: usize,
    }

    fn dims(t: &FlexTensor) -> [usize; 4] {
        let shape = t.layout().shape();
        [shape[0], shape[1], shape[2], shape[3]]
    }

    /// `s = scale Q[r0..r1] K[0..r1]ᵀ` for the block of query rows `r0..r1` (`s` holds
    /// `r1 - r0` rows of `r1` scores).
    fn block_scores(
        s: &mut [f32],
        (q, qm): (&View, Matrix),
        (k, km): (&View, Matrix),
        (r0, r1): (usize, usize),
        d: usize,
        scale: f32,
    ) {
        product(
            s,
            (r1, 1),
            false,
            (q.values(), qm.start + r0 * qm.row, qm.col, qm.row),
            (k.values(), km.start, km.row, km.col),
            (r1 - r0, r1, d),
            scale,
        );
    }

    fn tensor(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, dims.to_vec()))
    }

    /// The output `[B, H, T, D]` (contiguous) and each row's log-sum-exp `[B * H * T]`.
    pub(super) fn forward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
    ) -> (FlexTensor, Vec<f32>) {
        let [b, h, t, d] = dims(q);
        let (q, k, v) = (View::new(q), View::new(k), View::new(v));
        assert!(
            [&q, &k, &v].iter().all(|x| x.fits([b, h, t, d])),
            "attention: a [{b}, {h}, {t}, {d}] input's strides reach outside its values"
        );
        let mut out = vec![0f32; b * h * t * d];
        let mut lse = vec![0f32; b * h * t];
        let scale = 1.0 / (d as f32).sqrt();
        if t > 0 && d > 0 {
            let heads: Vec<_> = out
                .chunks_mut(t * d)
                .zip(lse.chunks_mut(t))
                .enumerate()
                .collect();
            each(heads, |(bh, (out, lse))| {
                let (qm, km, vm) = (
                    q.head(bh / h, bh % h),
                    k.head(bh / h, bh % h),
                    v.head(bh / h, bh % h),
                );
                let mut scores = vec![0f32; BLOCK.min(t) * t];
                for r0 in (0..t).step_by(BLOCK) {
                    let r1 = (r0 + BLOCK).min(t);
                    let (rows, n) = (r1 - r0, r1);
                    let s = &mut scores[..rows * n];
                    block_scores(s, (&q, qm), (&k, km), (r0, r1), d, scale);
                    pulp::Arch::new().dispatch(Softmax {
                        s: &mut *s,
                        n,
                        first: r0,
                        lse: &mut lse[r0..r1],
                    });
                    // O[r0..r1] = P V[0..r1]
                    product(
                        &mut out[r0 * d..r1 * d],
                        (d, 1),
                        false,
                        (s, 0, 1, n),
                        (v.values(), vm.start, vm.col, vm.row),
                        (rows, d, n),
                        1.0,
                    );
                }
            });
        }
        (tensor(out, [b, h, t, d]), lse)
    }

    /// The gradients of `q`, `k` and `v` (contiguous `[B, H, T, D]`) from the output's `grad`.
    pub(super) fn backward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        lse: &[f32],
        grad: &FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let [b, h, t, d] = dims(q);
        let (q, k, v, g) = (View::new(q), View::new(k), View::new(v), View::new(grad));
        assert!(
            [&q, &k, &v, &g].iter().all(|x| x.fits([b, h, t, d])) && lse.len() == b * h * t,
            "attention backward: a [{b}, {h}, {t}, {d}] input's strides reach outside its values"
        );
        let size = t * d;
        let mut dq = vec![0f32; b * h * size];
        let mut dk = vec![0f32; b * h * size];
        let mut dv = vec![0f32; b * h * size];
        let scale = 1.0 / (d as f32).sqrt();
        if t > 0 && d > 0 {
            let heads: Vec<_> = dq
                .chunks_mut(size)
                .zip(dk.chunks_mut(size))
                .zip(dv.chunks_mut(size))
                .enumerate()
                .collect();
            each(heads, |(bh, ((dq, dk), dv))| {
                let (bi, hi) = (bh / h, bh % h);
                let (qm, km, vm, gm) = (
                    q.head(bi, hi),
                    k.head(bi, hi),
                    v.head(bi, hi),
                    g.head(bi, hi),
                );
                let lse = &lse[bh * t..(bh + 1) * t];
                let cap = BLOCK.min(t) * t;
                let (mut p, mut ds) = (vec![0f32; cap], vec![0f32; cap]);
                for r0 in (0..t).step_by(BLOCK) {
                    let r1 = (r0 + BLOCK).min(t);
                    let (rows, n) = (r1 - r0, r1);
                    let (p, ds) = (&mut p[..rows * n], &mut ds[..rows * n]);
                    // P = exp(scale Q Kᵀ - lse), recomputed.
                    block_scores(p, (&q, qm), (&k, km), (r0, r1), d, scale);
                    // dP = dO Vᵀ
                    product(
                        ds,
                        (n, 1),
                        false,
                        (g.values(), gm.start + r0 * gm.row, gm.col, gm.row),
                        (v.values(), vm.start, vm.row, vm.col),
                        (rows, n, d),
                        1.0,
                    );
                    pulp::Arch::new().dispatch(ScoreGrads {
                        p: &mut *p,
                        ds: &mut *ds,
                        n,
                        first: r0,
                        lse: &lse[r0..r1],
                    });
                    // dV[0..r1] += Pᵀ dO
                    product(
                        &mut dv[..n * d],
                        (d, 1),
                        true,
                        (p, 0, n, 1),
                        (g.values(), gm.start + r0 * gm.row, gm.col, gm.row),
                        (n, d, rows),
                        1.0,
                    );
                    // dQ[r0..r1] = scale dS K[0..r1]
                    product(
                        &mut dq[r0 * d..r1 * d],
                        (d, 1),
                        false,
                        (ds, 0, 1, n),
                        (k.values(), km.start, km.col, km.row),
                        (rows, d, n),
                        scale,
                    );
                    // dK[0..r1] += scale dSᵀ Q
                    product(
                        &mut dk[..n * d],
                        (d, 1),
                        true,
                        (ds, 0, n, 1),
                        (q.values(), qm.start + r0 * qm.row, qm.col, qm.row),
                        (n, d, rows),
                        scale,
                    );
                }
            });
        }
        (
            tensor(dq, [b, h, t, d]),
            tensor(dk, [b, h, t, d]),
            tensor(dv, [b, h, t, d]),
        )
    }

    /// Each row `r` of a block of scores (`n` wide; query `first + r` sees keys
    /// `0..=first + r`) becomes its probabilities, zero past the diagonal; `lse[r]` its
    /// log-sum-exp.
    struct Softmax<'a> {
        s: &'a mut [f32],
        n: usize,
        first: usize,
        lse: &'a mut [f32],
    }

    impl pulp::WithSimd for Softmax<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, s: S) {
            for (r, (row, lse)) in self.s.chunks_exact_mut(self.n).zip(self.lse).enumerate() {
                let (seen, unseen) = row.split_at_mut(self.first + r + 1);
                unseen.fill(0.0);
                let max = max(s, seen);
                let sum = exp_shifted(s, seen, max);
                *lse = max + sum.ln();
                let inv = s.splat_f32s(1.0 / sum);
                let (head, tail) = S::as_mut_simd_f32s(seen);
                for x in head {
                    *x = s.mul_f32s(*x, inv);
                }
                for x in tail {
                    *x /= sum;
                }
            }
        }
    }

    /// From a block's scores `p` (scaled) and `ds = dO Vᵀ`: `p` becomes the probabilities
    /// `exp(score - lse)` and `ds` the scores' gradient `p (ds - sum(p ds))`, both zero past the
    /// diagonal.
    struct ScoreGrads<'a> {
        p: &'a mut [f32],
        ds: &'a mut [f32],
        n: usize,
        first: usize,
        lse: &'a [f32],
    }

    impl pulp::WithSimd for ScoreGrads<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, s: S) {
            let rows = self
                .p
                .chunks_exact_mut(self.n)
                .zip(self.ds.chunks_exact_mut(self.n));
            for (r, ((p, ds), &lse)) in rows.zip(self.lse).enumerate() {
                let seen = self.first + r + 1;
                p[seen..].fill(0.0);
                ds[seen..].fill(0.0);
                let (p, ds) = (&mut p[..seen], &mut ds[..seen]);
                // dot = sum(p ds) with p = exp(score - lse), written back as it goes.
                let lse_v = s.splat_f32s(lse);
                let mut acc = s.splat_f32s(0.0);
                let (ph, pt) = S::as_mut_simd_f32s(p);
                let (dh, dt) = S::as_simd_f32s(ds);
                for (x, &g) in ph.iter_mut().zip(dh) {
                    *x = exp_simd(s, s.sub_f32s(*x, lse_v));
                    acc = s.mul_add_e_f32s(*x, g, acc);
                }
                let mut dot = s.reduce_sum_f32s(acc);
                for (x, &g) in pt.iter_mut().zip(dt) {
                    *x = crate::cross_entropy::exp(*x - lse);
                    dot += *x * g;
                }
                let dot_v = s.splat_f32s(dot);
                let (dh, dt) = S::as_mut_simd_f32s(ds);
                let (ph, pt) = S::as_simd_f32s(p);
                for (g, &x) in dh.iter_mut().zip(ph) {
                    *g = s.mul_f32s(x, s.sub_f32s(*g, dot_v));
                }
                for (g, &x) in dt.iter_mut().zip(pt) {
                    *g = x * (*g - dot);
                }
            }
        }
    }

    #[inline(always)]
    fn max<S: pulp::Simd>(s: S, row: &[f32]) -> f32 {
        let (head, tail) = S::as_simd_f32s(row);
        let mut acc = s.splat_f32s(f32::NEG_INFINITY);
        for &x in head {
            acc = s.max_f32s(acc, x);
        }
        tail.iter()
            .fold(s.reduce_max_f32s(acc), |m, &x| if x > m { x } else { m })
    }
}
