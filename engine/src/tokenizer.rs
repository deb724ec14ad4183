//! Tokenizers, through the Hugging Face `tokenizers` crate.
//!
//! Two kinds are built here: a character-level tokenizer (one token per Unicode scalar, right
//! for Chinese poetry) and a byte-level BPE trained on a corpus. Both are ordinary
//! `tokenizer.json` files, and any Hugging Face `tokenizer.json` loads.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::atomic::write_atomic;
use crate::{Error, Result};

/// The end-of-text token every tokenizer built here carries.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The unknown-character token of character-level tokenizers.
pub const UNKNOWN: &str = "<unk>";

/// Which tokenizer to build for a corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// One token per character.
    Char,
    /// Byte-level BPE with the given vocabulary size.
    Bpe(usize),
}

impl FromStr for TokenizerKind {
    type Err = Error;

    /// `char`, `bpe` (vocabulary 8192) or `bpe:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "char" => Ok(Self::Char),
            "bpe" => Ok(Self::Bpe(8192)),
            _ => match s.strip_prefix("bpe:").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 260 => Ok(Self::Bpe(n)),
                Some(_) => Err(Error::Tokenizer(format!(
                    "'{s}': a BPE vocabulary needs at least 260 entries (256 bytes + merges)"
                ))),
                None => Err(Error::Tokenizer(format!(
                    "unknown tokenizer '{s}': expected char, bpe or bpe:N"
                ))),
            },
        }
    }
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Char => f.write_str("char"),
            Self::Bpe(n) => write!(f, "bpe:{n}"),
        }
    }
}

crate::serde_as_string!(TokenizerKind);

