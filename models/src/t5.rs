//! T5 (Raffel et al.; Hugging Face `T5ForConditionalGeneration`): an encoder-decoder transformer.
//! Positions enter only as a learned bias on the attention scores, looked up by bucketed
//! relative distance in the first layer of each stack and shared by all its layers. Norms are
//! RMS norms without bias or mean, placed before each sub-layer; projections have no bias;
//! attention scores are not divided by sqrt(D) (T5 folds that into the initialisation).
//!
//! ```text
//! e = Encoder(shared(input))             per layer: x += SelfAttn(N(x), bidirectional bias)
//!                                                   x += FF(N(x));          e = N(x)
//! y = Decoder(shared(target shifted right), e)
//!                                        per layer: y += SelfAttn(N(y), causal bias)
//!                                                   y += CrossAttn(N(y), e)
//!                                                   y += FF(N(y));          y = N(y)
//! logits = y · d_model^-0.5 · sharedᵀ    (tied head, original T5)
//!        | lm_head(y)                    (untied head, T5 v1.1)
//! ```
//!
//! The feed-forward is `wo(act(wi(x)))` (original T5: ReLU) or the gated `wo(act(wi_0(x)) *
//! wi_1(x))` (v1.1: GELU with the tanh approximation). Weights load from and save to a Hugging
//! Face folder, whose linear weights are `[out, in]` (transposed on load and export).
//!
//! B=batch, S=encoder positions, T=decoder positions (new), K=keys, C=d_model, H=heads,
//! D=d_kv, F=d_ff, V=vocab

use std::path::Path;

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::activation::{relu, silu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cinder_engine::Error;
use cinder_engine::burn;
use cinder_engine::generate::GenerateConfig;
use cinder_engine::lm::{Decoder, LanguageModel, Objective};
use cinder_engine::run::Checkpoint;
use cinder_engine::weights::{
    NamedTensors, check_config_sizes, folder_weights, load_parameters, transpose_2d,
};

use crate::blocks::{
    KvCache, LayerCache, causal_mask, extend_cache, gelu_exact, gelu_tanh, linear,
};

/// The engine's result (not imported as `Result`: the `Config` derive expects the std one).
type EngineResult<T> = cinder_engine::Result<T>;

/// The `model_type` of a T5 `config.json`.
pub const MODEL_TYPE: &str = "t5";

/// T5 hyper-parameters, read from and written to a Hugging Face `config.json`.
#[derive(Config, Debug, PartialEq)]
pub struct T5Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of each attention head.
    pub d_kv: usize,
    /// Width of the feed-forward layer.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (default: as many as the encoder's).
    pub num_decoder_layers: Option<usize>,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Buckets of relative distance (half of them per direction in the encoder).
    #[config(default = 32)]
    pub relative_attention_num_buckets: usize,
    /// Distances from this one on share the last bucket.
    #[config(default = 128)]
    pub relative_attention_max_distance: usize,
    /// Dropout on embeddings, attention probabilities, the feed-forward's hidden layer and
    /// every residual branch.
    #[config(default = 0.1)]
    pub dropout_rate: f64,
    /// RMS norm epsilon.
    #[config(default = 1e-6)]
    pub layer_norm_epsilon: f64,
    /// Scale of the initial weights.
    #[config(default = 1.0)]
    pub initializer_factor: f64,
    /// The feed-forward: `relu`, `gelu`, `gelu_new`, `silu`, or `gated-` one of those
    /// (`gated-gelu` is T5 v1.1's, with the tanh GELU).
    #[config(default = "String::from(\"relu\")")]
    pub feed_forward_proj: String,
    /// Whether the output head is the shared embedding (then the decoder's output is scaled by
    /// d_model^-0.5 before it, unless `scale_decoder_outputs` says otherwise).
    #[config(default = true)]
    pub tie_word_embeddings: bool,
    /// Whether the decoder's output is scaled by d_model^-0.5 before the head (default: when
    /// the head is tied), as transformers 5 writes it.
    pub scale_decoder_outputs: Option<bool>,
    /// Padding token id.
    #[config(default = 0)]
    pub pad_token_id: usize,
    /// End-of-sequence token id (appended to every input, ends every target).
    #[config(default = 1)]
    pub eos_token_id: usize,
    /// The token the decoder starts from.
    #[config(default = 0)]
    pub decoder_start_token_id: usize,
    /// The longest sequence Cinder decodes or trains on (relative positions set no hard limit).
    #[config(default = 512)]
    pub n_positions: usize,
}

