//! Building blocks shared by the families that burn-nn does not provide: causal attention, the
//! key/value cache, the tied output head, and the decoding methods every decoder-only family
//! writes the same way.
//!
//! B=batch, H=heads, T=time (new positions), S=past+time, D=head size, C=channels, V=vocab

use burn::nn::{Dropout, Embedding, LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cinder_engine::burn;

/// `true` where query `i` (at absolute position `s - t + i`) must not see key `j`.
pub fn causal_mask(t: usize, s: usize, device: &Device) -> Tensor<2, Bool> {
    let past = s - t;
    let data: Vec<bool> = (0..t)
        .flat_map(|i| (0..s).map(move |j| j > past + i))
        .collect();
    Tensor::from_data(TensorData::new(data, [t, s]), device)
}

/// Causal scaled dot-product attention of `t` new queries over `s` keys, the first `s - t` of
/// which come from a cache. Without a cache, Cinder's fused causal attention on the CPU backend
/// and Burn's attention with its causal flag elsewhere
/// ([`causal`](cinder_engine::shaders::attention::causal)); with one, Burn's attention with the
/// cheapest mask that is correct: none for a single new position, an explicit mask when a chunk
/// of several positions continues the cache.
///
/// # Shapes
/// - q: `[B, H, T, D]`, k and v: `[B, H, S, D]`
/// - output: `[B, H, T, D]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let s = k.dims()[2];
    if s == t {
        cinder_engine::shaders::attention::causal(q, k, v)
    } else if t == 1 {
        attention(q, k, v, None, None, AttentionModuleOptions::default())
    } else {
        let mask = causal_mask(t, s, &q.device())
            .unsqueeze::<4>()
            .expand([b, h, t, s]);
        attention(q, k, v, Some(mask), None, AttentionModuleOptions::default())
    }
}

/// [`causal_attention`] with dropout on the attention probabilities while training: when that
/// dropout is active the probabilities are spelled out (the fused kernel never forms them).
///
/// # Shapes
/// - q: `[B, H, T, D]`, k and v: `[B, H, S, D]`
/// - output: `[B, H, T, D]`
pub fn causal_attention_with_dropout(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    dropout: &Dropout,
) -> Tensor<4> {
    let active = dropout.prob > 0.0 && dropout.training.is_enabled() && q.device().is_autodiff();
    if !active {
        return causal_attention(q, k, v);
    }
    let [b, h, t, d] = q.dims();
    let s = k.dims()[2];
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt()); // [B, H, T, S]
    let mask = causal_mask(t, s, &scores.device())
        .unsqueeze::<4>()
        .expand([b, h, t, s]);
    let probs = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    dropout.forward(probs).matmul(v)
}

/// Exact GELU, `x Φ(x) = 0.5 x (1 + erf(x / sqrt 2))`, written out from `erf` so that autodiff
/// differentiates it through `erf`'s own derivative. Burn's fused `gelu` has an inaccurate
/// backward pass on its CubeCL (wgpu) backend: measured on lavapipe, its derivative is off by
/// up to 8.7e-4 (at x = -2, about 1% of the value), where this form is within 1.5e-7.
pub fn gelu_exact<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// GELU with the tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`: one
/// fused pass forward and one backward on the CPU backend, Burn's operations elsewhere
/// ([`gelu_tanh`](cinder_engine::shaders::activation::gelu_tanh)).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cinder_engine::shaders::activation::gelu_tanh(x)
}

/// LayerNorm `ln` (whose epsilon is `epsilon`) of `x`: one fused pass forward and one backward
/// on the CPU backend in f32 ([`layer_norm`](cinder_engine::shaders::norm::layer_norm)), the
/// module's own forward pass (which widens half precision) otherwise.
pub fn layer_norm<const D: usize>(ln: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    use cinder_engine::shaders::norm;
    if let Some(beta) = &ln.beta {
        let (gamma, beta) = (ln.gamma.val(), beta.val());
        if norm::fused_applies(&x, &gamma, &beta) {
            return norm::layer_norm(x, gamma, beta, epsilon);
        }
    }
    ln.forward(x)
}

/// Keys and values of past positions for one layer, as attention consumes them (after rotary
/// embeddings, where the family has them): `[B, H, S, D]` each; `None` before the first step.
pub type LayerCache = Option<(Tensor<4>, Tensor<4>)>;

/// Decoding state of a decoder-only model: one [`LayerCache`] per layer and the number of
/// positions they hold.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    /// The host decoding path's keys and values instead (a family that has one): `[B][layer]`.
    host: Vec<Vec<HostKv>>,
    /// Whether the caller reads only the last position's logits.
    last_only: bool,
}

/// One layer's keys and values for one sequence on the host decoding path, row-major
/// `[S, K * D]` each, after rotary embeddings.
#[derive(Clone, Debug, Default)]
pub struct HostKv {
    /// Keys.
    pub keys: Vec<f32>,
    /// Values.
    pub values: Vec<f32>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `index`'s cache, created empty on first use.
    pub fn layer(&mut self, index: usize) -> &mut LayerCache {
        if self.layers.len() <= index {
            self.layers.resize_with(index + 1, || None);
        }
        &mut self.layers[index]
    }

