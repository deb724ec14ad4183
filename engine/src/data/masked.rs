//! Batches for masked-language-model training (BERT's objective): documents of different
//! lengths, padded on the right with an attention mask, and 15% of each row's tokens chosen for
//! prediction, of those 80% replaced by the mask token, 10% by a random token and 10% kept.
//! Every choice is a pure function of (seed, stream, step, row), like the causal batches.

use std::ops::Range;

use super::pad_batch;
use crate::rng;
use crate::{Error, Result};

/// The fraction of real tokens chosen for prediction.
pub const MASK_RATE: f64 = 0.15;

/// The special ids of masked-LM training.
#[derive(Clone, Debug, PartialEq)]
pub struct Masking {
    /// The mask token that replaces 80% of the chosen tokens.
    pub mask_id: u32,
    /// The padding token.
    pub pad_id: u32,
    /// Tokens a random replacement may be (every id but the special ones).
    pub replacements: Vec<u32>,
}

impl Masking {
    /// Masking for a vocabulary of `vocab` ids whose special tokens are `special` (the mask
    /// and padding tokens among them).
    pub fn new(mask_id: u32, pad_id: u32, vocab: u32, special: &[u32]) -> Result<Self> {
        let replacements: Vec<u32> = (0..vocab).filter(|id| !special.contains(id)).collect();
        if replacements.is_empty() {
            return Err(Error::Data(
                "the vocabulary has no ordinary token to mask".into(),
            ));
        }
        Ok(Self {
            mask_id,
            pad_id,
            replacements,
        })
    }
}

/// A masked-LM batch of `batch` rows of `len` positions, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedBatch {
    /// Input ids: the document with its chosen tokens masked, then padding.
    pub inputs: Vec<i64>,
    /// The original token at chosen positions, 0 elsewhere.
    pub targets: Vec<i64>,
    /// 1 at chosen positions, 0 elsewhere: the loss is the mean over these.
    pub chosen: Vec<f32>,
    /// `true` at real tokens, `false` at padding.
    pub mask: Vec<bool>,
    /// Rows.
    pub batch: usize,
    /// Columns: the longest row.
    pub len: usize,
    /// Real (unpadded) tokens in the batch.
    pub real_tokens: usize,
}

/// The documents of a token stream: the ranges between tokens that `ends_document` marks (each
/// document keeps its end token), at least `min_len` tokens long.
pub fn documents(
    tokens: &[u32],
    ends_document: impl Fn(u32) -> bool,
    min_len: usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &t) in tokens.iter().enumerate() {
        if ends_document(t) {
            if i + 1 - start >= min_len {
                out.push(start..i + 1);
            }
            start = i + 1;
        }
    }
    if tokens.len() - start >= min_len.max(1) {
        out.push(start..tokens.len());
    }
    out
}

