//! Counter-based random numbers.
//!
//! Every random choice the engine makes (which window a batch takes, which token a sampler
//! picks) is a pure function of a seed and a counter. Resuming a run therefore needs only the
//! seed and the step: there is no hidden generator state to save.

/// SplitMix64 finaliser: a strong 64-bit mixing function.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random `u64` for (seed, stream, counter).
pub fn hash3(seed: u64, stream: u64, counter: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ stream) ^ counter)
}

/// A uniform float in `[0, 1)` for (seed, stream, counter).
pub fn uniform(seed: u64, stream: u64, counter: u64) -> f64 {
    (hash3(seed, stream, counter) >> 11) as f64 / (1u64 << 53) as f64
}

/// A uniform integer in `[0, n)` for (seed, stream, counter); `n` must be positive.
pub fn below(seed: u64, stream: u64, counter: u64, n: u64) -> u64 {
    // Multiply-shift keeps the bias below 2^-64 * n, negligible for any n we use.
    ((hash3(seed, stream, counter) as u128 * n as u128) >> 64) as u64
}

/// A standard normal float for (seed, stream, counter) (Box-Muller on two uniforms).
pub fn normal(seed: u64, stream: u64, counter: u64) -> f64 {
    let u1 = 1.0 - uniform(seed, stream, 2 * counter); // (0, 1]: the logarithm stays finite
    let u2 = uniform(seed, stream, 2 * counter + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_spread() {
        let xs: Vec<f64> = (0..10_000).map(|i| uniform(7, 1, i)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn normal_has_mean_zero_and_variance_one() {
        let xs: Vec<f64> = (0..20_000).map(|i| normal(7, 2, i)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn below_stays_below_and_is_deterministic() {
        for i in 0..1000 {
            assert!(below(3, 0, i, 17) < 17);
            assert_eq!(below(3, 0, i, 17), below(3, 0, i, 17));
        }
        assert_ne!(hash3(1, 0, 0), hash3(2, 0, 0));
    }
}