/// A loaded tokenizer and the ids the engine cares about.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab={}, eos={:?})",
            self.vocab_size(),
            self.eos
        )
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    fn wrap(mut inner: tokenizers::Tokenizer) -> Self {
        // Padding and truncation saved in a tokenizer.json are a call's settings, not the
        // tokenizer's (transformers sets them per call too): a prompt is never padded or cut.
        inner.with_padding(None);
        // Turning truncation off cannot fail (only a stride longer than the length can).
        let _ = inner.with_truncation(None);
        let eos = [END_OF_TEXT, "</s>", "<|im_end|>", "<eos>"]
            .iter()
            .find_map(|t| inner.token_to_id(t));
        Self { inner, eos }
    }

    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self::wrap(inner))
    }

    /// Rebuilds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata: a
    /// byte-level BPE (`tokenizer.ggml.model = gpt2`) with its vocabulary and merges, tokens
    /// marked as control kept whole as special tokens and user-defined ones kept whole as added
    /// tokens, split before merging as the `tokenizer.ggml.pre` type asks. This is the tokenizer
    /// transformers builds from the same file, so both give the same ids.
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Self> {
        let path = file.path();
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::format(
                path,
                format!(
                    "tokenizer.ggml.model '{model}' is not supported (gpt2, a byte-level BPE, is)"
                ),
            ));
        }
        let tokens = file.get_strings("tokenizer.ggml.tokens")?;
        let merges = file.get_strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match file.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let alphabet = byte_alphabet();
        let in_alphabet: std::collections::HashSet<char> = alphabet.iter().copied().collect();
        // Tokens spelled outside the byte alphabet (raw UTF-8) are respelled byte by byte.
        let spell = |t: &str| -> String {
            if t.chars().all(|c| in_alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            }
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (spell(t), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::format(path, format!("merge '{m}' is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::format(path, format!("the BPE vocabulary is unusable: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        match file.get_str("tokenizer.ggml.pre").unwrap_or("gpt2") {
            "gpt2" | "default" | "smollm" | "starcoder" | "refact" | "olmo" => {
                inner.with_pre_tokenizer(Some(byte_level));
            }
            pre => {
                let Some(regex) = split_regex(pre) else {
                    return Err(Error::format(
                        path,
                        format!("tokenizer.ggml.pre '{pre}' is not a pre-tokenizer Cinder knows"),
                    ));
                };
                let split = Split::new(
                    SplitPattern::Regex(regex.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(tok_err)?;
                inner.with_pre_tokenizer(Some(
                    tokenizers::pre_tokenizers::sequence::Sequence::new(vec![
                        split.into(),
                        ByteLevel::new(false, true, false).into(),
                    ]),
                ));
            }
        }
        inner.with_decoder(Some(byte_level));
        let alphabet_set = &in_alphabet;
        let kept = |kind: u64| {
            tokens
                .iter()
                .zip(&types)
                .filter(move |&(t, &k)| k == kind && t.chars().all(|c| alphabet_set.contains(&c)))
                .map(|(t, _)| t.to_string())
        };
        let control: Vec<AddedToken> = kept(3)
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        inner.add_special_tokens(&control);
        let user: Vec<AddedToken> = kept(4)
            .map(|t| AddedToken::from(t, false).normalized(false))
            .collect();
        inner.add_tokens(&user);
        let eos = file
            .get_u64("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|v| v as u32);
        let mut tokenizer = Self::wrap(inner);
        if eos.is_some() {
            tokenizer.eos = eos;
        }
        Ok(tokenizer)
    }

    /// Parses a `tokenizer.json` held in memory.
    pub fn from_json(json: &str) -> Result<Self> {
        // The JSON syntax is checked first: the tokenizers crate panics (instead of returning
        // an error) on a syntax error inside its `decoder` section.
        serde_json::from_str::<serde::de::IgnoredAny>(json)
            .map_err(|e| Error::Tokenizer(format!("not valid JSON: {e}")))?;
        tokenizers::Tokenizer::from_str(json)
            .map(Self::wrap)
            .map_err(tok_err)
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tok_err)
    }

    /// Writes `tokenizer.json`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json()?.as_bytes())
    }

    /// A character-level tokenizer over every character of `text`, most frequent first, after
    /// the special tokens `<|endoftext|>` (id 0) and `<unk>` (id 1).
    pub fn train_char(text: &str) -> Result<Self> {
        let mut counts: HashMap<char, usize> = HashMap::new();
        for c in text.chars() {
            *counts.entry(c).or_default() += 1;
        }
        let mut chars: Vec<(char, usize)> = counts.into_iter().collect();
        chars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut vocab: HashMap<String, u32> = HashMap::new();
        vocab.insert(END_OF_TEXT.into(), 0);
        vocab.insert(UNKNOWN.into(), 1);
        for (i, (c, _)) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32 + 2);
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(UNKNOWN.into())
            .build();
        let model = model.map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(model);
        // `[\s\S]` (any character, newlines included) reads the same in fancy-regex, used here,
        // and in Oniguruma, used by Python's tokenizers; an inline flag like `(?s).` does not.
        let split = Split::new(
            SplitPattern::Regex(r"[\s\S]".into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        inner.with_pre_tokenizer(Some(split));
        inner.with_decoder(Some(Fuse::new()));
        inner.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
        Ok(Self::wrap(inner))
    }

    /// A byte-level BPE with `vocab_size` entries trained on `lines`.
    pub fn train_bpe<'a>(
        lines: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self> {
        let special = AddedToken::from(END_OF_TEXT, true);
        let bpe_trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![special.clone()])
            .initial_alphabet(
                tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                    .into_iter()
                    .collect(),
            )
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(bpe_trainer);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        let byte_level = ByteLevel::new(false, true, true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        inner.with_post_processor(Some(byte_level));
        inner.train(&mut trainer, lines).map_err(tok_err)?;
        inner.add_special_tokens(&[special]);
        Ok(Self::wrap(inner))
    }

    /// Builds the tokenizer of `kind` from a training text.
    pub fn train(kind: TokenizerKind, text: &str) -> Result<Self> {
        match kind {
            TokenizerKind::Char => Self::train_char(text),
            TokenizerKind::Bpe(n) => Self::train_bpe(text.split_inclusive('\n'), n),
        }
    }

    /// Token ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Adds `tokens` as special tokens (kept whole, skipped when decoding) at the end of the
    /// vocabulary, those it lacks: `[PAD]` and `[MASK]` for masked-LM training.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) {
        let added: Vec<AddedToken> = tokens
            .iter()
            .filter(|t| self.inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        self.inner.add_special_tokens(&added);
    }

    /// Token ids of each of `texts` as an encoder takes them: with the special tokens the
    /// tokenizer's post-processor adds (BERT's `[CLS] ... [SEP]`), each text cut so that the
    /// whole is at most `max_len` tokens.
    pub fn encode_with_special_tokens<S: AsRef<str>>(
        &self,
        texts: &[S],
        max_len: usize,
    ) -> Result<Vec<Vec<u32>>> {
        // Truncation is a setting of the tokenizer: set on a copy, once for all the texts.
        let mut inner = self.inner.clone();
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        texts
            .iter()
            .map(|t| {
                Ok(inner
                    .encode(t.as_ref(), true)
                    .map_err(tok_err)?
                    .get_ids()
                    .to_vec())
            })
            .collect()
    }

    /// Token ids of a whole corpus, encoded line by line (newlines kept).
    pub fn encode_corpus(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            ids.extend(self.encode(line)?);
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// A decoder that turns ids into text one at a time, holding back incomplete characters.
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream {
            tokenizer: self,
            ids: Vec::new(),
            printed: 0,
        }
    }

    /// Number of entries, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-sequence id, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Incremental decoding for streaming output.
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl TokenStream<'_> {
    /// Adds one id; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        // A byte-level token can end inside a character; wait until it is whole.
        if text.ends_with('\u{FFFD}') || text.len() < self.printed {
            return Ok(String::new());
        }
        let fresh = text.get(self.printed..).unwrap_or_default().to_string();
        self.printed = text.len();
        Ok(fresh)
    }

    /// The text still held back (bytes that never completed a character decode as U+FFFD),
    /// so that everything printed equals the decoding of all ids.
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids)?;
        let rest = text.get(self.printed..).unwrap_or_default().to_string();
        self.printed = text.len();
        Ok(rest)
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are mapped
/// to code points from U+0100 on, so every byte string is spelled in visible characters.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('?')
            }
        })
        .collect()
}

