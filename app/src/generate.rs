//! `cinder generate`: stream a continuation of a prompt to stdout.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cinder_engine::checkpoint::resolve_model_dir;
use cinder_engine::device::{DeviceChoice, select};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::gpt2::Gpt2;

use crate::cli::GenerateArgs;

pub fn run(args: GenerateArgs) -> Result<()> {
    let choice: DeviceChoice = args.device.parse()?;
    let dir = resolve_model_dir(&args.model).with_context(|| "--model".to_string())?;
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("--model {}: no config.json", dir.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let family = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("gpt2");
    if family != "gpt2" {
        bail!(
            "{}: model_type '{family}' is not supported (gpt2 is)",
            config_path.display()
        );
    }
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        bail!(
            "{}: tokenizer.json is missing; a model folder needs config.json, model.safetensors and tokenizer.json",
            dir.display()
        );
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    let selected = select(choice)?;
    let t0 = Instant::now();
    let model = Gpt2::from_pretrained(&dir, &selected.device)?;
    eprintln!(
        "loaded {} on {} in {:.2}s",
        dir.display(),
        selected.description,
        t0.elapsed().as_secs_f64()
    );

    let mut prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        let start = tokenizer.eos_id().context(
            "the prompt is empty and the tokenizer has no end-of-text token to start from",
        )?;
        prompt.push(start);
    }
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        eos: if args.ignore_eos {
            None
        } else {
            tokenizer.eos_id()
        },
    };
    eprint!("{}", args.prompt);
    let mut stream = tokenizer.stream();
    let mut stdout = std::io::stdout();
    let t1 = Instant::now();
    let mut failed = None;
    let new = generate(
        &model,
        &prompt,
        &config,
        &selected.device,
        |id| match stream.push(id) {
            Ok(text) => {
                let _ = write!(stdout, "{text}");
                let _ = stdout.flush();
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    println!("{}", stream.finish()?);
    let secs = t1.elapsed().as_secs_f64();
    eprintln!(
        "{} prompt tokens, {} new tokens in {secs:.2}s ({:.1} tokens/s)",
        prompt.len(),
        new.len(),
        new.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
