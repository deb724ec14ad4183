//! The training loop, driven one step at a time.
//!
//! [`Trainer::step`] runs one optimizer step (all of its accumulated micro-batches) and reports
//! what happened, including any evaluation, sample or checkpoint that fell due. A command-line
//! loop, a UI frame loop or a browser worker can all drive it.
//!
//! B=batch, T=time, V=vocab

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    CHECKPOINT_FORMAT, TrainerState, read_trainer_state, set_latest, write_atomic, write_dir_atomic,
};
use crate::data::{LmBatch, lm_batch, lm_batch_rows};
use crate::generate::{GenerateConfig, generate};
use crate::lm::{Blockwise, CausalLm};
use crate::optim::{
    Optimizer, OptimizerConfig, average_grads, clip_global_norm, clone_grads, global_norm,
    param_paths,
};
use crate::sampling::SamplingConfig;
use crate::schedule::WarmupCosine;
use crate::tokenizer::Tokenizer;
use crate::weights::{read_safetensors, write_safetensors};
use crate::{Error, Result, readback, rng};

/// Activation recomputation: memory traded for a second forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation for the backward pass.
    #[default]
    None,
    /// Keep only each transformer block's input; the backward pass runs each block's forward
    /// again, one block at a time, so at most one block's activations are alive.
    Blocks,
    /// Burn's gradient-checkpointing strategy alone: the autodiff graph recomputes cheap
    /// (memory-bound) operations instead of storing their outputs. The caller creates the model
    /// on `device.autodiff().gradient_checkpointing()`.
    Checkpointing,
    /// `Blocks` on a device with Burn's gradient-checkpointing strategy.
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

impl std::str::FromStr for Recompute {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "blocks" => Ok(Self::Blocks),
            "checkpointing" => Ok(Self::Checkpointing),
            "all" => Ok(Self::All),
            other => Err(Error::Config(format!(
                "unknown recompute mode '{other}': expected none, blocks, checkpointing or all"
            ))),
        }
    }
}

/// Floating-point type of the forward and backward passes. The weights, the optimizer state
/// and the update stay in f32 (master weights); each step runs on a copy cast to the chosen
/// type, and its gradients are cast back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout.
    #[default]
    F32,
    /// Half precision, with dynamic loss scaling: the loss is multiplied by a scale before the
    /// backward pass so small gradients do not underflow; a step whose gradients overflow is
    /// skipped and the scale halved; after 100 good steps in a row the scale doubles.
    F16,
    /// bfloat16: f32's range with 8 bits of mantissa, so no loss scaling.
    Bf16,
}