/// The feed-forward's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activation {
    Relu,
    Gelu,
    GeluTanh,
    Silu,
}

impl Activation {
    fn apply(self, x: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Relu => relu(x),
            Self::Gelu => gelu_exact(x),
            Self::GeluTanh => gelu_tanh(x),
            Self::Silu => silu(x),
        }
    }
}

impl T5Config {
    /// The `tiny` shape of the unit tests: 2 + 2 layers of width 32, 4 heads of 8.
    pub fn tiny() -> Self {
        Self::new(65, 32, 8, 64, 2, 4)
    }

    /// Reads a `config.json`; a missing required key is an error naming the file.
    pub fn from_file(path: &Path) -> EngineResult<Self> {
        crate::read_config_file(path, Self::from_json)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> EngineResult<Self> {
        let required = [
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_heads",
        ];
        crate::parse_checked(
            path,
            text,
            &Self::new(0, 0, 0, 0, 0, 0),
            &required,
            "T5",
            |c| c.check(),
        )
    }

    /// Decoder layers.
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether the decoder's output is scaled by d_model^-0.5 before the head.
    pub fn scales_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    /// Whether the feed-forward is gated (`gated-...`).
    pub fn is_gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// The feed-forward's activation and whether it is gated.
    fn activation(&self) -> EngineResult<(Activation, bool)> {
        let (gated, name) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(rest) => (true, rest),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match name {
            "relu" => Activation::Relu,
            // transformers maps `gated-gelu` to the tanh GELU, plain `gelu` to the exact one.
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => {
                return Err(Error::Config(format!(
                    "unsupported feed_forward_proj '{}' (relu, gelu, gelu_new, silu, or gated- \
                     one of those)",
                    self.feed_forward_proj
                )));
            }
        };
        Ok((act, gated))
    }

    /// Checks values that would make the model impossible to build.
    pub fn check(&self) -> EngineResult<()> {
        crate::check_positive(&[("layer_norm_epsilon", self.layer_norm_epsilon)])?;
        let bad = |m: String| Err(Error::Config(m));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            ("num_heads", self.num_heads),
            ("n_positions", self.n_positions),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return bad(format!("{name} must be positive"));
        }
        if self.relative_attention_num_buckets < 4 {
            return bad(format!(
                "relative_attention_num_buckets {} is below 4",
                self.relative_attention_num_buckets
            ));
        }
        // The logarithmic buckets start at a quarter of the buckets (half per direction, half
        // of those exact) and end at the maximum distance.
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return bad(format!(
                "relative_attention_max_distance {} must exceed a quarter of \
                 relative_attention_num_buckets ({})",
                self.relative_attention_max_distance, self.relative_attention_num_buckets
            ));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return bad(format!(
                "dropout_rate {} is not in [0, 1)",
                self.dropout_rate
            ));
        }
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id >= self.vocab_size {
                return bad(format!(
                    "{name} {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        self.activation().map(|_| ())
    }

    /// The config as Hugging Face writes it.
    pub fn to_json(&self) -> EngineResult<serde_json::Value> {
        let mut value =
            crate::hf_config_json(self, MODEL_TYPE, "T5ForConditionalGeneration", true)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("is_encoder_decoder".into(), true.into());
            map.insert("num_decoder_layers".into(), self.decoder_layers().into());
        }
        Ok(value)
    }

    /// Builds a randomly initialised model, as transformers initialises T5: the embedding (and
    /// an untied head) N(0, f), queries N(0, f (C D)^-1/2), keys, values and the feed-forward's
    /// input N(0, f C^-1/2), outputs N(0, f (H D)^-1/2) and N(0, f F^-1/2), position biases
    /// N(0, f C^-1/2), norms at one (f = `initializer_factor`). Fails on an unsupported
    /// `feed_forward_proj`.
    pub fn init(&self, device: &Device) -> EngineResult<T5> {
        let (act, gated) = self.activation()?;
        let f = self.initializer_factor;
        let (c, d, h, ff) = (self.d_model, self.d_kv, self.num_heads, self.d_ff);
        let linear = |i: usize, o: usize, std: f64| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        let inv_sqrt = |n: usize| (n as f64).powf(-0.5);
        let norm = || {
            RmsNormConfig::new(c)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.dropout_rate).init();
        let attention = || Attention {
            q: linear(c, h * d, f * inv_sqrt(c * d)),
            k: linear(c, h * d, f * inv_sqrt(c)),
            v: linear(c, h * d, f * inv_sqrt(c)),
            o: linear(h * d, c, f * inv_sqrt(h * d)),
            dropout: dropout(),
            n_heads: h,
        };
        let input = || linear(c, ff, f * inv_sqrt(c));
        let feed_forward = || FeedForward {
            wi: input(),
            wi_1: gated.then(input),
            wo: linear(ff, c, f * inv_sqrt(ff)),
            dropout: dropout(),
            act,
        };
        let sublayer = || SubLayer {
            norm: norm(),
            dropout: dropout(),
        };
        let bias_table = || {
            EmbeddingConfig::new(self.relative_attention_num_buckets, h)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: f * inv_sqrt(c),
                })
                .init(device)
        };
        let encoder = Stack {
            relative_attention_bias: bias_table(),
            blocks: (0..self.num_layers)
                .map(|_| Block {
                    self_attn: attention(),
                    self_attn_sub: sublayer(),
                    cross: None,
                    cross_sub: None,
                    ff: feed_forward(),
                    ff_sub: sublayer(),
                })
                .collect(),
            final_norm: norm(),
            dropout: dropout(),
            bidirectional: true,
            num_buckets: self.relative_attention_num_buckets,
            max_distance: self.relative_attention_max_distance,
        };
        let decoder = Stack {
            relative_attention_bias: bias_table(),
            blocks: (0..self.decoder_layers())
                .map(|_| Block {
                    self_attn: attention(),
                    self_attn_sub: sublayer(),
                    cross: Some(attention()),
                    cross_sub: Some(sublayer()),
                    ff: feed_forward(),
                    ff_sub: sublayer(),
                })
                .collect(),
            final_norm: norm(),
            dropout: dropout(),
            bidirectional: false,
            num_buckets: self.relative_attention_num_buckets,
            max_distance: self.relative_attention_max_distance,
        };
        let normal = Initializer::Normal { mean: 0.0, std: f };
        Ok(T5 {
            shared: EmbeddingConfig::new(self.vocab_size, c)
                .with_initializer(normal.clone())
                .init(device),
            encoder,
            decoder,
            lm_head: (!self.tie_word_embeddings).then(|| linear(c, self.vocab_size, f)),
            config: self.clone(),
        })
    }
}

