//! The poem machine of Su Jianlin's "CNN + VAE" (kexue.fm/archives/5332, Keras `vae_shi.py`): a
//! variational autoencoder of gated convolutions that maps random noise to a couplet of two
//! five-character lines.
//!
//! ```text
//! h = Embedding(chars)                       [B, L, H]  (L = 10 characters)
//! h = GCNN(h) + h, twice                     GCNN(x) = conv(x) * sigmoid(conv'(x)), width 3
//! mean, log_var = Dense(avg_pool(h))         [B, Z]
//! z = mean + exp(log_var / 2) * noise        (the reparameterised sample)
//! y = Dense(z) as L positions of H           (one dense layer per position)
//! y = GCNN(y) + y
//! logits = Dense(y)                          [B, L, V]
//! loss = sum over positions of cross-entropy + KL(N(mean, var) || N(0, 1))
//! ```
//!
//! By default it has the reference code's sizes: hidden width 64, latent 64, two encoder
//! convolutions and one in the decoder.
//!
//! B=batch, L=positions, H=hidden width, Z=latent width, V=vocab

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::generate::GenerateConfig;
use cinder_engine::lm::{LanguageModel, Objective};
use cinder_engine::run::Checkpoint;
use cinder_engine::weights::{NamedTensors, check_config_sizes, folder_weights, load_parameters};
use cinder_engine::{Error, readback, rng};

/// The engine's result (not imported as `Result`: the `Config` derive expects the std one).
type EngineResult<T> = cinder_engine::Result<T>;

/// The `model_type` of a poetry VAE's `config.json`.
pub const MODEL_TYPE: &str = "poetry-vae";

/// The poetry VAE's hyper-parameters (its `config.json`).
#[derive(Config, Debug, PartialEq)]
pub struct PoetryVaeConfig {
    /// Vocabulary size (characters).
    pub vocab_size: usize,
    /// Characters per couplet (both lines, no punctuation).
    #[config(default = 10)]
    pub length: usize,
    /// Width of the embeddings and convolutions.
    #[config(default = 64)]
    pub hidden_dim: usize,
    /// Width of the latent vector.
    #[config(default = 64)]
    pub latent_dim: usize,
    /// Gated convolutions in the encoder.
    #[config(default = 2)]
    pub encoder_layers: usize,
    /// Gated convolutions in the decoder.
    #[config(default = 1)]
    pub decoder_layers: usize,
    /// Width of each convolution's window.
    #[config(default = 3)]
    pub kernel_size: usize,
}

impl PoetryVaeConfig {
    /// Reads a `config.json`; a missing required key is an error naming the file.
    pub fn from_file(path: &Path) -> EngineResult<Self> {
        crate::read_config_file(path, Self::from_json)
    }

    /// Parses the text of a `config.json`; `path` names it in errors.
    pub fn from_json(path: &Path, text: &str) -> EngineResult<Self> {
        crate::parse_checked(
            path,
            text,
            &Self::new(0),
            &["vocab_size"],
            "poetry VAE",
            |c| c.check(),
        )
    }

    /// Checks values that would make the model impossible to build.
    pub fn check(&self) -> EngineResult<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("length", self.length),
            ("hidden_dim", self.hidden_dim),
            ("latent_dim", self.latent_dim),
            ("encoder_layers", self.encoder_layers),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(Error::Config(format!("{name} must be positive")));
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "kernel_size {} must be odd (the convolutions keep the length)",
                self.kernel_size
            )));
        }
        Ok(())
    }

    /// The config as Cinder writes it.
    pub fn to_json(&self) -> EngineResult<serde_json::Value> {
        crate::hf_config_json(self, MODEL_TYPE, "PoetryVae", false)
    }

    /// A randomly initialised model (Glorot-uniform kernels, as Keras initialises them).
    pub fn init(&self, device: &Device) -> PoetryVae {
        let glorot = Initializer::XavierUniform { gain: 1.0 };
        let (h, z) = (self.hidden_dim, self.latent_dim);
        let gcnn = || Gcnn {
            conv: Conv1dConfig::new(h, 2 * h, self.kernel_size)
                .with_padding(PaddingConfig1d::Same)
                .with_bias(false)
                .with_initializer(glorot.clone())
                .init(device),
        };
        let dense = |i, o| {
            LinearConfig::new(i, o)
                .with_initializer(glorot.clone())
                .init(device)
        };
        PoetryVae {
            embedding: EmbeddingConfig::new(self.vocab_size, h)
                .with_initializer(Initializer::Uniform {
                    min: -0.05,
                    max: 0.05,
                })
                .init(device),
            encoder: (0..self.encoder_layers).map(|_| gcnn()).collect(),
            mean: dense(h, z),
            log_var: dense(h, z),
            expand: dense(z, h * self.length),
            decoder: (0..self.decoder_layers).map(|_| gcnn()).collect(),
            output: dense(h, self.vocab_size),
            config: self.clone(),
        }
    }
}

