//! `cinder bench poem`: the poetry VAE against a plain character GPT of about its size, both
//! trained for the same wall time on the Tang poems' five-character couplets, each then writing
//! couplets: how many are well formed (two lines of five characters, punctuation in place), how
//! many do not occur in the corpus, how many distinct characters they use, and the held-out
//! losses.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Result, bail};
use cinder_engine::burn::module::Module;
use cinder_engine::data::pairs::five_character_couplets;
use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::select;
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::readback;
use cinder_engine::run::{MemoryStorage, Run};
use cinder_engine::sampling::SamplingConfig;
use cinder_models::recipe::{AnyTrainer, Family, TrainSettings, prepare};
use web_time::Instant;

use crate::cli::BenchPoemArgs;
use cinder_models::poetry_vae::couplet_text;

/// Whether `text` is a couplet of two five-character lines: five CJK characters, `，`, five
/// more, `。`.
pub fn well_formed(text: &str) -> bool {
    let c: Vec<char> = text.chars().collect();
    let cjk =
        |c: &char| ('\u{4E00}'..='\u{9FFF}').contains(c) || ('\u{3400}'..='\u{4DBF}').contains(c);
    c.len() == 12
        && c[5] == '，'
        && c[11] == '。'
        && c[..5].iter().all(cjk)
        && c[6..11].iter().all(cjk)
}

/// What one model's couplets measured.
struct Figures {
    name: String,
    parameters: usize,
    steps: u64,
    seconds: f64,
    held_out: String,
    well_formed: usize,
    novel: usize,
    distinct: usize,
    shown: Vec<String>,
}

