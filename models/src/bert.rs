//! BERT (Devlin et al. 2018, "BERT: Pre-training of Deep Bidirectional Transformers for Language
//! Understanding"): a bidirectional encoder with learned positions, token types, post-LayerNorm
//! blocks and exact GELU, and the masked-LM head of its pre-training (a dense layer, GELU and a
//! LayerNorm, then a projection tied to the token embedding plus a bias). Matches Hugging Face
//! `BertModel` and `BertForMaskedLM`; sentence embeddings follow sentence-transformers (mean of
//! the hidden states over real tokens, L2-normalised), the recipe of all-MiniLM-L6-v2.
//!
//! Field names are short; [`hf_names`] maps them to the checkpoint keys
//! (`encoder.layer.0.attention.self.query`, ...), whose linear weights are `[out, in]` and are
//! transposed on load and on export.
//!
//! B=batch, T=time, C=channels, H=heads, D=head size, V=vocab

use std::path::Path;

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cinder_engine::Error;
use cinder_engine::burn;
use cinder_engine::lm::{LanguageModel, Objective};
use cinder_engine::readback::f32_values;
use cinder_engine::run::Checkpoint;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::weights::{
    NamedTensors, check_config_sizes, folder_weights, load_parameters, transpose_2d,
};

use crate::blocks::{gelu_exact, gelu_tanh, linear};

/// The engine's result (not imported as `Result`: the `Config` derive expects the std one).
type EngineResult<T> = cinder_engine::Result<T>;

/// BERT hyper-parameters, read from and written to a Hugging Face `config.json`.
#[derive(Config, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest sequence (number of learned positions).
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// `gelu` (exact) or `gelu_new` (tanh approximation).
    #[config(default = "String::from(\"gelu\")")]
    pub hidden_act: String,
    /// Dropout on the embeddings and the residual branches.
    #[config(default = 0.1)]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[config(default = 0.1)]
    pub attention_probs_dropout_prob: f64,
    /// LayerNorm epsilon.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the initial weights.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// The padding token's id.
    #[config(default = 0)]
    pub pad_token_id: usize,
    /// How positions enter: `absolute` (learned embeddings), the only kind supported.
    #[config(default = "String::from(\"absolute\")")]
    pub position_embedding_type: String,
    /// Whether the layers also attend to an encoder's output (a decoder): not supported.
    #[config(default = false)]
    pub add_cross_attention: bool,
}

impl BertConfig {
    /// The `tiny` shape of the unit tests: 2 layers of width 32 with 4 heads.
    pub fn tiny() -> Self {
        Self::new(100, 32, 2, 4, 64).with_max_position_embeddings(32)
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
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        ];
        crate::parse_checked(
            path,
            text,
            &Self::new(0, 0, 0, 0, 0),
            &required,
            "BERT",
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
                ("type_vocab_size", self.type_vocab_size),
            ],
            &[
                ("hidden_dropout_prob", self.hidden_dropout_prob),
                (
                    "attention_probs_dropout_prob",
                    self.attention_probs_dropout_prob,
                ),
            ],
            ("hidden_act", &self.hidden_act),
        )?;
        if self.position_embedding_type != "absolute" {
            return Err(Error::Config(format!(
                "position_embedding_type '{}' is not supported (absolute is)",
                self.position_embedding_type
            )));
        }
        if self.add_cross_attention {
            return Err(Error::Config(
                "add_cross_attention: BERT as a decoder with cross-attention is not supported"
                    .into(),
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(Error::Config(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            )));
        }
        Ok(())
    }

    /// The config as Hugging Face writes it; `mlm` names `BertForMaskedLM` rather than
    /// `BertModel`.
    pub fn to_hf_json(&self, mlm: bool) -> EngineResult<serde_json::Value> {
        let architecture = if mlm { "BertForMaskedLM" } else { "BertModel" };
        crate::hf_config_json(self, "bert", architecture, false)
    }

    /// Builds a randomly initialised model (BERT's scheme: N(0, `initializer_range`) weights,
    /// zero biases, LayerNorms at one and zero), with the masked-LM head when `mlm`.
    pub fn init(&self, mlm: bool, device: &Device) -> Bert {
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
        let tanh = self.hidden_act != "gelu";
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                query: linear(c, c),
                key: linear(c, c),
                value: linear(c, c),
                attention_dropout: DropoutConfig::new(self.attention_probs_dropout_prob).init(),
                attention_output: linear(c, c),
                attention_norm: ln(),
                intermediate: linear(c, self.intermediate_size),
                output: linear(self.intermediate_size, c),
                output_norm: ln(),
                dropout: dropout(),
                n_head: self.num_attention_heads,
                tanh,
            })
            .collect();
        let embedding = |n| {
            EmbeddingConfig::new(n, c)
                .with_initializer(normal.clone())
                .init(device)
        };
        Bert {
            embeddings: Embeddings {
                word_embeddings: embedding(self.vocab_size),
                position_embeddings: embedding(self.max_position_embeddings),
                token_type_embeddings: embedding(self.type_vocab_size),
                norm: ln(),
                dropout: dropout(),
            },
            layers,
            mlm: mlm.then(|| self.init_mlm_head(device)),
            config: self.clone(),
        }
    }
}

