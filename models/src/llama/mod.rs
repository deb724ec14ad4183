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

use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::lm::{Blockwise, LanguageModel};
use cinder_engine::weights::NamedTensors;

use crate::blocks::{KvCache, decoder_methods, tied_logits};
use crate::projection::Projection;

mod config;
mod formats;
mod host;
mod layers;
mod quant;

pub use config::LlamaConfig;
pub use formats::unpermute_rotary_rows;
use layers::{DecoderLayer, Rotary};

/// The LLaMA language model.
#[derive(Module, Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// The output head; `None` when it is tied to `embed_tokens` (a quantized tied model keeps
    /// a quantized copy of the embedding here, the embedding itself staying f32 for lookups).
    lm_head: Option<Projection>,
    #[module(skip)]
    inv_freq: Vec<f32>,
    #[module(skip)]
    config: LlamaConfig,
    /// The host decoding path's norms, once the projections and head are host matrices.
    #[module(skip)]
    host: Option<std::sync::Arc<host::HostNorms>>,
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
        if let Some(cache) = cache.as_deref_mut()
            && let Some(logits) = self.run_host(&tokens, cache)
        {
            return logits;
        }
        let [_, t] = tokens.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let last_only = cache.as_ref().is_some_and(|c| c.last_only());
        let rotary = Rotary::new(&self.inv_freq, past, t, &tokens.device());
        let mut x = self.embed_tokens.forward(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &rotary, cache.as_deref_mut().map(|c| c.layer(i)));
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        if last_only {
            self.logits(x.narrow(1, t - 1, 1))
        } else {
            self.logits(x)
        }
    }

    /// The final norm and the output head.
    ///
    /// # Shapes
    /// - x: `[B, T, C]` -> `[B, T, V]`
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => tied_logits(x, &self.embed_tokens),
        }
    }
}

impl Blockwise for Llama {
    fn num_blocks(&self) -> usize {
        self.layers.len()
    }

    fn has_dropout(&self) -> bool {
        false
    }

    fn embed(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed_tokens.forward(tokens)
    }

    fn block(&self, index: usize, x: Tensor<3>) -> Tensor<3> {
        let [_, t, _] = x.dims();
        let rotary = Rotary::new(&self.inv_freq, 0, t, &x.device());
        self.layers[index].forward(x, &rotary, None)
    }

    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        self.logits(x)
    }
}

decoder_methods!(Llama);

impl LanguageModel for Llama {
    decoder_methods!();

    fn family(&self) -> &'static str {
        "llama"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn config_json(&self) -> cinder_engine::Result<serde_json::Value> {
        self.config.to_hf_json()
    }

    fn export_named(
        &self,
        parameters: Vec<(String, TensorData)>,
    ) -> cinder_engine::Result<NamedTensors> {
        self.hf_tensors(parameters)
    }

    fn blockwise(&self) -> Option<&dyn Blockwise> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::tensor::TensorData;
    use cinder_engine::Error;
    use cinder_engine::quant::WeightDtype;

    use super::*;
    use cinder_engine::lm::Decoder;

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
            .unwrap()
            .try_into_vec::<f32>()
            .unwrap();
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
        .unwrap();
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
    fn quantized_models_refuse_to_export() {
        let device = Device::flex();
        device.seed(4);
        for tie in [false, true] {
            let config = LlamaConfig::tiny().with_tie_word_embeddings(tie);
            for dtype in [
                WeightDtype::F32,
                WeightDtype::F16,
                WeightDtype::Q8,
                WeightDtype::Q4,
            ] {
                let model = config.init(&device).quantize(dtype, None).unwrap();
                let err = model.export_tensors().err().unwrap();
                let message = err.to_string();
                assert!(matches!(err, Error::Export(_)), "{message}");
                assert!(
                    message.contains("model.layers.0.self_attn.q_proj.weight")
                        && message.contains("block-quantized"),
                    "{message}"
                );
            }
        }
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
