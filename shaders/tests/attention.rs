//! The fused causal attention against its reference (Burn's attention with the causal flag):
//! outputs and the gradients of the queries, keys and values on the CPU backend, over lengths
//! that are and are not multiples of the kernel's block of queries, and over inputs that are
//! views (transposed, broadcast) rather than contiguous tensors.
//!
//! B=batch, H=heads, T=positions, D=head size

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use cinder_shaders::attention::{BLOCK, causal, fused_applies, reference};

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap_or_default()
}

/// Queries, keys and values `[B, H, T, D]` with entries of about +-1.5, so that the softmax is
/// neither flat nor one-hot.
fn case(dims: [usize; 4], seed: u64, device: &Device) -> [Tensor<4>; 3] {
    let base = Device::flex();
    base.seed(seed);
    let make = || {
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.5), &base);
        Tensor::<4>::from_data(x.into_data(), device)
    };
    [make(), make(), make()]
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / (1.0 + w.abs());
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}[{}]: {} vs {} (relative error {})",
        worst.1,
        got[worst.1],
        want[worst.1],
        worst.0
    );
}

#[test]
fn outputs_equal_the_reference_with_and_without_autodiff() {
    // One position; fewer positions than a block; a block and a partial one; a head size that
    // is no multiple of the vector lanes.
    let shapes = [
        [2, 3, 1, 8],
        [1, 2, 5, 16],
        [2, 2, BLOCK + 7, 12],
        [1, 1, 2 * BLOCK, 64],
    ];
    for device in [Device::flex(), Device::flex().autodiff()] {
        for (i, dims) in shapes.into_iter().enumerate() {
            let [q, k, v] = case(dims, i as u64, &device);
            assert!(fused_applies(&q, &k, &v));
            let fused = values(causal(q.clone(), k.clone(), v.clone()));
            let want = values(reference(q, k, v));
            assert_close(&fused, &want, 2e-6, &format!("output {dims:?}"));
        }
    }
}

#[test]
fn gradients_equal_the_reference() {
    let device = Device::flex().autodiff();
    for (i, dims) in [[2, 3, 9, 8], [1, 2, BLOCK + 19, 16]]
        .into_iter()
        .enumerate()
    {
        let [q, k, v] = case(dims, 10 + i as u64, &device);
        // A weight per output element, so that every position's share of the gradient counts.
        let [w, _, _] = case(dims, 20 + i as u64, &device);
        let grads_of = |fused: bool| {
            let (q, k, v) = (
                q.clone().require_grad(),
                k.clone().require_grad(),
                v.clone().require_grad(),
            );
            let out = if fused {
                causal(q.clone(), k.clone(), v.clone())
            } else {
                reference(q.clone(), k.clone(), v.clone())
            };
            let grads = (out * w.clone()).sum().backward();
            [&q, &k, &v].map(|x| x.grad(&grads).map(values).unwrap_or_default())
        };
        let (fused, want) = (grads_of(true), grads_of(false));
        for (name, (f, r)) in ["query", "key", "value"]
            .iter()
            .zip(fused.iter().zip(&want))
        {
            assert_eq!(f.len(), dims.iter().product::<usize>(), "{name} gradient");
            assert!(
                r.iter().any(|x| x.abs() > 1e-3),
                "the case has real {name} gradients"
            );
            assert_close(f, r, 1e-5, &format!("{name} gradient {dims:?}"));
        }
    }
}

#[test]
fn views_give_the_same_outputs_and_gradients() {
    // The model's shape of use: heads split out of `[B, T, H, D]` by a swap of axes (strided),
    // and keys and values broadcast over the query heads that share them (a stride of zero).
    let device = Device::flex().autodiff();
    let (b, t, h, d) = (2, 13, 4, 8);
    let base = Device::flex();
    base.seed(5);
    let q = Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.0, 1.5), &base);
    let kv = Tensor::<4>::random([b, 1, t, d], Distribution::Normal(0.0, 1.5), &base);
    let q = Tensor::<4>::from_data(q.into_data(), &device).require_grad();
    let kv = Tensor::<4>::from_data(kv.into_data(), &device).require_grad();
    let run = |fused: bool| {
        let queries = q.clone().swap_dims(1, 2);
        let shared = kv.clone().expand([b, h, t, d]);
        let out = if fused {
            assert!(fused_applies(&queries, &shared, &shared));
            causal(queries, shared.clone(), shared)
        } else {
            reference(queries, shared.clone(), shared)
        };
        let scale: Vec<f32> = (0..b * h * t * d).map(|i| (i % 7) as f32 - 3.0).collect();
        let scale = Tensor::<4>::from_data(TensorData::new(scale, [b, h, t, d]), &device);
        let out_values = values(out.clone());
        let grads = (out * scale).sum().backward();
        let gq = q.grad(&grads).map(values).unwrap_or_default();
        let gkv = kv.grad(&grads).map(values).unwrap_or_default();
        (out_values, gq, gkv)
    };
    let (fused, want) = (run(true), run(false));
    assert_close(&fused.0, &want.0, 2e-6, "output");
    assert_close(&fused.1, &want.1, 1e-5, "query gradient");
    assert_close(&fused.2, &want.2, 1e-5, "shared key/value gradient");
}

#[test]
fn a_nan_query_poisons_only_its_own_row() {
    let device = Device::flex();
    let [q, k, v] = case([1, 1, 6, 8], 3, &device);
    let mut x = values(q);
    x[3 * 8 + 2] = f32::NAN;
    let q = Tensor::<4>::from_data(TensorData::new(x, [1, 1, 6, 8]), &device);
    let out = values(causal(q, k, v));
    for (row, chunk) in out.chunks(8).enumerate() {
        assert_eq!(
            chunk.iter().all(|x| x.is_nan()),
            row == 3,
            "row {row}: {chunk:?}"
        );
    }
}

#[test]
fn half_precision_takes_the_reference() {
    let device = Device::flex();
    let [q, k, v] = case([1, 2, 7, 8], 4, &device);
    let half = |x: &Tensor<4>| x.clone().cast(burn::tensor::DType::F16);
    assert!(!fused_applies(&half(&q), &half(&k), &half(&v)));
    let got = values(causal(half(&q), half(&k), half(&v)));
    let want = values(reference(q, k, v));
    assert_close(&got, &want, 1e-2, "f16 output");
}
