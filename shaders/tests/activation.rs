//! The fused GELU (tanh approximation) and SwiGLU gating against their references made of Burn's
//! operations: values and gradients on the CPU backend, over sizes that are and are not
//! multiples of the vector lanes and of a task's chunk, contiguous or not.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use cinder_shaders::activation::{
    fused_applies, gelu_tanh, gelu_tanh_reference, swiglu, swiglu_reference,
};
use common::assert_close;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

/// Inputs over about +-8 (both tails of the activation), with exact zeros and large values.
fn case(dims: [usize; 2], device: &Device) -> Tensor<2> {
    let base = Device::flex();
    base.seed(11);
    let x = Tensor::<2>::random(dims, Distribution::Normal(0.0, 3.0), &base);
    let mut v = values(x);
    v[0] = 0.0;
    if v.len() > 2 {
        v[1] = 40.0;
        v[2] = -40.0;
    }
    Tensor::from_data(TensorData::new(v, dims), device)
}

#[test]
fn values_equal_the_reference_with_and_without_autodiff() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        // Fewer elements than the lanes; several tasks' chunks and a partial one.
        for dims in [[1, 3], [7, 9], [41, 1031]] {
            let x = case(dims, &device);
            assert!(fused_applies(&x));
            let got = values(gelu_tanh(x.clone()));
            let want = values(gelu_tanh_reference(x));
            assert_close(&got, &want, 1e-6, &format!("gelu {dims:?}"));
        }
    }
}

#[test]
fn gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    let x = case([37, 1000], &device);
    let w = case([37, 1000], &device).div_scalar(3.0);
    let grad_of = |fused: bool| {
        let x = x.clone().require_grad();
        let y = if fused {
            gelu_tanh(x.clone())
        } else {
            gelu_tanh_reference(x.clone())
        };
        let grads = (y * w.clone()).sum().backward();
        x.grad(&grads).map(values).unwrap_or_default()
    };
    let (got, want) = (grad_of(true), grad_of(false));
    assert!(
        want.iter().any(|g| g.abs() > 0.1),
        "the case has real gradients"
    );
    assert_close(&got, &want, 2e-6, "gradient");
}

#[test]
fn a_transposed_input_gives_the_same_values_and_gradients() {
    let device = Device::flex().autodiff();
    let x = case([33, 20], &device).require_grad();
    let run = |fused: bool| {
        let t = x.clone().transpose();
        let y = if fused {
            gelu_tanh(t)
        } else {
            gelu_tanh_reference(t)
        };
        let out = values(y.clone());
        let grads = (y.clone() * y.detach()).sum().backward();
        (out, x.grad(&grads).map(values).unwrap_or_default())
    };
    let (got, want) = (run(true), run(false));
    assert_close(&got.0, &want.0, 1e-6, "value");
    assert_close(&got.1, &want.1, 2e-6, "gradient");
}

#[test]
fn nan_stays_nan_and_half_precision_takes_the_reference() {
    let device = Device::flex();
    let x = Tensor::<1>::from_data(TensorData::new(vec![f32::NAN; 19], [19]), &device);
    assert!(values(gelu_tanh(x)).iter().all(|v| v.is_nan()));
    let x = case([4, 5], &device);
    let half = x.clone().cast(burn::tensor::DType::F16);
    assert!(!fused_applies(&half));
    assert_close(
        &values(gelu_tanh(half)),
        &values(gelu_tanh_reference(x)),
        1e-2,
        "f16",
    );
}

#[test]
fn swiglu_values_and_gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    for dims in [[1, 3], [41, 1031]] {
        let gate = case(dims, &device);
        // The up projection: the same spread, another arrangement.
        let up = case(dims, &device).flip([1]).div_scalar(2.0);
        let w = case(dims, &device).div_scalar(3.0);
        let run = |fused: bool| {
            let (g, u) = (gate.clone().require_grad(), up.clone().require_grad());
            let y = if fused {
                swiglu(g.clone(), u.clone())
            } else {
                swiglu_reference(g.clone(), u.clone())
            };
            let out = values(y.clone());
            let grads = (y * w.clone()).sum().backward();
            let dg = g.grad(&grads).map(values).unwrap_or_default();
            let du = u.grad(&grads).map(values).unwrap_or_default();
            (out, dg, du)
        };
        let (got, want) = (run(true), run(false));
        assert!(
            want.1.iter().any(|g| g.abs() > 0.1),
            "the case has real gradients"
        );
        assert_close(&got.0, &want.0, 1e-6, &format!("swiglu {dims:?}"));
        assert_close(&got.1, &want.1, 2e-6, &format!("gate gradient {dims:?}"));
        assert_close(&got.2, &want.2, 2e-6, &format!("up gradient {dims:?}"));
    }
}
