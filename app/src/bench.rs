//! `cinder bench train` and `cinder bench decode`: training throughput on random tokens and
//! greedy decoding speed. The measurements are `async`, so the web page runs the same ones
//! (`?bench=train`, `?bench=decode`); the commands wait for them.

use anyhow::{Context, Result, bail};
use cinder_engine::burn::module::Module;
use cinder_engine::burn::tensor::Device;
use cinder_engine::device::Selected;
use cinder_engine::generate::{GenerateConfig, GenerateStats, generate_async};
use cinder_engine::lm::LanguageModel;
use cinder_engine::optim::{AdamWConfig, OptimizerConfig};
use cinder_engine::rng;
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::train::TrainConfig;
use cinder_engine::train::Trainer;
use cinder_models::auto::LoadedModel;
use cinder_models::gpt2::Gpt2;
use cinder_models::llama::Llama;
use cinder_models::recipe::{Family, ModelRecipe};
use cinder_models::with_decoder;
use web_time::Instant;

use crate::bench_memory::random_data_trainer;
use crate::cli::Workload;

/// `cinder bench train`: training tokens per second on random data.
#[cfg(not(target_family = "wasm"))]
pub fn train(args: crate::cli::BenchTrainArgs) -> Result<()> {
    let selected = cinder_engine::device::select(args.device)?;
    cinder_engine::shaders::set_fused_kernels(args.kernels == crate::cli::Kernels::Fused);
    let tps = pollster::block_on(train_async(
        args.workload,
        args.steps,
        args.warmup,
        &selected,
        &mut |line| eprintln!("{line}"),
    ))?;
    println!("{} {tps:.1}", args.workload);
    Ok(())
}

/// `cinder bench kernels`: each fused kernel against its reference, one line each.
#[cfg(not(target_family = "wasm"))]
pub fn kernels(args: crate::cli::BenchKernelsArgs) -> Result<()> {
    let selected = cinder_engine::device::select(args.device)?;
    eprintln!("bench kernels on {}", selected.description);
    let timings = cinder_engine::shaders::bench::cross_entropy(
        args.rows as usize,
        args.vocab as usize,
        args.reps as usize,
        &selected.device,
    );
    let training =
        cinder_engine::shaders::bench::training_kernels(args.reps as usize, &selected.device);
    for t in timings
        .into_iter()
        .chain(training)
        .chain(quantized_products(args.reps as usize))
    {
        let fused = if t.fused_ran {
            format!("fused {:.3} ms", t.fused_ms)
        } else {
            "no fused kernel on this device".to_string()
        };
        println!(
            "{} {}: reference {:.3} ms, {fused}, speed-up {:.2}x",
            t.name,
            t.shape,
            t.reference_ms,
            t.reference_ms / t.fused_ms.max(1e-9)
        );
    }
    Ok(())
}

