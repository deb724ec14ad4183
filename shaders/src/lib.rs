//! Cinder's own kernels: fused operations added to Burn's backends through its extension API,
//! each with a reference built from Burn's own operations that it is tested against.
//!
//! The engine calls the functions at the top of each module; they pick the fused kernel where
//! one exists for the tensor's device and type and the reference otherwise, so every backend
//! (wgpu, the browser build, half precision) keeps working.
//!
//! - [`activation`]: GELU with the tanh approximation, one pass forward and one backward
//!   across the cores (burn-flex, f32).
//! - [`attention`]: causal attention of a whole sequence, forward and backward, one task per
//!   (sequence, head) with the scores of a block of queries kept in a buffer of the task's own
//!   (burn-flex, f32, natively).
//! - [`cross_entropy`]: softmax cross-entropy over the rows of a matrix of logits, forward and
//!   backward in one pass each over the matrix (burn-flex, f32).
//! - [`decode`]: a transformer layer's operations other than its matrix products (RMSNorm,
//!   rotary embeddings, attention over a key/value cache, SwiGLU) on plain slices, for the
//!   decoders' host path on the CPU.
//! - [`linear`]: a linear layer `x W + b` and an output head tied to an embedding `x Eᵀ`,
//!   forward and backward, each product written once by gemm into the tensor's own buffer
//!   (burn-flex, f32).
//! - [`norm`]: LayerNorm over the last axis, one pass forward and one backward across the
//!   cores (burn-flex, f32).
//! - [`optim`]: AdamW's update of a parameter and its moments in one pass, in place
//!   (burn-flex, f32).
//! - [`team`]: a fork-join team of spinning threads for the many short parallel operations of
//!   decoding a token on the CPU.

use std::sync::atomic::{AtomicBool, Ordering};

pub mod activation;
pub mod attention;
#[cfg(not(target_family = "wasm"))]
pub mod bench;
pub mod cross_entropy;
pub mod decode;
mod flex;
pub use flex::{Operand, new_product, product};
pub mod linear;
pub mod norm;
pub mod optim;
pub mod team;

static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels off (every operation then takes its reference, Burn's own
/// operations) or back on, for the whole process: for benchmarks that compare the two in one
/// run. On by default.
pub fn set_fused_kernels(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on (see [`set_fused_kernels`]).
pub fn fused_kernels() -> bool {
    FUSED.load(Ordering::Relaxed)
}
