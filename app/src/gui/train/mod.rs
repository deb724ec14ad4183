//! The Train view: a form ([`TrainForm`], over the run's settings), a worker thread that steps
//! the same run as `cinder train` ([`worker`]), what the view knows of a run ([`RunData`]) and
//! the dashboard that draws it ([`dashboard`]).

mod dashboard;
mod form;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cinder_engine::data::{Corpus, CorpusSource};
use cinder_engine::run::{Checkpoint, FsStorage, Run};
use cinder_engine::train::StepReport;
use cinder_models::recipe::TrainSettings;
use egui::{Key, KeyboardShortcut, Modifiers, RichText};

pub use form::TrainForm;
use worker::{Command, Event, run_worker};

use super::Devices;
use super::widgets::{HAS_DIALOGS, Worker, pick_folder, text_field};

/// Where a run stands.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RunStatus {
    /// Nothing started or opened.
    #[default]
    Idle,
    /// Loading the corpus, training the tokenizer, building the model.
    Preparing,
    /// Taking steps.
    Running,
    /// Waiting for Resume.
    Paused,
    /// All steps done.
    Finished,
    /// Stopped before the last step (a checkpoint was saved).
    Stopped,
    /// Failed with this message.
    Failed(String),
    /// A run read back from its folder.
    Opened,
}

/// What the view knows about the current (or opened) run.
#[derive(Clone, Debug, Default)]
pub struct RunData {
    /// Where the run writes.
    pub run_dir: Option<PathBuf>,
    /// The settings in force.
    pub settings: Option<TrainSettings>,
    /// Steps the run is set to take.
    pub total_steps: u64,
    /// One report per step taken, in order.
    pub reports: Vec<StepReport>,
    /// Sampled texts with their steps, oldest first.
    pub samples: Vec<(u64, String)>,
    /// Messages from setting up and running.
    pub log: Vec<String>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

impl RunData {
    fn push(&mut self, report: StepReport) {
        if let Some(sample) = &report.sample {
            self.samples.push((report.step, sample.trim().to_string()));
        }
        if let Some(ckpt) = &report.checkpoint {
            self.checkpoint = Some(ckpt.clone());
        }
        if let Some(note) = &report.note {
            self.log.push(format!("step {}: {note}", report.step));
        }
        self.reports.push(report);
    }

    /// Drops what was recorded after `step` (a resumed run repeats those steps).
    fn truncate(&mut self, step: u64) {
        self.reports.retain(|r| r.step <= step);
        self.samples.retain(|(s, _)| *s <= step);
    }

    /// Reads a run folder: its settings, metrics and samples.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let run = Run::open(Box::new(FsStorage::new(dir)));
        let settings = TrainSettings::read(&run)?
            .with_context(|| format!("{} is not a run folder (no run.json)", dir.display()))?;
        let mut data = Self {
            run_dir: Some(dir.to_path_buf()),
            total_steps: settings.train.steps,
            settings: Some(settings),
            ..Self::default()
        };
        for report in run.metrics()? {
            data.push(report);
        }
        data.checkpoint = run.latest()?.map(|name| run.locate(&name));
        Ok(data)
    }
}

/// Why the corpus `source` cannot be read here, if it cannot.
fn missing_corpus(source: &CorpusSource) -> Option<String> {
    if cfg!(target_family = "wasm") {
        return Some(format!(
            "'{source}' is not loaded in this page (drop a text file on the page, or wait for \
             the Tang poems to arrive)"
        ));
    }
    match source {
        CorpusSource::File(path) if !path.is_file() => {
            Some(format!("'{}' is not a file", path.display()))
        }
        _ => None,
    }
}

