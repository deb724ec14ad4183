//! GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") in the
//! OpenAI layout: learned positions, pre-LayerNorm blocks, a final LayerNorm, GELU with the tanh
//! approximation, and an output head tied to the token embedding. Matches Hugging Face
//! `GPT2LMHeadModel`; field names mirror its checkpoint keys (`wte`, `h.N.attn.c_attn`, ...), and
//! HF's Conv1D weights are `[in, out]`, the same layout as Burn's `Linear`, so no transposes.
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
use cinder_engine::Error;
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

/// GPT-2 hyper-parameters, read from and written to a Hugging Face `config.json`.
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (number of learned positions).
    pub n_positions: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Width of the feed-forward layer (`4 * n_embd` when absent).
    pub n_inner: Option<usize>,
    /// `gelu_new` (tanh approximation, GPT-2's own) or `gelu` (exact).
    #[config(default = "String::from(\"gelu_new\")")]
    pub activation_function: String,
    /// Dropout on residual branches.
    #[config(default = 0.0)]
    pub resid_pdrop: f64,
    /// Dropout on the embeddings.
    #[config(default = 0.0)]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities.
    #[config(default = 0.0)]
    pub attn_pdrop: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the initial weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<usize>,
    /// Whether the output head shares the token embedding (the only layout supported).
    #[config(default = true)]
    pub tie_word_embeddings: bool,
}

impl Gpt2Config {
    /// OpenAI's GPT-2 small: 124M parameters.
    pub fn gpt2_124m() -> Self {
        Self::new(50257, 1024, 768, 12, 12)
            .with_bos_token_id(Some(50256))
            .with_eos_token_id(Some(50256))
    }

    /// The `nano` preset, `cinder train`'s default: 4 blocks of width 64 with 4 heads, 64
    /// positions (a run's `--context` replaces them), a character vocabulary. On the Tang poems'
    /// 8,598 characters the embedding and the head it is tied to are most of the work, so this
    /// width reaches a lower held-out loss in a given time on two CPU cores than `tiny` does.
    pub fn nano() -> Self {
        Self::new(65, 64, 64, 4, 4)
    }

    /// The `tiny` preset: 4 blocks of width 128 with 4 heads, context 64, a character
    /// vocabulary (trains in minutes on two CPU cores; also the unit tests' model).
    pub fn tiny() -> Self {
        Self::new(65, 64, 128, 4, 4)
    }

    /// The `small` preset: 6 blocks of width 384 with 6 heads, context 256, vocabulary 8192.
    pub fn small() -> Self {
        Self::new(8192, 256, 384, 6, 6)
    }

    /// Reads a Hugging Face `config.json`; a missing required key is an error naming the file.
    pub fn from_file(path: &Path) -> EngineResult<Self> {
        crate::read_config_file(path, Self::from_json)
    }

    /// Parses the text of a Hugging Face `config.json`; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> EngineResult<Self> {
        let required = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"];
        crate::parse_checked(
            path,
            text,
            &Self::new(0, 0, 0, 0, 0),
            &required,
            "GPT-2",
            |c| c.check(),
        )
    }

    /// Checks values that would make the model impossible to build.
    pub fn check(&self) -> EngineResult<()> {
        crate::check_positive(&[("layer_norm_epsilon", self.layer_norm_epsilon)])?;
        crate::check_shape(
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            &[
                ("vocab_size", self.vocab_size),
                ("n_positions", self.n_positions),
                ("n_layer", self.n_layer),
            ],
            &[
                ("resid_pdrop", self.resid_pdrop),
                ("embd_pdrop", self.embd_pdrop),
                ("attn_pdrop", self.attn_pdrop),
            ],
            ("activation_function", &self.activation_function),
        )?;
        if !self.tie_word_embeddings {
            return Err(Error::Config(
                "only tied output heads (tie_word_embeddings = true) are supported".into(),
            ));
        }
        Ok(())
    }

    /// The config as Hugging Face writes it.
    pub fn to_hf_json(&self) -> EngineResult<serde_json::Value> {
        crate::hf_config_json(self, "gpt2", "GPT2LMHeadModel", false)
    }

    /// Builds a randomly initialised model (GPT-2's scheme: N(0, 0.02), residual projections
    /// scaled by 1/sqrt(2 * n_layer), zero biases).
    pub fn init(&self, device: &Device) -> Gpt2 {
        let std = self.initializer_range;
        let normal = Initializer::Normal { mean: 0.0, std };
        let proj = Initializer::Normal {
            mean: 0.0,
            std: std / (2.0 * self.n_layer as f64).sqrt(),
        };
        let linear = |i, o, init: &Initializer| {
            let mut l = LinearConfig::new(i, o)
                .with_initializer(init.clone())
                .init(device);
            l.bias = Some(Initializer::Zeros.init([o], device));
            l
        };
        let c = self.n_embd;
        let inner = self.n_inner.unwrap_or(4 * c);
        let ln = || {
            LayerNormConfig::new(c)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        let tanh = self.activation_function != "gelu";
        let blocks = (0..self.n_layer)
            .map(|_| Block {
                ln_1: ln(),
                attn: Attention {
                    c_attn: linear(c, 3 * c, &normal),
                    c_proj: linear(c, c, &proj),
                    attn_dropout: DropoutConfig::new(self.attn_pdrop).init(),
                    resid_dropout: DropoutConfig::new(self.resid_pdrop).init(),
                    n_head: self.n_head,
                },
                ln_2: ln(),
                mlp: Mlp {
                    c_fc: linear(c, inner, &normal),
                    c_proj: linear(inner, c, &proj),
                    dropout: DropoutConfig::new(self.resid_pdrop).init(),
                    tanh,
                },
                epsilon: self.layer_norm_epsilon,
            })
            .collect();
        let embedding = |n| {
            EmbeddingConfig::new(n, c)
                .with_initializer(normal.clone())
                .init(device)
        };
        Gpt2 {
            wte: embedding(self.vocab_size),
            wpe: embedding(self.n_positions),
            drop: DropoutConfig::new(self.embd_pdrop).init(),
            h: blocks,
            ln_f: ln(),
            config: self.clone(),
        }
    }
}