/// T5's bucket for a key `relative` positions after the query (negative: before it), as
/// transformers' `_relative_position_bucket` computes it in f32: half the buckets per direction
/// when `bidirectional` (the encoder), only the past otherwise (the decoder); within each, the
/// first half exact distances and the rest logarithmically wider up to `max_distance`.
pub fn relative_position_bucket(
    relative: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> i64 {
    let mut buckets = num_buckets as i64;
    let mut bucket = 0;
    let distance = if bidirectional {
        buckets /= 2;
        if relative > 0 {
            bucket += buckets;
        }
        relative.abs()
    } else {
        (-relative).max(0)
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return bucket + distance;
    }
    let span = (max_distance as f64 / max_exact as f64).ln() as f32;
    let log = (distance as f32 / max_exact as f32).ln() / span * (buckets - max_exact) as f32;
    bucket + (max_exact + log as i64).min(buckets - 1)
}

/// Multi-head attention without biases or score scaling (self- or cross-attention).
#[derive(Module, Debug)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    dropout: Dropout,
    n_heads: usize,
}

impl Attention {
    /// `[B, L, C]` -> `[B, H, L, D]` through `proj`.
    fn heads(&self, proj: &Linear, x: Tensor<3>) -> Tensor<4> {
        let [b, l, _] = x.dims();
        let y = linear(proj, x);
        let d = y.dims()[2] / self.n_heads;
        y.reshape([b, l, self.n_heads, d]).swap_dims(1, 2)
    }

    /// Keys and values of `x` (the encoder's output, for cross-attention).
    ///
    /// # Shapes
    /// - x: `[B, K, C]` -> `[B, H, K, D]` each
    fn keys_values(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (self.heads(&self.k, x.clone()), self.heads(&self.v, x))
    }

