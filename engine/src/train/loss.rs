//! The language-modelling objective.
//!
//! B=batch, T=time, V=vocab

use burn::nn::loss::CrossEntropyLossConfig;
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
