//! `cinder train`: wires a corpus, a tokenizer and a GPT-2 model to the engine's trainer.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cinder_engine::burn::module::Module;
use cinder_engine::checkpoint::{resolve_model_dir, write_atomic};
use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::{DeviceChoice, Selected, select};
use cinder_engine::optim::{
    AdaFactorConfig, AdamWConfig, HeunConfig, LionConfig, OptimizerConfig, SgdConfig,
};
use cinder_engine::tokenizer::{Tokenizer, TokenizerKind};
use cinder_engine::train::{Precision, Recompute, TrainConfig, Trainer};
use cinder_models::gpt2::{Gpt2, Gpt2Config};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::TrainArgs;

/// The model shape a preset names, before command-line overrides.
pub fn preset(name: &str) -> Result<Gpt2Config> {
    Ok(match name {
        "tiny" => Gpt2Config::new(65, 64, 128, 4, 4),
        "small" => Gpt2Config::new(8192, 256, 384, 6, 6),
        "gpt2-124m" => Gpt2Config::gpt2_124m(),
        other => bail!("unknown --preset '{other}': expected tiny, small or gpt2-124m"),
    })
}

/// The optimizer `--optimizer` and its flags name.
pub fn optimizer_config(a: &TrainArgs) -> Result<OptimizerConfig> {
    Ok(match a.optimizer.as_str() {
        "adamw" => OptimizerConfig::AdamW(AdamWConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            epsilon: 1e-8,
            weight_decay: a.weight_decay,
        }),
        "sgd" => OptimizerConfig::Sgd(SgdConfig {
            momentum: a.momentum,
            nesterov: a.nesterov,
            weight_decay: a.weight_decay,
        }),
        "adafactor" => OptimizerConfig::AdaFactor(AdaFactorConfig {
            beta1: a.adafactor_beta1,
            relative_step: a.relative_step,
            ..AdaFactorConfig::default()
        }),
        "lion" => OptimizerConfig::Lion(LionConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            weight_decay: a.weight_decay,
        }),
        "heun" => OptimizerConfig::Heun(HeunConfig {
            weight_decay: a.weight_decay,
        }),
        other => bail!(
            "unknown --optimizer '{other}': expected one of {}",
            OptimizerConfig::NAMES.join(", ")
        ),
    })
}

fn train_config(a: &TrainArgs) -> Result<TrainConfig> {
    Ok(TrainConfig {
        steps: a.steps.unwrap_or(DEFAULT_STEPS),
        batch_size: a.batch_size,
        context: a.context,
        accumulate: a.accumulate,
        lr: a.lr,
        min_lr_ratio: a.min_lr_ratio,
        warmup: a.warmup,
        optimizer: optimizer_config(a)?,
        recompute: a.recompute.parse().context("--recompute")?,
        precision: a.precision.parse().context("--precision")?,
        grad_clip: a.grad_clip,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        sample_every: a.sample_every,
        sample_tokens: a.sample_tokens,
        sample_prompt: a.sample_prompt.clone(),
        checkpoint_every: a.checkpoint_every,
        keep_checkpoints: 2,
        seed: a.seed,
    })
}

fn free_run_dir(corpus: &str) -> PathBuf {
    let stem = Path::new(corpus)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    let base = PathBuf::from("runs").join(&stem);
    if !base.exists() {
        return base;
    }
    (2..)
        .map(|i| PathBuf::from("runs").join(format!("{stem}-{i}")))
        .find(|p| !p.exists())
        .unwrap_or(base)
}

const RUN_FILE: &str = "run.json";

/// Optimizer steps of a run that does not say.
pub const DEFAULT_STEPS: u64 = 600;

/// A training run ready to step: the trainer, where it writes, and the settings it runs with.
pub struct Session {
    /// The trainer, restored when the run resumes.
    pub trainer: Trainer<Gpt2>,
    /// The run folder (metrics, samples, checkpoints, `run.json`).
    pub run_dir: PathBuf,
    /// The settings in force (a resumed run's saved settings).
    pub args: TrainArgs,
}

