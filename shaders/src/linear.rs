//! A linear layer, `x W + b` over the rows of `x`, forward and backward, and the same product
//! against a weight stored transposed (an output head tied to the token embedding, `x Eᵀ`).
//!
//! Burn's CPU backend runs the products through gemm too, but writes each into a tensor that it
//! first fills with zeros and then copies into a buffer of its own alignment: two extra passes
//! over every product's output (the logits included) before gemm writes it, plus one for the
//! bias and one more to sum the bias's gradient. This kernel has gemm write each product once
//! into a buffer that becomes the tensor as it is, reads the weight through its strides (a
//! transposed weight is never copied), and takes the bias's gradient as one more product.
//!
//! It runs on burn-flex with f32 tensors, with and without autodiff; everything else (wgpu,
//! the browser, half precision, quantized weights) takes [`reference`], Burn's own `linear`.
//!
//! R=rows (every axis of `x` but the last), I=inputs, O=outputs

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::flex::{Operand, contiguous, each, new_product, values};

/// The fused linear layer as an operation of a backend.
#[backend_extension(Flex, Autodiff)]
pub trait LinearOps: Backend {
    /// `x W` over `x`'s rows (its last axis, `I` wide), for `weight` `[I, O]`, or `[O, I]`
    /// when `transposed` (then `x Wᵀ`).
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self>;

    /// `x W + bias` over `x`'s rows, for `weight` `[I, O]` and `bias` `[O]`.
    fn linear_rows_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `x W (+ b)` for `weight` `[I, O]` and `bias` `[O]`: the fused kernel on the CPU backend with
/// f32 tensors, [`reference`] elsewhere; both are differentiable.
///
/// # Shapes
/// - x: `[..., I]` -> `[..., O]`
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if !fused_applies(&x, &weight, bias.as_ref(), false) {
        return reference(x, weight, bias);
    }
    let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(bias) => <Dispatch as LinearOps>::linear_rows_bias(x, weight, bias.into_dispatch()),
        None => <Dispatch as LinearOps>::linear_rows(x, weight, false),
    })
}

/// `x Wᵀ` for `weight` `[O, I]` (an output head tied to a `[V, C]` embedding): the fused kernel
/// on the CPU backend with f32 tensors, [`reference`] of the transposed weight elsewhere.
///
/// # Shapes
/// - x: `[..., I]` -> `[..., O]`
pub fn linear_transposed<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    if fused_applies(&x, &weight, None, true) {
        Tensor::from_dispatch(<Dispatch as LinearOps>::linear_rows(
            x.into_dispatch(),
            weight.into_dispatch(),
            true,
        ))
    } else {
        reference(x, weight.transpose(), None)
    }
}

/// Whether [`linear`] (or [`linear_transposed`], when `transposed`) takes the fused kernel:
/// the CPU backend, f32 throughout, shapes that agree, and the fused kernels on
/// ([`crate::set_fused_kernels`]).
pub fn fused_applies<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    transposed: bool,
) -> bool {
    let [rows, cols] = weight.dims();
    let (inputs, outputs) = if transposed {
        (cols, rows)
    } else {
        (rows, cols)
    };
    crate::fused_kernels()
        && inputs > 0
        && x.device().inner() == Device::flex()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.dims()[D - 1] == inputs
        && bias.is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [outputs])
}

/// Burn's `linear`: the reference the fused kernel is tested against, and the path of every
/// other backend.
pub fn reference<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    burn::tensor::module::linear(x, weight, bias)
}

impl LinearOps for Flex {
    fn linear_rows(x: FlexTensor, weight: FlexTensor, transposed: bool) -> FlexTensor {
        forward(&contiguous(x), &Weight::new(weight, transposed), None)
    }

    fn linear_rows_bias(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        forward(&contiguous(x), &Weight::new(weight, false), Some(&bias))
    }
}

impl<C: CheckpointStrategy> LinearOps for Autodiff<Flex, C> {
    fn linear_rows(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self> {
        let (x, x_guard) = x.into_parts();
        let (weight, weight_guard) = weight.into_parts();
        tracked::<C, 2>(
            [x_guard, weight_guard],
            x,
            Weight::new(weight, transposed),
            None,
        )
    }

    fn linear_rows_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x, x_guard) = x.into_parts();
        let (weight, weight_guard) = weight.into_parts();
        let (bias, bias_guard) = bias.into_parts();
        let guards = [x_guard, weight_guard, bias_guard];
        tracked::<C, 3>(guards, x, Weight::new(weight, false), Some(&bias))
    }
}

/// The forward pass under autodiff, keeping the input and the weight for the backward pass
/// when a gradient is wanted; `guards` are the input's, the weight's and (with a bias) the
/// bias's.
fn tracked<C: CheckpointStrategy, const N: usize>(
    guards: [NodeGuard; N],
    x: FlexTensor,
    weight: Weight,
    bias: Option<&FlexTensor>,
) -> FloatTensor<Autodiff<Flex, C>>
where
    LinearBackward: Backward<Flex, N, State = Saved>,
{
    match LinearBackward
        .prepare::<C>(guards)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = contiguous(x);
            let y = forward(&x, &weight, bias);
            prep.finish(Saved { x, weight }, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&contiguous(x), &weight, bias)),
    }
}

/// A weight read in place through its strides (copied only when a stride is negative or it is
/// not f32), as the `[I, O]` matrix the product uses.
#[derive(Clone, Debug)]
struct Weight {
    tensor: FlexTensor,
    /// Stored `[O, I]`.
    transposed: bool,
    start: usize,
    /// The stored matrix's row and column strides.
    strides: (usize, usize),
}

