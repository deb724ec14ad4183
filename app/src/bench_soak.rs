//! `cinder bench soak`: memory over a long run. Trains the `tiny` GPT on random tokens for
//! `--steps` steps, then decodes `--tokens` tokens with its KV cache in one generation (sliding
//! its window past the context), printing the process's resident memory (and on wgpu
//! Burn's memory pool) every `--every` steps or tokens. It ends with the growth of each over
//! the readings from `--from` on (the floor of the second half against the floor of the
//! first), against a goal (`--goal-percent`, under 2% by default): a leak of a few KiB per
//! step shows there long before it fills a machine.

use anyhow::{Context, Result};
use cinder_engine::burn::tensor::Device;
use cinder_engine::device::{Selected, memory_usage, process_memory};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::train::{TrainConfig, model_files};
use cinder_models::gpt2::Gpt2;

use crate::cli::{BenchSoakArgs, Workload};

/// One reading: resident bytes of the process and, where the backend has one, bytes reserved
/// by its memory pool.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: u64,
    rss: u64,
    pool: Option<u64>,
}

/// A reading now; `None` where the system does not report resident memory.
fn read(at: u64, device: &Device) -> Option<Reading> {
    Some(Reading {
        at,
        rss: process_memory()?.0,
        pool: memory_usage(device).map(|(_, reserved)| reserved),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn say_reading(phase: &str, unit: &str, r: &Reading) {
    let pool = r
        .pool
        .map(|p| format!(", pool {:.1} MiB", mib(p)))
        .unwrap_or_default();
    eprintln!(
        "{phase} {unit} {:>6}: resident {:.1} MiB{pool}",
        r.at,
        mib(r.rss)
    );
}

/// The growth of each measure over the readings at or after `from`: the lowest reading of the
/// second half against the lowest of the first. A leak raises that floor step after step,
/// while the allocator handing pages back and taking them again only moves the peaks (on the
/// CPU resident memory alternates between two levels about 14 MiB apart, so a window of a few
/// readings can catch only the upper one). One line per measure; whether each stayed under the
/// goal.
fn verdict(phase: &str, unit: &str, readings: &[Reading], from: u64, goal: f64) -> bool {
    let kept: Vec<&Reading> = readings.iter().filter(|r| r.at >= from).collect();
    let kept = if kept.len() >= 2 {
        kept
    } else {
        readings.iter().collect()
    };
    let Some(half) = (kept.len() >= 2).then_some(kept.len() / 2) else {
        return true;
    };
    let (first, last) = (&kept[..half], &kept[kept.len() - half..]);
    let mut ok = true;
    let mut line = |what: &str, get: &dyn Fn(&Reading) -> Option<u64>| {
        let floor = |rs: &[&Reading]| rs.iter().filter_map(|r| get(r)).min();
        let peak = kept.iter().filter_map(|r| get(r)).max().unwrap_or(0);
        let (Some(a), Some(b)) = (floor(first), floor(last)) else {
            return;
        };
        let growth = 100.0 * (b as f64 - a as f64) / (a as f64).max(1.0);
        let within = growth < goal;
        ok &= within;
        println!(
            "{phase}: {what} {:.1} MiB over {unit}s {}-{} -> {:.1} MiB over {unit}s {}-{}: \
             {growth:+.2}% ({}; peak {:.1} MiB)",
            mib(a),
            first[0].at,
            first[half - 1].at,
            mib(b),
            last[0].at,
            last[half - 1].at,
            if within {
                format!("under {goal}%")
            } else {
                "GROWS".into()
            },
            mib(peak)
        );
    };
    line("resident memory", &|r| Some(r.rss));
    line("memory pool", &|r| r.pool);
    ok
}

/// Why a soak cannot run: it measures resident memory, which only some systems report.
const UNREPORTED: &str =
    "bench soak: this system does not report the process's resident memory (Linux's /proc)";

/// `cinder bench soak`.
pub fn soak(args: BenchSoakArgs) -> Result<()> {
    let selected: Selected = cinder_engine::device::select(args.device)?;
    let (_, preset, batch, context) = Workload::Tiny.shape();
    let config = preset.config();
    let device = selected.device.clone().autodiff();
    eprintln!(
        "bench soak: gpt2 {} layers x {} wide, batch {batch} x {context}, {} steps then {} \
         tokens, memory every {}, on {}",
        config.n_layer, config.n_embd, args.steps, args.tokens, args.every, selected.description
    );
    device.seed(0);
    let train = TrainConfig {
        steps: args.steps,
        batch_size: batch,
        context,
        lr: 3e-4,
        warmup: 1,
        ..TrainConfig::default()
    };
    let mut trainer =
        crate::bench_memory::random_data_trainer(config.init(&device), train, 1_000_000, &device)?;
    let every = args.every.max(1);
    let mut training = Vec::new();
    while !trainer.finished() {
        let r = trainer.step()?;
        if r.step.is_multiple_of(every) || r.step == args.steps {
            let reading = read(r.step, &selected.device).context(UNREPORTED)?;
            say_reading("train", "step", &reading);
            training.push(reading);
        }
    }

    // Decoding runs on the plain device, from the trained weights.
    let files = model_files(trainer.model(), trainer.tokenizer())?;
    drop(trainer);
    let model = Gpt2::from_files(&files, &selected.device).context("reloading the weights")?;
    // One long generation: past the context, the engine slides its window (a fresh cache
    // prefilled with the last half), as a long chat does.
    let mut decoding = Vec::new();
    let mut decoded = 0u64;
    let config = GenerateConfig::new(args.tokens as usize, SamplingConfig::default(), None);
    generate(&model, &[1, 2, 3, 4], &config, &selected.device, |_| {
        decoded += 1;
        // Training has shown resident memory is reported.
        if (decoded.is_multiple_of(every) || decoded == args.tokens)
            && let Some(reading) = read(decoded, &selected.device)
        {
            say_reading("decode", "token", &reading);
            decoding.push(reading);
        }
        true
    })?;
    let goal = args.goal_percent;
    let trained = verdict("train", "step", &training, args.from, goal);
    let decoded_ok = verdict("decode", "token", &decoding, args.from, goal);
    println!(
        "soak {}",
        if trained && decoded_ok {
            "flat"
        } else {
            "grows"
        }
    );
    Ok(())
}
