//! GELU with the tanh approximation (GPT-2's `gelu_new`) and SwiGLU's gating
//! (`silu(gate) * up`, LLaMA's), forward and backward in one pass each.
//!
//! Composed of Burn's operations, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` is six
//! element-wise passes forward and a dozen backward, each allocating a tensor the size of the
//! feed-forward layer's activations (the largest in a GPT-2 block) on one thread. The fused
//! kernel computes the value, and later its derivative, in one pass over those activations
//! split across the cores, with the exponential of [`crate::cross_entropy::exp_simd`].
//!
//! SwiGLU's gating is likewise a sigmoid, two products and their backward passes in one pass
//! over the gate and the up projection.
//!
//! Both run on burn-flex with f32 tensors, with and without autodiff; everything else takes
//! [`gelu_tanh_reference`] and [`swiglu_reference`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::sigmoid;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::cross_entropy::exp_simd;
use crate::flex::{contiguous, each, values};

/// `2 sqrt(2 / pi)`: `0.5 (1 + tanh(z)) = sigmoid(2 z)`.
const C1: f32 = 2.0 * 0.797_884_6;
const C2: f32 = C1 * 0.044_715;

/// The fused GELU as an operation of a backend.
#[backend_extension(Flex, Autodiff)]
pub trait ActivationOps: Backend {
    /// GELU with the tanh approximation, element by element.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `silu(gate) * up`, element by element (one shape for both).
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// GELU with the tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`: the
/// fused kernel on the CPU backend with f32 tensors, [`gelu_tanh_reference`] elsewhere; both
/// are differentiable.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused_applies(&x) {
        Tensor::from_dispatch(<Dispatch as ActivationOps>::gelu_tanh(x.into_dispatch()))
    } else {
        gelu_tanh_reference(x)
    }
}

/// Whether [`gelu_tanh`] takes the fused kernel for this tensor (and the fused kernels are on:
/// [`crate::set_fused_kernels`]).
pub fn fused_applies<const D: usize>(x: &Tensor<D>) -> bool {
    crate::fused_kernels() && x.device().inner() == Device::flex() && x.dtype() == DType::F32
}

/// The same GELU from Burn's operations, written through `0.5 (1 + tanh(z)) = sigmoid(2z)`: the
/// reference the fused kernel is tested against, and the path of every other backend.
pub fn gelu_tanh_reference<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let z = x.clone() * (x.clone() * x.clone()).mul_scalar(C2).add_scalar(C1);
    x * sigmoid(z)
}

/// SwiGLU's gating `silu(gate) * up = gate sigmoid(gate) up`: the fused kernel on the CPU
/// backend with f32 tensors of one shape, [`swiglu_reference`] elsewhere; both are
/// differentiable.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if fused_applies(&gate) && fused_applies(&up) && gate.dims() == up.dims() {
        Tensor::from_dispatch(<Dispatch as ActivationOps>::swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ))
    } else {
        swiglu_reference(gate, up)
    }
}

/// SwiGLU's gating from Burn's operations: the reference, and the path of every other backend.
pub fn swiglu_reference<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

impl ActivationOps for Flex {
    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        forward(&x)
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        swiglu_forward(&contiguous(gate), &contiguous(up))
    }
}

impl<C: CheckpointStrategy> ActivationOps for Autodiff<Flex, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, guard) = x.into_parts();
        match GeluBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = contiguous(x);
                let y = forward(&x);
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x)),
        }
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, gate_guard) = gate.into_parts();
        let (up, up_guard) = up.into_parts();
        let (gate, up) = (contiguous(gate), contiguous(up));
        match SwigluBackward
            .prepare::<C>([gate_guard, up_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = swiglu_forward(&gate, &up);
                prep.finish((gate, up), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(swiglu_forward(&gate, &up)),
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// The gate and the up projection (contiguous).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let (gate, up) = ops.state;
        let (dgate, dup) = swiglu_backward(&gate, &up, &grad);
        if let Some(node) = node_gate {
            grads.register::<Flex>(node.id, dgate);
        }
        if let Some(node) = node_up {
            grads.register::<Flex>(node.id, dup);
        }
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| backward(&x, grad));
    }
}

