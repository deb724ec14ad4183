//! AdamW (Loshchilov & Hutter 2019) with bias correction:
//!
//! ```text
//! m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
//! p = p - lr (wd p + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
//! ```
//!
//! where `wd` is zero for parameters of rank below two (biases, norm gains).

use burn::tensor::Tensor;
use cinder_shaders::optim::{AdamWStep, adamw};
use serde::{Deserialize, Serialize};

use super::{Slots, put, take};

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Decay rate of the first moment.
    pub beta1: f64,
    /// Decay rate of the second moment.
    pub beta2: f64,
    /// Added to the denominator for numerical stability.
    pub epsilon: f64,
    /// Decoupled weight decay, applied to matrices (rank >= 2) only: biases, norm gains and
    /// other vectors are not decayed.
    pub weight_decay: f64,
}

/// PyTorch's betas (0.9, 0.999). A second-moment decay of 0.999 rather than 0.95 lowered the
/// default run's held-out loss from 5.473 to 5.351 after 3,000 steps, likely because a
/// character's embedding row has a gradient only in the batches that hold the character: with
/// a short memory its second moment fades between them, and each appearance of a rare
/// character moves its row by about the whole learning rate.
impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
        }
    }
}

pub(super) fn update<const D: usize>(
    c: &AdamWConfig,
    slots: &mut Slots,
    p: Tensor<D>,
    g: Tensor<D>,
    lr: f64,
    t: u64,
) -> Tensor<D> {
    let dims = p.dims();
    let n = dims.iter().product::<usize>();
    let m = take(slots, "exp_avg", [n]).unwrap_or_else(|| g.zeros_like().reshape([n]));
    let v = take(slots, "exp_avg_sq", [n]).unwrap_or_else(|| g.zeros_like().reshape([n]));
    let step = AdamWStep {
        lr,
        beta1: c.beta1,
        beta2: c.beta2,
        epsilon: c.epsilon,
        weight_decay: if D >= 2 { c.weight_decay } else { 0.0 },
        t,
    };
    // One fused pass on the CPU backend, Burn's operations elsewhere.
    let [p, m, v] = adamw(p.reshape([n]), g.reshape([n]), m, v, step);
    put(slots, "exp_avg", m);
    put(slots, "exp_avg_sq", v);
    p.reshape(dims)
}
