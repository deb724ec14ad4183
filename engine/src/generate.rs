//! Autoregressive decoding with a KV cache, shared by every decoder family: sampling (greedy,
//! temperature, top-k, top-p, min-p, repetition penalty), beam search, stop tokens and stop
//! strings, streaming.
//!
//! B=batch (beams), T=time, V=vocab

use std::time::Duration;

use web_time::Instant;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::lm::Decoder;
use crate::pace::Pacer;
use crate::sampling::{SamplingConfig, sample_next_async};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result, readback};

/// Tokens an answer may have unless the caller says otherwise (`--max-new-tokens`).
pub const MAX_NEW_TOKENS: usize = 256;

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// How many tokens to add at most.
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingConfig,
    /// Stop when one of these tokens is produced (it is not returned).
    pub stop_tokens: Vec<u32>,
}

impl GenerateConfig {
    /// Settings with one end-of-sequence token (or none).
    pub fn new(max_new_tokens: usize, sampling: SamplingConfig, eos: Option<u32>) -> Self {
        Self {
            max_new_tokens,
            sampling,
            stop_tokens: eos.into_iter().collect(),
        }
    }
}

/// Timings of one generation.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateStats {
    /// Prompt tokens processed in the prefill pass.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Time of the prefill pass, up to the first token.
    pub prefill: Duration,
    /// Time of the later steps.
    pub decode: Duration,
}