fn forward(x: &FlexTensor) -> FlexTensor {
    let x = contiguous(x.clone());
    let input = values(&x);
    let mut out = vec![0f32; input.len()];
    let tasks: Vec<_> = input.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).collect();
    each(tasks, |(x, y)| {
        pulp::Arch::new().dispatch(GeluForward { x, y });
    });
    FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
}

/// `grad * gelu'(x)`, written over `grad` when nothing else holds it.
fn backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    let mut grad = contiguous(grad);
    if grad.try_storage_mut::<f32>().is_none() {
        grad = FlexTensor::from_data(grad.into_data());
    }
    let (start, end) = grad.layout().contiguous_offsets().unwrap_or((0, 0));
    let input = values(x);
    if let Some(storage) = grad.try_storage_mut::<f32>() {
        let g = &mut storage[start..end];
        assert_eq!(
            g.len(),
            input.len(),
            "GELU backward: gradient and input sizes"
        );
        let tasks: Vec<_> = input.chunks(CHUNK).zip(g.chunks_mut(CHUNK)).collect();
        each(tasks, |(x, g)| {
            pulp::Arch::new().dispatch(GeluSlope { x, g });
        });
    }
    grad
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (g, u) = (values(gate), values(up));
    assert_eq!(g.len(), u.len(), "SwiGLU: gate and up sizes");
    let mut out = vec![0f32; g.len()];
    let tasks: Vec<_> = g
        .chunks(CHUNK)
        .zip(u.chunks(CHUNK))
        .zip(out.chunks_mut(CHUNK))
        .collect();
    each(tasks, |((g, u), y)| {
        pulp::Arch::new().dispatch(SwigluForward { g, u, y });
    });
    FlexTensor::from_data(TensorData::new(out, gate.layout().shape().clone()))
}

/// The gradients of the gate and the up projection from the output's (contiguous) `grad`.
fn swiglu_backward(
    gate: &FlexTensor,
    up: &FlexTensor,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let (g, u, dy) = (values(gate), values(up), values(grad));
    assert!(
        g.len() == u.len() && g.len() == dy.len(),
        "SwiGLU backward: gate, up and gradient sizes"
    );
    let mut dg = vec![0f32; g.len()];
    let mut du = vec![0f32; g.len()];
    let tasks: Vec<_> = g
        .chunks(CHUNK)
        .zip(u.chunks(CHUNK))
        .zip(dy.chunks(CHUNK))
        .zip(dg.chunks_mut(CHUNK).zip(du.chunks_mut(CHUNK)))
        .collect();
    each(tasks, |(((g, u), dy), (dg, du))| {
        pulp::Arch::new().dispatch(SwigluGrad { g, u, dy, dg, du });
    });
    let shape = gate.layout().shape().clone();
    (
        FlexTensor::from_data(TensorData::new(dg, shape.clone())),
        FlexTensor::from_data(TensorData::new(du, shape)),
    )
}

/// `sigmoid(x)` on a vector of lanes.
#[inline(always)]
fn sigmoid_simd<S: pulp::Simd>(s: S, x: S::f32s) -> S::f32s {
    let e = exp_simd(s, s.sub_f32s(s.splat_f32s(0.0), x));
    s.div_f32s(s.splat_f32s(1.0), s.add_f32s(s.splat_f32s(1.0), e))
}

fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + crate::cross_entropy::exp(-x))
}

/// SwiGLU's output `g sigmoid(g) u` on a vector of lanes: the training kernel's and the
/// decoding path's one definition.
#[inline(always)]
pub(crate) fn swiglu_simd<S: pulp::Simd>(s: S, g: S::f32s, u: S::f32s) -> S::f32s {
    s.mul_f32s(s.mul_f32s(g, sigmoid_simd(s, g)), u)
}

/// [`swiglu_simd`] on one value, for the lanes past the last full vector.
#[inline(always)]
pub(crate) fn swiglu_f32(g: f32, u: f32) -> f32 {
    g * sigmoid_f32(g) * u
}

struct SwigluForward<'a> {
    g: &'a [f32],
    u: &'a [f32],
    y: &'a mut [f32],
}

impl pulp::WithSimd for SwigluForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let (gh, gt) = S::as_simd_f32s(self.g);
        let (uh, ut) = S::as_simd_f32s(self.u);
        let (yh, yt) = S::as_mut_simd_f32s(self.y);
        for ((&g, &u), y) in gh.iter().zip(uh).zip(yh) {
            *y = swiglu_simd(s, g, u);
        }
        for ((&g, &u), y) in gt.iter().zip(ut).zip(yt) {
            *y = swiglu_f32(g, u);
        }
    }
}

