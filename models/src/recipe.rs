//! What `cinder train` trains, and how: a GPT-2, LLaMA, GPT2_ML, BERT or T5 of a size preset on a
//! corpus (or its pairs) with a tokenizer trained on it. [`TrainSettings`] is the whole description (the `run.json` of a run, the
//! desktop and browser form's state); [`prepare`] turns it into a [`Trainer`] ready to step
//! inside a [`Run`], starting fresh, from a Hugging Face folder, or from the run's latest
//! checkpoint.

use std::path::PathBuf;

use cinder_engine::data::pairs::{
    PairTokens, TextPair, TokenPair, couplets,
    five_character_couplets as five_character_couplets_of, parse_jsonl,
};
use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::{DeviceChoice, Selected};
use cinder_engine::lm::LanguageModel;
use cinder_engine::run::{Checkpoint, Run, resolve_model_dir};
use cinder_engine::tokenizer::{Tokenizer, TokenizerKind};
use cinder_engine::train::{TrainConfig, Trainer};
use cinder_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::bert::{Bert, BertConfig};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::gpt2_ml::{Gpt2Ml, Gpt2MlConfig};
use crate::llama::{Llama, LlamaConfig};
use crate::poetry_vae::{PoetryVae, PoetryVaeConfig};
use crate::t5::{T5, T5Config};

/// The model families `cinder train` trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, GELU feed-forward, head tied to the embedding.
    #[value(name = "gpt2")]
    #[serde(rename = "gpt2")]
    Gpt2,
    /// LLaMA: rotary positions, RMSNorm, SwiGLU feed-forward, grouped-query attention, head tied
    /// to the embedding (as SmolLM2). The default: on the Tang poems it reaches a lower held-out
    /// loss than GPT-2 of the same size in the same steps (5.94 against 5.98 after 600 steps of
    /// 16 x 64 tokens) and trains about 15% faster on the CPU.
    #[default]
    #[value(name = "llama")]
    #[serde(rename = "llama")]
    Llama,
    /// GPT2_ML (the Chinese GPT-2 of bert4keras): learned positions, an embedding LayerNorm,
    /// post-LayerNorm blocks whose feed-forward residual skips its input norm, tied head.
    #[value(name = "gpt2-ml")]
    #[serde(rename = "gpt2-ml")]
    Gpt2Ml,
    /// BERT: a bidirectional encoder trained as a masked language model (post-LayerNorm,
    /// learned positions, GELU, head tied to the embedding).
    #[value(name = "bert")]
    #[serde(rename = "bert")]
    Bert,
    /// T5: an encoder-decoder trained on (input, target) pairs (relative position biases, RMS
    /// norms, ReLU feed-forward, head tied to the embedding).
    #[value(name = "t5")]
    #[serde(rename = "t5")]
    T5,
    /// The poem machine: a variational autoencoder of gated convolutions that writes a couplet
    /// of two five-character lines from random noise (hidden and latent width 64 unless
    /// --n-embd says otherwise, --n-layer encoder convolutions; the size presets do not apply).
    #[value(name = "poetry-vae")]
    #[serde(rename = "poetry-vae")]
    PoetryVae,
}

/// What `cinder train` teaches the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ObjectiveKind {
    /// The family's own: next-token prediction for decoders, masked LM for BERT.
    #[default]
    #[value(name = "auto")]
    #[serde(rename = "auto")]
    Auto,
    /// Next-token prediction over windows of the corpus (decoder families).
    #[value(name = "causal")]
    #[serde(rename = "causal")]
    Causal,
    /// Masked tokens of the corpus's lines, padded into batches (BERT).
    #[value(name = "mlm")]
    #[serde(rename = "mlm")]
    Mlm,
    /// The target of each (input, target) pair from its input (T5): a JSONL corpus of
    /// {"input", "target"} objects, or the Tang poems' couplets (first line -> second).
    #[value(name = "seq2seq")]
    #[serde(rename = "seq2seq")]
    Seq2Seq,
    /// Couplets of two five-character lines reconstructed through a sampled latent vector, with
    /// the KL term annealed in (the poetry VAE).
    #[value(name = "vae")]
    #[serde(rename = "vae")]
    Vae,
}

impl std::fmt::Display for ObjectiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        cinder_engine::settings::fmt_value_enum(self, f)
    }
}

impl Family {
    /// Whether the family has dropout layers (`--dropout` applies).
    pub fn has_dropout(self) -> bool {
        matches!(self, Self::Gpt2 | Self::Gpt2Ml | Self::Bert | Self::T5)
    }

    /// The objective the family trains with.
    pub fn objective(self) -> ObjectiveKind {
        match self {
            Self::Bert => ObjectiveKind::Mlm,
            Self::T5 => ObjectiveKind::Seq2Seq,
            Self::PoetryVae => ObjectiveKind::Vae,
            _ => ObjectiveKind::Causal,
        }
    }

