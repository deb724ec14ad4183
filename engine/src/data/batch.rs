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

/// `batch` random windows of `context + 1` tokens from `tokens`, chosen by (seed, stream, step):
/// starting at any token when `starts` is empty, else at one of `starts` (see [`line_starts`]).
pub fn lm_batch(
    tokens: &[u32],
    starts: &[usize],
    batch: usize,
    context: usize,
    seed: u64,
    stream: u64,
    step: u64,
) -> Result<LmBatch> {
    lm_batch_rows(tokens, starts, batch, 0, context, seed, stream, step)
}

/// Rows `first_row .. first_row + batch` of the batch [`lm_batch`] draws for (seed, stream,
/// step): micro-batches cut from one large batch.
#[allow(clippy::too_many_arguments)]
pub fn lm_batch_rows(
    tokens: &[u32],
    starts: &[usize],
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
    let anywhere = (tokens.len() - context - 1) as u64;
    let allowed = whole_windows(tokens, starts, context);
    let chosen: Vec<usize> = (first_row..first_row + batch)
        .map(|row| {
            let counter = step.wrapping_mul(1 << 20).wrapping_add(row as u64);
            if let Some(last) = allowed.len().checked_sub(1) {
                allowed[rng::below(seed, stream, counter, last as u64 + 1) as usize]
            } else {
                rng::below(seed, stream, counter, anywhere + 1) as usize
            }
        })
        .collect();
    Ok(lm_batch_at(tokens, &chosen, context))
}

/// The starts of `starts` whose whole window of `context + 1` tokens lies inside `tokens`
/// (starts too late for one sort last).
fn whole_windows<'a>(tokens: &[u32], starts: &'a [usize], context: usize) -> &'a [usize] {
    let Some(last) = tokens.len().checked_sub(context + 1) else {
        return &[];
    };
    &starts[..starts.partition_point(|&s| s <= last)]
}

/// Every window a pass over the whole of `tokens` reads, in order: each of `starts` with a
/// whole window of `context + 1` tokens, or, when `starts` is empty, back-to-back windows
/// every `context` tokens (each token predicted once).
pub fn lm_windows(tokens: &[u32], starts: &[usize], context: usize) -> Vec<usize> {
    if starts.is_empty() {
        if context == 0 || tokens.len() <= context {
            return Vec::new();
        }
        (0..tokens.len() - context).step_by(context).collect()
    } else {
        whole_windows(tokens, starts, context).to_vec()
    }
}

/// The batch of the windows of `context + 1` tokens that begin at `windows` (each must fit).
pub fn lm_batch_at(tokens: &[u32], windows: &[usize], context: usize) -> LmBatch {
    let mut inputs = Vec::with_capacity(windows.len() * context);
    let mut targets = Vec::with_capacity(windows.len() * context);
    for &start in windows {
        let window = &tokens[start..start + context + 1];
        inputs.extend(window[..context].iter().map(|&t| t as i64));
        targets.extend(window[1..].iter().map(|&t| t as i64));
    }
    LmBatch {
        inputs,
        targets,
        batch: windows.len(),
        context,
    }
}

/// Window starts aligned to lines: each line's first token (the first token after one for which
/// `ends_line` holds, and the stream's first) and every `context` tokens after it within the
/// line, in increasing order. Windows drawn from them count positions from a line's start, so a
/// model with learned positions sees verse at the same phase every time, and together they
/// cover every token. Empty when the stream has no line ends (then windows start anywhere).
pub fn line_starts(tokens: &[u32], ends_line: impl Fn(u32) -> bool, context: usize) -> Vec<usize> {
    if context == 0 || !tokens.iter().any(|&t| ends_line(t)) {
        return Vec::new();
    }
    let mut starts = Vec::new();
    let mut line_start = 0;
    for (i, &t) in tokens.iter().enumerate() {
        if i == line_start || (i - line_start) % context == 0 {
            starts.push(i);
        }
        if ends_line(t) {
            line_start = i + 1;
        }
    }
    starts
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
        let a = lm_batch(&tokens, &[], 4, 8, 1, 0, 5).unwrap();
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
        assert_eq!(a, lm_batch(&tokens, &[], 4, 8, 1, 0, 5).unwrap());
        assert_ne!(a, lm_batch(&tokens, &[], 4, 8, 1, 0, 6).unwrap());
    }

    #[test]
    fn line_windows_start_at_lines_and_every_context_after() {
        // Lines of 3, 10 and 5 tokens (0 ends a line), then 2 tokens without an end.
        let tokens = [5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 7, 7, 7, 7, 0, 3, 3];
        let starts = line_starts(&tokens, |t| t == 0, 4);
        assert_eq!(starts, [0, 3, 7, 11, 13, 17, 18]);
        assert!(line_starts(&[1, 2, 3], |t| t == 0, 4).is_empty());
        // Windows of 4 + 1 tokens: only the starts up to 15 fit.
        for step in 0..50 {
            let b = lm_batch(&tokens, &starts, 3, 4, 9, 0, step).unwrap();
            for row in b.inputs.chunks(4) {
                let at = (0..=15).find(|&s| {
                    tokens[s..s + 4]
                        .iter()
                        .map(|&t| t as i64)
                        .eq(row.iter().copied())
                });
                assert!(matches!(at, Some(0 | 3 | 7 | 11 | 13)), "{row:?}");
            }
        }
    }

    #[test]
    fn a_full_pass_reads_every_window_once() {
        let tokens = [5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 7, 7, 7, 7, 0, 3, 3];
        let starts = line_starts(&tokens, |t| t == 0, 4);
        // Line-aligned: the starts whose window of 4 + 1 tokens fits.
        assert_eq!(lm_windows(&tokens, &starts, 4), [0, 3, 7, 11, 13]);
        // Anywhere: back to back, each token after the first predicted once.
        assert_eq!(lm_windows(&tokens, &[], 4), [0, 4, 8, 12]);
        assert_eq!(lm_windows(&tokens, &[], 19), [0]);
        assert!(lm_windows(&tokens, &[], 20).is_empty());
        assert!(lm_windows(&tokens, &starts, 20).is_empty());
        let b = lm_batch_at(&tokens, &[3, 13], 4);
        assert_eq!((b.batch, b.context), (2, 4));
        assert_eq!(b.inputs, [1, 2, 3, 4, 7, 7, 7, 7]);
        assert_eq!(b.targets, [2, 3, 4, 5, 7, 7, 7, 0]);
    }

    #[test]
    fn too_short_corpus_is_an_error() {
        let err = lm_batch(&[1, 2, 3], &[], 1, 8, 0, 0, 0).expect_err("a batch from three tokens");
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
