//! The training form: edits a run's [`TrainSettings`] (the same struct `cinder train` builds
//! from its flags and `run.json` stores), so the form and the command line share every default.

use std::path::PathBuf;

use cinder_engine::data::CorpusSource;
use cinder_engine::optim::{OptimizerConfig, OptimizerKind};
use cinder_engine::tokenizer::TokenizerKind;
use cinder_models::recipe::{Family, Gpt2Preset, TrainSettings};
use egui::RichText;
use serde::{Deserialize, Serialize};

use super::super::Devices;
use super::super::widgets::{HAS_DIALOGS, choice, number, pick_file, text_field};

/// The form: the run's settings plus where it goes and how the curves are drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainForm {
    /// The run's settings.
    pub settings: TrainSettings,
    /// Run folder (`None`: runs/<corpus>, or runs/<corpus>-N).
    pub out: Option<PathBuf>,
    /// Exponential smoothing of the training-loss curve (0 = none).
    pub smoothing: f64,
    /// Plot losses on a log scale.
    pub log_scale: bool,
    /// The run folder typed into "Open run".
    pub open_path: String,
}

impl Default for TrainForm {
    fn default() -> Self {
        Self {
            settings: TrainSettings::default(),
            out: None,
            smoothing: 0.6,
            log_scale: false,
            open_path: String::new(),
        }
    }
}

fn section(ui: &mut egui::Ui, title: &str) {
    ui.add_space(4.0);
    ui.label(RichText::new(title).strong());
}

impl TrainForm {
    /// Draws the form's fields.
    pub fn ui(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        self.data_ui(ui);
        self.model_ui(ui);
        self.optimizer_ui(ui);
        self.run_ui(ui, devices);
    }

