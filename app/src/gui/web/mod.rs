//! The web page: the same app as the desktop window, started by eframe's web runner on a
//! canvas, computing on the browser's WebGPU adapter (shared with the page's renderer, as the
//! desktop shares its window's GPU) or on the CPU backend where there is none.
//!
//! What only a page needs lives here: the files a page fetches (the Tang poems shipped with the
//! site, the CJK font, fetched after the first frame), files dropped on the page, settings from
//! the address (`?steps=20&device=cpu`, the flags of `cinder gui`), and one console line per
//! event, so a page can be followed from its console.

use std::cell::RefCell;
use std::rc::Rc;

use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::device::DeviceChoice;
use clap::Parser;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::{CinderApp, Devices, Settings, shared_setup, widgets::bytes};

mod bench;
mod files;

use crate::cli::GuiArgs;
use bench::{run_bench, take_bench};
use files::{accept_files, fetch, gunzip};
pub(crate) use files::{choose_files, fetch_model, new_element};

/// The Tang poems, split as `cinder data fetch tang` splits them, gzipped by the site build.
const TANG: [&str; 2] = ["data/tang-train.txt.gz", "data/tang-val.txt.gz"];

/// Where the site build places models (SmolLM2's GGUF).
const MODELS: &str = "data/models";

thread_local! {
    /// The page's shared state (a page runs on one thread).
    static PAGE: Shared = Rc::default();
}

/// A subset of Droid Sans Fallback covering the Tang poems' characters (assets/fonts).
const CJK_FONT: &str = "data/cinder-cjk.ttf";

/// One line in the browser's console, prefixed `cinder:`.
pub fn log(line: &str) {
    web_sys::console::log_1(&format!("cinder: {line}").into());
}

fn warn(line: &str) {
    web_sys::console::warn_1(&format!("cinder: {line}").into());
}

/// The page's address settings, parsed as `cinder gui`'s flags.
#[derive(Parser, Debug)]
#[command(name = "page")]
struct PageArgs {
    #[command(flatten)]
    gui: GuiArgs,
}

/// `?steps=20&sample-every=5&device=cpu&fresh` -> `--steps 20 --sample-every 5 --device cpu
/// --fresh`.
fn page_args(query: &str) -> Result<GuiArgs, String> {
    let mut argv = vec!["page".to_string()];
    for pair in query
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            js_sys::decode_uri_component(&s.replace('+', " "))
                .map(String::from)
                .unwrap_or_else(|_| s.to_string())
        };
        argv.push(format!("--{}", decode(key).replace('_', "-")));
        if !value.is_empty() {
            argv.push(decode(value));
        }
    }
    PageArgs::try_parse_from(argv)
        .map(|p| p.gui)
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}

/// A fetch in progress, for the progress bar.
#[derive(Clone, Debug)]
struct Download {
    name: String,
    received: u64,
    total: Option<u64>,
}

/// What the page's own tasks hand to the app.
#[derive(Default)]
struct Page {
    downloads: Vec<Download>,
    corpora: Vec<(CorpusSource, Corpus)>,
    /// Whether the last corpus handed over was picked by the user (a dropped file), and so
    /// becomes the form's corpus.
    chosen: bool,
    problems: Vec<String>,
    /// Models made of dropped files, for the chat view: a name and the files by name.
    models: Vec<(String, NamedFiles)>,
    /// The app's context, to wake it when a task has something for it.
    ctx: Option<egui::Context>,
}

impl Page {
    fn problem(&mut self, message: String) {
        warn(&message);
        self.problems.push(message);
        self.repaint();
    }

    fn repaint(&self) {
        if let Some(ctx) = &self.ctx {
            ctx.request_repaint();
        }
    }
}

/// Files by name, with their bytes.
type NamedFiles = Vec<(String, Vec<u8>)>;

type Shared = Rc<RefCell<Page>>;