    /// The host decoding path's keys and values, `[B][layer]`; empty until a host step fills
    /// it (and always empty for a sequence the tensor path started).
    pub fn host(&mut self) -> &mut Vec<Vec<HostKv>> {
        &mut self.host
    }

    /// Whether the tensor path holds this sequence (the host path must not continue it).
    pub fn on_tensors(&self) -> bool {
        self.layers.iter().any(Option::is_some)
    }

    /// Whether the caller reads only the last position's logits, so a family may compute the
    /// output head for that position alone (`[B, 1, V]`).
    pub fn last_only(&self) -> bool {
        self.last_only
    }

    pub(crate) fn set_last_only(&mut self, on: bool) {
        self.last_only = on;
    }

    /// Counts `t` new positions, once every layer has appended them.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps, for each new batch row `i`, row `rows[i]` of every layer.
    pub fn reorder(&mut self, rows: &[usize], device: &Device) {
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        if !self.host.is_empty() {
            self.host = rows.iter().map(|&r| self.host[r].clone()).collect();
        }
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), device);
        for layer in self.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                *layer = Some((k.select(0, idx.clone()), v.select(0, idx.clone())));
            }
        }
    }
}

/// Appends new keys and values to a layer's cache and returns the whole sequence.
///
/// # Shapes
/// - k, v: `[B, H, T, D]`; the cache holds `[B, H, S - T, D]`
/// - output: `[B, H, S, D]` each
pub fn extend_cache(cache: &mut LayerCache, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let (k, v) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    (k, v)
}

/// An output head tied to the token embedding: `logits = x · wteᵀ`.
///
/// # Shapes
/// - x: `[B, T, C]`, the embedding's weight: `[V, C]`
/// - output: `[B, T, V]`
pub fn tied_logits(x: Tensor<3>, embedding: &Embedding) -> Tensor<3> {
    cinder_engine::shaders::linear::linear_transposed(x, embedding.weight.val())
}

/// A Burn [`Linear`] layer's `x W + b`: Cinder's fused kernel on the CPU backend in f32
/// ([`linear`](cinder_engine::shaders::linear::linear)), Burn's own `linear` elsewhere.
///
/// # Shapes
/// - x: `[..., I]` -> `[..., O]`
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    cinder_engine::shaders::linear::linear(
        x,
        layer.weight.val(),
        layer.bias.as_ref().map(|b| b.val()),
    )
}

/// The decoding side every family built on [`KvCache`] writes the same way, through the
/// family's own `fn run(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) ->
/// Tensor<3>`: `decoder_methods!()` inside the family's `impl LanguageModel` (the full forward
/// pass and the trainer's samples), `decoder_methods!(Family)` at item level for its
/// [`Decoder`](cinder_engine::lm::Decoder) impl (the cache and the cached forward pass).
macro_rules! decoder_methods {
    () => {
        /// Logits for every position.
        ///
        /// # Shapes
        /// - tokens: `[B, T]` -> `[B, T, V]`
        fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
            self.run(tokens, None)
        }

        async fn continue_prompt(
            &self,
            prompt: &[u32],
            config: &cinder_engine::generate::GenerateConfig,
            device: &Device,
        ) -> cinder_engine::Result<Vec<u32>> {
            let (ids, _) =
                cinder_engine::generate::generate_async(self, prompt, config, device, |_| true)
                    .await?;
            Ok(ids)
        }
    };
    ($model:ty) => {
        impl cinder_engine::lm::Decoder for $model {
            type Cache = $crate::blocks::KvCache;

            fn vocab(&self) -> usize {
                cinder_engine::lm::LanguageModel::vocab_size(self)
            }

            fn max_len(&self) -> usize {
                cinder_engine::lm::LanguageModel::context_length(self)
            }

            fn new_cache(&self) -> Self::Cache {
                $crate::blocks::KvCache::default()
            }

            fn cache_len(cache: &Self::Cache) -> usize {
                cache.len()
            }

            fn reorder_cache(cache: &mut Self::Cache, rows: &[usize], device: &Device) {
                cache.reorder(rows, device);
            }

            /// Logits for `tokens`, which continue the sequence held in `cache`.
            ///
            /// # Shapes
            /// - tokens: `[B, T]` -> `[B, T, V]`; the cache grows by T positions
            fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut Self::Cache) -> Tensor<3> {
                self.run(tokens, Some(cache))
            }

            fn forward_cached_last(
                &self,
                tokens: Tensor<2, Int>,
                cache: &mut Self::Cache,
            ) -> Tensor<2> {
                cache.set_last_only(true);
                let logits = self.run(tokens, Some(&mut *cache));
                cache.set_last_only(false);
                cinder_engine::generate::last_position(logits)
            }
        }
    };
}
pub(crate) use decoder_methods;
