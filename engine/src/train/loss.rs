//! The language-modelling objectives: next-token prediction, and masked-token prediction.
//!
//! Both take each row's softmax cross-entropy from cinder-shaders, which fuses it on the CPU
//! backend (one pass over the logits forward and one backward) and composes it from Burn's
//! operations on other devices.
//!
//! B=batch, T=time, V=vocab

use burn::tensor::{Int, Tensor};
use cinder_shaders::cross_entropy::cross_entropy_rows;

/// Mean cross-entropy of next-token predictions.
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - targets: `[B, T]`
/// - output: `[1]`
pub fn lm_loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    cross_entropy_rows(logits.reshape([b * t, v]), targets.reshape([b * t])).mean()
}

/// Summed cross-entropy at the chosen positions of a masked-LM batch (the caller divides by
/// the number chosen in the whole step, so accumulated micro-batches equal one large batch).
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - targets: `[B, T]` (any id where not chosen)
/// - chosen: `[B, T]`, 1 at chosen positions and 0 elsewhere
/// - output: `[1]`
pub fn masked_loss_sum(logits: Tensor<3>, targets: Tensor<2, Int>, chosen: Tensor<2>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    (cross_entropy_rows(logits.reshape([b * t, v]), targets.reshape([b * t]))
        * chosen.reshape([b * t]))
    .sum()
}
