//! The training worker: opens the run as `cinder train` does and steps it (on its own thread
//! natively, as a task of the page in the browser), taking commands from the Train view and
//! reporting each step.

use std::path::PathBuf;

use async_channel::TryRecvError;
use cinder_engine::data::Corpus;

use cinder_engine::device::{Selected, memory_usage, process_memory};
use cinder_engine::run::Checkpoint;
use cinder_engine::train::StepReport;
use cinder_models::recipe::TrainSettings;

use crate::gui::widgets::{Commands, Events};
use crate::train::{CorpusFrom, Session, open_session};

/// What the view asks of a running worker.
pub(super) enum Command {
    /// Pause after the current step.
    Pause,
    /// Resume a paused run.
    Resume,
    /// Stop, saving a checkpoint.
    Stop,
    /// Save a checkpoint after the current step.
    Save,
}

/// What the worker reports.
pub(super) enum Event {
    Log(String),
    Started {
        run_dir: PathBuf,
        settings: Box<TrainSettings>,
        step: u64,
        total: u64,
    },
    Step(Box<StepReport>),
    Paused,
    Resumed,
    Saved(PathBuf),
    Ended {
        finished: bool,
        checkpoint: Option<PathBuf>,
        /// In the browser, where a run's files live in the page's memory and end with it: the
        /// last checkpoint's files, for the user to download.
        files: Option<Box<Checkpoint>>,
    },
    Failed(String),
}

/// The run a worker is asked to train.
pub(super) struct Job {
    /// The settings of a new run (a resumed run uses its own).
    pub settings: TrainSettings,
    /// Run folder of a new run.
    pub out: Option<PathBuf>,
    /// The run folder to continue.
    pub resume: Option<PathBuf>,
    /// Steps a resumed run goes to.
    pub steps: Option<u64>,
    /// Where corpora are cached.
    pub cache_dir: PathBuf,
    /// The device.
    pub selected: Selected,
    /// The corpus's text, where the view already has it (in the browser, which has no files);
    /// otherwise the run loads it as `cinder train` does.
    pub corpus: Option<Corpus>,
}

/// Opens the run and steps it until it finishes or is stopped, obeying `commands` and
/// reporting through `send`; a run that took steps ends with a checkpoint.
pub(super) async fn run_worker(job: Job, commands: Commands<Command>, events: Events<Event>) {
    let send = |event| events.send(event);
    // Lets the view draw "preparing" before the corpus is read and the tokenizer trained.
    cinder_engine::pace::yield_now().await;
    let session = open_session(
        job.settings,
        job.out,
        job.resume,
        job.steps,
        match job.corpus {
            Some(corpus) => CorpusFrom::Given(corpus),
            None => CorpusFrom::Cache(&job.cache_dir),
        },
        &job.selected,
        &mut |line| send(Event::Log(line)),
    );
    let Session {
        mut trainer,
        mut run,
        run_dir,
        settings,
    } = match session {
        Ok(s) => s,
        Err(e) => {
            send(Event::Failed(format!("{e:#}")));
            return;
        }
    };
    send(Event::Started {
        run_dir,
        step: trainer.step_count(),
        total: trainer.config().steps,
        settings: Box::new(settings),
    });
    let mut paused = false;
    let mut saved_at = None;
    let mut stepped = false;
    loop {
        let command = if paused {
            Some(commands.recv().await.unwrap_or(Command::Stop))
        } else {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => Some(Command::Stop),
            }
        };
        match command {
            Some(Command::Pause) => {
                paused = true;
                send(Event::Paused);
                continue;
            }
            Some(Command::Resume) => {
                paused = false;
                send(Event::Resumed);
            }
            Some(Command::Stop) => break,
            Some(Command::Save) => {
                if saved_at != Some(trainer.step_count()) {
                    match trainer.save_in_async(&mut run).await {
                        Ok(path) => {
                            saved_at = Some(trainer.step_count());
                            send(Event::Saved(path));
                        }
                        Err(e) => send(Event::Log(format!("saving failed: {e}"))),
                    }
                }
                continue;
            }
            None => {}
        }
        if paused {
            continue;
        }
        if trainer.finished() {
            break;
        }
        // The page draws and takes input (a Stop click) between steps.
        cinder_engine::pace::yield_now().await;
        match trainer.step_in_async(&mut run).await {
            Ok(mut report) => {
                stepped = true;
                if report.checkpoint.is_some() {
                    saved_at = Some(report.step);
                }
                if report.memory_in_use.is_none() {
                    // The trainer reads the pool of its autodiff device; ask the base device too.
                    if let Some((used, reserved)) = memory_usage(&job.selected.device) {
                        report.memory_in_use = Some(used);
                        report.memory_reserved = Some(reserved);
                    }
                }
                if report.process_memory.is_none() {
                    report.process_memory = process_memory().map(|(rss, _)| rss);
                }
                send(Event::Step(Box::new(report)));
            }
            Err(e) => {
                send(Event::Failed(format!(
                    "step {}: {e:#}",
                    trainer.step_count() + 1
                )));
                return;
            }
        }
    }
    let mut checkpoint = None;
    if stepped && saved_at != Some(trainer.step_count()) {
        match trainer.save_in_async(&mut run).await {
            Ok(path) => checkpoint = Some(path),
            Err(e) => {
                send(Event::Failed(format!("saving the final checkpoint: {e:#}")));
                return;
            }
        }
    }
    let files = if cfg!(target_family = "wasm") {
        match run
            .latest()
            .and_then(|name| name.map(|n| run.checkpoint(&n)).transpose())
        {
            Ok(files) => files.map(Box::new),
            Err(e) => {
                send(Event::Log(format!(
                    "the checkpoint cannot be offered for download: {e}"
                )));
                None
            }
        }
    } else {
        None
    };
    send(Event::Ended {
        finished: trainer.finished(),
        checkpoint,
        files,
    });
}