fn js_error(e: JsValue) -> String {
    e.as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Fetches the Tang poems shipped with the site.
async fn load_tang(page: Shared, ctx: egui::Context) {
    let mut parts = Vec::new();
    for url in TANG {
        match fetch(&page, url).await.and_then(|gz| {
            let text = gunzip(url, &gz)?;
            String::from_utf8(text).map_err(|e| format!("{url}: not UTF-8: {e}"))
        }) {
            Ok(text) => parts.push(text),
            Err(e) => {
                warn(&format!("the Tang poems could not be loaded: {e}"));
                page.borrow_mut().problems.push(format!("Tang poems: {e}"));
                ctx.request_repaint();
                return;
            }
        }
    }
    // Both parts arrived (a failed fetch returned above).
    let Ok([train, val]) = <[String; 2]>::try_from(parts) else {
        return;
    };
    log(&format!(
        "corpus tang: {} characters for training, {} held out",
        train.chars().count(),
        val.chars().count()
    ));
    page.borrow_mut()
        .corpora
        .push((CorpusSource::Tang, Corpus { train, val }));
    ctx.request_repaint();
}

/// Fetches the CJK font and adds it behind egui's own fonts.
async fn load_font(page: Shared, ctx: egui::Context) {
    match fetch(&page, CJK_FONT).await {
        Ok(font) => {
            super::add_fallback_font(&ctx, "cinder-cjk", font);
            ctx.request_repaint();
        }
        Err(e) => warn(&format!("no CJK font ({e}); Chinese text shows as boxes")),
    }
}

/// The app inside the page.
struct WebApp {
    app: CinderApp,
    page: Shared,
    /// Training steps already written to the console.
    logged_steps: usize,
    /// Lines of the run's log already written to the console.
    logged_lines: usize,
    logged_status: String,
    logged_chat: ChatLog,
    logged_couplets: String,
    font_requested: bool,
}

/// What the console has been told of the chat view.
#[derive(Default)]
struct ChatLog {
    model: Option<String>,
    error: Option<String>,
    generating: bool,
    pieces: usize,
}

impl WebApp {
    /// Files dropped on the page, read in a task (a browser reads files asynchronously) and
    /// handed over as [`accept_files`] says.
    fn take_dropped(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if dropped.is_empty() {
            return;
        }
        let page = self.page.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let mut files = Vec::new();
            for file in dropped {
                let name = file.path().display().to_string();
                match file.bytes_async().await {
                    Ok(bytes) => files.push((name, bytes.to_vec())),
                    Err(e) => page.borrow_mut().problem(format!("{name}: {e}")),
                }
            }
            accept_files(&page, files);
        });
    }

    /// Hands over what the page's tasks fetched.
    fn take_fetched(&mut self, ctx: &egui::Context) {
        let mut page = self.page.borrow_mut();
        for (name, files) in std::mem::take(&mut page.models) {
            log(&format!("chat: loading {name}"));
            self.app.load_model_files(name, files, ctx);
        }
        let chosen = std::mem::take(&mut page.chosen);
        for (source, corpus) in std::mem::take(&mut page.corpora) {
            self.app.train.corpora.retain(|(s, _)| *s != source);
            self.app.train.corpora.push((source.clone(), corpus));
            if chosen {
                self.app.train.form.settings.model.corpus = source;
                self.app.train.error = None;
            }
        }
        for problem in page.problems.drain(..) {
            self.app.train.error = Some(problem);
        }
    }

    /// One console line per training step and per change of state.
    fn log_progress(&mut self) {
        let run = &self.app.train.run;
        if run.reports.len() < self.logged_steps {
            self.logged_steps = 0;
        }
        for r in &run.reports[self.logged_steps..] {
            let mut line = format!(
                "step {}/{} loss {:.6} lr {:.2e} {:.0} tok/s",
                r.step, run.total_steps, r.loss, r.lr, r.tokens_per_sec
            );
            if let Some(eval) = r.eval_loss {
                line.push_str(&format!(" held-out {eval:.4}"));
            }
            log(&line);
            if let Some(sample) = &r.sample {
                log(&format!("sample at step {}: {}", r.step, sample.trim()));
            }
        }
        self.logged_steps = run.reports.len();
        if run.log.len() < self.logged_lines {
            self.logged_lines = 0;
        }
        for line in &run.log[self.logged_lines..] {
            log(&format!("train: {line}"));
        }
        self.logged_lines = run.log.len();
        self.log_chat();
        let couplets = self.app.poetry.couplets.join(" ");
        if couplets != self.logged_couplets {
            if !couplets.is_empty() {
                log(&format!(
                    "poetry: {} couplets: {couplets}",
                    self.app.poetry.couplets.len()
                ));
            }
            self.logged_couplets = couplets;
        }
        let status = format!("{:?}", self.app.train.status);
        if status != self.logged_status {
            log(&format!("train status: {status}"));
            self.logged_status = status;
        }
    }

    /// One console line per change in the chat view: a model loaded, an error, an answer.
    fn log_chat(&mut self) {
        let chat = &self.app.chat;
        let logged = &mut self.logged_chat;
        let model = chat.model.as_ref().map(|m| m.description.clone());
        if model != logged.model {
            if let Some(m) = &model {
                log(&format!("chat: model {m}"));
            }
            logged.model = model;
        }
        if chat.error != logged.error {
            if let Some(e) = &chat.error {
                log(&format!("chat: error: {e}"));
            }
            logged.error = chat.error.clone();
        }
        if chat.generating && !logged.generating {
            logged.pieces = chat.streamed_pieces;
        }
        if !chat.generating && logged.generating {
            let answer = chat
                .transcript
                .last()
                .filter(|t| t.role == "assistant")
                .map_or("", |t| t.text.as_str());
            log(&format!(
                "chat: answer in {} pieces ({}): {answer}",
                chat.streamed_pieces - logged.pieces,
                chat.last_speed.as_deref().unwrap_or("")
            ));
        }
        logged.generating = chat.generating;
    }

    fn downloads_ui(&self, ui: &mut egui::Ui) {
        let downloads = self.page.borrow().downloads.clone();
        if downloads.is_empty() {
            return;
        }
        egui::Panel::bottom("downloads").show(ui, |ui| {
            for d in downloads {
                let text = match d.total {
                    Some(total) => format!("{}: {} of {}", d.name, bytes(d.received), bytes(total)),
                    None => format!("{}: {}", d.name, bytes(d.received)),
                };
                let fraction = d.total.map_or(0.0, |t| d.received as f32 / t.max(1) as f32);
                ui.add(egui::ProgressBar::new(fraction).text(text));
            }
        });
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(100));
    }
}

