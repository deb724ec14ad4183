//! AdamW's update of one parameter in one pass over the parameter, its gradient and both
//! moments.
//!
//! Composed of Burn's operations the update is about a dozen element-wise passes over tensors
//! the size of the parameter, each allocating its result, on one thread. The fused kernel reads
//! each of the four once and writes the parameter and the moments in place when nothing else
//! holds them, across the cores.
//!
//! It runs on burn-flex with f32 tensors; everything else takes [`adamw_reference`].

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor};

use crate::flex::each;

/// One AdamW update's scalars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay rate of the first moment.
    pub beta1: f64,
    /// Decay rate of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub epsilon: f64,
    /// Decoupled weight decay (per unit of learning rate).
    pub weight_decay: f64,
    /// Updates so far, this one included (for the bias corrections).
    pub t: u64,
}

/// The fused AdamW update as an operation of a backend.
#[backend_extension(Flex)]
pub trait OptimOps: Backend {
    /// The parameter and both moments after one update (all `[N]`).
    fn adamw_update(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// AdamW with bias correction, for a parameter `p`, its gradient `g` and moments `m`, `v` (one
/// length each):
///
/// ```text
/// m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
/// p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
/// ```
///
/// Returns `[p, m, v]`: the fused kernel on the CPU backend with f32 tensors,
/// [`adamw_reference`] elsewhere.
pub fn adamw(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    step: AdamWStep,
) -> [Tensor<1>; 3] {
    if fused_applies(&[&p, &g, &m, &v]) {
        let (p, m, v) = <Dispatch as OptimOps>::adamw_update(
            p.into_dispatch(),
            g.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            step,
        );
        [p, m, v].map(Tensor::from_dispatch)
    } else {
        adamw_reference(p, g, m, v, step)
    }
}

/// Whether [`adamw`] takes the fused kernel: every tensor on the CPU backend (without autodiff),
/// f32, of one length, and the fused kernels on ([`crate::set_fused_kernels`]).
pub fn fused_applies(tensors: &[&Tensor<1>]) -> bool {
    crate::fused_kernels()
        && tensors.iter().all(|t| {
            t.device() == Device::flex()
                && !t.device().is_autodiff()
                && t.dtype() == DType::F32
                && t.dims() == tensors[0].dims()
        })
}

/// The update from Burn's operations: the reference the fused kernel is tested against, and the
/// path of every other backend.
pub fn adamw_reference(
    p: Tensor<1>,
    g: Tensor<1>,
    m: Tensor<1>,
    v: Tensor<1>,
    s: AdamWStep,
) -> [Tensor<1>; 3] {
    let m = m.mul_scalar(s.beta1) + g.clone().mul_scalar(1.0 - s.beta1);
    let v = v.mul_scalar(s.beta2) + g.square().mul_scalar(1.0 - s.beta2);
    let t = s.t as i32;
    let m_hat = m.clone().div_scalar(1.0 - s.beta1.powi(t));
    let v_hat = v.clone().div_scalar(1.0 - s.beta2.powi(t));
    let step = m_hat / v_hat.sqrt().add_scalar(s.epsilon);
    let p = p.mul_scalar(1.0 - s.lr * s.weight_decay) - step.mul_scalar(s.lr);
    [p, m, v]
}

impl OptimOps for Flex {
    fn adamw_update(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        step: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut p, g, mut m, mut v) = (owned(p), readable(g), owned(m), owned(v));
        let grad = g.as_slice::<f32>().unwrap_or_default();
        let (Some(ps), Some(ms), Some(vs)) = (
            p.try_storage_mut::<f32>(),
            m.try_storage_mut::<f32>(),
            v.try_storage_mut::<f32>(),
        ) else {
            unreachable!("owned() gives tensors of their own")
        };
        assert!(
            ps.len() == grad.len() && ms.len() == grad.len() && vs.len() == grad.len(),
            "AdamW: a parameter of {}, gradient of {}, moments of {} and {}",
            ps.len(),
            grad.len(),
            ms.len(),
            vs.len()
        );
        let k = Constants::new(step);
        let tasks: Vec<_> = ps
            .chunks_mut(CHUNK)
            .zip(grad.chunks(CHUNK))
            .zip(ms.chunks_mut(CHUNK))
            .zip(vs.chunks_mut(CHUNK))
            .collect();
        each(tasks, |(((p, g), m), v)| {
            pulp::Arch::new().dispatch(Update { p, g, m, v, k });
        });
        (p, m, v)
    }
}

/// Elements per task.
const CHUNK: usize = 32 * 1024;

/// The tensor as a contiguous f32 buffer with no other holder: itself when it is one already
/// (the update then writes in place), a copy otherwise.
fn owned(mut x: FlexTensor) -> FlexTensor {
    let fits = x.dtype() == DType::F32
        && x.layout().contiguous_offsets() == Some((0, x.layout().num_elements()));
    if !fits || x.try_storage_mut::<f32>().is_none() {
        x = FlexTensor::from_data(x.into_data().convert::<f32>());
    }
    x
}

/// The tensor as a contiguous f32 buffer (copied only when it is not one).
fn readable(x: FlexTensor) -> FlexTensor {
    if x.dtype() == DType::F32 && x.as_slice::<f32>().is_some() {
        x
    } else {
        FlexTensor::from_data(x.into_data().convert::<f32>())
    }
}

/// The update's scalars as f32.
#[derive(Clone, Copy)]
struct Constants {
    b1: f32,
    b2: f32,
    /// `1 - b1`, `1 - b2`.
    c1: f32,
    c2: f32,
    /// `1 / (1 - b1^t)`, `1 / (1 - b2^t)`.
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
    /// `1 - lr wd`.
    keep: f32,
}

impl Constants {
    fn new(s: AdamWStep) -> Self {
        let t = s.t as i32;
        Self {
            b1: s.beta1 as f32,
            b2: s.beta2 as f32,
            c1: (1.0 - s.beta1) as f32,
            c2: (1.0 - s.beta2) as f32,
            inv_bc1: (1.0 / (1.0 - s.beta1.powi(t))) as f32,
            inv_bc2: (1.0 / (1.0 - s.beta2.powi(t))) as f32,
            eps: s.epsilon as f32,
            lr: s.lr as f32,
            keep: (1.0 - s.lr * s.weight_decay) as f32,
        }
    }
}

struct Update<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    k: Constants,
}