    /// The peak learning rate the family trains with when none is given, from the shared
    /// default `shared`: the poetry VAE learns its reconstruction several times faster at 1e-2
    /// (held-out reconstruction 65.3 against 69.4 nats after 600 steps).
    pub fn default_lr(self, shared: f64) -> f64 {
        match self {
            Self::PoetryVae => 1e-2,
            _ => shared,
        }
    }

    /// Whether its attention can share keys and values between heads (`--n-kv-head` applies).
    pub fn has_kv_heads(self) -> bool {
        self == Self::Llama
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        cinder_engine::settings::fmt_value_enum(self, f)
    }
}

/// GPT-2 sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Gpt2Preset {
    /// 4 blocks x 64, 4 heads ([`Gpt2Config::nano`]): the default.
    #[default]
    #[value(name = "nano")]
    #[serde(rename = "nano")]
    Nano,
    /// 4 blocks x 128, 4 heads ([`Gpt2Config::tiny`]).
    #[value(name = "tiny")]
    #[serde(rename = "tiny")]
    Tiny,
    /// 6 blocks x 384, 6 heads ([`Gpt2Config::small`]).
    #[value(name = "small")]
    #[serde(rename = "small")]
    Small,
    /// OpenAI's GPT-2 small, 12 blocks x 768 ([`Gpt2Config::gpt2_124m`]).
    #[value(name = "gpt2-124m")]
    #[serde(rename = "gpt2-124m")]
    Gpt2_124m,
}

impl Gpt2Preset {
    /// The model shape this preset names.
    pub fn config(self) -> Gpt2Config {
        match self {
            Self::Nano => Gpt2Config::nano(),
            Self::Tiny => Gpt2Config::tiny(),
            Self::Small => Gpt2Config::small(),
            Self::Gpt2_124m => Gpt2Config::gpt2_124m(),
        }
    }
}

impl std::fmt::Display for Gpt2Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        cinder_engine::settings::fmt_value_enum(self, f)
    }
}

/// The model and the data it learns from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct ModelRecipe {
    /// Corpus: tang (the complete Tang poems), fortunes (Debian's), or a UTF-8 text file.
    #[arg(long, default_value = "tang")]
    pub corpus: CorpusSource,
    /// Tokenizer trained on the corpus: char, bpe (8192 entries) or bpe:N.
    #[arg(long, default_value = "char")]
    pub tokenizer: TokenizerKind,
    /// Model family.
    #[arg(long, value_enum, default_value_t)]
    pub family: Family,
    /// Training objective: auto (the family's own), causal (decoders), mlm (masked LM, BERT) or
    /// seq2seq (pairs, T5).
    #[arg(long, value_enum, default_value_t)]
    pub objective: ObjectiveKind,
    /// Model size preset (blocks, heads and width; the same for both families).
    #[arg(long, value_enum, default_value_t)]
    pub preset: Gpt2Preset,
    /// Transformer blocks (overrides the preset).
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Attention heads (overrides the preset).
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Width (overrides the preset).
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Key/value heads of grouped-query attention (LLaMA; default: as many as the heads).
    #[arg(long)]
    pub n_kv_head: Option<usize>,
    /// Dropout on embeddings, attention and residual branches (GPT-2, GPT2_ML, BERT, T5).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Start from this model folder (or run) of a family Cinder trains instead of random weights;
    /// its family replaces --family.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
}

impl Default for ModelRecipe {
    fn default() -> Self {
        cinder_engine::settings::defaults()
    }
}

impl ModelRecipe {
    /// The model shape: the preset with the overrides, for a vocabulary of `vocab` and
    /// sequences of `context` tokens.
    pub fn model_config(&self, vocab: usize, context: usize) -> Gpt2Config {
        let mut c = self.preset.config();
        c.vocab_size = vocab;
        c.n_positions = context;
        c.n_layer = self.n_layer.unwrap_or(c.n_layer);
        c.n_head = self.n_head.unwrap_or(c.n_head);
        c.n_embd = self.n_embd.unwrap_or(c.n_embd);
        c.resid_pdrop = self.dropout;
        c.embd_pdrop = self.dropout;
        c.attn_pdrop = self.dropout;
        c
    }

    /// The LLaMA of the same size: the preset's blocks, heads and width with the overrides, a
    /// SwiGLU layer of about 8/3 the width (rounded up to a multiple of 32), rotary base 10000,
    /// and the head tied to the embedding.
    pub fn llama_config(&self, vocab: usize, context: usize) -> LlamaConfig {
        let shape = self.model_config(vocab, context);
        let c = shape.n_embd;
        LlamaConfig::new(
            vocab,
            c,
            (8 * c).div_ceil(3).div_ceil(32) * 32,
            shape.n_layer,
            shape.n_head,
        )
        .with_num_key_value_heads(self.n_kv_head)
        .with_max_position_embeddings(context)
        .with_rms_norm_eps(1e-5)
        .with_tie_word_embeddings(true)
    }