/// `cinder bench poem`.
pub fn run(args: BenchPoemArgs, cache_dir: &Path) -> Result<()> {
    let selected = select(args.device)?;
    let samples = args.samples as usize;
    let corpus = Corpus::load(&CorpusSource::Tang, cache_dir)?;
    let five = |text: &str| -> Vec<String> {
        five_character_couplets(text)
            .into_iter()
            .map(|p| format!("{}，{}。", p.input, p.target))
            .collect()
    };
    let (train, val) = (five(&corpus.train), five(&corpus.val));
    let known: HashSet<&str> = train.iter().chain(&val).map(String::as_str).collect();
    eprintln!(
        "couplets: {} for training, {} held out, on {}",
        train.len(),
        val.len(),
        selected.description
    );
    let quiet = &mut |_: String| {};

    // The VAE, on defaults (or --steps).
    let mut vae = TrainSettings::default();
    vae.model.family = Family::PoetryVae;
    vae.device = args.device;
    vae.train.steps = args.steps.unwrap_or(vae.train.steps);
    vae.train.lr = Family::PoetryVae.default_lr(vae.train.lr);
    vae.train.eval_every = vae.train.steps;
    vae.train.sample_every = 0;
    vae.train.checkpoint_every = 0;
    let mut run = Run::new(Box::new(MemoryStorage::new()))?;
    let mut trainer = prepare(&vae, &mut run, false, &selected, corpus.clone(), quiet)?;
    let t0 = Instant::now();
    let mut last = None;
    while !trainer.finished() {
        last = Some(trainer.step_in(&mut run)?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let AnyTrainer::PoetryVae(vae_trainer) = &trainer else {
        bail!("the poetry-vae settings built another family's trainer");
    };
    let held_out = match last {
        Some(r) => format!(
            "reconstruction {:.2} + KL {:.2} nats per couplet",
            r.eval_reconstruction.unwrap_or(f64::NAN),
            r.eval_kl.unwrap_or(f64::NAN)
        ),
        None => "-".into(),
    };
    let model = vae_trainer.model().valid();
    let device = selected.device.clone();
    let z = model.prior_samples(samples, args.seed, &device);
    let rows = readback::resolve("characters", model.characters(z, 0.0, args.seed))?;
    let texts: Vec<String> = rows
        .iter()
        .map(|r| couplet_text(vae_trainer.tokenizer(), r))
        .collect();
    let vae_figures = measure(
        "poetry VAE",
        Module::num_params(vae_trainer.model()),
        vae.train.steps,
        seconds,
        held_out,
        texts,
        &known,
    );
    eprintln!("poetry VAE: {} steps in {seconds:.0}s", vae.train.steps);

    // A character GPT of about the VAE's size on the same couplets, one per line, for the same
    // wall time: steps estimated from a short timing run.
    let gpt_corpus = Corpus {
        train: train.iter().map(|c| format!("{c}\n")).collect(),
        val: val.iter().map(|c| format!("{c}\n")).collect(),
    };
    let mut gpt = TrainSettings::default();
    gpt.model.family = Family::Gpt2;
    // Named for the run's settings; the lines are handed over below.
    gpt.model.corpus = CorpusSource::File("couplets.txt".into());
    gpt.model.n_layer = Some(2);
    gpt.model.n_embd = Some(96);
    gpt.model.n_head = Some(4);
    gpt.device = args.device;
    gpt.train.eval_every = 0;
    gpt.train.sample_every = 0;
    gpt.train.checkpoint_every = 0;
    gpt.train.steps = 20;
    let mut run = Run::new(Box::new(MemoryStorage::new()))?;
    let mut probe = prepare(&gpt, &mut run, false, &selected, gpt_corpus.clone(), quiet)?;
    let t0 = Instant::now();
    while !probe.finished() {
        probe.step_in(&mut run)?;
    }
    let per_step = t0.elapsed().as_secs_f64() / 20.0;
    gpt.train.steps = ((seconds / per_step) as u64).max(20);
    gpt.train.eval_every = gpt.train.steps;
    let mut run = Run::new(Box::new(MemoryStorage::new()))?;
    let mut trainer = prepare(&gpt, &mut run, false, &selected, gpt_corpus, quiet)?;
    let t0 = Instant::now();
    let mut last = None;
    while !trainer.finished() {
        last = Some(trainer.step_in(&mut run)?);
    }
    let gpt_seconds = t0.elapsed().as_secs_f64();
    let AnyTrainer::Gpt2(gpt_trainer) = &trainer else {
        bail!("the gpt2 settings built another family's trainer");
    };
    let held_out = last.and_then(|r| r.eval_loss).map_or("-".into(), |l| {
        format!("{l:.2} nats per token (13 to a couplet line: 10 characters, 2 stops, newline)")
    });
    let model = gpt_trainer.model().valid();
    let tok = gpt_trainer.tokenizer();
    let newline = tok.encode("\n")?;
    let mut texts = Vec::with_capacity(samples);
    for i in 0..samples {
        let sampling = SamplingConfig {
            seed: args.seed.wrapping_add(i as u64),
            ..SamplingConfig::default()
        };
        let config = GenerateConfig {
            max_new_tokens: 16,
            sampling,
            stop_tokens: newline.clone(),
        };
        let (ids, _) = generate(&model, &newline, &config, &device, |_| true)?;
        texts.push(tok.decode(&ids)?);
    }
    let gpt_figures = measure(
        "character GPT",
        Module::num_params(gpt_trainer.model()),
        gpt.train.steps,
        gpt_seconds,
        held_out,
        texts,
        &known,
    );

    let n = samples as f64;
    println!(
        "{:<14} {:>10} {:>6} {:>6}  {:>11} {:>8} {:>9}  held-out",
        "model", "parameters", "steps", "time", "well-formed", "novel", "distinct"
    );
    for f in [&vae_figures, &gpt_figures] {
        println!(
            "{:<14} {:>10} {:>6} {:>5.0}s  {:>10.1}% {:>7.1}% {:>9}  {}",
            f.name,
            f.parameters,
            f.steps,
            f.seconds,
            100.0 * f.well_formed as f64 / n,
            100.0 * f.novel as f64 / n,
            f.distinct,
            f.held_out
        );
    }
    for f in [&vae_figures, &gpt_figures] {
        println!("\n{} samples:", f.name);
        for s in &f.shown {
            println!("  {s}");
        }
    }
    Ok(())
}

/// The figures of `texts`, the couplets a model wrote.
fn measure(
    name: &str,
    parameters: usize,
    steps: u64,
    seconds: f64,
    held_out: String,
    texts: Vec<String>,
    known: &HashSet<&str>,
) -> Figures {
    let formed: Vec<&String> = texts.iter().filter(|t| well_formed(t)).collect();
    let novel = formed
        .iter()
        .filter(|t| !known.contains(t.as_str()))
        .count();
    let distinct: HashSet<char> = texts
        .iter()
        .flat_map(|t| t.chars())
        .filter(|c| !"，。\n□".contains(*c))
        .collect();
    Figures {
        name: name.to_string(),
        parameters,
        steps,
        seconds,
        held_out,
        well_formed: formed.len(),
        novel,
        distinct: distinct.len(),
        shown: texts.into_iter().take(8).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_couplet_is_well_formed_only_with_two_lines_of_five_and_its_punctuation() {
        assert!(well_formed("床前明月光，疑是地上霜。"));
        assert!(!well_formed("床前明月光，疑是地上霜"));
        assert!(!well_formed("床前明月，疑是地上霜。"));
        assert!(!well_formed("床前明月光。疑是地上霜，"));
        assert!(!well_formed("床前明月□，疑是地上霜。"));
    }
}
