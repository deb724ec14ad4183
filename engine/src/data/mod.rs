//! Corpora and batches.
//!
//! A corpus is UTF-8 text with a held-out split. Batches for language modelling are windows of
//! `context + 1` tokens taken at positions that are a pure function of (seed, step), so a resumed
//! run sees exactly the batches it would have seen.

mod batch;
mod corpus;
#[cfg(not(target_family = "wasm"))]
pub mod fetch;
pub mod masked;
pub mod pairs;

/// The SmolLM2-135M-Instruct GGUF file that `cinder fetch smollm2` caches (and the web site
/// serves under `data/models/`).
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

pub use batch::{
    LmBatch, PaddedBatch, line_starts, lm_batch, lm_batch_at, lm_batch_rows, lm_windows, pad_batch,
};
pub use corpus::{Corpus, CorpusSource, FORTUNES_DIR, clean_poem, split_held_out};
