//! Optimizers and gradient utilities.
//!
//! Every optimizer here is one [`Optimizer`] driven by an [`OptimizerConfig`]: SGD (momentum,
//! Nesterov, weight decay), AdamW, AdaFactor, Lion and Heun's predictor-corrector. Each rule
//! lives in its own file with its update written out. The per-parameter state is keyed by the
//! parameter's dotted module path, not by Burn's runtime `ParamId`, so a checkpoint's state
//! attaches to the right weights after the model is rebuilt from its weight file, on any device.
//! (burn-optim's optimizers key their records by `ParamId`; that is why the rules, Lion
//! included, are applied through this one mapper instead.)
//!
//! Gradient accumulation is not a rule but the trainer's business: it sums the gradients of k
//! micro-batches (each loss divided by k) and then calls [`Optimizer::step`] once, so step
//! counters, bias corrections and the learning-rate schedule advance once per real step.

mod adafactor;
mod adamw;
mod args;
mod grads;
mod heun;
mod lion;
mod sgd;

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use adafactor::{AdaFactorConfig, adafactor_state_elements};
pub use adamw::AdamWConfig;
pub use args::{OptimizerArgs, OptimizerKind};
pub use grads::{
    average_grads, clip_global_norm, clip_global_norm_async, clone_grads, global_norm,
    global_norm_async, param_paths, param_shapes, scale_grads,
};
pub use heun::HeunConfig;
pub use lion::LionConfig;
pub use sgd::SgdConfig;

use crate::weights::NamedTensors;
use crate::{Error, Result, readback};

/// Which optimizer, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent with momentum, Nesterov momentum and weight decay.
    Sgd(SgdConfig),
    /// Adam with decoupled weight decay on matrices.
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
    /// AdaFactor: factored second moments, relative step sizes, update clipping.
    #[serde(rename = "adafactor")]
    AdaFactor(AdaFactorConfig),
    /// Lion: the sign of an interpolated momentum.
    Lion(LionConfig),
    /// Heun's method: a trial gradient step, a second gradient there, the averaged step.
    Heun(HeunConfig),
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::AdamW(AdamWConfig::default())
    }
}

impl OptimizerConfig {
    /// Which rule this is.
    pub fn kind(&self) -> OptimizerKind {
        match self {
            Self::Sgd(_) => OptimizerKind::Sgd,
            Self::AdamW(_) => OptimizerKind::AdamW,
            Self::AdaFactor(_) => OptimizerKind::AdaFactor,
            Self::Lion(_) => OptimizerKind::Lion,
            Self::Heun(_) => OptimizerKind::Heun,
        }
    }
}

/// Named state tensors of one parameter, each flattened to one dimension.
pub(crate) type Slots = BTreeMap<String, Tensor<1>>;

/// Takes slot `name` back in the shape `dims`.
pub(crate) fn take<const D: usize>(
    slots: &mut Slots,
    name: &str,
    dims: [usize; D],
) -> Option<Tensor<D>> {
    // A slot of another size (restored state that passed the size checks of `load_state` but
    // belongs to another axis) starts afresh rather than failing the reshape.
    slots
        .remove(name)
        .filter(|t| t.shape().num_elements() == dims.iter().product::<usize>())
        .map(|t| t.reshape(dims))
}

/// Stores `t` as slot `name`.
pub(crate) fn put<const D: usize>(slots: &mut Slots, name: &str, t: Tensor<D>) {
    let n = t.shape().num_elements();
    slots.insert(name.to_string(), t.reshape([n]));
}

/// Root mean square of all elements, as a one-element tensor.
pub(crate) fn rms<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    t.square().mean().sqrt()
}

/// An optimizer: a rule, its step count, and its per-parameter state.
pub struct Optimizer {
    config: OptimizerConfig,
    step: u64,
    state: HashMap<String, Slots>,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            step: 0,
            state: HashMap::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates completed so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One optimizer step from `model`, whose gradients are `grads`, with learning rate `lr`.
    /// `gradient_at` evaluates the gradient of the same batch at another point, for the rules
    /// that take more than one evaluation per step (Heun's method); the others never call it.
    pub async fn update<M: Module>(
        &mut self,
        lr: f64,
        model: M,
        grads: GradientsParams,
        gradient_at: impl AsyncFnMut(&M) -> Result<GradientsParams>,
    ) -> Result<M> {
        match self.config {
            OptimizerConfig::Heun(_) => heun::step(self, lr, model, grads, gradient_at).await,
            _ => Ok(self.step(lr, model, grads)),
        }
    }

