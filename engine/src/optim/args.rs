//! The optimizer as the command line chooses it: `--optimizer` and the flags that override the
//! chosen rule's own defaults (each rule's defaults live in its config's `Default`, once).

use serde::{Deserialize, Serialize};

use super::{AdaFactorConfig, AdamWConfig, HeunConfig, LionConfig, OptimizerConfig, SgdConfig};
use crate::{Error, Result};

/// Which update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay on matrices.
    #[default]
    #[value(name = "adamw")]
    AdamW,
    /// Stochastic gradient descent with momentum (optionally Nesterov).
    Sgd,
    /// AdaFactor: factored second moments, steps relative to each weight's RMS.
    #[value(name = "adafactor")]
    AdaFactor,
    /// Lion: the sign of an interpolated momentum (use a 3-10x smaller learning rate).
    Lion,
    /// Heun's predictor-corrector: two gradient evaluations per step.
    Heun,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

impl OptimizerKind {
    /// The rule with its own default hyper-parameters.
    pub fn default_config(self) -> OptimizerConfig {
        match self {
            Self::AdamW => OptimizerConfig::AdamW(AdamWConfig::default()),
            Self::Sgd => OptimizerConfig::Sgd(SgdConfig::default()),
            Self::AdaFactor => OptimizerConfig::AdaFactor(AdaFactorConfig::default()),
            Self::Lion => OptimizerConfig::Lion(LionConfig::default()),
            Self::Heun => OptimizerConfig::Heun(HeunConfig::default()),
        }
    }
}

/// `--optimizer` and its hyper-parameters. A flag left out keeps the rule's own default; a
/// flag the chosen rule does not have is an error.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct OptimizerArgs {
    /// Optimizer.
    #[arg(long = "optimizer", value_enum, default_value_t)]
    pub kind: OptimizerKind,
    /// Decoupled weight decay on matrices (adamw 0.1, sgd 0, lion 0.1, heun 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// First-moment decay (adamw 0.9, lion 0.9); AdaFactor's momentum on the update (0).
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Second-moment decay (adamw 0.999; lion 0.99, its momentum decay).
    #[arg(long)]
    pub beta2: Option<f64>,
    /// AdamW's epsilon (1e-8).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// SGD momentum (0.9; 0 = plain SGD).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// SGD with Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// AdaFactor: ignore --lr and the schedule and step by min(1/sqrt(t), 1e-2).
    #[arg(long)]
    pub relative_step: bool,
}

impl OptimizerArgs {
    /// The rule and its hyper-parameters.
    pub fn config(&self) -> Result<OptimizerConfig> {
        let mut config = self.kind.default_config();
        let kind = self.kind;
        let unused = |flag: &str| {
            Err(Error::Config(format!(
                "--{flag} does not apply to --optimizer {kind}"
            )))
        };
        let set = |slot: &mut f64, value: Option<f64>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        match &mut config {
            OptimizerConfig::AdamW(c) => {
                set(&mut c.weight_decay, self.weight_decay);
                set(&mut c.beta1, self.beta1);
                set(&mut c.beta2, self.beta2);
                set(&mut c.epsilon, self.epsilon);
            }
            OptimizerConfig::Sgd(c) => {
                set(&mut c.weight_decay, self.weight_decay);
                set(&mut c.momentum, self.momentum);
                c.nesterov = self.nesterov;
            }
            OptimizerConfig::AdaFactor(c) => {
                set(&mut c.beta1, self.beta1);
                c.relative_step = self.relative_step;
            }
            OptimizerConfig::Lion(c) => {
                set(&mut c.weight_decay, self.weight_decay);
                set(&mut c.beta1, self.beta1);
                set(&mut c.beta2, self.beta2);
            }
            OptimizerConfig::Heun(c) => set(&mut c.weight_decay, self.weight_decay),
        }
        let has = |names: &[OptimizerKind]| names.contains(&kind);
        use OptimizerKind::*;
        if self.weight_decay.is_some() && has(&[AdaFactor]) {
            return unused("weight-decay");
        }
        if self.beta1.is_some() && has(&[Sgd, Heun]) {
            return unused("beta1");
        }
        if self.beta2.is_some() && !has(&[AdamW, Lion]) {
            return unused("beta2");
        }
        if self.epsilon.is_some() && kind != AdamW {
            return unused("epsilon");
        }
        if (self.momentum.is_some() || self.nesterov) && kind != Sgd {
            return unused(if self.nesterov {
                "nesterov"
            } else {
                "momentum"
            });
        }
        if self.relative_step && kind != AdaFactor {
            return unused("relative-step");
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_rules_own_defaults_and_foreign_flags_are_refused() {
        let lion = OptimizerArgs {
            kind: OptimizerKind::Lion,
            beta1: Some(0.8),
            ..OptimizerArgs::default()
        };
        let OptimizerConfig::Lion(c) = lion.config().unwrap() else {
            panic!("not lion")
        };
        assert_eq!((c.beta1, c.beta2), (0.8, LionConfig::default().beta2));
        let bad = OptimizerArgs {
            momentum: Some(0.5),
            ..OptimizerArgs::default()
        };
        let err = bad.config().unwrap_err().to_string();
        assert!(
            err.contains("--momentum does not apply to --optimizer adamw"),
            "{err}"
        );
        assert_eq!(
            OptimizerArgs::default().config().unwrap(),
            OptimizerConfig::default()
        );
    }
}
