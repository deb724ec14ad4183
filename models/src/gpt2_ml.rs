//! GPT2_ML (imcaspar/gpt2-ml, the Chinese GPT-2 that bert4keras loads as `gpt2_ml`): a causal
//! transformer whose block differs from OpenAI's GPT-2 and from BERT. Token and learned position
//! embeddings are summed and normalised; each block adds attention to its input without a norm
//! in front, then takes the feed-forward branch through a LayerNorm while its residual skips that
//! norm, and a second LayerNorm closes the block:
//!
//! ```text
//! x = LayerNorm(wte(tokens) + wpe(positions))
//! x = x + Attention(x)
//! x = LayerNorm_1(x + FFN(LayerNorm_0(x)))      (per block)
//! logits = x · wteᵀ                             (no final LayerNorm, no bias)
//! ```
//!
//! Matches bert4keras' `GPT2_ML` (a PyTorch transcription of it makes the test fixture,
//! tests/scripts/make_gpt2_ml_fixture.py). Parameters are saved under the names of the original
//! TensorFlow checkpoint (`newslm/layer00/query_layer/kernel`, ...), whose dense kernels are
//! `[in, out]` like Burn's `Linear`.
//!
//! B=batch, T=time, S=past+time, C=channels, H=heads, D=head size, V=vocab

use std::path::Path;

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::lm::{Blockwise, LanguageModel};
use cinder_engine::run::Checkpoint;
use cinder_engine::weights::{NamedTensors, check_config_sizes, folder_weights, load_parameters};

use crate::blocks::{
    KvCache, LayerCache, causal_attention_with_dropout, decoder_methods, extend_cache, gelu_exact,
    gelu_tanh, layer_norm, linear, tied_logits,
};

/// The engine's result (not imported as `Result`: the `Config` derive expects the std one).
type EngineResult<T> = cinder_engine::Result<T>;

/// The `model_type` Cinder writes into a GPT2_ML `config.json`.
pub const MODEL_TYPE: &str = "gpt2-ml";

/// GPT2_ML hyper-parameters, under the keys of the project's own `config.json` (the BERT-style
/// names bert4keras reads).
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2MlConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (number of learned positions).
    pub max_position_embeddings: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// `gelu` (exact, bert4keras' default) or `gelu_new` (tanh approximation).
    #[config(default = "String::from(\"gelu\")")]
    pub hidden_act: String,
    /// Dropout on the embeddings and both residual branches.
    #[config(default = 0.0)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[config(default = 0.0)]
    pub attention_probs_dropout_prob: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the initial weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<usize>,
}

impl Gpt2MlConfig {
    /// The `tiny` shape of the unit tests: 2 blocks of width 32 with 4 heads, context 16.
    pub fn tiny() -> Self {
        Self::new(65, 16, 32, 2, 4, 128)
    }

    /// The released GPT2_ML "mega" model: 48 blocks of width 1536, 1.5B parameters.
    pub fn mega() -> Self {
        Self::new(21128, 1024, 1536, 48, 24, 6144).with_initializer_range(0.014)
    }

    /// Reads a `config.json`; a missing required key is an error naming the file.
    pub fn from_file(path: &Path) -> EngineResult<Self> {
        crate::read_config_file(path, Self::from_json)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> EngineResult<Self> {
        let required = [
            "vocab_size",
            "max_position_embeddings",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ];
        crate::parse_checked(
            path,
            text,
            &Self::new(0, 0, 0, 0, 0, 0),
            &required,
            "GPT2_ML",
            |c| c.check(),
        )
    }

    /// Checks values that would make the model impossible to build.
    pub fn check(&self) -> EngineResult<()> {
        crate::check_positive(&[("layer_norm_eps", self.layer_norm_eps)])?;
        crate::check_shape(
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            &[
                ("vocab_size", self.vocab_size),
                ("max_position_embeddings", self.max_position_embeddings),
                ("num_hidden_layers", self.num_hidden_layers),
                ("intermediate_size", self.intermediate_size),
            ],
            &[
                ("hidden_dropout_prob", self.hidden_dropout_prob),
                (
                    "attention_probs_dropout_prob",
                    self.attention_probs_dropout_prob,
                ),
            ],
            ("hidden_act", &self.hidden_act),
        )
    }

    /// The config as Cinder writes it (`model_type` "gpt2-ml").
    pub fn to_json(&self) -> EngineResult<serde_json::Value> {
        crate::hf_config_json(self, MODEL_TYPE, "Gpt2MlLMHeadModel", false)
    }

    /// Builds a randomly initialised model: every weight N(0, `initializer_range`), zero
    /// biases, LayerNorms at one and zero.
    pub fn init(&self, device: &Device) -> Gpt2Ml {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.initializer_range,
        };
        let linear = |i, o| {
            let mut l = LinearConfig::new(i, o)
                .with_initializer(normal.clone())
                .init(device);
            l.bias = Some(Initializer::Zeros.init([o], device));
            l
        };
        let c = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(c)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.hidden_dropout_prob).init();
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                query_layer: linear(c, c),
                key_layer: linear(c, c),
                value_layer: linear(c, c),
                context_projection_layer: linear(c, c),
                attention_dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                attention_output_dropout: dropout(),
                mlp_ln0: ln(),
                intermediate: linear(c, self.intermediate_size),
                output: linear(self.intermediate_size, c),
                mlp_output_dropout: dropout(),
                mlp_ln1: ln(),
                n_head: self.num_attention_heads,
                tanh: self.hidden_act != "gelu",
                epsilon: self.layer_norm_eps,
            })
            .collect();
        let embedding = |n| {
            EmbeddingConfig::new(n, c)
                .with_initializer(normal.clone())
                .init(device)
        };
        Gpt2Ml {
            word_embed: embedding(self.vocab_size),
            pos_embed: embedding(self.max_position_embeddings),
            embed_norm: ln(),
            embed_dropout: dropout(),
            layers,
            config: self.clone(),
        }
    }
}

