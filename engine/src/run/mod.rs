//! A training run: its settings (`run.json`), its metrics (`metrics.jsonl`, one line per step,
//! samples included), its checkpoints (`checkpoints/step-NNNNNNN/`, the newest named by
//! `latest`, the oldest pruned), and resuming from them. Everything goes through a
//! [`RunStorage`], so the same logic serves a folder on disk and a run held in memory.
//!
//! A driver (the command line's progress loop, the desktop app's worker, a browser page) calls
//! [`Run::step`], which runs one [`Trainer::step`] and records what it reported.

mod checkpoint;
mod storage;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use checkpoint::{
    CHECKPOINT_FORMAT, Checkpoint, LATEST, MODEL_FILES, SENTENCE_FILES, TrainerState, WEIGHTS,
    WEIGHTS_INDEX, resolve_model_dir,
};
pub use storage::{FsStorage, MemoryStorage, RunStorage};

use crate::lm::LanguageModel;
use crate::train::{StepReport, Trainer};
use crate::{Error, Result, readback};

/// The run's settings, as its driver wrote them.
pub const RUN_FILE: &str = "run.json";
/// One JSON line per step.
pub const METRICS: &str = "metrics.jsonl";
/// The folder holding checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";

/// One training run's files.
pub struct Run {
    storage: Box<dyn RunStorage>,
}

impl Run {
    /// The run kept in `storage`, to be written: the leftovers of interrupted writes (a
    /// checkpoint folder half written, a temporary file) are removed first.
    pub fn new(mut storage: Box<dyn RunStorage>) -> Result<Self> {
        storage.clean()?;
        Ok(Self { storage })
    }

    /// The run kept in `storage`, only to be read: nothing is removed, since another process
    /// may be writing it at this moment (a dashboard watching a run that trains).
    pub fn open(storage: Box<dyn RunStorage>) -> Self {
        Self { storage }
    }

    /// Where `name` lives (`runs/tang/metrics.jsonl`), for messages.
    pub fn locate(&self, name: &str) -> std::path::PathBuf {
        self.storage.locate(name)
    }

