//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the
//! sign of an interpolation between the momentum and the gradient, so every coordinate moves by
//! exactly `lr`:
//!
//! ```text
//! c = b1 m + (1 - b1) g
//! p = p (1 - lr wd) - lr sign(c)
//! m = b2 m + (1 - b2) g
//! ```
//!
//! The same rule as burn-optim's `Lion`; it is applied here so its state is saved and resumed
//! with the other optimizers' (keyed by parameter path). Weight decay applies to matrices only.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{Slots, put, take};

/// Lion hyper-parameters (use a learning rate 3-10x smaller than AdamW's).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LionConfig {
    /// Interpolation weight of the momentum in the update direction.
    pub beta1: f64,
    /// Decay rate of the momentum.
    pub beta2: f64,
    /// Decoupled weight decay on matrices.
    pub weight_decay: f64,
}

impl Default for LionConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.1,
        }
    }
}

pub(super) fn update<const D: usize>(
    c: &LionConfig,
    slots: &mut Slots,
    p: Tensor<D>,
    g: Tensor<D>,
    lr: f64,
) -> Tensor<D> {
    let m = take(slots, "exp_avg", p.dims()).unwrap_or_else(|| g.zeros_like());
    let direction = (m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1)).sign();
    let decay = if D >= 2 { c.weight_decay } else { 0.0 };
    put(
        slots,
        "exp_avg",
        m.mul_scalar(c.beta2) + g.mul_scalar(1.0 - c.beta2),
    );
    p.mul_scalar(1.0 - lr * decay) - direction.mul_scalar(lr)
}
