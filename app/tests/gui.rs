//! The desktop app driven through its widgets (egui_kittest, no window): training with live
//! curves and samples, pause and resume, reopening a run, chat with streaming, a broken model.

// A set-up step that fails (a temporary folder, a file write) should fail the test loudly.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cinder::gui::{CinderApp, Devices, RunStatus, Settings, View};
use cinder_engine::data::CorpusSource;
use cinder_engine::device::DeviceChoice;
use cinder_engine::optim::OptimizerKind;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A small text corpus: enough distinct lines for a held-out split.
fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let text: String = (0..400)
        .map(|i| {
            format!(
                "the quick brown fox {i} jumps over the lazy dog {}\n",
                i * 7 % 13
            )
        })
        .collect();
    std::fs::write(&path, text).expect("write corpus");
    path
}

/// The lines of [`corpus`] as JSONL (input, target) pairs: a sentence and its number.
fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    let text: String = (0..400)
        .map(|i| {
            let pair = serde_json::json!({
                "input": format!("the quick brown fox {i} jumps"),
                "target": format!("{}", i * 7 % 13),
            });
            format!("{pair}\n")
        })
        .collect();
    std::fs::write(&path, text).expect("write pairs");
    path
}

/// Couplets of two five-character lines from 20 characters, one per line.
fn couplets(dir: &Path) -> PathBuf {
    let path = dir.join("couplets.txt");
    let chars: Vec<char> = "春風花月夜江水白雲山青草落日明秋聲入古城".chars().collect();
    let text: String = (0..400)
        .map(|i: usize| {
            let line = |s: usize| -> String {
                (0..5)
                    .map(|k| chars[s * 10 + (i * 3 + k * 7 + s) % 10])
                    .collect()
            };
            format!("{}，{}。\n", line(0), line(1))
        })
        .collect();
    std::fs::write(&path, text).expect("write couplets");
    path
}

/// Settings for a run that takes a fraction of a second per step on the CPU.
fn tiny_run(dir: &Path, steps: u64) -> Settings {
    let mut s = Settings::default();
    let m = &mut s.train.settings.model;
    m.corpus = CorpusSource::File(corpus(dir));
    m.n_layer = Some(1);
    m.n_head = Some(2);
    m.n_embd = Some(32);
    let a = &mut s.train.settings.train;
    a.context = 32;
    a.batch_size = 4;
    a.steps = steps;
    a.eval_every = 5;
    a.eval_batches = 2;
    a.sample_every = 5;
    a.sample_tokens = 12;
    a.checkpoint_every = 0;
    a.warmup = 2;
    s.train.settings.device = DeviceChoice::Cpu;
    s.train.out = Some(dir.join("run"));
    s
}

#[test]
fn the_optimizer_picker_offers_every_optimizer_and_trains_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = tiny_run(dir.path(), 6);
    settings.train.settings.train.optimizer = OptimizerKind::AdaFactor.default_config();
    settings.train.settings.train.lr = 0.3;
    let mut h = harness(settings, dir.path());
    h.get_by_label("Relative step");
    h.get_by_label("Start").click();
    h.step();
    wait_for(&mut h, 120, "the AdaFactor run", |app| {
        app.train.status == RunStatus::Finished
    });
    let saved = std::fs::read_to_string(dir.path().join("run/run.json")).expect("read");
    assert!(saved.contains("\"adafactor\""), "{saved}");
    let r = &h.state().train.run.reports;
    assert!(r[5].loss < r[0].loss, "{} -> {}", r[0].loss, r[5].loss);
}

