//! `cinder gui`: the desktop app (egui/eframe on wgpu).
//!
//! Three views: **Train** (a training form, live curves of loss, learning rate, throughput,
//! gradient norm and memory, and a feed of sampled text), **Chat** (load a model and talk to
//! it with streaming output) and **Poetry** (couplets from a trained poetry VAE: sampled, or
//! along a walk between two couplets). Training and generation run on worker threads that report through
//! channels, so the window never waits on the engine.
//!
//! When the engine computes on a GPU it uses the window's own wgpu device: Burn acquires the
//! device and the window renders on it, so there is one device and one memory pool.

mod chat;
#[cfg(not(target_family = "wasm"))]
mod desktop;
mod plots;
mod poetry;
mod train;
#[cfg(target_family = "wasm")]
pub mod web;
mod widgets;

use std::path::Path;

use cinder_engine::device::{DeviceChoice, Selected};
use egui::{Key, KeyboardShortcut, Modifiers};
use serde::{Deserialize, Serialize};

use crate::cli::{GuiArgs, ViewChoice};
pub use chat::{ChatSettings, ChatView};
#[cfg(not(target_family = "wasm"))]
pub use desktop::run;
pub use poetry::PoetryView;
pub use train::{RunStatus, TrainForm, TrainView};
pub use widgets::bytes;

/// Which view fills the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// Training dashboard.
    #[default]
    Train,
    /// Chat window.
    Chat,
    /// Couplets from a poetry VAE.
    Poetry,
}

/// What the app remembers between launches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Dark (true) or light theme.
    pub dark: bool,
    /// The view shown at start.
    pub view: View,
    /// The training form.
    pub train: TrainForm,
    /// The chat view's model and sampling settings.
    pub chat: ChatSettings,
}

impl Settings {
    /// The settings an app starts with: the remembered ones (defaults with `--fresh`, or
    /// when none are stored), overridden by the command line's (or the page address's) values.
    pub fn at_start(storage: Option<&dyn eframe::Storage>, args: &GuiArgs) -> Self {
        let mut settings: Settings = if args.fresh {
            Settings::default()
        } else {
            storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default()
        };
        apply_args(&mut settings, args);
        settings
    }
}

/// Adds font `name` behind egui's own fonts, for the characters they lack (CJK).
fn add_fallback_font(ctx: &egui::Context, name: &str, bytes: Vec<u8>) {
    use egui::epaint::text::{FontData, FontInsert, FontPriority, InsertFontFamily};
    let families = [egui::FontFamily::Proportional, egui::FontFamily::Monospace]
        .into_iter()
        .map(|family| InsertFontFamily {
            family,
            priority: FontPriority::Lowest,
        })
        .collect();
    ctx.add_font(FontInsert::new(name, FontData::from_owned(bytes), families));
}

/// Burn's wgpu handles, given to eframe so the window or page renders on the engine's device.
fn shared_setup(
    setup: cinder_engine::burn::tensor::wgpu::WgpuSetup,
) -> eframe::egui_wgpu::WgpuSetup {
    eframe::egui_wgpu::WgpuSetup::Existing(eframe::egui_wgpu::WgpuSetupExisting {
        instance: setup.instance,
        adapter: setup.adapter,
        device: setup.device,
        queue: setup.queue,
    })
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dark: true,
            view: View::Train,
            train: TrainForm::default(),
            chat: ChatSettings::default(),
        }
    }
}

/// Where the engine computes: the CPU backend, and the GPU shared with the window if any.
#[derive(Clone, Debug)]
pub struct Devices {
    /// The GPU the window renders on, opened through Burn.
    pub gpu: Option<Selected>,
}

impl Devices {
    /// The CPU backend only.
    pub fn cpu_only() -> Self {
        Self { gpu: None }
    }