impl Weight {
    fn new(tensor: FlexTensor, transposed: bool) -> Self {
        let tensor = if tensor.layout().has_positive_strides() && tensor.dtype() == DType::F32 {
            tensor
        } else {
            FlexTensor::from_data(tensor.into_data().convert::<f32>())
        };
        let layout = tensor.layout();
        let (start, strides) = (layout.start_offset(), layout.strides());
        let strides = (strides[0] as usize, strides[1] as usize);
        Self {
            tensor,
            transposed,
            start,
            strides,
        }
    }

    /// `[I, O]`.
    fn dims(&self) -> (usize, usize) {
        let shape = self.tensor.layout().shape();
        if self.transposed {
            (shape[1], shape[0])
        } else {
            (shape[0], shape[1])
        }
    }

    /// The `[I, O]` matrix as a product's operand.
    fn matrix(&self) -> Operand<'_> {
        let (rs, cs) = self.strides;
        let (cs, rs) = if self.transposed { (rs, cs) } else { (cs, rs) };
        (self.tensor.storage::<f32>(), self.start, cs, rs)
    }

    /// Its transpose `[O, I]` as a product's operand.
    fn transpose(&self) -> Operand<'_> {
        let (values, start, cs, rs) = self.matrix();
        (values, start, rs, cs)
    }
}

/// What the backward pass needs: the (contiguous) input and the weight.
#[derive(Clone, Debug)]
struct Saved {
    x: FlexTensor,
    weight: Weight,
}

#[derive(Debug)]
struct LinearBackward;

impl LinearBackward {
    /// The gradients of the input, the weight and, when `bias`, the bias.
    fn grads(
        state: Saved,
        grad: FlexTensor,
        bias: bool,
    ) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
        let Saved { x, weight } = state;
        let dy = contiguous(grad);
        let (xv, dyv) = (values(&x), values(&dy));
        let (inputs, outputs) = weight.dims();
        let rows = xv.len() / inputs.max(1);
        assert!(
            xv.len() == rows * inputs && dyv.len() == rows * outputs,
            "linear backward: {} inputs and {} output gradients for rows of {inputs} -> {outputs}",
            xv.len(),
            dyv.len()
        );
        // dx [R, I] = dy [R, O] Wᵀ [O, I]
        let dx = new_product(
            (dyv, 0, 1, outputs),
            weight.transpose(),
            (rows, inputs, outputs),
        );
        let dx = FlexTensor::from_data(TensorData::new(dx, x.layout().shape().clone()));
        // dW, in the weight's stored shape: xᵀ dy [I, O], or dyᵀ x [O, I] when transposed.
        let dw = if weight.transposed {
            let dw = new_product(
                (dyv, 0, outputs, 1),
                (xv, 0, 1, inputs),
                (outputs, inputs, rows),
            );
            TensorData::new(dw, [outputs, inputs])
        } else {
            let dw = new_product(
                (xv, 0, inputs, 1),
                (dyv, 0, 1, outputs),
                (inputs, outputs, rows),
            );
            TensorData::new(dw, [inputs, outputs])
        };
        // db [O] = 1ᵀ dy
        let db = bias.then(|| {
            let ones = vec![1f32; rows];
            let db = new_product(
                (&ones, 0, 1, rows),
                (dyv, 0, 1, outputs),
                (1, outputs, rows),
            );
            FlexTensor::from_data(TensorData::new(db, [outputs]))
        });
        (dx, FlexTensor::from_data(dw), db)
    }
}

impl Backward<Flex, 3> for LinearBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (dx, dw, db) = Self::grads(ops.state, grad, node_b.is_some());
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, dw);
        }
        if let (Some(node), Some(db)) = (node_b, db) {
            grads.register::<Flex>(node.id, db);
        }
    }
}

impl Backward<Flex, 2> for LinearBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (dx, dw, _) = Self::grads(ops.state, grad, false);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// Rows per task of the bias's addition.
const BIAS_ROWS: usize = 64;

/// `x W (+ bias)`, shaped as `x` with its last axis `O` wide.
fn forward(x: &FlexTensor, weight: &Weight, bias: Option<&FlexTensor>) -> FlexTensor {
    let xv = values(x);
    let (inputs, outputs) = weight.dims();
    let rows = xv.len() / inputs.max(1);
    assert!(
        xv.len() == rows * inputs,
        "linear: {} inputs in rows of {inputs}",
        xv.len()
    );
    let mut y = new_product((xv, 0, 1, inputs), weight.matrix(), (rows, outputs, inputs));
    if let Some(bias) = bias.filter(|_| outputs > 0) {
        let bias = contiguous(bias.clone());
        let b = values(&bias);
        assert_eq!(
            b.len(),
            outputs,
            "linear: a bias of {} for {outputs} outputs",
            b.len()
        );
        let tasks: Vec<_> = y.chunks_mut(BIAS_ROWS * outputs.max(1)).collect();
        each(tasks, |block| {
            for row in block.chunks_exact_mut(outputs) {
                for (y, b) in row.iter_mut().zip(b) {
                    *y += b;
                }
            }
        });
    }
    let mut shape = x.layout().shape().clone();
    let last = shape.num_dims() - 1;
    shape[last] = outputs;
    FlexTensor::from_data(TensorData::new(y, shape))
}
