//! The training worker: sets up a run with [`prepare`] and steps it on its own thread, taking
//! commands from the Train view and reporting each step.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use cinder_engine::device::{Selected, memory_usage, process_memory};
use cinder_engine::train::StepReport;

use crate::cli::TrainArgs;
use crate::train::{Session, prepare};

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
        args: Box<TrainArgs>,
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
    },
    Failed(String),
}

/// Sets up the run and steps it until it finishes or is stopped, obeying `commands` and
/// reporting through `send`; a run that took steps ends with a checkpoint.
pub(super) fn run_worker(
    args: TrainArgs,
    cache_dir: &Path,
    selected: &Selected,
    commands: &Receiver<Command>,
    send: &dyn Fn(Event),
) {
    let session = match prepare(args, cache_dir, selected, &mut |line| {
        send(Event::Log(line))
    }) {
        Ok(s) => s,
        Err(e) => {
            send(Event::Failed(format!("{e:#}")));
            return;
        }
    };
    let Session {
        mut trainer,
        run_dir,
        args,
    } = session;
    send(Event::Started {
        run_dir: run_dir.clone(),
        step: trainer.step_count(),
        total: trainer.config().steps,
        args: Box::new(args),
    });
    let mut paused = false;
    let mut saved_at = None;
    let mut stepped = false;
    let save = |trainer: &cinder_engine::train::Trainer<_>| trainer.save_checkpoint(&run_dir);
    loop {
        let command = if paused {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => Some(Command::Stop),
            }
        } else {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Command::Stop),
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
                    match save(&trainer) {
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
        match trainer.step() {
            Ok(mut report) => {
                stepped = true;
                if report.checkpoint.is_some() {
                    saved_at = Some(report.step);
                }
                if report.memory_in_use.is_none() {
                    // The trainer reads the pool of its autodiff device; ask the base device too.
                    if let Some((used, reserved)) = memory_usage(&selected.device) {
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
        match save(&trainer) {
            Ok(path) => checkpoint = Some(path),
            Err(e) => {
                send(Event::Failed(format!("saving the final checkpoint: {e:#}")));
                return;
            }
        }
    }
    send(Event::Ended {
        finished: trainer.finished(),
        checkpoint,
    });
}
