//! The interfaces language models implement: [`LanguageModel`] for training (every family),
//! [`Decoder`] for decoding token by token with a cache (a decoder-only model itself, an
//! encoder-decoder's decoder once the encoder has read the input), and [`CausalLm`] for the
//! decoder-only families, which are both.
//!
//! B=batch, T=time, V=vocab

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::Result;
use crate::generate::GenerateConfig;
use crate::weights::{NamedTensors, named_parameters, named_parameters_async};

/// What a model learns to predict, which decides how the trainer draws batches and scores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// The next token at every position of a window (decoder-only models).
    Causal,
    /// Masked tokens of right-padded documents from their whole context (BERT's masked LM:
    /// 15% of the tokens chosen, of those 80% replaced by the mask token, 10% by a random token,
    /// 10% kept; the loss only on the chosen positions).
    Masked,
    /// The target of an (input, target) pair from the encoded input, the decoder reading the
    /// target shifted right (teacher forcing); the loss on every real target token.
    Seq2Seq,
    /// Fixed-length rows reconstructed through a sampled latent vector (a variational
    /// autoencoder): the reconstruction's cross-entropy summed over positions plus the KL
    /// divergence of the posterior from the prior, whose weight rises from 0 to 1 over the
    /// first steps (KL annealing) and which is not pushed below a floor in each latent
    /// dimension (free bits).
    Variational,
}

/// A language model the trainer can train: logits over the vocabulary at every position, a
/// configuration and weights in the family's interchange format.
pub trait LanguageModel: Module + Sized {
    /// The model family's name, as written into checkpoints ("gpt2").
    fn family(&self) -> &'static str;

    /// What the model is trained to predict.
    fn objective(&self) -> Objective {
        Objective::Causal
    }

    /// Number of output classes.
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model accepts.
    fn context_length(&self) -> usize;

    /// Logits for every position.
    ///
    /// # Shapes
    /// - tokens: `[B, T]`
    /// - output: `[B, T, V]`
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3>;

    /// Logits for every position of right-padded rows; `mask` is `true` at real tokens. A
    /// causal model never looks right, so padding cannot reach real positions and the mask is
    /// not needed; an encoder must not attend to padding.
    ///
    /// # Shapes
    /// - tokens, mask: `[B, T]`
    /// - output: `[B, T, V]`
    fn forward_padded(&self, tokens: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let _ = mask;
        self.forward(tokens)
    }

    /// Logits of an encoder-decoder model for a padded batch of pairs: the encoder reads
    /// `input` (real tokens where `input_mask` is `true`), the decoder reads `decoder_input`
    /// (the targets shifted right, padded on the right). A model without an encoder has only the
    /// decoder's side and runs `decoder_input` alone; the trainer asks for this only of models
    /// whose objective is [`Objective::Seq2Seq`].
    ///
    /// # Shapes
    /// - input, input_mask: `[B, S]`; decoder_input: `[B, T]`
    /// - output: `[B, T, V]`
    fn forward_pairs(
        &self,
        input: Tensor<2, Int>,
        input_mask: Tensor<2, Bool>,
        decoder_input: Tensor<2, Int>,
    ) -> Tensor<3> {
        let _ = (input, input_mask);
        self.forward(decoder_input)
    }

    /// A variational autoencoder's reconstruction logits through a sampled latent vector and
    /// each row's KL divergence from the prior in each latent dimension; other models give
    /// their logits and no divergence. The trainer asks for this only of models whose objective
    /// is [`Objective::Variational`]. The sampling noise of row `r` is a pure function of
    /// (`noise_seed`, `first_row + r`), so a batch split into micro-batches draws the same
    /// noise as the whole, whatever else uses the device's random source meanwhile.
    ///
    /// # Shapes
    /// - tokens: `[B, T]`
    /// - output: `[B, T, V]` and `[B, Z]`
    fn forward_variational(
        &self,
        tokens: Tensor<2, Int>,
        noise_seed: u64,
        first_row: usize,
    ) -> (Tensor<3>, Tensor<2>) {
        let _ = (noise_seed, first_row);
        let [b, _] = tokens.dims();
        let device = tokens.device();
        (self.forward(tokens), Tensor::zeros([b, 1], &device))
    }

