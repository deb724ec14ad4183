//! `cinder poem`: couplets from a trained poetry VAE, sampled from random noise or on a
//! straight walk through its latent space between two couplets.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::data::pairs::five_character_couplets;
use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::select;
use cinder_engine::readback;
use cinder_engine::run::{Checkpoint, resolve_model_dir};
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::poetry_vae::{PoetryVae, couplet_text};

use crate::cli::PoemArgs;

/// Opens a poetry VAE run, checkpoint or folder.
fn open(path: &Path, device: &Device) -> Result<(PoetryVae, Tokenizer)> {
    let named = || format!("--model {}", path.display());
    let dir = resolve_model_dir(path).with_context(named)?;
    let files = Checkpoint::read_model_folder(&dir).with_context(named)?;
    let config: serde_json::Value = serde_json::from_str(files.text("config.json")?)
        .with_context(|| format!("{}: not valid JSON", files.path("config.json").display()))?;
    let family = config.get("model_type").and_then(serde_json::Value::as_str);
    if family != Some(cinder_models::poetry_vae::MODEL_TYPE) {
        bail!(
            "{}: model_type {} is not a poetry VAE; this command takes a run of `cinder train \
             --family poetry-vae`",
            files.path("config.json").display(),
            family.map_or("(none)".to_string(), |f| format!("'{f}'"))
        );
    }
    let model = PoetryVae::from_files(&files, device).with_context(named)?;
    let tokenizer = Tokenizer::from_json(files.text("tokenizer.json").with_context(named)?)
        .with_context(|| files.path("tokenizer.json").display().to_string())?;
    Ok((model, tokenizer))
}

/// `cinder poem`.
pub fn run(args: PoemArgs, cache_dir: &Path) -> Result<()> {
    let selected = select(args.device)?;
    let device = selected.device.clone();
    let (model, tokenizer) = open(&args.model, &device)?;
    let n = args.count as usize;
    let z = if args.interpolate {
        let (from, to) = match (&args.from, &args.to) {
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            (None, None) => corpus_pair(cache_dir, args.seed)?,
            _ => bail!("--interpolate takes both --from and --to, or neither"),
        };
        eprintln!("walking from {from} to {to}");
        let ends = [
            model
                .couplet_ids(&tokenizer, &from)
                .map_err(|e| anyhow::anyhow!("--from {e}"))?,
            model
                .couplet_ids(&tokenizer, &to)
                .map_err(|e| anyhow::anyhow!("--to {e}"))?,
        ];
        let len = model.config().length;
        let ids: Vec<i64> = ends.iter().flatten().map(|&i| i64::from(i)).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, len]), &device);
        let (means, _) = model.encode(tokens);
        let means = readback::f32_values(means, "the latent means")?;
        let zd = model.config().latent_dim;
        let (a, b) = means.split_at(zd);
        let steps = n.max(2);
        let walk: Vec<f32> = (0..steps)
            .flat_map(|i| {
                let t = i as f32 / (steps - 1) as f32;
                a.iter().zip(b).map(move |(x, y)| (1.0 - t) * x + t * y)
            })
            .collect();
        Tensor::<2>::from_data(TensorData::new(walk, [steps, zd]), &device)
    } else {
        model.prior_samples(n, args.seed, &device)
    };
    let rows = readback::resolve(
        "characters",
        model.characters(z, args.temperature, args.seed),
    )?;
    let lines: Vec<String> = rows.iter().map(|r| couplet_text(&tokenizer, r)).collect();
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
    } else {
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}

/// Two couplets of the Tang poems' held-out split, drawn by `seed`.
fn corpus_pair(cache_dir: &Path, seed: u64) -> Result<(String, String)> {
    let corpus = Corpus::load(&CorpusSource::Tang, cache_dir)?;
    let all = five_character_couplets(&corpus.val);
    if all.len() < 2 {
        bail!("the Tang poems' held-out split has fewer than two five-character couplets");
    }
    let pick = |k: u64| {
        let p = &all[cinder_engine::rng::below(seed, 50 + k, 0, all.len() as u64) as usize];
        format!("{}，{}。", p.input, p.target)
    };
    Ok((pick(0), pick(1)))
}