/// `dgate = dy up sig (1 + gate (1 - sig))`, `dup = dy gate sig` with `sig = sigmoid(gate)`.
struct SwigluGrad<'a> {
    g: &'a [f32],
    u: &'a [f32],
    dy: &'a [f32],
    dg: &'a mut [f32],
    du: &'a mut [f32],
}

impl pulp::WithSimd for SwigluGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let (gh, gt) = S::as_simd_f32s(self.g);
        let (uh, ut) = S::as_simd_f32s(self.u);
        let (dyh, dyt) = S::as_simd_f32s(self.dy);
        let (dgh, dgt) = S::as_mut_simd_f32s(self.dg);
        let (duh, dut) = S::as_mut_simd_f32s(self.du);
        let one = s.splat_f32s(1.0);
        for ((((&g, &u), &dy), dg), du) in gh.iter().zip(uh).zip(dyh).zip(dgh).zip(duh) {
            let sig = sigmoid_simd(s, g);
            *du = s.mul_f32s(dy, s.mul_f32s(g, sig));
            let slope = s.mul_add_e_f32s(g, s.sub_f32s(one, sig), one);
            *dg = s.mul_f32s(s.mul_f32s(dy, u), s.mul_f32s(sig, slope));
        }
        for ((((&g, &u), &dy), dg), du) in gt.iter().zip(ut).zip(dyt).zip(dgt).zip(dut) {
            let sig = sigmoid_f32(g);
            *du = dy * g * sig;
            *dg = dy * u * sig * (1.0 + g * (1.0 - sig));
        }
    }
}

/// Elements per task.
const CHUNK: usize = 16 * 1024;

/// `sigmoid(z)` and `z`'s derivative `dz/dx` at `x`, for `z = x (C1 + C2 x^2)`.
#[inline(always)]
fn sigmoid_and_slope<S: pulp::Simd>(s: S, x: S::f32s) -> (S::f32s, S::f32s) {
    let x2 = s.mul_f32s(x, x);
    let z = s.mul_f32s(x, s.mul_add_e_f32s(x2, s.splat_f32s(C2), s.splat_f32s(C1)));
    let sig = sigmoid_simd(s, z);
    let slope = s.mul_add_e_f32s(x2, s.splat_f32s(3.0 * C2), s.splat_f32s(C1));
    (sig, slope)
}

struct GeluForward<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
}

impl pulp::WithSimd for GeluForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let (xh, xt) = S::as_simd_f32s(self.x);
        let (yh, yt) = S::as_mut_simd_f32s(self.y);
        for (&x, y) in xh.iter().zip(yh) {
            *y = s.mul_f32s(x, sigmoid_and_slope(s, x).0);
        }
        for (&x, y) in xt.iter().zip(yt) {
            *y = gelu(x);
        }
    }
}

struct GeluSlope<'a> {
    x: &'a [f32],
    g: &'a mut [f32],
}

impl pulp::WithSimd for GeluSlope<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let (xh, xt) = S::as_simd_f32s(self.x);
        let (gh, gt) = S::as_mut_simd_f32s(self.g);
        let one = s.splat_f32s(1.0);
        for (&x, g) in xh.iter().zip(gh) {
            let (sig, slope) = sigmoid_and_slope(s, x);
            // d/dx x sig(z) = sig + x sig (1 - sig) dz/dx
            let xs = s.mul_f32s(x, sig);
            let d = s.mul_add_e_f32s(s.mul_f32s(xs, s.sub_f32s(one, sig)), slope, sig);
            *g = s.mul_f32s(*g, d);
        }
        for (&x, g) in xt.iter().zip(gt) {
            *g *= gelu_slope(x);
        }
    }
}

fn sigmoid_scalar(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let z = x * (C1 + C2 * x2);
    (sigmoid_f32(z), C1 + 3.0 * C2 * x2)
}

fn gelu(x: f32) -> f32 {
    x * sigmoid_scalar(x).0
}

fn gelu_slope(x: f32) -> f32 {
    let (sig, slope) = sigmoid_scalar(x);
    sig + x * sig * (1.0 - sig) * slope
}
