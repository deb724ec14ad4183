//! The training loop, driven one step at a time.
//!
//! [`Trainer::step`] runs one optimizer step (all of its accumulated micro-batches) and reports
//! what happened, including any evaluation or sample that fell due. It does no I/O: a
//! [`Run`](crate::run::Run) records the reports and writes the checkpoints the trainer hands
//! it, so a command-line loop, a desktop worker and a browser page drive the same code.
//!
//! One idea per file: `config` (the settings), `loss` (the objective), `nonfinite` (steps whose
//! loss or gradients are NaN or infinite), `precision` (mixed precision and loss scaling),
//! `recompute` (block-wise recomputation), and here the step.
//!
//! B=batch, T=time, V=vocab

mod config;
mod loss;
mod nonfinite;
mod precision;
mod recompute;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use config::{Precision, Recompute, TrainConfig, Windows};
pub use loss::{lm_loss, masked_loss_sum};
pub use nonfinite::OnNonFinite;
pub use precision::LossScaler;

use crate::data::masked::{MaskedBatch, Masking, documents, masked_batch_rows};
use crate::data::pairs::{PairBatch, PairTokens, TokenPair, pair_batch_rows};
use crate::data::{LmBatch, line_starts, lm_batch, lm_batch_at, lm_batch_rows, lm_windows};
use crate::generate::GenerateConfig;
use crate::lm::{LanguageModel, Objective, export_tensors_async};
use crate::optim::{Optimizer, clip_global_norm_async, global_norm_async, param_shapes};
use crate::pace::Pacer;
use crate::run::{CHECKPOINT_FORMAT, Checkpoint, TrainerState};
use crate::sampling::SamplingConfig;
use crate::tokenizer::Tokenizer;
use crate::weights::{parse_safetensors, safetensors_bytes};
use crate::{Error, Result, readback, rng};

/// What one optimizer step did (one line of a run's `metrics.jsonl`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps completed, this one included.
    pub step: u64,
    /// Mean training loss over the step's micro-batches (NaN for a step whose loss was not
    /// finite, written as `null`).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
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
    /// A variational autoencoder's reconstruction loss (summed over positions, mean over rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstruction: Option<f64>,
    /// A variational autoencoder's KL divergence from the prior (mean over rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// The KL term's weight this step (KL annealing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_weight: Option<f64>,
    /// Held-out reconstruction loss, when an evaluation fell due (variational autoencoders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_reconstruction: Option<f64>,
    /// Held-out KL divergence, when an evaluation fell due (variational autoencoders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_kl: Option<f64>,
    /// The f16 loss scale used by this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Whether the update was skipped: the f16 gradients overflowed, or the loss or gradients
    /// were not finite under [`OnNonFinite::Skip`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Why the step was unusual (a skipped non-finite step), for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where a checkpoint written after this step went (set by the run that wrote it).
    #[serde(skip)]
    pub checkpoint: Option<std::path::PathBuf>,
}

/// A number that JSON wrote as `null` (JSON has no NaN or infinity) is read back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What the gradient computation needs, apart from the model: borrowed from the trainer so the
/// optimizer can ask for gradients at another point (Heun's method) while it is being stepped.
struct Batches<'a> {
    config: &'a TrainConfig,
    tokens: &'a [u32],
    starts: &'a [usize],
    masked: Option<&'a MaskedData>,
    pairs: Option<&'a PairData>,
    rows: Option<&'a RowData>,
    device: &'a Device,
    step: u64,
    loss_scale: f64,
}

/// What masked-LM training draws its batches from: the special ids and each split's documents
/// (the lines of the token streams).
struct MaskedData {
    masking: Masking,
    train_docs: Vec<std::ops::Range<usize>>,
    val_docs: Vec<std::ops::Range<usize>>,
}

impl MaskedData {
    /// The masking of `tokenizer` (which must have `[MASK]` and `[PAD]`) and the documents of
    /// both splits: the lines, each ending at a token whose text ends a line.
    fn new(tokenizer: &Tokenizer, train: &[u32], val: &[u32]) -> Result<Self> {
        let id = |name: &str| {
            tokenizer.token_to_id(name).ok_or_else(|| {
                Error::Config(format!(
                    "masked-LM training needs a {name} token, which the tokenizer lacks"
                ))
            })
        };
        let (mask_id, pad_id) = (id("[MASK]")?, id("[PAD]")?);
        let vocab = tokenizer.vocab_size() as u32;
        let special = special_ids(tokenizer);
        let ends = line_end_ids(tokenizer);
        let docs = |tokens: &[u32]| documents(tokens, |t| ends.contains(&t), 2);
        Ok(Self {
            masking: Masking::new(mask_id, pad_id, vocab, &special)?,
            train_docs: docs(train),
            val_docs: docs(val),
        })
    }
}

/// The ids of the tokenizer's special tokens (padding, mask, separators, unknown, end of text).
fn special_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    [
        "[PAD]",
        "[MASK]",
        "[CLS]",
        "[SEP]",
        "[UNK]",
        "<unk>",
        "<|endoftext|>",
    ]
    .iter()
    .filter_map(|t| tokenizer.token_to_id(t))
    .collect()
}

/// The ids of the tokens whose text ends a line (corpora are encoded line by line, so every
/// line ends with one of them).
fn line_end_ids(tokenizer: &Tokenizer) -> std::collections::HashSet<u32> {
    let special = special_ids(tokenizer);
    (0..tokenizer.vocab_size() as u32)
        .filter(|&i| !special.contains(&i))
        .filter(|&i| tokenizer.decode(&[i]).is_ok_and(|t| t.ends_with('\n')))
        .collect()
}