    fn data_ui(&mut self, ui: &mut egui::Ui) {
        let recipe = &mut self.settings.model;
        section(ui, "Data");
        let kind = match &recipe.corpus {
            CorpusSource::Tang => "Tang poems",
            CorpusSource::Fortunes => "Fortunes",
            CorpusSource::File(_) => "Text file",
        };
        egui::ComboBox::from_label("Corpus")
            .selected_text(kind)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut recipe.corpus, CorpusSource::Tang, "Tang poems");
                ui.selectable_value(&mut recipe.corpus, CorpusSource::Fortunes, "Fortunes");
                if ui
                    .selectable_label(kind == "Text file", "Text file")
                    .clicked()
                    && kind != "Text file"
                {
                    recipe.corpus = CorpusSource::File(PathBuf::new());
                }
            });
        if let CorpusSource::File(path) = &mut recipe.corpus {
            let mut text = path.display().to_string();
            text_field(ui, "Text file", &mut text);
            *path = PathBuf::from(text);
            if HAS_DIALOGS
                && ui.button("Choose file…").clicked()
                && let Some(file) = pick_file("text", &["txt", "md", "text"])
            {
                *path = file;
            }
            #[cfg(target_family = "wasm")]
            if ui
                .button("Choose file…")
                .on_hover_text("Or drop a text file on the page")
                .clicked()
            {
                crate::gui::web::choose_files(".txt,.text,.md");
            }
        }
        let tokenizers = [
            TokenizerKind::Char,
            TokenizerKind::Bpe(8192),
            TokenizerKind::Bpe(2048),
            TokenizerKind::Bpe(16384),
        ];
        egui::ComboBox::from_label("Tokenizer")
            .selected_text(recipe.tokenizer.to_string())
            .show_ui(ui, |ui| {
                for t in tokenizers {
                    ui.selectable_value(&mut recipe.tokenizer, t, t.to_string());
                }
            });
    }

    fn model_ui(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.settings;
        section(ui, "Model");
        let mut family = s.model.family;
        choice::<Family>(ui, "Family", &mut family);
        if family != s.model.family {
            s.set_family(family);
        }
        if !s.model.family.has_kv_heads() {
            s.model.n_kv_head = None;
        }
        let before = s.model.preset;
        choice::<Gpt2Preset>(ui, "Size", &mut s.model.preset);
        if s.model.preset != before {
            // A new preset brings its own shape; the fields below stay editable.
            s.model.n_layer = None;
            s.model.n_head = None;
            s.model.n_embd = None;
        }
        let shape = s.model.preset.config();
        egui::Grid::new("model-grid").num_columns(2).show(ui, |ui| {
            let m = &mut s.model;
            let mut layers = m.n_layer.unwrap_or(shape.n_layer);
            let mut heads = m.n_head.unwrap_or(shape.n_head);
            let mut width = m.n_embd.unwrap_or(shape.n_embd);
            number(ui, "Layers", &mut layers, 1..=96, 0.1);
            number(ui, "Heads", &mut heads, 1..=64, 0.1);
            number(ui, "Width", &mut width, 8..=8192, 1.0);
            if m.family.has_kv_heads() {
                let mut kv = m.n_kv_head.unwrap_or(heads);
                number(ui, "Key/value heads", &mut kv, 1..=64, 0.1);
                m.n_kv_head = (kv != heads).then_some(kv);
            }
            number(ui, "Context", &mut s.train.context, 2..=4096, 1.0);
            if m.family.has_dropout() {
                number(ui, "Dropout", &mut m.dropout, 0.0..=0.9, 0.01);
            }
            if m.family == Family::PoetryVae {
                let t = &mut s.train;
                let auto = t.steps / 5;
                let mut warmup = t.kl_warmup.unwrap_or(auto);
                number(ui, "KL warm-up steps", &mut warmup, 0..=1_000_000, 1.0);
                t.kl_warmup = (warmup != auto).then_some(warmup);
                number(ui, "Free bits (nats)", &mut t.free_bits, 0.0..=10.0, 0.01);
            }
            // Only a value that differs from the preset is an override.
            m.n_layer = (layers != shape.n_layer).then_some(layers);
            m.n_head = (heads != shape.n_head).then_some(heads);
            m.n_embd = (width != shape.n_embd).then_some(width);
            if !width.is_multiple_of(heads) {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    "width must be a multiple of heads",
                );
                ui.end_row();
            }
            if m.n_kv_head
                .is_some_and(|kv| kv == 0 || !heads.is_multiple_of(kv))
            {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    "heads must be a multiple of key/value heads",
                );
                ui.end_row();
            }
        });
    }

    fn optimizer_ui(&mut self, ui: &mut egui::Ui) {
        let t = &mut self.settings.train;
        section(ui, "Optimizer");
        let mut kind = t.optimizer.kind();
        choice::<OptimizerKind>(ui, "Optimizer", &mut kind);
        if kind != t.optimizer.kind() {
            t.optimizer = kind.default_config();
        }
        egui::Grid::new("optim-grid").num_columns(2).show(ui, |ui| {
            let l = ui.label("Learning rate");
            ui.add(
                egui::DragValue::new(&mut t.lr)
                    .range(1e-6..=1.0)
                    .speed(1e-4)
                    .custom_formatter(|v, _| format!("{v:.1e}")),
            )
            .labelled_by(l.id);
            ui.end_row();
            number(
                ui,
                "Final LR fraction",
                &mut t.min_lr_ratio,
                0.0..=1.0,
                0.01,
            );
            number(ui, "Warmup steps", &mut t.warmup, 0..=100_000, 1.0);
            match &mut t.optimizer {
                OptimizerConfig::Sgd(c) => {
                    number(ui, "Weight decay", &mut c.weight_decay, 0.0..=1.0, 0.01);
                    number(ui, "Momentum", &mut c.momentum, 0.0..=0.999, 0.01);
                    ui.label("");
                    ui.checkbox(&mut c.nesterov, "Nesterov");
                    ui.end_row();
                }
                OptimizerConfig::Heun(c) => {
                    number(ui, "Weight decay", &mut c.weight_decay, 0.0..=1.0, 0.01);
                }
                OptimizerConfig::AdaFactor(c) => {
                    number(ui, "Momentum (beta 1)", &mut c.beta1, 0.0..=0.999, 0.01);
                    ui.label("");
                    ui.checkbox(&mut c.relative_step, "Relative step");
                    ui.end_row();
                }
                OptimizerConfig::AdamW(c) => {
                    number(ui, "Weight decay", &mut c.weight_decay, 0.0..=1.0, 0.01);
                    number(ui, "Beta 1", &mut c.beta1, 0.0..=0.9999, 0.001);
                    number(ui, "Beta 2", &mut c.beta2, 0.0..=0.9999, 0.001);
                }
                OptimizerConfig::Lion(c) => {
                    number(ui, "Weight decay", &mut c.weight_decay, 0.0..=1.0, 0.01);
                    number(ui, "Beta 1", &mut c.beta1, 0.0..=0.9999, 0.001);
                    number(ui, "Beta 2", &mut c.beta2, 0.0..=0.9999, 0.001);
                }
            }
            number(ui, "Gradient clip", &mut t.grad_clip, 0.0..=100.0, 0.05);
        });
    }

    fn run_ui(&mut self, ui: &mut egui::Ui, devices: &Devices) {
        let t = &mut self.settings.train;
        section(ui, "Run");
        egui::Grid::new("run-grid").num_columns(2).show(ui, |ui| {
            number(ui, "Steps", &mut t.steps, 1..=10_000_000, 1.0);
            number(ui, "Batch", &mut t.batch_size, 1..=4096, 0.2);
            number(ui, "Accumulate", &mut t.accumulate, 1..=1024, 0.1);
            number(ui, "Eval every", &mut t.eval_every, 0..=1_000_000, 1.0);
            number(ui, "Sample every", &mut t.sample_every, 0..=1_000_000, 1.0);
            number(ui, "Sample tokens", &mut t.sample_tokens, 1..=4096, 1.0);
            number(
                ui,
                "Checkpoint every",
                &mut t.checkpoint_every,
                0..=1_000_000,
                1.0,
            );
            number(ui, "Seed", &mut t.seed, 0..=u64::MAX, 1.0);
        });
        choice(ui, "Precision", &mut t.precision);
        choice(ui, "Recompute", &mut t.recompute);
        choice(ui, "On NaN or infinity", &mut t.on_nonfinite);
        choice(ui, "Windows start at", &mut t.windows);
        devices.picker(ui, &mut self.settings.device);
        let mut out = self
            .out
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        text_field(ui, "Run folder (empty: runs/<corpus>)", &mut out);
        self.out = (!out.trim().is_empty()).then(|| PathBuf::from(out.trim()));
    }
}