    /// The GPT2_ML of the same size: the preset's blocks, heads and width with the overrides, a
    /// feed-forward layer 4 times the width, exact GELU, and the recipe's dropout.
    pub fn gpt2_ml_config(&self, vocab: usize, context: usize) -> Gpt2MlConfig {
        let shape = self.model_config(vocab, context);
        Gpt2MlConfig::new(
            vocab,
            context,
            shape.n_embd,
            shape.n_layer,
            shape.n_head,
            4 * shape.n_embd,
        )
        .with_hidden_dropout_prob(self.dropout)
        .with_attention_probs_dropout_prob(self.dropout)
    }

    /// The BERT of the same size: the preset's layers, heads and width with the overrides, a
    /// feed-forward layer 4 times the width, exact GELU, the recipe's dropout, padding token
    /// `pad`.
    pub fn bert_config(&self, vocab: usize, context: usize, pad: usize) -> BertConfig {
        let shape = self.model_config(vocab, context);
        BertConfig::new(
            vocab,
            shape.n_embd,
            shape.n_layer,
            shape.n_head,
            4 * shape.n_embd,
        )
        .with_max_position_embeddings(context)
        .with_pad_token_id(pad)
        .with_hidden_dropout_prob(self.dropout)
        .with_attention_probs_dropout_prob(self.dropout)
    }
}

impl ModelRecipe {
    /// The T5 of the same size: the preset's blocks (in the encoder and in the decoder), heads
    /// and width with the overrides, heads of width / heads, a ReLU feed-forward layer 4 times
    /// the width, 32 position buckets up to distance 128, the head tied to the embedding, the
    /// recipe's dropout, and the given padding (also the decoder's start) and end tokens. Its
    /// positions are relative, so `context` (what it trains on) does not limit what it decodes:
    /// that stays T5's 512.
    pub fn t5_config(&self, vocab: usize, context: usize, pad: usize, eos: usize) -> T5Config {
        let shape = self.model_config(vocab, context);
        let c = shape.n_embd;
        T5Config::new(
            vocab,
            c,
            c / shape.n_head.max(1),
            4 * c,
            shape.n_layer,
            shape.n_head,
        )
        .with_dropout_rate(self.dropout)
        .with_n_positions(context.max(512))
        .with_pad_token_id(pad)
        .with_decoder_start_token_id(pad)
        .with_eos_token_id(eos)
    }
}

impl TrainSettings {
    /// Switches the model to `family`: its own learning rate replaces the old family's default
    /// (a rate the user chose stays), and settings it lacks (dropout) are cleared.
    pub fn set_family(&mut self, family: Family) {
        let shared = TrainConfig::default().lr;
        if self.train.lr == self.model.family.default_lr(shared) {
            self.train.lr = family.default_lr(shared);
        }
        self.model.family = family;
        if !family.has_dropout() {
            self.model.dropout = 0.0;
        }
    }
}

/// The layout version of `run.json`.
pub const RUN_FORMAT: u32 = 2;

/// Everything a training run is: its `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainSettings {
    /// Layout version ([`RUN_FORMAT`]).
    pub format: u32,
    /// The model and its data.
    pub model: ModelRecipe,
    /// The trainer's settings.
    pub train: TrainConfig,
    /// Where to compute.
    pub device: DeviceChoice,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            format: RUN_FORMAT,
            model: ModelRecipe::default(),
            train: TrainConfig::default(),
            device: DeviceChoice::default(),
        }
    }
}

impl TrainSettings {
    /// Checks what would otherwise fail after the corpus is read.
    pub fn check(&self) -> Result<()> {
        self.train.validate()?;
        let m = &self.model;
        let sizes = [
            ("--n-layer", m.n_layer),
            ("--n-head", m.n_head),
            ("--n-embd", m.n_embd),
            ("--n-kv-head", m.n_kv_head),
        ];
        if let Some((flag, _)) = sizes.iter().find(|(_, v)| *v == Some(0)) {
            return Err(Error::Config(format!("{flag} must be at least 1")));
        }
        let shape = m.model_config(1, 1);
        if !shape.n_embd.is_multiple_of(shape.n_head) {
            return Err(Error::Config(format!(
                "--n-embd {} is not a multiple of --n-head {} (each head gets an equal share \
                 of the width)",
                shape.n_embd, shape.n_head
            )));
        }
        if let Some(kv) = m.n_kv_head
            && !shape.n_head.is_multiple_of(kv)
        {
            return Err(Error::Config(format!(
                "--n-head {} is not a multiple of --n-kv-head {kv}",
                shape.n_head
            )));
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return Err(Error::Config(format!(
                "--dropout {} is not a probability in [0, 1)",
                m.dropout
            )));
        }
        if !m.family.has_dropout() && m.dropout > 0.0 {
            return Err(Error::Config(format!(
                "--dropout does not apply to --family {} (it has no dropout)",
                m.family
            )));
        }
        if m.objective != ObjectiveKind::Auto && m.objective != m.family.objective() {
            let hint = match (m.objective, m.family) {
                (ObjectiveKind::Mlm, _) => "add --family bert (the masked-LM family)",
                (ObjectiveKind::Seq2Seq, _) => "add --family t5 (the encoder-decoder family)",
                (ObjectiveKind::Vae, _) => "add --family poetry-vae",
                (_, Family::PoetryVae) => "the poetry VAE trains as a variational autoencoder",
                (_, Family::Bert) => "BERT trains as a masked language model",
                (_, Family::T5) => "T5 trains on (input, target) pairs",
                _ => "the decoder families train on next-token prediction",
            };
            return Err(Error::Config(format!(
                "--objective {} does not apply to --family {}: {hint}",
                m.objective, m.family
            )));
        }
        if !m.family.has_kv_heads() && m.n_kv_head.is_some() {
            return Err(Error::Config(format!(
                "--n-kv-head does not apply to --family {} (its heads all have their own keys \
                 and values)",
                m.family
            )));
        }
        if self.train.recompute.blockwise() && self.model.dropout > 0.0 {
            return Err(Error::Config(format!(
                "recompute {}: block-by-block recomputation needs dropout 0 (or use recompute \
                 checkpointing)",
                self.train.recompute
            )));
        }
        Ok(())
    }