/// What sequence-to-sequence training draws its batches from: the special ids and each split's
/// pairs.
struct PairData {
    tokens: PairTokens,
    train: Vec<TokenPair>,
    val: Vec<TokenPair>,
}

impl PairData {
    /// The held-out pairs, or the training pairs where none are held out.
    fn held_out(&self) -> &[TokenPair] {
        if self.val.is_empty() {
            &self.train
        } else {
            &self.val
        }
    }
}

/// What a variational autoencoder trains on: rows of one length, each split's.
struct RowData {
    train: Vec<Vec<u32>>,
    val: Vec<Vec<u32>>,
}

impl RowData {
    /// The held-out rows, or the training rows where none are held out.
    fn held_out(&self) -> &[Vec<u32>] {
        if self.val.is_empty() {
            &self.train
        } else {
            &self.val
        }
    }

    /// Rows per batch: as many as hold `batch_size x context` tokens (at least one).
    fn per_batch(&self, config: &TrainConfig) -> usize {
        let len = self.train.first().map_or(1, Vec::len).max(1);
        (config.batch_size * config.context / len).max(1)
    }

    /// Rows `first..first + n` of the batch drawn from `rows` for (seed, stream, step), as a
    /// `[n, L]` tensor.
    fn batch(
        rows: &[Vec<u32>],
        n: usize,
        first: usize,
        (seed, stream, step): (u64, u64, u64),
        device: &Device,
    ) -> Tensor<2, Int> {
        let len = rows[0].len();
        let mut ids = Vec::with_capacity(n * len);
        for row in first..first + n {
            let counter = step.wrapping_mul(1 << 20).wrapping_add(row as u64);
            let pick = rng::below(seed, 400 + stream, counter, rows.len() as u64) as usize;
            ids.extend(rows[pick].iter().map(|&t| i64::from(t)));
        }
        Tensor::from_data(TensorData::new(ids, [n, len]), device)
    }
}

/// A variational autoencoder's loss parts for a batch: the reconstruction's cross-entropy summed
/// over positions and averaged over rows, the KL divergence (summed over latent dimensions,
/// averaged over rows), and the KL term charged with `free_bits` nats per dimension free (each
/// dimension's batch mean raised to at least that).
///
/// # Shapes
/// - tokens: `[B, L]`; output: `[1]` each
fn variational_losses<M: LanguageModel>(
    model: &M,
    tokens: Tensor<2, Int>,
    (noise_seed, first_row): (u64, usize),
    free_bits: f64,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let [b, l] = tokens.dims();
    let (logits, kl) = model.forward_variational(tokens.clone(), noise_seed, first_row);
    let ones = Tensor::<2>::ones([b, l], &tokens.device());
    let recon = masked_loss_sum(precision::to_f32(logits), tokens, ones).div_scalar(b as f64);
    let per_dim = precision::to_f32(kl).mean_dim(0); // [1, Z]
    let charged = per_dim.clone().clamp_min(free_bits).sum().reshape([1]);
    (recon, per_dim.sum().reshape([1]), charged)
}

/// A pair batch as tensors: encoder ids, encoder mask, decoder ids, targets and their weights.
fn pair_tensors(
    batch: &PairBatch,
    device: &Device,
) -> (
    Tensor<2, Int>,
    Tensor<2, Bool>,
    Tensor<2, Int>,
    Tensor<2, Int>,
    Tensor<2>,
) {
    let (input, target) = (
        [batch.batch, batch.input_len],
        [batch.batch, batch.target_len],
    );
    (
        Tensor::from_data(TensorData::new(batch.input.clone(), input), device),
        Tensor::from_data(TensorData::new(batch.input_mask.clone(), input), device),
        Tensor::from_data(TensorData::new(batch.decoder_input.clone(), target), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), target), device),
        Tensor::from_data(TensorData::new(batch.weights.clone(), target), device),
    )
}

/// A masked batch as tensors: inputs, targets, chosen positions and the attention mask.
fn masked_tensors(
    batch: &MaskedBatch,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>, Tensor<2, Bool>) {
    let shape = [batch.batch, batch.len];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.chosen.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.mask.clone(), shape), device),
    )
}

/// The loss of one optimizer step and the real tokens it saw (and a variational autoencoder's
/// reconstruction and KL parts).
struct StepLoss {
    loss: f64,
    tokens: u64,
    parts: Option<(f64, f64)>,
}

/// Trains a [`LanguageModel`] on token streams (windows for a causal model, padded and masked
/// lines for a masked one), on token pairs (an encoder-decoder) or on fixed-length rows (a
/// variational autoencoder).
pub struct Trainer<M: LanguageModel> {
    model: Option<M>,
    optim: Optimizer,
    config: TrainConfig,
    tokenizer: Tokenizer,
    train_tokens: Vec<u32>,
    val_tokens: Vec<u32>,
    /// Where a causal model's training and held-out windows may start (empty: anywhere).
    starts: (Vec<usize>, Vec<usize>),
    masked: Option<MaskedData>,
    pairs: Option<PairData>,
    rows: Option<RowData>,
    device: Device,
    step: u64,
    tokens_seen: u64,
    started: web_time::Instant,
    scaler: LossScaler,
    notes: Vec<String>,
}

fn batch_tensors(batch: &LmBatch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch, batch.context];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| Error::serialize(what, e))
}

