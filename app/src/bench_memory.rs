//! `cinder bench memory`: what recomputation and each optimizer cost and buy.
//!
//! Three tables: peak memory and time per sample against the batch size for each recompute
//! mode (each point measured in a fresh process, so the process's peak resident memory belongs
//! to that point alone; on a GPU the figure is Burn's memory pool, reserved bytes); the bytes
//! held by parameters, gradients and optimizer state on GPT-2 124M; and the loss each optimizer
//! reaches after a fixed number of steps on the Tang poems.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cinder_engine::burn::module::Module;
use cinder_engine::burn::tensor::Device;
use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::{Selected, memory_usage, process_memory, select};
use cinder_engine::lm::LanguageModel;
use cinder_engine::optim::{
    AdaFactorConfig, AdamWConfig, HeunConfig, LionConfig, OptimizerConfig, SgdConfig,
};
use cinder_engine::rng;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::{Recompute, TrainConfig, Trainer};
use cinder_models::gpt2::Gpt2Config;
use serde::{Deserialize, Serialize};

use crate::cli::{BenchMemoryArgs, MemoryProbeArgs, ProbeModelArgs};
use crate::gui::bytes;

/// One measured point, as the probe prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    /// Peak bytes (process peak RSS on the CPU, pool reserved bytes on a GPU).
    peak: u64,
    /// Mean seconds per timed step.
    seconds_per_step: f64,
    /// "process peak RSS" or "memory pool".
    source: String,
}

fn model_config(m: &ProbeModelArgs) -> Result<Gpt2Config> {
    let config = Gpt2Config::new(m.vocab, m.context, m.width, m.layers, m.heads);
    config.check().context("model settings")?;
    Ok(config)
}

/// A trainer for `model` on `n` random tokens, with no evaluation, samples or checkpoints
/// (a benchmark measures steps only; the tokenizer is a placeholder samples would need).
pub(crate) fn random_data_trainer<M: LanguageModel>(
    model: M,
    train: TrainConfig,
    n: u64,
    device: &Device,
) -> Result<Trainer<M>> {
    let vocab = model.vocab_size() as u64;
    let tokens = (0..n).map(|i| rng::below(1, 2, i, vocab) as u32).collect();
    let train = TrainConfig {
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        ..train
    };
    Ok(Trainer::new(
        model,
        train,
        Tokenizer::train_char("ab")?,
        tokens,
        Vec::new(),
        device,
    )?)
}

/// Current memory by the measure that applies to `selected`.
fn memory_now(selected: &Selected) -> Option<(u64, &'static str)> {
    match memory_usage(&selected.device) {
        Some((_, reserved)) => Some((reserved, "memory pool")),
        None => process_memory().map(|(rss, _)| (rss, "process peak RSS")),
    }
}

/// `cinder bench memory-probe`: one point, printed as a JSON line.
pub fn probe(a: MemoryProbeArgs) -> Result<()> {
    let m = &a.model;
    let recompute = a.mode;
    let selected = select(m.device)?;
    let device = if recompute.needs_checkpointing_device() {
        selected.device.clone().autodiff().gradient_checkpointing()
    } else {
        selected.device.clone().autodiff()
    };
    let config = model_config(m)?;
    device.seed(0);
    let model = config.init(&device);
    let train = TrainConfig {
        steps: 1 + m.steps,
        batch_size: a.batch,
        context: m.context,
        lr: 3e-4,
        warmup: 1,
        recompute,
        ..TrainConfig::default()
    };
    let mut trainer = random_data_trainer(model, train, 200_000, &device)?;
    let (start, source) = memory_now(&selected).unwrap_or((0, "not reported"));
    let mut pool_peak = start;
    let mut timed = 0.0;
    for i in 0..1 + m.steps {
        let t0 = Instant::now();
        trainer.step()?;
        device.sync().ok();
        if i > 0 {
            timed += t0.elapsed().as_secs_f64();
        }
        if let Some((reserved, _)) = memory_usage(&selected.device) {
            pool_peak = pool_peak.max(reserved);
        }
    }
    let peak = match memory_usage(&selected.device) {
        Some(_) => pool_peak,
        None => process_memory().map(|(_, peak)| peak).unwrap_or(0),
    };
    let point = Point {
        peak,
        seconds_per_step: timed / m.steps.max(1) as f64,
        source: source.to_string(),
    };
    println!("{}", serde_json::to_string(&point)?);
    Ok(())
}

