//! The desktop window: the GPU shared between Burn and the window, system CJK fonts, the icon,
//! and the command-line overrides of `cinder gui`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cinder_engine::device::{DeviceChoice, Selected, list_adapters};

use super::{CinderApp, Devices, Settings, shared_setup};
use crate::cli::GuiArgs;

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
        Ok((device, setup)) => Some((Selected { device, ..picked }, shared_setup(setup))),
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
    super::add_fallback_font(ctx, path, bytes);
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
            let settings = Settings::at_start(cc.storage, &args);
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