    /// Continues `prompt` as `config` asks (the trainer's samples; an encoder-decoder reads the
    /// prompt and writes its answer); an error for a model that does not generate text.
    #[allow(async_fn_in_trait)]
    async fn continue_prompt(
        &self,
        prompt: &[u32],
        config: &GenerateConfig,
        device: &Device,
    ) -> Result<Vec<u32>> {
        let _ = (prompt, config, device);
        Err(crate::Error::Config(format!(
            "the '{}' family does not generate text",
            self.family()
        )))
    }

    /// The model's configuration in its family's interchange format (a Hugging Face
    /// `config.json` for the families that have one).
    fn config_json(&self) -> Result<serde_json::Value>;

    /// The model's parameters (as [`named_parameters`] reads them back) under the family's
    /// interchange names (Hugging Face keys), in that format's layout. Fails where the weights
    /// have no such form (block-quantized projections).
    fn export_named(&self, parameters: Vec<(String, TensorData)>) -> Result<NamedTensors>;

    /// Every weight under its family's interchange name (Hugging Face keys). Fails where the
    /// weights have no such form or cannot be read back.
    fn export_tensors(&self) -> Result<NamedTensors> {
        self.export_named(named_parameters(self)?)
    }

    /// The forward pass as separate stages, for recomputing activations block by block
    /// (`None` where the family does not offer it).
    fn blockwise(&self) -> Option<&dyn Blockwise> {
        None
    }
}

/// What the decoding loops ([`generate`](crate::generate::generate),
/// [`beam_search`](crate::generate::beam_search)) run: logits for new tokens that continue a
/// sequence held in a cache.
pub trait Decoder {
    /// Per-sequence state kept between decoding steps (keys and values of past positions, and
    /// for an encoder-decoder the encoder's keys and values).
    type Cache;

    /// Number of output classes.
    fn vocab(&self) -> usize;

    /// The longest sequence the decoder accepts.
    fn max_len(&self) -> usize;

    /// An empty cache for decoding.
    fn new_cache(&self) -> Self::Cache;

    /// Positions the cache already holds.
    fn cache_len(cache: &Self::Cache) -> usize;

    /// Keeps, for each row `i` of the next batch, the cached row `rows[i]` (beam search).
    fn reorder_cache(cache: &mut Self::Cache, rows: &[usize], device: &Device);

    /// Logits for `tokens`, which continue the sequence held in `cache`; the cache grows by `T`.
    ///
    /// # Shapes
    /// - tokens: `[B, T]`
    /// - output: `[B, T, V]`
    fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut Self::Cache) -> Tensor<3>;

    /// [`forward_cached`](Self::forward_cached) for a caller that reads only the last
    /// position's logits, which a family may compute alone (the output head is the largest
    /// product of a prompt's pass).
    ///
    /// # Shapes
    /// - tokens: `[B, T]`
    /// - output: `[B, V]`
    fn forward_cached_last(&self, tokens: Tensor<2, Int>, cache: &mut Self::Cache) -> Tensor<2> {
        crate::generate::last_position(self.forward_cached(tokens, cache))
    }
}

/// A decoder-only language model: trained as a [`LanguageModel`], decoded as a [`Decoder`].
pub trait CausalLm: LanguageModel + Decoder {}

impl<M: LanguageModel + Decoder> CausalLm for M {}

/// [`LanguageModel::export_tensors`], reading the weights back asynchronously.
pub async fn export_tensors_async<M: LanguageModel>(model: &M) -> Result<NamedTensors> {
    model.export_named(named_parameters_async(model).await?)
}

/// A forward pass split into stages: `head(block(n-1, ... block(0, embed(tokens))))` equals
/// [`LanguageModel::forward`]. The trainer keeps only each block's input and recomputes the block in
/// the backward pass.
pub trait Blockwise {
    /// Transformer blocks.
    fn num_blocks(&self) -> usize;

    /// Whether any stage applies dropout while training.
    fn has_dropout(&self) -> bool;

    /// Hidden states entering the first block.
    ///
    /// # Shapes
    /// - tokens: `[B, T]`
    /// - output: `[B, T, C]`
    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3>;

    /// Block `index` applied to `x` (`[B, T, C]` in and out).
    fn block(&self, index: usize, x: Tensor<3>) -> Tensor<3>;

    /// Final normalisation and output projection.
    ///
    /// # Shapes
    /// - x: `[B, T, C]`
    /// - output: `[B, T, V]`
    fn head(&self, x: Tensor<3>) -> Tensor<3>;
}
