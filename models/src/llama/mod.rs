//! LLaMA (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models") and the
//! models that share its layout (SmolLM2, TinyLlama, ...): RMSNorm before each sub-layer, rotary
//! position embeddings, a SwiGLU feed-forward layer, grouped-query attention (fewer key/value
//! heads than query heads), and a tied or untied output head. Matches Hugging Face
//! `LlamaForCausalLM`, whose checkpoint keys the fields mirror (`model.layers.N.self_attn.q_proj`).
//!
//! Rotary embeddings use Hugging Face's layout (the two halves of each head are rotated
//! together); GGUF files store query and key rows permuted for llama.cpp's interleaved layout,
//! and [`Llama::from_gguf`] undoes that permutation.
//!
//! B=batch, T=time, S=past+time, C=hidden, H=query heads, K=key/value heads, D=head size,
//! F=feed-forward width, V=vocab

use std::path::Path;
use std::sync::Arc;

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::Error;
use cinder_engine::burn;
use cinder_engine::gguf::GgufFile;
use cinder_engine::lm::CausalLm;
use cinder_engine::weights::{
    NamedTensors, load_parameters, named_parameters, read_safetensors_dir, transpose_2d,
};

use crate::blocks::{
    KvCache, LayerCache, causal_attention, extend_cache, kv_cache_methods, tied_logits,
};

mod quant;

use quant::{LayerQuant, QuantWeights, project, quant_project};

type EngineResult<T> = cinder_engine::Result<T>;