    /// The settings `run` was started with (its `run.json`); `None` for a new run. A file of
    /// another layout version is an error, not a run with default settings.
    pub fn read(run: &Run) -> Result<Option<Self>> {
        let path = run.locate(cinder_engine::run::RUN_FILE);
        let Some(value) = run.settings::<serde_json::Value>()? else {
            return Ok(None);
        };
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(RUN_FORMAT)) {
            return Err(Error::format(
                path,
                format!(
                    "run format {} is not supported (expected {RUN_FORMAT}): the run was \
                     written by another version of Cinder",
                    format.map_or("1".to_string(), |f| f.to_string())
                ),
            ));
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::format(path, format!("not a valid run file: {e}")))
    }

    /// The settings of the run in `run`, continued: a resumed run keeps them all except how
    /// long it runs (`steps`, when given) and where it computes (`device`).
    pub fn resumed(run: &Run, steps: Option<u64>, device: DeviceChoice) -> Result<Self> {
        let mut saved = Self::read(run)?.ok_or_else(|| {
            Error::format(
                run.locate(cinder_engine::run::RUN_FILE),
                "missing: not a run folder",
            )
        })?;
        if let Some(steps) = steps {
            saved.train.steps = steps;
        }
        saved.device = device;
        Ok(saved)
    }
}

/// A trainer of any family `cinder train` trains.
// One exists per run and is never copied around or stored in bulk, so its variants' sizes
// differing costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum AnyTrainer {
    /// A GPT-2's.
    Gpt2(Trainer<Gpt2>),
    /// A LLaMA's.
    Llama(Trainer<Llama>),
    /// A GPT2_ML's.
    Gpt2Ml(Trainer<Gpt2Ml>),
    /// A BERT's (masked LM).
    Bert(Trainer<Bert>),
    /// A T5's (pairs).
    T5(Trainer<T5>),
    /// A poetry VAE's (couplets).
    PoetryVae(Trainer<PoetryVae>),
}

/// Runs `$body` with `$t` bound to the trainer inside `$any`, whatever its family.
macro_rules! with_trainer {
    ($any:expr, $t:ident => $body:expr) => {
        match $any {
            AnyTrainer::Gpt2($t) => $body,
            AnyTrainer::Llama($t) => $body,
            AnyTrainer::Gpt2Ml($t) => $body,
            AnyTrainer::Bert($t) => $body,
            AnyTrainer::T5($t) => $body,
            AnyTrainer::PoetryVae($t) => $body,
        }
    };
}

impl AnyTrainer {
    /// The family's name ("gpt2", "llama", "gpt2-ml").
    pub fn family(&self) -> &'static str {
        with_trainer!(self, t => t.model().family())
    }

    /// What the model learns to predict.
    pub fn objective(&self) -> cinder_engine::lm::Objective {
        with_trainer!(self, t => t.model().objective())
    }

    /// Optimizer steps taken.
    pub fn step_count(&self) -> u64 {
        with_trainer!(self, t => t.step_count())
    }

    /// Whether all configured steps are done.
    pub fn finished(&self) -> bool {
        with_trainer!(self, t => t.finished())
    }

    /// The trainer's settings.
    pub fn config(&self) -> &TrainConfig {
        with_trainer!(self, t => t.config())
    }

    /// Notes the trainer made when it was set up (settings the device changed).
    pub fn notes(&self) -> &[String] {
        with_trainer!(self, t => t.notes())
    }

    /// Text sampled from the model.
    pub fn sample(&self, seed: u64) -> Result<String> {
        with_trainer!(self, t => t.sample(seed))
    }

    /// The held-out loss of the model as it is now.
    pub fn evaluate(&self) -> Result<f64> {
        with_trainer!(self, t => t.evaluate())
    }

    /// The held-out loss over every held-out window and the number of windows
    /// ([`Trainer::evaluate_all`]).
    pub fn evaluate_all(&self) -> Result<(f64, usize)> {
        with_trainer!(self, t => t.evaluate_all())
    }

    /// One step recorded in `run` ([`Run::step`]).
    pub fn step_in(&mut self, run: &mut Run) -> Result<cinder_engine::train::StepReport> {
        with_trainer!(self, t => run.step(t))
    }

    /// [`Self::step_in`], awaiting every readback.
    pub async fn step_in_async(
        &mut self,
        run: &mut Run,
    ) -> Result<cinder_engine::train::StepReport> {
        with_trainer!(self, t => run.step_async(t).await)
    }

    /// A checkpoint written into `run` ([`Run::save`]).
    pub fn save_in(&self, run: &mut Run) -> Result<PathBuf> {
        with_trainer!(self, t => run.save(t))
    }

    /// [`Self::save_in`], reading the weights back asynchronously.
    pub async fn save_in_async(&self, run: &mut Run) -> Result<PathBuf> {
        with_trainer!(self, t => run.save_async(t).await)
    }

    /// Restores the trainer from checkpoint files.
    fn restore(&mut self, ckpt: &Checkpoint) -> Result<()> {
        with_trainer!(self, t => t.restore(ckpt))
    }
}

