//! `cinder gui`: the desktop app (egui/eframe on wgpu).
//!
//! Two views: **Train** (a training form, live curves of loss, learning rate, throughput,
//! gradient norm and memory, and a feed of sampled text) and **Chat** (load a model and talk to
//! it with streaming output). Training and generation run on worker threads that report through
//! channels, so the window never waits on the engine.
//!
//! When the engine computes on a GPU it uses the window's own wgpu device: Burn acquires the
//! device and the window renders on it, so there is one device and one memory pool.

mod chat;
mod plots;
mod train;
mod widgets;

use std::path::{Path, PathBuf};

use anyhow::Result;
use cinder_engine::device::{DeviceChoice, Selected, list_adapters};
use egui::{Key, KeyboardShortcut, Modifiers};
use serde::{Deserialize, Serialize};

use crate::cli::{GuiArgs, ViewChoice};
pub use chat::{ChatSettings, ChatView};
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
        });
    }

    /// Asks the workers to stop (a training run saves its checkpoint) and waits for them.
    pub fn shut_down(&mut self) {
        self.train.shut_down();
        self.chat.shut_down();
    }
}

struct EframeApp {
    app: CinderApp,
}

impl eframe::App for EframeApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.app.settings());
    }

    fn on_exit(&mut self) {
        self.app.shut_down();
    }
}

/// Opens the GPU the app shares with its window, per `--device`.
fn open_shared_gpu(choice: DeviceChoice) -> Option<(Selected, eframe::egui_wgpu::WgpuSetup)> {
    use cinder_engine::burn::tensor::Device;
    if choice == DeviceChoice::Cpu {
        return None;
    }
    let picked = cinder_engine::device::select_from(choice, &list_adapters()).ok()?;
    let kind = picked.kind.clone()?;
    match Device::wgpu_options().device_kind(kind).init_with_setup() {
        Ok((device, setup)) => {
            let shared =
                eframe::egui_wgpu::WgpuSetup::Existing(eframe::egui_wgpu::WgpuSetupExisting {
                    instance: setup.instance,
                    adapter: setup.adapter,
                    device: setup.device,
                    queue: setup.queue,
                });
            Some((Selected { device, ..picked }, shared))
        }
        Err(e) => {
            eprintln!(
                "note: could not open {} ({e}); computing on the CPU",
                picked.description
            );
            None
        }
    }
}

/// System fonts with CJK glyphs, tried in order (egui's own fonts have none, and the Tang poems
/// and many chat answers need them): Noto/Source Han, WenQuanYi, Droid on Linux; PingFang and
/// Hiragino on macOS; Microsoft YaHei and SimSun on Windows.
const CJK_FONTS: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/source-han-sans/SourceHanSans-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallback.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "C:\\Windows\\Fonts\\msyh.ttc",
    "C:\\Windows\\Fonts\\simsun.ttc",
];

/// Adds the first CJK font found on this system as a fallback for all text; says so when none
/// is found (those characters then show as boxes).
fn install_cjk_fallback(ctx: &egui::Context) {
    use egui::epaint::text::{FontData, FontInsert, FontPriority, InsertFontFamily};
    let Some((path, bytes)) = CJK_FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok().map(|b| (*p, b)))
    else {
        eprintln!(
            "note: no CJK font found; Chinese text will show as boxes (on Debian: apt-get install \
             fonts-noto-cjk or fonts-droid-fallback)"
        );
        return;
    };
    let families = [egui::FontFamily::Proportional, egui::FontFamily::Monospace]
        .into_iter()
        .map(|family| InsertFontFamily {
            family,
            priority: FontPriority::Lowest,
        })
        .collect();
    ctx.add_font(FontInsert::new(path, FontData::from_owned(bytes), families));
}

/// The window icon (assets/icon.png).
const ICON: &[u8] = include_bytes!("../../../assets/icon.png");

fn native_options(setup: Option<eframe::egui_wgpu::WgpuSetup>) -> eframe::NativeOptions {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Cinder")
        .with_app_id("cinder")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([720.0, 480.0]);
    if let Ok(icon) = eframe::icon_data::from_png_bytes(ICON) {
        viewport = viewport.with_icon(icon);
    }
    let mut options = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    if let Some(setup) = setup {
        options.wgpu_options.wgpu_setup = setup;
    }
    options
}

/// Opens the window and runs until it is closed.
pub fn run(args: GuiArgs, cache_dir: &Path) -> Result<()> {
    let shared = open_shared_gpu(args.device);
    let devices = Devices {
        gpu: shared.as_ref().map(|(s, _)| s.clone()),
    };
    if let Some(gpu) = &devices.gpu {
        eprintln!("engine and window share {}", gpu.description);
    }
    let cache_dir: PathBuf = cache_dir.to_path_buf();
    let options = native_options(shared.map(|(_, setup)| setup));
    eframe::run_native(
        "cinder",
        options,
        Box::new(move |cc| {
            let mut settings: Settings = if args.fresh {
                Settings::default()
            } else {
                cc.storage
                    .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                    .unwrap_or_default()
            };
            apply_args(&mut settings, &args);
            install_cjk_fallback(&cc.egui_ctx);
            let mut app = CinderApp::new(settings, devices, &cache_dir);
            if args.model.is_some() {
                app = app.load_model_at_start();
            }
            Ok(Box::new(EframeApp { app }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not be opened: {e}"))
}

/// Command-line values override the remembered settings.
fn apply_args(settings: &mut Settings, args: &GuiArgs) {
    match args.view {
        Some(ViewChoice::Chat) => settings.view = View::Chat,
        Some(ViewChoice::Train) => settings.view = View::Train,
        None => {}
    }
    let form = &mut settings.train;
    if let Some(corpus) = &args.corpus {
        form.settings.model.corpus = corpus.clone();
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
    if let Some(every) = args.sample_every {
        form.settings.train.sample_every = every;
    }
    if let Some(out) = &args.out {
        form.out = Some(out.clone());
    }
    if let Some(model) = &args.model {
        settings.chat.model = model.display().to_string();
    }
}
