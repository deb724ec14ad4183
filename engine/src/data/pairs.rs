//! (input, target) pairs for sequence-to-sequence training (T5's objective): read from a JSONL
//! file of `{"input": ..., "target": ...}` objects, or cut from the Tang poems (the first line
//! of each couplet as the input, the second as the target). Batches pad inputs and targets on
//! the right; the decoder reads each target shifted right behind the start token (teacher
//! forcing). Every choice is a pure function of (seed, stream, step, row), like the causal
//! batches.

use std::path::Path;

use super::pad_batch;
use crate::rng;
use crate::{Error, Result};

/// One training example: what the encoder reads and what the decoder learns to write.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TextPair {
    /// The encoder's text.
    pub input: String,
    /// The decoder's text.
    pub target: String,
}

/// The pairs of a JSONL file's text: one JSON object with string fields `input` and `target`
/// per non-empty line (other fields ignored). `path` names the file in errors, with the line.
pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<TextPair>> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: TextPair = serde_json::from_str(line).map_err(|e| {
            Error::format(
                path,
                format!(
                    "line {}: not a JSON object with string fields \"input\" and \"target\": {e}",
                    i + 1
                ),
            )
        })?;
        if pair.input.is_empty() || pair.target.is_empty() {
            return Err(Error::format(
                path,
                format!("line {}: \"input\" and \"target\" must not be empty", i + 1),
            ));
        }
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(Error::format(path, "no (input, target) pair in the file"));
    }
    Ok(pairs)
}

/// The couplets of Tang poems (one poem per line): each sentence ending in `。`, `？` or `！`
/// whose two halves are split by one `，` and have as many characters gives (first half, second
/// half), both without punctuation.
pub fn couplets(poems: &str) -> Vec<TextPair> {
    let mut pairs = Vec::new();
    for poem in poems.lines() {
        for sentence in poem.split_inclusive(['。', '？', '！']) {
            let body = sentence.trim_end_matches(['。', '？', '！']);
            let mut halves = body.split('，');
            if let (Some(a), Some(b), None) = (halves.next(), halves.next(), halves.next())
                && !a.is_empty()
                && a.chars().count() == b.chars().count()
                && !a.contains(['；', '：', '、'])
                && !b.contains(['；', '：', '、'])
            {
                pairs.push(TextPair {
                    input: a.to_string(),
                    target: b.to_string(),
                });
            }
        }
    }
    pairs
}

/// The [`couplets`] of two five-character lines (the poetry VAE's rows).
pub fn five_character_couplets(poems: &str) -> Vec<TextPair> {
    couplets(poems)
        .into_iter()
        .filter(|p| p.input.chars().count() == 5)
        .collect()
}

/// A pair as token ids.
pub type TokenPair = (Vec<u32>, Vec<u32>);

/// The special ids of sequence-to-sequence batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairTokens {
    /// Padding (of inputs and targets).
    pub pad: u32,
    /// End of sequence: appended to every input and target.
    pub eos: u32,
    /// What the decoder reads first.
    pub start: u32,
}

/// A sequence-to-sequence batch, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    /// The encoder's ids `[batch, input_len]`, padded.
    pub input: Vec<i64>,
    /// `true` at real input tokens.
    pub input_mask: Vec<bool>,
    /// The decoder's ids `[batch, target_len]`: the start token, then the target but its last.
    pub decoder_input: Vec<i64>,
    /// The ids to predict `[batch, target_len]` (the target, ending with end of sequence).
    pub targets: Vec<i64>,
    /// 1 at real target tokens, 0 at padding.
    pub weights: Vec<f32>,
    /// Rows.
    pub batch: usize,
    /// Encoder columns.
    pub input_len: usize,
    /// Decoder columns.
    pub target_len: usize,
    /// Real target tokens (the loss's count).
    pub target_tokens: usize,
    /// Real input and target tokens.
    pub real_tokens: usize,
}

