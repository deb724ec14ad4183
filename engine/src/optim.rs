//! Optimizers and gradient utilities.
//!
//! The optimizer state is keyed by each parameter's dotted module path, not by Burn's runtime
//! `ParamId`, so a checkpoint's moments attach to the right weights after the model is rebuilt
//! from its weight file, on any device.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::weights::{NamedTensors, to_f32_data};
use crate::{Error, Result};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.1,
        }
    }
}

struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// AdamW (Loshchilov & Hutter 2019) with bias correction:
///
/// ```text
/// m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
/// p = p - lr (wd p + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
/// ```
///
/// where `wd` is zero for parameters of rank below two.
pub struct AdamW {
    config: AdamWConfig,
    step: u64,
    state: HashMap<String, Moments>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            state: HashMap::new(),
        }
    }

    /// Updates completed so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Applies one update with learning rate `lr`.
    pub fn step<M: Module>(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        self.step += 1;
        let mut mapper = AdamWMapper {
            path: Vec::new(),
            optim: self,
            lr,
            grads,
        };
        model.map(&mut mapper)
    }

    /// The moments as named tensors (`PATH.exp_avg`, `PATH.exp_avg_sq`).
    pub fn state_tensors(&self) -> NamedTensors {
        let mut out = NamedTensors::new();
        for (path, moments) in &self.state {
            out.insert(format!("{path}.exp_avg"), to_f32_data(moments.m.clone()));
            out.insert(format!("{path}.exp_avg_sq"), to_f32_data(moments.v.clone()));
        }
        out
    }

    /// Restores moments saved by [`state_tensors`](Self::state_tensors) after `step` updates.
    pub fn load_state(
        &mut self,
        mut tensors: NamedTensors,
        step: u64,
        device: &Device,
    ) -> Result<()> {
        let mut state = HashMap::new();
        let keys: Vec<String> = tensors.keys().cloned().collect();
        for key in keys {
            let Some(path) = key.strip_suffix(".exp_avg") else {
                continue;
            };
            let v_key = format!("{path}.exp_avg_sq");
            let (Some(m), Some(v)) = (tensors.remove(&key), tensors.remove(&v_key)) else {
                return Err(Error::Invalid(format!("optimizer state lacks '{v_key}'")));
            };
            let flat = |d: TensorData| -> Result<Tensor<1>> {
                let values = d
                    .try_to_vec::<f32>()
                    .map_err(|e| Error::Invalid(format!("optimizer state '{path}': {e:?}")))?;
                let n = values.len();
                Ok(Tensor::from_data(TensorData::new(values, [n]), device))
            };
            state.insert(
                path.to_string(),
                Moments {
                    m: flat(m)?,
                    v: flat(v)?,
                },
            );
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

struct AdamWMapper<'a> {
    path: Vec<String>,
    optim: &'a mut AdamW,
    lr: f64,
    grads: GradientsParams,
}

impl ModuleMapper for AdamWMapper<'_> {
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
        let c = self.optim.config;
        let t = self.optim.step as i32;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let require_grad = tensor.is_require_grad();
        let p = tensor.inner().reshape([n]);
        let g = grad.reshape([n]);
        let path = self.path.join(".");
        let (m, v) = match self.optim.state.remove(&path) {
            Some(Moments { m, v }) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2);
        let m_hat = m.clone().div_scalar(1.0 - c.beta1.powi(t));
        let v_hat = v.clone().div_scalar(1.0 - c.beta2.powi(t));
        let update = m_hat / v_hat.sqrt().add_scalar(c.epsilon);
        let decay = if D >= 2 { c.weight_decay } else { 0.0 };
        let p = p.mul_scalar(1.0 - self.lr * decay) - update.mul_scalar(self.lr);
        self.optim.state.insert(path, Moments { m, v });
        let mut updated = Tensor::<D>::from_inner(p.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The L2 norm of all gradients taken together.
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> Result<f64> {
    let mut visitor = SquaredNorm { grads, total: None };
    model.visit(&mut visitor);
    let Some(total) = visitor.total else {
        return Ok(0.0);
    };
    let value = to_f32_data(total)
        .try_to_vec::<f32>()
        .map_err(|e| Error::Invalid(format!("reading the gradient norm: {e:?}")))?;
    Ok((value.first().copied().unwrap_or(0.0) as f64).sqrt())
}

/// Multiplies every gradient by `factor`.
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    model.visit(&mut Scale { grads, factor });
}

/// Rescales all gradients together so their global norm is at most `max_norm` (no-op when
/// `max_norm` is 0). Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Result<f64> {
    let norm = global_norm(model, grads)?;
    if max_norm > 0.0 && norm > max_norm {
        scale_grads(model, grads, max_norm / (norm + 1e-6));
    }
    Ok(norm)
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
        to_f32_data(t).try_to_vec::<f32>().unwrap_or_default()
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let (model, mut grads, _) = setup();
        // sqrt(3^2 + 4^2 + 1^2) = sqrt(26).
        let norm = clip_global_norm(&model, &mut grads, 1.0).unwrap_or(0.0);
        assert!((norm - 26f64.sqrt()).abs() < 1e-5, "{norm}");
        let after = global_norm(&model, &grads).unwrap_or(0.0);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        let w = values(
            grads
                .get::<2>(model.lin.weight.id)
                .unwrap_or_else(|| panic!("grad")),
        );
        assert!((w[0] / w[1] - 0.75).abs() < 1e-5, "direction kept: {w:?}");
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
        let mut opt = AdamW::new(config);
        let model = opt.step(0.01, model, grads);
        // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps).
        // Weight (decayed): w (1 - lr wd) - lr sign(g); bias (not decayed): b - lr.
        let w = values(model.lin.weight.val());
        assert!((w[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (-(1.0 - 0.001) - 0.01)).abs() < 1e-6, "{w:?}");
        let b = values(
            model
                .lin
                .bias
                .as_ref()
                .map(|b| b.val())
                .unwrap_or_else(|| panic!("bias")),
        );
        assert!((b[0] - (0.5 - 0.01)).abs() < 1e-6, "{b:?}");
        assert!(model.lin.weight.val().is_require_grad());
        let state = opt.state_tensors();
        assert!(
            state.contains_key("lin.weight.exp_avg") && state.contains_key("lin.bias.exp_avg_sq")
        );
    }
}