fn run_probe(exe: &Path, m: &ProbeModelArgs, mode: &str, batch: usize) -> Result<Point> {
    let out = std::process::Command::new(exe)
        .args(["bench", "memory-probe", "--mode", mode, "--batch"])
        .arg(batch.to_string())
        .args(["--device", &m.device.to_string(), "--layers"])
        .arg(m.layers.to_string())
        .arg("--width")
        .arg(m.width.to_string())
        .arg("--heads")
        .arg(m.heads.to_string())
        .arg("--context")
        .arg(m.context.to_string())
        .arg("--vocab")
        .arg(m.vocab.to_string())
        .arg("--steps")
        .arg(m.steps.to_string())
        .output()
        .context("starting a measurement process")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} ({})",
            out.status,
            err.lines().last().unwrap_or("no message")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the measurement '{line}'"))
}

const MIB: f64 = 1024.0 * 1024.0;

/// `cinder bench memory`.
pub fn run(a: BenchMemoryArgs, cache_dir: &Path) -> Result<()> {
    let m = &a.model;
    let modes: Vec<String> = a.modes.iter().map(Recompute::to_string).collect();
    if a.batches.is_empty() || a.batches.contains(&0) {
        bail!("--batches: give positive batch sizes, e.g. 2,4,8");
    }
    let config = model_config(m)?;
    let selected = select(m.device)?;
    let exe = std::env::current_exe().context("finding the cinder executable")?;
    println!(
        "## Recompute: gpt2 {} layers x {} wide, {} heads, context {}, vocabulary {}, AdamW, on {}\n",
        config.n_layer, config.n_embd, config.n_head, m.context, m.vocab, selected.description
    );
    println!("| recompute | batch | peak MiB | s/step | ms/sample |");
    println!("|---|---|---|---|---|");
    let mut results: Vec<(String, usize, Option<Point>)> = Vec::new();
    let mut source = String::new();
    for name in &modes {
        for &batch in &a.batches {
            eprintln!("measuring recompute={name} batch={batch} ...");
            match run_probe(&exe, m, name, batch) {
                Ok(p) => {
                    println!(
                        "| {name} | {batch} | {:.0} | {:.3} | {:.1} |",
                        p.peak as f64 / MIB,
                        p.seconds_per_step,
                        1e3 * p.seconds_per_step / batch as f64
                    );
                    source = p.source.clone();
                    results.push((name.clone(), batch, Some(p)));
                }
                Err(e) => {
                    println!("| {name} | {batch} | failed: {e} | | |");
                    results.push((name.clone(), batch, None));
                }
            }
        }
    }
    println!("\nMemory is {source}.");
    let peak_of = |name: &str, batch: usize| {
        results
            .iter()
            .find(|(n, b, _)| n == name && *b == batch)
            .and_then(|(_, _, p)| p.as_ref())
    };
    let budget = match a.budget_mib {
        Some(b) => b * MIB,
        None => {
            let b = a.batches.get(1).copied().unwrap_or(a.batches[0]);
            match peak_of("none", b) {
                Some(p) => p.peak as f64,
                None => bail!("no measurement without recompute at batch {b} to set the budget"),
            }
        }
    };
    println!(
        "\nLargest measured batch within a budget of {:.0} MiB:\n",
        budget / MIB
    );
    println!("| recompute | batch | ms/sample | batch vs none | time/sample vs none |");
    println!("|---|---|---|---|---|");
    let largest = |name: &str| {
        results
            .iter()
            .filter(|(n, _, p)| n == name && p.as_ref().is_some_and(|p| p.peak as f64 <= budget))
            .max_by_key(|(_, b, _)| *b)
            .and_then(|(_, b, p)| p.as_ref().map(|p| (*b, p.seconds_per_step / *b as f64)))
    };
    let base = largest("none");
    for name in &modes {
        match (largest(name), base) {
            (Some((b, t)), Some((b0, t0))) => println!(
                "| {name} | {b} | {:.1} | {:.1}x | {:+.0}% |",
                1e3 * t,
                b as f64 / b0 as f64,
                100.0 * (t / t0 - 1.0)
            ),
            (Some((b, t)), None) => println!("| {name} | {b} | {:.1} | | |", 1e3 * t),
            (None, _) => println!("| {name} | none fits | | | |"),
        }
    }

    if !a.skip_state {
        optimizer_state(&selected)?;
    }
    if a.loss_steps > 0 {
        optimizer_losses(&selected, cache_dir, a.loss_steps)?;
    }
    Ok(())
}

