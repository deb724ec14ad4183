//! The Train view: a form that builds [`TrainArgs`], a worker thread that runs the same
//! [`prepare`](crate::train::prepare) + [`Trainer::step`](cinder_engine::train::Trainer::step)
//! loop as `cinder train`, and live plots of what each step reports.

use std::path::{Path, PathBuf};
use std::sync::mpsc::TryRecvError;

use cinder_engine::train::StepReport;
use egui::{Key, KeyboardShortcut, Modifiers, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use super::plots::{memory_series, small_plot, smooth};
use super::train_worker::{Command, Event, run_worker};
use serde::{Deserialize, Serialize};

use super::Devices;
use super::widgets::{Worker, bytes, number, text_field};
use crate::cli::TrainArgs;
use crate::train::{DEFAULT_STEPS, preset, read_run_args};

/// The training form: the command line's settings plus how the curves are drawn.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainForm {
    /// The run's settings, as `cinder train` takes them (device: `cpu` or `gpu`).
    pub args: TrainArgs,
    /// Exponential smoothing of the training-loss curve (0 = none).
    pub smoothing: f64,
    /// Plot losses on a log scale.
    pub log_scale: bool,
    /// The run folder typed into "Open run".
    pub open_path: String,
}

impl Default for TrainForm {
    fn default() -> Self {
        let mut form = Self {
            args: TrainArgs {
                steps: Some(DEFAULT_STEPS),
                sample_every: 50,
                eval_every: 50,
                // The GPU shared with the window; the CPU where there is none.
                device: "gpu".into(),
                ..TrainArgs::default()
            },
            smoothing: 0.6,
            log_scale: false,
            open_path: String::new(),
        };
        form.set_preset("tiny");
        form
    }
}