/// LLaMA hyper-parameters, read from and written to a Hugging Face `config.json`.
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (grouped-query attention); equal to the query heads when absent.
    pub num_key_value_heads: Option<usize>,
    /// Size of one head (`hidden_size / num_attention_heads` when absent).
    pub head_dim: Option<usize>,
    /// Longest sequence the model was trained for.
    #[config(default = 2048)]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Base of the rotary embedding frequencies.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Rotary settings as newer `config.json` files write them (`rope_theta`, `rope_type`).
    pub rope_parameters: Option<serde_json::Value>,
    /// Rotary scaling (Llama 3.1 and others); only its absence is supported.
    pub rope_scaling: Option<serde_json::Value>,
    /// Whether the output head shares the token embedding.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Feed-forward activation (only `silu` is supported).
    #[config(default = "String::from(\"silu\")")]
    pub hidden_act: String,
    /// Whether the attention projections have biases (not supported).
    #[config(default = false)]
    pub attention_bias: bool,
    /// Whether the feed-forward projections have biases (not supported).
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Standard deviation of the initial weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence token id, or a list of them.
    pub eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// SmolLM2-135M (Hugging Face, 2024): 30 layers of width 576, 9 query and 3 key/value heads.
    pub fn smollm2_135m() -> Self {
        Self::new(49152, 576, 1536, 30, 9)
            .with_num_key_value_heads(Some(3))
            .with_max_position_embeddings(8192)
            .with_rms_norm_eps(1e-5)
            .with_rope_theta(100_000.0)
            .with_tie_word_embeddings(true)
            .with_bos_token_id(Some(1))
            .with_eos_token_id(Some(2.into()))
    }

    /// A model small enough for unit tests, with grouped-query attention.
    pub fn tiny() -> Self {
        Self::new(96, 32, 64, 2, 4)
            .with_num_key_value_heads(Some(2))
            .with_max_position_embeddings(64)
    }

    /// Every optional key at its default (the required ones are zero).
    fn defaults() -> Self {
        Self::new(0, 0, 0, 0, 0)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Size of one head.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base, from `rope_parameters` when the file has them.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(self.rope_theta)
    }

    /// The end-of-sequence ids.
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| v as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Reads a Hugging Face `config.json`; a missing required key is an error naming the file.
    pub fn from_file(path: &Path) -> EngineResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let required = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ];
        let mut config: Self =
            crate::parse_config(path, &text, &Self::defaults(), &required, "LLaMA")?;
        config.rope_theta = config.rope_base();
        config
            .check()
            .map_err(|e| Error::format(path, e.to_string()))?;
        Ok(config)
    }

    /// Reads the hyper-parameters from a GGUF file's `llama.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> EngineResult<Self> {
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::format(
                file.path(),
                format!("architecture '{arch}' is not supported (llama is)"),
            ));
        }
        let n = |key: &str| file.get_u64(&format!("llama.{key}")).map(|v| v as usize);
        let vocab_size = match file.get_u64("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(_) => file.get_strings("tokenizer.ggml.tokens")?.len(),
        };
        let heads = n("attention.head_count")?;
        let config = Self::new(
            vocab_size,
            n("embedding_length")?,
            n("feed_forward_length")?,
            n("block_count")?,
            heads,
        )
        .with_num_key_value_heads(Some(n("attention.head_count_kv").unwrap_or(heads)))
        .with_max_position_embeddings(n("context_length")?)
        .with_rms_norm_eps(file.get_f64("llama.attention.layer_norm_rms_epsilon")?)
        .with_rope_theta(file.get_f64("llama.rope.freq_base").unwrap_or(10000.0))
        .with_tie_word_embeddings(file.tensor_info("output.weight").is_none())
        .with_bos_token_id(
            file.get_u64("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|v| v as usize),
        )
        .with_eos_token_id(
            file.get_u64("tokenizer.ggml.eos_token_id")
                .ok()
                .map(Into::into),
        );
        if let Ok(dims) = n("rope.dimension_count")
            && dims != config.head_size()
        {
            return Err(Error::format(
                file.path(),
                format!(
                    "rotary embeddings over {dims} of {} dimensions per head are not supported",
                    config.head_size()
                ),
            ));
        }
        config
            .check()
            .map_err(|e| Error::format(file.path(), e.to_string()))?;
        Ok(config)
    }

    /// Checks values that would make the model impossible to build or silently wrong.
    pub fn check(&self) -> EngineResult<()> {
        let bad = |m: String| Err(Error::Config(m));
        let (h, k) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || k == 0 || h % k != 0 {
            return bad(format!(
                "num_attention_heads {h} is not a multiple of num_key_value_heads {k}"
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(h) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {h}",
                self.hidden_size
            ));
        }
        if !self.head_size().is_multiple_of(2) {
            return bad(format!(
                "head size {} is odd; rotary embeddings need it even",
                self.head_size()
            ));
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad(
                "vocab_size, num_hidden_layers and intermediate_size must be positive".into(),
            );
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act '{}' is not supported (silu is)",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return bad("attention_bias and mlp_bias are not supported".into());
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" || self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return bad("scaled rotary embeddings (rope_scaling) are not supported".into());
        }
        Ok(())
    }

    /// The config as Hugging Face writes it.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.retain(|_, v| !v.is_null());
            map.insert("model_type".into(), "llama".into());
            map.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
        }
        value
    }

    /// Builds a randomly initialised model (normal weights with `initializer_range`, unit norms).
    pub fn init(&self, device: &Device) -> Llama {
        self.init_with(
            Initializer::Normal {
                mean: 0.0,
                std: self.initializer_range,
            },
            device,
        )
    }

    /// Builds the model with every matrix from `normal` (zeros when weights are about to be
    /// loaded: drawing random numbers for 135M parameters took a third of loading time).
    fn init_with(&self, normal: Initializer, device: &Device) -> Llama {
        let linear = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(normal.clone())
                .init(device)
        };
        let norm = || {
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let (c, d, f) = (self.hidden_size, self.head_size(), self.intermediate_size);
        let (h, k) = (self.num_attention_heads, self.kv_heads());
        let layers = (0..self.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: linear(c, h * d),
                    k_proj: linear(c, k * d),
                    v_proj: linear(c, k * d),
                    o_proj: linear(h * d, c),
                    n_head: h,
                    n_kv_head: k,
                    head_dim: d,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: linear(c, f),
                    up_proj: linear(c, f),
                    down_proj: linear(f, c),
                },
            })
            .collect();
        Llama {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, c)
                .with_initializer(normal.clone())
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!self.tie_word_embeddings).then(|| linear(c, self.vocab_size)),
            inv_freq: inverse_frequencies(self.rope_base(), d),
            config: self.clone(),
            quant: None,
        }
    }
}