impl Precision {
    fn dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(FloatDType::F16),
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(Error::Config(format!(
                "unknown precision '{other}': expected f32, f16 or bf16"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// Good f16 steps in a row after which the loss scale doubles.
const SCALE_GROWTH_INTERVAL: u64 = 100;

/// Everything that shapes a training run (the model's own shape lives in its config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimizer steps to run.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub context: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accumulate: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Steps of linear warmup.
    pub warmup: u64,
    /// The optimizer and its settings.
    pub optimizer: OptimizerConfig,
    /// Which activations the backward pass recomputes instead of keeping.
    #[serde(default)]
    pub recompute: Recompute,
    /// Floating-point type of the forward and backward passes.
    #[serde(default)]
    pub precision: Precision,
    /// Maximum global gradient norm (0 disables clipping).
    pub grad_clip: f64,
    /// Evaluate on the held-out split every this many steps (0 = never).
    pub eval_every: u64,
    /// Batches per evaluation.
    pub eval_batches: usize,
    /// Sample text every this many steps (0 = never).
    pub sample_every: u64,
    /// Tokens per sample.
    pub sample_tokens: usize,
    /// Text the samples start from (empty: start from the end-of-text token).
    pub sample_prompt: String,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Seed for batches, dropout and sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 16,
            context: 64,
            accumulate: 1,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup: 30,
            optimizer: OptimizerConfig::default(),
            recompute: Recompute::None,
            precision: Precision::F32,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            sample_every: 100,
            sample_tokens: 48,
            sample_prompt: String::new(),
            checkpoint_every: 200,
            keep_checkpoints: 2,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Checks the values that would otherwise fail deep inside a step.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Config(m.to_string()));
        if self.batch_size == 0 {
            return fail("batch size must be at least 1");
        }
        if self.context == 0 {
            return fail("context must be at least 1");
        }
        if self.accumulate == 0 {
            return fail("accumulate must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail("learning rate must be a positive number");
        }
        Ok(())
    }

    fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            peak: self.lr,
            warmup: self.warmup.min(self.steps.saturating_sub(1)).max(1),
            total: self.steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// What one optimizer step did (one line of a run's `metrics.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps completed, this one included.
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens per second during this step.
    pub tokens_per_sec: f64,
    /// Seconds since the trainer was created.
    pub elapsed_s: f64,
    /// Held-out loss, when an evaluation fell due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// A sampled text, when one fell due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
    /// Bytes of device memory in use, where the backend reports it (Burn's memory pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_in_use: Option<u64>,
    /// Bytes of device memory reserved by the pool, where the backend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reserved: Option<u64>,
    /// Resident bytes of the whole process, where the system reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_memory: Option<u64>,
    /// The f16 loss scale used by this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Whether the update was skipped because the f16 gradients overflowed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// A checkpoint written after this step.
    #[serde(skip)]
    pub checkpoint: Option<PathBuf>,
}

/// Trains a [`CausalLm`] on token streams.
pub struct Trainer<M: CausalLm> {
    model: Option<M>,
    optim: Optimizer,
    config: TrainConfig,
    tokenizer: Tokenizer,
    train_tokens: Vec<u32>,
    val_tokens: Vec<u32>,
    device: Device,
    step: u64,
    tokens_seen: u64,
    run_dir: Option<PathBuf>,
    started: std::time::Instant,
    loss_scale: f64,
    good_steps: u64,
    notes: Vec<String>,
}


/// Cross-entropy of next-token predictions.
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - targets: `[B, T]`
pub fn lm_loss(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.reshape([b * t, v]), targets.reshape([b * t]))
}

fn batch_tensors(batch: &LmBatch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch, batch.context];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

impl<M: CausalLm> Trainer<M> {
    /// A trainer for `model` (whose parameters must live on an autodiff device), starting at
    /// step 0. With a `run_dir`, metrics, samples and checkpoints are written there.
    pub fn new(
        model: M,
        config: TrainConfig,
        tokenizer: Tokenizer,
        train_tokens: Vec<u32>,
        val_tokens: Vec<u32>,
        device: &Device,
        run_dir: Option<PathBuf>,
    ) -> Result<Self> {
        config.validate()?;
        let mut config = config;
        let mut notes = Vec::new();
        if let Some(dtype) = config.precision.dtype()
            && !device.supports_dtype(dtype)
        {
            notes.push(format!(
                "precision {}: this device has no {dtype:?} arithmetic; training in f32",
                config.precision
            ));
            config.precision = Precision::F32;
        }
        if config.context > model.context_length() {
            return Err(Error::Config(format!(
                "context {} exceeds the model's maximum of {}",
                config.context,
                model.context_length()
            )));
        }
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(Error::Config(format!(
                "the tokenizer has {} entries but the model only {}",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        // Fail now, not at the first step, if the corpus cannot fill a window.
        lm_batch(&train_tokens, 1, config.context, 0, 0, 0)?;
        if let Some(dir) = &run_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            write_atomic(&dir.join("train_config.json"), to_json(&config)?.as_bytes())?;
        }
        let config_precision_f16 = config.precision == Precision::F16;
        Ok(Self {
            model: Some(model),
            optim: Optimizer::new(config.optimizer),
            config,
            tokenizer,
            train_tokens,
            val_tokens,
            device: device.clone(),
            step: 0,
            tokens_seen: 0,
            run_dir,
            started: std::time::Instant::now(),
            loss_scale: if config_precision_f16 { 65536.0 } else { 1.0 },
            good_steps: 0,
            notes,
        })
    }

    /// Continues from the checkpoint folder `ckpt` (whose weights the caller has already loaded
    /// into the model given to [`new`](Self::new)): optimizer moments, step and data position.
    pub fn restore(&mut self, ckpt: &Path) -> Result<()> {
        let state = read_trainer_state(ckpt)?;
        let family = self.model().family();
        if state.family != family {
            return Err(Error::format(
                ckpt.join("trainer_state.json"),
                format!(
                    "checkpoint is for a '{}' model, not '{family}'",
                    state.family
                ),
            ));
        }
        let moments = read_safetensors(&ckpt.join("optimizer.safetensors"))?;
        let paths = param_paths(self.model());
        self.optim
            .load_state(moments, state.step, &paths, &self.device)?;
        self.step = state.step;
        self.tokens_seen = state.tokens_seen;
        self.config.seed = state.seed;
        if let Some(scale) = state.loss_scale {
            self.loss_scale = scale;
        }
        if let Some(dir) = &self.run_dir {
            truncate_metrics(&dir.join("metrics.jsonl"), state.step)?;
        }
        Ok(())
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        // The model is only taken out for the duration of an update inside `step`.
        self.model
            .as_ref()
            .unwrap_or_else(|| unreachable!("model taken during an update"))
    }

    /// Steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Changes how the next steps recompute activations (for `All`, the model must live on a
    /// device with Burn's gradient-checkpointing strategy).
    pub fn set_recompute(&mut self, recompute: Recompute) {
        self.config.recompute = recompute;
    }

    /// Changes the precision of the next steps (f32 where the device lacks the type).
    pub fn set_precision(&mut self, precision: Precision) {
        let supported = precision
            .dtype()
            .is_none_or(|d| self.device.supports_dtype(d));
        self.config.precision = if supported { precision } else { Precision::F32 };
        self.loss_scale = if self.config.precision == Precision::F16 {
            65536.0
        } else {
            1.0
        };
        self.good_steps = 0;
    }

    /// Sets the f16 loss scale (65536 at the start of a run), e.g. to start lower.
    pub fn set_loss_scale(&mut self, scale: f64) {
        self.loss_scale = scale.max(1.0);
    }

    /// Things the trainer changed about its configuration, for the user (e.g. a precision the
    /// device lacks, replaced by f32).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Elements held in optimizer state.
    pub fn optimizer_state_elements(&self) -> usize {
        self.optim.state_elements()
    }

    /// Whether all configured steps are done.
    pub fn finished(&self) -> bool {
        self.step >= self.config.steps
    }

    /// Runs one optimizer step and whatever evaluation, sample or checkpoint falls due after it.
    pub fn step(&mut self) -> Result<StepReport> {
        let t0 = std::time::Instant::now();
        let c = &self.config;
        let model = self
            .model
            .take()
            .ok_or_else(|| Error::Internal("the trainer lost its model in a failed step".into()))?;
        let lr = c.schedule().lr(self.step);
        let loss_scale = self.loss_scale;
        let f16 = c.precision == Precision::F16;
        let (mut grads, loss_sum) = self.gradients(&model)?;
        if f16 {
            let norm = global_norm(&model, &grads)?;
            if !norm.is_finite() {
                // Overflow under this loss scale: no update; try again with half the scale.
                self.loss_scale = (self.loss_scale / 2.0).max(1.0);
                self.good_steps = 0;
                return self.finish_step(model, t0, loss_sum, lr, norm, Some(loss_scale), true);
            }
        }
        let grad_norm = clip_global_norm(&model, &mut grads, c.grad_clip)?;
        if f16 {
            self.good_steps += 1;
            if self.good_steps.is_multiple_of(SCALE_GROWTH_INTERVAL) {
                self.loss_scale *= 2.0;
            }
        }
        let model = if self.optim.config().evaluations() == 2 {
            // Heun: the gradient again at the trial point, on the same batches, then the
            // averaged step from the starting point. Updates keep parameter ids, so both
            // gradient sets are keyed alike.
            let trial = self
                .optim
                .trial(lr, model.clone(), clone_grads(&model, &grads));
            let (mut second, _) = self.gradients(&trial)?;
            clip_global_norm(&trial, &mut second, c.grad_clip)?;
            let averaged = average_grads(&model, grads, second);
            self.optim.step(lr, model, averaged)
        } else {
            self.optim.step(lr, model, grads)
        };
        let scale = f16.then_some(loss_scale);
        self.finish_step(model, t0, loss_sum, lr, grad_norm, scale, false)
    }

    /// Counts a step taken (or skipped) and runs what falls due after it.
    #[allow(clippy::too_many_arguments)]
    fn finish_step(
        &mut self,
        model: M,
        t0: std::time::Instant,
        loss_sum: f64,
        lr: f64,
        grad_norm: f64,
        loss_scale: Option<f64>,
        skipped: bool,
    ) -> Result<StepReport> {
        let c = &self.config;
        let k = c.accumulate;
        self.model = Some(model);
        self.step += 1;
        let tokens = (c.batch_size * c.context * k) as u64;
        self.tokens_seen += tokens;
        let tokens_per_sec = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);

        let due =
            |every: u64, step: u64, last: bool| every > 0 && (step.is_multiple_of(every) || last);
        let last = self.finished();
        let eval_loss = if due(self.config.eval_every, self.step, last) {
            Some(self.evaluate()?)
        } else {
            None
        };
        let sample = if due(self.config.sample_every, self.step, last) {
            Some(self.sample(self.config.seed ^ self.step)?)
        } else {
            None
        };
        let pool = crate::device::memory_usage(&self.device);
        let mut report = StepReport {
            step: self.step,
            loss: loss_sum / k as f64,
            lr,
            grad_norm,
            tokens_per_sec,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            eval_loss,
            sample,
            memory_in_use: pool.map(|(used, _)| used),
            memory_reserved: pool.map(|(_, reserved)| reserved),
            process_memory: crate::device::process_memory().map(|(rss, _)| rss),
            loss_scale,
            skipped,
            checkpoint: None,
        };
        if let Some(dir) = self.run_dir.clone() {
            append_metrics(&dir.join("metrics.jsonl"), &report)?;
            let every = self.config.checkpoint_every;
            if (every > 0 && self.step.is_multiple_of(every)) || last {
                report.checkpoint = Some(self.save_checkpoint(&dir)?);
            }
        }
        Ok(report)
    }

    /// Gradients of this step's batch (all its micro-batches, each loss divided by their
    /// number) at `model`, and the sum of the micro-batch losses. Micro-batch `j` of `k` holds
    /// rows `j b .. (j + 1) b` of the step's batch of `k b` rows, so accumulating `k` micro-batches
    /// of `b` sees exactly the sequences of one batch of `k b`.
    fn gradients(&self, model: &M) -> Result<(GradientsParams, f64)> {
        let c = &self.config;
        let k = c.accumulate;
        // Dropout masks are a function of (seed, step) too.
        self.device.seed(rng::hash3(c.seed, 7, self.step));
        // Mixed precision: the passes run on a copy of the weights in the lower precision
        // (same parameter ids, so its gradients key onto the f32 master weights).
        let dtype = c.precision.dtype();
        let low = dtype.map(|d| model.clone().map(&mut CastParams(d)));
        let work = low.as_ref().unwrap_or(model);
        // Each micro-batch's loss is divided by their number (accumulation) and multiplied by
        // the loss scale (1 except in f16).
        let factor = self.loss_scale / k as f64;
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        for micro in 0..k {
            let batch = lm_batch_rows(
                &self.train_tokens,
                c.batch_size,
                micro * c.batch_size,
                c.context,
                c.seed,
                0,
                self.step,
            )?;
            let (inputs, targets) = batch_tensors(&batch, &self.device);
            let loss = if !c.recompute.blockwise() {
                let loss = lm_loss(to_f32(work.forward(inputs)), targets);
                let grads = GradientsParams::from_grads(scaled(&loss, factor).backward(), work);
                accumulator.accumulate(work, grads);
                loss
            } else {
                let stages = work.blockwise().ok_or_else(|| {
                    Error::Config(format!(
                        "recompute: the '{}' family cannot run block by block",
                        model.family()
                    ))
                })?;
                self.blockwise_gradients(work, stages, inputs, targets, factor, &mut accumulator)?
            };
            loss_sum += readback::scalar(loss.detach(), "the loss")?;
        }
        let grads = accumulator.grads();
        if dtype.is_none() && self.loss_scale == 1.0 {
            return Ok((grads, loss_sum));
        }
        Ok((unscale(model, grads, self.loss_scale), loss_sum))
    }

    /// Gradients of one micro-batch keeping only block inputs: a forward pass outside autodiff
    /// that keeps each block's input, then, from the top, each stage run again under autodiff
    /// and differentiated with the gradient arriving from the stage above (`sum(y * dL/dy)`
    /// has the stage's gradients). Needs a model without dropout: the first pass runs without
    /// autodiff, where dropout is off, and the two runs of a block must agree.
    fn blockwise_gradients(
        &self,
        model: &M,
        stages: &dyn Blockwise,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        factor: f64,
        accumulator: &mut GradientsAccumulator<M>,
    ) -> Result<Tensor<1>> {
        if stages.has_dropout() {
            return Err(Error::Config(
                "recompute blocks/all needs a model without dropout (set dropout to 0, or use \
                 recompute checkpointing)"
                    .into(),
            ));
        }
        let n = stages.num_blocks();
        let missing = || Error::Internal("recompute: a block's input received no gradient".into());
        // Outside autodiff nothing is recorded, so each block's activations are freed as soon
        // as its output exists.
        let plain = model.valid();
        let plain_stages = plain.blockwise().ok_or_else(missing)?;
        let mut checkpoints = vec![plain_stages.embed(inputs.clone().inner())];
        for i in 0..n {
            let x = plain_stages.block(i, checkpoints[i].clone());
            checkpoints.push(x);
        }
        // Back into autodiff, with the device's checkpointing strategy.
        let strategy = self.device.gradient_checkpointing_strategy();
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

    /// Mean loss over the fixed held-out batches.
    pub fn evaluate(&self) -> Result<f64> {
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let c = &self.config;
        let tokens = if self.val_tokens.len() >= c.context + 2 {
            &self.val_tokens
        } else {
            &self.train_tokens
        };
        let mut total = 0.0;
        for i in 0..c.eval_batches.max(1) {
            let batch = lm_batch(tokens, c.batch_size, c.context, c.seed, 1, i as u64)?;
            let (inputs, targets) = batch_tensors(&batch, &device);
            total += readback::scalar(lm_loss(model.forward(inputs), targets), "the held-out loss")?;
        }
        Ok(total / c.eval_batches.max(1) as f64)
    }

    /// Text sampled from the model, starting at the configured prompt.
    pub fn sample(&self, seed: u64) -> Result<String> {
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let mut prompt = self.tokenizer.encode(&self.config.sample_prompt)?;
        if prompt.is_empty() {
            // Documents are separated by newlines in the corpora, so a fresh line is the natural
            // start; the end-of-text token where a newline is not a single token.
            let newline = self.tokenizer.encode("\n")?;
            prompt = match newline.as_slice() {
                [id] => vec![*id],
                _ => vec![self.tokenizer.eos_id().unwrap_or(0)],
            };
        }
        let sampling = SamplingConfig {
            seed,
            ..SamplingConfig::default()
        };
        let config = GenerateConfig::new(self.config.sample_tokens, sampling, None);
        let (new, _) = generate(&model, &prompt, &config, &device, |_| true)?;
        let mut all = prompt;
        all.extend(new);
        self.tokenizer.decode(&all)
    }

    /// Writes a complete checkpoint under `run_dir/checkpoints/` and points `latest` at it.
    pub fn save_checkpoint(&self, run_dir: &Path) -> Result<PathBuf> {
        let name = format!("checkpoints/step-{:07}", self.step);
        let dir = run_dir.join(&name);
        let model = self.model();
        let state = TrainerState {
            format: CHECKPOINT_FORMAT,
            step: self.step,
            seed: self.config.seed,
            tokens_seen: self.tokens_seen,
            family: model.family().to_string(),
            loss_scale: (self.config.precision == Precision::F16).then_some(self.loss_scale),
        };
        write_dir_atomic(&dir, |tmp| {
            save_model(model, &self.tokenizer, tmp)?;
            write_safetensors(
                &tmp.join("optimizer.safetensors"),
                &self.optim.state_tensors()?,
            )?;
            write_atomic(&tmp.join("trainer_state.json"), to_json(&state)?.as_bytes())?;
            write_atomic(
                &tmp.join("train_config.json"),
                to_json(&self.config)?.as_bytes(),
            )?;
            Ok(())
        })?;
        set_latest(run_dir, &name)?;
        prune_checkpoints(&run_dir.join("checkpoints"), self.config.keep_checkpoints)?;
        Ok(dir)
    }
}

/// Casts every weight of a module copy to `self.0`, keeping ids, gradient tracking and the
/// checkpointing strategy.
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
fn scaled(loss: &Tensor<1>, factor: f64) -> Tensor<1> {
    if factor == 1.0 {
        loss.clone()
    } else {
        loss.clone().mul_scalar(factor)
    }
}

/// Logits in f32 (the loss is always computed in single precision).
fn to_f32(logits: Tensor<3>) -> Tensor<3> {
    if logits.dtype() == burn::tensor::DType::F32 {
        logits
    } else {
        logits.cast(FloatDType::F32)
    }
}

/// Gradients in f32, divided by the loss scale.
fn unscale<M: CausalLm>(model: &M, grads: GradientsParams, scale: f64) -> GradientsParams {
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

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::serialize("JSON", e))
}

/// Writes a model folder loadable by Cinder and by Hugging Face transformers:
/// `config.json`, `model.safetensors` and `tokenizer.json`.
pub fn save_model<M: CausalLm>(model: &M, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join("config.json"),
        to_json(&model.config_json())?.as_bytes(),
    )?;
    write_safetensors(&dir.join("model.safetensors"), &model.export_tensors()?)?;
    tokenizer.save(&dir.join("tokenizer.json"))
}

fn append_metrics(path: &Path, report: &StepReport) -> Result<()> {
    let line = serde_json::to_string(report).map_err(|e| Error::serialize("a metrics line", e))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(file, "{line}").map_err(|e| Error::io(path, e))
}

/// Drops metric lines past `step` (written after the checkpoint a run resumes from).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let keep = keep.max(1);
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.contains('.'))
        })
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for old in &names[..excess] {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(())
}