impl BertConfig {
    /// A randomly initialised masked-LM head (its projection is the token embedding).
    pub fn init_mlm_head(&self, device: &Device) -> MlmHead {
        let c = self.hidden_size;
        let mut transform = LinearConfig::new(c, c)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: self.initializer_range,
            })
            .init(device);
        transform.bias = Some(Initializer::Zeros.init([c], device));
        MlmHead {
            transform,
            norm: LayerNormConfig::new(c)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            bias: Initializer::Zeros.init([self.vocab_size], device),
            tanh: self.hidden_act != "gelu",
        }
    }
}

/// Token, position and token-type embeddings, summed and normalised.
#[derive(Module, Debug)]
pub struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    norm: LayerNorm,
    dropout: Dropout,
}

/// One post-LayerNorm encoder layer: `x = norm(x + attention(x))`, `x = norm(x + ffn(x))`.
#[derive(Module, Debug)]
pub struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_dropout: Dropout,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    dropout: Dropout,
    n_head: usize,
    tanh: bool,
}

/// GELU, exact or with the tanh approximation.
fn activation<const D: usize>(x: Tensor<D>, tanh: bool) -> Tensor<D> {
    if tanh { gelu_tanh(x) } else { gelu_exact(x) }
}

impl Layer {
    /// # Shapes
    /// - x: `[B, T, C]`; hidden: `[B, H, T, T]`, `true` where a key is padding
    /// - output: `[B, T, C]`
    fn forward(&self, x: Tensor<3>, hidden: Option<Tensor<4, Bool>>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (h, d) = (self.n_head, c / self.n_head);
        let heads = |y: Tensor<3>| y.reshape([b, t, h, d]).swap_dims(1, 2); // [B, H, T, D]
        let q = heads(linear(&self.query, x.clone()));
        let k = heads(linear(&self.key, x.clone()));
        let v = heads(linear(&self.value, x.clone()));
        let dropout = &self.attention_dropout;
        let y = if dropout.prob > 0.0 && dropout.training.is_enabled() && q.device().is_autodiff() {
            // Attention dropout needs the probabilities, so spell the attention out.
            let mut scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
            if let Some(hidden) = hidden {
                scores = scores.mask_fill(hidden, f32::NEG_INFINITY);
            }
            dropout.forward(softmax(scores, 3)).matmul(v)
        } else {
            attention(q, k, v, hidden, None, AttentionModuleOptions::default())
        }; // [B, H, T, D]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        let y = self.dropout.forward(linear(&self.attention_output, y));
        let x = self.attention_norm.forward(x + y);
        let y = activation(linear(&self.intermediate, x.clone()), self.tanh);
        let y = self.dropout.forward(linear(&self.output, y));
        self.output_norm.forward(x + y)
    }
}

/// The masked-LM head: dense, GELU, LayerNorm, then the token embedding's transpose plus a bias.
#[derive(Module, Debug)]
pub struct MlmHead {
    transform: Linear,
    norm: LayerNorm,
    bias: Param<Tensor<1>>,
    tanh: bool,
}

