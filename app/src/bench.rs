//! `cinder bench train`: training throughput on random tokens.

use anyhow::{Context, Result, bail};
use cinder_engine::device::select;
use cinder_engine::optim::{AdamWConfig, OptimizerConfig};
use cinder_engine::rng;
use cinder_engine::train::TrainConfig;

use crate::cli::BenchTrainArgs;

/// `cinder bench train`: training tokens per second on random data.
pub fn train(args: BenchTrainArgs) -> Result<()> {
    let (preset, batch, context) = args.workload.shape();
    let config = preset.config();
    let selected = select(args.device)?;
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
    let steps = args.warmup + args.steps;
    let train = TrainConfig {
        steps,
        batch_size: batch,
        context,
        lr: 3e-4,
        warmup: 1,
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        ..TrainConfig::default()
    };
    let mut trainer = crate::bench_memory::random_data_trainer(model, train, 1_000_000, &device)?;
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

/// `cinder bench decode`: greedy decoding of `--tokens` tokens after a random prompt of
/// `--prompt-tokens` tokens, best of `--runs` after one warmup run.
pub fn decode(args: crate::cli::BenchDecodeArgs, cache_dir: &std::path::Path) -> Result<()> {
    use cinder_engine::generate::{GenerateConfig, generate};
    use cinder_engine::sampling::SamplingConfig;
    use cinder_models::with_model;

    let (loaded, device) = crate::generate::open(&args.model, cache_dir)?;
    let vocab = with_model!(&loaded.model, |m| cinder_engine::lm::CausalLm::vocab_size(
        m
    ));
    if args.prompt_tokens == 0 || args.tokens == 0 {
        bail!("--prompt-tokens and --tokens must be positive");
    }
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| rng::below(7, 3, i, vocab as u64) as u32)
        .collect();
    let config = GenerateConfig::new(args.tokens, SamplingConfig::greedy(), None);
    let mut best: Option<cinder_engine::generate::GenerateStats> = None;
    for run in 0..=args.runs.max(1) {
        let (_, stats) = with_model!(&loaded.model, |m| generate(
            m,
            &prompt,
            &config,
            &device,
            |_| true
        ))?;
        if run == 0 {
            continue;
        }
        eprintln!(
            "run {run}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
            stats.prefill_tokens_per_second(),
            stats.decode_tokens_per_second()
        );
        if best.is_none_or(|b| stats.decode < b.decode) {
            best = Some(stats);
        }
    }
    let best = best.context("no timed run")?;
    println!(
        "decode {} prompt {} tokens {} prefill_tokens_per_second {:.1} decode_tokens_per_second {:.1}",
        loaded.family(),
        args.prompt_tokens,
        args.tokens,
        best.prefill_tokens_per_second(),
        best.decode_tokens_per_second()
    );
    Ok(())
}
