//! Small pieces shared by the views.

use std::time::{Duration, Instant};

use cinder_engine::device::process_memory;

/// `1536` -> `"1.5 KiB"`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The process's resident memory, read at most twice a second.
#[derive(Default)]
pub struct MemoryProbe {
    last: Option<(Instant, Option<(u64, u64)>)>,
}

impl MemoryProbe {
    /// Current and peak resident bytes, where the system reports them.
    pub fn read(&mut self) -> Option<(u64, u64)> {
        let stale = self
            .last
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_millis(500));
        if stale {
            self.last = Some((Instant::now(), process_memory()));
        }
        self.last.and_then(|(_, v)| v)
    }

    /// "process memory 812.3 MiB (peak 1.1 GiB)".
    pub fn describe(&mut self) -> String {
        match self.read() {
            Some((rss, peak)) => {
                format!("process memory {} (peak {})", bytes(rss), bytes(peak))
            }
            None => "process memory: not reported here".into(),
        }
    }
}

/// A thread that takes commands `C` and reports events `E`, waking the UI for each event.
pub struct Worker<C, E> {
    /// Commands to the thread.
    pub commands: std::sync::mpsc::Sender<C>,
    /// What the thread reported.
    pub events: std::sync::mpsc::Receiver<E>,
    /// The thread, joined on shut-down.
    pub handle: Option<std::thread::JoinHandle<()>>,
}

impl<C: Send + 'static, E: Send + 'static> Worker<C, E> {
    /// Starts thread `name` running `body(commands, send)`. Each `send` wakes the UI at once,
    /// or after `delay(&event)` where that says so (fast streams are drawn a few times a
    /// second: on a software renderer every frame costs CPU the engine needs).
    pub fn spawn(
        name: &str,
        ctx: &egui::Context,
        delay: fn(&E) -> Option<Duration>,
        body: impl FnOnce(&std::sync::mpsc::Receiver<C>, &dyn Fn(E)) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (event_tx, events) = std::sync::mpsc::channel();
        let ctx = ctx.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let send = |event: E| {
                    let wait = delay(&event);
                    let _ = event_tx.send(event);
                    match wait {
                        Some(d) => ctx.request_repaint_after(d),
                        None => ctx.request_repaint(),
                    }
                };
                body(&command_rx, &send);
            })?;
        Ok(Self {
            commands,
            events,
            handle: Some(handle),
        })
    }

    /// Everything the thread reported since the last call, and whether it has ended (its side
    /// of the channel is closed).
    pub fn drain(&self) -> (Vec<E>, bool) {
        let mut events = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(e) => events.push(e),
                Err(std::sync::mpsc::TryRecvError::Empty) => return (events, false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return (events, true),
            }
        }
    }

    /// Waits for the thread to end (after its command channel is closed or it was told to
    /// stop).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A labelled single-line text field; the label names the field for screen readers and tests.
pub fn text_field(ui: &mut egui::Ui, label: &str, value: &mut String) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(egui::TextEdit::singleline(value).desired_width(f32::INFINITY))
            .labelled_by(l.id)
    })
    .inner
}

/// A labelled number field.
pub fn number<T: egui::emath::Numeric>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
    range: std::ops::RangeInclusive<T>,
    speed: f64,
) -> egui::Response {
    let l = ui.label(label);
    let r = ui
        .add(egui::DragValue::new(value).range(range).speed(speed))
        .labelled_by(l.id);
    ui.end_row();
    r
}

/// A labelled picker over the values of a settings enum, each shown as the command line spells
/// it, with its doc line as the hover text.
pub fn choice<T: clap::ValueEnum + PartialEq + Clone>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut T,
) {
    let name = |v: &T| {
        v.to_possible_value()
            .map(|p| p.get_name().to_string())
            .unwrap_or_default()
    };
    egui::ComboBox::from_label(label)
        .selected_text(name(value))
        .show_ui(ui, |ui| {
            for v in T::value_variants() {
                let help = v
                    .to_possible_value()
                    .and_then(|p| p.get_help().map(|h| h.to_string()))
                    .unwrap_or_default();
                ui.selectable_value(value, v.clone(), name(v))
                    .on_hover_text(help);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