    /// The device `choice` names here: `cpu` is the CPU backend; `gpu` and `wgpu` the GPU
    /// shared with the window; `auto` that GPU when there is one, else the CPU.
    pub fn resolve(&self, choice: DeviceChoice) -> std::result::Result<Selected, String> {
        let cpu = || cinder_engine::device::select(DeviceChoice::Cpu).map_err(|e| e.to_string());
        match (choice, &self.gpu) {
            (DeviceChoice::Cpu, _) | (DeviceChoice::Auto, None) => cpu(),
            (_, Some(gpu)) => Ok(gpu.clone()),
            (_, None) => Err(
                "no GPU is shared with this window (start with `cinder gui --device \
                 wgpu` to use a software renderer); choose cpu"
                    .to_string(),
            ),
        }
    }

    /// A "Device" picker: auto, the CPU, and the shared GPU when there is one.
    pub fn picker(&self, ui: &mut egui::Ui, value: &mut DeviceChoice) {
        let gpu = self.gpu.as_ref().map(|gpu| {
            // "wgpu: NVIDIA GeForce RTX 4090 (discrete, Vulkan)" -> "GPU: NVIDIA GeForce RTX 4090"
            let name = gpu.description.trim_start_matches("wgpu: ");
            let name = name.split(" (").next().unwrap_or(name);
            format!("GPU: {}", name.chars().take(32).collect::<String>())
        });
        let label = |c: DeviceChoice| match c {
            DeviceChoice::Auto => "Auto".to_string(),
            DeviceChoice::Cpu => "CPU (burn-flex)".to_string(),
            _ => gpu
                .clone()
                .unwrap_or_else(|| "GPU (none shared)".to_string()),
        };
        egui::ComboBox::from_label("Device")
            .selected_text(label(*value))
            .show_ui(ui, |ui| {
                ui.selectable_value(value, DeviceChoice::Auto, label(DeviceChoice::Auto));
                ui.selectable_value(value, DeviceChoice::Cpu, label(DeviceChoice::Cpu));
                if gpu.is_some() {
                    ui.selectable_value(value, DeviceChoice::Gpu, label(DeviceChoice::Gpu));
                }
            });
    }
}

/// The whole app: a top bar, then the train or chat view.
pub struct CinderApp {
    /// Remembered settings (the views hold their live copies).
    pub dark: bool,
    /// The view shown.
    pub view: View,
    /// The training dashboard.
    pub train: TrainView,
    /// The chat window.
    pub chat: ChatView,
    /// The poetry view.
    pub poetry: PoetryView,
    devices: Devices,
    memory: widgets::MemoryProbe,
    load_at_start: bool,
}

impl CinderApp {
    /// An app with `settings`, computing on `devices`, caching downloads in `cache_dir`.
    pub fn new(settings: Settings, devices: Devices, cache_dir: &Path) -> Self {
        let mut settings = settings;
        for device in [
            &mut settings.train.settings.device,
            &mut settings.chat.device,
        ] {
            if devices.resolve(*device).is_err() {
                *device = DeviceChoice::Auto;
            }
        }
        Self {
            dark: settings.dark,
            view: settings.view,
            train: TrainView::new(settings.train, cache_dir.to_path_buf()),
            chat: ChatView::new(settings.chat, cache_dir.to_path_buf()),
            poetry: PoetryView::default(),
            devices,
            memory: widgets::MemoryProbe::default(),
            load_at_start: false,
        }
    }

    /// Loads the chat view's model on the first frame (for `cinder gui --model ...`).
    pub fn load_model_at_start(mut self) -> Self {
        self.load_at_start = true;
        self
    }

    /// Opens the Chat view on a model made of files the user handed over (dropped on the page):
    /// one GGUF file, or a model folder's files.
    pub fn load_model_files(
        &mut self,
        name: String,
        files: Vec<(String, Vec<u8>)>,
        ctx: &egui::Context,
    ) {
        self.view = View::Chat;
        self.chat
            .load_from(chat::ModelSource::Given { name, files }, &self.devices, ctx);
    }

    /// The settings to remember.
    pub fn settings(&self) -> Settings {
        Settings {
            dark: self.dark,
            view: self.view,
            train: self.train.form.clone(),
            chat: self.chat.settings.clone(),
        }
    }