impl GenerateStats {
    /// Prompt tokens per second in the prefill pass.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// `[1, T]` token ids on `device`.
pub fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data = TensorData::new(
        ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    Tensor::from_data(data, device)
}

/// Last-position logits of `[B, T, V]` as `[B, V]`.
pub fn last_position(logits: Tensor<3>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    logits.narrow(1, t - 1, 1).reshape([b, v])
}

fn check_prompt<M: Decoder>(model: &M, prompt: &[u32]) -> Result<()> {
    let ctx = model.max_len();
    if prompt.is_empty() {
        return Err(Error::Request(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    if prompt.len() > ctx {
        return Err(Error::Request(format!(
            "the prompt has {} tokens but the model's context is {ctx}",
            prompt.len()
        )));
    }
    let vocab = model.vocab() as u32;
    if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(Error::Request(format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// Continues `prompt`. Each new token is passed to `on_token`, which returns `false` to stop.
/// Returns the new tokens and timings. The prompt is processed in one pass (prefill); each later
/// step feeds one token and reads back one id. When the context fills up, the cache is rebuilt
/// from the newest half of the sequence.
pub fn generate<M: Decoder>(
    model: &M,
    prompt: &[u32],
    config: &GenerateConfig,
    device: &Device,
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerateStats)> {
    readback::resolve(
        "a token id",
        generate_async(model, prompt, config, device, on_token),
    )
}

/// [`generate`], reading each token back asynchronously and letting a browser page run between
/// tokens.
pub async fn generate_async<M: Decoder>(
    model: &M,
    prompt: &[u32],
    config: &GenerateConfig,
    device: &Device,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerateStats)> {
    check_prompt(model, prompt)?;
    config.sampling.check()?;
    let ctx = model.max_len();
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..GenerateStats::default()
    };
    let start = Instant::now();
    let mut all: Vec<u32> = prompt.to_vec();
    let mut new = Vec::new();
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached_last(token_tensor(prompt, device), &mut cache);
    let mut pacer = Pacer::default();
    for i in 0..config.max_new_tokens {
        let [_, v] = logits.dims();
        let next = sample_next_async(logits.reshape([v]), &all, &config.sampling, i as u64).await?;
        if i == 0 {
            stats.prefill = start.elapsed();
        }
        if config.stop_tokens.contains(&next) {
            break;
        }
        new.push(next);
        all.push(next);
        if !on_token(next) || i + 1 == config.max_new_tokens {
            break;
        }
        logits = if M::cache_len(&cache) + 1 > ctx {
            cache = model.new_cache();
            let keep = &all[all.len() - ctx / 2..];
            model.forward_cached_last(token_tensor(keep, device), &mut cache)
        } else {
            model.forward_cached_last(token_tensor(&[next], device), &mut cache)
        };
        pacer.breathe().await;
    }
    stats.new_tokens = new.len();
    stats.decode = start.elapsed().saturating_sub(stats.prefill);
    Ok((new, stats))
}

/// Why a text generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (end of sequence) was produced.
    StopToken,
    /// A stop string appeared in the text (it is cut off).
    StopString(String),
    /// The token budget ran out.
    MaxTokens,
    /// The caller asked to stop.
    Cancelled,
}

/// The result of [`generate_text`].
#[derive(Clone, Debug)]
pub struct TextGeneration {
    /// The generated text, stop string excluded.
    pub text: String,
    /// The generated ids (up to the one that completed a stop string).
    pub ids: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Timings.
    pub stats: GenerateStats,
}

/// Continues `prompt` and streams text: `on_text` receives each piece as soon as it cannot be
/// the beginning of a stop string, and returns `false` to stop. Generation ends at a stop token,
/// at a stop string (which is not emitted), at `max_new_tokens`, or when the caller stops it.
pub fn generate_text<M: Decoder>(
    model: &M,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &GenerateConfig,
    stop_strings: &[String],
    device: &Device,
    on_text: impl FnMut(&str) -> bool,
) -> Result<TextGeneration> {
    readback::resolve(
        "a token id",
        generate_text_async(
            model,
            tokenizer,
            prompt,
            config,
            stop_strings,
            device,
            on_text,
        ),
    )
}

/// [`generate_text`], reading each token back asynchronously and letting a browser page run
/// between tokens.
pub async fn generate_text_async<M: Decoder>(
    model: &M,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &GenerateConfig,
    stop_strings: &[String],
    device: &Device,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<TextGeneration> {
    let mut stream = tokenizer.stream();
    let mut text = String::new();
    let mut emitted = 0;
    let mut stop = None;
    let mut failure = None;
    let (ids, stats) = generate_async(model, prompt, config, device, |id| {
        match stream.push(id) {
            Ok(piece) => text.push_str(&piece),
            Err(e) => {
                failure = Some(e);
                return false;
            }
        }
        if let Some((at, s)) = stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            text.truncate(at);
            stop = Some(StopReason::StopString(s.clone()));
        }
        // Hold back a tail that could still grow into a stop string.
        let mut safe = text.len();
        for s in stop_strings.iter().filter(|_| stop.is_none()) {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        if safe > emitted {
            let keep_going = on_text(&text[emitted..safe]);
            emitted = safe;
            if !keep_going && stop.is_none() {
                stop = Some(StopReason::Cancelled);
            }
        }
        stop.is_none()
    })
    .await?;
    if let Some(e) = failure {
        return Err(e);
    }
    if stop.is_none() {
        text.push_str(&stream.finish()?);
        if text.len() > emitted {
            on_text(&text[emitted..]);
        }
    }
    let stop = stop.unwrap_or(if ids.len() < config.max_new_tokens {
        StopReason::StopToken
    } else {
        StopReason::MaxTokens
    });
    Ok(TextGeneration {
        text,
        ids,
        stop,
        stats,
    })
}

/// Beam search settings.
#[derive(Clone, Debug)]
pub struct BeamConfig {
    /// Beams kept at each step.
    pub width: usize,
    /// How many tokens to add at most.
    pub max_new_tokens: usize,
    /// Finished sequences are ranked by `sum log p / len^length_penalty` (`len` = new tokens,
    /// the stop token included): above 0 favours longer ones, below 0 shorter ones.
    pub length_penalty: f32,
    /// Stop as soon as `width` sequences have finished, instead of when no live beam can still
    /// beat the finished ones.
    pub early_stopping: bool,
    /// Tokens that finish a sequence.
    pub stop_tokens: Vec<u32>,
}

/// One finished or live sequence of a beam search.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// New tokens (a final stop token is not included).
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the new tokens (the stop token's included).
    pub log_prob: f32,
    /// The length-penalised score the search ranks by.
    pub score: f32,
}

fn penalised(log_prob: f32, len: usize, penalty: f32) -> f32 {
    log_prob / (len.max(1) as f32).powf(penalty)
}

/// Beam search: keeps the `width` most likely partial sequences at each step and returns the
/// finished ones, best first. All beams run as one batch; the KV cache follows the surviving
/// beams through [`Decoder::reorder_cache`].
pub fn beam_search<M: Decoder>(
    model: &M,
    prompt: &[u32],
    config: &BeamConfig,
    device: &Device,
) -> Result<Vec<Hypothesis>> {
    check_prompt(model, prompt)?;
    if config.width == 0 {
        return Err(Error::Request("the beam width must be at least 1".into()));
    }
    if prompt.len() + config.max_new_tokens > model.max_len() {
        return Err(Error::Request(format!(
            "beam search needs the prompt ({}) plus --max-new-tokens ({}) within the context ({})",
            prompt.len(),
            config.max_new_tokens,
            model.max_len()
        )));
    }
    let width = config.width;
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached_last(token_tensor(prompt, device), &mut cache);
    // Live beams: (tokens, summed log-probability).
    let mut beams: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<Hypothesis> = Vec::new();
    for step in 0..config.max_new_tokens {
        let [b, v] = logits.dims();
        let scores: Vec<f32> = beams.iter().map(|(_, s)| *s).collect();
        let scores = Tensor::<2>::from_data(TensorData::new(scores, [b, 1]), device);
        let total = (log_softmax(logits, 1) + scores).reshape([b * v]);
        let n = (2 * width).min(b * v);
        let (top, idx) = total.topk_with_indices(n, 0);
        let top = readback::f32_values(top, "beam scores")?;
        let idx = readback::int_values(idx, "beam tokens")?;
        if top.iter().any(|s| s.is_nan()) {
            return Err(Error::Request(format!(
                "the model's logits are not finite (NaN or infinity) at new token {}: its \
                 weights or activations are corrupt or overflowed",
                step + 1
            )));
        }
        let mut next: Vec<(usize, u32, f32)> = Vec::with_capacity(width);
        for (&score, &flat) in top.iter().zip(&idx) {
            let (parent, token) = (flat as usize / v, (flat as usize % v) as u32);
            if config.stop_tokens.contains(&token) {
                let tokens = beams[parent].0.clone();
                let len = tokens.len() + 1;
                finished.push(Hypothesis {
                    tokens,
                    log_prob: score,
                    score: penalised(score, len, config.length_penalty),
                });
            } else {
                next.push((parent, token, score));
            }
            if next.len() == width {
                break;
            }
        }
        finished.sort_by(|a, b| b.score.total_cmp(&a.score));
        finished.truncate(width);
        let last_step = step + 1 == config.max_new_tokens;
        let done = if finished.len() < width {
            false
        } else if config.early_stopping {
            true
        } else {
            // The best a live beam can still reach, for a non-positive log-probability.
            let best_live = next.first().map_or(f32::NEG_INFINITY, |&(_, _, s)| {
                let len = beams[0].0.len() + 1;
                let longest = len + config.max_new_tokens - step - 1;
                if config.length_penalty > 0.0 {
                    penalised(s, longest, config.length_penalty)
                } else {
                    penalised(s, len, config.length_penalty)
                }
            });
            finished
                .last()
                .is_some_and(|worst| worst.score >= best_live)
        };
        beams = next
            .iter()
            .map(|&(parent, token, score)| {
                let mut tokens = beams[parent].0.clone();
                tokens.push(token);
                (tokens, score)
            })
            .collect();
        if done || beams.is_empty() {
            break;
        }
        if last_step {
            for (tokens, log_prob) in &beams {
                finished.push(Hypothesis {
                    score: penalised(*log_prob, tokens.len(), config.length_penalty),
                    tokens: tokens.clone(),
                    log_prob: *log_prob,
                });
            }
            break;
        }
        let parents: Vec<usize> = next.iter().map(|&(p, _, _)| p).collect();
        M::reorder_cache(&mut cache, &parents, device);
        let tokens: Vec<i64> = next.iter().map(|&(_, t, _)| i64::from(t)).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [next.len(), 1]), device);
        logits = model.forward_cached_last(tokens, &mut cache);
    }
    finished.sort_by(|a, b| b.score.total_cmp(&a.score));
    finished.truncate(width);
    Ok(finished)
}
