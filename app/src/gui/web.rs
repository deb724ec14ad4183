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
use wasm_bindgen_futures::JsFuture;

use super::{CinderApp, Devices, Settings, shared_setup, widgets::bytes};
use crate::cli::GuiArgs;

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

/// The measurements `?bench=...` runs in the page, as `cinder bench` runs them natively.
#[derive(Clone, Copy, Debug)]
enum Bench {
    /// `cinder bench train --workload tiny`.
    Train,
    /// `cinder bench decode --model smollm2`, one timed run of 32 tokens after a 64-token prompt.
    Decode,
}

/// The address without its `bench` parameter, and the benchmark it asks for.
fn take_bench(query: &str) -> (String, Option<Result<Bench, String>>) {
    let mut bench = None;
    let rest: Vec<&str> = query
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| match pair.split_once('=').unwrap_or((pair, "")) {
            ("bench", value) => {
                bench = Some(match value {
                    "train" => Ok(Bench::Train),
                    "decode" => Ok(Bench::Decode),
                    other => Err(format!("?bench={other}: expected train or decode")),
                });
                false
            }
            _ => true,
        })
        .collect();
    (rest.join("&"), bench)
}

/// Runs `bench` on `selected` and writes its lines and result to the console.
async fn run_bench(bench: Bench, selected: cinder_engine::device::Selected) {
    let say = &mut |line: String| log(&format!("bench: {line}"));
    let result = match bench {
        Bench::Train => {
            crate::bench::train_async(crate::cli::Workload::Tiny, 30, 3, &selected, say)
                .await
                .map(|tps| format!("train tiny {tps:.1} tokens/s on {}", selected.description))
        }
        Bench::Decode => bench_decode(&selected, say).await,
    };
    match result {
        Ok(line) => log(&format!("bench result: {line}")),
        Err(e) => warn(&format!("bench: {e:#}")),
    }
}

/// The decode benchmark on SmolLM2 from the site: load time, time to the first token, speeds.
async fn bench_decode(
    selected: &cinder_engine::device::Selected,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<String> {
    let t0 = web_time::Instant::now();
    let (name, files) = fetch_model("smollm2").await.map_err(anyhow::Error::msg)?;
    let fetched = t0.elapsed().as_secs_f64();
    let dtype = crate::generate::load_dtype(
        cinder_engine::quant::DtypeChoice::default(),
        selected,
        &mut |note| say(note),
    );
    let loaded = cinder_models::auto::load_bytes(
        std::path::Path::new(&name),
        files,
        &selected.device,
        dtype,
    )?;
    let loaded_in = t0.elapsed().as_secs_f64();
    say(format!(
        "{name}: fetched in {fetched:.1} s, loaded ({:?} weights) in {loaded_in:.1} s",
        loaded.dtype
    ));
    let best = crate::bench::decode_async(&loaded, &selected.device, 64, 32, 1, say).await?;
    Ok(format!(
        "decode smollm2 ({:?}) on {}: load {loaded_in:.1} s, first token after {:.2} s \
         (prefill {:.1} tokens/s), decode {:.1} tokens/s",
        loaded.dtype,
        selected.description,
        best.prefill.as_secs_f64(),
        best.prefill_tokens_per_second(),
        best.decode_tokens_per_second()
    ))
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

/// Files the user handed to the page (dropped on it or picked), read: a text file (.txt,
/// .text, .md) becomes the training corpus; a .gguf file, or a model folder's files handed over
/// together, the chat view's model.
fn accept_files(page: &Shared, files: NamedFiles) {
    let mut model = Vec::new();
    for (name, bytes) in files {
        let path = std::path::PathBuf::from(&name);
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("txt" | "text" | "md") => match Corpus::from_text(&path, bytes) {
                Ok(corpus) => {
                    log(&format!(
                        "corpus {name}: {} characters for training, {} held out",
                        corpus.train.chars().count(),
                        corpus.val.chars().count()
                    ));
                    let mut page = page.borrow_mut();
                    page.corpora.push((CorpusSource::File(path), corpus));
                    page.chosen = true;
                }
                Err(e) => page.borrow_mut().problem(e.to_string()),
            },
            Some("gguf" | "json" | "safetensors" | "jinja") => model.push((name, bytes)),
            _ => page.borrow_mut().problem(format!(
                "{name}: not a text file to train on (.txt, .text, .md) nor a model (.gguf, or \
                 a folder's config.json, tokenizer.json, model.safetensors)"
            )),
        }
    }
    if !model.is_empty() {
        let name = model
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        page.borrow_mut().models.push((name, model));
    }
    page.borrow().repaint();
}

/// Opens the browser's file chooser for files of the types in `accept` (e.g. ".txt,.md");
/// the chosen files are read and handed over as dropped files are ([`accept_files`]).
pub(crate) fn choose_files(accept: &str) {
    if let Err(e) = open_chooser(accept) {
        PAGE.with(|page| page.borrow_mut().problem(format!("the file chooser: {e}")));
    }
}

fn open_chooser(accept: &str) -> Result<(), String> {
    let input: web_sys::HtmlInputElement = new_element("input")?;
    input.set_type("file");
    input.set_accept(accept);
    input.set_multiple(true);
    let chosen = input.clone();
    let on_change = Closure::once(move || {
        let Some(list) = chosen.files() else {
            return;
        };
        let picked: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.get(i)).collect();
        wasm_bindgen_futures::spawn_local(async move {
            let page = PAGE.with(Rc::clone);
            let mut files = Vec::new();
            for file in picked {
                let name = file.name();
                match JsFuture::from(file.array_buffer()).await {
                    Ok(buffer) => files.push((name, js_sys::Uint8Array::new(&buffer).to_vec())),
                    Err(e) => page
                        .borrow_mut()
                        .problem(format!("{name}: {}", js_error(e))),
                }
            }
            accept_files(&page, files);
        });
    });
    input.set_onchange(Some(on_change.as_ref().unchecked_ref()));
    // The input and its handler live until the user chooses (the page keeps no reference).
    on_change.forget();
    input.click();
    Ok(())
}

