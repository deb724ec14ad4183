//! Steps whose loss or gradients are not finite: what the trainer does with them
//! ([`OnNonFinite`]) and how it names the tensor where the NaN or infinity first shows.
//!
//! The check itself costs nothing extra: the loss and the global gradient norm are read back
//! every step anyway, and a NaN or infinity anywhere in the gradients makes the norm non-finite.
//! Only a step that fails it pays for the search below, one readback for all parameters.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Result, readback};

/// What a training step whose loss or gradients hold a NaN or an infinity does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run with an error naming the step and the first non-finite tensor; the weights
    /// keep the values of the step before (the last checkpoint stays the newest).
    #[default]
    Stop,
    /// Leave the weights and optimizer state as they were, record the step as skipped, and go on
    /// with the next batch.
    Skip,
}

/// Per parameter, in the model's order: its dotted path, and a flag each (1 = holds a NaN or an
/// infinity) for its value and for its gradient.
struct Flags<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    names: Vec<String>,
    flags: Vec<Tensor<1, Int>>,
}

fn non_finite<const D: usize>(x: Tensor<D>) -> Tensor<1, Int> {
    x.is_finite().bool_not().any().int()
}

impl ModuleVisitor for Flags<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // The value's inner tensor: on the same (non-autodiff) device as the gradient.
        let value = non_finite(param.val().inner());
        let grad = match self.grads.get::<D>(param.id) {
            Some(g) => non_finite(g),
            None => value.zeros_like(),
        };
        self.names.push(self.path.join("."));
        self.flags.push(value);
        self.flags.push(grad);
    }
}

/// The first tensor holding a NaN or an infinity, as a phrase ("the weight 'h.0.ln_1.gamma'",
/// "the gradient of 'wte.weight'"): weights are searched before gradients, since a non-finite
/// weight makes every gradient after it non-finite too. `None` when all are finite.
pub(super) async fn first_non_finite<M: Module>(
    model: &M,
    grads: &GradientsParams,
) -> Result<Option<String>> {
    let mut visitor = Flags {
        grads,
        path: Vec::new(),
        names: Vec::new(),
        flags: Vec::new(),
    };
    model.visit(&mut visitor);
    if visitor.flags.is_empty() {
        return Ok(None);
    }
    let flags =
        readback::int_values_async(Tensor::cat(visitor.flags, 0), "the non-finite check").await?;
    let names = &visitor.names;
    let weight = (0..names.len()).find(|&i| flags[2 * i] != 0);
    let grad = (0..names.len()).find(|&i| flags[2 * i + 1] != 0);
    Ok(match (weight, grad) {
        (Some(i), _) => Some(format!("the weight '{}'", names[i])),
        (None, Some(i)) => Some(format!("the gradient of '{}'", names[i])),
        (None, None) => None,
    })
}
