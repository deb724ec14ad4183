//! The fused cross-entropy against its reference (Burn's log_softmax and gather): losses and
//! gradients on the CPU backend, with and without autodiff, contiguous or not.
//!
//! N=rows, V=vocabulary

mod common;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use cinder_shaders::cross_entropy::{cross_entropy_rows, fused_applies, reference_rows};
use common::assert_close;

fn values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

fn values2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

/// Logits `[N, V]` spread over about +-6, with a few large outliers per row, and targets.
fn case(n: usize, v: usize, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let base = Device::flex();
    base.seed(7);
    let logits = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 3.0), &base);
    let spikes = Tensor::<2>::random([n, v], Distribution::Bernoulli(0.01), &base) * 12.0;
    let logits = Tensor::from_data((logits + spikes).into_data(), device);
    let targets: Vec<i32> = (0..n).map(|i| ((i * 7919 + 13) % v) as i32).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), device);
    (logits, targets)
}

#[test]
fn losses_equal_the_reference_with_and_without_autodiff() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        // 2 blocks of rows and a partial one; a vocabulary that is no multiple of the lanes.
        let (logits, targets) = case(19, 1003, &device);
        assert!(fused_applies(&logits, &targets));
        let fused = values(cross_entropy_rows(logits.clone(), targets.clone()));
        let reference = values(reference_rows(logits, targets));
        // Within a few rounding steps of the loss (about 1e-6 at these losses of 5 to 15).
        assert_close(&fused, &reference, 3e-7, "loss");
        assert!(
            reference.iter().all(|l| *l > 1.0),
            "the case has real losses"
        );
    }
}

#[test]
fn gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    let (logits, targets) = case(21, 517, &device);
    // Distinct weights per row, so each row's share of the upstream gradient is checked.
    let weights: Vec<f32> = (0..21).map(|i| 0.5 + i as f32 * 0.1).collect();
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [21]), &device);
    let grad_of = |fused: bool| {
        let x = logits.clone().require_grad();
        let rows = if fused {
            cross_entropy_rows(x.clone(), targets.clone())
        } else {
            reference_rows(x.clone(), targets.clone())
        };
        let grads = (rows * weights.clone()).sum().backward();
        x.grad(&grads).map(values2).unwrap_or_default()
    };
    let (fused, reference) = (grad_of(true), grad_of(false));
    assert_eq!(fused.len(), 21 * 517);
    assert_close(&fused, &reference, 1e-6, "gradient");
    // The gradient of each row sums to zero (softmax minus one-hot), scaled by its weight.
    let row0: f32 = fused[..517].iter().sum();
    assert!(row0.abs() < 1e-5, "{row0}");
}

#[test]
fn a_mean_over_rows_backpropagates_through_a_matmul() {
    // The language-model shape of use: logits from a product, the mean of the rows' losses.
    let device = Device::flex().autodiff();
    let base = Device::flex();
    base.seed(3);
    let h = Tensor::<2>::random([33, 16], Distribution::Normal(0.0, 1.0), &base);
    let w = Tensor::<2>::random([16, 300], Distribution::Normal(0.0, 0.5), &base);
    let h = Tensor::<2>::from_data(h.into_data(), &device);
    let w = Tensor::<2>::from_data(w.into_data(), &device);
    let targets: Vec<i64> = (0..33).map(|i| (i * 37 % 300) as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [33]), &device);
    let grad_of = |fused: bool| {
        let w = w.clone().require_grad();
        let logits = h.clone().matmul(w.clone());
        let loss = if fused {
            cross_entropy_rows(logits, targets.clone()).mean()
        } else {
            reference_rows(logits, targets.clone()).mean()
        };
        let value = values(loss.clone());
        let grads = loss.backward();
        (value, w.grad(&grads).map(values2).unwrap_or_default())
    };
    let ((loss_f, grad_f), (loss_r, grad_r)) = (grad_of(true), grad_of(false));
    assert_close(&loss_f, &loss_r, 1e-6, "mean loss");
    assert_close(&grad_f, &grad_r, 1e-6, "weight gradient");
}

#[test]
fn transposed_logits_give_the_same_losses() {
    let device = Device::flex();
    let (logits, targets) = case(12, 130, &device);
    // Stored [V, N] and transposed: not contiguous.
    let strided = logits.clone().transpose().into_data();
    let strided = Tensor::<2>::from_data(strided, &device).transpose();
    let fused = values(cross_entropy_rows(strided, targets.clone()));
    let reference = values(reference_rows(logits, targets));
    assert_close(&fused, &reference, 3e-7, "loss");
}

#[test]
fn a_target_outside_the_vocabulary_gives_a_nan_row_not_a_panic() {
    let device = Device::flex();
    let (logits, _) = case(3, 50, &device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![1i32, 50, -1], [3]), &device);
    let losses = values(cross_entropy_rows(logits, targets));
    assert!(losses[0].is_finite());
    assert!(losses[1].is_nan() && losses[2].is_nan(), "{losses:?}");
}

#[test]
fn half_precision_takes_the_reference() {
    let device = Device::flex();
    let (logits, targets) = case(4, 40, &device);
    let half = logits.clone().cast(burn::tensor::DType::F16);
    assert!(!fused_applies(&half, &targets));
    let got = values(cross_entropy_rows(half, targets.clone()));
    let want = values(reference_rows(logits, targets));
    assert_close(&got, &want, 1e-2, "f16 loss");
}

#[test]
fn a_nan_logit_makes_its_row_nan() {
    let device = Device::flex();
    let (logits, targets) = case(17, 300, &device);
    let mut x = values2(logits);
    // In the vector part of row 3 and the scalar tail of row 9.
    x[3 * 300 + 40] = f32::NAN;
    x[9 * 300 + 299] = f32::NAN;
    let logits = Tensor::<2>::from_data(TensorData::new(x, [17, 300]), &device);
    let losses = values(cross_entropy_rows(logits, targets));
    for (i, l) in losses.iter().enumerate() {
        assert_eq!(l.is_nan(), i == 3 || i == 9, "row {i}: {l}");
    }
}