    /// Attention of the queries of `x` over `keys`/`values`, with `bias` added to the scores
    /// and `masked` keys excluded.
    ///
    /// # Shapes
    /// - x: `[B, T, C]`; keys, values: `[B, H, K, D]`; bias, masked: `[B, H, T, K]`
    /// - output: `[B, T, C]`
    fn attend(
        &self,
        x: Tensor<3>,
        keys: Tensor<4>,
        values: Tensor<4>,
        bias: Option<Tensor<4>>,
        masked: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let q = self.heads(&self.q, x);
        let mut scores = q.matmul(keys.swap_dims(2, 3)); // [B, H, T, K]
        if let Some(bias) = bias {
            scores = scores + bias;
        }
        if let Some(masked) = masked {
            scores = scores.mask_fill(masked, f32::NEG_INFINITY);
        }
        let probs = self.dropout.forward(softmax(scores, 3));
        let y = probs.matmul(values); // [B, H, T, D]
        let hd = y.dims()[1] * y.dims()[3];
        linear(&self.o, y.swap_dims(1, 2).reshape([b, t, hd]))
    }
}

/// The feed-forward: `wo(act(wi(x)))`, or gated `wo(act(wi(x)) * wi_1(x))` (where Hugging
/// Face names `wi` `wi_0`).
#[derive(Module, Debug)]
pub struct FeedForward {
    wi: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
    dropout: Dropout,
    #[module(skip)]
    act: Activation,
}

impl FeedForward {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut hidden = self.act.apply(linear(&self.wi, x.clone()));
        if let Some(gate) = &self.wi_1 {
            hidden = hidden * linear(gate, x);
        }
        linear(&self.wo, self.dropout.forward(hidden))
    }
}

/// A sub-layer's norm in front and dropout on its branch.
#[derive(Module, Debug)]
pub struct SubLayer {
    norm: RmsNorm,
    dropout: Dropout,
}

/// One layer: self-attention, cross-attention (decoder only), feed-forward, each a
/// pre-normalised residual branch.
#[derive(Module, Debug)]
pub struct Block {
    self_attn: Attention,
    self_attn_sub: SubLayer,
    cross: Option<Attention>,
    cross_sub: Option<SubLayer>,
    ff: FeedForward,
    ff_sub: SubLayer,
}

/// What a decoder layer's cross-attention reads: the encoder's keys and values, and the
/// encoder's padding (`true` where excluded) as `[B, H, T, S]`.
struct Cross<'a> {
    keys_values: &'a (Tensor<4>, Tensor<4>),
    masked: Option<Tensor<4, Bool>>,
}