/// Rows `first_row .. first_row + batch` of the masked batch drawn for (seed, stream, step):
/// each row a random document of `docs` (a random window of `context` tokens when longer),
/// padded to the longest row, with its tokens chosen and replaced as the module describes. A
/// row where no token was chosen gets one, so every row counts in the loss.
#[allow(clippy::too_many_arguments)]
pub fn masked_batch_rows(
    tokens: &[u32],
    docs: &[Range<usize>],
    batch: usize,
    first_row: usize,
    context: usize,
    masking: &Masking,
    seed: u64,
    stream: u64,
    step: u64,
) -> Result<MaskedBatch> {
    if docs.is_empty() {
        return Err(Error::Data(
            "the corpus has no document (line) of two tokens or more to mask".into(),
        ));
    }
    // Streams of their own, apart from the causal batches' windows.
    let (pick, cut, choose) = (100 + 3 * stream, 101 + 3 * stream, 102 + 3 * stream);
    let mut rows = Vec::with_capacity(batch);
    for row in first_row..first_row + batch {
        let counter = step.wrapping_mul(1 << 20).wrapping_add(row as u64);
        let doc = &docs[rng::below(seed, pick, counter, docs.len() as u64) as usize];
        let len = doc.len().min(context);
        let start =
            doc.start + rng::below(seed, cut, counter, (doc.len() - len + 1) as u64) as usize;
        rows.push(tokens[start..start + len].to_vec());
    }
    let padded = pad_batch(&rows, masking.pad_id, None);
    let (b, t) = (padded.batch, padded.len);
    let mut inputs = padded.ids;
    let mut targets = vec![0i64; b * t];
    let mut chosen = vec![0f32; b * t];
    let n = masking.replacements.len() as u64;
    for (r, &real) in padded.lengths.iter().enumerate() {
        let row = first_row + r;
        let counter = |i: usize| {
            step.wrapping_mul(1 << 40)
                .wrapping_add((row as u64) << 20)
                .wrapping_add(i as u64)
        };
        let mut picked: Vec<usize> = (0..real)
            .filter(|&i| rng::uniform(seed, choose, 3 * counter(i)) < MASK_RATE)
            .collect();
        if picked.is_empty() && real > 0 {
            picked.push(rng::below(seed, choose, 3 * counter(real), real as u64) as usize);
        }
        for i in picked {
            let at = r * t + i;
            targets[at] = inputs[at];
            chosen[at] = 1.0;
            let kind = rng::below(seed, choose, 3 * counter(i) + 1, 10);
            inputs[at] = match kind {
                0..=7 => i64::from(masking.mask_id),
                8 => {
                    let k = rng::below(seed, choose, 3 * counter(i) + 2, n) as usize;
                    i64::from(masking.replacements[k])
                }
                _ => inputs[at],
            };
        }
    }
    let mask = padded.mask.iter().map(|&m| m == 1).collect();
    Ok(MaskedBatch {
        inputs,
        targets,
        chosen,
        mask,
        batch: b,
        len: t,
        real_tokens: padded.lengths.iter().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_their_end_tokens_and_drop_short_ones() {
        let tokens = [5, 6, 0, 7, 0, 8, 9, 9, 0, 4];
        let docs = documents(&tokens, |t| t == 0, 2);
        assert_eq!(docs, vec![0..3, 3..5, 5..9]);
        assert_eq!(documents(&tokens, |t| t == 0, 1).last(), Some(&(9..10)));
    }

    #[test]
    fn fifteen_percent_of_real_tokens_are_chosen_and_split_80_10_10() {
        // 400 documents of 5 to 44 tokens, ids 10..60; specials 0 (pad) and 1 (mask).
        let mut tokens = Vec::new();
        for d in 0..400u32 {
            tokens.extend((0..5 + d % 40).map(|i| 10 + (i * 7 + d) % 50));
            tokens.push(2);
        }
        let docs = documents(&tokens, |t| t == 2, 2);
        let masking = Masking::new(1, 0, 60, &[0, 1, 2]).unwrap();
        let (mut real, mut picked, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
        for step in 0..40 {
            let b = masked_batch_rows(&tokens, &docs, 16, 0, 32, &masking, 3, 0, step).unwrap();
            assert_eq!(b.inputs.len(), b.batch * b.len);
            real += b.real_tokens;
            for i in 0..b.inputs.len() {
                if !b.mask[i] {
                    assert_eq!(b.inputs[i], 0, "padding is the pad token");
                    assert_eq!(b.chosen[i], 0.0, "padding is never chosen");
                    continue;
                }
                if b.chosen[i] == 0.0 {
                    continue;
                }
                picked += 1;
                match b.inputs[i] {
                    1 => masked += 1,
                    x if x == b.targets[i] => kept += 1,
                    x => {
                        assert!((3..60).contains(&x), "a random ordinary token, not {x}");
                        random += 1;
                    }
                }
            }
        }
        let rate = picked as f64 / real as f64;
        assert!((rate - MASK_RATE).abs() < 0.01, "chosen {rate}");
        let share = |n: i32| f64::from(n) / f64::from(picked);
        assert!(
            (share(masked) - 0.8).abs() < 0.03,
            "masked {}",
            share(masked)
        );
        // A random replacement may draw the original token: counted as kept.
        assert!(
            (share(random) - 0.1).abs() < 0.03,
            "random {}",
            share(random)
        );
        assert!((share(kept) - 0.1).abs() < 0.03, "kept {}", share(kept));
        let again = masked_batch_rows(&tokens, &docs, 16, 0, 32, &masking, 3, 0, 7).unwrap();
        let rows = masked_batch_rows(&tokens, &docs, 8, 8, 32, &masking, 3, 0, 7).unwrap();
        assert_eq!(
            again.inputs[8 * again.len..8 * again.len + rows.len],
            rows.inputs[..rows.len],
            "a micro-batch's rows are the large batch's"
        );
    }
}