    /// The run's settings, or `None` for a new run.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        let Some(bytes) = self.storage.read(RUN_FILE)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::format(self.locate(RUN_FILE), format!("not a valid run file: {e}")))
    }

    /// Records the run's settings.
    pub fn write_settings<T: Serialize>(&mut self, settings: &T) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(settings).map_err(|e| Error::serialize(RUN_FILE, e))?;
        self.storage.write(RUN_FILE, &json)
    }

    /// Appends one step's report to the metrics.
    pub fn record(&mut self, report: &StepReport) -> Result<()> {
        let line = serde_json::to_string(report).map_err(|e| Error::serialize(METRICS, e))?;
        self.storage.append_line(METRICS, &line)
    }

    /// Every step recorded so far. A last line torn by a crash is ignored; a damaged line
    /// before it is an error naming the line.
    pub fn metrics(&self) -> Result<Vec<StepReport>> {
        let Some(bytes) = self.storage.read(METRICS)? else {
            return Ok(Vec::new());
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut out = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<StepReport>(line) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => {
                    return Err(Error::format(
                        self.locate(METRICS),
                        format!("line {}: {e}", i + 1),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Keeps the metrics of steps up to `step` (a resumed run repeats the later ones), and
    /// drops a torn last line.
    pub fn truncate_metrics(&mut self, step: u64) -> Result<()> {
        let kept: String = self
            .metrics()?
            .iter()
            .filter(|r| r.step <= step)
            .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::serialize(METRICS, e))?;
        self.storage.write(METRICS, kept.as_bytes())
    }

    /// Writes `ckpt` as the checkpoint of `step`, points `latest` at it and deletes all but the
    /// newest `keep`. Returns where it was written.
    pub fn save_checkpoint(
        &mut self,
        step: u64,
        ckpt: &Checkpoint,
        keep: usize,
    ) -> Result<std::path::PathBuf> {
        let name = format!("{CHECKPOINTS}/step-{step:07}");
        self.storage.write_folder(&name, &mut ckpt.files())?;
        self.storage.write(LATEST, name.as_bytes())?;
        let all = self.storage.list_folders(CHECKPOINTS)?;
        let excess = all.len().saturating_sub(keep.max(1));
        for old in all.iter().take(excess).filter(|o| **o != name) {
            self.storage.remove_folder(old)?;
        }
        Ok(self.locate(&name))
    }

    /// The newest complete checkpoint's name, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        let Some(bytes) = self.storage.read(LATEST)? else {
            return Ok(None);
        };
        Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
    }

    /// Reads the checkpoint `name` (as [`latest`](Self::latest) gives it).
    pub fn checkpoint(&self, name: &str) -> Result<Checkpoint> {
        let files = self.storage.read_folder(name)?.ok_or_else(|| {
            Error::format(
                self.locate(LATEST),
                format!("names checkpoint '{name}', which does not exist"),
            )
        })?;
        let mut ckpt = Checkpoint::new(self.locate(name));
        for (file, bytes) in files {
            ckpt.insert(&file, bytes);
        }
        Ok(ckpt)
    }

    /// Writes the trainer's current state as a checkpoint.
    pub fn save<M: LanguageModel>(&mut self, trainer: &Trainer<M>) -> Result<std::path::PathBuf> {
        readback::resolve("the weights", self.save_async(trainer))
    }

    /// [`save`](Self::save), reading the weights back asynchronously.
    pub async fn save_async<M: LanguageModel>(
        &mut self,
        trainer: &Trainer<M>,
    ) -> Result<std::path::PathBuf> {
        let ckpt = trainer.checkpoint_async().await?;
        let keep = trainer.config().keep_checkpoints;
        self.save_checkpoint(trainer.step_count(), &ckpt, keep)
    }

    /// Runs one optimizer step and records it: the metrics line, and the checkpoint when one
    /// falls due (its location in the report).
    pub fn step<M: LanguageModel>(&mut self, trainer: &mut Trainer<M>) -> Result<StepReport> {
        readback::resolve("the loss", self.step_async(trainer))
    }

    /// [`step`](Self::step), awaiting every readback: the version a browser page drives.
    pub async fn step_async<M: LanguageModel>(
        &mut self,
        trainer: &mut Trainer<M>,
    ) -> Result<StepReport> {
        let mut report = trainer.step_async().await?;
        self.record(&report)?;
        if trainer.checkpoint_due() {
            report.checkpoint = Some(self.save_async(trainer).await?);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: u64) -> StepReport {
        StepReport {
            step,
            loss: 1.0 / step as f64,
            ..StepReport::default()
        }
    }

    fn exercise(mut run: Run) {
        assert_eq!(run.settings::<serde_json::Value>().unwrap(), None);
        run.write_settings(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(
            run.settings::<serde_json::Value>().unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        for s in 1..=4 {
            run.record(&report(s)).unwrap();
            let mut c = Checkpoint::new("x");
            c.insert("w.bin", vec![s as u8]);
            run.save_checkpoint(s, &c, 2).unwrap();
        }
        assert_eq!(run.metrics().unwrap().len(), 4);
        let latest = run.latest().unwrap().unwrap();
        assert_eq!(latest, "checkpoints/step-0000004");
        assert_eq!(
            run.checkpoint(&latest).unwrap().file("w.bin").unwrap(),
            &[4]
        );
        assert_eq!(
            run.storage.list_folders(CHECKPOINTS).unwrap(),
            ["checkpoints/step-0000003", "checkpoints/step-0000004"]
        );
        run.truncate_metrics(2).unwrap();
        let steps: Vec<u64> = run.metrics().unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2]);
    }

    #[test]
    fn the_same_run_logic_works_on_disk_and_in_memory() {
        exercise(Run::new(Box::new(MemoryStorage::new())).unwrap());
        let dir = tempfile::tempdir().unwrap();
        exercise(Run::new(Box::new(FsStorage::new(dir.path()))).unwrap());
    }

    #[test]
    fn a_torn_last_metrics_line_is_ignored_and_repaired() {
        let mut storage = MemoryStorage::new();
        let good = serde_json::to_string(&report(1)).unwrap();
        storage
            .write(METRICS, format!("{good}\n{{\"step\": 2, \"lo").as_bytes())
            .unwrap();
        let mut run = Run::new(Box::new(storage)).unwrap();
        assert_eq!(run.metrics().unwrap().len(), 1);
        run.truncate_metrics(5).unwrap();
        run.record(&report(2)).unwrap();
        assert_eq!(run.metrics().unwrap().len(), 2);
    }
}