/// The family a model folder or checkpoint's `config.json` names (`model_type`; GPT-2 when
/// absent, as Hugging Face's own GPT-2 files may omit it).
pub fn family_of(files: &Checkpoint) -> Result<Family> {
    let path = files.path("config.json");
    let config: serde_json::Value = serde_json::from_str(files.text("config.json")?)
        .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
    match config.get("model_type").and_then(serde_json::Value::as_str) {
        None | Some("gpt2") => Ok(Family::Gpt2),
        Some("llama") => Ok(Family::Llama),
        Some(crate::gpt2_ml::MODEL_TYPE) => Ok(Family::Gpt2Ml),
        Some("bert") => Ok(Family::Bert),
        Some(crate::t5::MODEL_TYPE) => Ok(Family::T5),
        Some(crate::poetry_vae::MODEL_TYPE) => Ok(Family::PoetryVae),
        Some(other) => Err(Error::format(
            path,
            format!(
                "model_type '{other}' cannot be trained (gpt2, llama, gpt2-ml, bert, t5 and \
                 poetry-vae can)"
            ),
        )),
    }
}

/// The tokenizer of a checkpoint or model folder.
fn checkpoint_tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer> {
    Tokenizer::from_json(ckpt.text("tokenizer.json")?)
        .map_err(|e| Error::format(ckpt.path("tokenizer.json"), e.to_string()))
}

