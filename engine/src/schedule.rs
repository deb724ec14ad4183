//! Learning-rate schedules.

/// Linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to `peak * min_ratio`
/// at `total` steps (and flat after).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// The learning rate at the end of warmup.
    pub peak: f64,
    /// Steps of linear warmup.
    pub warmup: u64,
    /// The step at which decay ends.
    pub total: u64,
    /// The final learning rate as a fraction of `peak`.
    pub min_ratio: f64,
}

impl WarmupCosine {
    /// The learning rate for the optimizer step numbered `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let floor = self.peak * self.min_ratio;
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        floor + 0.5 * (self.peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_by_cosine() {
        let s = WarmupCosine {
            peak: 1e-3,
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        // A few f64 roundings of values no larger than the peak (the cosine's own error
        // included).
        let near = |got: f64, want: f64| (got - want).abs() <= 8.0 * f64::EPSILON * 1e-3;
        assert!(near(s.lr(0), 1e-4));
        assert!(near(s.lr(9), 1e-3));
        assert!(near(s.lr(10), 1e-3));
        // Halfway through decay the cosine is at its midpoint: (peak + floor) / 2.
        assert!(near(s.lr(60), 0.55e-3), "{}", s.lr(60));
        assert!(near(s.lr(110), 1e-4));
        assert!(near(s.lr(500), 1e-4));
        assert!(s.lr(30) > s.lr(31));
    }
}