/// A gated convolution with its residual: `x + conv(x) * sigmoid(conv'(x))`, both convolutions
/// one kernel of twice the width.
#[derive(Module, Debug)]
pub struct Gcnn {
    conv: Conv1d,
}

impl Gcnn {
    /// # Shapes
    /// - x: `[B, H, L]` -> `[B, H, L]`
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = self.conv.forward(x.clone()); // [B, 2H, L]
        let h = x.dims()[1];
        let value = y.clone().narrow(1, 0, h);
        let gate = sigmoid(y.narrow(1, h, h));
        x + value * gate
    }
}

/// The couplet VAE.
#[derive(Module, Debug)]
pub struct PoetryVae {
    embedding: Embedding,
    encoder: Vec<Gcnn>,
    mean: Linear,
    log_var: Linear,
    expand: Linear,
    decoder: Vec<Gcnn>,
    output: Linear,
    #[module(skip)]
    config: PoetryVaeConfig,
}

impl PoetryVae {
    /// The model's configuration.
    pub fn config(&self) -> &PoetryVaeConfig {
        &self.config
    }

    /// The posterior's mean and log-variance for each couplet.
    ///
    /// # Shapes
    /// - tokens: `[B, L]` -> `[B, Z]` each
    pub fn encode(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, Tensor<2>) {
        let mut h = self.embedding.forward(tokens).swap_dims(1, 2); // [B, H, L]
        for layer in &self.encoder {
            h = layer.forward(h);
        }
        let pooled = h.mean_dim(2).squeeze_dim::<2>(2); // [B, H]
        (
            self.mean.forward(pooled.clone()),
            self.log_var.forward(pooled),
        )
    }

    /// Logits at every position for latent vectors `z`.
    ///
    /// # Shapes
    /// - z: `[B, Z]` -> `[B, L, V]`
    pub fn decode(&self, z: Tensor<2>) -> Tensor<3> {
        let [b, _] = z.dims();
        let (l, h) = (self.config.length, self.config.hidden_dim);
        let mut y = self.expand.forward(z).reshape([b, l, h]).swap_dims(1, 2); // [B, H, L]
        for layer in &self.decoder {
            y = layer.forward(y);
        }
        crate::blocks::linear(&self.output, y.swap_dims(1, 2))
    }

    /// The likeliest (temperature 0) or sampled characters for each latent vector; `seed`
    /// draws the samples.
    ///
    /// # Shapes
    /// - z: `[B, Z]`; output: B rows of L ids
    pub async fn characters(
        &self,
        z: Tensor<2>,
        temperature: f32,
        seed: u64,
    ) -> EngineResult<Vec<Vec<u32>>> {
        let logits = self.decode(z); // [B, L, V]
        let [b, l, v] = logits.dims();
        if temperature <= 0.0 {
            let ids =
                readback::int_values_async(logits.argmax(2).reshape([b * l]), "characters").await?;
            return Ok(ids
                .chunks(l)
                .map(|r| r.iter().map(|&i| i as u32).collect())
                .collect());
        }
        let probs = burn::tensor::activation::softmax(logits.div_scalar(temperature), 2);
        let probs = readback::f32_values_async(probs.reshape([b * l * v]), "probabilities").await?;
        Ok(probs
            .chunks(v)
            .enumerate()
            .map(|(i, p)| {
                let u = rng::uniform(seed, 31, i as u64) as f32;
                let mut acc = 0.0;
                p.iter()
                    .position(|&q| {
                        acc += q;
                        acc > u
                    })
                    .unwrap_or(v - 1) as u32
            })
            .collect::<Vec<u32>>()
            .chunks(l)
            .map(<[u32]>::to_vec)
            .collect())
    }

    /// `n` latent vectors drawn from the prior N(0, 1), a pure function of `seed`.
    pub fn prior_samples(&self, n: usize, seed: u64, device: &Device) -> Tensor<2> {
        let z = self.config.latent_dim;
        let values: Vec<f32> = (0..(n * z) as u64)
            .map(|i| rng::normal(seed, 30, i) as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [n, z]), device)
    }

    /// Loads a folder Cinder wrote (`config.json` + `model.safetensors`).
    pub fn from_pretrained(dir: &Path, device: &Device) -> EngineResult<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory.
    pub fn from_files(files: &Checkpoint, device: &Device) -> EngineResult<Self> {
        let config =
            PoetryVaeConfig::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (mut tensors, source) = folder_weights(files)?;
        let same = |path: &str| vec![path.to_string()];
        let layers = [
            ("encoder_layers", config.encoder_layers),
            ("decoder_layers", config.decoder_layers),
        ];
        check_config_sizes(&source, &layers, &[], &tensors)?;
        load_parameters(config.init(device), &mut tensors, &same, &source, device)
    }
}

