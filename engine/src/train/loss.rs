//! The language-modelling objectives: next-token prediction, and masked-token prediction.
//!
//! B=batch, T=time, V=vocab

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of next-token predictions.
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - targets: `[B, T]`
/// - output: `[1]`
pub fn lm_loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.reshape([b * t, v]), targets.reshape([b * t]))
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
    let log_probs = log_softmax(logits.reshape([b * t, v]), 1);
    let picked = log_probs
        .gather(1, targets.reshape([b * t, 1]))
        .reshape([b * t]);
    (picked * chosen.reshape([b * t])).sum().neg()
}
