//! Block-wise recomputation: gradients of one micro-batch keeping only each transformer block's
//! input (Chen et al. 2016, "Training deep nets with sublinear memory cost").
//!
//! B=batch, T=time, C=channels

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor};

use super::loss::lm_loss;
use super::precision::{scaled, to_f32};
use crate::lm::{Blockwise, LanguageModel};
use crate::{Error, Result};

/// Accumulates the gradients of one micro-batch into `accumulator` and returns its loss: a
/// forward pass outside autodiff that keeps each block's input, then, from the top, each stage
/// run again under autodiff and differentiated with the gradient arriving from the stage above
/// (`sum(y * dL/dy)` has the stage's gradients). At most one block's activations are alive.
/// Needs a model without dropout: the first pass runs without autodiff, where dropout is off,
/// and the two runs of a block must agree.
///
/// # Shapes
/// - inputs, targets: `[B, T]`
pub(super) fn blockwise_gradients<M: LanguageModel>(
    model: &M,
    device: &Device,
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    factor: f64,
    accumulator: &mut GradientsAccumulator<M>,
) -> Result<Tensor<1>> {
    let stages = model.blockwise().ok_or_else(|| {
        Error::Config(format!(
            "recompute: the '{}' family cannot run block by block",
            model.family()
        ))
    })?;
    if stages.has_dropout() {
        return Err(Error::Config(
            "recompute blocks/all needs a model without dropout (set dropout to 0, or use \
             recompute checkpointing)"
                .into(),
        ));
    }
    let n = stages.num_blocks();
    let missing = || Error::Internal("recompute: a block's input received no gradient".into());
    // Outside autodiff nothing is recorded, so each block's activations are freed as soon as
    // its output exists.
    let plain = model.valid();
    let plain_stages: &dyn Blockwise = plain.blockwise().ok_or_else(missing)?;
    let mut checkpoints = vec![plain_stages.embed(inputs.clone().inner())];
    for i in 0..n {
        let x = plain_stages.block(i, checkpoints[i].clone());
        checkpoints.push(x);
    }
    // Back into autodiff, with the device's checkpointing strategy.
    let strategy = device.gradient_checkpointing_strategy();
    let lift = |x: Tensor<3>| {
        let x = Tensor::from_inner(x);
        match strategy {
            Some(s) => x.with_gradient_checkpointing_strategy(s),
            None => x,
        }
        .require_grad()
    };
    let top = lift(checkpoints[n].clone());
    let loss = lm_loss(to_f32(stages.head(top.clone())), targets);
    let grads = scaled(&loss, factor).backward();
    let mut upstream = top.grad(&grads).ok_or_else(missing)?;
    accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    for i in (0..n).rev() {
        let x = lift(checkpoints[i].clone());
        let y = stages.block(i, x.clone());
        let grads = (y * upstream).sum().backward();
        upstream = x.grad(&grads).ok_or_else(missing)?;
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    let grads = (stages.embed(inputs) * upstream).sum().backward();
    accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    Ok(loss)
}