/// Rows `first_row .. first_row + batch` of the batch drawn for (seed, stream, step): each row a
/// random pair of `pairs`, input and target each cut to `context - 1` tokens and ended with the
/// end-of-sequence token.
#[allow(clippy::too_many_arguments)]
pub fn pair_batch_rows(
    pairs: &[TokenPair],
    batch: usize,
    first_row: usize,
    context: usize,
    tokens: PairTokens,
    seed: u64,
    stream: u64,
    step: u64,
) -> Result<PairBatch> {
    if pairs.is_empty() {
        return Err(Error::Data(
            "there is no (input, target) pair to train on".into(),
        ));
    }
    if context < 2 {
        return Err(Error::Config(format!(
            "context {context} is too short for a pair (at least 2)"
        )));
    }
    let pick = 200 + stream;
    let ended = |ids: &[u32]| {
        let mut row = ids[..ids.len().min(context - 1)].to_vec();
        row.push(tokens.eos);
        row
    };
    let mut inputs = Vec::with_capacity(batch);
    let mut targets = Vec::with_capacity(batch);
    let mut decoder = Vec::with_capacity(batch);
    for row in first_row..first_row + batch {
        let counter = step.wrapping_mul(1 << 20).wrapping_add(row as u64);
        let (input, target) = &pairs[rng::below(seed, pick, counter, pairs.len() as u64) as usize];
        let target = ended(target);
        let mut shifted = vec![tokens.start];
        shifted.extend_from_slice(&target[..target.len() - 1]);
        inputs.push(ended(input));
        targets.push(target);
        decoder.push(shifted);
    }
    let input = pad_batch(&inputs, tokens.pad, None);
    let target = pad_batch(&targets, tokens.pad, None);
    let decoder_input = pad_batch(&decoder, tokens.pad, None);
    let target_tokens: usize = target.lengths.iter().sum();
    Ok(PairBatch {
        input_mask: input.mask.iter().map(|&m| m == 1).collect(),
        weights: target.mask.iter().map(|&m| m as f32).collect(),
        real_tokens: target_tokens + input.lengths.iter().sum::<usize>(),
        input: input.ids,
        decoder_input: decoder_input.ids,
        targets: target.ids,
        batch,
        input_len: input.len,
        target_len: target.len,
        target_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn couplets_are_the_halves_of_each_sentence() {
        let poems =
            "秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘。\n問君何能爾？心遠地自偏，一二三。\n";
        let pairs = couplets(poems);
        let texts: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.input.as_str(), p.target.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![("秦川雄帝宅", "函谷壯皇居"), ("綺殿千尋起", "離宮百雉餘")],
            "a sentence without exactly one comma, or of unequal halves, is not a couplet"
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let path = Path::new("pairs.jsonl");
        let ok = parse_jsonl(path, "{\"input\": \"a\", \"target\": \"b\", \"id\": 3}\n\n").unwrap();
        assert_eq!(ok.len(), 1);
        let err = parse_jsonl(
            path,
            "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": 1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("pairs.jsonl") && err.contains("line 2"),
            "{err}"
        );
        assert!(parse_jsonl(path, "\n").is_err());
    }

    #[test]
    fn batches_end_with_eos_shift_the_target_and_pad() {
        let pairs = vec![
            (vec![5, 6, 7], vec![8, 9]),
            (vec![5], vec![8, 9, 10, 11, 12]),
        ];
        let t = PairTokens {
            pad: 0,
            eos: 1,
            start: 0,
        };
        let b = pair_batch_rows(&pairs, 6, 0, 4, t, 3, 0, 0).unwrap();
        for r in 0..b.batch {
            let row = |v: &[i64], len: usize| v[r * len..(r + 1) * len].to_vec();
            let target = row(&b.targets, b.target_len);
            let decoder = row(&b.decoder_input, b.target_len);
            assert_eq!(decoder[0], 0, "the decoder starts from the start token");
            let real = b.weights[r * b.target_len..(r + 1) * b.target_len]
                .iter()
                .filter(|&&w| w == 1.0)
                .count();
            assert_eq!(target[real - 1], 1, "targets end with eos");
            assert_eq!(decoder[1..real], target[..real - 1], "shifted right");
            assert!(real <= 4, "cut to the context");
        }
        let again = pair_batch_rows(&pairs, 3, 3, 4, t, 3, 0, 0).unwrap();
        assert_eq!(
            again.targets[..again.target_len],
            b.targets[3 * b.target_len..3 * b.target_len + again.target_len],
            "a micro-batch's rows are the large batch's"
        );
    }
}