/// A new element `tag` of the page's document, as the type `T` it is.
pub(crate) fn new_element<T: JsCast>(tag: &str) -> Result<T, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?
        .create_element(tag)
        .map_err(js_error)?
        .dyn_into()
        .map_err(|_| format!("<{tag}> is not the element expected"))
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

/// Fetches `url` from the site, reporting bytes as they arrive.
async fn fetch(page: &Shared, url: &str) -> Result<Vec<u8>, String> {
    fetch_if_present(page, url)
        .await?
        .ok_or_else(|| format!("{url}: not found on the site (HTTP 404)"))
}

/// [`fetch`], with `None` for a file the site does not have.
async fn fetch_if_present(page: &Shared, url: &str) -> Result<Option<Vec<u8>>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(js_error)?
        .dyn_into()
        .map_err(js_error)?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let body = response.body().ok_or_else(|| format!("{url}: no body"))?;
    let reader: web_sys::ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|e| js_error(e.into()))?;
    let index = {
        let mut p = page.borrow_mut();
        p.downloads.push(Download {
            name: url.to_string(),
            received: 0,
            total,
        });
        p.downloads.len() - 1
    };
    let mut out = Vec::new();
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(js_error)?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map_err(js_error)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(js_error)?;
        out.extend_from_slice(&js_sys::Uint8Array::new(&value).to_vec());
        if let Some(d) = page.borrow_mut().downloads.get_mut(index) {
            d.received = out.len() as u64;
        }
    }
    page.borrow_mut().downloads.retain(|d| d.name != url);
    Ok(Some(out))
}

/// The files of the model a path in the page names, fetched from the site with a progress bar:
/// `smollm2` (the GGUF the site build placed under `data/models/`), a `.gguf` file, or a model
/// folder (`config.json`, `tokenizer.json`, `model.safetensors` and, when present, the chat
/// template files). Returns the name for messages and the files by name.
pub(crate) async fn fetch_model(path: &str) -> Result<(String, NamedFiles), String> {
    let page = PAGE.with(Rc::clone);
    let path = path.trim().trim_end_matches('/');
    let url = if path == "smollm2" {
        format!("{MODELS}/{}", cinder_engine::data::SMOLLM2_FILE)
    } else {
        path.to_string()
    };
    if url.to_ascii_lowercase().ends_with(".gguf") {
        let bytes = fetch_if_present(&page, &url).await?.ok_or_else(|| {
            if path == "smollm2" {
                format!(
                    "{url} is not on this site: build the site after `cinder fetch smollm2` \
                     (scripts/web.sh build does both), or drop a .gguf file on the page"
                )
            } else {
                format!("{url}: not found on the site (HTTP 404)")
            }
        })?;
        let name = url.rsplit('/').next().unwrap_or(&url).to_string();
        return Ok((url.clone(), vec![(name, bytes)]));
    }
    let mut files = Vec::new();
    for name in cinder_engine::run::MODEL_FILES {
        if let Some(bytes) = fetch_if_present(&page, &format!("{url}/{name}")).await? {
            files.push((name.to_string(), bytes));
        }
    }
    if files.is_empty() {
        return Err(format!(
            "{url}: the site has no model there (neither a .gguf file nor a folder with \
             config.json)"
        ));
    }
    Ok((url, files))
}

fn gunzip(name: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(out)
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
    let val = parts.pop().unwrap_or_default();
    let train = parts.pop().unwrap_or_default();
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
    logged_status: String,
    logged_chat: ChatLog,
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
        self.log_chat();
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
                    logged_status: String::new(),
                    logged_chat: ChatLog::default(),
                    font_requested: false,
                }))
            }),
        )
        .await?;
    // The runner lives as long as the page.
    std::mem::forget(runner);
    Ok(())
}
