//! The fused AdamW update against its reference made of Burn's operations, over several steps
//! (so the bias corrections and the moments' history count), with and without weight decay, and
//! with tensors that other holders still read (which must not change under them).

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use cinder_shaders::optim::{AdamWStep, adamw, adamw_reference, fused_applies};
use common::assert_close;

fn values(t: &Tensor<1>) -> Vec<f32> {
    t.clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_default()
}

fn step(t: u64, weight_decay: f64) -> AdamWStep {
    AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        epsilon: 1e-8,
        weight_decay,
        t,
    }
}

#[test]
fn five_updates_equal_the_reference() {
    let device = Device::flex();
    device.seed(23);
    // Several tasks' chunks and a partial one, and a length that is no multiple of the lanes.
    for n in [5, 70_001] {
        for decay in [0.0, 0.1] {
            let p0 = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
            let zeros = Tensor::<1>::zeros([n], &device);
            let (mut fused, mut reference) = (
                [p0.clone(), zeros.clone(), zeros.clone()],
                [p0.clone(), zeros.clone(), zeros],
            );
            for t in 1..=5 {
                let g = Tensor::<1>::random([n], Distribution::Normal(0.0, 0.5), &device);
                let [p, m, v] = fused;
                assert!(fused_applies(&[&p, &g, &m, &v]));
                fused = adamw(p, g.clone(), m, v, step(t, decay));
                let [p, m, v] = reference;
                reference = adamw_reference(p, g, m, v, step(t, decay));
            }
            for (i, name) in ["parameter", "first moment", "second moment"]
                .iter()
                .enumerate()
            {
                let (got, want) = (values(&fused[i]), values(&reference[i]));
                assert_close(&got, &want, 2e-6, &format!("{name} (n {n}, decay {decay})"));
            }
            let moved = values(&fused[0])
                .iter()
                .zip(values(&p0))
                .any(|(a, b)| (a - b).abs() > 1e-3);
            assert!(moved, "the parameter moved");
        }
    }
}

#[test]
fn tensors_other_holders_read_are_left_as_they_were() {
    let device = Device::flex();
    device.seed(29);
    let p = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device);
    let g = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device);
    let m = Tensor::<1>::random([1000], Distribution::Normal(0.0, 0.1), &device);
    let v = Tensor::<1>::random([1000], Distribution::Uniform(0.0, 0.1), &device);
    let before: Vec<Vec<f32>> = [&p, &g, &m, &v].iter().map(|t| values(t)).collect();
    let held = [p.clone(), g.clone(), m.clone(), v.clone()];
    let [new_p, _, _] = adamw(p, g, m, v, step(3, 0.1));
    let after: Vec<Vec<f32>> = held.iter().map(values).collect();
    assert_eq!(before, after, "the inputs other holders see");
    assert_ne!(values(&new_p), before[0], "the update itself");
}

#[test]
fn an_autodiff_device_takes_the_reference() {
    let device = Device::flex().autodiff();
    let p = Tensor::<1>::ones([8], &device);
    assert!(!fused_applies(&[&p, &p, &p, &p]));
    let [p, _, _] = adamw(p.clone(), p.clone(), p.clone(), p, step(1, 0.0));
    assert!(values(&p).iter().all(|x| x.is_finite()));
}