/// Sets up `settings` in `run` on `selected` (the trainer's model goes on its autodiff device)
/// with `corpus` (the one `settings` names, loaded by the caller): trains or loads the
/// tokenizer, builds or loads the model of the settings' family (or of the folder it starts
/// from), and, when `resume`, restores the run's latest checkpoint. `say` receives one line
/// per stage. Records the settings in the run.
pub fn prepare(
    settings: &TrainSettings,
    run: &mut Run,
    resume: bool,
    selected: &Selected,
    corpus: Corpus,
    say: &mut dyn FnMut(String),
) -> Result<AnyTrainer> {
    settings.check()?;
    let mut settings = settings.clone();
    let recompute = settings.train.recompute;
    let device = if recompute.needs_checkpointing_device() {
        selected.device.clone().autodiff().gradient_checkpointing()
    } else {
        selected.device.clone().autodiff()
    };
    say(format!("device: {}", selected.description));
    let ckpt = match (resume, run.latest()?) {
        (true, Some(name)) => Some(run.checkpoint(&name)?),
        (true, None) => {
            // Stopped before its first checkpoint: the saved settings start it again.
            say("the run has no checkpoint yet: starting it again from step 0".into());
            run.truncate_metrics(0)?;
            None
        }
        (false, _) => None,
    };

    say(format!(
        "corpus {}: {} characters for training, {} held out",
        settings.model.corpus,
        corpus.train.chars().count(),
        corpus.val.chars().count()
    ));

    // Where the weights come from: the run's checkpoint, a model folder, or nothing (random).
    let folder = match (&ckpt, &settings.model.init_from) {
        (None, Some(dir)) => Some(Checkpoint::read_model_folder(&resolve_model_dir(dir)?)?),
        _ => None,
    };
    let start = ckpt.as_ref().or(folder.as_ref());
    if let Some(files) = start {
        settings.model.family = family_of(files)?;
    }
    let recipe = &settings.model;
    let masked = recipe.family.objective() == ObjectiveKind::Mlm;
    let pairs = match recipe.family.objective() {
        ObjectiveKind::Seq2Seq => Some(text_pairs(&recipe.corpus, &corpus)?),
        ObjectiveKind::Vae => Some(five_character_couplets(&recipe.corpus, &corpus)?),
        _ => None,
    };
    let rows = recipe.family.objective() == ObjectiveKind::Vae;
    if rows && recipe.tokenizer != TokenizerKind::Char {
        return Err(Error::Config(format!(
            "--tokenizer {}: the poetry VAE writes one character per position (use --tokenizer \
             char)",
            recipe.tokenizer
        )));
    }
    if let Some((train, val)) = &pairs {
        say(format!(
            "pairs: {} for training, {} held out",
            train.len(),
            val.len()
        ));
    }
    let mut tokenizer = match start {
        Some(files) => checkpoint_tokenizer(files)?,
        None => {
            let t0 = web_time::Instant::now();
            let mut tok = match &pairs {
                // The tokenizer learns the pairs' texts, not a JSONL file's syntax.
                Some((train, _)) => {
                    // A VAE's vocabulary is the couplets' characters alone.
                    let sep = if rows { "" } else { "\n" };
                    let text: String = train
                        .iter()
                        .map(|p| format!("{}{sep}{}{sep}", p.input, p.target))
                        .collect();
                    Tokenizer::train(recipe.tokenizer, &text)?
                }
                None => Tokenizer::train(recipe.tokenizer, &corpus.train)?,
            };
            if masked {
                tok.add_special_tokens(&MLM_TOKENS);
            }
            if pairs.is_some() && !rows {
                tok.add_special_tokens(&SEQ2SEQ_TOKENS);
            }
            say(format!(
                "tokenizer {}: {} entries ({:.1}s)",
                recipe.tokenizer,
                tok.vocab_size(),
                t0.elapsed().as_secs_f64()
            ));
            tok
        }
    };
    if masked && start.is_some() {
        // A pretrained BERT's tokenizer has them; one from a Cinder run too.
        tokenizer.add_special_tokens(&MLM_TOKENS);
    }
    if pairs.is_some() && !rows && start.is_some() {
        tokenizer.add_special_tokens(&SEQ2SEQ_TOKENS);
    }
    let (vocab, context) = (tokenizer.vocab_size(), settings.train.context);
    let eos = tokenizer.eos_id().map(|i| i as usize);
    let model = match recipe.family {
        Family::Gpt2 => {
            let model = match start {
                Some(files) => Gpt2::from_files(files, &device)?,
                None => {
                    device.seed(settings.train.seed);
                    let mut config = recipe.model_config(vocab, context);
                    config.bos_token_id = eos;
                    config.eos_token_id = eos;
                    config.check()?;
                    config.init(&device)
                }
            };
            let c = model.config();
            say(format!(
                "model gpt2: {} layers, {} heads, width {}, context {}, vocabulary {}, {:.2}M \
                 parameters",
                c.n_layer,
                c.n_head,
                c.n_embd,
                c.n_positions,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6
            ));
            Model::Gpt2(model)
        }
        Family::Llama => {
            let model = match start {
                Some(files) => Llama::from_files(files, &device)?,
                None => {
                    device.seed(settings.train.seed);
                    let config = recipe
                        .llama_config(vocab, context)
                        .with_bos_token_id(eos)
                        .with_eos_token_id(eos.map(Into::into));
                    config.check()?;
                    config.init(&device)
                }
            };
            let c = model.config();
            say(format!(
                "model llama: {} layers, {} heads ({} key/value), width {}, feed-forward {}, \
                 context {}, vocabulary {}, {:.2}M parameters",
                c.num_hidden_layers,
                c.num_attention_heads,
                c.kv_heads(),
                c.hidden_size,
                c.intermediate_size,
                c.max_position_embeddings,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6
            ));
            Model::Llama(model)
        }
        Family::Gpt2Ml => {
            let model = match start {
                Some(files) => Gpt2Ml::from_files(files, &device)?,
                None => {
                    device.seed(settings.train.seed);
                    let config = recipe
                        .gpt2_ml_config(vocab, context)
                        .with_bos_token_id(eos)
                        .with_eos_token_id(eos);
                    config.check()?;
                    config.init(&device)
                }
            };
            let c = model.config();
            say(format!(
                "model gpt2-ml: {} layers, {} heads, width {}, feed-forward {}, context {}, \
                 vocabulary {}, {:.2}M parameters",
                c.num_hidden_layers,
                c.num_attention_heads,
                c.hidden_size,
                c.intermediate_size,
                c.max_position_embeddings,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6
            ));
            Model::Gpt2Ml(model)
        }
        Family::Bert => {
            let model = match start {
                Some(files) => Bert::from_files(files, &device)?.with_mlm_head(&device),
                None => {
                    device.seed(settings.train.seed);
                    let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0) as usize;
                    let config = recipe.bert_config(vocab, context, pad);
                    config.check()?;
                    config.init(true, &device)
                }
            };
            let c = model.config();
            say(format!(
                "model bert: {} layers, {} heads, width {}, feed-forward {}, positions {}, \
                 vocabulary {}, {:.2}M parameters; masked LM",
                c.num_hidden_layers,
                c.num_attention_heads,
                c.hidden_size,
                c.intermediate_size,
                c.max_position_embeddings,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6
            ));
            Model::Bert(model)
        }
        Family::T5 => {
            let model = match start {
                Some(files) => T5::from_files(files, &device)?,
                None => {
                    device.seed(settings.train.seed);
                    let id = |t: &str| tokenizer.token_to_id(t).unwrap_or(0) as usize;
                    let config = recipe.t5_config(vocab, context, id("<pad>"), id("</s>"));
                    config.check()?;
                    config.init(&device)?
                }
            };
            let c = model.config();
            say(format!(
                "model t5: {} + {} layers, {} heads of {}, width {}, feed-forward {} ({}), \
                 vocabulary {}, {:.2}M parameters; sequence to sequence",
                c.num_layers,
                c.decoder_layers(),
                c.num_heads,
                c.d_kv,
                c.d_model,
                c.d_ff,
                c.feed_forward_proj,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6
            ));
            Model::T5(model)
        }
        Family::PoetryVae => {
            let model = match start {
                Some(files) => PoetryVae::from_files(files, &device)?,
                None => {
                    device.seed(settings.train.seed);
                    let mut config = PoetryVaeConfig::new(vocab);
                    if let Some(width) = recipe.n_embd {
                        config.hidden_dim = width;
                        config.latent_dim = width;
                    }
                    config.encoder_layers = recipe.n_layer.unwrap_or(config.encoder_layers);
                    config.check()?;
                    config.init(&device)
                }
            };
            let c = model.config();
            say(format!(
                "model poetry-vae: {} + {} gated convolutions of width {}, latent {}, {} \
                 characters, vocabulary {}, {:.2}M parameters; KL annealed over {} steps",
                c.encoder_layers,
                c.decoder_layers,
                c.hidden_dim,
                c.latent_dim,
                c.length,
                c.vocab_size,
                cinder_engine::burn::module::Module::num_params(&model) as f64 / 1e6,
                settings.train.kl_warmup.unwrap_or(settings.train.steps / 5)
            ));
            Model::PoetryVae(model)
        }
    };

    let config = settings.train.clone();
    let t0 = web_time::Instant::now();
    let data = match &pairs {
        Some((train, val)) if rows => {
            let encode = |pairs: &[TextPair]| -> Result<Vec<Vec<u32>>> {
                pairs
                    .iter()
                    .map(|p| tokenizer.encode(&format!("{}{}", p.input, p.target)))
                    .collect()
            };
            let (train, val) = (encode(train)?, encode(val)?);
            say(format!(
                "encoded {} training and {} held-out couplets ({:.1}s)",
                train.len(),
                val.len(),
                t0.elapsed().as_secs_f64()
            ));
            Data::Rows(train, val)
        }
        Some((train, val)) => {
            let encode = |pairs: &[TextPair]| -> Result<Vec<TokenPair>> {
                pairs
                    .iter()
                    .map(|p| Ok((tokenizer.encode(&p.input)?, tokenizer.encode(&p.target)?)))
                    .collect()
            };
            let (train, val) = (encode(train)?, encode(val)?);
            let tokens: usize = train.iter().map(|(a, b)| a.len() + b.len()).sum();
            say(format!(
                "encoded {} training pairs ({tokens} tokens) and {} held out ({:.1}s)",
                train.len(),
                val.len(),
                t0.elapsed().as_secs_f64()
            ));
            Data::Pairs(train, val)
        }
        None => {
            let train = tokenizer.encode_corpus(&corpus.train)?;
            let val = tokenizer.encode_corpus(&corpus.val)?;
            let window = settings.train.context + 1;
            if train.len() <= window {
                return Err(Error::Data(format!(
                    "--corpus {}: its training split has {} tokens, too few for one sequence \
                     of --context {} plus its next token; give a longer corpus or a smaller \
                     --context",
                    recipe.corpus,
                    train.len(),
                    settings.train.context
                )));
            }
            say(format!(
                "encoded {} training and {} held-out tokens ({:.1}s)",
                train.len(),
                val.len(),
                t0.elapsed().as_secs_f64()
            ));
            Data::Stream(train, val)
        }
    };

    // One arm runs, so each moves the data into its trainer.
    macro_rules! trainer {
        ($family:ident, $m:expr, $train:expr, $val:expr) => {
            AnyTrainer::$family(Trainer::new($m, config, tokenizer, $train, $val, &device)?)
        };
    }
    let mut trainer = match (model, data) {
        (Model::Gpt2(m), Data::Stream(t, v)) => trainer!(Gpt2, m, t, v),
        (Model::Llama(m), Data::Stream(t, v)) => trainer!(Llama, m, t, v),
        (Model::Gpt2Ml(m), Data::Stream(t, v)) => trainer!(Gpt2Ml, m, t, v),
        (Model::Bert(m), Data::Stream(t, v)) => trainer!(Bert, m, t, v),
        (Model::PoetryVae(m), Data::Rows(train, val)) => AnyTrainer::PoetryVae(Trainer::with_rows(
            m, config, tokenizer, train, val, &device,
        )?),
        (Model::T5(m), Data::Pairs(train, val)) => {
            let c = m.config();
            let special = PairTokens {
                pad: c.pad_token_id as u32,
                eos: c.eos_token_id as u32,
                start: c.decoder_start_token_id as u32,
            };
            AnyTrainer::T5(Trainer::with_pairs(
                m, config, tokenizer, special, train, val, &device,
            )?)
        }
        _ => {
            return Err(Error::Internal(format!(
                "the {} family was given data of another objective",
                recipe.family
            )));
        }
    };
    for note in trainer.notes() {
        say(format!("note: {note}"));
    }
    if let Some(ckpt) = &ckpt {
        trainer.restore(ckpt)?;
        run.truncate_metrics(trainer.step_count())?;
        say(format!(
            "resumed from {} at step {}",
            ckpt.path("").display(),
            trainer.step_count()
        ));
    }
    run.write_settings(&settings)?;
    Ok(trainer)
}

