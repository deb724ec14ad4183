//! Choosing the next token from logits: greedy, temperature, top-k and top-p.

use serde::{Deserialize, Serialize};

use crate::rng;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0 = no limit).
    pub top_p: f32,
    /// Seed for the random choices.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The probability of each token after temperature, top-k and top-p (zero for removed tokens).
pub fn filtered_probs(logits: &[f32], config: &SamplingConfig) -> Vec<f32> {
    let t = config.temperature.max(1e-6);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep_k = if config.top_k == 0 {
        logits.len()
    } else {
        config.top_k.min(logits.len())
    };
    let max = logits[order[0]];
    let mut probs = vec![0f32; logits.len()];
    let mut total = 0f64;
    for &i in &order[..keep_k] {
        let p = (((logits[i] - max) / t) as f64).exp();
        probs[i] = p as f32;
        total += p;
    }
    for &i in &order[..keep_k] {
        probs[i] = (probs[i] as f64 / total) as f32;
    }
    if config.top_p < 1.0 {
        // Keep tokens in order of probability until their mass reaches top_p; the token that
        // crosses the threshold is kept, so at least one token always survives.
        let mut mass = 0f32;
        let mut cut = keep_k;
        for (rank, &i) in order[..keep_k].iter().enumerate() {
            mass += probs[i];
            if mass >= config.top_p {
                cut = rank + 1;
                break;
            }
        }
        for &i in &order[cut..keep_k] {
            probs[i] = 0.0;
        }
        let kept: f32 = order[..cut].iter().map(|&i| probs[i]).sum();
        for &i in &order[..cut] {
            probs[i] /= kept;
        }
    }
    probs
}

/// Picks the next token. `counter` distinguishes successive draws of one sequence.
pub fn sample(logits: &[f32], config: &SamplingConfig, counter: u64) -> usize {
    if config.temperature <= 0.0 {
        return argmax(logits);
    }
    let probs = filtered_probs(logits, config);
    let u = rng::uniform(config.seed, 0x5A3B_1E, counter) as f32;
    let mut acc = 0f32;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if u < acc {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed: 1,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        assert_eq!(sample(&[0.1, 3.0, -1.0, 2.9], &cfg(0.0, 0, 1.0), 0), 1);
    }

    #[test]
    fn top_k_keeps_exactly_k_tokens() {
        let logits = [1.0, 4.0, 3.0, 2.0, 0.0];
        let probs = filtered_probs(&logits, &cfg(1.0, 2, 1.0));
        let kept: Vec<usize> = (0..5).filter(|&i| probs[i] > 0.0).collect();
        assert_eq!(kept, vec![1, 2]);
        // Renormalised softmax over {4, 3}: e / (e + 1).
        let e = std::f32::consts::E;
        assert!((probs[1] - e / (e + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (as logits of their logs).
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let probs = filtered_probs(&logits, &cfg(1.0, 0, 0.75));
        assert!(
            probs[0] > 0.0 && probs[1] > 0.0 && probs[2] == 0.0,
            "{probs:?}"
        );
        assert!((probs[0] - 0.625).abs() < 1e-5);
        let probs = filtered_probs(&logits, &cfg(1.0, 0, 0.4));
        assert_eq!(probs.iter().filter(|&&p| p > 0.0).count(), 1);
    }

    #[test]
    fn temperature_sharpens_the_distribution() {
        let logits = [1.0, 2.0];
        let hot = filtered_probs(&logits, &cfg(2.0, 0, 1.0));
        let cold = filtered_probs(&logits, &cfg(0.5, 0, 1.0));
        assert!(cold[1] > hot[1]);
        // softmax([2, 4]) for T = 0.5.
        assert!((cold[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_the_probabilities() {
        let logits = [0.25f32.ln(), 0.75f32.ln()];
        let c = cfg(1.0, 0, 1.0);
        let ones = (0..4000).filter(|&i| sample(&logits, &c, i) == 1).count();
        assert!((ones as f32 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
    }
}
