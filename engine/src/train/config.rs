//! The settings of a training run: each one defined once, with its default and its doc line,
//! shared by the command line (clap derives the flags from these structs), the desktop and
//! browser forms, and the `train_config.json` a checkpoint carries.

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::nonfinite::OnNonFinite;
use crate::optim::OptimizerConfig;
use crate::schedule::WarmupCosine;
use crate::{Error, Result};

/// Activation recomputation: memory traded for a second forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation for the backward pass.
    #[default]
    None,
    /// Keep only each transformer block's input; the backward pass runs each block again, one
    /// at a time, so at most one block's activations are alive (needs dropout 0).
    Blocks,
    /// Burn's gradient-checkpointing strategy: recompute cheap element-wise results instead of
    /// storing them.
    Checkpointing,
    /// Blocks on a device with Burn's gradient-checkpointing strategy.
    All,
}

impl Recompute {
    /// Whether the model's device must carry Burn's gradient-checkpointing strategy.
    pub fn needs_checkpointing_device(self) -> bool {
        matches!(self, Self::Checkpointing | Self::All)
    }

    /// Whether the trainer recomputes block by block.
    pub fn blockwise(self) -> bool {
        matches!(self, Self::Blocks | Self::All)
    }
}

impl std::fmt::Display for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

/// Floating-point type of the forward and backward passes. The weights, the optimizer state
/// and the update stay in f32 (master weights); each step runs on a copy cast to the chosen
/// type, and its gradients are cast back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout.
    #[default]
    F32,
    /// Half precision with dynamic loss scaling (see `LossScaler`).
    F16,
    /// bfloat16: f32's range with 8 bits of mantissa, so no loss scaling.
    Bf16,
}

impl Precision {
    /// The Burn type of the passes; `None` for f32.
    pub fn dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(FloatDType::F16),
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

/// Where a causal model's windows start (`--windows`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Windows {
    /// At a line's first token, or a multiple of the context after it.
    #[default]
    Lines,
    /// At any token.
    Anywhere,
}

impl Windows {
    /// `anywhere`: what settings without the key meant.
    pub fn anywhere() -> Self {
        Self::Anywhere
    }
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

/// Everything that shapes a training run except the model and its data (the model's own shape
/// lives in its family's config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct TrainConfig {
    /// Optimizer steps to run.
    #[arg(long, default_value_t = 9000)]
    pub steps: u64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Micro-batches per optimizer step (gradient accumulation: exactly the update of one
    /// batch of batch-size x accumulate sequences).
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Steps of linear warmup.
    #[arg(long, default_value_t = 30)]
    pub warmup: u64,
    /// The optimizer and its hyper-parameters (on the command line: --optimizer and its flags).
    #[arg(skip)]
    pub optimizer: OptimizerConfig,
    /// Which activations the backward pass recomputes instead of keeping.
    #[arg(long, value_enum, default_value_t)]
    pub recompute: Recompute,
    /// Floating-point type of the forward and backward passes (weights and optimizer state
    /// stay f32; f32 with a note where the device lacks the type).
    #[arg(long, value_enum, default_value_t)]
    pub precision: Precision,
    /// Maximum global gradient norm (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// What a step whose loss or gradients hold a NaN or an infinity does: stop the run with
    /// an error naming the step and the first such tensor, or skip the step (no update).
    #[arg(long, value_enum, default_value_t)]
    pub on_nonfinite: OnNonFinite,
    /// Where a causal model's training and held-out windows start: at the start of a line (a
    /// document: a poem of the Tang corpus) or every `--context` tokens after it, so positions
    /// count from the line's start and every token is covered; or anywhere in the stream.
    /// Settings written before this option existed read as `anywhere`, so their runs resume
    /// on the same batches.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default = "Windows::anywhere")]
    pub windows: Windows,
    /// Evaluate on the held-out split every N steps (0 = never).
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Batches per evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Sample text every N steps (0 = never).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    /// Tokens per sample.
    #[arg(long, default_value_t = 48)]
    pub sample_tokens: usize,
    /// Text the samples start from (empty: a fresh line).
    #[arg(long, default_value = "")]
    pub sample_prompt: String,
    /// Write a checkpoint every N steps (0 = only at the end; always at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep (older ones are deleted).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Seed for initialisation, batches, dropout and samples.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Steps over which a variational autoencoder's KL weight rises from 0 to 1 (KL annealing;
    /// default: a fifth of the steps).
    #[arg(long)]
    pub kl_warmup: Option<u64>,
    /// Free bits: nats of KL divergence per latent dimension (averaged over the batch) that a
    /// variational autoencoder's loss does not charge for, so its latent keeps carrying
    /// information instead of collapsing to the prior.
    #[arg(long, default_value_t = 0.25)]
    pub free_bits: f64,
}

impl TrainConfig {
    /// The KL term's weight at `step` (counted from 0): rising linearly to 1 over
    /// [`kl_warmup`](Self::kl_warmup) steps.
    pub fn kl_weight(&self, step: u64) -> f64 {
        let warmup = self.kl_warmup.unwrap_or(self.steps / 5);
        if warmup == 0 {
            1.0
        } else {
            ((step + 1) as f64 / warmup as f64).min(1.0)
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl TrainConfig {
    /// Checks the values that would otherwise fail deep inside a step (or train on nonsense),
    /// naming each by its command-line flag.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Config(m.to_string()));
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if self.steps == 0 {
            return fail("--steps must be at least 1");
        }
        if self.batch_size == 0 {
            return fail("--batch-size must be at least 1");
        }
        if self.context == 0 {
            return fail("--context must be at least 1");
        }
        if self.accumulate == 0 {
            return fail("--accumulate must be at least 1");
        }
        if !positive(self.lr) {
            return fail("--lr (the learning rate) must be a positive number");
        }
        if !(self.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&self.min_lr_ratio)) {
            return fail("--min-lr-ratio must be between 0 and 1");
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return fail("--grad-clip must be 0 (no clipping) or a positive norm");
        }
        if !(self.free_bits.is_finite() && self.free_bits >= 0.0) {
            return fail("--free-bits must be a number of nats, 0 or more");
        }
        if self.eval_every > 0 && self.eval_batches == 0 {
            return fail("--eval-batches must be at least 1 when --eval-every is not 0");
        }
        Ok(())
    }

    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak: self.lr,
            warmup: self.warmup.min(self.steps.saturating_sub(1)).max(1),
            total: self.steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_survive_a_json_round_trip_and_fill_missing_keys() {
        let d = TrainConfig::default();
        assert_eq!(d.steps, 9000);
        assert_eq!((d.batch_size, d.context, d.lr), (4, 128, 3e-3));
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let partial: TrainConfig = serde_json::from_str(r#"{"steps": 7}"#).unwrap();
        assert_eq!(partial.steps, 7);
        assert_eq!(partial.lr, d.lr);
        // New runs align windows to lines; settings saved before the option resume as written.
        assert_eq!(d.windows, Windows::Lines);
        assert_eq!(partial.windows, Windows::Anywhere);
    }
}