/// A couplet's ids (both lines, no punctuation) as text, `AAAAA，BBBBB。`, a position whose
/// token is not one character (a special token) shown as `□`.
pub fn couplet_text(tokenizer: &cinder_engine::tokenizer::Tokenizer, ids: &[u32]) -> String {
    let chars: Vec<char> = ids
        .iter()
        .map(|&id| {
            let text = tokenizer.decode(&[id]).unwrap_or_default();
            let mut it = text.chars();
            match (it.next(), it.next()) {
                (Some(c), None) if !c.is_whitespace() => c,
                _ => '□',
            }
        })
        .collect();
    let (first, second) = chars.split_at(chars.len() / 2);
    format!(
        "{}，{}。",
        first.iter().collect::<String>(),
        second.iter().collect::<String>()
    )
}

impl PoetryVae {
    /// The ids of the couplet `text` (its punctuation dropped), which must have as many
    /// characters as the model's rows, all in its vocabulary. The error says what is wrong
    /// after `text`.
    pub fn couplet_ids(
        &self,
        tokenizer: &cinder_engine::tokenizer::Tokenizer,
        text: &str,
    ) -> Result<Vec<u32>, String> {
        let chars: String = text
            .chars()
            .filter(|c| !"，。？！；：、,.?!;: ".contains(*c))
            .collect();
        let len = self.config.length;
        if chars.chars().count() != len {
            return Err(format!(
                "{text:?}: a couplet of {len} characters (two lines of {}) is needed",
                len / 2
            ));
        }
        let ids = tokenizer.encode(&chars).map_err(|e| e.to_string())?;
        if ids.len() != len {
            return Err(format!(
                "{text:?}: some characters are not in the model's vocabulary"
            ));
        }
        Ok(ids)
    }
}

impl LanguageModel for PoetryVae {
    fn family(&self) -> &'static str {
        MODEL_TYPE
    }

    fn objective(&self) -> Objective {
        Objective::Variational
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.length
    }

    /// Reconstruction logits through the posterior's mean (no noise).
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let (mean, _) = self.encode(tokens);
        self.decode(mean)
    }

    /// Reconstruction logits through a sample of the posterior, and each couplet's KL
    /// divergence from the prior per latent dimension.
    fn forward_variational(
        &self,
        tokens: Tensor<2, Int>,
        noise_seed: u64,
        first_row: usize,
    ) -> (Tensor<3>, Tensor<2>) {
        let (mean, log_var) = self.encode(tokens);
        let [b, z] = mean.dims();
        let noise: Vec<f32> = (0..b * z)
            .map(|i| rng::normal(noise_seed, 32, (first_row * z + i) as u64) as f32)
            .collect();
        // In the precision the step runs in (bf16 or f16 under mixed precision).
        let noise = Tensor::<2>::from_data(TensorData::new(noise, [b, z]), &mean.device())
            .cast(mean.dtype());
        let z = mean.clone() + log_var.clone().div_scalar(2.0).exp() * noise;
        let kl = (log_var.clone().add_scalar(1.0) - mean.powi_scalar(2) - log_var.exp())
            .mul_scalar(-0.5);
        (self.decode(z), kl)
    }

    /// A couplet from the prior: `prompt` is ignored; the sampling seed draws the latent vector
    /// (and the characters, at a temperature above 0).
    async fn continue_prompt(
        &self,
        prompt: &[u32],
        config: &GenerateConfig,
        device: &Device,
    ) -> EngineResult<Vec<u32>> {
        let _ = prompt;
        let seed = config.sampling.seed;
        let z = self.prior_samples(1, seed, device);
        let mut rows = self.characters(z, 0.0, seed).await?;
        Ok(rows.pop().unwrap_or_default())
    }

    fn config_json(&self) -> EngineResult<serde_json::Value> {
        self.config.to_json()
    }

    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> EngineResult<NamedTensors> {
        Ok(parameters.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_follows_the_closed_form_and_couplets_vary_with_the_noise() {
        let device = Device::flex();
        let model = PoetryVaeConfig::new(40)
            .with_hidden_dim(16)
            .with_latent_dim(8)
            .init(&device);
        let ids: Vec<i64> = (0..20).map(|i| (i * 7 % 40) as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 10]), &device);
        let (logits, kl) = model.forward_variational(tokens.clone(), 1, 0);
        assert_eq!(logits.dims(), [2, 10, 40]);
        let (mean, log_var) = model.encode(tokens);
        let (mean, log_var) = (
            readback::f32_values(mean, "mean").unwrap(),
            readback::f32_values(log_var, "log-variance").unwrap(),
        );
        let expected: Vec<f32> = mean
            .iter()
            .zip(&log_var)
            .map(|(m, lv)| -0.5 * (1.0 + lv - m * m - lv.exp()))
            .collect();
        let kl = readback::f32_values(kl, "KL").unwrap();
        for (a, b) in kl.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Different noise, different couplets; the same seed, the same ones.
        let couplets = |seed| {
            readback::resolve(
                "characters",
                model.characters(model.prior_samples(4, seed, &device), 0.0, seed),
            )
            .unwrap()
        };
        let rows = couplets(1);
        assert!(rows.windows(2).any(|w| w[0] != w[1]), "{rows:?}");
        assert_eq!(rows, couplets(1));
        assert_ne!(rows, couplets(2));
    }
}
