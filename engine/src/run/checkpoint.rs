//! What a checkpoint holds: a set of named files, written and read as one unit by a run's
//! storage. For a language model these are a Hugging Face model folder (`config.json`,
//! `model.safetensors`, `tokenizer.json`) plus the trainer's `optimizer.safetensors`,
//! `trainer_state.json` and `train_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The checkpoint layout version written into every `trainer_state.json`.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// The file in a run folder that names its newest complete checkpoint.
pub const LATEST: &str = "latest";

/// A model's weights in a Hugging Face folder.
pub const WEIGHTS: &str = "model.safetensors";
/// The index of a model's weights split into shards.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
/// The files of a Hugging Face model folder that loading a model reads.
pub const MODEL_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    WEIGHTS,
    WEIGHTS_INDEX,
];
/// sentence-transformers' settings in an encoder's folder (sequence length, pooling), read with
/// the [`MODEL_FILES`] when present.
pub const SENTENCE_FILES: [&str; 3] = [
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
];

/// The files of one checkpoint (or of any model folder), by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    files: BTreeMap<String, Vec<u8>>,
    /// Where the checkpoint came from, for error messages.
    source: PathBuf,
}

impl Checkpoint {
    /// An empty checkpoint; `source` names it in errors.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            files: BTreeMap::new(),
            source: source.into(),
        }
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files.insert(name.to_string(), bytes);
    }

    /// A file's bytes, or an error naming the checkpoint and the missing file.
    pub fn file(&self, name: &str) -> Result<&[u8]> {
        self.files.get(name).map(Vec::as_slice).ok_or_else(|| {
            Error::format(
                self.path(name),
                "missing from the checkpoint (an incomplete or foreign folder?)",
            )
        })
    }

    /// A file's bytes, if the checkpoint has it.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// An optional file as UTF-8 text.
    pub fn get_text(&self, name: &str) -> Result<Option<&str>> {
        self.files
            .contains_key(name)
            .then(|| self.text(name))
            .transpose()
    }

    /// The name of the folder or files the checkpoint came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Reads the files of a Hugging Face model folder that loading a model needs (config,
    /// tokenizer, chat template, weights: `model.safetensors`, or every shard that
    /// `model.safetensors.index.json` lists); other files (optimizer state) stay on disk.
    pub fn read_model_folder(dir: &Path) -> Result<Self> {
        let mut ckpt = Self::new(dir);
        let read = |ckpt: &mut Self, name: &str| -> Result<()> {
            let path = dir.join(name);
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                ckpt.insert(name, bytes);
            }
            Ok(())
        };
        for name in MODEL_FILES.iter().chain(&SENTENCE_FILES) {
            read(&mut ckpt, name)?;
        }
        if ckpt.get(WEIGHTS).is_none() && ckpt.get(WEIGHTS_INDEX).is_some() {
            for shard in ckpt.shard_names()? {
                read(&mut ckpt, &shard)?;
            }
        }
        Ok(ckpt)
    }

    /// The shard files `model.safetensors.index.json` lists.
    pub fn shard_names(&self) -> Result<std::collections::BTreeSet<String>> {
        let path = self.path(WEIGHTS_INDEX);
        let json: serde_json::Value = serde_json::from_str(self.text(WEIGHTS_INDEX)?)
            .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| Error::format(&path, "missing the 'weight_map' object"))?;
        let mut shards = std::collections::BTreeSet::new();
        for shard in map.values() {
            let shard = shard
                .as_str()
                .ok_or_else(|| Error::format(&path, "a 'weight_map' entry is not a file name"))?;
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                return Err(Error::format(
                    &path,
                    format!("shard name '{shard}' leaves the folder"),
                ));
            }
            shards.insert(shard.to_string());
        }
        Ok(shards)
    }

    /// A file's bytes as UTF-8 text.
    pub fn text(&self, name: &str) -> Result<&str> {
        std::str::from_utf8(self.file(name)?)
            .map_err(|e| Error::format(self.path(name), format!("not UTF-8 text: {e}")))
    }

    /// The path that names `file` in messages.
    pub fn path(&self, file: &str) -> PathBuf {
        self.source.join(file)
    }

    /// Every file, by name.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
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

impl TrainerState {
    /// File name inside a checkpoint.
    pub const FILE: &'static str = "trainer_state.json";

    /// Reads a checkpoint's trainer state, checking its format version.
    pub fn read(ckpt: &Checkpoint) -> Result<Self> {
        let path = ckpt.path(Self::FILE);
        let state: Self = serde_json::from_str(ckpt.text(Self::FILE)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_pointer_resolves() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("step-2")).unwrap();
        crate::atomic::write_atomic(&root.path().join(LATEST), b"step-2").unwrap();
        let dir = resolve_model_dir(root.path()).unwrap();
        assert!(dir.ends_with("step-2"));
        crate::atomic::write_atomic(&root.path().join(LATEST), b"step-9").unwrap();
        assert!(resolve_model_dir(root.path()).is_err());
    }

    #[test]
    fn a_missing_file_or_a_future_format_is_named() {
        let mut c = Checkpoint::new("runs/x/checkpoints/step-1");
        let err = TrainerState::read(&c).unwrap_err().to_string();
        assert!(err.contains("step-1/trainer_state.json"), "{err}");
        c.insert(
            TrainerState::FILE,
            br#"{"format": 9, "step": 1, "seed": 0, "tokens_seen": 0, "family": "gpt2"}"#.to_vec(),
        );
        let err = TrainerState::read(&c).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}
