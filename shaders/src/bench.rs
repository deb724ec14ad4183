//! Micro-benchmarks: each fused kernel against its reference on the same inputs, best of a few
//! repetitions after one untimed run (`cinder bench kernels` prints them).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::cross_entropy::{cross_entropy_rows, fused_applies, reference_rows};

/// One kernel's timing against its reference.
#[derive(Clone, Debug)]
pub struct Timing {
    /// What was timed, e.g. "cross-entropy forward + backward".
    pub name: String,
    /// The inputs' shape, e.g. "[1024, 8599]".
    pub shape: String,
    /// Burn's operations, milliseconds (best of the repetitions).
    pub reference_ms: f64,
    /// The fused kernel, milliseconds (best of the repetitions).
    pub fused_ms: f64,
    /// Whether the fused kernel ran (false where the device has none: both columns are then
    /// the reference).
    pub fused_ran: bool,
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// The cross-entropy of `rows` rows over a vocabulary of `vocab` on `device` (its CPU backend
/// takes the fused kernel): the forward pass alone, and forward and backward under autodiff
/// (the mean of the rows' losses, back to the logits, read back). The logits are the output of
/// an operation (a scaling by one), as in a model, so nothing else holds them.
pub fn cross_entropy(rows: usize, vocab: usize, reps: usize, device: &Device) -> Vec<Timing> {
    let inner = device.clone().inner();
    inner.seed(11);
    let base = Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 2.0), &inner);
    let ids: Vec<i32> = (0..rows)
        .map(|i| ((i * 7919) % vocab.max(1)) as i32)
        .collect();
    let shape = format!("[{rows}, {vocab}]");
    let mut out = Vec::new();
    for (name, dev) in [
        ("cross-entropy forward", inner.clone()),
        ("cross-entropy forward + backward", inner.clone().autodiff()),
    ] {
        let logits = Tensor::<2>::from_data(base.clone().into_data(), &dev);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [rows]), &dev);
        let fused_ran = fused_applies(&logits, &targets);
        let backward = dev.is_autodiff();
        let run = |fused: bool| {
            let x = if backward {
                logits.clone().require_grad()
            } else {
                logits.clone()
            };
            let y = x.clone().mul_scalar(1.0);
            let losses = if fused {
                cross_entropy_rows(y, targets.clone())
            } else {
                reference_rows(y, targets.clone())
            };
            let loss = losses.mean();
            if backward {
                let grads = loss.backward();
                if let Some(g) = x.grad(&grads) {
                    let _ = g.into_data();
                }
            } else {
                let _ = loss.into_data();
            }
        };
        let reference_ms = best_of(reps, || run(false));
        let fused_ms = best_of(reps, || run(true));
        out.push(Timing {
            name: name.to_string(),
            shape: shape.clone(),
            reference_ms,
            fused_ms,
            fused_ran,
        });
    }
    out
}