/// The settings of the run in `dir` (its `run.json`).
pub fn read_run_args(dir: &Path) -> Result<TrainArgs> {
    let saved = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&saved)
        .with_context(|| format!("{}: cannot read {}", dir.display(), saved.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid run file", saved.display()))
}

/// Sets up a run from `args` on `device` (an autodiff device): loads the corpus, trains or
/// loads the tokenizer, builds or loads the model, and restores a resumed run. `say` receives
/// one line per stage.
pub fn prepare(
    mut args: TrainArgs,
    cache_dir: &Path,
    device: &Selected,
    say: &mut dyn FnMut(String),
) -> Result<Session> {
    // A resumed run takes the settings it was started with; this invocation may change only
    // how long it runs, where, and how it reports.
    let resume = match args.resume.clone() {
        Some(dir) => {
            let mut saved_args =
                read_run_args(&dir).with_context(|| format!("--resume {}", dir.display()))?;
            if args.steps.is_some() {
                saved_args.steps = args.steps;
            }
            saved_args.device = args.device.clone();
            saved_args.stop_after = args.stop_after;
            saved_args.quiet = args.quiet;
            saved_args.out = Some(dir.clone());
            args = saved_args;
            let ckpt = resolve_model_dir(&dir)?;
            if ckpt == dir {
                bail!("--resume {}: the run has no checkpoint yet", dir.display());
            }
            Some(ckpt)
        }
        None => None,
    };
    // Bad optimizer or recompute settings fail before the corpus is read.
    optimizer_config(&args)?;
    let recompute: Recompute = args.recompute.parse().context("--recompute")?;
    let _: Precision = args.precision.parse().context("--precision")?;
    if recompute.blockwise() && args.dropout > 0.0 && args.resume.is_none() {
        bail!(
            "--recompute {}: block-by-block recomputation needs --dropout 0 (or use --recompute \
             checkpointing)",
            args.recompute
        );
    }
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| free_run_dir(&args.corpus));
    let selected = device;
    let device = if recompute.needs_checkpointing_device() {
        selected.device.clone().autodiff().gradient_checkpointing()
    } else {
        selected.device.clone().autodiff()
    };
    say(format!("device: {}", selected.description));

    let source: CorpusSource = args.corpus.parse()?;
    let corpus =
        Corpus::load(&source, cache_dir).with_context(|| format!("loading corpus '{source}'"))?;
    say(format!(
        "corpus {source}: {} characters for training, {} held out",
        corpus.train.chars().count(),
        corpus.val.chars().count()
    ));

    let (model, tokenizer) = if let Some(ckpt) = &resume {
        let tok = Tokenizer::from_file(&ckpt.join("tokenizer.json"))?;
        (Gpt2::from_pretrained(ckpt, &device)?, tok)
    } else if let Some(dir) = &args.init_from {
        let dir = resolve_model_dir(dir)?;
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))
            .with_context(|| format!("--init-from {}", dir.display()))?;
        (Gpt2::from_pretrained(&dir, &device)?, tok)
    } else {
        let kind: TokenizerKind = args.tokenizer.parse()?;
        let t0 = Instant::now();
        let tok = Tokenizer::train(kind, &corpus.train)?;
        say(format!(
            "tokenizer {}: {} entries ({:.1}s)",
            args.tokenizer,
            tok.vocab_size(),
            t0.elapsed().as_secs_f64()
        ));
        let mut config = preset(&args.preset)?;
        config.vocab_size = tok.vocab_size();
        config.n_positions = args.context;
        config.n_layer = args.n_layer.unwrap_or(config.n_layer);
        config.n_head = args.n_head.unwrap_or(config.n_head);
        config.n_embd = args.n_embd.unwrap_or(config.n_embd);
        config.resid_pdrop = args.dropout;
        config.embd_pdrop = args.dropout;
        config.attn_pdrop = args.dropout;
        config.bos_token_id = tok.eos_id().map(|i| i as usize);
        config.eos_token_id = tok.eos_id().map(|i| i as usize);
        config.check().context("model settings")?;
        device.seed(args.seed);
        (config.init(&device), tok)
    };
    let cfg = model.config().clone();
    say(format!(
        "model gpt2: {} layers, {} heads, width {}, context {}, vocabulary {}, {:.2}M parameters",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.n_positions,
        cfg.vocab_size,
        model.num_params() as f64 / 1e6
    ));

    let t0 = Instant::now();
    let train_tokens = tokenizer.encode_corpus(&corpus.train)?;
    let val_tokens = tokenizer.encode_corpus(&corpus.val)?;
    say(format!(
        "encoded {} training and {} held-out tokens ({:.1}s)",
        train_tokens.len(),
        val_tokens.len(),
        t0.elapsed().as_secs_f64()
    ));

    let config = train_config(&args)?;
    let mut trainer = Trainer::new(
        model,
        config,
        tokenizer,
        train_tokens,
        val_tokens,
        &device,
        Some(run_dir.clone()),
    )?;
    for note in trainer.notes() {
        say(format!("note: {note}"));
    }
    if let Some(ckpt) = &resume {
        trainer.restore(ckpt)?;
        say(format!(
            "resumed from {} at step {}",
            ckpt.display(),
            trainer.step_count()
        ));
    }
    let run_json = serde_json::to_string_pretty(&args)?;
    write_atomic(&run_dir.join(RUN_FILE), run_json.as_bytes())?;
    say(format!("run folder: {}", run_dir.display()));
    Ok(Session {
        trainer,
        run_dir,
        args,
    })
}

