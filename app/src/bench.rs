//! `cinder bench train`: training throughput on random tokens.

use anyhow::{Result, bail};
use cinder_engine::device::{DeviceChoice, select};
use cinder_engine::optim::AdamWConfig;
use cinder_engine::rng;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::{TrainConfig, Trainer};
use cinder_models::gpt2::Gpt2Config;

use crate::cli::BenchTrainArgs;

/// (model, context, batch) of a named workload.
fn workload(name: &str) -> Result<(Gpt2Config, usize, usize)> {
    Ok(match name {
        "tiny" => (Gpt2Config::new(65, 64, 128, 4, 4), 64, 12),
        "small" => (Gpt2Config::new(8192, 256, 384, 6, 6), 256, 8),
        other => bail!("unknown --workload '{other}': expected tiny or small"),
    })
}

pub fn train(args: BenchTrainArgs) -> Result<()> {
    let (config, context, batch) = workload(&args.workload)?;
    let choice: DeviceChoice = args.device.parse()?;
    let selected = select(choice)?;
    let device = selected.device.clone().autodiff();
    eprintln!(
        "bench train {}: gpt2 {} layers x {} wide, {} heads, vocab {}, batch {batch} x {context}, AdamW, on {}",
        args.workload,
        config.n_layer,
        config.n_embd,
        config.n_head,
        config.vocab_size,
        selected.description
    );
    device.seed(0);
    let model = config.init(&device);
    let vocab = config.vocab_size as u64;
    let tokens: Vec<u32> = (0..1_000_000)
        .map(|i| rng::below(1, 2, i, vocab) as u32)
        .collect();
    // The trainer needs a tokenizer only for samples, which the benchmark does not take.
    let tokenizer = Tokenizer::train_char("ab")?;
    let steps = args.warmup + args.steps;
    let train = TrainConfig {
        steps,
        batch_size: batch,
        context,
        lr: 3e-4,
        warmup: 1,
        adamw: AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, train, tokenizer, tokens, Vec::new(), &device, None)?;
    let mut timed = 0.0;
    for i in 0..steps {
        let t0 = std::time::Instant::now();
        let r = trainer.step()?;
        device.sync().ok();
        let dt = t0.elapsed().as_secs_f64();
        let phase = if i < args.warmup { "warmup" } else { "timed" };
        if i >= args.warmup {
            timed += dt;
        }
        eprintln!(
            "step {:>3} ({phase}): loss {:.4}, {:.1} ms",
            i + 1,
            r.loss,
            dt * 1e3
        );
    }
    let tps = (batch * context) as f64 * args.steps as f64 / timed.max(1e-9);
    println!("{} {tps:.1}", args.workload);
    Ok(())
}