impl Block {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`; bias, masked: `[B, H, T, K]` (K = past + T)
    fn forward(
        &self,
        x: Tensor<3>,
        bias: Tensor<4>,
        masked: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
        cross: Option<Cross<'_>>,
    ) -> Tensor<3> {
        let normed = self.self_attn_sub.norm.forward(x.clone());
        let (mut k, mut v) = self.self_attn.keys_values(normed.clone());
        if let Some(cache) = cache {
            (k, v) = extend_cache(cache, k, v);
        }
        let attn = self.self_attn.attend(normed, k, v, Some(bias), masked);
        let mut x = x + self.self_attn_sub.dropout.forward(attn);
        if let (Some(attention), Some(sub), Some(cross)) = (&self.cross, &self.cross_sub, cross) {
            let (k, v) = cross.keys_values.clone();
            let attn = attention.attend(sub.norm.forward(x.clone()), k, v, None, cross.masked);
            x = x + sub.dropout.forward(attn);
        }
        let ff = self.ff.forward(self.ff_sub.norm.forward(x.clone()));
        x + self.ff_sub.dropout.forward(ff)
    }
}

/// The encoder's or decoder's layers, its position-bias table and its final norm.
#[derive(Module, Debug)]
pub struct Stack {
    relative_attention_bias: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    dropout: Dropout,
    /// Whether keys after the query have buckets of their own (the encoder).
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
}

impl Stack {
    /// The position bias of `b` rows for the queries at positions `queries` over keys `0..k`.
    ///
    /// # Shapes
    /// - output: `[B, H, T, K]` (T = the number of queries)
    fn position_bias(
        &self,
        queries: std::ops::Range<usize>,
        k: usize,
        b: usize,
        device: &Device,
    ) -> Tensor<4> {
        let t = queries.len();
        let ids: Vec<i64> = queries
            .flat_map(|q| {
                (0..k).map(move |key| {
                    relative_position_bucket(
                        key as i64 - q as i64,
                        self.bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [t, k]), device);
        let bias = self.relative_attention_bias.forward(ids); // [T, K, H]
        let h = bias.dims()[2];
        bias.permute([2, 0, 1])
            .unsqueeze::<4>()
            .expand([b, h, t, k])
    }
}

/// `true` at padded keys of `mask` (`true` at real tokens), for `t` queries and `h` heads.
///
/// # Shapes
/// - mask: `[B, K]` -> `[B, H, T, K]`
fn padding_mask(mask: &Tensor<2, Bool>, h: usize, t: usize) -> Tensor<4, Bool> {
    let [b, k] = mask.dims();
    mask.clone()
        .bool_not()
        .reshape([b, 1, 1, k])
        .expand([b, h, t, k])
}

/// The T5 encoder-decoder with its language-model head.
#[derive(Module, Debug)]
pub struct T5 {
    shared: Embedding,
    encoder: Stack,
    decoder: Stack,
    lm_head: Option<Linear>,
    #[module(skip)]
    config: T5Config,
}

/// Decoding state of a T5 decoder: its self-attention cache, and the encoder's keys and values
/// for each layer's cross-attention (one prompt, so no padding), following the beams.
#[derive(Debug)]
pub struct T5Cache {
    self_attn: KvCache,
    cross: Vec<(Tensor<4>, Tensor<4>)>,
}

impl T5 {
    /// The model's configuration.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The encoder's output for `input` (real tokens where `mask` is `true`; `None`: no
    /// padding).
    ///
    /// # Shapes
    /// - input, mask: `[B, S]` -> `[B, S, C]`
    pub fn encode(&self, input: Tensor<2, Int>, mask: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        let [b, s] = input.dims();
        let device = input.device();
        let stack = &self.encoder;
        let h = self.config.num_heads;
        let bias = stack.position_bias(0..s, s, b, &device);
        let masked = mask.map(|m| padding_mask(m, h, s));
        let mut x = stack.dropout.forward(self.shared.forward(input));
        for block in &stack.blocks {
            x = block.forward(x, bias.clone(), masked.clone(), None, None);
        }
        stack.dropout.forward(stack.final_norm.forward(x))
    }

    /// Each decoder layer's cross-attention keys and values of the encoder's output.
    ///
    /// # Shapes
    /// - encoded: `[B, S, C]` -> `[B, H, S, D]` each
    fn cross_keys_values(&self, encoded: &Tensor<3>) -> Vec<(Tensor<4>, Tensor<4>)> {
        self.decoder
            .blocks
            .iter()
            .filter_map(|block| block.cross.as_ref())
            .map(|cross| cross.keys_values(encoded.clone()))
            .collect()
    }

    /// Decoder logits for `tokens` continuing `cache` (or from the start without one), reading
    /// the encoder through `cross` (each layer's keys and values) with its padding `encoder_mask`.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, V]`
    fn decode(
        &self,
        tokens: Tensor<2, Int>,
        cross: &[(Tensor<4>, Tensor<4>)],
        encoder_mask: Option<&Tensor<2, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let k = past + t;
        let h = self.config.num_heads;
        let stack = &self.decoder;
        let bias = stack.position_bias(past..k, k, b, &device);
        let causal = (t > 1).then(|| {
            causal_mask(t, k, &device)
                .unsqueeze::<4>()
                .expand([b, h, t, k])
        });
        let cross_masked = encoder_mask.map(|m| padding_mask(m, h, t));
        let mut x = stack.dropout.forward(self.shared.forward(tokens));
        for (i, block) in stack.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            let cross = Cross {
                keys_values: &cross[i],
                masked: cross_masked.clone(),
            };
            x = block.forward(x, bias.clone(), causal.clone(), layer_cache, Some(cross));
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = stack.dropout.forward(stack.final_norm.forward(x));
        self.head(x)
    }