#[test]
fn the_family_picker_trains_each_family_with_its_own_fields() {
    for (family, own_field) in [
        ("llama", "Key/value heads"),
        ("gpt2-ml", "Dropout"),
        ("bert", "Dropout"),
        ("t5", "Dropout"),
        ("poetry-vae", "Free bits (nats)"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = tiny_run(dir.path(), 6);
        if family == "t5" {
            // An encoder-decoder trains on pairs.
            settings.train.settings.model.corpus = CorpusSource::File(pairs(dir.path()));
        }
        if family == "poetry-vae" {
            // The poem machine trains on couplets of two five-character lines.
            settings.train.settings.model.corpus = CorpusSource::File(couplets(dir.path()));
        }
        let mut h = harness(settings, dir.path());
        // The family picker shows the current family; open it and pick another.
        h.get_by_role_and_label(Role::ComboBox, "Family").click();
        h.step();
        h.step();
        h.get_by_label(family).click();
        h.step();
        h.get_by_label(own_field);
        h.get_by_label("Start").click();
        h.step();
        wait_for(&mut h, 120, family, |app| {
            app.train.status == RunStatus::Finished
        });
        let saved = std::fs::read_to_string(dir.path().join("run/run.json")).expect("read");
        assert!(
            saved.contains(&format!("\"family\": \"{family}\"")),
            "{saved}"
        );
        let r = &h.state().train.run.reports;
        assert!(
            r[5].loss < r[0].loss,
            "{family}: {} -> {}",
            r[0].loss,
            r[5].loss
        );
        let log = h.state().train.run.log.join("\n");
        assert!(log.contains(&format!("model {family}:")), "{log}");
    }
}

fn harness<'a>(settings: Settings, cache: &Path) -> Harness<'a, CinderApp> {
    let app = CinderApp::new(settings, Devices::cpu_only(), cache);
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        // A random model's text and the Tang poems hold characters the test fonts lack.
        .allow_missing_glyphs()
        .build_ui_state(|ui, app: &mut CinderApp| app.show(ui), app)
}

/// Steps frames (letting the workers run) until `done` holds; fails after `secs`.
fn wait_for(
    h: &mut Harness<'_, CinderApp>,
    secs: u64,
    what: &str,
    done: impl Fn(&CinderApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}; train status {:?}, log {:?}, chat error {:?}",
            h.state().train.status,
            h.state().train.run.log,
            h.state().chat.error
        );
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    h.step();
}

#[test]
fn training_from_the_form_draws_curves_and_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(tiny_run(dir.path(), 12), dir.path());
    h.get_by_label("Start").click();
    h.step();
    wait_for(&mut h, 120, "the run to finish", |app| {
        app.train.status == RunStatus::Finished
    });
    let run = &h.state().train.run;
    assert_eq!(run.reports.len(), 12);
    assert!(run.reports.iter().all(|r| r.loss.is_finite()));
    assert!(
        run.reports[11].loss < run.reports[0].loss,
        "loss did not fall: {} -> {}",
        run.reports[0].loss,
        run.reports[11].loss
    );
    // Samples at steps 5, 10 and the last; shown newest first, tagged with the step.
    let steps: Vec<u64> = run.samples.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, vec![5, 10, 12]);
    assert!(run.reports.iter().all(|r| r.process_memory.is_some()));
    h.get_by_label("step 12");
    h.get_by_label_contains("loss ");
    h.get_by_label_contains("process resident ");
    assert!(run.checkpoint.as_ref().is_some_and(|c| c.is_dir()));
    assert!(dir.path().join("run/metrics.jsonl").is_file());
}

#[test]
fn pause_resume_stop_and_continue_from_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(tiny_run(dir.path(), 400), dir.path());
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    h.step();
    wait_for(&mut h, 120, "a few steps", |app| {
        app.train.run.reports.len() >= 3
    });
    h.get_by_label("Pause").click();
    h.step();
    wait_for(&mut h, 60, "the pause", |app| {
        app.train.status == RunStatus::Paused
    });
    let paused_at = h.state().train.run.reports.len();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    assert_eq!(
        h.state().train.run.reports.len(),
        paused_at,
        "steps taken while paused"
    );
    h.get_by_label("Resume").click();
    h.step();
    wait_for(&mut h, 60, "steps after resuming", |app| {
        app.train.run.reports.len() >= paused_at + 3
    });
    // Ctrl+S saves a checkpoint of the running run.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::S);
    h.step();
    wait_for(&mut h, 60, "the checkpoint", |app| {
        app.train.run.checkpoint.is_some()
    });
    h.get_by_label("Stop").click();
    h.step();
    wait_for(&mut h, 60, "the stop", |app| {
        app.train.status == RunStatus::Stopped
    });
    let stopped_at = h
        .state()
        .train
        .run
        .reports
        .last()
        .map(|r| r.step)
        .expect("steps before the stop");
    assert!(stopped_at < 400);

    // A fresh app opens the run from its folder, with its curves, and continues it.
    let mut h = harness(tiny_run(dir.path(), 400), dir.path());
    let folder = h.get_by_role_and_label(Role::TextInput, "Run folder");
    folder.focus();
    folder.type_text(&dir.path().join("run").display().to_string());
    h.step();
    h.get_by_label("Open").click();
    h.step();
    assert_eq!(
        h.state().train.status,
        RunStatus::Opened,
        "{:?} (path '{}')",
        h.state().train.error,
        h.state().train.form.open_path
    );
    assert_eq!(h.state().train.run.reports.len() as u64, stopped_at);
    h.state_mut().train.run.total_steps = stopped_at + 3;
    h.step();
    h.get_by_label("Continue training").click();
    h.step();
    wait_for(&mut h, 120, "the continued run", |app| {
        app.train.status == RunStatus::Finished
    });
    let run = &h.state().train.run;
    let last = run.reports.last().map(|r| r.step);
    assert_eq!(last, Some(stopped_at + 3));
    // Curves hold each step once: the continued steps replaced nothing twice.
    let mut steps: Vec<u64> = run.reports.iter().map(|r| r.step).collect();
    steps.dedup();
    assert_eq!(steps.len(), run.reports.len());
}

