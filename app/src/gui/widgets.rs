//! Small pieces shared by the views.

use web_time::{Duration, Instant};

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

/// The commands a worker receives.
pub type Commands<C> = async_channel::Receiver<C>;

/// How a worker reports: each event wakes the UI at once, or after the delay its kind asks for
/// (fast streams are drawn a few times a second: on a software renderer every frame costs CPU
/// the engine needs).
pub struct Events<E> {
    tx: async_channel::Sender<E>,
    ctx: egui::Context,
    delay: fn(&E) -> Option<Duration>,
}

impl<E> Events<E> {
    /// Reports `event` (dropped when the view has gone).
    pub fn send(&self, event: E) {
        let wait = (self.delay)(&event);
        let _ = self.tx.try_send(event);
        match wait {
            Some(d) => self.ctx.request_repaint_after(d),
            None => self.ctx.request_repaint(),
        }
    }
}

/// Work that takes commands `C` and reports events `E`: natively on its own thread, in the
/// browser as a task on the page's thread (the engine's asynchronous readbacks and its pacing
/// hand the thread back to the page). The body is the same `async` function in both.
pub struct Worker<C, E> {
    /// Commands to the worker.
    pub commands: async_channel::Sender<C>,
    events: async_channel::Receiver<E>,
    #[cfg(not(target_family = "wasm"))]
    handle: Option<std::thread::JoinHandle<()>>,
}

impl<C: Send + 'static, E: Send + 'static> Worker<C, E> {
    /// Starts `body(commands, events)` as worker `name`; `delay` says how soon each event
    /// should be drawn.
    pub fn spawn<F, Fut>(
        name: &str,
        ctx: &egui::Context,
        delay: fn(&E) -> Option<Duration>,
        body: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(Commands<C>, Events<E>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let (commands, command_rx) = async_channel::unbounded();
        let (tx, events) = async_channel::unbounded();
        let sink = Events {
            tx,
            ctx: ctx.clone(),
            delay,
        };
        #[cfg(not(target_family = "wasm"))]
        {
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || pollster::block_on(body(command_rx, sink)))?;
            Ok(Self {
                commands,
                events,
                handle: Some(handle),
            })
        }
        #[cfg(target_family = "wasm")]
        {
            let _ = name;
            wasm_bindgen_futures::spawn_local(body(command_rx, sink));
            Ok(Self { commands, events })
        }
    }

    /// Sends `command` (ignored once the worker has ended).
    pub fn send(&self, command: C) {
        let _ = self.commands.try_send(command);
    }

    /// Everything the worker reported since the last call, and whether it has ended (its side
    /// of the channel is closed).
    pub fn drain(&self) -> (Vec<E>, bool) {
        let mut events = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(e) => events.push(e),
                Err(async_channel::TryRecvError::Empty) => return (events, false),
                Err(async_channel::TryRecvError::Closed) => return (events, true),
            }
        }
    }

    /// Waits for the worker to end (after its command channel is closed or it was told to
    /// stop). In the browser the task ends on its own; nothing can wait for it there.
    pub fn join(self) {
        #[cfg(not(target_family = "wasm"))]
        {
            let mut this = self;
            if let Some(h) = this.handle.take() {
                let _ = h.join();
            }
        }
        #[cfg(target_family = "wasm")]
        drop(self);
    }
}

/// Whether this build has the system's file dialogs (the browser has none: files are dropped on
/// the page instead).
pub const HAS_DIALOGS: bool = cfg!(not(target_family = "wasm"));

/// Asks the user for a file with one of `extensions` (`None` when cancelled, or in the browser).
pub fn pick_file(kind: &str, extensions: &[&str]) -> Option<std::path::PathBuf> {
    #[cfg(not(target_family = "wasm"))]
    {
        rfd::FileDialog::new()
            .add_filter(kind, extensions)
            .pick_file()
    }
    #[cfg(target_family = "wasm")]
    {
        let _ = (kind, extensions);
        None
    }
}

/// Asks the user for a folder, starting in `start` when given (`None` when cancelled, or in the
/// browser).
pub fn pick_folder(start: Option<&str>) -> Option<std::path::PathBuf> {
    #[cfg(not(target_family = "wasm"))]
    {
        let dialog = rfd::FileDialog::new();
        match start {
            Some(dir) => dialog.set_directory(dir),
            None => dialog,
        }
        .pick_folder()
    }
    #[cfg(target_family = "wasm")]
    {
        let _ = start;
        None
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

/// A tar archive of `files` under the folder `folder` (for a download in the browser).
pub fn tar<'a>(
    folder: &str,
    files: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, String> {
    #[cfg(target_family = "wasm")]
    {
        let mut archive = ::tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = ::tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            archive
                .append_data(&mut header, format!("{folder}/{name}"), bytes)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        archive.into_inner().map_err(|e| e.to_string())
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = (folder, files.count());
        Err("downloads are made in the browser; the desktop writes runs to disk".into())
    }
}

/// Hands `bytes` of the media type `mime` to the browser as a download named `name`
/// (natively: an error).
pub fn download(name: &str, mime: &str, bytes: &[u8]) -> Result<(), String> {
    #[cfg(target_family = "wasm")]
    {
        let error = |e: wasm_bindgen::JsValue| format!("{e:?}");
        let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
        let options = web_sys::BlobPropertyBag::new();
        options.set_type(mime);
        let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)
            .map_err(error)?;
        let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(error)?;
        let link: web_sys::HtmlAnchorElement = super::web::new_element("a")?;
        link.set_href(&url);
        link.set_download(name);
        link.click();
        web_sys::Url::revoke_object_url(&url).map_err(error)?;
        Ok(())
    }
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = (name, mime, bytes);
        Err("downloads are made in the browser; the desktop writes runs to disk".into())
    }
}

/// A picture of the window as PNG bytes.
pub fn png(image: &egui::ColorImage) -> Result<Vec<u8>, String> {
    let [width, height] = image.size.map(|n| n as u32);
    let pixels = image::RgbaImage::from_raw(width, height, image.as_raw().to_vec())
        .ok_or_else(|| format!("a {width} x {height} picture without its pixels"))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    pixels
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(bytes.into_inner())
}

/// Keeps a picture of the window named `name`: a download in the browser, a file in `dir` (or
/// the current folder) on the desktop. Says where it went.
pub fn keep_picture(
    image: &egui::ColorImage,
    dir: Option<&std::path::Path>,
    name: &str,
) -> Result<String, String> {
    let bytes = png(image)?;
    if cfg!(target_family = "wasm") {
        download(name, "image/png", &bytes)?;
        Ok(format!("downloaded {name}"))
    } else {
        let path = dir.unwrap_or(std::path::Path::new(".")).join(name);
        cinder_engine::atomic::write_atomic(&path, &bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(format!("picture saved: {}", path.display()))
    }
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