/// Causal self-attention with fused query/key/value projection.
#[derive(Module, Debug)]
pub struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_head: usize,
}

impl Attention {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(&self, x: Tensor<3>, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let h = self.n_head;
        let d = c / h;
        let heads = |y: Tensor<3>| y.reshape([b, t, h, d]).swap_dims(1, 2); // [B, H, T, D]
        let qkv = linear(&self.c_attn, x);
        let mut parts = qkv.chunk(3, 2).into_iter();
        let (Some(q), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            unreachable!("chunk(3) yields three parts")
        };
        let (q, mut k, mut v) = (heads(q), heads(k), heads(v));
        if let Some(cache) = cache {
            (k, v) = extend_cache(cache, k, v);
        }
        let y = causal_attention_with_dropout(q, k, v, &self.attn_dropout); // [B, H, T, D]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        self.resid_dropout.forward(linear(&self.c_proj, y))
    }
}

/// The position-wise feed-forward layer.
#[derive(Module, Debug)]
pub struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    dropout: Dropout,
    tanh: bool,
}

impl Mlp {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = linear(&self.c_fc, x);
        let hidden = if self.tanh {
            gelu_tanh(hidden)
        } else {
            gelu_exact(hidden)
        };
        self.dropout.forward(linear(&self.c_proj, hidden))
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
    /// The LayerNorms' epsilon.
    #[module(skip)]
    epsilon: f64,
}

impl Block {
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, C]`
    fn forward(&self, x: Tensor<3>, cache: Option<&mut LayerCache>) -> Tensor<3> {
        let x = x.clone()
            + self
                .attn
                .forward(layer_norm(&self.ln_1, self.epsilon, x), cache);
        x.clone() + self.mlp.forward(layer_norm(&self.ln_2, self.epsilon, x))
    }
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    h: Vec<Block>,
    ln_f: LayerNorm,
    #[module(skip)]
    config: Gpt2Config,
}

impl Gpt2 {
    /// The model's configuration.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Token and position embeddings (with dropout) for positions `past..past + T`.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, C]`
    fn embed_from(&self, tokens: Tensor<2, Int>, past: usize) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        self.drop
            .forward(self.wte.forward(tokens) + self.wpe.forward(positions))
    }

    /// The final LayerNorm and the head tied to `wte`.
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, V]`
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let x = layer_norm(&self.ln_f, self.config.layer_norm_epsilon, x);
        tied_logits(x, &self.wte)
    }

    /// Logits for `tokens`, continuing the sequence in `cache` when there is one.
    ///
    /// # Shapes
    /// - tokens: `[B, T]` -> `[B, T, V]`
    fn run(&self, tokens: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed_from(tokens, past);
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward(x, cache.as_deref_mut().map(|c| c.layer(i)));
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.logits(x)
    }

    /// Loads a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`). The tokenizer is
    /// loaded separately, by the engine.
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory (a
    /// checkpoint, or files handed over by a web page).
    pub fn from_files(files: &Checkpoint, device: &Device) -> EngineResult<Self> {
        let config = Gpt2Config::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (tensors, source) = folder_weights(files)?;
        Self::from_hf_tensors(&config, tensors, &source, device)
    }

    /// Builds the model of `config` from Hugging Face-named tensors; `source` names them in
    /// errors.
    pub fn from_hf_tensors(
        config: &Gpt2Config,
        mut tensors: NamedTensors,
        source: &Path,
        device: &Device,
    ) -> EngineResult<Self> {
        let widths = [
            ("vocab_size", config.vocab_size),
            ("n_positions", config.n_positions),
            ("n_embd", config.n_embd),
        ];
        check_config_sizes(source, &[("n_layer", config.n_layer)], &widths, &tensors)?;
        load_parameters(config.init(device), &mut tensors, &hf_names, source, device)
    }
}

