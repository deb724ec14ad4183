//! LLaMA's host decoding path: on the CPU, a model whose projections and head are the engine's
//! block-quantized matrices runs its cached forward pass on plain `f32` buffers, one pass per
//! operation (cinder-shaders' decode kernels) and one parallel region per group of products
//! that share their input (query, key and value; gate and up), with keys and values appended
//! to growing buffers. The tensor path, by contrast, dispatches about 25 tensor operations per
//! layer, copies the cache on every step and converts the input of each product to and from a
//! tensor. Both compute the same function; the tests hold the host path to the tensor path.
//!
//! B=batch, T=time, C=hidden, H=query heads, K=key/value heads, D=head size, V=vocab

use burn::tensor::{Int, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::device::on_workers;
use cinder_engine::quant::{Inputs, QuantMatrix, row_kernels};
use cinder_engine::shaders::decode::{
    AttentionShape, add_assign, attend, rms_norm, rotate, silu_mul,
};
use cinder_engine::shaders::team::with_team;
use cinder_engine::{Result, readback};

use super::Llama;
use crate::blocks::{HostKv, KvCache};

/// What the host path keeps besides the projections: the norms' weights, read once.
#[derive(Debug)]
pub(super) struct HostNorms {
    /// Each layer's input norm and post-attention norm.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// The final norm.
    last: Vec<f32>,
    eps: f32,
    /// The products' input precision, from [`cinder_engine::quant::decode_inputs`] when the
    /// model was quantized.
    pub(super) inputs: Inputs,
}

impl HostNorms {
    /// The norms of `model`, whose projections and head must all be host matrices (`None`
    /// otherwise).
    pub(super) fn read(model: &Llama) -> Result<Option<Self>> {
        let all_host = model
            .layers
            .iter()
            .flat_map(|layer| layer.projections())
            .chain(model.lm_head.as_ref())
            .all(|p| p.host_matrix().is_some());
        if !all_host || model.lm_head.is_none() {
            return Ok(None);
        }
        let gamma = |norm: &burn::nn::RmsNorm| readback::f32_values(norm.gamma.val(), "weights");
        let layers = model
            .layers
            .iter()
            .map(|layer| {
                let (input, post) = layer.norms();
                Ok((gamma(input)?, gamma(post)?))
            })
            .collect::<Result<_>>()?;
        Ok(Some(Self {
            layers,
            last: gamma(&model.norm)?,
            eps: model.config.rms_norm_eps as f32,
            inputs: cinder_engine::quant::decode_inputs(),
        }))
    }
}

impl Llama {
    /// The cached forward pass on the host path, when the model has it, the fused kernels are
    /// on and the tensor path has not started this sequence; `None` otherwise. Logits are
    /// `[B, T, V]`, or `[B, 1, V]` when the cache says only the last position is read.
    pub(super) fn run_host(
        &self,
        tokens: &Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Option<Tensor<3>> {
        let norms = self.host.as_deref()?;
        if !cinder_engine::shaders::fused_kernels() || cache.on_tensors() {
            return None;
        }
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let c = self.config.hidden_size;
        let shape = AttentionShape {
            heads: self.config.num_attention_heads,
            kv_heads: self.config.kv_heads(),
            d: self.config.head_size(),
        };
        let past = cache.len();
        let mut x: Vec<f32> = self
            .embed_tokens
            .forward(tokens.clone())
            .into_data()
            .iter::<f32>()
            .collect();
        let rows = b * t;
        let (row_q, row_kv) = (shape.heads * shape.d, shape.kv_heads * shape.d);
        let out_t = if cache.last_only() { 1 } else { t };
        let host = cache.host();
        if host.is_empty() {
            *host = vec![vec![HostKv::default(); self.layers.len()]; b];
        }
        // As on the tensor path, where the cached keys would not concatenate: a caller error.
        assert_eq!(
            host.len(),
            b,
            "a cache of {} sequences continued with {b}: reorder it first",
            host.len()
        );
        let layers: Vec<[Option<&QuantMatrix>; 7]> = self
            .layers
            .iter()
            .map(|layer| layer.projections().map(|p| p.host_matrix()))
            .collect();
        let head = self.lm_head.as_ref()?.host_matrix()?;
        let inv_freq = &self.inv_freq[..];
        // A token at a time, the ~150 short parallel operations of a pass share their tasks
        // with a team of spinning threads, which are ready for each when it starts. A prompt's
        // products split their own work across rayon's pool, so that pass runs on a thread of
        // the pool, which hands them to the others by work stealing (from this thread, each
        // would wake the pool and sleep until it finished).
        let pass = || -> Option<Vec<f32>> {
            let mut h = vec![0f32; rows * c];
            let mut y = vec![0f32; rows * row_q];
            for (l, projections) in layers.iter().enumerate() {
                let [
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    gate_proj,
                    up_proj,
                    down_proj,
                ] = *projections;
                let (input_norm, post_norm) = &norms.layers[l];
                rms_norm(&x, input_norm, norms.eps, &mut h);
                let products = |m: &[&QuantMatrix], x: &[f32]| {
                    QuantMatrix::matmul_many_with(m, x, rows, norms.inputs)
                };
                let qkv = products(&[q_proj?, k_proj?, v_proj?], &h);
                let [mut q, mut k, v] = <[Vec<f32>; 3]>::try_from(qkv).ok()?;
                for (bi, kv) in host.iter_mut().enumerate() {
                    let (qs, ks) = (bi * t * row_q, bi * t * row_kv);
                    let q = &mut q[qs..qs + t * row_q];
                    let k = &mut k[ks..ks + t * row_kv];
                    rotate(q, shape.heads, inv_freq, past);
                    rotate(k, shape.kv_heads, inv_freq, past);
                    let kv = &mut kv[l];
                    kv.keys.extend_from_slice(k);
                    kv.values.extend_from_slice(&v[ks..ks + t * row_kv]);
                    attend(q, &kv.keys, &kv.values, shape, &mut y[qs..qs + t * row_q]);
                }
                let [o] = <[Vec<f32>; 1]>::try_from(products(&[o_proj?], &y)).ok()?;
                add_assign(&mut x, &o);
                rms_norm(&x, post_norm, norms.eps, &mut h);
                let gate_up = products(&[gate_proj?, up_proj?], &h);
                let [mut gate, up] = <[Vec<f32>; 2]>::try_from(gate_up).ok()?;
                silu_mul(&mut gate, &up);
                let [down] = <[Vec<f32>; 1]>::try_from(products(&[down_proj?], &gate)).ok()?;
                add_assign(&mut x, &down);
            }
            let last: Vec<f32> = x
                .chunks_exact(t * c)
                .flat_map(|row| &row[(t - out_t) * c..])
                .copied()
                .collect();
            let mut normed = vec![0f32; last.len()];
            rms_norm(&last, &norms.last, norms.eps, &mut normed);
            QuantMatrix::matmul_many_with(&[head], &normed, b * out_t, norms.inputs).pop()
        };
        let logits = if row_kernels(rows) {
            with_team(pass)
        } else {
            on_workers(pass)
        }?;
        cache.advance(t);
        let vocab = head.rows();
        Some(Tensor::from_data(
            TensorData::new(logits, [b, out_t, vocab]),
            &device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use cinder_engine::lm::Decoder;
    use cinder_engine::quant::WeightDtype;

    use super::super::LlamaConfig;
    use super::*;

    fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
        let t = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
    }

    /// The largest difference between two logit tensors, relative to the largest logit.
    fn relative_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    #[test]
    fn host_path_gives_the_tensor_path_s_logits() {
        let device = Device::flex();
        device.seed(11);
        let cases = [
            (WeightDtype::Q4, Inputs::F32),
            (WeightDtype::Q8, Inputs::F32),
            (WeightDtype::F16, Inputs::F32),
            (WeightDtype::F32, Inputs::F32),
            (WeightDtype::Q4, Inputs::Q8),
            (WeightDtype::Q8, Inputs::Q8),
        ];
        for (dtype, inputs) in cases {
            let mut model = LlamaConfig::tiny()
                .init(&device)
                .quantize(dtype, None)
                .unwrap();
            let norms = model.host.as_mut().expect("no host path");
            std::sync::Arc::get_mut(norms).expect("shared").inputs = inputs;
            // f32 inputs: the same products in other orders, a few ulps of the largest logit;
            // 8-bit inputs move each product's inputs by up to half a step of 1/127.
            let bound = if inputs == Inputs::F32 { 1e-5 } else { 2e-2 };
            let mut tensors = model.clone();
            tensors.host = None;
            let (mut host_cache, mut tensor_cache) = (model.new_cache(), tensors.new_cache());
            // A prompt of two sequences, long enough for the prompt's products (16 rows and
            // more, natively), then single tokens, with the beams reordered once.
            let first: [i64; 17] = [3, 17, 42, 8, 90, 11, 2, 64, 33, 19, 7, 80, 5, 45, 26, 71, 9];
            let second: [i64; 17] = std::array::from_fn(|i| 5 + 4 * i as i64);
            let steps: [&[&[i64]]; 4] = [
                &[&first, &second],
                &[&[1], &[2]],
                &[&[55], &[60]],
                &[&[4], &[4]],
            ];
            for (i, step) in steps.iter().enumerate() {
                if i == 2 {
                    Llama::reorder_cache(&mut host_cache, &[1, 1], &device);
                    Llama::reorder_cache(&mut tensor_cache, &[1, 1], &device);
                }
                let a = model.forward_cached(ids(step, &device), &mut host_cache);
                let b = tensors.forward_cached(ids(step, &device), &mut tensor_cache);
                assert!(!host_cache.host().is_empty() && !host_cache.on_tensors());
                assert!(tensor_cache.host().is_empty() && tensor_cache.on_tensors());
                assert_eq!(a.dims(), b.dims());
                let diff = relative_diff(a, b);
                eprintln!("{dtype:?} {inputs:?} step {i}: {diff}");
                assert!(diff < bound, "{dtype:?} {inputs:?} step {i}: {diff}");
            }
            assert_eq!(Llama::cache_len(&host_cache), 20);
            // Only the last position's logits: the same values as the full pass's last row.
            let (mut full, mut last) = (model.new_cache(), model.new_cache());
            let prompt: &[&[i64]] = &[&[9, 8, 7, 6]];
            let all = model.forward_cached(ids(prompt, &device), &mut full);
            let one = model.forward_cached_last(ids(prompt, &device), &mut last);
            assert_eq!(one.dims(), [1, 96]);
            let diff = relative_diff(one.unsqueeze_dim(1), all.narrow(1, 3, 1));
            assert!(diff == 0.0, "{dtype:?}: last-only logits differ by {diff}");
        }
    }

    #[test]
    fn float_models_keep_the_tensor_path() {
        let device = Device::flex();
        device.seed(12);
        let model = LlamaConfig::tiny().init(&device);
        assert!(model.host.is_none());
        let mut cache = model.new_cache();
        let _ = model.forward_cached(ids(&[&[1, 2, 3]], &device), &mut cache);
        assert!(cache.host().is_empty() && cache.on_tensors());
        // In f32, a model whose inputs do not fill blocks of 32 stays on tensors and decodes.
        let odd = LlamaConfig::new(96, 16, 48, 1, 2)
            .init(&device)
            .quantize(WeightDtype::F32, None)
            .unwrap();
        assert!(odd.host.is_none());
        let mut cache = odd.new_cache();
        let logits = odd.forward_cached(ids(&[&[1, 2, 3]], &device), &mut cache);
        assert_eq!(logits.dims(), [1, 3, 96]);
    }
}
