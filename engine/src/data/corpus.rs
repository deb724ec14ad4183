//! Corpora: the Tang poems, Debian's fortunes, or any text file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Error, Result, rng};

/// Where a corpus comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorpusSource {
    /// The complete Tang poems (npm `chinese-poetry@2.0.1`), cleaned, one poem per line.
    Tang,
    /// Debian's `fortunes` package: English quotes.
    Fortunes,
    /// Any UTF-8 text file.
    File(PathBuf),
}

impl FromStr for CorpusSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "tang" => Self::Tang,
            "fortunes" => Self::Fortunes,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for CorpusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tang => f.write_str("tang"),
            Self::Fortunes => f.write_str("fortunes"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

crate::serde_as_string!(CorpusSource);

/// A corpus with its held-out split.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Training text.
    pub train: String,
    /// Held-out text for evaluation.
    pub val: String,
}

/// The directory where Debian's `fortunes` package puts its files.
pub const FORTUNES_DIR: &str = "/usr/share/games/fortunes";

impl Corpus {
    /// Loads the corpus, fetching the Tang poems into `cache_dir` first if they are not there.
    pub fn load(source: &CorpusSource, cache_dir: &Path) -> Result<Self> {
        match source {
            CorpusSource::Tang => {
                #[cfg(not(target_family = "wasm"))]
                {
                    let dir = super::fetch::tang(cache_dir, false)?;
                    Self::from_split_files(&dir.join("train.txt"), &dir.join("val.txt"))
                }
                #[cfg(target_family = "wasm")]
                {
                    let _ = cache_dir;
                    Err(Error::Data(
                        "the Tang corpus is fetched natively only".into(),
                    ))
                }
            }
            CorpusSource::Fortunes => Self::fortunes(Path::new(FORTUNES_DIR)),
            CorpusSource::File(path) => Self::from_text_file(path),
        }
    }

    #[cfg(not(target_family = "wasm"))]
    fn from_split_files(train: &Path, val: &Path) -> Result<Self> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p, e));
        Ok(Self {
            train: read(train)?,
            val: read(val)?,
        })
    }

    /// A plain text file: the last 5% of its lines are held out (the whole file is used for
    /// both when it has fewer than 20 lines).
    pub fn from_text_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_text(path, bytes)
    }

    /// [`from_text_file`](Self::from_text_file) for a file already read (`path` names it in
    /// errors): a file dropped on the web page.
    pub fn from_text(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::format(path, format!("not UTF-8 text: {e}")))?;
        if text.trim().is_empty() {
            return Err(Error::format(path, "the corpus file is empty"));
        }
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        if lines.len() < 20 {
            return Ok(Self {
                train: text.clone(),
                val: text,
            });
        }
        let cut = lines.len() - lines.len() / 20;
        Ok(Self {
            train: lines[..cut].concat(),
            val: lines[cut..].concat(),
        })
    }

    /// Debian's fortunes: every quote of every file in `dir`, 2% held out.
    pub fn fortunes(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::io(
                dir,
                std::io::Error::new(
                    e.kind(),
                    format!("{e} (install it with `apt-get install fortunes`)"),
                ),
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none())
            .collect();
        files.sort();
        let mut quotes = Vec::new();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for quote in text.split("\n%\n") {
                let quote = quote.trim_matches(|c| c == '%' || c == '\n');
                if !quote.trim().is_empty() {
                    quotes.push(quote.to_string());
                }
            }
        }
        if quotes.is_empty() {
            return Err(Error::format(
                dir,
                "no fortunes found (apt-get install fortunes)",
            ));
        }
        let (train, val) = split_held_out(quotes, 2);
        Ok(Self {
            train: train.join("\n\n") + "\n",
            val: val.join("\n\n") + "\n",
        })
    }
}

/// Splits documents into (train, held-out) by a hash of their text: about `percent`% are held
/// out, the same ones whatever the order they come in.
pub fn split_held_out(docs: Vec<String>, percent: u64) -> (Vec<String>, Vec<String>) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for doc in docs {
        let h = doc.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        if rng::mix64(h) % 100 < percent {
            val.push(doc);
        } else {
            train.push(doc);
        }
    }
    (train, val)
}

