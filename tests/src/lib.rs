//! End-to-end and parity tests for Cinder; the tests live in `tests/tests/`, fixtures in
//! `tests/fixtures/`, and the scripts that regenerate fixtures in `tests/scripts/`.

use std::path::PathBuf;

/// The folder holding committed fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A JSON file, or a panic naming it (for reference fixtures).
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of token ids (a fixture without one is broken, not empty).
pub fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of token ids in the fixture")
        .iter()
        .map(|x| {
            let id = x.as_u64().expect("a token id in the fixture");
            u32::try_from(id).expect("a token id that fits in u32")
        })
        .collect()
}

/// The numbers of a JSON array, or of an array of arrays, flattened row by row.
pub fn json_f32s(value: &serde_json::Value) -> Vec<f32> {
    match value {
        serde_json::Value::Array(items) => items.iter().flat_map(json_f32s).collect(),
        other => vec![other.as_f64().expect("a number in the fixture") as f32],
    }
}

/// f32's machine epsilon, 2^-23: one rounding moves a value by at most half of it, relatively.
pub const EPS: f64 = f32::EPSILON as f64;

/// The largest magnitude among `values`.
pub fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|x| f64::from(x.abs()))
        .fold(0.0, f64::max)
}

/// How far apart two f32 evaluations of the same computation may be when each sums in its own
/// order: an n-term sum is within n ε of the exact one relative to its terms' magnitudes, so
/// each result is within `roundings` ε of `scale` (the terms summed along the computation's
/// longest path, and the largest value standing for the magnitudes), and the two within twice
/// that.
pub fn difference_bound(roundings: usize, scale: f64) -> f64 {
    2.0 * roundings as f64 * EPS * scale
}

/// Asserts that `got` and `want`, two evaluations of one computation, agree within
/// [`difference_bound`] of the largest value in `want`, and prints the measured difference as a
/// fraction of the bound.
#[track_caller]
pub fn assert_close(
    got: &burn::tensor::TensorData,
    want: &burn::tensor::TensorData,
    roundings: usize,
    what: &str,
) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let g: Vec<f32> = got.iter::<f32>().collect();
    let w: Vec<f32> = want.iter::<f32>().collect();
    let bound = difference_bound(roundings, max_abs(&w));
    let diff = g
        .iter()
        .zip(&w)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    eprintln!(
        "{what}: largest difference {diff:.3e}, {:.3} of the bound {bound:.3e}",
        diff / bound
    );
    got.assert_approx_eq::<f32>(want, burn::tensor::Tolerance::absolute(bound));
}

/// The git-ignored cache where fetched corpora and weights live (`CINDER_CACHE` overrides it,
/// as it does for the `cinder` command).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CINDER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cache"))
}

/// A small GGUF writer for building test files, valid and broken.
pub mod gguf {
    /// A metadata value to write.
    pub enum Meta {
        /// uint32
        U32(u32),
        /// float32
        F32(f32),
        /// string
        Str(String),
        /// array of strings
        Strs(Vec<String>),
        /// array of int32
        I32s(Vec<i32>),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A tensor to write: name, ggml dims (innermost first), ggml type id, raw bytes.
    pub struct RawTensor {
        /// Name.
        pub name: String,
        /// ggml dims, innermost first.
        pub dims: Vec<u64>,
        /// ggml type id (0 = F32, 8 = Q8_0, ...).
        pub kind: u32,
        /// Encoded data.
        pub data: Vec<u8>,
    }

    impl RawTensor {
        /// An F32 tensor from row-major values of `shape` (outermost first).
        pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
            Self {
                name: name.to_string(),
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                kind: 0,
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }
    }