#[test]
fn chat_streams_tokens_and_survives_a_broken_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.gguf");
    std::fs::write(&broken, b"GGUF\x03\x00\x00\x00 this is not a model").expect("write");
    let mut settings = Settings {
        view: View::Chat,
        ..Settings::default()
    };
    settings.chat.device = DeviceChoice::Cpu;
    settings.chat.model = broken.display().to_string();
    settings.chat.max_tokens = 12;
    settings.chat.sampling.temperature = 1.0;
    settings.chat.sampling.seed = 3;
    let mut h = harness(settings, dir.path());

    h.get_by_label("Load").click();
    h.step();
    wait_for(&mut h, 60, "the load error", |app| app.chat.error.is_some());
    let error = h.state().chat.error.clone().expect("a load error");
    assert!(error.contains("broken.gguf"), "{error}");
    assert!(h.state().chat.model.is_none());
    h.get_by_label_contains("broken.gguf");

    // The app is still usable: load a working model and chat.
    let model = fixtures().join("llama-tiny");
    h.state_mut().chat.settings.model = model.display().to_string();
    h.step();
    h.get_by_label("Load").click();
    h.step();
    wait_for(&mut h, 60, "the model", |app| app.chat.model.is_some());
    assert!(h.state().chat.error.is_none());
    let input = h.get_by_role_and_label(Role::TextInput, "Message");
    input.focus();
    input.type_text("hello there");
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    // The question is in the transcript at once (the tiny model may already have answered).
    assert_eq!(h.state().chat.transcript.len(), 2, "Enter did not send");
    wait_for(&mut h, 60, "the answer", |app| !app.chat.generating);
    let chat = &h.state().chat;
    assert_eq!(chat.transcript.len(), 2);
    assert_eq!(chat.transcript[0].text, "hello there");
    assert!(!chat.transcript[1].text.is_empty());
    assert!(chat.streamed_pieces >= 2, "{} pieces", chat.streamed_pieces);
    assert!(
        chat.last_speed
            .as_deref()
            .is_some_and(|s| s.contains("tokens/s"))
    );
    // A second turn goes on from the first.
    let input = h.get_by_role_and_label(Role::TextInput, "Message");
    input.focus();
    input.type_text("and again");
    h.step();
    h.get_by_label("Send").click();
    h.step();
    wait_for(&mut h, 60, "the second answer", |app| !app.chat.generating);
    assert_eq!(h.state().chat.transcript.len(), 4);
}

#[test]
fn theme_and_views_switch_and_settings_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Settings::default(), dir.path());
    assert!(h.state().dark);
    h.get_by_label("Light theme").click();
    h.step();
    h.step();
    assert!(!h.state().dark);
    assert_eq!(h.ctx.theme(), egui::Theme::Light);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Num2);
    h.step();
    assert_eq!(h.state().view, View::Chat);
    h.get_by_label("Train").click();
    h.step();
    assert_eq!(h.state().view, View::Train);
    let saved = serde_json::to_string(&h.state().settings()).expect("serialize");
    let back: Settings = serde_json::from_str(&saved).expect("deserialize");
    assert!(!back.dark);
    assert_eq!(back.train, h.state().train.form);
    // Older or partial settings fall back to defaults field by field.
    let partial: Settings = serde_json::from_str(r#"{"dark": false}"#).expect("partial");
    assert_eq!(partial.train, Settings::default().train);
}