impl pulp::WithSimd for Update<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let k = self.k;
        let (ph, pt) = S::as_mut_simd_f32s(self.p);
        let (gh, gt) = S::as_simd_f32s(self.g);
        let (mh, mt) = S::as_mut_simd_f32s(self.m);
        let (vh, vt) = S::as_mut_simd_f32s(self.v);
        let splat = |x: f32| s.splat_f32s(x);
        let (b1, b2, c1, c2) = (splat(k.b1), splat(k.b2), splat(k.c1), splat(k.c2));
        let (ib1, ib2, eps, lr, keep) = (
            splat(k.inv_bc1),
            splat(k.inv_bc2),
            splat(k.eps),
            splat(k.lr),
            splat(k.keep),
        );
        for (((p, &g), m), v) in ph.iter_mut().zip(gh).zip(mh).zip(vh) {
            *m = s.mul_add_e_f32s(b1, *m, s.mul_f32s(c1, g));
            *v = s.mul_add_e_f32s(b2, *v, s.mul_f32s(c2, s.mul_f32s(g, g)));
            let denom = s.add_f32s(s.sqrt_f32s(s.mul_f32s(*v, ib2)), eps);
            let step = s.div_f32s(s.mul_f32s(*m, ib1), denom);
            *p = s.sub_f32s(s.mul_f32s(*p, keep), s.mul_f32s(lr, step));
        }
        for (((p, &g), m), v) in pt.iter_mut().zip(gt).zip(mt).zip(vt) {
            *m = k.b1 * *m + k.c1 * g;
            *v = k.b2 * *v + k.c2 * (g * g);
            let step = (*m * k.inv_bc1) / ((*v * k.inv_bc2).sqrt() + k.eps);
            *p = *p * k.keep - k.lr * step;
        }
    }
}