/// One GPT2_ML block: attention with its residual, then the feed-forward branch between two
/// LayerNorms.
#[derive(Module, Debug)]
pub struct Layer {
    query_layer: Linear,
    key_layer: Linear,
    value_layer: Linear,
    context_projection_layer: Linear,
    attention_dropout: Dropout,
    attention_output_dropout: Dropout,
    mlp_ln0: LayerNorm,
    intermediate: Linear,
    output: Linear,
    mlp_output_dropout: Dropout,
    mlp_ln1: LayerNorm,
    n_head: usize,
    tanh: bool,
    /// The LayerNorms' epsilon.
    #[module(skip)]
    epsilon: f64,
}

impl Layer {
    /// Causal self-attention over `x`, continuing `cache` when there is one.
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn attention(&self, x: Tensor<3>, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (h, d) = (self.n_head, c / self.n_head);
        let heads = |y: Tensor<3>| y.reshape([b, t, h, d]).swap_dims(1, 2); // [B, H, T, D]
        let q = heads(linear(&self.query_layer, x.clone()));
        let (mut k, mut v) = (
            heads(linear(&self.key_layer, x.clone())),
            heads(linear(&self.value_layer, x)),
        );
        if let Some(cache) = cache {
            (k, v) = extend_cache(cache, k, v);
        }
        let y = causal_attention_with_dropout(q, k, v, &self.attention_dropout); // [B, H, T, D]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        self.attention_output_dropout
            .forward(linear(&self.context_projection_layer, y))
    }

    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(&self, x: Tensor<3>, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let x = x.clone() + self.attention(x, cache);
        let hidden = linear(
            &self.intermediate,
            layer_norm(&self.mlp_ln0, self.epsilon, x.clone()),
        );
        let hidden = if self.tanh {
            gelu_tanh(hidden)
        } else {
            gelu_exact(hidden)
        };
        let ffn = self
            .mlp_output_dropout
            .forward(linear(&self.output, hidden));
        // The residual skips mlp_ln0: it is the block's input after attention.
        layer_norm(&self.mlp_ln1, self.epsilon, x + ffn)
    }
}

/// The GPT2_ML language model.
#[derive(Module, Debug)]
pub struct Gpt2Ml {
    word_embed: Embedding,
    pos_embed: Embedding,
    embed_norm: LayerNorm,
    embed_dropout: Dropout,
    layers: Vec<Layer>,
    #[module(skip)]
    config: Gpt2MlConfig,
}

impl Gpt2Ml {
    /// The model's configuration.
    pub fn config(&self) -> &Gpt2MlConfig {
        &self.config
    }

    /// Normalised token and position embeddings for positions `past..past + T`.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, C]`
    fn embed_from(&self, tokens: Tensor<2, Int>, past: usize) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let x = self.word_embed.forward(tokens) + self.pos_embed.forward(positions);
        let x = layer_norm(&self.embed_norm, self.config.layer_norm_eps, x);
        self.embed_dropout.forward(x)
    }

    /// Logits for `tokens`, continuing the sequence in `cache` when there is one.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, V]`
    fn run(&self, tokens: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed_from(tokens, past);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, cache.as_deref_mut().map(|c| c.layer(i)));
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        tied_logits(x, &self.word_embed)
    }

    /// Loads a folder (`config.json` + `model.safetensors`) Cinder wrote or converted.
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory.
    pub fn from_files(files: &Checkpoint, device: &Device) -> EngineResult<Self> {
        let config =
            Gpt2MlConfig::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (mut tensors, source) = folder_weights(files)?;
        let layers = [("num_hidden_layers", config.num_hidden_layers)];
        check_config_sizes(&source, &layers, &[], &tensors)?;
        load_parameters(
            config.init(device),
            &mut tensors,
            &tf_names,
            &source,
            device,
        )
    }
}

