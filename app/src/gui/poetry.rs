//! The Poetry view: couplets from a trained poetry VAE. It takes the model the Train view just
//! trained (or, natively, a run folder), writes couplets from random noise at the press of a
//! button, and walks the latent space between two couplets along a slider. The model is tiny,
//! so it runs on the CPU backend within the frame.

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::readback;
use cinder_engine::run::Checkpoint;
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::poetry_vae::{PoetryVae, couplet_text as couplet};
use cinder_models::recipe::Family;
use egui::RichText;

use super::{Devices, RunStatus, TrainView};

/// A loaded model and what it was loaded from.
struct Loaded {
    model: PoetryVae,
    tokenizer: Tokenizer,
    source: String,
    /// The latent means of the walk's two ends, for the couplets they were computed from.
    ends: Option<(String, String, Vec<f32>, Vec<f32>)>,
}

/// The Poetry view's state.
pub struct PoetryView {
    loaded: Option<Loaded>,
    /// Couplets per press of "Sample".
    pub count: usize,
    /// Seed of the next sample.
    pub seed: u64,
    /// 0: each position's likeliest character; above: sampled.
    pub temperature: f32,
    /// The couplets written last.
    pub couplets: Vec<String>,
    /// The walk's first couplet.
    pub from: String,
    /// The walk's last couplet.
    pub to: String,
    /// Where on the walk (0: `from`, 1: `to`).
    pub position: f32,
    /// The couplet at `position`.
    pub walked: Option<String>,
    /// A folder to load (natively).
    pub path: String,
    /// The last problem, shown in red.
    pub error: Option<String>,
    /// Whether the model of the Train view's finished run was taken already.
    took_finished_run: bool,
}

impl Default for PoetryView {
    fn default() -> Self {
        Self {
            loaded: None,
            count: 8,
            seed: 0,
            temperature: 0.0,
            couplets: Vec::new(),
            from: "床前明月光，疑是地上霜。".into(),
            to: "舉頭望明月，低頭思故鄉。".into(),
            position: 0.5,
            walked: None,
            path: String::new(),
            error: None,
            took_finished_run: false,
        }
    }
}

impl PoetryView {
    /// Whether a model is loaded.
    pub fn has_model(&self) -> bool {
        self.loaded.is_some()
    }