impl eframe::App for WebApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if !std::mem::replace(&mut self.font_requested, true) {
            // After the first frame is up, so the page paints at once.
            wasm_bindgen_futures::spawn_local(load_font(self.page.clone(), ctx.clone()));
        }
        self.take_fetched(&ctx);
        self.take_dropped(&ctx);
        self.downloads_ui(ui);
        self.app.show(ui);
        self.log_progress();
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.app.settings());
    }
}

/// Starts the app on the canvas `canvas_id`.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    console_error_panic_hook::set_once();
    let window = web_sys::window().ok_or("no window")?;
    let document = window.document().ok_or("no document")?;
    let canvas: web_sys::HtmlCanvasElement = document
        .get_element_by_id(&canvas_id)
        .ok_or_else(|| format!("no element #{canvas_id}"))?
        .dyn_into()?;
    let query = window.location().search().unwrap_or_default();
    let (query, bench) = take_bench(&query);
    let args = page_args(&query).unwrap_or_else(|e| {
        warn(&format!("address settings ignored: {e}"));
        GuiArgs::default()
    });

    let mut options = eframe::WebOptions::default();
    let gpu = if args.device == DeviceChoice::Cpu {
        log("backend: CPU (burn-flex), as the address asks (device=cpu)");
        None
    } else {
        match cinder_engine::device::open_browser_gpu().await {
            Ok((selected, setup)) => {
                log(&format!("backend: WebGPU, {}", selected.description));
                options.wgpu_options.wgpu_setup = shared_setup(setup);
                Some(selected)
            }
            Err(e) => {
                log(&format!(
                    "backend: CPU (burn-flex); this browser offers no WebGPU adapter ({e})"
                ));
                None
            }
        }
    };
    let devices = Devices { gpu };
    match bench.map(|b| b.map(|b| (b, devices.resolve(args.device)))) {
        Some(Ok((bench, Ok(selected)))) => {
            wasm_bindgen_futures::spawn_local(run_bench(bench, selected))
        }
        Some(Ok((_, Err(e)))) | Some(Err(e)) => warn(&format!("bench: {e}")),
        None => {}
    }
    let page: Shared = PAGE.with(Rc::clone);
    let runner = eframe::WebRunner::new();
    let fetched = page.clone();
    runner
        .start(
            canvas,
            options,
            Box::new(move |cc| {
                fetched.borrow_mut().ctx = Some(cc.egui_ctx.clone());
                let settings = Settings::at_start(cc.storage, &args);
                let mut app = CinderApp::new(settings, devices, std::path::Path::new("cache"));
                if args.model.is_some() {
                    app = app.load_model_at_start();
                }
                wasm_bindgen_futures::spawn_local(load_tang(fetched, cc.egui_ctx.clone()));
                Ok(Box::new(WebApp {
                    app,
                    page,
                    logged_steps: 0,
                    logged_lines: 0,
                    logged_status: String::new(),
                    logged_chat: ChatLog::default(),
                    logged_couplets: String::new(),
                    font_requested: false,
                }))
            }),
        )
        .await?;
    // The runner lives as long as the page.
    std::mem::forget(runner);
    Ok(())
}
