//! The chat worker: loads a model and answers (on its own thread natively, as a task of the
//! page in the browser), streaming the text back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cinder_engine::burn::tensor::Device;
use cinder_engine::chat::{Message, chat_prompt};
use cinder_engine::device::{Selected, memory_usage};
use cinder_engine::generate::{GenerateConfig, StopReason, generate_text_async};
use cinder_engine::quant::DtypeChoice;
use cinder_models::auto::{LoadedModel, load_bytes};
use cinder_models::with_decoder;

use super::{ChatSettings, ModelInfo};
use crate::generate::{load_dtype, speed_line};
#[cfg(not(target_family = "wasm"))]
use crate::generate::{load_on, model_path};
use crate::gui::widgets::{Commands, Events};

/// Where a model comes from.
pub enum ModelSource {
    /// A path, as typed (natively a file or folder; in the page, a file or folder of the site,
    /// or `smollm2`).
    Path(String),
    /// Files the user handed over (dropped on the page), by file name.
    Given {
        /// What names them in messages.
        name: String,
        /// The files' names and bytes.
        files: Vec<(String, Vec<u8>)>,
    },
}

impl ModelSource {
    /// What names the source in messages.
    pub fn name(&self) -> &str {
        match self {
            Self::Path(p) => p,
            Self::Given { name, .. } => name,
        }
    }
}

/// What the view asks of the worker.
pub(super) enum Command {
    Load {
        source: ModelSource,
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
                source,
                dtype,
                device,
            } => {
                // The old model's memory is freed before the new one is read.
                current = None;
                let path = source.name().to_string();
                match load_model(source, dtype, &device, &cache_dir, send).await {
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
                    Err(e) => {
                        // Errors about a file name it; others get the model's name.
                        let e = format!("{e:#}");
                        send(Event::LoadFailed(if e.contains(&path) {
                            e
                        } else {
                            format!("{path}: {e}")
                        }))
                    }
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

async fn load_model(
    source: ModelSource,
    dtype: DtypeChoice,
    device: &Selected,
    cache_dir: &std::path::Path,
    send: &dyn Fn(Event),
) -> anyhow::Result<LoadedModel> {
    let mut note = |note| send(Event::Stage(note));
    let (name, files) = match source {
        ModelSource::Given { name, files } => (name, files),
        ModelSource::Path(path) if path.is_empty() => anyhow::bail!("no model path given"),
        #[cfg(target_family = "wasm")]
        ModelSource::Path(path) => {
            let _ = cache_dir;
            send(Event::Stage(format!("downloading {path}")));
            crate::gui::web::fetch_model(&path)
                .await
                .map_err(anyhow::Error::msg)?
        }
        #[cfg(not(target_family = "wasm"))]
        ModelSource::Path(path) => {
            if path == "smollm2" {
                send(Event::Stage("fetching SmolLM2 (first use only)".into()));
            }
            let path = model_path(std::path::Path::new(&path), cache_dir)?;
            send(Event::Stage(format!("reading {}", path.display())));
            return load_on(&path, dtype, device, &mut note);
        }
    };
    send(Event::Stage(format!("reading {name}")));
    let dtype = load_dtype(dtype, device, &mut note);
    Ok(load_bytes(
        std::path::Path::new(&name),
        files,
        &device.device,
        dtype,
    )?)
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
    let out = with_decoder!(&loaded.model, &prompt, device, |m, p| generate_text_async(
        m,
        &loaded.tokenizer,
        p,
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