    /// Loads the poetry VAE in `files` (`source` names it).
    pub fn load_files(&mut self, files: &Checkpoint, source: String) {
        let device = Device::flex();
        let loaded = (|| -> cinder_engine::Result<Loaded> {
            let model = PoetryVae::from_files(files, &device)?;
            let tokenizer = Tokenizer::from_json(files.text("tokenizer.json")?).map_err(|e| {
                cinder_engine::Error::format(files.path("tokenizer.json"), e.to_string())
            })?;
            Ok(Loaded {
                model,
                tokenizer,
                source,
                ends: None,
            })
        })();
        match loaded {
            Ok(l) => {
                self.loaded = Some(l);
                self.error = None;
                self.couplets.clear();
                self.walked = None;
                self.sample();
                self.walk();
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// Writes `count` couplets from the prior with the current seed.
    pub fn sample(&mut self) {
        let Some(l) = &self.loaded else { return };
        let device = Device::flex();
        let z = l.model.prior_samples(self.count, self.seed, &device);
        match readback::resolve(
            "characters",
            l.model.characters(z, self.temperature, self.seed),
        ) {
            Ok(rows) => self.couplets = rows.iter().map(|r| couplet(&l.tokenizer, r)).collect(),
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// The couplet at the slider's position between `from` and `to`.
    pub fn walk(&mut self) {
        let Some(l) = &mut self.loaded else { return };
        let device = Device::flex();
        let len = l.model.config().length;
        let stale = l
            .ends
            .as_ref()
            .is_none_or(|(a, b, _, _)| a != &self.from || b != &self.to);
        if stale {
            let ids = |text: &str| l.model.couplet_ids(&l.tokenizer, text);
            let both = ids(&self.from).and_then(|a| ids(&self.to).map(|b| (a, b)));
            let (a, b) = match both {
                Ok(ab) => ab,
                Err(e) => {
                    self.error = Some(e);
                    self.walked = None;
                    return;
                }
            };
            let data: Vec<i64> = a.iter().chain(&b).map(|&i| i64::from(i)).collect();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [2, len]), &device);
            let (means, _) = l.model.encode(tokens);
            match readback::f32_values(means, "latent means") {
                Ok(m) => {
                    let half = m.len() / 2;
                    l.ends = Some((
                        self.from.clone(),
                        self.to.clone(),
                        m[..half].to_vec(),
                        m[half..].to_vec(),
                    ));
                    self.error = None;
                }
                Err(e) => {
                    self.error = Some(e.to_string());
                    return;
                }
            }
        }
        let Some((_, _, a, b)) = &l.ends else { return };
        let t = self.position;
        let z: Vec<f32> = a
            .iter()
            .zip(b)
            .map(|(x, y)| (1.0 - t) * x + t * y)
            .collect();
        let zd = z.len();
        let z = Tensor::<2>::from_data(TensorData::new(z, [1, zd]), &device);
        match readback::resolve("characters", l.model.characters(z, 0.0, 0)) {
            Ok(rows) => self.walked = rows.first().map(|r| couplet(&l.tokenizer, r)),
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    /// Draws the view; `train` runs its training (on `devices`) and offers the model it
    /// trained.
    pub fn show(&mut self, ui: &mut egui::Ui, train: &mut TrainView, devices: &Devices) {
        egui::CentralPanel::default().show(ui, |ui| {
            ui.heading("Poetry");
            ui.label(
                "Couplets of two five-character lines from a poetry VAE. Train one here (the \
                 Train view's settings with the poetry-vae family) or load a run.",
            );
            self.training_ui(ui, train, devices);
            ui.horizontal(|ui| {
                let trained = train
                    .run
                    .settings
                    .as_ref()
                    .is_some_and(|s| s.model.family == Family::PoetryVae)
                    && (train.downloadable.is_some() || train.run.checkpoint.is_some());
                let button = ui.add_enabled(trained, egui::Button::new("Use the run's model"));
                if button.clicked() {
                    match Self::trained_files(train) {
                        Ok((files, source)) => self.load_files(&files, source),
                        Err(e) => self.error = Some(e),
                    }
                }
                #[cfg(not(target_family = "wasm"))]
                {
                    ui.separator();
                    let l = ui.label("Run folder");
                    ui.text_edit_singleline(&mut self.path).labelled_by(l.id);
                    if ui.button("Load").clicked() {
                        self.load_path();
                    }
                }
            });
            if let Some(e) = &self.error {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            let Some(source) = self.loaded.as_ref().map(|l| l.source.clone()) else {
                return;
            };
            ui.weak(format!("model: {source}"));
            ui.separator();
            ui.horizontal(|ui| {
                if ui.button("Sample").clicked() {
                    self.seed = self.seed.wrapping_add(1);
                    self.sample();
                }
                let l = ui.label("Couplets");
                ui.add(egui::DragValue::new(&mut self.count).range(1..=64))
                    .labelled_by(l.id);
                let l = ui.label("Temperature");
                ui.add(egui::Slider::new(&mut self.temperature, 0.0..=2.0))
                    .labelled_by(l.id);
                ui.weak(format!("seed {}", self.seed));
            });
            for line in &self.couplets {
                ui.label(RichText::new(line).size(20.0));
            }
            ui.separator();
            ui.label(RichText::new("Walk between two couplets").strong());
            let mut changed = false;
            ui.horizontal(|ui| {
                let l = ui.label("From");
                changed |= ui
                    .text_edit_singleline(&mut self.from)
                    .labelled_by(l.id)
                    .changed();
                let l = ui.label("To");
                changed |= ui
                    .text_edit_singleline(&mut self.to)
                    .labelled_by(l.id)
                    .changed();
            });
            let l = ui.label("Position");
            changed |= ui
                .add(egui::Slider::new(&mut self.position, 0.0..=1.0))
                .labelled_by(l.id)
                .changed();
            if changed {
                self.walk();
            }
            if let Some(line) = &self.walked {
                ui.label(RichText::new(line).size(24.0));
            }
        });
    }

    /// Starts a poetry VAE run with the Train view's settings, and shows a VAE run's curves
    /// (total, reconstruction, KL) and newest couplets while it trains.
    fn training_ui(&mut self, ui: &mut egui::Ui, train: &mut TrainView, devices: &Devices) {
        let vae_run = train
            .run
            .settings
            .as_ref()
            .is_some_and(|s| s.model.family == Family::PoetryVae);
        // The model a VAE run just finished with is taken at once (once per run).
        if vae_run && train.status == RunStatus::Finished && !self.took_finished_run {
            self.took_finished_run = true;
            match Self::trained_files(train) {
                Ok((files, source)) => self.load_files(&files, source),
                Err(e) => self.error = Some(e),
            }
        }
        ui.horizontal(|ui| {
            let idle = !train.is_active();
            let shortcut = egui::KeyboardShortcut::new(egui::Modifiers::COMMAND, egui::Key::Enter);
            let pressed = idle && ui.input_mut(|i| i.consume_shortcut(&shortcut));
            let button = ui
                .add_enabled(idle, egui::Button::new("Train a poetry VAE"))
                .on_hover_text("Ctrl+Enter");
            if button.clicked() || pressed {
                self.took_finished_run = false;
                train.form.settings.set_family(Family::PoetryVae);
                train.start(devices, ui.ctx(), None);
            }
            if vae_run {
                let status = match &train.status {
                    RunStatus::Running | RunStatus::Preparing => "training".to_string(),
                    RunStatus::Failed(e) => format!("failed: {e}"),
                    other => format!("{other:?}").to_lowercase(),
                };
                ui.label(format!(
                    "{status}: step {}/{}",
                    train.run.reports.last().map_or(0, |r| r.step),
                    train.run.total_steps
                ));
            }
        });
        if let Some(e) = &train.error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
        if !vae_run || train.run.reports.is_empty() {
            return;
        }
        let series = |f: &dyn Fn(&cinder_engine::train::StepReport) -> Option<f64>| {
            train
                .run
                .reports
                .iter()
                .filter_map(|r| f(r).map(|v| [r.step as f64, v]))
                .collect::<Vec<[f64; 2]>>()
        };
        let lines = vec![
            ("total", series(&|r| Some(r.loss))),
            ("reconstruction", series(&|r| r.reconstruction)),
            ("KL", series(&|r| r.kl)),
        ];
        egui_plot::Plot::new("poetry-loss")
            .height(160.0)
            .legend(egui_plot::Legend::default())
            .x_axis_label("step")
            .show(ui, |p| {
                for (name, points) in lines {
                    p.line(egui_plot::Line::new(
                        name,
                        egui_plot::PlotPoints::from(points),
                    ));
                }
            });
        for (step, text) in train.run.samples.iter().rev().take(4) {
            ui.label(RichText::new(format!("step {step}: {text}")).size(16.0));
        }
        ui.separator();
    }

    /// The files of the model the Train view trained, and a name for them: the run's latest
    /// checkpoint (natively a folder, in the browser the files kept in memory).
    fn trained_files(train: &TrainView) -> Result<(Checkpoint, String), String> {
        if let Some(files) = &train.downloadable {
            return Ok(((**files).clone(), "the run just trained".into()));
        }
        #[cfg(not(target_family = "wasm"))]
        if let Some(path) = &train.run.checkpoint {
            return Checkpoint::read_model_folder(path)
                .map(|c| (c, path.display().to_string()))
                .map_err(|e| e.to_string());
        }
        Err("the run has no checkpoint yet".into())
    }

    /// Loads the run or model folder in `path`.
    #[cfg(not(target_family = "wasm"))]
    fn load_path(&mut self) {
        let path = std::path::PathBuf::from(self.path.trim());
        let files = cinder_engine::run::resolve_model_dir(&path)
            .and_then(|dir| Checkpoint::read_model_folder(&dir));
        match files {
            Ok(files) => self.load_files(&files, path.display().to_string()),
            Err(e) => self.error = Some(e.to_string()),
        }
    }
}