/// Rotary frequencies `1 / base^(2i / D)`, computed in f32 as transformers does.
fn inverse_frequencies(base: f64, head_size: usize) -> Vec<f32> {
    (0..head_size / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_size as f32))
        .collect()
}

/// Cosines and sines of the rotary angles for a run of positions, each `[1, 1, T, D]` with the
/// half-width table repeated twice (Hugging Face's layout).
struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    fn new(inv_freq: &[f32], start: usize, t: usize, device: &Device) -> Self {
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
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
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
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        cache: Option<&mut LayerCache>,
        quant: Option<&LayerQuant>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, k, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2); // [B, n, T, D]
        let q = rotary.apply(heads(project(&self.q_proj, quant, quant::Q, x.clone()), h));
        let key = project(&self.k_proj, quant, quant::K, x.clone());
        let mut key = rotary.apply(heads(key, k));
        let mut value = heads(project(&self.v_proj, quant, quant::V, x), k);
        if let Some(cache) = cache {
            (key, value) = extend_cache(cache, key, value);
        }
        let y = causal_attention(q, repeat_kv(key, h / k), repeat_kv(value, h / k)); // [B, H, T, D]
        let y = y.swap_dims(1, 2).reshape([b, t, h * d]);
        project(&self.o_proj, quant, quant::O, y)
    }
}

/// The SwiGLU feed-forward layer: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<3>, quant: Option<&LayerQuant>) -> Tensor<3> {
        let gate = silu(project(&self.gate_proj, quant, quant::GATE, x.clone()));
        let up = project(&self.up_proj, quant, quant::UP, x);
        project(&self.down_proj, quant, quant::DOWN, gate * up)
    }
}

/// One pre-RMSNorm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// The seven projections, in the order of [`quant::GGUF_NAMES`].
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
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

    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        cache: Option<&mut LayerCache>,
        quant: Option<&LayerQuant>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            rotary,
            cache,
            quant,
        );
        let x = x + attn;
        x.clone()
            + self
                .mlp
                .forward(self.post_attention_layernorm.forward(x), quant)
    }
}

/// The LLaMA language model.
#[derive(Module, Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    #[module(skip)]
    inv_freq: Vec<f32>,
    #[module(skip)]
    config: LlamaConfig,
    /// Block-quantized projections and head; when present the dense ones are placeholders.
    #[module(skip)]
    quant: Option<Arc<QuantWeights>>,
}

