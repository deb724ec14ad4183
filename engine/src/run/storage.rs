//! Where a run keeps its files. The run logic ([`Run`](super::Run)) speaks only to
//! [`RunStorage`], so it works the same on a filesystem ([`FsStorage`]) and in memory
//! ([`MemoryStorage`]: tests, and the browser, where a page has no filesystem).
//!
//! Names are `/`-separated paths relative to the run (`metrics.jsonl`,
//! `checkpoints/step-0000200/model.safetensors`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::atomic::{remove_dir_atomic, remove_leftovers, write_atomic, write_files};
use crate::{Error, Result};

/// The storage of one run.
pub trait RunStorage: Send {
    /// A file's contents, or `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// Replaces a file whole: after a crash it holds either the old or the new contents.
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()>;

    /// Appends `line` and a newline to a file, creating it.
    fn append_line(&mut self, name: &str, line: &str) -> Result<()>;

    /// Writes a folder of files as one unit, replacing an existing folder of that name only
    /// once the new one is complete.
    fn write_folder(
        &mut self,
        name: &str,
        files: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> Result<()>;

    /// The files of a folder, by name (`None` when the folder does not exist).
    fn read_folder(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>>;

    /// The complete folders directly inside `dir`, sorted by name.
    fn list_folders(&self, dir: &str) -> Result<Vec<String>>;

    /// Removes a folder and everything in it.
    fn remove_folder(&mut self, name: &str) -> Result<()>;

    /// Removes what an interrupted folder write left behind.
    fn clean(&mut self) -> Result<()>;

    /// Where `name` lives, for messages and for tools that open files by path.
    fn locate(&self, name: &str) -> PathBuf;
}

/// A run folder on the filesystem.
#[derive(Clone, Debug)]
pub struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Storage rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The run folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl RunStorage for FsStorage {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        read_optional(&self.root.join(name))
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.root.join(name), bytes)
    }

    fn append_line(&mut self, name: &str, line: &str) -> Result<()> {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // One write call per line, so a crash tears at most the last line.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Error::io(&path, e))
    }

    fn write_folder(
        &mut self,
        name: &str,
        files: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> Result<()> {
        write_files(&self.root.join(name), files)
    }

    fn read_folder(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                out.insert(entry.file_name().to_string_lossy().to_string(), bytes);
            }
        }
        Ok(Some(out))
    }

    fn list_folders(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.root.join(dir);
        let Ok(entries) = std::fs::read_dir(&path) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.contains('.'))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove_folder(&mut self, name: &str) -> Result<()> {
        remove_dir_atomic(&self.root.join(name))
    }

    fn clean(&mut self) -> Result<()> {
        remove_leftovers(&self.root)?;
        remove_leftovers(&self.root.join(super::CHECKPOINTS))
    }

    fn locate(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// A run kept in memory: every write is complete the moment it returns.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    files: BTreeMap<String, Vec<u8>>,
}

impl MemoryStorage {
    /// An empty run.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RunStorage for MemoryStorage {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(name).cloned())
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.files.insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    fn append_line(&mut self, name: &str, line: &str) -> Result<()> {
        let file = self.files.entry(name.to_string()).or_default();
        file.extend_from_slice(line.as_bytes());
        file.push(b'\n');
        Ok(())
    }

    fn write_folder(
        &mut self,
        name: &str,
        files: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> Result<()> {
        let new: Vec<(String, Vec<u8>)> = files
            .map(|(f, b)| (format!("{name}/{f}"), b.to_vec()))
            .collect();
        self.remove_folder(name)?;
        self.files.extend(new);
        Ok(())
    }

    fn read_folder(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
        let prefix = format!("{name}/");
        let out: BTreeMap<String, Vec<u8>> = self
            .files
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                (!rest.contains('/')).then(|| (rest.to_string(), v.clone()))
            })
            .collect();
        Ok((!out.is_empty()).then_some(out))
    }

    fn list_folders(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{dir}/");
        let mut names: Vec<String> = self
            .files
            .keys()
            .filter_map(|k| {
                let rest = k.strip_prefix(&prefix)?;
                let (folder, _) = rest.split_once('/')?;
                Some(format!("{dir}/{folder}"))
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    fn remove_folder(&mut self, name: &str) -> Result<()> {
        let prefix = format!("{name}/");
        self.files.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    fn clean(&mut self) -> Result<()> {
        Ok(())
    }

    fn locate(&self, name: &str) -> PathBuf {
        Path::new("memory").join(name)
    }
}