impl<M: LanguageModel> Trainer<M> {
    /// A trainer for `model` (whose parameters must live on an autodiff device), starting at
    /// step 0, on token streams: a causal or masked model.
    pub fn new(
        model: M,
        config: TrainConfig,
        tokenizer: Tokenizer,
        train_tokens: Vec<u32>,
        val_tokens: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(
            model,
            config,
            tokenizer,
            (train_tokens, val_tokens),
            (None, None),
            device,
        )
    }

    /// A trainer for a variational autoencoder `model` on rows of token ids, all as long as the
    /// model's context; a batch holds `batch_size x context` tokens' worth of rows.
    pub fn with_rows(
        model: M,
        config: TrainConfig,
        tokenizer: Tokenizer,
        train: Vec<Vec<u32>>,
        val: Vec<Vec<u32>>,
        device: &Device,
    ) -> Result<Self> {
        let len = model.context_length();
        if train.is_empty() {
            return Err(Error::Data("there is no row to train on".into()));
        }
        if let Some(bad) = train.iter().chain(&val).find(|r| r.len() != len) {
            return Err(Error::Data(format!(
                "a row has {} tokens; the '{}' model reads rows of {len}",
                bad.len(),
                model.family()
            )));
        }
        let rows = RowData { train, val };
        Self::build(
            model,
            config,
            tokenizer,
            (Vec::new(), Vec::new()),
            (None, Some(rows)),
            device,
        )
    }

    /// A trainer for an encoder-decoder `model` on (input, target) pairs of token ids, which
    /// the batches end with `tokens.eos`; the decoder starts from `tokens.start`.
    pub fn with_pairs(
        model: M,
        config: TrainConfig,
        tokenizer: Tokenizer,
        tokens: PairTokens,
        train: Vec<TokenPair>,
        val: Vec<TokenPair>,
        device: &Device,
    ) -> Result<Self> {
        let pairs = PairData { tokens, train, val };
        Self::build(
            model,
            config,
            tokenizer,
            (Vec::new(), Vec::new()),
            (Some(pairs), None),
            device,
        )
    }

