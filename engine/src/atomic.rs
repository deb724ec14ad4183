//! Files and folders written whole or not at all.
//!
//! A file is written to a temporary sibling (the `tempfile` crate), flushed to disk, then
//! renamed over the target. A folder is built as `NAME.partial` and renamed to `NAME`, so a
//! crash leaves either the previous folder or the new one, plus at worst a `.partial` leftover
//! that [`remove_leftovers`] clears.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Suffix of a folder being built by [`write_dir_atomic`].
pub const PARTIAL: &str = ".partial";

/// Prefix of the temporary file [`write_atomic`] writes before renaming it over its target.
const TMP_PREFIX: &str = ".tmp-";

/// Writes `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes a folder atomically: `fill` populates a fresh temporary folder, which then replaces
/// `dir` (an existing `dir` is removed only after the new one is complete).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::io(dir, std::io::ErrorKind::InvalidInput.into()))?;
    let partial = dir.with_file_name(format!("{name}{PARTIAL}"));
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

/// Writes `files` (name, bytes) as the folder `dir`, atomically (see [`write_dir_atomic`]).
pub fn write_files<'a, 'b>(
    dir: &Path,
    files: impl IntoIterator<Item = (&'a str, &'b [u8])>,
) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        for (name, bytes) in files {
            write_atomic(&tmp.join(name), bytes)?;
        }
        Ok(())
    })
}

/// Suffix of a folder being deleted by [`remove_dir_atomic`].
const REMOVING: &str = ".removing";

/// Deletes the folder `dir` so that a crash midway never leaves it half deleted under its own
/// name: it is renamed to `NAME.removing` first (which [`remove_leftovers`] finishes off).
pub fn remove_dir_atomic(dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::io(dir, std::io::ErrorKind::InvalidInput.into()))?;
    let doomed = dir.with_file_name(format!("{name}{REMOVING}"));
    std::fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
}

/// Removes what interrupted writes left in `dir`: the temporary files of [`write_atomic`]
/// (`.tmp-*`), the folders of [`write_dir_atomic`] (`*.partial`, `*.old`) and those
/// [`remove_dir_atomic`] was deleting (`*.removing`). A `NAME.old`
/// without its `NAME` (a crash between the two renames that replace a folder) is the previous
/// complete version: it is put back rather than removed.
pub fn remove_leftovers(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            if let Some(base) = name.strip_suffix(".old")
                && !dir.join(base).exists()
            {
                std::fs::rename(&path, dir.join(base)).map_err(|e| Error::io(&path, e))?;
            } else if name.ends_with(PARTIAL) || name.ends_with(".old") || name.ends_with(REMOVING)
            {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        } else if name.starts_with(TMP_PREFIX) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_folder_write_keeps_the_previous_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a.txt"), b"one")).unwrap();
        let failed = write_dir_atomic(&dir, |d| {
            write_atomic(&d.join("a.txt"), b"two")?;
            Err(Error::Data("disk full".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "one");
        assert!(!root.path().join("ckpt.partial").exists());
        write_dir_atomic(&dir, |d| write_atomic(&d.join("a.txt"), b"three")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "three");
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_removed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("step-3.partial")).unwrap();
        std::fs::create_dir_all(root.path().join("step-2")).unwrap();
        std::fs::write(root.path().join(".tmp-a1b2"), b"half a file").unwrap();
        // Killed between the renames that replace step-4: the new version is complete in
        // .partial, the old one in .old; the old one comes back.
        std::fs::create_dir_all(root.path().join("step-4.old")).unwrap();
        std::fs::write(root.path().join("step-4.old/a.txt"), b"old").unwrap();
        std::fs::create_dir_all(root.path().join("step-4.partial")).unwrap();
        std::fs::create_dir_all(root.path().join("step-1.removing")).unwrap();
        remove_leftovers(root.path()).unwrap();
        assert!(!root.path().join("step-1.removing").exists());
        assert!(!root.path().join("step-3.partial").exists());
        assert!(!root.path().join("step-4.partial").exists());
        assert!(!root.path().join(".tmp-a1b2").exists());
        assert!(root.path().join("step-2").exists());
        assert_eq!(
            std::fs::read_to_string(root.path().join("step-4/a.txt")).unwrap(),
            "old"
        );
    }
}
