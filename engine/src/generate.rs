//! Autoregressive decoding with a KV cache, shared by every decoder family.
//!
//! B=batch, T=time, V=vocab

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::lm::CausalLm;
use crate::sampling::{SamplingConfig, sample};
use crate::{Error, Result};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// How many tokens to add at most.
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingConfig,
    /// Stop when this token is produced (it is not returned).
    pub eos: Option<u32>,
}

/// Last-position logits of `[1, T, V]` on the host.
fn last_logits(logits: Tensor<3>) -> Result<Vec<f32>> {
    let [_, t, v] = logits.dims();
    let last = logits.narrow(1, t - 1, 1).reshape([v]);
    crate::weights::to_f32_data(last)
        .try_to_vec::<f32>()
        .map_err(|e| Error::Invalid(format!("reading logits back: {e:?}")))
}

fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data = TensorData::new(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    Tensor::from_data(data, device)
}

/// Continues `prompt`. Each new token is passed to `on_token`, which returns `false` to stop.
/// Returns the new tokens. The prompt is processed in one pass (prefill); each later step
/// feeds one token. When the context fills up, the cache is rebuilt from the newest half.
pub fn generate<M: CausalLm>(
    model: &M,
    prompt: &[u32],
    config: &GenerateConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let ctx = model.context_length();
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    if prompt.len() > ctx {
        return Err(Error::Invalid(format!(
            "the prompt has {} tokens but the model's context is {ctx}",
            prompt.len()
        )));
    }
    let vocab = model.vocab_size() as u32;
    if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    let mut all: Vec<u32> = prompt.to_vec();
    let mut new = Vec::new();
    let mut cache = model.new_cache();
    let mut logits = last_logits(model.forward_cached(token_tensor(prompt, device), &mut cache))?;
    for i in 0..config.max_new_tokens {
        let next = sample(&logits, &config.sampling, i as u64) as u32;
        if Some(next) == config.eos {
            break;
        }
        new.push(next);
        all.push(next);
        if !on_token(next) || i + 1 == config.max_new_tokens {
            break;
        }
        let step = if M::cache_len(&cache) + 1 > ctx {
            cache = model.new_cache();
            let keep = &all[all.len() - ctx / 2..];
            model.forward_cached(token_tensor(keep, device), &mut cache)
        } else {
            model.forward_cached(token_tensor(&[next], device), &mut cache)
        };
        logits = last_logits(step)?;
    }
    Ok(new)
}