    /// The output head (with T5's scaling where the config asks for it).
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, V]`
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let x = if self.config.scales_decoder_outputs() {
            x.mul_scalar((self.config.d_model as f64).powf(-0.5))
        } else {
            x
        };
        match &self.lm_head {
            Some(head) => linear(head, x),
            None => crate::blocks::tied_logits(x, &self.shared),
        }
    }

    /// Logits of the decoder reading `decoder_input` over the encoded `input`.
    ///
    /// # Shapes
    /// - input, mask: `[B, S]`; decoder_input: `[B, T]` -> `[B, T, V]`
    pub fn forward_with(
        &self,
        input: Tensor<2, Int>,
        mask: Option<Tensor<2, Bool>>,
        decoder_input: Tensor<2, Int>,
    ) -> Tensor<3> {
        let encoded = self.encode(input, mask.as_ref());
        let cross = self.cross_keys_values(&encoded);
        self.decode(decoder_input, &cross, mask.as_ref(), None)
    }

    /// The decoder conditioned on `prompt` (which gets the end-of-sequence token appended when it
    /// lacks one), ready for the engine's decoding loops, and the decoder's first input (the
    /// start token).
    pub fn condition(
        &self,
        prompt: &[u32],
        device: &Device,
    ) -> EngineResult<(T5Decoding<'_>, Vec<u32>)> {
        let vocab = self.config.vocab_size as u32;
        if prompt.is_empty() {
            return Err(Error::Request(
                "the prompt is empty: give the encoder at least one token".into(),
            ));
        }
        if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
            return Err(Error::Request(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let eos = self.config.eos_token_id as u32;
        let mut ids = prompt.to_vec();
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
        let encoded = self.encode(cinder_engine::generate::token_tensor(&ids, device), None);
        Ok((
            T5Decoding {
                model: self,
                cross: self.cross_keys_values(&encoded),
            },
            vec![self.config.decoder_start_token_id as u32],
        ))
    }

    /// Loads a Hugging Face folder (`config.json` + `model.safetensors`).
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory.
    pub fn from_files(files: &Checkpoint, device: &Device) -> EngineResult<Self> {
        let config = T5Config::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (mut tensors, source) = folder_weights(files)?;
        for (name, data) in tensors.iter_mut() {
            if is_linear(name) {
                *data = transpose_2d(data, &source, name)?;
            }
        }
        let layers = [
            ("num_layers", config.num_layers),
            (
                "num_decoder_layers",
                config.num_decoder_layers.unwrap_or(config.num_layers),
            ),
        ];
        let widths = [
            ("vocab_size", config.vocab_size),
            ("d_model", config.d_model),
            ("d_kv", config.d_kv),
            ("d_ff", config.d_ff),
            ("num_heads", config.num_heads),
            (
                "relative_attention_num_buckets",
                config.relative_attention_num_buckets,
            ),
        ];
        check_config_sizes(&source, &layers, &widths, &tensors)?;
        let model = config
            .init(device)
            .map_err(|e| Error::format(files.path("config.json"), e.to_string()))?;
        let gated = config.is_gated();
        let names = |path: &str| hf_names(path, gated);
        load_parameters(model, &mut tensors, &names, &source, device)
    }
}

/// A T5 decoder reading one encoded prompt: what the engine's decoding loops run.
#[derive(Debug)]
pub struct T5Decoding<'a> {
    model: &'a T5,
    cross: Vec<(Tensor<4>, Tensor<4>)>,
}

impl Decoder for T5Decoding<'_> {
    type Cache = T5Cache;

    fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }

    fn max_len(&self) -> usize {
        self.model.config.n_positions
    }

    fn new_cache(&self) -> T5Cache {
        T5Cache {
            self_attn: KvCache::default(),
            cross: self.cross.clone(),
        }
    }

    fn cache_len(cache: &T5Cache) -> usize {
        cache.self_attn.len()
    }

    fn reorder_cache(cache: &mut T5Cache, rows: &[usize], device: &Device) {
        cache.self_attn.reorder(rows, device);
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), device);
        for (k, v) in cache.cross.iter_mut() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
    }

    fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut T5Cache) -> Tensor<3> {
        let T5Cache { self_attn, cross } = cache;
        self.model.decode(tokens, cross, None, Some(self_attn))
    }
}

impl LanguageModel for T5 {
    fn family(&self) -> &'static str {
        MODEL_TYPE
    }

    fn objective(&self) -> Objective {
        Objective::Seq2Seq
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.n_positions
    }

    /// The decoder's logits when it reconstructs `tokens` from the encoder reading them (the
    /// decoder reads them shifted right behind the start token).
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let start = Tensor::<2, Int>::full(
            [b, 1],
            self.config.decoder_start_token_id as i64,
            &tokens.device(),
        );
        let shifted = if t > 1 {
            Tensor::cat(vec![start, tokens.clone().narrow(1, 0, t - 1)], 1)
        } else {
            start
        };
        self.forward_with(tokens, None, shifted)
    }

    fn forward_pairs(
        &self,
        input: Tensor<2, Int>,
        input_mask: Tensor<2, Bool>,
        decoder_input: Tensor<2, Int>,
    ) -> Tensor<3> {
        self.forward_with(input, Some(input_mask), decoder_input)
    }

    /// Reads `prompt` with the encoder and writes the decoder's answer (up to the
    /// end-of-sequence token).
    async fn continue_prompt(
        &self,
        prompt: &[u32],
        config: &GenerateConfig,
        device: &Device,
    ) -> EngineResult<Vec<u32>> {
        let (decoding, start) = self.condition(prompt, device)?;
        let mut config = config.clone();
        config.stop_tokens.push(self.config.eos_token_id as u32);
        let (ids, _) =
            cinder_engine::generate::generate_async(&decoding, &start, &config, device, |_| true)
                .await?;
        Ok(ids)
    }

    fn config_json(&self) -> EngineResult<serde_json::Value> {
        self.config.to_json()
    }

    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> EngineResult<NamedTensors> {
        let mut out = NamedTensors::new();
        for (path, data) in parameters {
            let Some(name) = hf_names(&path, self.config.is_gated()).into_iter().next() else {
                continue;
            };
            let data = if is_linear(&name) {
                transpose_2d(&data, Path::new("the model"), &name)?
            } else {
                data
            };
            out.insert(name, data);
        }
        Ok(out)
    }
}

/// Whether a Hugging Face tensor is a linear layer's weight, stored `[out, in]`.
fn is_linear(name: &str) -> bool {
    name == "lm_head.weight"
        || (name.ends_with(".weight")
            && (name.contains(".SelfAttention.")
                || name.contains(".EncDecAttention.")
                || name.contains(".DenseReluDense."))
            && !name.contains("relative_attention_bias"))
}

/// Hugging Face names for a module path (the first is the one written):
/// `encoder.blocks.0.self_attn.q.weight` -> `encoder.block.0.layer.0.SelfAttention.q.weight`,
/// `decoder.blocks.1.ff_sub.norm.gamma` -> `decoder.block.1.layer.2.layer_norm.weight`,
/// `encoder.relative_attention_bias.weight` ->
/// `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`.
/// A gated feed-forward's `ff.wi` is `wi_0`.
fn hf_names(path: &str, gated: bool) -> Vec<String> {
    let parts: Vec<&str> = path.split('.').collect();
    let name = match parts.as_slice() {
        ["shared", "weight"] => {
            return vec![
                "shared.weight".into(),
                "encoder.embed_tokens.weight".into(),
                "decoder.embed_tokens.weight".into(),
            ];
        }
        [stack, "relative_attention_bias", "weight"] => {
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        }
        [stack, "final_norm", "gamma"] => format!("{stack}.final_layer_norm.weight"),
        [stack, "blocks", i, module, rest @ ..] => {
            let ff_layer = if *stack == "decoder" { 2 } else { 1 };
            let inner = match (*module, rest) {
                ("self_attn", [proj, p]) => format!("layer.0.SelfAttention.{proj}.{p}"),
                ("self_attn_sub", ["norm", "gamma"]) => "layer.0.layer_norm.weight".into(),
                ("cross", [proj, p]) => format!("layer.1.EncDecAttention.{proj}.{p}"),
                ("cross_sub", ["norm", "gamma"]) => "layer.1.layer_norm.weight".into(),
                ("ff", [proj, p]) => {
                    let proj = if *proj == "wi" && gated { "wi_0" } else { proj };
                    format!("layer.{ff_layer}.DenseReluDense.{proj}.{p}")
                }
                ("ff_sub", ["norm", "gamma"]) => format!("layer.{ff_layer}.layer_norm.weight"),
                _ => return vec![path.to_string()],
            };
            format!("{stack}.block.{i}.{inner}")
        }
        _ => path.to_string(),
    };
    vec![name]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_directions_and_grow_logarithmically() {
        let b = |r| relative_position_bucket(r, true, 32, 128);
        assert_eq!((b(0), b(1), b(-1), b(7)), (0, 17, 1, 23));
        assert_eq!(b(-1000), 15, "far keys share the last bucket");
        let c = |r| relative_position_bucket(r, false, 32, 128);
        assert_eq!((c(5), c(0), c(-15)), (0, 0, 15));
        assert_eq!(c(-1000), 31);
    }
}
