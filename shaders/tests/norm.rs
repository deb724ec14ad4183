//! The fused LayerNorm against Burn's own: outputs and the gradients of the input, the gain and
//! the bias on the CPU backend, over widths that are and are not multiples of the vector lanes
//! and row counts that are and are not multiples of a task's block.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use cinder_shaders::norm::{fused_applies, layer_norm, reference};
use common::assert_close;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

/// Rows with an offset and a spread of their own, a gain and a bias.
fn case(rows: usize, c: usize, device: &Device) -> (Tensor<3>, Tensor<1>, Tensor<1>) {
    let base = Device::flex();
    base.seed(17);
    let x = Tensor::<3>::random([rows, 1, c], Distribution::Normal(0.0, 1.0), &base);
    let offset = Tensor::<3>::random([rows, 1, 1], Distribution::Normal(3.0, 2.0), &base);
    let x = x * offset.clone().abs().add_scalar(0.1) + offset;
    let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &base);
    let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), &base);
    let to = |t: Vec<f32>, dims: Vec<usize>| TensorData::new(t, dims);
    (
        Tensor::from_data(to(values(x), vec![rows, 1, c]), device),
        Tensor::from_data(to(values(gamma), vec![c]), device),
        Tensor::from_data(to(values(beta), vec![c]), device),
    )
}

#[test]
fn outputs_equal_the_reference_with_and_without_autodiff() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        for (rows, c) in [(1, 5), (3, 16), (70, 384), (33, 100)] {
            let (x, gamma, beta) = case(rows, c, &device);
            assert!(fused_applies(&x, &gamma, &beta));
            let got = values(layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5));
            let want = values(reference(x, gamma, beta, 1e-5));
            assert_close(&got, &want, 2e-5, &format!("output {rows} x {c}"));
        }
    }
}

#[test]
fn gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    for (rows, c) in [(70, 384), (9, 37)] {
        let (x, gamma, beta) = case(rows, c, &device);
        let (w, _, _) = case(rows, c, &device);
        let grads_of = |fused: bool| {
            let (x, g, b) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let y = if fused {
                layer_norm(x.clone(), g.clone(), b.clone(), 1e-5)
            } else {
                reference(x.clone(), g.clone(), b.clone(), 1e-5)
            };
            let grads = (y * w.clone()).sum().backward();
            (
                x.grad(&grads).map(values).unwrap_or_default(),
                g.grad(&grads).map(values).unwrap_or_default(),
                b.grad(&grads).map(values).unwrap_or_default(),
            )
        };
        let (got, want) = (grads_of(true), grads_of(false));
        assert!(
            want.0.iter().any(|v| v.abs() > 0.01),
            "the case has real gradients"
        );
        assert_close(
            &got.0,
            &want.0,
            1e-4,
            &format!("input gradient {rows} x {c}"),
        );
        assert_close(
            &got.1,
            &want.1,
            1e-4,
            &format!("gain gradient {rows} x {c}"),
        );
        assert_close(
            &got.2,
            &want.2,
            1e-4,
            &format!("bias gradient {rows} x {c}"),
        );
    }
}

#[test]
fn a_transposed_input_gives_the_same_outputs() {
    let device = Device::flex();
    let (x, gamma, beta) = case(12, 40, &device);
    let x = x.reshape([12, 40]);
    let strided = Tensor::<2>::from_data(x.clone().transpose().into_data(), &device).transpose();
    let got = values(layer_norm(strided, gamma.clone(), beta.clone(), 1e-5));
    let want = values(reference(x, gamma, beta, 1e-5));
    assert_close(&got, &want, 2e-5, "output");
}

#[test]
fn a_gain_of_the_wrong_width_or_half_precision_takes_the_reference() {
    let device = Device::flex();
    let (x, gamma, beta) = case(4, 8, &device);
    let short = gamma.clone().narrow(0, 0, 4);
    assert!(!fused_applies(&x, &short, &beta));
    let half = x.clone().cast(burn::tensor::DType::F16);
    assert!(!fused_applies(&half, &gamma, &beta));
}