/// Whether a Hugging Face tensor is a projection stored `[out, in]` (Burn keeps `[in, out]`).
fn is_projection(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// Hugging Face names for a module path: `layers.0.norm.gamma` -> `model.layers.0.norm.weight`.
fn hf_names(path: &str) -> Vec<String> {
    let name = path.replace(".gamma", ".weight");
    if name.starts_with("lm_head") {
        vec![name]
    } else {
        vec![format!("model.{name}")]
    }
}

impl Llama {
    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Logits for `tokens`, continuing the sequence in `cache` when there is one.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, V]`
    fn run(&self, tokens: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let rotary = Rotary::new(&self.inv_freq, past, t, &tokens.device());
        let mut x = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let quant = self.quant.as_ref().map(|q| &q.layers[i]);
            x = layer.forward(x, &rotary, cache.as_deref_mut().map(|c| c.layer(i)), quant);
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = self.norm.forward(x);
        if let Some(q) = &self.quant {
            return quant_project(&q.head, x);
        }
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => tied_logits(x, &self.embed_tokens),
        }
    }

    /// Builds the model from tensors under Hugging Face names, `[out, in]` projections included.
    pub fn from_hf_tensors(
        config: &LlamaConfig,
        mut tensors: NamedTensors,
        source: &Path,
        device: &Device,
    ) -> EngineResult<Self> {
        for (name, data) in tensors.iter_mut() {
            if is_projection(name) {
                *data = transpose_2d(data, source, name)?;
            }
        }
        let model = config.init_with(Initializer::Zeros, device);
        load_parameters(model, &mut tensors, &hf_names, source, device)
    }

    /// Loads a Hugging Face `LlamaForCausalLM` folder (`config.json` and `model.safetensors`, or
    /// shards listed in `model.safetensors.index.json`). The tokenizer is loaded by the engine.
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let tensors = read_safetensors_dir(dir)?;
        Self::from_hf_tensors(&config, tensors, dir, device)
    }

    /// Loads the weights of a GGUF file (llama architecture), decoding quantized tensors to f32
    /// and undoing llama.cpp's permutation of the query and key rows.
    pub fn from_gguf(file: &GgufFile, device: &Device) -> EngineResult<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let d = config.head_size();
        let mut tensors = NamedTensors::new();
        let mut take = |gguf: &str, hf: String, heads: Option<usize>| -> EngineResult<()> {
            let mut data = file.tensor_f32(gguf)?;
            if let Some(heads) = heads {
                data = unpermute_rotary_rows(data, heads, d, file.path(), gguf)?;
            }
            tensors.insert(hf, data);
            Ok(())
        };
        take(
            "token_embd.weight",
            "model.embed_tokens.weight".into(),
            None,
        )?;
        take("output_norm.weight", "model.norm.weight".into(), None)?;
        if !config.tie_word_embeddings {
            take("output.weight", "lm_head.weight".into(), None)?;
        }
        for i in 0..config.num_hidden_layers {
            let l = |s: &str| format!("model.layers.{i}.{s}");
            let g = |s: &str| format!("blk.{i}.{s}");
            let (h, k) = (config.num_attention_heads, config.kv_heads());
            take(&g("attn_q.weight"), l("self_attn.q_proj.weight"), Some(h))?;
            take(&g("attn_k.weight"), l("self_attn.k_proj.weight"), Some(k))?;
            take(&g("attn_v.weight"), l("self_attn.v_proj.weight"), None)?;
            take(&g("attn_output.weight"), l("self_attn.o_proj.weight"), None)?;
            take(&g("ffn_gate.weight"), l("mlp.gate_proj.weight"), None)?;
            take(&g("ffn_up.weight"), l("mlp.up_proj.weight"), None)?;
            take(&g("ffn_down.weight"), l("mlp.down_proj.weight"), None)?;
            take(&g("attn_norm.weight"), l("input_layernorm.weight"), None)?;
            take(
                &g("ffn_norm.weight"),
                l("post_attention_layernorm.weight"),
                None,
            )?;
        }
        Self::from_hf_tensors(&config, tensors, file.path(), device)
    }
}

/// llama.cpp stores each head's query/key rows interleaved (`[x0, y0, x1, y1, ...]`, rotated in
/// adjacent pairs) where Hugging Face keeps the halves apart (`[x0, x1, ..., y0, y1, ...]`).
/// Row `h*D + 2i + s` of the file becomes row `h*D + s*D/2 + i`.
///
/// # Shapes
/// - data: `[heads * D, C]` -> same
pub fn unpermute_rotary_rows(
    data: TensorData,
    heads: usize,
    d: usize,
    source: &Path,
    name: &str,
) -> EngineResult<TensorData> {
    let shape = data.shape().to_vec();
    if shape.len() != 2 || shape[0] != heads * d {
        return Err(Error::format(
            source,
            format!(
                "tensor '{name}' has shape {shape:?}; expected {} rows ({heads} heads of {d})",
                heads * d
            ),
        ));
    }
    let cols = shape[1];
    let values = data
        .try_into_vec::<f32>()
        .map_err(|e| Error::format(source, format!("tensor '{name}': {e:?}")))?;
    let mut out = vec![0f32; values.len()];
    for (to, row) in out.chunks_exact_mut(cols).enumerate() {
        let from = rotary_file_row(to, d) * cols;
        row.copy_from_slice(&values[from..from + cols]);
    }
    Ok(TensorData::new(out, shape))
}

/// The file row that holds model row `r` of a rotated projection with heads of size `d`:
/// model row `h*D + s*D/2 + i` is file row `h*D + 2i + s`.
fn rotary_file_row(r: usize, d: usize) -> usize {
    let (h, rest) = (r / d, r % d);
    let (s, i) = (rest / (d / 2), rest % (d / 2));
    h * d + 2 * i + s
}

impl CausalLm for Llama {
    kv_cache_methods!();

    fn family(&self) -> &'static str {
        "llama"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_hf_json()
    }

    fn export_tensors(&self) -> EngineResult<NamedTensors> {
        let source = Path::new("model");
        let mut out = NamedTensors::new();
        for (path, data) in named_parameters(self)? {
            let Some(name) = hf_names(&path).into_iter().next() else {
                continue;
            };
            let data = if is_projection(&name) {
                transpose_2d(&data, source, &name)?
            } else {
                data
            };
            out.insert(name, data);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
    }

    #[test]
    fn cached_decoding_matches_the_full_forward() {
        let device = Device::flex();
        device.seed(5);
        let model = LlamaConfig::tiny().init(&device);
        let tokens = [3i64, 17, 42, 8, 90, 1, 55];
        let full = model.forward(ids(&tokens, &device));
        assert_eq!(full.dims(), [1, 7, 96]);
        let mut cache = model.new_cache();
        let _ = model.forward_cached(ids(&tokens[..3], &device), &mut cache);
        let _ = model.forward_cached(ids(&tokens[3..5], &device), &mut cache);
        let last = model.forward_cached(ids(&tokens[5..], &device), &mut cache);
        assert_eq!(Llama::cache_len(&cache), 7);
        let diff = (last - full.narrow(1, 5, 2))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-4, "cached decoding differs by {diff}");
    }

    #[test]
    fn rotary_permutation_round_trips() {
        // Two heads of size 4, one column: file rows interleave the halves of each head.
        let file_rows: Vec<f32> = vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        let data = TensorData::new(file_rows, [8, 1]);
        let hf = unpermute_rotary_rows(data, 2, 4, Path::new("x"), "q")
            .ok()
            .and_then(|d| d.try_into_vec::<f32>().ok())
            .unwrap_or_default();
        assert_eq!(hf, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn export_then_import_gives_the_same_logits() {
        let device = Device::flex();
        device.seed(9);
        let config = LlamaConfig::tiny();
        let model = config.init(&device);
        let back = Llama::from_hf_tensors(
            &config,
            model.export_tensors().unwrap(),
            Path::new("m"),
            &device,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let x = ids(&[1, 2, 3, 4], &device);
        let diff = (model.forward(x.clone()) - back.forward(x))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
        let names: Vec<String> = model.export_tensors().unwrap().into_keys().collect();
        assert!(names.contains(&"model.layers.1.self_attn.k_proj.weight".to_string()));
        assert!(names.contains(&"lm_head.weight".to_string()));
        assert!(names.contains(&"model.norm.weight".to_string()));
    }

    #[test]
    fn config_rejects_heads_that_do_not_group() {
        let config = LlamaConfig::tiny().with_num_key_value_heads(Some(3));
        let err = config
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }
}