#[test]
fn the_poetry_view_samples_and_walks_with_the_vae_the_train_view_trained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = tiny_run(dir.path(), 6);
    let m = &mut settings.train.settings.model;
    m.family = cinder_models::recipe::Family::PoetryVae;
    m.corpus = CorpusSource::File(couplets(dir.path()));
    settings.train.settings.train.lr = 1e-2;
    let mut h = harness(settings, dir.path());
    // Trained from the Poetry view, with its curves and couplets shown as it goes.
    h.get_by_label("Poetry").click();
    h.step();
    h.get_by_label("Train a poetry VAE").click();
    h.step();
    wait_for(&mut h, 120, "the VAE run", |app| {
        app.train.status == RunStatus::Finished
    });
    // Reconstruction and KL are reported at every step.
    assert!(h.state().train.run.reports.iter().all(|r| r.kl.is_some()));
    assert!(!h.state().train.run.samples.is_empty());
    h.get_by_label("Use the run's model").click();
    h.step();
    let poetry = &h.state().poetry;
    assert!(poetry.has_model(), "{:?}", poetry.error);
    assert_eq!(poetry.couplets.len(), 8);
    for line in &poetry.couplets {
        let c: Vec<char> = line.chars().collect();
        assert_eq!((c.len(), c[5], c[11]), (12, '，', '。'), "{line}");
    }
    let first = poetry.couplets.clone();
    h.get_by_label("Sample").click();
    h.step();
    assert_ne!(h.state().poetry.couplets, first, "a new seed, new couplets");
    // The walk between two couplets of the corpus, at both ends and midway.
    let from = "春風花月夜，青草落日明。";
    h.state_mut().poetry.from = from.into();
    h.state_mut().poetry.to = "江水白雲山，秋聲入古城。".into();
    let mut walk = Vec::new();
    for t in [0.0, 0.5, 1.0] {
        h.state_mut().poetry.position = t;
        h.state_mut().poetry.walk();
        h.step();
        let walked = h.state().poetry.walked.clone();
        assert!(walked.is_some(), "{:?}", h.state().poetry.error);
        walk.push(walked);
    }
    h.get_by_role_and_label(Role::SpinButton, "Position");
    assert!(
        walk.iter()
            .all(|w| w.as_ref().is_some_and(|w| w.chars().count() == 12))
    );
}

/// Bad values in the training form (a missing corpus, an empty one, a width the heads do not
/// divide, a run folder that is not one) each end in an error shown in the view, naming the
/// file or the setting, and leave the app usable: the same form then trains.
#[test]
fn bad_form_values_show_an_error_and_leave_the_app_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let mut h = harness(tiny_run(dir.path(), 4), dir.path());
    let good = h.state().train.form.settings.clone();
    let failed = |app: &CinderApp| {
        matches!(app.train.status, RunStatus::Failed(_)) || app.train.error.is_some()
    };
    let message = |app: &CinderApp| match &app.train.status {
        RunStatus::Failed(m) => m.clone(),
        _ => app.train.error.clone().unwrap_or_default(),
    };
    let missing = dir.path().join("no-such-corpus.txt");
    // Each case: what the error must name, and how the form is spoiled.
    type Spoil<'a> = Box<dyn Fn(&mut CinderApp) + 'a>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "no-such-corpus.txt",
            Box::new(|app| {
                app.train.form.settings.model.corpus = CorpusSource::File(missing.clone());
            }),
        ),
        (
            "empty.txt",
            Box::new(|app| {
                app.train.form.settings.model.corpus = CorpusSource::File(empty.clone());
            }),
        ),
        (
            "--n-embd",
            Box::new(|app| app.train.form.settings.model.n_embd = Some(31)),
        ),
    ];
    for (needle, spoil) in &cases {
        h.state_mut().train.form.settings = good.clone();
        spoil(h.state_mut());
        h.step();
        h.get_by_label("Start").click();
        h.step();
        wait_for(&mut h, 60, needle, failed);
        let shown = message(h.state());
        assert!(shown.contains(needle), "{needle}: {shown}");
        // Shown in the view (the corpus field may name the file too).
        assert!(
            h.query_all_by_label_contains(needle).count() >= 1,
            "{needle} is not shown"
        );
    }
    // A folder that is not a run.
    h.state_mut().train.form.open_path = dir.path().join("nowhere").display().to_string();
    h.step();
    h.get_by_label("Open").click();
    h.step();
    let shown = h.state().train.error.clone().unwrap_or_default();
    assert!(shown.contains("nowhere"), "{shown}");
    // The same form, with good values, trains.
    h.state_mut().train.form.settings = good;
    h.step();
    h.get_by_label("Start").click();
    h.step();
    wait_for(&mut h, 120, "the run after the errors", |app| {
        app.train.status == RunStatus::Finished
    });
    assert_eq!(h.state().train.run.reports.len(), 4);
}
