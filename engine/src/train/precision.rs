//! Mixed precision: the passes run on a half-precision copy of the f32 master weights, and in
//! f16 the loss is scaled so small gradients do not underflow.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor};

use super::config::Precision;

/// Dynamic loss scaling for f16 (Micikevicius et al. 2018): the loss is multiplied by a scale
/// before the backward pass; a step whose gradients overflow is skipped and the scale halved;
/// after [`GROWTH_INTERVAL`](Self::GROWTH_INTERVAL) good steps in a row it doubles. In f32 and
/// bf16 the scale is 1 and never changes.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f64,
    good_steps: u64,
    dynamic: bool,
}

impl LossScaler {
    /// The scale an f16 run starts with.
    pub const INITIAL: f64 = 65536.0;
    /// Good steps in a row after which the scale doubles.
    pub const GROWTH_INTERVAL: u64 = 100;

    /// The scaler `precision` needs.
    pub fn new(precision: Precision) -> Self {
        let dynamic = precision == Precision::F16;
        Self {
            scale: if dynamic { Self::INITIAL } else { 1.0 },
            good_steps: 0,
            dynamic,
        }
    }

    /// The factor the loss is multiplied by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Whether the scale adapts (f16).
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    /// Sets the scale (at least 1), e.g. from a checkpoint.
    pub fn set_scale(&mut self, scale: f64) {
        if self.dynamic {
            self.scale = scale.max(1.0);
        }
    }

    /// Records a step whose gradient norm was `norm`; returns whether the update may be applied
    /// (false when the gradients overflowed, which halves the scale).
    pub fn record(&mut self, norm: f64) -> bool {
        if !self.dynamic {
            return true;
        }
        if !norm.is_finite() {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps.is_multiple_of(Self::GROWTH_INTERVAL) {
            self.scale *= 2.0;
        }
        true
    }
}

/// A copy of `model` with every weight cast to `dtype`, keeping parameter ids (so its gradients
/// key onto the f32 master weights), gradient tracking and the checkpointing strategy.
pub(super) fn cast_params<M: Module>(model: &M, dtype: FloatDType) -> M {
    model.clone().map(&mut CastParams(dtype))
}

struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let strategy = tensor.gradient_checkpointing_strategy();
        let mut cast = Tensor::<D>::from_inner(tensor.inner().cast(self.0));
        if let Some(s) = strategy {
            cast = cast.with_gradient_checkpointing_strategy(s);
        }
        if require_grad {
            cast = cast.require_grad();
        }
        Param::from_mapped_value(id, cast, mapper)
    }
}

/// `loss * factor`, without an operation when the factor is 1.
pub(super) fn scaled(loss: &Tensor<1>, factor: f64) -> Tensor<1> {
    if factor == 1.0 {
        loss.clone()
    } else {
        loss.clone().mul_scalar(factor)
    }
}

/// Logits in f32 (the loss is always computed in single precision).
///
/// # Shapes
/// - logits: `[B, T, V]` in any float type -> `[B, T, V]` in f32
pub(super) fn to_f32<const D: usize>(logits: Tensor<D>) -> Tensor<D> {
    if logits.dtype() == DType::F32 {
        logits
    } else {
        logits.cast(FloatDType::F32)
    }
}

/// Gradients in f32, divided by the loss scale.
pub(super) fn unscale<M: Module>(model: &M, grads: GradientsParams, scale: f64) -> GradientsParams {
    struct Unscale {
        from: GradientsParams,
        out: GradientsParams,
        scale: f64,
    }
    impl ModuleVisitor for Unscale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.from.remove::<D>(param.id) {
                let g = g.cast(FloatDType::F32);
                let g = if self.scale == 1.0 {
                    g
                } else {
                    g.div_scalar(self.scale)
                };
                self.out.register(param.id, g);
            }
        }
    }
    let mut v = Unscale {
        from: grads,
        out: GradientsParams::new(),
        scale,
    };
    model.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let mut s = LossScaler::new(Precision::F16);
        assert_eq!(s.scale(), LossScaler::INITIAL);
        assert!(!s.record(f64::INFINITY));
        assert_eq!(s.scale(), LossScaler::INITIAL / 2.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL {
            assert!(s.record(1.0));
        }
        assert_eq!(s.scale(), LossScaler::INITIAL);
        let mut plain = LossScaler::new(Precision::Bf16);
        assert!(plain.record(f64::NAN));
        plain.set_scale(8.0);
        assert_eq!(plain.scale(), 1.0);
    }
}