    fn build(
        model: M,
        config: TrainConfig,
        tokenizer: Tokenizer,
        (train_tokens, val_tokens): (Vec<u32>, Vec<u32>),
        (pairs, rows): (Option<PairData>, Option<RowData>),
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        // A token the model has no embedding for (a tokenizer larger than the model's
        // vocabulary) would fail deep inside the first forward pass.
        let vocab = model.vocab_size();
        let pair_ids = pairs.iter().flat_map(|p| {
            let special = [p.tokens.pad, p.tokens.eos, p.tokens.start];
            let texts = p.train.iter().chain(&p.val);
            texts
                .flat_map(|(a, b)| a.iter().chain(b))
                .copied()
                .chain(special)
        });
        let row_ids = rows
            .iter()
            .flat_map(|r| r.train.iter().chain(&r.val).flatten().copied());
        let largest = train_tokens
            .iter()
            .chain(&val_tokens)
            .copied()
            .chain(pair_ids)
            .chain(row_ids)
            .max();
        if let Some(id) = largest.filter(|&id| id as usize >= vocab) {
            return Err(Error::Data(format!(
                "token id {id} is outside the model's vocabulary of {vocab}: the tokenizer \
                 has more tokens than the model has embeddings"
            )));
        }
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
        // A row model's context is its row length; its batches count tokens, not windows.
        let variational = model.objective() == Objective::Variational;
        if !variational && config.context > model.context_length() {
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
        // Fail now, not at the first step, if the corpus cannot fill a batch.
        let masked = match model.objective() {
            Objective::Variational => {
                if rows.is_none() {
                    return Err(Error::Config(format!(
                        "the '{}' family trains on rows of {} tokens",
                        model.family(),
                        model.context_length()
                    )));
                }
                None
            }
            _ if rows.is_some() => {
                return Err(Error::Config(format!(
                    "the '{}' family does not train on fixed-length rows",
                    model.family()
                )));
            }
            Objective::Seq2Seq => {
                let data = pairs.as_ref().ok_or_else(|| {
                    Error::Config(format!(
                        "the '{}' family trains on (input, target) pairs",
                        model.family()
                    ))
                })?;
                pair_batch_rows(&data.train, 1, 0, config.context, data.tokens, 0, 0, 0)?;
                None
            }
            _ if pairs.is_some() => {
                return Err(Error::Config(format!(
                    "the '{}' family does not train on (input, target) pairs",
                    model.family()
                )));
            }
            Objective::Causal => {
                lm_batch(&train_tokens, &[], 1, config.context, 0, 0, 0)?;
                None
            }
            Objective::Masked => {
                let data = MaskedData::new(&tokenizer, &train_tokens, &val_tokens)?;
                masked_batch_rows(
                    &train_tokens,
                    &data.train_docs,
                    1,
                    0,
                    config.context,
                    &data.masking,
                    0,
                    0,
                    0,
                )?;
                Some(data)
            }
        };
        let starts = if config.windows == Windows::Lines
            && masked.is_none()
            && pairs.is_none()
            && rows.is_none()
        {
            let ends = line_end_ids(&tokenizer);
            let of = |tokens: &[u32]| line_starts(tokens, |t| ends.contains(&t), config.context);
            (of(&train_tokens), of(&val_tokens))
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Self {
            starts,
            masked,
            pairs,
            rows,
            model: Some(model),
            optim: Optimizer::new(config.optimizer),
            scaler: LossScaler::new(config.precision),
            config,
            tokenizer,
            train_tokens,
            val_tokens,
            device: device.clone(),
            step: 0,
            tokens_seen: 0,
            started: web_time::Instant::now(),
            notes,
        })
    }

    /// Continues from `ckpt` (whose weights the caller has already loaded into the model given
    /// to [`new`](Self::new)): optimizer moments, step, data position and loss scale.
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let state = TrainerState::read(ckpt)?;
        let family = self.model().family();
        if state.family != family {
            return Err(Error::format(
                ckpt.path(TrainerState::FILE),
                format!(
                    "checkpoint is for a '{}' model, not '{family}'",
                    state.family
                ),
            ));
        }
        let name = "optimizer.safetensors";
        let moments = parse_safetensors(&ckpt.path(name), ckpt.file(name)?)?;
        let params = param_shapes(self.model());
        self.optim
            .load_state(moments, state.step, &params, &self.device)?;
        self.step = state.step;
        self.tokens_seen = state.tokens_seen;
        self.config.seed = state.seed;
        if let Some(scale) = state.loss_scale {
            self.scaler.set_scale(scale);
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

    /// The tokenizer the model reads.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
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
        self.scaler = LossScaler::new(self.config.precision);
    }

    /// Sets the f16 loss scale (65536 at the start of a run), e.g. to start lower.
    pub fn set_loss_scale(&mut self, scale: f64) {
        self.scaler.set_scale(scale);
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

    /// Whether a checkpoint is due after the step just taken (every `checkpoint_every` steps,
    /// and after the last).
    pub fn checkpoint_due(&self) -> bool {
        let every = self.config.checkpoint_every;
        self.step > 0 && ((every > 0 && self.step.is_multiple_of(every)) || self.finished())
    }

    /// Runs one optimizer step and whatever evaluation or sample falls due after it.
    pub fn step(&mut self) -> Result<StepReport> {
        readback::resolve("the loss", self.step_async())
    }

    /// [`step`](Self::step), awaiting each readback (the loss, the gradient norm, sampled
    /// tokens): the version a browser page drives.
    pub async fn step_async(&mut self) -> Result<StepReport> {
        let t0 = web_time::Instant::now();
        let model = self.model.take().ok_or_else(|| {
            Error::Internal("the trainer lost its model in an earlier failed step".into())
        })?;
        let lr = self.config.schedule().lr(self.step);
        let batches = Batches {
            config: &self.config,
            tokens: &self.train_tokens,
            starts: &self.starts.0,
            masked: self.masked.as_ref(),
            pairs: self.pairs.as_ref(),
            rows: self.rows.as_ref(),
            device: &self.device,
            step: self.step,
            loss_scale: self.scaler.scale(),
        };
        let loss_scale = self.scaler.is_dynamic().then_some(self.scaler.scale());
        let (mut grads, loss) = match batches.gradients(&model).await {
            Ok(g) => g,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let norm = if self.scaler.is_dynamic() {
            global_norm_async(&model, &grads).await?
        } else {
            0.0
        };
        if !self.scaler.record(norm) {
            // The f16 gradients overflowed under this scale: no update this step.
            return self
                .finish_step(model, t0, loss, lr, norm, loss_scale, true)
                .await;
        }
        let grad_norm = clip_global_norm_async(&model, &mut grads, self.config.grad_clip).await?;
        if !(loss.loss.is_finite() && grad_norm.is_finite()) {
            let culprit = nonfinite::first_non_finite(&model, &grads).await;
            let step = self.step + 1;
            if self.config.on_nonfinite == OnNonFinite::Skip {
                let what = if loss.loss.is_finite() {
                    "gradient"
                } else {
                    "loss"
                };
                let place = match culprit {
                    Ok(Some(c)) => format!(" (the first NaN or infinity is in {c})"),
                    _ => String::new(),
                };
                let mut report = self
                    .finish_step(model, t0, loss, lr, grad_norm, loss_scale, true)
                    .await?;
                report.note = Some(format!("skipped: its {what} is not finite{place}"));
                return Ok(report);
            }
            self.model = Some(model);
            let culprit = match culprit? {
                Some(c) => format!("; the first NaN or infinity is in {c}"),
                None => String::new(),
            };
            return Err(Error::NonFinite(format!(
                "step {step}: the loss is {} and the gradient norm {}{culprit}. The weights keep \
                 the values of step {}. A lower --lr or --grad-clip often avoids this; \
                 --on-nonfinite skip skips such steps instead",
                loss.loss, grad_norm, self.step
            )));
        }
        let clip = self.config.grad_clip;
        let gradient_at = async |m: &M| -> Result<GradientsParams> {
            let (mut g, _) = batches.gradients(m).await?;
            clip_global_norm_async(m, &mut g, clip).await?;
            Ok(g)
        };
        let model = self.optim.update(lr, model, grads, gradient_at).await?;
        self.finish_step(model, t0, loss, lr, grad_norm, loss_scale, false)
            .await
    }

    /// Counts a step taken (or skipped) and runs what falls due after it.
    #[allow(clippy::too_many_arguments)]
    async fn finish_step(
        &mut self,
        model: M,
        t0: web_time::Instant,
        loss: StepLoss,
        lr: f64,
        grad_norm: f64,
        loss_scale: Option<f64>,
        skipped: bool,
    ) -> Result<StepReport> {
        self.model = Some(model);
        self.step += 1;
        let tokens = loss.tokens;
        self.tokens_seen += tokens;
        let tokens_per_sec = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);

        let due =
            |every: u64, step: u64, last: bool| every > 0 && (step.is_multiple_of(every) || last);
        let last = self.finished();
        let (eval_loss, eval_parts) = if due(self.config.eval_every, self.step, last) {
            let (loss, parts) = self.evaluate_parts_async().await?;
            (Some(loss), parts)
        } else {
            (None, None)
        };
        let sample = if due(self.config.sample_every, self.step, last) {
            Some(self.sample_async(self.config.seed ^ self.step).await?)
        } else {
            None
        };
        let pool = crate::device::memory_usage(&self.device);
        Ok(StepReport {
            step: self.step,
            loss: loss.loss,
            lr,
            grad_norm,
            tokens_per_sec,
            elapsed_s: self.started.elapsed().as_secs_f64(),
            eval_loss,
            sample,
            memory_in_use: pool.map(|(used, _)| used),
            memory_reserved: pool.map(|(_, reserved)| reserved),
            process_memory: crate::device::process_memory().map(|(rss, _)| rss),
            reconstruction: loss.parts.map(|p| p.0),
            kl: loss.parts.map(|p| p.1),
            kl_weight: self
                .rows
                .is_some()
                .then(|| self.config.kl_weight(self.step - 1)),
            eval_reconstruction: eval_parts.map(|p| p.0),
            eval_kl: eval_parts.map(|p| p.1),
            loss_scale,
            skipped,
            note: None,
            checkpoint: None,
        })
    }

    /// Mean loss over the fixed held-out batches.
    pub fn evaluate(&self) -> Result<f64> {
        readback::resolve("the held-out loss", self.evaluate_async())
    }

    /// [`evaluate`](Self::evaluate), awaiting each readback.
    pub async fn evaluate_async(&self) -> Result<f64> {
        Ok(self.evaluate_parts_async().await?.0)
    }

    /// The held-out loss, and a variational autoencoder's held-out reconstruction and KL (whose
    /// sum is its loss: the negative evidence lower bound).
    async fn evaluate_parts_async(&self) -> Result<(f64, Option<(f64, f64)>)> {
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let c = &self.config;
        if let Some(r) = &self.rows {
            let rows = r.held_out();
            let n = r.per_batch(c).min(rows.len().max(1));
            let (mut recon, mut kl) = (0.0, 0.0);
            let batches = c.eval_batches.max(1);
            for i in 0..batches {
                // The posterior's noise is fixed per held-out batch too.
                let x = RowData::batch(rows, n, 0, (c.seed, 1, i as u64), &device);
                let noise = (rng::hash3(c.seed, 8, i as u64), 0);
                let (rc, k, _) = variational_losses(&model, x, noise, 0.0);
                recon += readback::scalar_async(rc, "the held-out loss").await?;
                kl += readback::scalar_async(k, "the held-out KL").await?;
            }
            let (recon, kl) = (recon / batches as f64, kl / batches as f64);
            return Ok((recon + kl, Some((recon, kl))));
        }
        Ok((self.evaluate_plain_async(&model, &device).await?, None))
    }

    /// The held-out loss of a model trained on token streams or pairs.
    async fn evaluate_plain_async(&self, model: &M, device: &Device) -> Result<f64> {
        let device = device.clone();
        let c = &self.config;
        let (tokens, starts) = self.held_out_stream();
        let mut total = 0.0;
        let mut pacer = Pacer::default();
        if let Some(p) = &self.pairs {
            for i in 0..c.eval_batches.max(1) {
                let batch = pair_batch_rows(
                    p.held_out(),
                    c.batch_size,
                    0,
                    c.context,
                    p.tokens,
                    c.seed,
                    1,
                    i as u64,
                )?;
                let (input, mask, decoder, targets, weights) = pair_tensors(&batch, &device);
                let logits = model.forward_pairs(input, mask, decoder);
                let sum = masked_loss_sum(logits, targets, weights);
                total += readback::scalar_async(sum, "the held-out loss").await?
                    / batch.target_tokens as f64;
                pacer.breathe().await;
            }
            return Ok(total / c.eval_batches.max(1) as f64);
        }
        if let Some(m) = &self.masked {
            let (tokens, docs) = if m.val_docs.is_empty() {
                (&self.train_tokens, &m.train_docs)
            } else {
                (&self.val_tokens, &m.val_docs)
            };
            for i in 0..c.eval_batches.max(1) {
                let batch = masked_batch_rows(
                    tokens,
                    docs,
                    c.batch_size,
                    0,
                    c.context,
                    &m.masking,
                    c.seed,
                    1,
                    i as u64,
                )?;
                let chosen: f32 = batch.chosen.iter().sum();
                let (inputs, targets, weights, mask) = masked_tensors(&batch, &device);
                let sum = masked_loss_sum(model.forward_padded(inputs, mask), targets, weights);
                total +=
                    readback::scalar_async(sum, "the held-out loss").await? / f64::from(chosen);
                pacer.breathe().await;
            }
            return Ok(total / c.eval_batches.max(1) as f64);
        }
        for i in 0..c.eval_batches.max(1) {
            let batch = lm_batch(tokens, starts, c.batch_size, c.context, c.seed, 1, i as u64)?;
            let (inputs, targets) = batch_tensors(&batch, &device);
            let loss = lm_loss(model.forward(inputs), targets);
            total += readback::scalar_async(loss, "the held-out loss").await?;
            pacer.breathe().await;
        }
        Ok(total / c.eval_batches.max(1) as f64)
    }

    /// The held-out token stream and its window starts, or the training ones where the
    /// held-out split is too short for a window.
    fn held_out_stream(&self) -> (&[u32], &[usize]) {
        if self.val_tokens.len() >= self.config.context + 2 {
            (&self.val_tokens, &self.starts.1)
        } else {
            (&self.train_tokens, &self.starts.0)
        }
    }

    /// The held-out loss over every held-out window (each start `--windows` allows, in order,
    /// `--batch-size` at a time) rather than over the `--eval-batches` sampled batches: the
    /// figure a run ends on. Models trained on pairs, masked documents or rows, and streams too
    /// short for one window, take [`evaluate`](Self::evaluate).
    pub fn evaluate_all(&self) -> Result<(f64, usize)> {
        readback::resolve("the held-out loss", self.evaluate_all_async())
    }

    /// [`evaluate_all`](Self::evaluate_all), awaiting each readback: the mean loss per
    /// predicted token and the number of windows read (0 where it fell back to the sampled
    /// batches).
    pub async fn evaluate_all_async(&self) -> Result<(f64, usize)> {
        let c = &self.config;
        let (tokens, starts) = self.held_out_stream();
        let windows = lm_windows(tokens, starts, c.context);
        if self.rows.is_some()
            || self.pairs.is_some()
            || self.masked.is_some()
            || windows.is_empty()
        {
            return Ok((self.evaluate_async().await?, 0));
        }
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let mut total = 0.0;
        let mut pacer = Pacer::default();
        for chunk in windows.chunks(c.batch_size.max(1)) {
            let batch = lm_batch_at(tokens, chunk, c.context);
            let (inputs, targets) = batch_tensors(&batch, &device);
            let loss = lm_loss(model.forward(inputs), targets);
            total += readback::scalar_async(loss, "the held-out loss").await? * chunk.len() as f64;
            pacer.breathe().await;
        }
        Ok((total / windows.len() as f64, windows.len()))
    }

    /// Text sampled from the model, starting at the configured prompt.
    pub fn sample(&self, seed: u64) -> Result<String> {
        readback::resolve("a token id", self.sample_async(seed))
    }

    /// [`sample`](Self::sample), awaiting each token.
    pub async fn sample_async(&self, seed: u64) -> Result<String> {
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        if let Some(m) = &self.masked {
            return self.fill_in_async(&model, m, seed, &device).await;
        }
        if let Some(p) = &self.pairs {
            return self.answer_async(&model, p, seed, &device).await;
        }
        if self.rows.is_some() {
            // A row from the prior, shown as two lines.
            let config = GenerateConfig::new(
                0,
                SamplingConfig {
                    seed,
                    ..SamplingConfig::default()
                },
                None,
            );
            let ids = model.continue_prompt(&[], &config, &device).await?;
            let chars: Vec<char> = self.tokenizer.decode(&ids)?.chars().collect();
            let (first, second) = chars.split_at(chars.len() / 2);
            return Ok(format!(
                "{}，{}。",
                first.iter().collect::<String>(),
                second.iter().collect::<String>()
            ));
        }
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
        let new = model.continue_prompt(&prompt, &config, &device).await?;
        let mut all = prompt;
        all.extend(new);
        self.tokenizer.decode(&all)
    }

    /// An encoder-decoder's sample: a held-out pair's input, the model's answer, and the
    /// pair's target in brackets.
    async fn answer_async(
        &self,
        model: &M,
        p: &PairData,
        seed: u64,
        device: &Device,
    ) -> Result<String> {
        let pairs = p.held_out();
        let (input, target) = &pairs[rng::below(seed, 300, 0, pairs.len() as u64) as usize];
        let sampling = SamplingConfig {
            seed,
            ..SamplingConfig::default()
        };
        let config = GenerateConfig::new(self.config.sample_tokens, sampling, Some(p.tokens.eos));
        let answer = model.continue_prompt(input, &config, device).await?;
        Ok(format!(
            "{} → {}  [{}]",
            self.tokenizer.decode(input)?,
            self.tokenizer.decode(&answer)?,
            self.tokenizer.decode(target)?
        ))
    }

    /// A masked model's sample: a held-out document with tokens masked as in training (mask
    /// tokens shown as `▢`), then the same document with the model's likeliest token at every
    /// chosen position.
    async fn fill_in_async(
        &self,
        model: &M,
        m: &MaskedData,
        seed: u64,
        device: &Device,
    ) -> Result<String> {
        let (tokens, docs) = if m.val_docs.is_empty() {
            (&self.train_tokens, &m.train_docs)
        } else {
            (&self.val_tokens, &m.val_docs)
        };
        let c = &self.config;
        let batch = masked_batch_rows(tokens, docs, 1, 0, c.context, &m.masking, seed, 2, 0)?;
        let (inputs, _, _, mask) = masked_tensors(&batch, device);
        let best = model
            .forward_padded(inputs, mask)
            .argmax(2)
            .reshape([batch.len]);
        let best = readback::int_values_async(best, "the filled-in tokens").await?;
        let mut shown = String::new();
        let mut run: Vec<u32> = Vec::new();
        let mut filled = Vec::with_capacity(batch.len);
        for ((&input, &chosen), &guess) in batch.inputs.iter().zip(&batch.chosen).zip(&best) {
            let input = input as u32;
            filled.push(if chosen > 0.0 { guess as u32 } else { input });
            if input == m.masking.mask_id {
                shown.push_str(&self.tokenizer.decode(&run)?);
                shown.push('▢');
                run.clear();
            } else {
                run.push(input);
            }
        }
        shown.push_str(&self.tokenizer.decode(&run)?);
        let filled = self.tokenizer.decode(&filled)?;
        Ok(format!("{}\n→ {}", shown.trim_end(), filled.trim_end()))
    }

    /// The trainer's complete state as checkpoint files: the model folder (loadable by Cinder
    /// and by Hugging Face transformers), optimizer moments, trainer state and configuration.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        readback::resolve("the weights", self.checkpoint_async())
    }

    /// [`checkpoint`](Self::checkpoint), reading the weights back asynchronously.
    pub async fn checkpoint_async(&self) -> Result<Checkpoint> {
        let model = self.model();
        let state = TrainerState {
            format: CHECKPOINT_FORMAT,
            step: self.step,
            seed: self.config.seed,
            tokens_seen: self.tokens_seen,
            family: model.family().to_string(),
            loss_scale: self.scaler.is_dynamic().then_some(self.scaler.scale()),
        };
        let mut ckpt = model_files_async(model, &self.tokenizer).await?;
        let optimizer = safetensors_bytes(&self.optim.state_tensors_async().await?, None)?;
        ckpt.insert("optimizer.safetensors", optimizer);
        ckpt.insert(TrainerState::FILE, to_json(TrainerState::FILE, &state)?);
        ckpt.insert(
            "train_config.json",
            to_json("train_config.json", &self.config)?,
        );
        Ok(ckpt)
    }
}

impl Batches<'_> {
    /// Gradients of this step's batch (all its micro-batches, each loss divided by their
    /// number) at `model`, and the sum of the micro-batch losses. Micro-batch `j` of `k` holds
    /// rows `j b .. (j + 1) b` of the step's batch of `k b` rows, so accumulating `k`
    /// micro-batches of `b` sees exactly the sequences of one batch of `k b`.
    async fn gradients<M: LanguageModel>(&self, model: &M) -> Result<(GradientsParams, StepLoss)> {
        let c = self.config;
        let k = c.accumulate;
        // Dropout masks are a function of (seed, step) too.
        self.device.seed(rng::hash3(c.seed, 7, self.step));
        let dtype = c.precision.dtype();
        let low = dtype.map(|d| precision::cast_params(model, d));
        let work = low.as_ref().unwrap_or(model);
        let weighted = match (self.masked, self.pairs, self.rows) {
            (Some(m), _, _) => Some(self.masked_gradients(work, m).await?),
            (_, Some(p), _) => Some(self.pair_gradients(work, p).await?),
            (_, _, Some(r)) => Some(self.row_gradients(work, r).await?),
            _ => None,
        };
        if let Some((grads, loss)) = weighted {
            if dtype.is_none() && self.loss_scale == 1.0 {
                return Ok((grads, loss));
            }
            return Ok((precision::unscale(model, grads, self.loss_scale), loss));
        }
        // Each micro-batch's loss is divided by their number (accumulation) and multiplied by
        // the loss scale (1 except in f16).
        let factor = self.loss_scale / k as f64;
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        for micro in 0..k {
            let batch = lm_batch_rows(
                self.tokens,
                self.starts,
                c.batch_size,
                micro * c.batch_size,
                c.context,
                c.seed,
                0,
                self.step,
            )?;
            let (inputs, targets) = batch_tensors(&batch, self.device);
            let loss = if c.recompute.blockwise() {
                recompute::blockwise_gradients(
                    work,
                    self.device,
                    inputs,
                    targets,
                    factor,
                    &mut accumulator,
                )?
            } else {
                let loss = lm_loss(precision::to_f32(work.forward(inputs)), targets);
                let scaled = precision::scaled(&loss, factor);
                let grads = GradientsParams::from_grads(scaled.backward(), work);
                accumulator.accumulate(work, grads);
                loss
            };
            loss_sum += readback::scalar_async(loss.detach(), "the loss").await?;
        }
        let grads = accumulator.grads();
        let loss = StepLoss {
            loss: loss_sum / k as f64,
            tokens: (c.batch_size * c.context * k) as u64,
            parts: None,
        };
        if dtype.is_none() && self.loss_scale == 1.0 {
            return Ok((grads, loss));
        }
        Ok((precision::unscale(model, grads, self.loss_scale), loss))
    }