    /// Serialises a version-3 GGUF file with 32-byte alignment.
    pub fn write(meta: &[(&str, Meta)], tensors: &[RawTensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::Strs(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for s in items {
                        string(&mut out, s);
                    }
                }
                Meta::I32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for v in items {
                        out.extend(v.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        for (t, off) in tensors.iter().zip(&offsets) {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.kind.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for t in tensors {
            out.extend(&t.data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

/// The greedy choices at positions `from..T` of `logits` (`[1, T, V]`) that every CPU makes the
/// same way: those where the best logit beats the runner-up by more than `2 bound`, `bound`
/// being how far another evaluation's logits may be from these. Returns how many positions from
/// `from` on are clear before the first that is not.
pub fn clear_greedy_steps(logits: &burn::tensor::TensorData, from: usize, bound: f64) -> usize {
    let dims = logits.shape().to_vec();
    let (t, v) = (dims[1], dims[2]);
    let values: Vec<f32> = logits.iter::<f32>().collect();
    (from..t)
        .take_while(|&i| {
            let mut row: Vec<f32> = values[i * v..(i + 1) * v].to_vec();
            row.sort_by(|a, b| b.total_cmp(a));
            f64::from(row[0] - row[1]) > 2.0 * bound
        })
        .count()
}

/// Terms summed along the forward pass of the `gpt2-tiny` fixture over `t` positions, each a
/// rounding relative to the magnitudes (see [`difference_bound`]): per layer, ln_1 (mean and
/// variance, 2 x 32), c_attn (32), scores (head size 8), softmax and attention-weighted values
/// (t each), c_proj (32), ln_2 (64), c_fc (32) and the MLP's c_proj (128), with `ulps` for each
/// of exp, tanh and the two reciprocal square roots; then ln_f (64 and a reciprocal square root)
/// and the tied head (32).
pub fn gpt2_tiny_roundings(t: usize, ulps: usize) -> usize {
    2 * (64 + 32 + 8 + 2 * t + 32 + 64 + 32 + 128 + 4 * ulps) + (64 + ulps) + 32
}

/// Terms summed along the forward pass of the `llama-tiny` fixture over `t` positions, each a
/// rounding relative to the magnitudes (see [`difference_bound`]): per layer, the RMS norm (32),
/// q, k and v (32), the rotary angles (position times frequency, up to t ulps), scores (head
/// size 8), softmax and attention-weighted values (t each), o (32), the RMS norm (32), gate
/// times up (32 + 32) and down (64), with `ulps` for each of exp, silu, sine, cosine and the two
/// reciprocal square roots; then the final norm (32 and a reciprocal square root) and the head
/// (32).
pub fn llama_tiny_roundings(t: usize, ulps: usize) -> usize {
    2 * (32 + 32 + t + 8 + 2 * t + 32 + 32 + 64 + 64 + 6 * ulps) + (32 + ulps) + 32
}

/// Terms summed along the `bert-tiny` fixture's encoder over `t` positions, each a rounding
/// relative to the magnitudes (see [`difference_bound`]): the three embeddings' sum (3) and their
/// LayerNorm (2 x 32 and a reciprocal square root); per layer, q, k and v (32), scores (head
/// size 8), softmax and attention-weighted values (t each), the output projection (32), two
/// LayerNorms (64 each), the intermediate (32) and output (64) layers, with `ulps` for each of
/// exp, erf and the two reciprocal square roots.
pub fn bert_tiny_encoder_roundings(t: usize, ulps: usize) -> usize {
    3 + (64 + ulps) + 2 * (32 + 8 + 2 * t + 32 + 64 + 64 + 32 + 64 + 4 * ulps)
}

/// [`bert_tiny_encoder_roundings`] and the masked-LM head on top: the dense layer (32), GELU,
/// LayerNorm (64) and the tied projection (32), with `ulps` for erf and the reciprocal square
/// root.
pub fn bert_tiny_roundings(t: usize, ulps: usize) -> usize {
    bert_tiny_encoder_roundings(t, ulps) + 32 + 64 + 32 + 2 * ulps
}

/// Terms summed along the forward pass of the `gpt2-ml-tiny` fixture over `t` positions, each a
/// rounding relative to the magnitudes (see [`difference_bound`]): the embedding LayerNorm (2 x
/// 32 and a reciprocal square root); per layer, q, k and v (32), scores (head size 8), softmax
/// and attention-weighted values (t each), the projection (32), both LayerNorms (64 each), the
/// intermediate (32) and output (96) layers, with `ulps` for each of exp, erf and the two
/// reciprocal square roots; then the tied head (32).
pub fn gpt2_ml_tiny_roundings(t: usize, ulps: usize) -> usize {
    (64 + ulps) + 2 * (32 + 8 + 2 * t + 32 + 64 + 64 + 32 + 96 + 4 * ulps) + 32
}

/// Terms summed along the forward pass of the T5 fixtures (`t5-tiny`, `t5-v1_1-tiny`) over `t`
/// encoder and `t` decoder positions, each a rounding relative to the magnitudes (see
/// [`difference_bound`]): per encoder layer (3 at most) the RMS norm (32), q, k, v (32), scores
/// (8), softmax and values (t each), o (32), the RMS norm (32), wi (32) and wo (48), with `ulps`
/// for exp, the activation and the two reciprocal square roots, then the final norm; per decoder
/// layer (2) the same with cross-attention (q, k, v, scores, softmax and values, o, and a norm)
/// as well; then the final norm and the head (32).
pub fn t5_tiny_roundings(t: usize, ulps: usize) -> usize {
    let encoder = 3 * (32 + 32 + 8 + 2 * t + 32 + 32 + 32 + 48 + 4 * ulps) + (32 + ulps);
    let decoder = 2 * (3 * 32 + 32 + 8 + 4 * t + 32 + 32 + 8 + 32 + 32 + 48 + 6 * ulps);
    encoder + decoder + (32 + ulps) + 32
}

/// Ulps of error in exp, tanh, sine, cosine and the reciprocal square root on the CPU.
pub const CPU_ULPS: usize = 4;

/// The same on a Vulkan device: the specification allows exp 3 + 2|x| ulps, with |x| below 6
/// for these fixtures' activations.
pub const VULKAN_ULPS: usize = 16;

/// The fixtures' reference logits are written with 7 significant digits: 5 ε more.
pub const FIXTURE_DIGITS: usize = 5;

/// Saves `trainer`'s state as a checkpoint of the run in `dir` and returns the checkpoint's
/// folder (a model folder `from_pretrained` loads) and its files (what `restore` takes).
pub fn checkpoint<M: cinder_engine::lm::LanguageModel>(
    dir: &std::path::Path,
    trainer: &cinder_engine::train::Trainer<M>,
) -> (PathBuf, cinder_engine::run::Checkpoint) {
    use cinder_engine::run::{FsStorage, Run};
    let mut run = Run::new(Box::new(FsStorage::new(dir))).unwrap();
    let folder = run.save(trainer).unwrap();
    let latest = run.latest().unwrap().unwrap();
    (folder, run.checkpoint(&latest).unwrap())
}

/// A model's weights by their interchange names, as f32 values.
pub fn named_weights<M: cinder_engine::lm::LanguageModel>(model: &M) -> Vec<(String, Vec<f32>)> {
    model
        .export_tensors()
        .unwrap()
        .into_iter()
        .map(|(name, data)| (name, data.try_into_vec::<f32>().unwrap()))
        .collect()
}