fn closing(c: char) -> Option<char> {
    Some(match c {
        '（' => '）',
        '(' => ')',
        '〔' => '〕',
        '[' => ']',
        '【' => '】',
        '{' => '}',
        '［' => '］',
        _ => return None,
    })
}

/// Cleans one poem: joins its lines, drops bracketed notes, and rejects it (None) if anything
/// but CJK characters and Chinese punctuation remains, or if brackets do not balance.
pub fn clean_poem(paragraphs: &[&str]) -> Option<String> {
    let joined: String = paragraphs.concat();
    let mut out = String::with_capacity(joined.len());
    let mut stack: Vec<char> = Vec::new();
    for c in joined.chars() {
        if let Some(close) = closing(c) {
            stack.push(close);
            continue;
        }
        if stack.last() == Some(&c) {
            stack.pop();
            continue;
        }
        if matches!(c, '）' | ')' | '〕' | ']' | '】' | '}' | '］') {
            return None;
        }
        if stack.is_empty() && !c.is_whitespace() {
            out.push(c);
        }
    }
    if !stack.is_empty() || out.is_empty() {
        return None;
    }
    let allowed_punct = "，。？！；：、";
    let is_cjk =
        |c: char| ('\u{4E00}'..='\u{9FFF}').contains(&c) || ('\u{3400}'..='\u{4DBF}').contains(&c);
    if !out.chars().all(|c| is_cjk(c) || allowed_punct.contains(c)) {
        return None;
    }
    // The package repeats marks (`。。`, `？。`, mostly at a poem's end): a run of marks keeps
    // one, the first that ends a sentence if any does.
    let ends = ['。', '？', '！'];
    let mut collapsed = String::with_capacity(out.len());
    for c in out.chars() {
        let last = collapsed.chars().next_back();
        match last {
            Some(last) if allowed_punct.contains(last) && allowed_punct.contains(c) => {
                if !ends.contains(&last) && ends.contains(&c) {
                    collapsed.pop();
                    collapsed.push(c);
                }
            }
            _ => collapsed.push(c),
        }
    }
    if !collapsed.ends_with(ends) || !collapsed.chars().any(is_cjk) {
        return None;
    }
    Some(collapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_drops_notes_and_broken_entries() {
        assert_eq!(
            clean_poem(&["床前明月光（一作看月光），", "疑是地上霜。"]).as_deref(),
            Some("床前明月光，疑是地上霜。")
        );
        assert_eq!(
            clean_poem(&["白日依山盡，黃河入海流。"]).as_deref(),
            Some("白日依山盡，黃河入海流。")
        );
        assert_eq!(
            clean_poem(&["□□依山盡，黃河入海流。"]),
            None,
            "lost characters"
        );
        assert_eq!(
            clean_poem(&["白日依山盡（，黃河入海流。"]),
            None,
            "unbalanced note"
        );
        assert_eq!(clean_poem(&[]), None);
        assert_eq!(clean_poem(&["abc，def。"]), None);
        // Repeated marks keep one, the sentence's end where there is one.
        assert_eq!(
            clean_poem(&[
                "白日依山盡，，黃河入海流？。",
                "欲窮千里目，。更上一層樓。。。"
            ])
            .as_deref(),
            Some("白日依山盡，黃河入海流？欲窮千里目。更上一層樓。")
        );
    }

    #[test]
    fn held_out_split_is_order_independent() {
        let docs: Vec<String> = (0..1000).map(|i| format!("doc {i}")).collect();
        let (train, val) = split_held_out(docs.clone(), 5);
        assert_eq!(train.len() + val.len(), 1000);
        assert!((20..90).contains(&val.len()), "{}", val.len());
        let mut reversed = docs;
        reversed.reverse();
        let (_, val2) = split_held_out(reversed, 5);
        let mut a = val.clone();
        let mut b = val2;
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn text_file_holds_out_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let c = Corpus::from_text_file(&path).unwrap();
        assert!(c.val.starts_with("line 95\n") && c.train.ends_with("line 94\n"));
        std::fs::write(&path, "").unwrap();
        let err = Corpus::from_text_file(&path)
            .expect_err("an empty corpus loaded")
            .to_string();
        assert!(err.contains("c.txt") && err.contains("empty"), "{err}");
    }
}