/// The Train view.
pub struct TrainView {
    /// The form (remembered between launches).
    pub form: TrainForm,
    /// The current or opened run.
    pub run: RunData,
    /// Where the run stands.
    pub status: RunStatus,
    /// A problem to show above the plots (bad form values, a run that cannot be opened).
    pub error: Option<String>,
    /// Corpora already in memory, offered before the run loads its own: in the browser, the
    /// Tang poems the page fetched and the text files dropped on it.
    pub corpora: Vec<(CorpusSource, Corpus)>,
    /// In the browser: the last run's final checkpoint, which the user can download (the run's
    /// files live in the page's memory and end with the run).
    pub downloadable: Option<Box<Checkpoint>>,
    /// A picture of the window asked for and not yet kept (filled when the frame is read back).
    picture: Arc<Mutex<Option<Arc<egui::ColorImage>>>>,
    cache_dir: PathBuf,
    worker: Option<Worker<Command, Event>>,
}

impl TrainView {
    /// A view with `form`, fetching corpora into `cache_dir`.
    pub fn new(form: TrainForm, cache_dir: PathBuf) -> Self {
        Self {
            form,
            run: RunData::default(),
            status: RunStatus::Idle,
            error: None,
            corpora: Vec::new(),
            downloadable: None,
            picture: Arc::default(),
            cache_dir,
            worker: None,
        }
    }

