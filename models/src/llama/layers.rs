//! The LLaMA decoder layer: rotary position embeddings, grouped-query attention and the SwiGLU
//! feed-forward layer, each after an RMSNorm.
//!
//! B=batch, T=time, S=past+time, C=hidden, H=query heads, K=key/value heads, D=head size,
//! F=feed-forward width

use burn::module::{Initializer, Module};
use burn::nn::RmsNorm;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::shaders::activation::swiglu;

use super::LlamaConfig;
use crate::blocks::{LayerCache, causal_attention, extend_cache};
use crate::projection::Projection;

/// Rotary frequencies `1 / base^(2i / D)`, computed in f32 as transformers does.
pub(super) fn inverse_frequencies(base: f64, head_size: usize) -> Vec<f32> {
    (0..head_size / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_size as f32))
        .collect()
}

/// Cosines and sines of the rotary angles for a run of positions, each `[1, 1, T, D]` with the
/// half-width table repeated twice (Hugging Face's layout).
pub(super) struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    /// The tables for positions `start..start + t`.
    pub(super) fn new(inv_freq: &[f32], start: usize, t: usize, device: &Device) -> Self {
        let d = 2 * inv_freq.len();
        let mut cos = Vec::with_capacity(t * d);
        let mut sin = Vec::with_capacity(t * d);
        for p in start..start + t {
            let angles: Vec<f32> = inv_freq.iter().map(|&f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let table = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [1, 1, t, d]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// Rotates each head: `x cos + rotate_half(x) sin`, `rotate_half([a, b]) = [-b, a]`.
    ///
    /// # Shapes
    /// - x: `[B, heads, T, D]` -> same
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let first = x.clone().narrow(3, 0, d / 2);
        let second = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        // The tables are f32; training in f16 or bf16 rotates in that type.
        let dtype = x.dtype();
        let table = |t: &Tensor<4>| {
            if t.dtype() == dtype {
                t.clone()
            } else {
                t.clone().cast(dtype)
            }
        };
        x * table(&self.cos) + rotated * table(&self.sin)
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
}

/// Repeats each key/value head for the query heads that share it.
///
/// # Shapes
/// - x: `[B, K, S, D]` -> `[B, K * n, S, D]`
fn repeat_kv(x: Tensor<4>, n: usize) -> Tensor<4> {
    if n == 1 {
        return x;
    }
    let [b, k, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, k, n, s, d])
        .reshape([b, k * n, s, d])
}

impl Attention {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`; the cache holds `[B, K, S - T, D]` keys and values
    fn forward(&self, x: Tensor<3>, rotary: &Rotary, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, k, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2); // [B, n, T, D]
        let q = rotary.apply(heads(self.q_proj.forward(x.clone()), h));
        let mut key = rotary.apply(heads(self.k_proj.forward(x.clone()), k));
        let mut value = heads(self.v_proj.forward(x), k);
        if let Some(cache) = cache {
            (key, value) = extend_cache(cache, key, value);
        }
        let y = causal_attention(q, repeat_kv(key, h / k), repeat_kv(value, h / k)); // [B, H, T, D]
        let y = y.swap_dims(1, 2).reshape([b, t, h * d]);
        self.o_proj.forward(y)
    }
}

/// The SwiGLU feed-forward layer: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]` (through `[B, T, F]`)
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(swiglu(gate, up))
    }
}

/// Which rows of a projection carry rotary embeddings (llama.cpp stores those rows permuted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rows {
    /// The query projection's, in query heads.
    Query,
    /// The key projection's, in key/value heads.
    Key,
    /// None.
    Plain,
}

/// A layer's projections in the order of [`DecoderLayer::projections`]: the Hugging Face name
/// (`model.layers.N.<name>.weight`), the GGUF name (`blk.N.<name>.weight`) and the rotated rows.
pub(super) const PROJECTIONS: [(&str, &str, Rows); 7] = [
    ("self_attn.q_proj", "attn_q", Rows::Query),
    ("self_attn.k_proj", "attn_k", Rows::Key),
    ("self_attn.v_proj", "attn_v", Rows::Plain),
    ("self_attn.o_proj", "attn_output", Rows::Plain),
    ("mlp.gate_proj", "ffn_gate", Rows::Plain),
    ("mlp.up_proj", "ffn_up", Rows::Plain),
    ("mlp.down_proj", "ffn_down", Rows::Plain),
];

/// One pre-RMSNorm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// A layer with every projection drawn from `normal` (in the order of [`PROJECTIONS`],
    /// which seeded models depend on) and unit norms.
    pub(super) fn init(config: &LlamaConfig, normal: &Initializer, device: &Device) -> Self {
        let (c, d, f) = (
            config.hidden_size,
            config.head_size(),
            config.intermediate_size,
        );
        let (h, k) = (config.num_attention_heads, config.kv_heads());
        let linear = |i, o| Projection::init(i, o, normal, device);
        Self {
            input_layernorm: config.rms_norm(device),
            self_attn: Attention {
                q_proj: linear(c, h * d),
                k_proj: linear(c, k * d),
                v_proj: linear(c, k * d),
                o_proj: linear(h * d, c),
                n_head: h,
                n_kv_head: k,
                head_dim: d,
            },
            post_attention_layernorm: config.rms_norm(device),
            mlp: Mlp {
                gate_proj: linear(c, f),
                up_proj: linear(c, f),
                down_proj: linear(f, c),
            },
        }
    }

    /// The input norm and the post-attention norm.
    pub(super) fn norms(&self) -> (&RmsNorm, &RmsNorm) {
        (&self.input_layernorm, &self.post_attention_layernorm)
    }

    /// The seven projections, in the order of [`PROJECTIONS`].
    pub(super) fn projections(&self) -> [&Projection; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    /// The seven projections, in the order of [`PROJECTIONS`].
    pub(super) fn projections_mut(&mut self) -> [&mut Projection; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    pub(super) fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rotary, cache);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}