/// The BERT encoder, with or without its masked-LM head.
#[derive(Module, Debug)]
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    mlm: Option<MlmHead>,
    #[module(skip)]
    config: BertConfig,
}

impl Bert {
    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Whether the model has its masked-LM head.
    pub fn has_mlm_head(&self) -> bool {
        self.mlm.is_some()
    }

    /// The encoder's last hidden states. `mask` is `true` at real tokens and `false` at padding
    /// (none: every position is real); token types default to 0.
    ///
    /// # Shapes
    /// - tokens, types, mask: `[B, T]`
    /// - output: `[B, T, C]`
    pub fn encode(
        &self,
        tokens: Tensor<2, Int>,
        types: Option<Tensor<2, Int>>,
        mask: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let types = types.unwrap_or_else(|| Tensor::zeros([b, t], &device));
        let e = &self.embeddings;
        let x = e.word_embeddings.forward(tokens)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        let mut x = e.dropout.forward(e.norm.forward(x));
        let h = self.config.num_attention_heads;
        // [B, T] real -> [B, H, T, T], true where the key is padding
        let hidden = mask.map(|m| m.bool_not().reshape([b, 1, 1, t]).expand([b, h, t, t]));
        for layer in &self.layers {
            x = layer.forward(x, hidden.clone());
        }
        x
    }

    /// [`mlm_logits`](Self::mlm_logits), or without a head the hidden states against the token
    /// embedding.
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, V]`
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        match self.mlm_logits(x.clone()) {
            Some(logits) => logits,
            None => crate::blocks::tied_logits(x, &self.embeddings.word_embeddings),
        }
    }

    /// The model with a masked-LM head: its own, or a freshly initialised one (a `BertModel`
    /// about to be trained).
    pub fn with_mlm_head(mut self, device: &Device) -> Self {
        if self.mlm.is_none() {
            self.mlm = Some(self.config.init_mlm_head(device));
        }
        self
    }

    /// Masked-LM logits for hidden states; `None` when the model has no masked-LM head.
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, V]`
    pub fn mlm_logits(&self, x: Tensor<3>) -> Option<Tensor<3>> {
        let head = self.mlm.as_ref()?;
        let x = head
            .norm
            .forward(activation(linear(&head.transform, x), head.tanh));
        let logits = crate::blocks::tied_logits(x, &self.embeddings.word_embeddings);
        Some(logits + head.bias.val().unsqueeze::<3>())
    }

    /// Loads a Hugging Face BERT folder (`config.json` + `model.safetensors`): `BertModel`, or
    /// `BertForMaskedLM` with its head. The tokenizer is loaded separately.
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory.
    pub fn from_files(files: &Checkpoint, device: &Device) -> EngineResult<Self> {
        let config = BertConfig::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (mut tensors, source) = folder_weights(files)?;
        for (name, data) in tensors.iter_mut() {
            if is_linear(name) {
                *data = transpose_2d(data, &source, name)?;
            }
        }
        let mlm = tensors.contains_key("cls.predictions.transform.dense.weight");
        let layers = [("num_hidden_layers", config.num_hidden_layers)];
        check_config_sizes(&source, &layers, &[], &tensors)?;
        let model = config.init(mlm, device);
        load_parameters(model, &mut tensors, &hf_names, &source, device)
    }
}

