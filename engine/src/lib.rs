//! Cinder's engine: device choice, tokenizers and data, the training loop, optimizers and
//! schedules, sampling and generation, checkpoints and weight formats.
//!
//! The engine never names a model family. Families implement [`lm::LanguageModel`] (training,
//! export) and, to generate, provide an [`lm::Decoder`] (a decoder-only model is one itself,
//! [`lm::CausalLm`]); the trainer and the decoding loops work with any of them.

pub mod atomic;
pub mod chat;
pub mod data;
pub mod device;
mod error;
pub mod generate;
pub mod gguf;
pub mod lm;
pub mod optim;
pub mod pace;
pub mod quant;
pub mod readback;
pub mod rng;
pub mod run;
pub mod sampling;
pub mod schedule;
pub mod settings;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};

/// Re-exported so that model crates and the app use exactly the engine's Burn.
pub use burn;
/// Cinder's own kernels (fused operations with their references and micro-benchmarks).
pub use cinder_shaders as shaders;
