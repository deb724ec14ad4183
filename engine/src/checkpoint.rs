//! Writing files and folders so that a crash never leaves a damaged one behind.
//!
//! A file is written to a temporary sibling, flushed, then renamed over the target. A checkpoint
//! is a folder written the same way (built as `NAME.partial`, renamed to `NAME`), and the run's
//! `latest` pointer is a file replaced by rename, so it always names a complete checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The checkpoint layout version written into every `trainer_state.json`.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Writes `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes a folder atomically: `fill` populates a fresh temporary folder, which then replaces
/// `dir` (an existing `dir` is removed only after the new one is complete).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let partial = dir.with_file_name(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    if let Err(e) = fill(&partial) {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if dir.exists() {
        let old = dir.with_file_name(format!("{name}.old"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&partial, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Everything beyond weights and optimizer moments that a run needs to continue exactly.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Layout version; see [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// The run's seed. Batches and dropout masks are functions of (seed, step), so the seed and
    /// the step together are the complete random state.
    pub seed: u64,
    /// Training tokens consumed so far (the data position).
    pub tokens_seen: u64,
    /// The model family, e.g. "gpt2".
    pub family: String,
    /// The dynamic loss scale of f16 training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
}

/// The file in a run folder that names its newest complete checkpoint.
pub const LATEST: &str = "latest";

/// Points the run folder's `latest` at `checkpoint` (a sub-folder name).
pub fn set_latest(run_dir: &Path, checkpoint: &str) -> Result<()> {
    write_atomic(&run_dir.join(LATEST), checkpoint.as_bytes())
}

/// Resolves a model path: a run folder (through its `latest` pointer) or a model folder itself.
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let pointer = path.join(LATEST);
    if pointer.is_file() {
        let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
        let dir = path.join(name.trim());
        if !dir.is_dir() {
            return Err(Error::format(
                &pointer,
                format!("names checkpoint '{}', which does not exist", name.trim()),
            ));
        }
        return Ok(dir);
    }
    Ok(path.to_path_buf())
}

/// Reads a checkpoint's `trainer_state.json`, checking its format version.
pub fn read_trainer_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&path, format!("not a valid trainer state: {e}")))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(Error::format(
            &path,
            format!(
                "checkpoint format {} is not supported (expected {CHECKPOINT_FORMAT})",
                state.format
            ),
        ));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_folder_write_keeps_the_previous_one() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a.txt"), b"one"))
            .unwrap_or_else(|e| panic!("{e}"));
        let failed = write_dir_atomic(&dir, |d| {
            write_atomic(&d.join("a.txt"), b"two")?;
            Err(Error::Data("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("a.txt")).unwrap_or_default(),
            "one"
        );
        assert!(!root.path().join("ckpt.partial").exists());
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a.txt"), b"three"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            std::fs::read_to_string(dir.join("a.txt")).unwrap_or_default(),
            "three"
        );
    }

    #[test]
    fn latest_pointer_resolves() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.path().join("step-2")).unwrap_or_else(|e| panic!("{e}"));
        set_latest(root.path(), "step-2").unwrap_or_else(|e| panic!("{e}"));
        let dir = resolve_model_dir(root.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(dir.ends_with("step-2"));
        set_latest(root.path(), "step-9").unwrap_or_else(|e| panic!("{e}"));
        assert!(resolve_model_dir(root.path()).is_err());
    }
}