fn optimizers(lr_adamw: f64) -> Vec<(OptimizerConfig, f64)> {
    vec![
        (OptimizerConfig::AdamW(AdamWConfig::default()), lr_adamw),
        (
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.0,
            }),
            0.05,
        ),
        (OptimizerConfig::AdaFactor(AdaFactorConfig::default()), 0.3),
        (
            OptimizerConfig::Lion(LionConfig {
                beta2: 0.99,
                ..LionConfig::default()
            }),
            lr_adamw / 10.0,
        ),
        (OptimizerConfig::Heun(HeunConfig::default()), 0.1),
    ]
}

/// Parameters, gradients and optimizer state of GPT-2 124M after one step of each optimizer.
fn optimizer_state(selected: &Selected) -> Result<()> {
    let device = selected.device.clone().autodiff();
    let config = Gpt2Config::gpt2_124m();
    println!(
        "\n## Optimizer memory on GPT-2 124M ({} layers x {}, vocabulary {}), after one step\n",
        config.n_layer, config.n_embd, config.vocab_size
    );
    println!("| optimizer | parameters | gradients | optimizer state | state vs AdamW |");
    println!("|---|---|---|---|---|");
    let mut adamw_state = None;
    for (optimizer, lr) in optimizers(3e-4) {
        eprintln!("one step of {} on GPT-2 124M ...", optimizer.kind());
        device.seed(0);
        let model = config.clone().init(&device);
        let params = model.num_params() as u64 * 4;
        let train = TrainConfig {
            steps: 1,
            batch_size: 1,
            context: 32,
            lr,
            warmup: 1,
            optimizer,
            ..TrainConfig::default()
        };
        let mut trainer = random_data_trainer(model, train, 10_000, &device)?;
        trainer.step()?;
        let state = trainer.optimizer_state_elements() as u64 * 4;
        if matches!(optimizer, OptimizerConfig::AdamW(_)) {
            adamw_state = Some(state);
        }
        let ratio = adamw_state
            .map(|a| format!("{:.3}%", 100.0 * state as f64 / a as f64))
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {} | {ratio} |",
            optimizer.kind(),
            bytes(params),
            bytes(params),
            bytes(state)
        );
    }
    Ok(())
}

/// The loss each optimizer reaches on the Tang poems (tiny GPT, character tokenizer).
fn optimizer_losses(selected: &Selected, cache_dir: &Path, steps: u64) -> Result<()> {
    let device = selected.device.clone().autodiff();
    let corpus = Corpus::load(&CorpusSource::Tang, cache_dir).context("loading the Tang poems")?;
    let tok = Tokenizer::train_char(&corpus.train)?;
    let train_tokens = tok.encode_corpus(&corpus.train)?;
    let val_tokens = tok.encode_corpus(&corpus.val)?;
    let mut config = Gpt2Config::new(tok.vocab_size(), 64, 128, 4, 4);
    config.bos_token_id = tok.eos_id().map(|i| i as usize);
    config.eos_token_id = config.bos_token_id;
    println!(
        "\n## Loss after {steps} steps on the Tang poems (gpt2 4 x 128, context 64, batch 16, \
         character vocabulary {}, warmup 10 + cosine)\n",
        tok.vocab_size()
    );
    println!("| optimizer | peak lr | train loss (last 10 steps) | held-out loss | seconds |");
    println!("|---|---|---|---|---|");
    for (optimizer, lr) in optimizers(3e-3) {
        eprintln!(
            "{steps} steps of {} on the Tang poems ...",
            optimizer.kind()
        );
        device.seed(0);
        let model = config.clone().init(&device);
        let train = TrainConfig {
            steps,
            batch_size: 16,
            context: 64,
            lr,
            warmup: 10,
            optimizer,
            eval_every: steps,
            eval_batches: 8,
            sample_every: 0,
            checkpoint_every: 0,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(
            model,
            train,
            tok.clone(),
            train_tokens.clone(),
            val_tokens.clone(),
            &device,
        )?;
        let t0 = Instant::now();
        let mut losses = Vec::new();
        let mut held_out = f64::NAN;
        while !trainer.finished() {
            let r = trainer.step()?;
            losses.push(r.loss);
            if let Some(e) = r.eval_loss {
                held_out = e;
            }
        }
        let tail = &losses[losses.len().saturating_sub(10)..];
        let train_loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
        println!(
            "| {} | {lr:.0e} | {train_loss:.3} | {held_out:.3} | {:.0} |",
            optimizer.kind(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
