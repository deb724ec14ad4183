//! Stochastic gradient descent, written as an optimizer.
//!
//! SGD with momentum `mu`, optional Nesterov momentum and decoupled weight decay `wd`
//! (matrices only, as for AdamW):
//!
//! ```text
//! b = mu b + g                      (b = g at the first step)
//! d = g + mu b   (Nesterov)   or   d = b
//! p = p (1 - lr wd) - lr d
//! ```
//!
//! With `mu = 0` this is plain `p = p - lr g`.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{Slots, put, take};

/// SGD hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum coefficient (0 = none).
    pub momentum: f64,
    /// Nesterov momentum (looks ahead along the momentum).
    pub nesterov: bool,
    /// Decoupled weight decay on matrices.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

pub(super) fn update<const D: usize>(
    c: &SgdConfig,
    slots: &mut Slots,
    p: Tensor<D>,
    g: Tensor<D>,
    lr: f64,
) -> Tensor<D> {
    let decay = if D >= 2 { c.weight_decay } else { 0.0 };
    let p = p.mul_scalar(1.0 - lr * decay);
    if c.momentum == 0.0 {
        return p - g.mul_scalar(lr);
    }
    let b = match take(slots, "momentum", p.dims()) {
        Some(b) => b.mul_scalar(c.momentum) + g.clone(),
        None => g.clone(),
    };
    let d = if c.nesterov {
        g + b.clone().mul_scalar(c.momentum)
    } else {
        b.clone()
    };
    put(slots, "momentum", b);
    p - d.mul_scalar(lr)
}