/// Hugging Face names for a module path: `h.0.ln_1.gamma` -> `transformer.h.0.ln_1.weight`
/// (checkpoints of the bare `GPT2Model` lack the `transformer.` prefix).
fn hf_names(path: &str) -> Vec<String> {
    let name = path.replace(".gamma", ".weight").replace(".beta", ".bias");
    vec![format!("transformer.{name}"), name]
}

impl Blockwise for Gpt2 {
    fn num_blocks(&self) -> usize {
        self.h.len()
    }

    fn has_dropout(&self) -> bool {
        let c = &self.config;
        c.embd_pdrop > 0.0 || c.attn_pdrop > 0.0 || c.resid_pdrop > 0.0
    }

    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed_from(tokens, 0)
    }

    fn block(&self, index: usize, x: Tensor<3>) -> Tensor<3> {
        self.h[index].forward(x, None)
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        self.logits(x)
    }
}

decoder_methods!(Gpt2);

impl LanguageModel for Gpt2 {
    decoder_methods!();

    fn family(&self) -> &'static str {
        "gpt2"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.n_positions
    }

    fn config_json(&self) -> EngineResult<serde_json::Value> {
        self.config.to_hf_json()
    }

    fn blockwise(&self) -> Option<&dyn Blockwise> {
        Some(self)
    }

    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> EngineResult<NamedTensors> {
        Ok(parameters
            .into_iter()
            .filter_map(|(path, data)| hf_names(&path).into_iter().next().map(|name| (name, data)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use cinder_engine::lm::Decoder;

    #[test]
    fn forward_shapes_and_cache_agree_with_full_forward() {
        let device = Device::flex();
        device.seed(3);
        let model = Gpt2Config::tiny().init(&device);
        let ids: Vec<i64> = vec![1, 5, 9, 2, 7, 3];
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, 6]), &device);
        let full = model.forward(tokens);
        assert_eq!(full.dims(), [1, 6, 65]);
        let mut cache = model.new_cache();
        let prefix =
            Tensor::<2, Int>::from_data(TensorData::new(ids[..4].to_vec(), [1, 4]), &device);
        let _ = model.forward_cached(prefix, &mut cache);
        let mut last = None;
        for &id in &ids[4..] {
            let one = Tensor::<2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
            last = Some(model.forward_cached(one, &mut cache));
        }
        assert_eq!(Gpt2::cache_len(&cache), 6);
        let cached = last
            .map(|l| l.reshape([65]))
            .unwrap_or_else(|| panic!("no step"));
        let reference = full.narrow(1, 5, 1).reshape([65]);
        let diff = (cached - reference).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "cached decoding differs by {diff}");
    }

    #[test]
    fn config_round_trips_through_hf_json_and_reports_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let json = Gpt2Config::gpt2_124m().to_hf_json().unwrap();
        std::fs::write(&path, json.to_string()).unwrap();
        let back = Gpt2Config::from_file(&path).unwrap();
        assert_eq!(back, Gpt2Config::gpt2_124m());
        std::fs::write(
            &path,
            r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1}"#,
        )
        .unwrap();
        let err = Gpt2Config::from_file(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("config.json") && err.contains("n_head"),
            "{err}"
        );
    }

    #[test]
    fn export_uses_hugging_face_names() {
        let config = Gpt2Config::tiny();
        let model = config.init(&Device::flex());
        let names: Vec<String> = model.export_tensors().unwrap().into_keys().collect();
        assert!(names.contains(&"transformer.wte.weight".to_string()));
        assert!(names.contains(&"transformer.h.1.attn.c_attn.bias".to_string()));
        assert!(names.contains(&"transformer.ln_f.weight".to_string()));
        assert!(
            !names
                .iter()
                .any(|n| n.contains("gamma") || n.contains("lm_head"))
        );
        // wte, wpe; per block 4 linears and 2 LayerNorms, each a weight and a bias; ln_f
        assert_eq!(names.len(), 2 + config.n_layer * (8 + 4) + 2);
    }
}
