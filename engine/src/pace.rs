//! Keeping a browser page alive during long computations.
//!
//! In a web page the engine runs on the page's only thread: a training step or a generated
//! token on the CPU backend holds it until done, and nothing is drawn meanwhile. Loops that can
//! run for long (generation, evaluation, training) call [`Pacer::breathe`] between units of
//! work; in the browser it hands the thread back to the page when a frame's worth of time has
//! passed, natively it does nothing.

use web_time::{Duration, Instant};

/// How long the page may be held before it gets the thread back: about two frames.
const SLICE: Duration = Duration::from_millis(30);

/// Tracks when the page last had the thread.
#[derive(Debug)]
pub struct Pacer {
    since: Instant,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            since: Instant::now(),
        }
    }
}

impl Pacer {
    /// Hands the thread to the page if it has waited longer than a slice (browser only).
    pub async fn breathe(&mut self) {
        if self.since.elapsed() >= SLICE {
            yield_now().await;
            self.since = Instant::now();
        }
    }
}

/// Lets the page run its pending work (input, drawing) before continuing.
pub async fn yield_now() {
    #[cfg(target_family = "wasm")]
    {
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let scheduled = web_sys::window().map(|window| {
                window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0)
            });
            if !matches!(scheduled, Some(Ok(_))) {
                // No window (a worker) or no timer: continue at once.
                let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
    }
}