    /// Whether a worker is preparing or running.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// Starts a run from the form, or continues `resume` (a run folder) when given.
    pub fn start(&mut self, devices: &Devices, ctx: &egui::Context, resume: Option<PathBuf>) {
        if self.worker.is_some() {
            return;
        }
        self.error = None;
        let settings = self.form.settings.clone();
        let steps = resume
            .as_ref()
            .map(|_| self.run.total_steps)
            .filter(|&s| s > 0);
        let corpus = self
            .corpora
            .iter()
            .find(|(source, _)| *source == settings.model.corpus)
            .map(|(_, corpus)| corpus.clone());
        if resume.is_none()
            && corpus.is_none()
            && let Some(problem) = missing_corpus(&settings.model.corpus)
        {
            self.error = Some(format!("corpus: {problem}"));
            return;
        }
        let selected = match devices.resolve(settings.device) {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(format!("device: {e}"));
                return;
            }
        };
        if resume.is_none() {
            self.run = RunData::default();
        }
        self.status = RunStatus::Preparing;
        let job = worker::Job {
            settings,
            out: self.form.out.clone(),
            resume,
            steps,
            cache_dir: self.cache_dir.clone(),
            selected,
            corpus,
        };
        let delay = |e: &Event| {
            matches!(e, Event::Step(_)).then_some(std::time::Duration::from_millis(100))
        };
        match Worker::spawn("cinder-train", ctx, delay, move |commands, events| {
            run_worker(job, commands, events)
        }) {
            Ok(w) => self.worker = Some(w),
            Err(e) => self.status = RunStatus::Failed(format!("cannot start a thread: {e}")),
        }
    }

    fn send(&self, command: Command) {
        if let Some(w) = &self.worker {
            w.send(command);
        }
    }

    /// Pauses a running run after its current step.
    pub fn pause(&self) {
        self.send(Command::Pause);
    }

    /// Resumes a paused run.
    pub fn resume(&self) {
        self.send(Command::Resume);
    }

    /// Stops the run after its current step; it saves a checkpoint.
    pub fn stop(&self) {
        self.send(Command::Stop);
    }

    /// Saves a checkpoint after the current step.
    pub fn save(&self) {
        self.send(Command::Save);
    }

    /// In the browser: offers the last run's final checkpoint as a download, a `.tar` of its
    /// folder (`tar -xf` gives a model folder that `cinder generate --model` opens).
    pub fn download(&mut self) {
        let Some(files) = &self.downloadable else {
            return;
        };
        let folder = files
            .source()
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "checkpoint".into());
        let run = self
            .run
            .run_dir
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        let name = format!("{run}-{folder}");
        let result = super::widgets::tar(&name, files.files()).and_then(|bytes| {
            super::widgets::download(&format!("{name}.tar"), "application/x-tar", &bytes)
        });
        match result {
            Ok(()) => self.run.log.push(format!("downloaded {name}.tar")),
            Err(e) => self.error = Some(format!("download: {e}")),
        }
    }

    /// Asks for a picture of the window as it shows the run (curves, numbers, samples); kept
    /// by [`Self::keep_picture`] once the frame has been read back.
    pub fn take_picture(&self, ctx: &egui::Context) {
        let slot = self.picture.clone();
        let repaint = ctx.clone();
        ctx.request_screenshot(move |image| {
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(image);
            }
            repaint.request_repaint();
        });
    }

    /// Keeps the picture [`Self::take_picture`] asked for, when it has arrived: a PNG download
    /// in the browser, `picture-step-N.png` in the run folder on the desktop.
    fn keep_picture(&mut self) {
        let Some(image) = self.picture.lock().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        let step = self.run.reports.last().map_or(0, |r| r.step);
        let dir = self.run.run_dir.as_deref();
        let name = if cfg!(target_family = "wasm") {
            let run = dir
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "cinder".into());
            format!("{run}-step-{step}.png")
        } else {
            format!("picture-step-{step}.png")
        };
        match super::widgets::keep_picture(&image, dir, &name) {
            Ok(said) => self.run.log.push(said),
            Err(e) => self.error = Some(format!("picture: {e}")),
        }
    }

    /// Opens the run folder typed into the form.
    pub fn open_run(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let dir = PathBuf::from(self.form.open_path.trim());
        match RunData::open(&dir) {
            Ok(data) => {
                self.run = data;
                self.status = RunStatus::Opened;
                self.error = None;
            }
            Err(e) => self.error = Some(format!("open run {}: {e:#}", dir.display())),
        }
    }

    /// Applies what the worker reported.
    pub fn poll(&mut self, _ctx: &egui::Context) {
        let Some(worker) = &self.worker else {
            return;
        };
        let (events, ended) = worker.drain();
        for event in events {
            match event {
                Event::Log(line) => self.run.log.push(line),
                Event::Started {
                    run_dir,
                    settings,
                    step,
                    total,
                } => {
                    self.run.truncate(step);
                    self.run.run_dir = Some(run_dir.clone());
                    self.run.settings = Some(*settings);
                    self.run.total_steps = total;
                    self.form.open_path = run_dir.display().to_string();
                    self.status = RunStatus::Running;
                }
                Event::Step(report) => self.run.push(*report),
                Event::Paused => self.status = RunStatus::Paused,
                Event::Resumed => self.status = RunStatus::Running,
                Event::Saved(path) => {
                    self.run
                        .log
                        .push(format!("checkpoint saved: {}", path.display()));
                    self.run.checkpoint = Some(path);
                }
                Event::Ended {
                    finished,
                    checkpoint,
                    files,
                } => {
                    if files.is_some() {
                        self.downloadable = files;
                    }
                    if let Some(c) = checkpoint {
                        self.run
                            .log
                            .push(format!("checkpoint saved: {}", c.display()));
                        self.run.checkpoint = Some(c);
                    }
                    self.status = if finished {
                        RunStatus::Finished
                    } else {
                        RunStatus::Stopped
                    };
                }
                Event::Failed(message) => {
                    self.run.log.push(format!("error: {message}"));
                    self.status = RunStatus::Failed(message);
                }
            }
        }
        if ended {
            if matches!(
                self.status,
                RunStatus::Preparing | RunStatus::Running | RunStatus::Paused
            ) {
                self.status = RunStatus::Failed("the training thread ended".into());
            }
            if let Some(worker) = self.worker.take() {
                worker.join();
            }
        }
    }

    /// Stops a run (saving its checkpoint) and waits for the worker.
    pub fn shut_down(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.send(Command::Stop);
            worker.join();
        }
    }

    /// Draws the view.
    pub fn show(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let ctx = ui.ctx().clone();
        let ctrl = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        let (start, picture, save, pause) = ui.input_mut(|i| {
            (
                i.consume_shortcut(&ctrl(Key::Enter)),
                // Before Ctrl+S, which also matches with Shift held.
                i.consume_shortcut(&KeyboardShortcut::new(
                    Modifiers::COMMAND | Modifiers::SHIFT,
                    Key::S,
                )),
                i.consume_shortcut(&ctrl(Key::S)),
                i.consume_shortcut(&ctrl(Key::P)),
            )
        });
        self.keep_picture();
        if picture {
            self.take_picture(&ctx);
        }
        if start && !self.is_active() {
            self.start(devices, &ctx, None);
        }
        if save {
            if self.is_active() {
                self.save();
            } else {
                self.download();
            }
        }
        if pause {
            match self.status {
                RunStatus::Running => self.pause(),
                RunStatus::Paused => self.resume(),
                _ => {}
            }
        }
        egui::Panel::left("train-form")
            .resizable(true)
            .default_size(300.0)
            .show(ui, |ui| self.form_ui(ui, devices));
        egui::Panel::right("train-samples")
            .resizable(true)
            .default_size(340.0)
            .show(ui, |ui| self.samples_ui(ui));
        egui::CentralPanel::default().show(ui, |ui| self.dashboard_ui(ui));
    }

    fn form_ui(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let ctx = ui.ctx().clone();
        let busy = self.is_active();
        ui.horizontal_wrapped(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Start"))
                .on_hover_text("Ctrl+Enter")
                .clicked()
            {
                self.start(devices, &ctx, None);
            }
            match self.status {
                RunStatus::Paused => {
                    if ui.button("Resume").on_hover_text("Ctrl+P").clicked() {
                        self.resume();
                    }
                }
                _ => {
                    let running = self.status == RunStatus::Running;
                    if ui
                        .add_enabled(running, egui::Button::new("Pause"))
                        .on_hover_text("Ctrl+P")
                        .clicked()
                    {
                        self.pause();
                    }
                }
            }
            if ui.add_enabled(busy, egui::Button::new("Stop")).clicked() {
                self.stop();
            }
            let live = matches!(self.status, RunStatus::Running | RunStatus::Paused);
            if ui
                .add_enabled(live, egui::Button::new("Save checkpoint"))
                .on_hover_text("Ctrl+S")
                .clicked()
            {
                self.save();
            }
            if self.downloadable.is_some()
                && ui
                    .add_enabled(!busy, egui::Button::new("Download checkpoint"))
                    .on_hover_text("Ctrl+S: the last run's checkpoint as a .tar")
                    .clicked()
            {
                self.download();
            }
        });
        ui.separator();
        ui.label(RichText::new("Open a run").strong());
        text_field(ui, "Run folder", &mut self.form.open_path);
        ui.horizontal(|ui| {
            if HAS_DIALOGS
                && ui
                    .add_enabled(!busy, egui::Button::new("Browse…"))
                    .clicked()
                && let Some(dir) = pick_folder(Some("runs"))
            {
                self.form.open_path = dir.display().to_string();
                self.open_run();
            }
            if ui.add_enabled(!busy, egui::Button::new("Open")).clicked() {
                self.open_run();
            }
            let resumable = !busy
                && self.run.checkpoint.is_some()
                && matches!(
                    self.status,
                    RunStatus::Opened | RunStatus::Stopped | RunStatus::Finished
                );
            if ui
                .add_enabled(resumable, egui::Button::new("Continue training"))
                .on_hover_text("Resume from the run's latest checkpoint")
                .clicked()
                && let Some(dir) = self.run.run_dir.clone()
            {
                self.start(devices, &ctx, Some(dir));
            }
        });
        if matches!(
            self.status,
            RunStatus::Opened | RunStatus::Stopped | RunStatus::Finished
        ) && self.run.checkpoint.is_some()
        {
            ui.horizontal(|ui| {
                let l = ui.label("Continue to step");
                ui.add(egui::DragValue::new(&mut self.run.total_steps).range(1..=10_000_000))
                    .labelled_by(l.id);
            });
        }
        ui.separator();
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.add_enabled_ui(!busy, |ui| self.form.ui(ui, devices));
        });
    }
}