impl TrainForm {
    /// Chooses a size preset and fills in its shape, which stays editable.
    pub fn set_preset(&mut self, name: &str) {
        if let Ok(config) = preset(name) {
            self.args.preset = name.to_string();
            self.args.n_layer = Some(config.n_layer);
            self.args.n_head = Some(config.n_head);
            self.args.n_embd = Some(config.n_embd);
        }
    }
}

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
    pub args: Option<TrainArgs>,
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
        let args = read_run_args(dir)?;
        let metrics = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&metrics)
            .with_context(|| format!("cannot read {}", metrics.display()))?;
        let mut data = Self {
            run_dir: Some(dir.to_path_buf()),
            total_steps: args.steps.unwrap_or(DEFAULT_STEPS),
            args: Some(args),
            ..Self::default()
        };
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let report: StepReport = serde_json::from_str(line)
                .with_context(|| format!("{} line {}", metrics.display(), i + 1))?;
            data.push(report);
        }
        data.checkpoint = cinder_engine::checkpoint::resolve_model_dir(dir)
            .ok()
            .filter(|c| c != dir);
        Ok(data)
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
        let mut args = self.form.args.clone();
        args.resume = resume.clone();
        if resume.is_some() {
            // Continuing keeps the run's own settings except the device and the step count.
            args.steps = self.run.args.as_ref().and_then(|a| a.steps).or(args.steps);
            if self.run.total_steps > 0 {
                args.steps = Some(self.run.total_steps);
            }
        } else if !matches!(args.corpus.as_str(), "tang" | "fortunes")
            && !Path::new(&args.corpus).is_file()
        {
            self.error = Some(format!("corpus: '{}' is not a file", args.corpus));
            return;
        }
        let selected = match devices.resolve(&args.device) {
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
        let cache_dir = self.cache_dir.clone();
        let delay = |e: &Event| {
            matches!(e, Event::Step(_)).then_some(std::time::Duration::from_millis(100))
        };
        match Worker::spawn("cinder-train", ctx, delay, move |commands, send| {
            run_worker(args, &cache_dir, &selected, commands, send)
        }) {
            Ok(w) => self.worker = Some(w),
            Err(e) => self.status = RunStatus::Failed(format!("cannot start a thread: {e}")),
        }
    }

    fn send(&self, command: Command) {
        if let Some(w) = &self.worker {
            let _ = w.commands.send(command);
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
        let Some(worker) = &mut self.worker else {
            return;
        };
        let mut ended = false;
        loop {
            let event = match worker.events.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    if matches!(
                        self.status,
                        RunStatus::Preparing | RunStatus::Running | RunStatus::Paused
                    ) {
                        self.status = RunStatus::Failed("the training thread ended".into());
                    }
                    break;
                }
            };
            match event {
                Event::Log(line) => self.run.log.push(line),
                Event::Started {
                    run_dir,
                    args,
                    step,
                    total,
                } => {
                    self.run.truncate(step);
                    self.run.run_dir = Some(run_dir.clone());
                    self.run.args = Some(*args);
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
                } => {
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
        if ended && let Some(worker) = self.worker.take() {
            worker.join();
        }
    }

    /// Stops a run (saving its checkpoint) and waits for the worker.
    pub fn shut_down(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = worker.commands.send(Command::Stop);
            worker.join();
        }
    }

    /// Draws the view.
    pub fn show(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let ctx = ui.ctx().clone();
        let ctrl = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        let (start, save, pause) = ui.input_mut(|i| {
            (
                i.consume_shortcut(&ctrl(Key::Enter)),
                i.consume_shortcut(&ctrl(Key::S)),
                i.consume_shortcut(&ctrl(Key::P)),
            )
        });
        if start && !self.is_active() {
            self.start(devices, &ctx, None);
        }
        if save {
            self.save();
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
        });
        ui.separator();
        ui.label(RichText::new("Open a run").strong());
        text_field(ui, "Run folder", &mut self.form.open_path);
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Browse…"))
                .clicked()
                && let Some(dir) = rfd::FileDialog::new().set_directory("runs").pick_folder()
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
            ui.add_enabled_ui(!busy, |ui| self.settings_ui(ui, devices));
        });
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let args = &mut self.form.args;
        ui.label(RichText::new("Data").strong());
        let kind = match args.corpus.as_str() {
            "tang" => "Tang poems",
            "fortunes" => "Fortunes",
            _ => "Text file",
        };
        egui::ComboBox::from_label("Corpus")
            .selected_text(kind)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut args.corpus, "tang".to_string(), "Tang poems");
                ui.selectable_value(&mut args.corpus, "fortunes".to_string(), "Fortunes");
                if ui
                    .selectable_label(kind == "Text file", "Text file")
                    .clicked()
                    && kind != "Text file"
                {
                    args.corpus = String::new();
                }
            });
        if kind == "Text file" {
            text_field(ui, "Text file", &mut args.corpus);
            if ui.button("Choose file…").clicked()
                && let Some(file) = rfd::FileDialog::new()
                    .add_filter("text", &["txt", "md", "text"])
                    .pick_file()
            {
                args.corpus = file.display().to_string();
            }
        }
        egui::ComboBox::from_label("Tokenizer")
            .selected_text(args.tokenizer.clone())
            .show_ui(ui, |ui| {
                for t in ["char", "bpe", "bpe:2048", "bpe:16384"] {
                    ui.selectable_value(&mut args.tokenizer, t.to_string(), t);
                }
            });

        ui.add_space(4.0);
        ui.label(RichText::new("Model (GPT-2)").strong());
        let mut chosen = args.preset.clone();
        egui::ComboBox::from_label("Size")
            .selected_text(chosen.clone())
            .show_ui(ui, |ui| {
                for p in ["tiny", "small", "gpt2-124m"] {
                    ui.selectable_value(&mut chosen, p.to_string(), p);
                }
            });
        if chosen != args.preset {
            self.form.set_preset(&chosen);
        }
        let args = &mut self.form.args;
        egui::Grid::new("model-grid").num_columns(2).show(ui, |ui| {
            let mut layers = args.n_layer.unwrap_or(4);
            let mut heads = args.n_head.unwrap_or(4);
            let mut width = args.n_embd.unwrap_or(128);
            number(ui, "Layers", &mut layers, 1..=96, 0.1);
            number(ui, "Heads", &mut heads, 1..=64, 0.1);
            number(ui, "Width", &mut width, 8..=8192, 1.0);
            number(ui, "Context", &mut args.context, 2..=4096, 1.0);
            number(ui, "Dropout", &mut args.dropout, 0.0..=0.9, 0.01);
            args.n_layer = Some(layers);
            args.n_head = Some(heads);
            args.n_embd = Some(width);
        });
        if let (Some(w), Some(h)) = (args.n_embd, args.n_head)
            && w % h != 0
        {
            ui.colored_label(
                ui.visuals().error_fg_color,
                "width must be a multiple of heads",
            );
        }

        ui.add_space(4.0);
        ui.label(RichText::new("Optimizer").strong());
        egui::ComboBox::from_label("Optimizer")
            .selected_text(args.optimizer.clone())
            .show_ui(ui, |ui| {
                for name in cinder_engine::optim::OptimizerConfig::NAMES {
                    ui.selectable_value(&mut args.optimizer, name.to_string(), name);
                }
            });
        egui::Grid::new("optim-grid").num_columns(2).show(ui, |ui| {
            let l = ui.label("Learning rate");
            ui.add(
                egui::DragValue::new(&mut args.lr)
                    .range(1e-6..=1.0)
                    .speed(1e-4)
                    .custom_formatter(|v, _| format!("{v:.1e}")),
            )
            .labelled_by(l.id);
            ui.end_row();
            number(
                ui,
                "Final LR fraction",
                &mut args.min_lr_ratio,
                0.0..=1.0,
                0.01,
            );
            number(ui, "Warmup steps", &mut args.warmup, 0..=100_000, 1.0);
            match args.optimizer.as_str() {
                "sgd" => {
                    number(ui, "Weight decay", &mut args.weight_decay, 0.0..=1.0, 0.01);
                    number(ui, "Momentum", &mut args.momentum, 0.0..=0.999, 0.01);
                    ui.label("");
                    ui.checkbox(&mut args.nesterov, "Nesterov");
                    ui.end_row();
                }
                "heun" => {
                    number(ui, "Weight decay", &mut args.weight_decay, 0.0..=1.0, 0.01);
                }
                "adafactor" => {
                    number(
                        ui,
                        "Momentum (beta 1)",
                        &mut args.adafactor_beta1,
                        0.0..=0.999,
                        0.01,
                    );
                    ui.label("");
                    ui.checkbox(&mut args.relative_step, "Relative step");
                    ui.end_row();
                }
                _ => {
                    number(ui, "Weight decay", &mut args.weight_decay, 0.0..=1.0, 0.01);
                    number(ui, "Beta 1", &mut args.beta1, 0.0..=0.9999, 0.001);
                    number(ui, "Beta 2", &mut args.beta2, 0.0..=0.9999, 0.001);
                }
            }
            number(ui, "Gradient clip", &mut args.grad_clip, 0.0..=100.0, 0.05);
        });

        ui.add_space(4.0);
        ui.label(RichText::new("Run").strong());
        egui::Grid::new("run-grid").num_columns(2).show(ui, |ui| {
            let mut steps = args.steps.unwrap_or(DEFAULT_STEPS);
            number(ui, "Steps", &mut steps, 1..=10_000_000, 1.0);
            args.steps = Some(steps);
            number(ui, "Batch", &mut args.batch_size, 1..=4096, 0.2);
            number(ui, "Accumulate", &mut args.accumulate, 1..=1024, 0.1);
            number(ui, "Eval every", &mut args.eval_every, 0..=1_000_000, 1.0);
            number(
                ui,
                "Sample every",
                &mut args.sample_every,
                0..=1_000_000,
                1.0,
            );
            number(ui, "Sample tokens", &mut args.sample_tokens, 1..=4096, 1.0);
            number(
                ui,
                "Checkpoint every",
                &mut args.checkpoint_every,
                0..=1_000_000,
                1.0,
            );
            number(ui, "Seed", &mut args.seed, 0..=u64::MAX, 1.0);
        });
        egui::ComboBox::from_label("Precision")
            .selected_text(args.precision.clone())
            .show_ui(ui, |ui| {
                for p in ["f32", "f16", "bf16"] {
                    ui.selectable_value(&mut args.precision, p.to_string(), p);
                }
            });
        egui::ComboBox::from_label("Recompute")
            .selected_text(args.recompute.clone())
            .show_ui(ui, |ui| {
                for r in ["none", "blocks", "checkpointing", "all"] {
                    ui.selectable_value(&mut args.recompute, r.to_string(), r);
                }
            })
            .response
            .on_hover_text("Recompute activations in the backward pass to fit larger batches");
        devices.picker(ui, &mut args.device);
        let mut out = args
            .out
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        text_field(ui, "Run folder (empty: runs/<corpus>)", &mut out);
        args.out = (!out.trim().is_empty()).then(|| PathBuf::from(out.trim()));
    }

    fn samples_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Samples");
        let log_height = 140.0;
        let feed_height = (ui.available_height() - log_height).max(120.0);
        egui::ScrollArea::vertical()
            .id_salt("samples")
            .max_height(feed_height)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                if self.run.samples.is_empty() {
                    ui.weak("Samples appear here every few steps while a model trains.");
                }
                for (step, text) in self.run.samples.iter().rev() {
                    egui::Frame::group(ui.style()).show(ui, |ui| {
                        ui.set_width(ui.available_width());
                        ui.label(RichText::new(format!("step {step}")).strong());
                        ui.label(RichText::new(text).monospace());
                    });
                }
            });
        ui.separator();
        ui.label(RichText::new("Log").strong());
        egui::ScrollArea::vertical()
            .id_salt("log")
            .stick_to_bottom(true)
            .auto_shrink([false, false])
            .show(ui, |ui| {
                for line in &self.run.log {
                    ui.label(RichText::new(line).small());
                }
            });
    }

    fn status_text(&self) -> String {
        match &self.status {
            RunStatus::Idle => "Set up a run on the left and press Start.".into(),
            RunStatus::Preparing => format!(
                "Preparing: {}",
                self.run
                    .log
                    .last()
                    .map(String::as_str)
                    .unwrap_or("starting")
            ),
            RunStatus::Running => "Training".into(),
            RunStatus::Paused => "Paused".into(),
            RunStatus::Finished => "Finished".into(),
            RunStatus::Stopped => "Stopped (checkpoint saved)".into(),
            RunStatus::Failed(e) => format!("Failed: {e}"),
            RunStatus::Opened => "Opened from its folder".into(),
        }
    }

    fn dashboard_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if matches!(self.status, RunStatus::Preparing | RunStatus::Running) {
                ui.spinner();
            }
            let text = self.status_text();
            match self.status {
                RunStatus::Failed(_) => {
                    ui.colored_label(ui.visuals().error_fg_color, text);
                }
                _ => {
                    ui.label(RichText::new(text).strong());
                }
            }
            if let Some(dir) = &self.run.run_dir {
                ui.weak(format!("in {}", dir.display()));
            }
        });
        if let Some(e) = &self.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        self.numbers_ui(ui);
        ui.horizontal(|ui| {
            let l = ui.label("Smoothing");
            ui.add(egui::Slider::new(&mut self.form.smoothing, 0.0..=0.99).show_value(false))
                .labelled_by(l.id);
            ui.label(format!("{:.2}", self.form.smoothing));
            ui.checkbox(&mut self.form.log_scale, "Log scale");
        });
        let reports = &self.run.reports;
        let steps = |f: &dyn Fn(&StepReport) -> Option<f64>| -> Vec<[f64; 2]> {
            reports
                .iter()
                .filter_map(|r| f(r).map(|v| [r.step as f64, v]))
                .collect()
        };
        let log = self.form.log_scale;
        let scale = |v: f64| if log { v.max(1e-12).log10() } else { v };
        let train: Vec<[f64; 2]> = smooth(&steps(&|r| Some(r.loss)), self.form.smoothing)
            .into_iter()
            .map(|[x, y]| [x, scale(y)])
            .collect();
        let raw: Vec<[f64; 2]> = steps(&|r| Some(scale(r.loss)));
        let eval: Vec<[f64; 2]> = steps(&|r| r.eval_loss.map(scale));
        let full = ui.available_height();
        let big = (full * 0.45).max(140.0);
        let small = ((full - big) / 2.0 - 28.0).max(90.0);
        let link = ui.scope_id().with("train-steps");
        let mut loss_plot = Plot::new("loss")
            .height(big)
            .legend(Legend::default())
            .x_axis_label("step")
            .y_axis_label(if log { "loss (log)" } else { "loss" })
            .link_axis(link, [true, false]);
        if log {
            loss_plot =
                loss_plot.y_axis_formatter(|mark, _| format!("{:.3}", 10f64.powf(mark.value)));
        }
        loss_plot.show(ui, |p| {
            if self.form.smoothing > 0.0 {
                p.line(Line::new("train (raw)", PlotPoints::from(raw)).width(1.0));
            }
            p.line(Line::new("train", PlotPoints::from(train)).width(2.0));
            p.points(Points::new("held-out", PlotPoints::from(eval)).radius(3.5));
        });
        let lr = steps(&|r| Some(r.lr));
        let tps = steps(&|r| Some(r.tokens_per_sec));
        let grad = steps(&|r| Some(r.grad_norm));
        let memory = memory_series(reports);
        let width = (ui.available_width() - 8.0) / 2.0;
        ui.horizontal(|ui| {
            small_plot(
                ui,
                "learning rate",
                "lr",
                width,
                small,
                link,
                vec![("lr", lr)],
            );
            small_plot(
                ui,
                "tokens/s",
                "tps",
                width,
                small,
                link,
                vec![("tokens/s", tps)],
            );
        });
        ui.horizontal(|ui| {
            small_plot(
                ui,
                "gradient norm",
                "grad",
                width,
                small,
                link,
                vec![("|g|", grad)],
            );
            small_plot(ui, "memory (MiB)", "memory", width, small, link, memory);
        });
    }

    fn numbers_ui(&self, ui: &mut egui::Ui) {
        let Some(last) = self.run.reports.last() else {
            return;
        };
        let eval = self
            .run
            .reports
            .iter()
            .rev()
            .find_map(|r| r.eval_loss.map(|e| (r.step, e)));
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("step {}/{}", last.step, self.run.total_steps));
            ui.separator();
            ui.label(format!("loss {:.4}", last.loss));
            if let Some((step, e)) = eval {
                ui.separator();
                ui.label(format!("held-out {e:.4} @{step}"));
            }
            ui.separator();
            ui.label(format!("lr {:.2e}", last.lr));
            ui.separator();
            ui.label(format!("{:.0} tok/s", last.tokens_per_sec));
            ui.separator();
            ui.label(format!("|g| {:.3}", last.grad_norm));
            ui.separator();
            match (
                last.memory_in_use,
                last.memory_reserved,
                last.process_memory,
            ) {
                (Some(used), reserved, _) => {
                    let reserved = reserved.map(|r| format!(" / {} reserved", bytes(r)));
                    ui.label(format!(
                        "device {}{}",
                        bytes(used),
                        reserved.unwrap_or_default()
                    ))
                }
                (None, _, Some(rss)) => ui.label(format!("process resident {}", bytes(rss))),
                _ => ui.label("memory not reported"),
            };
            ui.separator();
            ui.label(format!("{:.0}s", last.elapsed_s));
            if let Some(prev) = self
                .run
                .reports
                .len()
                .checked_sub(20)
                .map(|i| &self.run.reports[i])
                && last.step > prev.step
                && self.status == RunStatus::Running
            {
                let per_step = (last.elapsed_s - prev.elapsed_s) / (last.step - prev.step) as f64;
                let left = self.run.total_steps.saturating_sub(last.step) as f64 * per_step;
                ui.separator();
                ui.label(format!("ETA {left:.0}s"));
            }
        });
    }
}