/// The split expression of the byte-level pre-tokenizers that differ from GPT-2's.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_tokenizer_round_trips_chinese_and_newlines() {
        let text = "春眠不覺曉，處處聞啼鳥。\n夜來風雨聲，花落知多少。\n";
        let tok = Tokenizer::train_char(text).unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // '，' and '。' and '\n' occur most, so they get the first ids after the specials.
        assert!(ids.iter().all(|&i| i >= 2));
        assert_eq!(tok.eos_id(), Some(0));
        let unknown = tok.encode("春X").unwrap();
        assert_eq!(unknown[1], 1, "unseen characters map to <unk>");
        let json = tok.to_json().unwrap();
        let back = Tokenizer::from_json(&json).unwrap();
        assert_eq!(back.encode(text).unwrap(), ids);
    }

    #[test]
    fn bpe_tokenizer_learns_merges_and_round_trips() {
        let text = "the cat sat on the mat. the cat ate the rat.\n".repeat(50);
        let tok = Tokenizer::train(TokenizerKind::Bpe(300), &text).unwrap();
        assert!(
            tok.vocab_size() > 257 && tok.vocab_size() <= 300,
            "{}",
            tok.vocab_size()
        );
        let line = "the cat sat on the mat.\n";
        let ids = tok.encode(line).unwrap();
        assert!(
            ids.len() < line.len(),
            "merges shorten the sequence: {ids:?}"
        );
        assert_eq!(tok.decode(&ids).unwrap(), line);
        assert!(tok.eos_id().is_some());
    }

    #[test]
    fn stream_holds_back_partial_characters() {
        let text = "月落烏啼霜滿天\n".repeat(20);
        let tok = Tokenizer::train(TokenizerKind::Bpe(280), &text).unwrap();
        let ids = tok.encode("月落烏啼").unwrap();
        let mut stream = tok.stream();
        let mut out = String::new();
        for id in ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        assert_eq!(out, "月落烏啼");
    }

    #[test]
    fn parses_kinds() {
        assert_eq!(
            "char".parse::<TokenizerKind>().unwrap(),
            TokenizerKind::Char
        );
        assert_eq!(
            "bpe:512".parse::<TokenizerKind>().unwrap(),
            TokenizerKind::Bpe(512)
        );
        assert!("bpe:10".parse::<TokenizerKind>().is_err());
        assert!("words".parse::<TokenizerKind>().is_err());
    }
}
