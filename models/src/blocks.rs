//! Building blocks shared by the families that burn-nn does not provide.
//!
//! B=batch, H=heads, T=time (new positions), S=past+time, D=head size

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
/// which come from a cache. Uses the backend's fused kernel with the cheapest mask that is
/// correct: none for a single new position, the built-in causal flag without a cache, and an
/// explicit mask when a chunk of several positions continues a cache.
///
/// # Shapes
/// - q: `[B, H, T, D]`, k and v: `[B, H, S, D]`
/// - output: `[B, H, T, D]`
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let s = k.dims()[2];
    if s == t {
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: t > 1,
        };
        attention(q, k, v, None, None, options)
    } else if t == 1 {
        attention(q, k, v, None, None, AttentionModuleOptions::default())
    } else {
        let mask = causal_mask(t, s, &q.device())
            .unsqueeze::<4>()
            .expand([b, h, t, s]);
        attention(q, k, v, Some(mask), None, AttentionModuleOptions::default())
    }
}

/// Keeps, for each new batch row `i`, row `rows[i]` of every cached layer.
pub fn reorder_layers(
    layers: &mut [Option<(Tensor<4>, Tensor<4>)>],
    rows: &[usize],
    device: &Device,
) {
    let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), device);
    for layer in layers.iter_mut() {
        if let Some((k, v)) = layer.take() {
            *layer = Some((k.select(0, idx.clone()), v.select(0, idx.clone())));
        }
    }
}

/// Appends new keys and values to a layer's cache and returns the whole sequence.
///
/// # Shapes
/// - k, v: `[B, H, T, D]`; the cache holds `[B, H, S - T, D]`
/// - output: `[B, H, S, D]` each
pub fn extend_cache(
    cache: &mut Option<(Tensor<4>, Tensor<4>)>,
    k: Tensor<4>,
    v: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let (k, v) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    (k, v)
}
