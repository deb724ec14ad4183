//! LLaMA hyper-parameters: presets, Hugging Face `config.json` and GGUF metadata, validation,
//! and building a model from them.

use std::path::Path;

use burn::config::Config;
use burn::module::Initializer;
use burn::nn::{EmbeddingConfig, RmsNorm, RmsNormConfig};
use burn::tensor::Device;
use cinder_engine::Error;
use cinder_engine::burn;
use cinder_engine::gguf::GgufFile;

use super::Llama;
use super::layers::{DecoderLayer, inverse_frequencies};
use crate::projection::Projection;

/// The engine's result (not imported as `Result`: the `Config` derive expects the std one).
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
        crate::read_config_file(path, Self::from_json)
    }

    /// Parses the text of a Hugging Face `config.json`; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> EngineResult<Self> {
        let required = [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ];
        crate::parse_checked(path, text, &Self::defaults(), &required, "LLaMA", |c| {
            c.rope_theta = c.rope_base();
            c.check()
        })
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
        crate::check_positive(&[
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_base()),
        ])?;
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
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.num_hidden_layers == 0
            || self.intermediate_size == 0
            || self.head_size() == 0
        {
            return bad(
                "vocab_size, hidden_size, head_dim, num_hidden_layers and intermediate_size \
                 must be positive"
                    .into(),
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
    pub fn to_hf_json(&self) -> EngineResult<serde_json::Value> {
        crate::hf_config_json(self, "llama", "LlamaForCausalLM", true)
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
    pub(super) fn init_with(&self, normal: Initializer, device: &Device) -> Llama {
        let c = self.hidden_size;
        // The layers first: seeded models draw their weights in this order.
        let layers = (0..self.num_hidden_layers)
            .map(|_| DecoderLayer::init(self, &normal, device))
            .collect();
        Llama {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, c)
                .with_initializer(normal.clone())
                .init(device),
            layers,
            norm: self.rms_norm(device),
            lm_head: (!self.tie_word_embeddings)
                .then(|| Projection::init(c, self.vocab_size, &normal, device)),
            inv_freq: inverse_frequencies(self.rope_base(), self.head_size()),
            host: None,
            config: self.clone(),
        }
    }

    /// An RMSNorm over the residual stream.
    pub(super) fn rms_norm(&self, device: &Device) -> RmsNorm {
        RmsNormConfig::new(self.hidden_size)
            .with_epsilon(self.rms_norm_eps)
            .init(device)
    }
}