/// `cinder train`: a headless run with a progress bar, samples and checkpoints.
pub fn run(args: TrainArgs, cache_dir: &Path) -> Result<()> {
    let choice: DeviceChoice = args.device.parse()?;
    let selected = select(choice)?;
    let Session {
        mut trainer,
        run_dir,
        args,
    } = prepare(args, cache_dir, &selected, &mut |line| eprintln!("{line}"))?;

    let total = trainer.config().steps;
    let interactive = std::io::stderr().is_terminal() && !args.quiet;
    let bar = if interactive {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_position(trainer.step_count());
    let log_every = (total / 20).max(1);
    let mut smoothed_tps: Option<f64> = None;
    let mut steps_this_run = 0u64;
    let mut last_ckpt = None;
    while !trainer.finished() {
        if args.stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let r = trainer.step()?;
        steps_this_run += 1;
        let tps = smoothed_tps.map_or(r.tokens_per_sec, |s| 0.9 * s + 0.1 * r.tokens_per_sec);
        smoothed_tps = Some(tps);
        let msg = format!(
            "loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, tps
        );
        bar.set_position(r.step);
        bar.set_message(msg.clone());
        let say = |line: String| {
            if interactive {
                bar.println(line)
            } else {
                eprintln!("{line}")
            }
        };
        if !interactive && (r.step % log_every == 0 || r.step == 1) {
            say(format!("step {}/{total} {msg}", r.step));
        }
        if let Some(eval) = r.eval_loss {
            say(format!(
                "step {}: held-out loss {eval:.4} (perplexity {:.1})",
                r.step,
                eval.exp()
            ));
        }
        if let Some(sample) = &r.sample {
            say(format!(
                "step {} sample:\n  {}",
                r.step,
                sample.trim().replace('\n', "\n  ")
            ));
        }
        if let Some(ckpt) = &r.checkpoint {
            last_ckpt = Some(ckpt.clone());
        }
    }
    bar.finish_and_clear();
    let stopped_early = !trainer.finished();
    if last_ckpt.as_ref().is_none_or(|_| stopped_early) && steps_this_run > 0 {
        last_ckpt = Some(trainer.save_checkpoint(&run_dir)?);
    }
    if let Some(ckpt) = &last_ckpt {
        eprintln!("checkpoint: {}", ckpt.display());
    }
    if stopped_early {
        eprintln!(
            "stopped at step {} of {total}; continue with: cinder train --resume {}",
            trainer.step_count(),
            run_dir.display()
        );
        return Ok(());
    }
    println!("\nGenerating from the trained model:");
    for i in 0..3 {
        let text = trainer.sample(args.seed.wrapping_add(1000 + i))?;
        println!("{}", text.trim());
    }
    println!(
        "\nTry: cinder generate --model {} --prompt \"...\" --max-new-tokens 64",
        run_dir.display()
    );
    Ok(())
}