/// A freshly built or loaded model, before its trainer (one at a time, like [`AnyTrainer`]).
#[allow(clippy::large_enum_variant)]
enum Model {
    Gpt2(Gpt2),
    Llama(Llama),
    Gpt2Ml(Gpt2Ml),
    Bert(Bert),
    T5(T5),
    PoetryVae(PoetryVae),
}

/// A model's training data: a token stream per split, or token pairs per split.
enum Data {
    Stream(Vec<u32>, Vec<u32>),
    Pairs(Vec<TokenPair>, Vec<TokenPair>),
    Rows(Vec<Vec<u32>>, Vec<Vec<u32>>),
}

/// The special tokens masked-LM training adds to a tokenizer that lacks them.
const MLM_TOKENS: [&str; 2] = ["[PAD]", "[MASK]"];

/// The special tokens sequence-to-sequence training adds to a tokenizer that lacks them:
/// padding (also the decoder's start) and the end of each input and target, as T5's.
const SEQ2SEQ_TOKENS: [&str; 2] = ["<pad>", "</s>"];

/// The couplets of two five-character lines in a corpus of poems (one per line), training and
/// held out, as (first line, second line).
fn five_character_couplets(
    source: &CorpusSource,
    corpus: &Corpus,
) -> Result<(Vec<TextPair>, Vec<TextPair>)> {
    let (train, val) = (
        five_character_couplets_of(&corpus.train),
        five_character_couplets_of(&corpus.val),
    );
    if train.is_empty() {
        return Err(Error::Config(format!(
            "--corpus {source} has no couplet of two five-character lines (such as \
             \"床前明月光，疑是地上霜。\") for the poetry VAE"
        )));
    }
    Ok((train, val))
}