impl LanguageModel for Bert {
    fn family(&self) -> &'static str {
        "bert"
    }

    fn objective(&self) -> Objective {
        Objective::Masked
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Masked-LM logits of unpadded rows (without a head, the hidden states against the token
    /// embedding).
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.encode(tokens, None, None))
    }

    fn forward_padded(&self, tokens: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        self.logits(self.encode(tokens, None, Some(mask)))
    }

    fn config_json(&self) -> EngineResult<serde_json::Value> {
        self.config.to_hf_json(self.has_mlm_head())
    }

    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> EngineResult<NamedTensors> {
        let prefix = if self.has_mlm_head() { "bert." } else { "" };
        let mut out = NamedTensors::new();
        for (path, data) in parameters {
            let Some(name) = hf_names(&path).into_iter().next() else {
                continue;
            };
            let name = if name.starts_with("cls.") {
                name
            } else {
                format!("{prefix}{name}")
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
    name.ends_with(".weight") && (name.contains(".attention.self.") || name.contains(".dense."))
}

/// Hugging Face names for a module path, first without and then with `BertForMaskedLM`'s
/// `bert.` prefix: `layers.0.query.weight` -> `encoder.layer.0.attention.self.query.weight`,
/// `mlm.norm.gamma` -> `cls.predictions.transform.LayerNorm.weight`.
fn hf_names(path: &str) -> Vec<String> {
    let param = |p: &str| match p {
        "gamma" => "weight".to_string(),
        "beta" => "bias".to_string(),
        other => other.to_string(),
    };
    let parts: Vec<&str> = path.split('.').collect();
    let name = match parts.as_slice() {
        ["embeddings", "norm", p] => format!("embeddings.LayerNorm.{}", param(p)),
        ["embeddings", table, p] => format!("embeddings.{table}.{p}"),
        ["layers", i, module, p] => {
            let module = match *module {
                "query" | "key" | "value" => format!("attention.self.{module}"),
                "attention_output" => "attention.output.dense".into(),
                "attention_norm" => "attention.output.LayerNorm".into(),
                "intermediate" => "intermediate.dense".into(),
                "output" => "output.dense".into(),
                "output_norm" => "output.LayerNorm".into(),
                other => other.to_string(),
            };
            format!("encoder.layer.{i}.{module}.{}", param(p))
        }
        ["mlm", "transform", p] => format!("cls.predictions.transform.dense.{p}"),
        ["mlm", "norm", p] => format!("cls.predictions.transform.LayerNorm.{}", param(p)),
        ["mlm", "bias"] => return vec!["cls.predictions.bias".into()],
        _ => path.to_string(),
    };
    if name.starts_with("cls.") {
        vec![name]
    } else {
        vec![name.clone(), format!("bert.{name}")]
    }
}

/// How a sentence-transformers folder turns hidden states into one vector per sentence
/// (`sentence_bert_config.json`, `1_Pooling/config.json`); the defaults are all-MiniLM-L6-v2's.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceSettings {
    /// Longest input in tokens, special tokens included.
    pub max_seq_length: usize,
    /// The first token's state (`[CLS]`) instead of the mean over real tokens.
    pub cls_pooling: bool,
}

impl SentenceSettings {
    /// The settings of the folder in `files` for `config`: sentence-transformers' files where
    /// present, else mean pooling over at most `max_position_embeddings` tokens.
    pub fn from_files(files: &Checkpoint, config: &BertConfig) -> EngineResult<Self> {
        let json = |name: &str| -> EngineResult<Option<serde_json::Value>> {
            files
                .get_text(name)?
                .map(|text| {
                    serde_json::from_str(text).map_err(|e| {
                        Error::format(files.path(name), format!("not valid JSON: {e}"))
                    })
                })
                .transpose()
        };
        let mut out = Self {
            max_seq_length: config.max_position_embeddings,
            cls_pooling: false,
        };
        if let Some(st) = json("sentence_bert_config.json")?
            && let Some(n) = st.get("max_seq_length").and_then(serde_json::Value::as_u64)
        {
            out.max_seq_length = (n as usize).min(config.max_position_embeddings);
        }
        if let Some(pooling) = json("1_Pooling/config.json")? {
            let on =
                |key: &str| pooling.get(key).and_then(serde_json::Value::as_bool) == Some(true);
            out.cls_pooling = on("pooling_mode_cls_token");
            let other = [
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
            ];
            if let Some(mode) = other.iter().find(|k| on(k)) {
                return Err(Error::format(
                    files.path("1_Pooling/config.json"),
                    format!("{mode} is not supported (mean and CLS pooling are)"),
                ));
            }
        }
        Ok(out)
    }
}

impl Bert {
    /// One embedding per text: tokenized with the special tokens, at most `settings`'
    /// `max_seq_length` tokens, encoded in padded batches of 32, pooled, and L2-normalised when
    /// `normalize`. Returns the vectors and each text's token count.
    pub fn sentence_embeddings(
        &self,
        tokenizer: &Tokenizer,
        texts: &[String],
        settings: &SentenceSettings,
        normalize: bool,
    ) -> EngineResult<(Vec<Vec<f32>>, Vec<usize>)> {
        let device = self.embeddings.word_embeddings.weight.device();
        let pad = self.config.pad_token_id as u32;
        let all = tokenizer.encode_with_special_tokens(texts, settings.max_seq_length)?;
        if let Some(i) = all.iter().position(Vec::is_empty) {
            return Err(Error::Config(format!(
                "{:?} has no tokens to embed",
                texts[i]
            )));
        }
        let lengths: Vec<usize> = all.iter().map(Vec::len).collect();
        let mut vectors = Vec::with_capacity(texts.len());
        for rows in all.chunks(32) {
            let (ids, mask) = padded_batch(rows, pad, &device);
            let hidden = self.encode(ids, None, Some(mask.clone()));
            let [b, _, c] = hidden.dims();
            let pooled = if settings.cls_pooling {
                let first = hidden.narrow(1, 0, 1).reshape([b, c]);
                if normalize {
                    l2_normalize(first)
                } else {
                    first
                }
            } else {
                mean_pool(hidden, mask, normalize)
            };
            let values = f32_values(pooled, "the sentence embeddings")?;
            vectors.extend(values.chunks(c).map(<[f32]>::to_vec));
        }
        Ok((vectors, lengths))
    }

    /// For each mask token in `text` (the tokenizer's `[MASK]` or `<mask>`), the `top_k`
    /// likeliest tokens as (id, probability), best first. An error when the model has no
    /// masked-LM head or the text no mask.
    pub fn fill_mask(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        top_k: usize,
    ) -> EngineResult<Vec<Vec<(u32, f32)>>> {
        let mask_id = ["[MASK]", "<mask>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t))
            .ok_or_else(|| Error::Config("the tokenizer has no [MASK] token".into()))?;
        let ids = tokenizer
            .encode_with_special_tokens(&[text], self.config.max_position_embeddings)?
            .concat();
        let positions: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == mask_id).collect();
        if positions.is_empty() {
            return Err(Error::Config(format!("no [MASK] in {text:?}")));
        }
        let device = self.embeddings.word_embeddings.weight.device();
        let (tokens, _) = padded_batch(std::slice::from_ref(&ids), 0, &device);
        let hidden = self.encode(tokens, None, None);
        let logits = self.mlm_logits(hidden).ok_or_else(|| {
            Error::Config(
                "the model has no masked-LM head (cls.predictions.*): fill-mask needs a \
                 BertForMaskedLM"
                    .into(),
            )
        })?;
        let vocab = logits.dims()[2];
        let mut out = Vec::with_capacity(positions.len());
        for &p in &positions {
            let probs = softmax(logits.clone().narrow(1, p, 1).reshape([vocab]), 0);
            let probs = f32_values(probs, "the masked-LM probabilities")?;
            let mut ranked: Vec<(u32, f32)> = probs
                .into_iter()
                .enumerate()
                .map(|(i, p)| (i as u32, p))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            ranked.truncate(top_k);
            out.push(ranked);
        }
        Ok(out)
    }
}

/// The cosine similarity of every pair of vectors.
pub fn cosine_similarities(vectors: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum::<f64>()
    };
    let norms: Vec<f64> = vectors
        .iter()
        .map(|v| dot(v, v).sqrt().max(1e-12))
        .collect();
    vectors
        .iter()
        .enumerate()
        .map(|(i, a)| {
            vectors
                .iter()
                .enumerate()
                .map(|(j, b)| (dot(a, b) / (norms[i] * norms[j])) as f32)
                .collect()
        })
        .collect()
}