/// The host kernel's block-quantized products at SmolLM2-135M's feed-forward shape (`[1536,
/// 576]`, one input row as in decoding and 64 as in a prompt's pass) and its 8-bit output head
/// (`[49152, 576]`, one row): f32 inputs (the reference) against inputs rounded to 8 bits and
/// multiplied in integers, best of `reps`.
#[cfg(not(target_family = "wasm"))]
fn quantized_products(reps: usize) -> Vec<cinder_engine::shaders::bench::Timing> {
    use cinder_engine::quant::{BlockKind, Inputs, QuantMatrix};
    let k = 576;
    let mut out = Vec::new();
    for (kind, n, rows) in [
        (BlockKind::Q4, 1536, &[1, 64][..]),
        (BlockKind::Q8, 1536, &[1, 64]),
        (BlockKind::Q8, 49152, &[1]),
    ] {
        let values: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
            .collect();
        let Ok(matrix) = QuantMatrix::quantize(kind, &values, n, k) else {
            continue;
        };
        for &t in rows {
            let x: Vec<f32> = (0..t * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let best = |inputs: Inputs| {
                (0..reps.max(1) * 10)
                    .map(|_| {
                        let start = Instant::now();
                        std::hint::black_box(QuantMatrix::matmul_many_with(
                            &[&matrix],
                            &x,
                            t,
                            inputs,
                        ));
                        start.elapsed().as_secs_f64() * 1e3
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            out.push(cinder_engine::shaders::bench::Timing {
                name: format!("{kind:?} product, 8-bit inputs"),
                shape: format!("[{n}, {k}] x {t} rows"),
                reference_ms: best(Inputs::F32),
                fused_ms: best(Inputs::Q8),
                fused_ran: true,
            });
        }
    }
    out
}

/// Trains the `workload` model with AdamW on random tokens on `selected`: `warmup` untimed
/// steps, then `steps` timed ones; `say` hears the set-up and one line per step. Returns the
/// timed steps' training tokens per second.
pub async fn train_async(
    workload: Workload,
    steps: u64,
    warmup: u64,
    selected: &Selected,
    say: &mut dyn FnMut(String),
) -> Result<f64> {
    let (family, preset, batch, context) = workload.shape();
    let recipe = ModelRecipe {
        family,
        preset,
        ..ModelRecipe::default()
    };
    let vocab = workload.vocab().unwrap_or(preset.config().vocab_size);
    let device = selected.device.clone().autodiff();
    let train = TrainConfig {
        steps: warmup + steps,
        batch_size: batch,
        context,
        lr: 3e-4,
        warmup: 1,
        optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
        ..TrainConfig::default()
    };
    device.seed(0);
    // Weights the products use: (layers, width) and every weight but GPT-2's learned positions,
    // which are added, not multiplied (the tied head counts once, as the head).
    let (shape, model, layers, width, weights) = match family {
        Family::Llama => {
            let c = recipe.llama_config(vocab, context);
            let shape = format!(
                "llama {} layers x {} wide, {} heads ({} for keys and values), SwiGLU {} wide",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.kv_heads(),
                c.intermediate_size
            );
            let model = c.init(&device);
            let weights = model.num_params();
            let (layers, width) = (c.num_hidden_layers, c.hidden_size);
            (shape, Timed::Llama(model), layers, width, weights)
        }
        _ => {
            let c = recipe.model_config(vocab, context);
            let shape = format!(
                "gpt2 {} layers x {} wide, {} heads",
                c.n_layer, c.n_embd, c.n_head
            );
            let model = c.init(&device);
            let weights = model.num_params() - c.n_positions * c.n_embd;
            (shape, Timed::Gpt2(model), c.n_layer, c.n_embd, weights)
        }
    };
    say(format!(
        "bench train {workload}: {shape}, vocab {vocab}, batch {batch} x {context}, AdamW, on {}",
        selected.description
    ));
    let seconds = match model {
        Timed::Gpt2(m) => {
            let trainer = random_data_trainer(m, train, 1_000_000, &device)?;
            timed_steps(trainer, warmup, &device, say).await?
        }
        Timed::Llama(m) => {
            let trainer = random_data_trainer(m, train, 1_000_000, &device)?;
            timed_steps(trainer, warmup, &device, say).await?
        }
    };
    let tokens_per_second = (batch * context) as f64 * steps as f64 / f64::max(seconds, 1e-9);
    let flops = flops_per_token(weights, layers, context, width);
    say(format!(
        "bench train {workload}: {tokens_per_second:.1} tokens/s, {:.1} GFLOP/s ({:.2} MFLOP per \
         token: 6N + 12LTd, N = {weights} weights, L = {layers}, T = {context}, d = {width}; \
         divide by the device's peak for the model FLOP utilisation)",
        tokens_per_second * flops / 1e9,
        flops / 1e6
    ));
    Ok(tokens_per_second)
}

/// A training step's floating-point operations per token of a decoder with `weights` weights in
/// its products, `layers` blocks of width `width` over `context` positions: 6N for the products
/// (forward, and the backward's two) and 12LTd for attention's scores and weighted sums.
fn flops_per_token(weights: usize, layers: usize, context: usize, width: usize) -> f64 {
    6.0 * weights as f64 + 12.0 * (layers * context * width) as f64
}

/// A `cinder bench train` model.
enum Timed {
    Gpt2(Gpt2),
    Llama(Llama),
}

/// Runs `trainer` to its last step, saying one line per step; returns the seconds of the steps
/// after the first `warmup`.
async fn timed_steps<M: LanguageModel>(
    mut trainer: Trainer<M>,
    warmup: u64,
    device: &Device,
    say: &mut dyn FnMut(String),
) -> Result<f64> {
    let mut timed = 0.0;
    for i in 0..trainer.config().steps {
        let t0 = Instant::now();
        let r = trainer.step_async().await?;
        wait_for(device);
        let dt = t0.elapsed().as_secs_f64();
        let phase = if i < warmup { "warmup" } else { "timed" };
        if i >= warmup {
            timed += dt;
        }
        say(format!(
            "step {:>3} ({phase}): loss {:.4}, {:.1} ms",
            i + 1,
            r.loss,
            dt * 1e3
        ));
    }
    Ok(timed)
}

/// Waits for the device's queued work (natively; in a page the step's awaited loss already
/// waited for it).
fn wait_for(device: &Device) {
    #[cfg(not(target_family = "wasm"))]
    device.sync().ok();
    #[cfg(target_family = "wasm")]
    let _ = device;
}

/// `cinder bench decode`: greedy decoding of `--tokens` tokens after a random prompt of
/// `--prompt-tokens` tokens, best of `--runs` after one warmup run.
#[cfg(not(target_family = "wasm"))]
pub fn decode(args: crate::cli::BenchDecodeArgs, cache_dir: &std::path::Path) -> Result<()> {
    cinder_engine::shaders::set_fused_kernels(args.kernels == crate::cli::Kernels::Fused);
    let (loaded, device) = crate::generate::open(&args.model, cache_dir)?;
    let best = pollster::block_on(decode_async(
        &loaded,
        &device,
        args.prompt_tokens,
        args.tokens,
        args.runs,
        &mut |line| eprintln!("{line}"),
    ))?;
    println!(
        "decode {} prompt {} tokens {} prefill_tokens_per_second {:.1} decode_tokens_per_second {:.1}",
        loaded.family(),
        args.prompt_tokens,
        args.tokens,
        best.prefill_tokens_per_second(),
        best.decode_tokens_per_second()
    );
    // A decoding step on the host path reads every weight once: its limit is the memory's read
    // bandwidth over the weights' bytes.
    if let cinder_models::auto::AnyModel::Llama(model) = &loaded.model
        && let Some(bytes) = model.quantized_bytes()
    {
        let bandwidth = cinder_engine::shaders::bench::read_bandwidth(1024);
        let read = bytes as f64 * best.decode_tokens_per_second() / 1e9;
        println!(
            "weights read per token {:.1} MB; memory read bandwidth {bandwidth:.1} GB/s ({} \
             threads, a sum over 1 GB); decode reads {read:.1} GB/s, {:.0}% of it",
            bytes as f64 / 1e6,
            cinder_engine::shaders::bench::threads(),
            100.0 * read / bandwidth
        );
    }
    Ok(())
}

/// Decodes `tokens` tokens greedily after a random prompt of `prompt_tokens` tokens, `runs`
/// times after one warmup run; `say` hears each run. Returns the fastest run's statistics.
pub async fn decode_async(
    loaded: &LoadedModel,
    device: &Device,
    prompt_tokens: usize,
    tokens: usize,
    runs: usize,
    say: &mut dyn FnMut(String),
) -> Result<GenerateStats> {
    let vocab = loaded.model.vocab_size();
    if prompt_tokens == 0 || tokens == 0 {
        bail!("--prompt-tokens and --tokens must be positive");
    }
    let prompt: Vec<u32> = (0..prompt_tokens as u64)
        .map(|i| rng::below(7, 3, i, vocab as u64) as u32)
        .collect();
    let config = GenerateConfig::new(tokens, SamplingConfig::greedy(), None);
    let mut best: Option<GenerateStats> = None;
    for run in 0..=runs.max(1) {
        let (_, stats) = with_decoder!(&loaded.model, &prompt, device, |m, p| generate_async(
            m,
            p,
            &config,
            device,
            |_| true
        )
        .await)?;
        if run == 0 {
            continue;
        }
        say(format!(
            "run {run}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
            stats.prefill_tokens_per_second(),
            stats.decode_tokens_per_second()
        ));
        if best.is_none_or(|b| stats.decode < b.decode) {
            best = Some(stats);
        }
    }
    best.context("no timed run")
}