/// The (input, target) pairs of a corpus, training and held out: a `.jsonl` file's objects, or
/// the couplets of the Tang poems.
fn text_pairs(source: &CorpusSource, corpus: &Corpus) -> Result<(Vec<TextPair>, Vec<TextPair>)> {
    match source {
        CorpusSource::Tang => Ok((couplets(&corpus.train), couplets(&corpus.val))),
        CorpusSource::File(path)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jsonl")) =>
        {
            Ok((
                parse_jsonl(path, &corpus.train)?,
                parse_jsonl(path, &corpus.val)?,
            ))
        }
        other => Err(Error::Config(format!(
            "--objective seq2seq trains on (input, target) pairs, which --corpus {other} does \
             not have: give --corpus tang (its couplets, first line -> second) or a .jsonl file \
             of {{\"input\": ..., \"target\": ...}} objects"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_run_json_and_fill_missing_keys_with_the_defaults() {
        let s = TrainSettings::default();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TrainSettings>(&json).unwrap(), s);
        let partial: TrainSettings =
            serde_json::from_str(r#"{"format": 2, "model": {"tokenizer": "bpe:300"}}"#).unwrap();
        assert_eq!(partial.model.tokenizer, TokenizerKind::Bpe(300));
        assert_eq!(partial.train, TrainConfig::default());
    }

    #[test]
    fn a_run_file_of_another_layout_is_refused_not_defaulted() {
        use cinder_engine::run::{MemoryStorage, RUN_FILE, RunStorage};
        let mut old = MemoryStorage::new();
        old.write(RUN_FILE, br#"{"corpus": "fortunes", "lr": 0.01}"#)
            .unwrap();
        let run = Run::new(Box::new(old)).unwrap();
        let err = TrainSettings::read(&run).unwrap_err().to_string();
        assert!(err.contains("run format 1 is not supported"), "{err}");
        let mut run = Run::new(Box::new(MemoryStorage::new())).unwrap();
        run.write_settings(&TrainSettings::default()).unwrap();
        assert_eq!(
            TrainSettings::read(&run).unwrap(),
            Some(TrainSettings::default())
        );
    }

    #[test]
    fn the_default_preset_is_the_nano_config() {
        let c = ModelRecipe::default().model_config(65, 64);
        let t = Gpt2Config::nano();
        assert_eq!(
            (c.n_layer, c.n_head, c.n_embd),
            (t.n_layer, t.n_head, t.n_embd)
        );
    }
}
