//! The interface every decoder-only language model implements.
//!
//! B=batch, T=time, V=vocab

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::Result;
use crate::weights::{NamedTensors, named_parameters, named_parameters_async};

/// A causal language model the trainer can train and the decoder can run.
pub trait CausalLm: Module + Sized {
    /// Per-sequence state kept between decoding steps (keys and values of past positions).
    type Cache;

    /// The model family's name, as written into checkpoints ("gpt2").
    fn family(&self) -> &'static str;

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

/// [`CausalLm::export_tensors`], reading the weights back asynchronously.
pub async fn export_tensors_async<M: CausalLm>(model: &M) -> Result<NamedTensors> {
    model.export_named(named_parameters_async(model).await?)
}

/// A forward pass split into stages: `head(block(n-1, ... block(0, embed(tokens))))` equals
/// [`CausalLm::forward`]. The trainer keeps only each block's input and recomputes the block in
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
