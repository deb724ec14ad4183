//! Fixed-length windows for language modelling, and padding for variable-length sequences.

use crate::rng;
use crate::{Error, Result};

/// A language-modelling batch: `inputs[b, t]` predicts `targets[b, t] = inputs[b, t + 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LmBatch {
    /// Row-major `[batch, context]` input ids.
    pub inputs: Vec<i64>,
    /// Row-major `[batch, context]` target ids.
    pub targets: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub context: usize,
}

/// `batch` random windows of `context + 1` tokens from `tokens`, chosen by (seed, stream, step).
pub fn lm_batch(
    tokens: &[u32],
    batch: usize,
    context: usize,
    seed: u64,
    stream: u64,
    step: u64,
) -> Result<LmBatch> {
    lm_batch_rows(tokens, batch, 0, context, seed, stream, step)
}

/// Rows `first_row .. first_row + batch` of the batch [`lm_batch`] draws for (seed, stream,
/// step): micro-batches cut from one large batch.
pub fn lm_batch_rows(
    tokens: &[u32],
    batch: usize,
    first_row: usize,
    context: usize,
    seed: u64,
    stream: u64,
    step: u64,
) -> Result<LmBatch> {
    if tokens.len() < context + 2 {
        return Err(Error::Data(format!(
            "the corpus has {} tokens, too few for windows of {} (context + 1)",
            tokens.len(),
            context + 1
        )));
    }
    let starts = (tokens.len() - context - 1) as u64;
    let mut inputs = Vec::with_capacity(batch * context);
    let mut targets = Vec::with_capacity(batch * context);
    for row in first_row..first_row + batch {
        let counter = step.wrapping_mul(1 << 20).wrapping_add(row as u64);
        let start = rng::below(seed, stream, counter, starts + 1) as usize;
        let window = &tokens[start..start + context + 1];
        inputs.extend(window[..context].iter().map(|&t| t as i64));
        targets.extend(window[1..].iter().map(|&t| t as i64));
    }
    Ok(LmBatch {
        inputs,
        targets,
        batch,
        context,
    })
}

/// Variable-length sequences padded (or truncated) to one length, with an attention mask.
#[derive(Clone, Debug, PartialEq)]
pub struct PaddedBatch {
    /// Row-major `[batch, len]` ids, padded with the pad id on the right.
    pub ids: Vec<i64>,
    /// Row-major `[batch, len]`: 1 for real tokens, 0 for padding.
    pub mask: Vec<i64>,
    /// The real length of each row after truncation.
    pub lengths: Vec<usize>,
    /// Rows.
    pub batch: usize,
    /// Columns: the longest row, or `max_len` when given and shorter.
    pub len: usize,
}

/// Pads `sequences` on the right with `pad_id` to the longest one, truncating to `max_len`.
pub fn pad_batch(sequences: &[Vec<u32>], pad_id: u32, max_len: Option<usize>) -> PaddedBatch {
    let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let len = max_len.map_or(longest, |m| m.min(longest));
    let mut ids = Vec::with_capacity(sequences.len() * len);
    let mut mask = Vec::with_capacity(sequences.len() * len);
    let mut lengths = Vec::with_capacity(sequences.len());
    for seq in sequences {
        let n = seq.len().min(len);
        lengths.push(n);
        ids.extend(seq[..n].iter().map(|&t| t as i64));
        ids.extend(std::iter::repeat_n(pad_id as i64, len - n));
        mask.extend(std::iter::repeat_n(1, n));
        mask.extend(std::iter::repeat_n(0, len - n));
    }
    PaddedBatch {
        ids,
        mask,
        lengths,
        batch: sequences.len(),
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_shifted_by_one_and_reproducible() {
        let tokens: Vec<u32> = (0..100).collect();
        let a = lm_batch(&tokens, 4, 8, 1, 0, 5).unwrap();
        assert_eq!(a.inputs.len(), 32);
        for row in 0..4 {
            let (x, y) = (
                &a.inputs[row * 8..row * 8 + 8],
                &a.targets[row * 8..row * 8 + 8],
            );
            for t in 0..8 {
                assert_eq!(y[t], x[t] + 1, "targets are the next tokens");
            }
            assert!(x[7] < 99);
        }
        assert_eq!(a, lm_batch(&tokens, 4, 8, 1, 0, 5).unwrap());
        assert_ne!(a, lm_batch(&tokens, 4, 8, 1, 0, 6).unwrap());
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let err = lm_batch(&[1, 2, 3], 1, 8, 0, 0, 0).expect_err("a batch from three tokens");
        assert!(err.to_string().contains("too few"));
    }

    #[test]
    fn padding_masks_and_truncates() {
        let seqs = vec![vec![5, 6, 7], vec![8], vec![1, 2, 3, 4, 5, 6]];
        let p = pad_batch(&seqs, 0, None);
        assert_eq!(p.len, 6);
        assert_eq!(&p.ids[..6], &[5, 6, 7, 0, 0, 0]);
        assert_eq!(&p.mask[6..12], &[1, 0, 0, 0, 0, 0]);
        assert_eq!(p.lengths, vec![3, 1, 6]);
        let t = pad_batch(&seqs, 9, Some(4));
        assert_eq!(t.len, 4);
        assert_eq!(&t.ids[8..12], &[1, 2, 3, 4]);
        assert_eq!(&t.ids[4..8], &[8, 9, 9, 9]);
        assert_eq!(t.lengths, vec![3, 1, 4]);
    }
}
