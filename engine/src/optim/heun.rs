//! Heun's method (the explicit trapezoidal rule) as an optimizer that evaluates the gradient
//! twice per step. Training is read as integrating the gradient flow `dp/dt = -g(p)`: a trial
//! Euler step to `q = p - lr g(p)`, a second gradient `g(q)` on the same batch, then the
//! corrected step
//!
//! ```text
//! p = p (1 - lr wd) - lr (g(p) + g(q)) / 2
//! ```
//!
//! The trainer hands every optimizer a way to evaluate the gradient at another point
//! ([`Optimizer::update`](super::Optimizer::update)); Heun is the rule that uses it.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{Optimizer, average_grads, clone_grads};
use crate::Result;

/// Heun hyper-parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeunConfig {
    /// Decoupled weight decay on matrices, applied in the corrected step.
    pub weight_decay: f64,
}

/// One Heun step from `model` with gradients `grads` there; `gradient_at` evaluates the
/// gradient at the trial point (same batches, so both gradient sets key alike).
pub(super) async fn step<M: Module>(
    optim: &mut Optimizer,
    lr: f64,
    model: M,
    grads: GradientsParams,
    mut gradient_at: impl AsyncFnMut(&M) -> Result<GradientsParams>,
) -> Result<M> {
    let trial = optim.trial(lr, model.clone(), clone_grads(&model, &grads));
    let second = gradient_at(&trial).await?;
    let averaged = average_grads(&model, grads, second);
    Ok(optim.step(lr, model, averaged))
}

pub(super) fn update<const D: usize>(
    c: &HeunConfig,
    p: Tensor<D>,
    averaged: Tensor<D>,
    lr: f64,
) -> Tensor<D> {
    let decay = if D >= 2 { c.weight_decay } else { 0.0 };
    p.mul_scalar(1.0 - lr * decay) - averaged.mul_scalar(lr)
}