/// Sentence embeddings the sentence-transformers way: the mean of the hidden states over real
/// tokens, then (when `normalize`) each row divided by its L2 norm.
///
/// # Shapes
/// - hidden: `[B, T, C]`, mask: `[B, T]` (`true` at real tokens)
/// - output: `[B, C]`
pub fn mean_pool(hidden: Tensor<3>, mask: Tensor<2, Bool>, normalize: bool) -> Tensor<2> {
    let [b, t, c] = hidden.dims();
    let weights = mask.float().reshape([b, t, 1]);
    let counts = weights.clone().sum_dim(1).clamp_min(1e-9).reshape([b, 1]);
    let pooled = (hidden * weights).sum_dim(1).reshape([b, c]) / counts;
    if normalize {
        l2_normalize(pooled)
    } else {
        pooled
    }
}

/// Each row divided by its L2 norm (at least 1e-12, as PyTorch's `normalize`).
///
/// # Shapes
/// - x: `[B, C]` -> `[B, C]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// A batch of token id rows padded on the right with `pad` to the longest, as tensors: the ids
/// `[B, T]` and the mask `[B, T]` (`true` at real tokens).
pub fn padded_batch(
    rows: &[Vec<u32>],
    pad: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let p = cinder_engine::data::pad_batch(rows, pad, None);
    let shape = [p.batch, p.len];
    let mask: Vec<bool> = p.mask.iter().map(|&m| m == 1).collect();
    (
        Tensor::from_data(TensorData::new(p.ids, shape), device),
        Tensor::from_data(TensorData::new(mask, shape), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_changes_nothing_for_the_real_tokens() {
        let device = Device::flex();
        device.seed(7);
        let model = BertConfig::tiny().init(true, &device);
        let rows = vec![vec![2, 9, 14, 30, 3], vec![2, 11, 3]];
        let (ids, mask) = padded_batch(&rows, 0, &device);
        let batch = model.encode(ids, None, Some(mask.clone()));
        let (alone, _) = padded_batch(&rows[1..], 0, &device);
        let alone = model.encode(alone, None, None);
        let diff = (batch.clone().narrow(0, 1, 1).narrow(1, 0, 3) - alone.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-5, "padding leaked into real tokens: {diff}");
        let pooled = mean_pool(batch, mask, true);
        let norms: Vec<f32> = pooled
            .square()
            .sum_dim(1)
            .into_data()
            .iter::<f32>()
            .collect();
        for n in norms {
            assert!((n - 1.0).abs() < 1e-5, "squared norm {n}");
        }
        let logits = model.mlm_logits(alone).unwrap();
        assert_eq!(logits.dims(), [1, 3, 100]);
    }

    #[test]
    fn configs_of_unsupported_kinds_are_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for (key, value, expected) in [
            (
                "position_embedding_type",
                serde_json::json!("relative_key"),
                "relative_key",
            ),
            (
                "add_cross_attention",
                serde_json::json!(true),
                "add_cross_attention",
            ),
            ("pad_token_id", serde_json::json!(100), "pad_token_id 100"),
            (
                "intermediate_size",
                serde_json::json!(0),
                "intermediate_size must be positive",
            ),
            (
                "hidden_act",
                serde_json::json!("relu"),
                "unsupported hidden_act 'relu'",
            ),
        ] {
            let mut json = BertConfig::tiny().to_hf_json(true).unwrap();
            json[key] = value;
            std::fs::write(&path, json.to_string()).unwrap();
            let err = BertConfig::from_file(&path).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(expected),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn export_round_trips_through_hugging_face_names() {
        let config = BertConfig::tiny();
        let device = Device::flex();
        let model = config.init(true, &device);
        let tensors = model.export_tensors().unwrap();
        for name in [
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.1.attention.self.query.weight",
            "bert.encoder.layer.0.attention.output.LayerNorm.bias",
            "bert.encoder.layer.0.output.dense.weight",
            "cls.predictions.bias",
            "cls.predictions.transform.LayerNorm.weight",
        ] {
            assert!(tensors.contains_key(name), "{name} missing");
        }
        // [out, in] as Hugging Face stores linear weights
        let ffn = &tensors["bert.encoder.layer.0.intermediate.dense.weight"];
        assert_eq!(ffn.shape().to_vec(), vec![64, 32]);
        let dir = tempfile::tempdir().unwrap();
        cinder_engine::weights::write_safetensors(&dir.path().join("model.safetensors"), &tensors)
            .unwrap();
        let json = config.to_hf_json(true).unwrap().to_string();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let back = Bert::from_pretrained(dir.path(), &device).unwrap();
        assert!(back.has_mlm_head());
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 5, 7, 3], [1, 4]), &device);
        let a = model.encode(ids.clone(), None, None).into_data();
        let b = back.encode(ids, None, None).into_data();
        a.assert_eq(&b, true);
    }
}
