//! Choosing the next token from logits, on the device: repetition penalty, greedy, temperature,
//! top-k, top-p and min-p.
//!
//! Everything runs as tensor operations where the logits live, so a decoding step reads back a
//! single token id instead of a vocabulary of logits. Random draws use the Gumbel-max trick
//! (`argmax(logits + g)`, `g = -ln(-ln(u))` is a draw from the softmax of `logits`) with noise
//! that is a pure function of the seed and the step, so a seeded generation is the same on every
//! device and every run.
//!
//! V=vocab

use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, rng};

/// How the next token is chosen. The filters apply in the order Hugging Face applies them:
/// repetition penalty, temperature, top-k, top-p, min-p.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy (argmax).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding this much probability (1 = all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already in the text by this
    /// (1 = off; 1.1-1.3 is typical; CTRL, Keskar et al. 2019).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed for the random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        crate::settings::defaults()
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            ..Self::default()
        }
    }

    /// Checks the values are in range.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "--temperature {} must be 0 (greedy) or more",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("--top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("--min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "--repetition-penalty {} must be positive",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Reads one integer back from the device.
pub fn read_id(t: Tensor<1, Int>) -> Result<u32> {
    crate::readback::resolve("a token id", read_id_async(t))
}

/// [`read_id`], awaiting the readback.
pub async fn read_id_async(t: Tensor<1, Int>) -> Result<u32> {
    match crate::readback::int_values_async(t, "a token id").await?[..] {
        [id] => u32::try_from(id).map_err(|_| Error::Shape(format!("token id {id} out of range"))),
        ref v => Err(Error::Shape(format!(
            "{} token ids read back, expected 1",
            v.len()
        ))),
    }
}

/// Applies the repetition penalty to the logits of the tokens in `history`.
///
/// # Shapes
/// - logits: `[V]` -> `[V]`
pub fn apply_repetition_penalty(logits: Tensor<1>, history: &[u32], penalty: f32) -> Tensor<1> {
    if (penalty - 1.0).abs() < f32::EPSILON || history.is_empty() {
        return logits;
    }
    let mut seen: Vec<i64> = history.iter().map(|&i| i64::from(i)).collect();
    seen.sort_unstable();
    seen.dedup();
    let device = logits.device();
    let n = seen.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(seen, [n]), &device);
    let picked = logits.clone().select(0, idx.clone());
    let positive = picked.clone().greater_equal_elem(0.0);
    let penalised = picked
        .clone()
        .mul_scalar(penalty)
        .mask_where(positive, picked.clone().div_scalar(penalty));
    // The ids are unique, so adding (new - old) replaces them on every backend.
    logits.select_assign(0, idx, penalised - picked, IndexingUpdateOp::Add)
}

/// The logits after temperature, top-k, top-p and min-p, sorted from the most likely token
/// down, removed tokens set to minus infinity, with the token id of each sorted position.
/// Requires a positive temperature.
///
/// # Shapes
/// - logits: `[V]`
/// - output: `[V]` sorted logits and `[V]` token ids
pub fn filter(logits: Tensor<1>, config: &SamplingConfig) -> (Tensor<1>, Tensor<1, Int>) {
    let [v] = logits.dims();
    let device = logits.device();
    let (sorted, order) = logits
        .div_scalar(config.temperature.max(1e-6))
        .sort_descending_with_indices(0);
    let rank = Tensor::<1, Int>::arange(0..v as i64, &device);
    let k = if config.top_k == 0 { v } else { config.top_k };
    let mut removed = rank.greater_equal_elem(k as i64);
    if config.top_p < 1.0 || config.min_p > 0.0 {
        let probs = softmax(
            sorted.clone().mask_fill(removed.clone(), f32::NEG_INFINITY),
            0,
        );
        if config.top_p < 1.0 {
            // Keep a token while the mass of the tokens before it is below p: the token that
            // crosses p stays, so at least one token always survives.
            let before = probs.clone().cumsum(0) - probs.clone();
            removed = removed.bool_or(before.greater_equal_elem(config.top_p));
        }
        if config.min_p > 0.0 {
            let threshold = probs
                .clone()
                .narrow(0, 0, 1)
                .mul_scalar(config.min_p)
                .expand([v]);
            removed = removed.bool_or(probs.lower(threshold));
        }
    }
    (sorted.mask_fill(removed, f32::NEG_INFINITY), order)
}