    /// Draws one frame.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        ui.ctx().set_theme(if self.dark {
            egui::Theme::Dark
        } else {
            egui::Theme::Light
        });
        self.shortcuts(ui);
        if std::mem::take(&mut self.load_at_start) {
            self.chat.load(&self.devices, ui.ctx());
        }
        self.train.poll(ui.ctx());
        self.chat.poll(ui.ctx());
        egui::Panel::top("top-bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Cinder");
                ui.separator();
                ui.selectable_value(&mut self.view, View::Train, "Train")
                    .on_hover_text("Ctrl+1");
                ui.selectable_value(&mut self.view, View::Chat, "Chat")
                    .on_hover_text("Ctrl+2");
                ui.selectable_value(&mut self.view, View::Poetry, "Poetry")
                    .on_hover_text("Ctrl+3");
                ui.separator();
                let theme = if self.dark {
                    "Light theme"
                } else {
                    "Dark theme"
                };
                if ui.button(theme).clicked() {
                    self.dark = !self.dark;
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    ui.label(self.memory.describe());
                    ui.separator();
                    let gpu = match &self.devices.gpu {
                        Some(g) => g.description.clone(),
                        None => "no shared GPU".into(),
                    };
                    ui.label(gpu);
                });
            });
        });
        match self.view {
            View::Train => self.train.show(ui, &self.devices),
            View::Chat => self.chat.show(ui, &self.devices),
            View::Poetry => self.poetry.show(ui, &mut self.train, &self.devices),
        }
        if self.train.is_active() || self.chat.is_active() {
            // Worker events request repaints; this keeps the memory gauge moving between them.
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(500));
        }
    }

    fn shortcuts(&mut self, ui: &mut egui::Ui) {
        let ctrl = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        ui.input_mut(|i| {
            if i.consume_shortcut(&ctrl(Key::Num1)) {
                self.view = View::Train;
            }
            if i.consume_shortcut(&ctrl(Key::Num2)) {
                self.view = View::Chat;
            }
            if i.consume_shortcut(&ctrl(Key::Num3)) {
                self.view = View::Poetry;
            }
        });
    }

    /// Asks the workers to stop (a training run saves its checkpoint) and waits for them.
    pub fn shut_down(&mut self) {
        self.train.shut_down();
        self.chat.shut_down();
    }
}

/// Command-line values override the remembered settings.
fn apply_args(settings: &mut Settings, args: &GuiArgs) {
    match args.view {
        Some(ViewChoice::Chat) => settings.view = View::Chat,
        Some(ViewChoice::Train) => settings.view = View::Train,
        Some(ViewChoice::Poetry) => settings.view = View::Poetry,
        None => {}
    }
    let form = &mut settings.train;
    if let Some(corpus) = &args.corpus {
        form.settings.model.corpus = corpus.clone();
    }
    if let Some(family) = args.family {
        form.settings.set_family(family);
    }
    if let Some(preset) = args.preset {
        form.settings.model.preset = preset;
        form.settings.model.n_layer = None;
        form.settings.model.n_head = None;
        form.settings.model.n_embd = None;
    }
    if let Some(steps) = args.steps {
        form.settings.train.steps = steps;
    }
    if let Some(lr) = args.lr {
        form.settings.train.lr = lr;
    }
    if let Some(every) = args.eval_every {
        form.settings.train.eval_every = every;
    }
    if let Some(every) = args.sample_every {
        form.settings.train.sample_every = every;
    }
    if let Some(out) = &args.out {
        form.out = Some(out.clone());
    }
    if let Some(n) = args.sample_tokens {
        form.settings.train.sample_tokens = n;
    }
    if let Some(batch) = args.batch_size {
        form.settings.train.batch_size = batch;
    }
    if let Some(context) = args.context {
        form.settings.train.context = context;
    }
    if let Some(model) = &args.model {
        settings.chat.model = model.display().to_string();
    }
    if let Some(t) = args.temperature {
        settings.chat.sampling.temperature = t;
    }
    if let Some(n) = args.max_tokens {
        settings.chat.max_tokens = n;
    }
}