/// Checkpoint names for a module path: `layers.3.query_layer.weight` ->
/// `newslm/layer03/query_layer/kernel`, `embed_norm.gamma` ->
/// `newslm/embeddings/LayerNorm_embed_norm/gamma`.
fn tf_names(path: &str) -> Vec<String> {
    let leaf = |p: &str| match p {
        "weight" => "kernel".to_string(),
        other => other.to_string(),
    };
    let parts: Vec<&str> = path.split('.').collect();
    let name = match parts.as_slice() {
        ["word_embed" | "pos_embed", _] => format!("newslm/embeddings/{}", parts[0]),
        ["embed_norm", p] => format!("newslm/embeddings/LayerNorm_embed_norm/{p}"),
        ["layers", i, module, p] => {
            let i: usize = i.parse().unwrap_or(usize::MAX);
            let module = match *module {
                "mlp_ln0" | "mlp_ln1" => format!("LayerNorm_{module}"),
                other => other.to_string(),
            };
            format!("newslm/layer{i:02}/{module}/{}", leaf(p))
        }
        _ => path.to_string(),
    };
    vec![name]
}

impl Blockwise for Gpt2Ml {
    fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    fn has_dropout(&self) -> bool {
        self.config.hidden_dropout_prob > 0.0 || self.config.attention_probs_dropout_prob > 0.0
    }

    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed_from(tokens, 0)
    }

    fn block(&self, index: usize, x: Tensor<3>) -> Tensor<3> {
        self.layers[index].forward(x, None)
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        tied_logits(x, &self.word_embed)
    }
}

decoder_methods!(Gpt2Ml);

impl LanguageModel for Gpt2Ml {
    decoder_methods!();

    fn family(&self) -> &'static str {
        MODEL_TYPE
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn config_json(&self) -> EngineResult<serde_json::Value> {
        self.config.to_json()
    }

    fn blockwise(&self) -> Option<&dyn Blockwise> {
        Some(self)
    }

    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> EngineResult<NamedTensors> {
        Ok(parameters
            .into_iter()
            .filter_map(|(path, data)| tf_names(&path).into_iter().next().map(|name| (name, data)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_engine::lm::Decoder;

    #[test]
    fn cached_decoding_equals_the_full_forward() {
        let device = Device::flex();
        device.seed(5);
        let model = Gpt2MlConfig::tiny().init(&device);
        let ids: Vec<i64> = vec![3, 1, 4, 1, 5, 9, 2];
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, 7]), &device);
        let full = model.forward(tokens);
        assert_eq!(full.dims(), [1, 7, 65]);
        let mut cache = model.new_cache();
        let prefix =
            Tensor::<2, Int>::from_data(TensorData::new(ids[..5].to_vec(), [1, 5]), &device);
        let mut last = model.forward_cached(prefix, &mut cache);
        for &id in &ids[5..] {
            let one = Tensor::<2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
            last = model.forward_cached(one, &mut cache);
        }
        assert_eq!(Gpt2Ml::cache_len(&cache), 7);
        let diff = (last.reshape([65]) - full.narrow(1, 6, 1).reshape([65]))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-4, "cached decoding differs by {diff}");
    }

    #[test]
    fn parameters_take_the_tensorflow_checkpoint_names() {
        let config = Gpt2MlConfig::tiny();
        let model = config.init(&Device::flex());
        let names: Vec<String> = model.export_tensors().unwrap().into_keys().collect();
        for name in [
            "newslm/embeddings/word_embed",
            "newslm/embeddings/pos_embed",
            "newslm/embeddings/LayerNorm_embed_norm/gamma",
            "newslm/layer01/query_layer/kernel",
            "newslm/layer00/context_projection_layer/bias",
            "newslm/layer01/LayerNorm_mlp_ln1/beta",
            "newslm/layer00/output/kernel",
        ] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
        // 2 embeddings + a LayerNorm; per block 6 linears and 2 LayerNorms, two tensors each
        assert_eq!(names.len(), 4 + config.num_hidden_layers * 16);
    }

    #[test]
    fn config_round_trips_and_refuses_a_width_the_heads_do_not_divide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, Gpt2MlConfig::mega().to_json().unwrap().to_string()).unwrap();
        assert_eq!(
            Gpt2MlConfig::from_file(&path).unwrap(),
            Gpt2MlConfig::mega()
        );
        let mut odd = Gpt2MlConfig::tiny().to_json().unwrap();
        odd["num_attention_heads"] = 5.into();
        std::fs::write(&path, odd.to_string()).unwrap();
        let err = Gpt2MlConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("num_attention_heads 5"),
            "{err}"
        );
    }
}