/// Gumbel noise for draw `counter` of a seeded sequence.
fn gumbel(seed: u64, counter: u64, v: usize, device: &burn::tensor::Device) -> Tensor<1> {
    let noise: Vec<f32> = (0..v as u64)
        .map(|i| {
            let u = rng::uniform(seed, counter, i).max(1e-300);
            -(-u.ln()).ln() as f32
        })
        .collect();
    Tensor::from_data(TensorData::new(noise, [v]), device)
}

/// Picks the next token from `[V]` logits on their device and reads back its id. `history` is
/// the sequence so far (for the repetition penalty); `counter` numbers the draws of one
/// sequence.
pub fn sample_next(
    logits: Tensor<1>,
    history: &[u32],
    config: &SamplingConfig,
    counter: u64,
) -> Result<u32> {
    crate::readback::resolve(
        "a token id",
        sample_next_async(logits, history, config, counter),
    )
}

/// [`sample_next`], awaiting the readback.
pub async fn sample_next_async(
    logits: Tensor<1>,
    history: &[u32],
    config: &SamplingConfig,
    counter: u64,
) -> Result<u32> {
    let [v] = logits.dims();
    // Whether any logit is NaN or infinite, folded into the id read back (the id plus the
    // vocabulary size when so): one readback per token, as without the check.
    let flag = |logits: &Tensor<1>| {
        logits
            .clone()
            .is_finite()
            .bool_not()
            .any()
            .int()
            .mul_scalar(v as i64)
    };
    let logits = apply_repetition_penalty(logits, history, config.repetition_penalty);
    let id = if config.temperature <= 0.0 {
        let bad = flag(&logits);
        read_id_async(logits.argmax(0) + bad).await?
    } else {
        // Sorting the vocabulary is a host operation in Burn's GPU backends, one that reads back
        // synchronously (which WebGPU in a browser cannot do): a GPU's logits come to the CPU
        // backend first, by awaiting.
        let logits = if logits.device() == burn::tensor::Device::flex() {
            logits
        } else {
            let data = crate::readback::f32_data_async(logits, "the logits").await?;
            Tensor::from_data(data, &burn::tensor::Device::flex())
        };
        let device = logits.device();
        let bad = flag(&logits);
        let (kept, order) = filter(logits, config);
        let position = (kept + gumbel(config.seed, counter, v, &device)).argmax(0);
        read_id_async(order.select(0, position) + bad).await?
    };
    if id as usize >= v {
        return Err(Error::Request(format!(
            "the model's logits are not finite (NaN or infinity) at new token {}: its weights \
             or activations are corrupt or overflowed",
            counter + 1
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn non_finite_logits_are_an_error_not_a_token() {
        let device = Device::flex();
        for bad in [f32::NAN, f32::INFINITY] {
            let logits = Tensor::<1>::from_data(TensorData::new(vec![0.5, bad, 1.0], [3]), &device);
            for config in [SamplingConfig::greedy(), cfg(1.0, 0, 1.0, 0.0)] {
                let err = crate::readback::resolve(
                    "a token id",
                    sample_next_async(logits.clone(), &[], &config, 0),
                )
                .expect_err("a token from non-finite logits")
                .to_string();
                assert!(err.contains("not finite"), "{err}");
            }
        }
        let fine = Tensor::<1>::from_data(TensorData::new(vec![0.5, 2.0, 1.0], [3]), &device);
        let id = crate::readback::resolve(
            "a token id",
            sample_next_async(fine, &[], &SamplingConfig::greedy(), 0),
        );
        assert_eq!(id.unwrap(), 1);
    }

    fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: 1.0,
            seed: 1,
        }
    }

    fn logits(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    /// The ids that survive filtering, most likely first.
    fn kept(v: &[f32], config: &SamplingConfig) -> Vec<i64> {
        let (sorted, order) = filter(logits(v), config);
        let sorted = sorted.into_data().try_into_vec::<f32>().unwrap();
        let order = order
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        order
            .into_iter()
            .zip(sorted)
            .filter(|(_, l)| l.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let id = sample_next(
            logits(&[0.1, 3.0, -1.0, 2.9]),
            &[],
            &cfg(0.0, 0, 1.0, 0.0),
            0,
        );
        assert_eq!(id.unwrap(), 1);
    }

    #[test]
    fn top_k_keeps_exactly_k_tokens() {
        assert_eq!(
            kept(&[1.0, 4.0, 3.0, 2.0, 0.0], &cfg(1.0, 2, 1.0, 0.0)),
            vec![1, 2]
        );
        assert_eq!(kept(&[1.0, 4.0, 3.0], &cfg(1.0, 0, 1.0, 0.0)).len(), 3);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.2 (as logits of their logs).
        let l = [0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()];
        assert_eq!(kept(&l, &cfg(1.0, 0, 0.75, 0.0)), vec![1, 2]);
        assert_eq!(kept(&l, &cfg(1.0, 0, 0.4, 0.0)), vec![1]);
        assert_eq!(kept(&l, &cfg(1.0, 0, 0.85, 0.0)), vec![1, 2, 0]);
        // After top-k = 2 the kept mass renormalises to 0.625 / 0.375.
        assert_eq!(kept(&l, &cfg(1.0, 2, 0.6, 0.0)), vec![1]);
        assert_eq!(kept(&l, &cfg(1.0, 2, 0.65, 0.0)), vec![1, 2]);
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_best() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: min-p 0.25 keeps p >= 0.125.
        let l = [0.05f32.ln(), 0.15f32.ln(), 0.5f32.ln(), 0.3f32.ln()];
        assert_eq!(kept(&l, &cfg(1.0, 0, 1.0, 0.25)), vec![2, 3, 1]);
        assert_eq!(kept(&l, &cfg(1.0, 0, 1.0, 0.7)), vec![2]);
    }

    #[test]
    fn temperature_scales_the_logits() {
        let (sorted, _) = filter(logits(&[1.0, 2.0]), &cfg(0.5, 0, 1.0, 0.0));
        let sorted = sorted.into_data().try_into_vec::<f32>().unwrap();
        // Dividing by 0.5 rounds once at most: half an ulp of the result.
        let near = |got: f32, want: f32| (got - want).abs() <= 0.5 * f32::EPSILON * want.abs();
        assert!(near(sorted[0], 4.0) && near(sorted[1], 2.0), "{sorted:?}");
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let out = apply_repetition_penalty(logits(&[2.0, -1.0, 3.0, 0.5]), &[0, 1, 1], 2.0)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let expected = [1.0f32, -2.0, 3.0, 0.5];
        // One division or multiplication by 2 each: half an ulp of the result at most.
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() <= 0.5 * f32::EPSILON * b.abs(), "{out:?}");
        }
        // The penalty can flip the greedy choice.
        let id = sample_next(
            logits(&[2.0, 1.5]),
            &[0],
            &SamplingConfig {
                repetition_penalty: 2.0,
                ..SamplingConfig::greedy()
            },
            0,
        );
        assert_eq!(id.unwrap(), 1);
    }

    #[test]
    fn sampling_follows_the_probabilities_and_is_seeded() {
        let l = [0.25f32.ln(), 0.75f32.ln()];
        let c = cfg(1.0, 0, 1.0, 0.0);
        let n = 2000;
        let draws: Vec<u32> = (0..n)
            .map(|i| sample_next(logits(&l), &[], &c, i).unwrap())
            .collect();
        let ones = draws.iter().filter(|&&d| d == 1).count();
        // Four standard deviations of the fraction of n draws: sqrt(p (1 - p) / n) = 0.0097.
        let sd = (0.75f64 * 0.25 / n as f64).sqrt();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 4.0 * sd, "{ones}");
        let again: Vec<u32> = (0..50)
            .map(|i| sample_next(logits(&l), &[], &c, i).unwrap())
            .collect();
        assert_eq!(again, draws[..50]);
    }
}
