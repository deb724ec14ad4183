//! Pieces of the training dashboard's plots: series from step reports, smoothing, small plots.

use cinder_engine::train::StepReport;
use egui_plot::{Legend, Line, Plot, PlotPoints};

/// Device memory (in use and reserved) where the backend reports it, process memory otherwise,
/// in MiB against the step.
pub(super) fn memory_series(reports: &[StepReport]) -> Vec<(&'static str, Vec<[f64; 2]>)> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let series = |f: &dyn Fn(&StepReport) -> Option<u64>| -> Vec<[f64; 2]> {
        reports
            .iter()
            .filter_map(|r| f(r).map(|b| [r.step as f64, mib(b)]))
            .collect()
    };
    let used = series(&|r| r.memory_in_use);
    if !used.is_empty() {
        return vec![
            ("device in use", used),
            ("device reserved", series(&|r| r.memory_reserved)),
        ];
    }
    vec![("process resident", series(&|r| r.process_memory))]
}

pub(super) fn small_plot(
    ui: &mut egui::Ui,
    title: &str,
    id: &str,
    width: f32,
    height: f32,
    link: egui::Id,
    series: Vec<(&str, Vec<[f64; 2]>)>,
) {
    ui.vertical(|ui| {
        ui.set_width(width);
        ui.label(title);
        Plot::new(id)
            .height(height)
            .width(width)
            .legend(Legend::default())
            .link_axis(link, [true, false])
            .show(ui, |p| {
                for (name, points) in series {
                    p.line(Line::new(name, PlotPoints::from(points)));
                }
            });
    });
}

/// TensorBoard's smoothing: an exponential moving average with its start-up bias removed.
pub fn smooth(points: &[[f64; 2]], weight: f64) -> Vec<[f64; 2]> {
    let weight = weight.clamp(0.0, 0.999);
    let mut avg = 0.0;
    let mut norm = 0.0;
    points
        .iter()
        .map(|&[x, y]| {
            avg = avg * weight + (1.0 - weight) * y;
            norm = norm * weight + (1.0 - weight);
            [x, avg / norm]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_starts_at_the_first_value_and_follows_the_trend() {
        let pts = [[1.0, 4.0], [2.0, 2.0], [3.0, 2.0]];
        let s = smooth(&pts, 0.5);
        assert!((s[0][1] - 4.0).abs() < 1e-12);
        // (0.5*0.5*4 + 0.5*2) / 0.75 = 2.666..
        assert!((s[1][1] - 8.0 / 3.0).abs() < 1e-12);
        assert!(s[2][1] < s[1][1]);
        let none = smooth(&pts, 0.0);
        assert!((none[1][1] - 2.0).abs() < 1e-12);
    }
}
