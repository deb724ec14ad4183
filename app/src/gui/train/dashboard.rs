//! The dashboard: the run's status and current figures, live plots of what each step reported
//! (loss with smoothing and held-out points, learning rate, tokens/s, gradient norm, memory),
//! and the samples and log.

use cinder_engine::train::StepReport;
use egui::RichText;
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

use super::super::plots::{memory_series, small_plot, smooth};
use super::super::widgets::bytes;
use super::{RunStatus, TrainView};

impl TrainView {
    pub(super) fn samples_ui(&mut self, ui: &mut egui::Ui) {
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

    pub(super) fn dashboard_ui(&mut self, ui: &mut egui::Ui) {
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
            let keep = if cfg!(target_family = "wasm") {
                "Ctrl+Shift+S: download a PNG of the window"
            } else {
                "Ctrl+Shift+S: a PNG of the window in the run folder"
            };
            if ui.button("Save picture").on_hover_text(keep).clicked() {
                self.take_picture(ui.ctx());
            }
        });
        let reports = &self.run.reports;
        // A skipped non-finite step has no point on the curves (and would poison the smoothing).
        let steps = |f: &dyn Fn(&StepReport) -> Option<f64>| -> Vec<[f64; 2]> {
            reports
                .iter()
                .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| [r.step as f64, v]))
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
        // A variational autoencoder's parts: reconstruction and KL, trained and held out.
        let smoothed = |f: &dyn Fn(&StepReport) -> Option<f64>| -> Vec<[f64; 2]> {
            smooth(&steps(f), self.form.smoothing)
                .into_iter()
                .map(|[x, y]| [x, scale(y)])
                .collect()
        };
        let recon = smoothed(&|r| r.reconstruction);
        let kl = smoothed(&|r| r.kl);
        let eval_recon: Vec<[f64; 2]> = steps(&|r| r.eval_reconstruction.map(scale));
        let eval_kl: Vec<[f64; 2]> = steps(&|r| r.eval_kl.map(scale));
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
            if !recon.is_empty() {
                p.line(Line::new("reconstruction", PlotPoints::from(recon)).width(1.5));
                p.line(Line::new("KL", PlotPoints::from(kl)).width(1.5));
                let held = PlotPoints::from(eval_recon);
                p.points(Points::new("held-out reconstruction", held).radius(3.0));
                p.points(Points::new("held-out KL", PlotPoints::from(eval_kl)).radius(3.0));
            }
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
            if let (Some(recon), Some(kl)) = (last.reconstruction, last.kl) {
                ui.label(format!("(reconstruction {recon:.3}, KL {kl:.3})"));
            }
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
