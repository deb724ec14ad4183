//! The chat worker: loads a model and answers (on its own thread natively, as a task of the
//! page in the browser), streaming the text back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cinder_engine::burn::tensor::Device;
use cinder_engine::chat::{Message, chat_prompt};
use cinder_engine::device::{Selected, memory_usage};
use cinder_engine::generate::{GenerateConfig, StopReason, generate_text_async};
use cinder_engine::quant::DtypeChoice;
use cinder_models::auto::LoadedModel;
use cinder_models::with_model;

use super::{ChatSettings, ModelInfo};
use crate::generate::{load_on, model_path, speed_line};
use crate::gui::widgets::{Commands, Events};

/// What the view asks of the worker.
pub(super) enum Command {
    Load {
        path: String,
        dtype: DtypeChoice,
        device: Box<Selected>,
    },
    Generate {
        messages: Vec<Message>,
        settings: Box<ChatSettings>,
    },
}

/// What the worker reports.
pub(super) enum Event {
    Stage(String),
    Loaded(ModelInfo),
    LoadFailed(String),
    Text(String),
    Done { speed: String, stop: StopReason },
    Failed(String),
    Memory(Option<(u64, u64)>),
}

/// Serves `commands` until the view closes the channel.
pub(super) async fn run_worker(
    cache_dir: std::path::PathBuf,
    commands: Commands<Command>,
    cancel: Arc<AtomicBool>,
    events: Events<Event>,
) {
    let send = &|event| events.send(event);
    let mut current: Option<(LoadedModel, Device)> = None;
    while let Ok(command) = commands.recv().await {
        match command {
            Command::Load {
                path,
                dtype,
                device,
            } => {
                // The old model's memory is freed before the new one is read.
                current = None;
                match load_model(&path, dtype, &device, &cache_dir, send) {
                    Ok(loaded) => {
                        let info = ModelInfo {
                            description: format!(
                                "{} ({}, {:?} weights) on {}",
                                loaded
                                    .source
                                    .file_name()
                                    .map(|n| n.to_string_lossy().to_string())
                                    .unwrap_or(path.clone()),
                                loaded.family(),
                                loaded.dtype,
                                device.description
                            ),
                            has_template: loaded.chat_template.is_some(),
                        };
                        send(Event::Memory(memory_usage(&device.device)));
                        send(Event::Loaded(info));
                        current = Some((loaded, device.device.clone()));
                    }
                    Err(e) => send(Event::LoadFailed(format!("{path}: {e:#}"))),
                }
            }
            Command::Generate { messages, settings } => {
                let Some((loaded, device)) = &current else {
                    send(Event::Failed("no model is loaded".into()));
                    continue;
                };
                match answer(loaded, device, &messages, &settings, &cancel, send).await {
                    Ok((speed, stop)) => {
                        send(Event::Memory(memory_usage(device)));
                        send(Event::Done { speed, stop });
                    }
                    Err(e) => send(Event::Failed(format!("{e:#}"))),
                }
            }
        }
    }
}

fn load_model(
    path: &str,
    dtype: DtypeChoice,
    device: &Selected,
    cache_dir: &std::path::Path,
    send: &dyn Fn(Event),
) -> anyhow::Result<LoadedModel> {
    if path.is_empty() {
        anyhow::bail!("no model path given");
    }
    if path == "smollm2" {
        send(Event::Stage("fetching SmolLM2 (first use only)".into()));
    }
    let path = model_path(std::path::Path::new(path), cache_dir)?;
    send(Event::Stage(format!("reading {}", path.display())));
    load_on(&path, dtype, device, &mut |note| send(Event::Stage(note)))
}

async fn answer(
    loaded: &LoadedModel,
    device: &Device,
    messages: &[Message],
    settings: &ChatSettings,
    cancel: &AtomicBool,
    send: &dyn Fn(Event),
) -> anyhow::Result<(String, StopReason)> {
    let prompt = chat_prompt(loaded.chat_template.as_ref(), messages)?;
    let stop_strings = prompt.stop_strings;
    let prompt = loaded.tokenizer.encode(&prompt.text)?;
    let config = GenerateConfig {
        max_new_tokens: settings.max_tokens,
        sampling: settings.sampling,
        stop_tokens: loaded.stop_tokens.clone(),
    };
    let out = with_model!(&loaded.model, |m| generate_text_async(
        m,
        &loaded.tokenizer,
        &prompt,
        &config,
        &stop_strings,
        device,
        |piece| {
            send(Event::Text(piece.to_string()));
            !cancel.load(Ordering::SeqCst)
        }
    )
    .await)?;
    Ok((speed_line(&out), out.stop))
}