    /// Applies one update with learning rate `lr` and the given gradients.
    pub fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.step += 1;
        let mut mapper = UpdateMapper {
            path: Vec::new(),
            optim: self,
            lr,
            grads,
            trial: false,
        };
        model.map(&mut mapper)
    }

    /// Heun's trial point: the model after a plain gradient step `p - lr g`, leaving the
    /// optimizer's state and step count untouched. The trainer takes the second gradient
    /// there and passes the average of both to [`step`](Self::step).
    fn trial<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        let mut mapper = UpdateMapper {
            path: Vec::new(),
            optim: self,
            lr,
            grads,
            trial: true,
        };
        model.map(&mut mapper)
    }

    /// The state as named tensors (`PATH.SLOT`, e.g. `h.0.attn.c_attn.weight.exp_avg`).
    pub fn state_tensors(&self) -> Result<NamedTensors> {
        readback::resolve("the optimizer state", self.state_tensors_async())
    }

    /// [`state_tensors`](Self::state_tensors), read back asynchronously in one transfer.
    pub async fn state_tensors_async(&self) -> Result<NamedTensors> {
        let (names, tensors): (Vec<String>, Vec<Tensor<1>>) = self
            .state
            .iter()
            .flat_map(|(path, slots)| {
                slots
                    .iter()
                    .map(move |(slot, t)| (format!("{path}.{slot}"), t.clone()))
            })
            .unzip();
        let data = readback::f32_all_async(tensors, "the optimizer state").await?;
        Ok(names.into_iter().zip(data).collect())
    }

    /// Elements held in optimizer state.
    pub fn state_elements(&self) -> usize {
        self.state
            .values()
            .flat_map(|s| s.values())
            .map(|t| t.shape().num_elements())
            .sum()
    }

    /// The state slots this optimizer keeps per parameter.
    fn slot_names(&self) -> &'static [&'static str] {
        match self.config {
            OptimizerConfig::Sgd(_) => &["momentum"],
            OptimizerConfig::AdamW(_) => &["exp_avg", "exp_avg_sq"],
            OptimizerConfig::AdaFactor(_) => &["m", "v", "vr", "vc"],
            OptimizerConfig::Lion(_) => &["exp_avg"],
            OptimizerConfig::Heun(_) => &[],
        }
    }

    /// Restores state saved by [`state_tensors`](Self::state_tensors) after `step` updates.
    /// `params` are the model's parameter paths and shapes: they tell a path from its slot name
    /// and how many elements each slot may hold (the parameter's, or one axis averaged away for
    /// AdaFactor's factored moments). Anything else is refused, naming the tensor.
    pub fn load_state(
        &mut self,
        tensors: NamedTensors,
        step: u64,
        params: &[(String, Vec<usize>)],
        device: &Device,
    ) -> Result<()> {
        // The state lives where the update computes it: on the device without autodiff.
        let device = device.clone().inner();
        let slot_names = self.slot_names();
        let mut state: HashMap<String, Slots> = HashMap::new();
        for (key, data) in tensors {
            let Some((path, shape, slot)) = params
                .iter()
                .filter_map(|(p, shape)| {
                    key.strip_prefix(p.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        .map(|slot| (p.clone(), shape, slot.to_string()))
                })
                .max_by_key(|(p, _, _)| p.len())
            else {
                return Err(Error::Shape(format!(
                    "optimizer state '{key}' belongs to no parameter of this model"
                )));
            };
            if !slot_names.contains(&slot.as_str()) {
                return Err(Error::Shape(format!(
                    "optimizer state '{key}': '{slot}' is not a slot of this optimizer \
                     (it keeps {})",
                    if slot_names.is_empty() {
                        "none".to_string()
                    } else {
                        slot_names.join(", ")
                    }
                )));
            }
            let numel: usize = shape.iter().product();
            let n = data.num_elements();
            let factored = shape.iter().any(|&d| d > 0 && n * d == numel);
            if n != numel && !factored {
                return Err(Error::Shape(format!(
                    "optimizer state '{key}' has {n} values; the parameter {path} has shape \
                     {shape:?}"
                )));
            }
            let values = crate::readback::data_values(data, &format!("optimizer state '{key}'"))?;
            let t = Tensor::from_data(TensorData::new(values, [n]), &device);
            state.entry(path).or_default().insert(slot, t);
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

struct UpdateMapper<'a> {
    path: Vec<String>,
    optim: &'a mut Optimizer,
    lr: f64,
    grads: GradientsParams,
    trial: bool,
}

impl ModuleMapper for UpdateMapper<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        // The updated weight keeps the gradient-checkpointing strategy of the old one (a fresh
        // autodiff tensor would get the default and no longer combine with the batch).
        let strategy = tensor.gradient_checkpointing_strategy();
        let p = tensor.inner();
        let (lr, t) = (self.lr, self.optim.step);
        let updated = if self.trial {
            p - grad.mul_scalar(lr)
        } else {
            let path = self.path.join(".");
            let mut slots = self.optim.state.remove(&path).unwrap_or_default();
            let updated = match &self.optim.config {
                OptimizerConfig::Sgd(c) => sgd::update(c, &mut slots, p, grad, lr),
                OptimizerConfig::Heun(c) => heun::update(c, p, grad, lr),
                OptimizerConfig::AdamW(c) => adamw::update(c, &mut slots, p, grad, lr, t),
                OptimizerConfig::AdaFactor(c) => adafactor::update(c, &mut slots, p, grad, lr, t),
                OptimizerConfig::Lion(c) => lion::update(c, &mut slots, p, grad, lr),
            };
            if !slots.is_empty() {
                self.optim.state.insert(path, slots);
            }
            updated
        };
        let mut updated = Tensor::<D>::from_inner(updated);
        if let Some(strategy) = strategy {
            updated = updated.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Tiny {
        lin: Linear,
    }

    fn setup() -> (Tiny, GradientsParams, Device) {
        let device = Device::flex().autodiff();
        let mut lin = LinearConfig::new(2, 1).init(&device);
        lin.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, -1.0], [2, 1]),
            &device,
        ));
        lin.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32], [1]),
            &device,
        )));
        let model = Tiny { lin };
        // loss = sum(x W + b) with x = [3, 4]: dL/dW = [3, 4], dL/db = 1.
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        let loss = model.lin.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads, device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        readback::f32_values(t, "a test tensor").unwrap()
    }

    /// Asserts that `got` equals `want` up to `roundings` f32 roundings of values no larger
    /// than `scale` (each rounding is within half an ulp; ε per rounding leaves room for the
    /// conversion of f64 hyper-parameters to f32).
    #[track_caller]
    fn assert_near(got: f32, want: f64, roundings: f64, scale: f64) {
        let bound = roundings * f64::from(f32::EPSILON) * scale;
        let diff = (f64::from(got) - want).abs();
        assert!(diff <= bound, "{got} vs {want}: {diff:e} > {bound:e}");
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let (model, mut grads, _) = setup();
        // sqrt(3^2 + 4^2 + 1^2) = sqrt(26): the squares and their sum are exact in f32, the
        // square root is taken in f64.
        let norm = clip_global_norm(&model, &mut grads, 1.0).unwrap();
        assert!(
            (norm - 26f64.sqrt()).abs() <= 2.0 * f64::EPSILON * norm,
            "{norm}"
        );
        // Scaled by 1 / (sqrt(26) + 1e-6): each gradient rounds once, the sum of their squares
        // twice more.
        let after = global_norm(&model, &grads).unwrap();
        let want = 26f64.sqrt() / (26f64.sqrt() + 1e-6);
        assert!(
            (after - want).abs() <= 3.0 * f64::from(f32::EPSILON),
            "{after}"
        );
        let w = values(grads.get::<2>(model.lin.weight.id).expect("grad"));
        // Both scaled once and divided once.
        assert_near(w[0] / w[1], 0.75, 2.0, 0.75);
    }

    #[test]
    fn adamw_first_step_matches_hand_computation() {
        let (model, grads, _) = setup();
        let config = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = Optimizer::new(OptimizerConfig::AdamW(config));
        let model = opt.step(0.01, model, grads);
        // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps).
        // Weight (decayed): w (1 - lr wd) - lr sign(g); bias (not decayed): b - lr.
        // The decay and the final subtraction round at the weight's size (about 1); the
        // update's own roundings are a hundred times smaller.
        let w = values(model.lin.weight.val());
        assert_near(w[0], 1.0 * (1.0 - 0.001) - 0.01, 3.0, 1.0);
        assert_near(w[1], -(1.0 - 0.001) - 0.01, 3.0, 1.0);
        let b = values(model.lin.bias.as_ref().map(|b| b.val()).expect("bias"));
        assert_near(b[0], 0.5 - 0.01, 3.0, 1.0);
        assert!(model.lin.weight.val().is_require_grad());
        let state = opt.state_tensors().unwrap();
        assert!(
            state.contains_key("lin.weight.exp_avg") && state.contains_key("lin.bias.exp_avg_sq")
        );
    }

    fn one_step(config: OptimizerConfig, lr: f64) -> (Vec<f32>, Vec<f32>, Optimizer) {
        let (model, grads, _) = setup();
        let mut opt = Optimizer::new(config);
        let model = opt.step(lr, model, grads);
        let b = model
            .lin
            .bias
            .as_ref()
            .map(|b| values(b.val()))
            .expect("bias");
        (values(model.lin.weight.val()), b, opt)
    }

    #[test]
    fn sgd_with_momentum_nesterov_and_decay_matches_hand_computation() {
        // g_w = [3, 4], g_b = 1; w = [1, -1], b = 0.5; lr 0.1, mu 0.5, wd 0.2 (matrices only).
        let c = SgdConfig {
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.2,
        };
        let (w, b, _) = one_step(OptimizerConfig::Sgd(c), 0.1);
        // First step: buffer = g; w = w (1 - 0.02) - 0.1 g. The decay, the step and the
        // subtraction each round once, at values no larger than 1.4.
        assert_near(w[0], 0.98 - 0.3, 3.0, 1.4);
        assert_near(w[1], -0.98 - 0.4, 3.0, 1.4);
        assert_near(b[0], 0.5 - 0.1, 3.0, 1.4);
        // Nesterov: d = g + mu g = 1.5 g at the first step.
        let n = SgdConfig {
            nesterov: true,
            ..c
        };
        let (w, _, _) = one_step(OptimizerConfig::Sgd(n), 0.1);
        assert_near(w[0], 0.98 - 0.45, 4.0, 1.0);
        // Second step with the same gradient: buffer = 0.5 g + g = 1.5 g.
        let (model, grads, _) = setup();
        let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.5,
            nesterov: false,
            weight_decay: 0.0,
        }));
        let model = opt.step(0.1, model, grads);
        // The same gradient again, taken at the updated model (the loss is linear).
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![3.0f32, 4.0], [1, 2]),
            &model.devices()[0],
        );
        let grads = GradientsParams::from_grads(model.lin.forward(x).sum().backward(), &model);
        let model = opt.step(0.1, model, grads);
        let w = values(model.lin.weight.val());
        // 1 - 0.1*3 - 0.1*4.5 = 0.25, two steps of three roundings each.
        assert_near(w[0], 0.25, 6.0, 1.0);
    }

    #[test]
    fn lion_moves_every_coordinate_by_the_learning_rate() {
        let c = LionConfig {
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
        };
        let (w, b, opt) = one_step(OptimizerConfig::Lion(c), 0.01);
        // w - lr sign(.): the learning rate and the subtraction round once each.
        assert_near(w[0], 0.99, 2.0, 1.01);
        assert_near(w[1], -1.01, 2.0, 1.01);
        assert_near(b[0], 0.49, 2.0, 1.01);
        // Momentum after one step: (1 - b2) g.
        let m = opt
            .state_tensors()
            .unwrap()
            .remove("lin.weight.exp_avg")
            .expect("momentum")
            .try_into_vec::<f32>()
            .unwrap();
        // (1 - b2) rounds on its way to f32, then the product once.
        assert_near(m[0], 0.03, 2.0, 0.04);
        assert_near(m[1], 0.04, 2.0, 0.04);
    }

    #[test]
    fn state_round_trips_through_named_tensors() {
        let (model, grads, device) = setup();
        let mut opt = Optimizer::new(OptimizerConfig::Lion(LionConfig::default()));
        let model = opt.step(0.01, model, grads);
        let saved = opt.state_tensors().unwrap();
        let mut back = Optimizer::new(OptimizerConfig::Lion(LionConfig::default()));
        back.load_state(saved.clone(), 1, &param_shapes(&model), &device)
            .unwrap();
        assert_eq!(back.steps(), 1);
        assert_eq!(back.state_tensors().unwrap().len(), saved.len());
        let mut wrong = saved;
        wrong.insert(
            "nothing.here.exp_avg".into(),
            TensorData::new(vec![1.0f32], [1]),
        );
        let err = back
            .load_state(wrong, 1, &param_shapes(&model), &device)
            .expect_err("state for a missing parameter loaded")
            .to_string();
        assert!(err.contains("nothing.here.exp_avg"), "{err}");
    }
}