    /// Refuses block-by-block recomputation, which only causal models have.
    fn check_no_blockwise(&self) -> Result<()> {
        let c = self.config;
        if c.recompute.blockwise() {
            return Err(Error::Config(format!(
                "recompute {}: block-by-block recomputation is implemented for causal models \
                 (use recompute checkpointing)",
                c.recompute
            )));
        }
        Ok(())
    }

    /// [`gradients`](Self::gradients) of a masked-LM step: each micro-batch's summed loss over
    /// its chosen positions is divided by the number chosen in the whole step, so the
    /// accumulated gradient is exactly that of one batch of all the rows.
    async fn masked_gradients<M: LanguageModel>(
        &self,
        work: &M,
        m: &MaskedData,
    ) -> Result<(GradientsParams, StepLoss)> {
        self.check_no_blockwise()?;
        let c = self.config;
        let micro = (0..c.accumulate)
            .map(|j| {
                masked_batch_rows(
                    self.tokens,
                    &m.train_docs,
                    c.batch_size,
                    j * c.batch_size,
                    c.context,
                    &m.masking,
                    c.seed,
                    0,
                    self.step,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let chosen: f32 = micro.iter().flat_map(|b| &b.chosen).sum();
        let real: usize = micro.iter().map(|b| b.real_tokens).sum();
        self.weighted_gradients(work, micro.len(), chosen, real, |model, i| {
            let (inputs, targets, weights, mask) = masked_tensors(&micro[i], self.device);
            (model.forward_padded(inputs, mask), targets, weights)
        })
        .await
    }

    /// [`gradients`](Self::gradients) of a sequence-to-sequence step: each micro-batch's summed
    /// loss over its real target tokens is divided by the number of target tokens in the whole
    /// step, so accumulation is exact.
    async fn pair_gradients<M: LanguageModel>(
        &self,
        work: &M,
        p: &PairData,
    ) -> Result<(GradientsParams, StepLoss)> {
        self.check_no_blockwise()?;
        let c = self.config;
        let micro = (0..c.accumulate)
            .map(|j| {
                pair_batch_rows(
                    &p.train,
                    c.batch_size,
                    j * c.batch_size,
                    c.context,
                    p.tokens,
                    c.seed,
                    0,
                    self.step,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let targets = micro.iter().map(|b| b.target_tokens).sum::<usize>() as f32;
        let real: usize = micro.iter().map(|b| b.real_tokens).sum();
        self.weighted_gradients(work, micro.len(), targets, real, |model, i| {
            let (input, mask, decoder, targets, weights) = pair_tensors(&micro[i], self.device);
            (model.forward_pairs(input, mask, decoder), targets, weights)
        })
        .await
    }

    /// [`gradients`](Self::gradients) of a variational autoencoder's step: each micro-batch's
    /// reconstruction plus the annealed KL term (free bits spared), divided by the number of
    /// micro-batches (all of one size, so accumulation is exact). The reported loss is that
    /// objective; the parts are the plain reconstruction and KL divergence.
    async fn row_gradients<M: LanguageModel>(
        &self,
        work: &M,
        r: &RowData,
    ) -> Result<(GradientsParams, StepLoss)> {
        self.check_no_blockwise()?;
        let c = self.config;
        let (n, k) = (r.per_batch(c), c.accumulate);
        let beta = c.kl_weight(self.step);
        let factor = self.loss_scale / k as f64;
        let mut accumulator = GradientsAccumulator::<M>::new();
        let (mut total, mut recon_sum, mut kl_sum) = (0.0, 0.0, 0.0);
        for micro in 0..k {
            let x = RowData::batch(&r.train, n, micro * n, (c.seed, 0, self.step), self.device);
            let noise = (rng::hash3(c.seed, 9, self.step), micro * n);
            let (recon, kl, charged) = variational_losses(work, x, noise, c.free_bits);
            let loss = recon.clone() + charged.mul_scalar(beta);
            let scaled = precision::scaled(&loss, factor);
            accumulator.accumulate(work, GradientsParams::from_grads(scaled.backward(), work));
            total += readback::scalar_async(loss.detach(), "the loss").await?;
            recon_sum += readback::scalar_async(recon.detach(), "the reconstruction").await?;
            kl_sum += readback::scalar_async(kl.detach(), "the KL divergence").await?;
        }
        let len = r.train[0].len();
        let loss = StepLoss {
            loss: total / k as f64,
            tokens: (n * len * k) as u64,
            parts: Some((recon_sum / k as f64, kl_sum / k as f64)),
        };
        Ok((accumulator.grads(), loss))
    }

    /// Accumulated gradients of `micro` micro-batches scored on some positions: `forward(model,
    /// i)` gives micro-batch `i`'s logits, the ids to predict and their 0/1 weights; each
    /// micro-batch's weighted loss sum is divided by `weight_total`, the step's whole weight.
    /// `real_tokens` is what the step read.
    async fn weighted_gradients<M: LanguageModel>(
        &self,
        work: &M,
        micro: usize,
        weight_total: f32,
        real_tokens: usize,
        forward: impl Fn(&M, usize) -> (Tensor<3>, Tensor<2, Int>, Tensor<2>),
    ) -> Result<(GradientsParams, StepLoss)> {
        let factor = self.loss_scale / f64::from(weight_total);
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss = StepLoss {
            loss: 0.0,
            tokens: real_tokens as u64,
            parts: None,
        };
        for i in 0..micro {
            let (logits, targets, weights) = forward(work, i);
            let sum = masked_loss_sum(precision::to_f32(logits), targets, weights);
            let scaled = precision::scaled(&sum, factor);
            accumulator.accumulate(work, GradientsParams::from_grads(scaled.backward(), work));
            loss.loss +=
                readback::scalar_async(sum.detach(), "the loss").await? / f64::from(weight_total);
        }
        Ok((accumulator.grads(), loss))
    }
}

/// A model folder loadable by Cinder and by Hugging Face transformers: `config.json`,
/// `model.safetensors` and `tokenizer.json`.
pub fn model_files<M: LanguageModel>(model: &M, tokenizer: &Tokenizer) -> Result<Checkpoint> {
    readback::resolve("the weights", model_files_async(model, tokenizer))
}

/// [`model_files`], reading the weights back asynchronously.
pub async fn model_files_async<M: LanguageModel>(
    model: &M,
    tokenizer: &Tokenizer,
) -> Result<Checkpoint> {
    let mut files = Checkpoint::new("model");
    files.insert(
        "config.json",
        to_json("config.json", &model.config_json()?)?,
    );
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    files.insert(
        "model.safetensors",
        safetensors_bytes(&export_tensors_async(model).await?, Some(metadata))?,
    );
    files.insert("tokenizer.json", tokenizer.to_json()?.into_bytes());
    Ok(files)
}

/// Writes [`model_files`] into the folder `dir`, atomically.
pub fn save_model<M: LanguageModel>(
    model: &M,
    tokenizer: &Tokenizer,
    dir: &std::path::Path,
) -> Result<()> {
    crate::atomic::write_files(dir, model_files(model, tokenizer)?.files())
}
