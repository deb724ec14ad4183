//! The fused linear layer against Burn's own: outputs, and the gradients of the input, the
//! weight and the bias, on the CPU backend; with and without a bias, with the weight stored as
//! `[I, O]` and transposed `[O, I]` (a tied head), held as a strided view, and at sizes on both
//! sides of the point where the products are split across the cores.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use cinder_shaders::linear::{fused_applies, linear, linear_transposed, reference};
use common::assert_close;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

fn random<const D: usize>(dims: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let base = Device::flex();
    base.seed(seed);
    let x = Tensor::<D>::random(dims, Distribution::Normal(0.0, 1.0), &base);
    Tensor::from_data(TensorData::new(values(x), dims.to_vec()), device)
}

/// (batch, positions, inputs, outputs): a row, an odd shape, and one large enough to be split
/// across the cores.
const SIZES: [(usize, usize, usize, usize); 3] = [(1, 1, 3, 5), (3, 7, 33, 17), (4, 64, 128, 384)];

#[test]
fn outputs_equal_the_reference_with_and_without_autodiff() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        for (b, t, i, o) in SIZES {
            let x = random([b, t, i], 1, &device);
            let w = random([i, o], 2, &device);
            let bias = random([o], 3, &device);
            assert!(fused_applies(&x, &w, Some(&bias), false));
            let got = values(linear(x.clone(), w.clone(), Some(bias.clone())));
            let want = values(reference(x.clone(), w.clone(), Some(bias)));
            assert_close(&got, &want, 1e-5, &format!("with bias {b}x{t}x{i} -> {o}"));
            let got = values(linear(x.clone(), w.clone(), None));
            let want = values(reference(x.clone(), w.clone(), None));
            assert_close(&got, &want, 1e-5, &format!("no bias {b}x{t}x{i} -> {o}"));
            // The same weight stored [O, I].
            let wt = random([o, i], 4, &device);
            assert!(fused_applies(&x, &wt, None, true));
            let got = values(linear_transposed(x.clone(), wt.clone()));
            let want = values(reference(x, wt.transpose(), None));
            assert_close(&got, &want, 1e-5, &format!("transposed {b}x{t}x{i} -> {o}"));
        }
    }
}

#[test]
fn a_strided_weight_and_input_are_read_as_their_values() {
    let device = Device::flex();
    let x = random([5, 2, 9], 5, &device).swap_dims(0, 1); // [2, 5, 9], not contiguous
    let w = random([6, 9], 6, &device).transpose(); // [9, 6] viewed through strides
    let got = values(linear(x.clone(), w.clone(), None));
    let want = values(reference(x.clone(), w.clone(), None));
    assert_close(&got, &want, 1e-5, "strided");
    let got = values(linear_transposed(x.clone(), w.clone().transpose()));
    assert_close(&got, &want, 1e-5, "strided, transposed");
}

#[test]
fn gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    for (b, t, i, o) in SIZES {
        for (transposed, with_bias) in [(false, true), (false, false), (true, false)] {
            let x = random([b, t, i], 7, &device);
            let w = if transposed {
                random([o, i], 8, &device)
            } else {
                random([i, o], 8, &device)
            };
            let bias = random([o], 9, &device);
            // Weights on the output, so every element's gradient differs.
            let dy = random([b, t, o], 10, &device);
            let grads_of = |fused: bool| {
                let (x, w, bias) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    bias.clone().require_grad(),
                );
                let bias_in = with_bias.then(|| bias.clone());
                let y = match (fused, transposed) {
                    (true, false) => linear(x.clone(), w.clone(), bias_in),
                    (true, true) => linear_transposed(x.clone(), w.clone()),
                    (false, false) => reference(x.clone(), w.clone(), bias_in),
                    (false, true) => reference(x.clone(), w.clone().transpose(), None),
                };
                let grads = (y * dy.clone()).sum().backward();
                [
                    x.grad(&grads).map(values).unwrap_or_default(),
                    w.grad(&grads).map(values).unwrap_or_default(),
                    bias.grad(&grads).map(values).unwrap_or_default(),
                ]
            };
            let (got, want) = (grads_of(true), grads_of(false));
            let what = format!("{b}x{t}x{i} -> {o}, transposed {transposed}, bias {with_bias}");
            assert!(
                want[0].iter().any(|v| v.abs() > 0.1) && want[1].iter().any(|v| v.abs() > 0.1),
                "{what}: the case has real gradients"
            );
            assert_eq!(
                want[2].is_empty(),
                !with_bias,
                "{what}: the bias's gradient"
            );
            for (k, name) in ["input", "weight", "bias"].iter().enumerate() {
                assert_close(&got[k], &want[k], 1e-4, &format!("{name} gradient, {what}"));
            }
        }
    }
}

#[test]
fn other_devices_and_types_take_the_reference() {
    let device = Device::flex();
    let x = random([2, 3, 4], 11, &device);
    let w = random([4, 5], 12, &device);
    let bias = random([5], 13, &device);
    assert!(!fused_applies(
        &x.clone().cast(burn::tensor::DType::F16),
        &w,
        None,
        false
    ));
    assert!(
        !fused_applies(&x, &w, None, true),
        "a [4, 5] weight read as [O, I] needs I = 5"
    );
    assert!(!fused_applies(
        &x,
        &w,
        Some(&random([4], 14, &device)),
        false
    ));
    assert!(fused_applies(&x, &w, Some(&bias), false));
    // A mismatched shape is left to Burn, which names it.
    let wrong = random([3, 5], 15, &device);
    assert!(!fused_applies(&x, &wrong, None, false));
}
