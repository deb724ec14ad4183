//! AdaFactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
//! Cost"), in the form of the bert4keras implementation the source documents use. At step `t`
//! (from 1), for a parameter `p` with gradient `g`:
//!
//! ```text
//! b2 = 1 - t^-0.8                                   (or a fixed beta2)
//! g2 = g^2 + eps1
//! factored (rank >= 2, and the smaller of the two largest axes >= 128):
//!     r = b2 r + (1 - b2) mean(g2, over the largest axis)        (one value per row)
//!     c = b2 c + (1 - b2) mean(g2, over the second largest axis) (one value per column)
//!     v = r c / mean(r)
//! otherwise:
//!     v = b2 v + (1 - b2) g2
//! u = g / sqrt(v)
//! u = u / max(1, RMS(u) / d)                        (update clipping, d = 1)
//! m = b1 m + (1 - b1) u;  u = m                     (only when beta1 > 0)
//! lr_t = min(1 / sqrt(t), 1e-2) with relative steps, else the schedule's lr
//! p = p - lr_t max(RMS(p), eps2) u
//! ```
//!
//! How this differs from burn-optim's `Adafactor`: burn factors every matrix over its last two
//! axes whatever their size (so a [768, 4] matrix is factored too, and a [3072, 768] one over
//! rows and columns regardless of which is larger), keeps no first moment, and caps the given
//! learning rate by `1/sqrt(t)` instead of using `min(1/sqrt(t), 1e-2)` when none is given.
//! Here small matrices keep a full second moment (bert4keras's `min_dim_size_to_factor`), the
//! two largest axes are factored for any rank, and `beta1` momentum is available.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{Slots, put, rms, take};

/// AdaFactor hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFactorConfig {
    /// Ignore the schedule and step by `min(1/sqrt(t), 1e-2)` (the paper's relative step).
    pub relative_step: bool,
    /// Momentum on the update (0 = none, which saves a full-size state tensor).
    pub beta1: f64,
    /// A fixed second-moment decay; `None` uses `1 - t^-0.8`.
    pub beta2: Option<f64>,
    /// Added to squared gradients.
    pub epsilon1: f64,
    /// Lower bound of the parameter scale.
    pub epsilon2: f64,
    /// Largest RMS of an update before it is scaled down.
    pub clipping_threshold: f64,
    /// Scale each update by the parameter's RMS.
    pub multiply_by_parameter_scale: bool,
    /// Factor the second moment only when both of the two largest axes have at least this many
    /// entries.
    pub min_dim_size_to_factor: usize,
}

impl Default for AdaFactorConfig {
    fn default() -> Self {
        Self {
            relative_step: false,
            beta1: 0.0,
            beta2: None,
            epsilon1: 1e-30,
            epsilon2: 1e-3,
            clipping_threshold: 1.0,
            multiply_by_parameter_scale: true,
            min_dim_size_to_factor: 128,
        }
    }
}

/// The axes factored for `dims`: (largest, second largest), or `None` for a full moment.
fn factored_axes(dims: &[usize], min_size: usize) -> Option<(usize, usize)> {
    if dims.len() < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..dims.len()).collect();
    // Stable: among equal sizes the later axis counts as larger, as numpy's argpartition does
    // for a matrix of equal sides (rows reduced over columns).
    order.sort_by_key(|&i| (dims[i], i));
    let largest = order[order.len() - 1];
    let second = order[order.len() - 2];
    (dims[second] >= min_size).then_some((largest, second))
}

/// Elements of AdaFactor state for a parameter of shape `dims` (no momentum).
pub fn adafactor_state_elements(dims: &[usize], config: &AdaFactorConfig) -> usize {
    let n: usize = dims.iter().product();
    let second = match factored_axes(dims, config.min_dim_size_to_factor) {
        Some((largest, second)) => n / dims[largest] + n / dims[second],
        None => n,
    };
    second + if config.beta1 > 0.0 { n } else { 0 }
}

pub(super) fn update<const D: usize>(
    c: &AdaFactorConfig,
    slots: &mut Slots,
    p: Tensor<D>,
    g: Tensor<D>,
    lr: f64,
    t: u64,
) -> Tensor<D> {
    let dims = p.dims();
    let t_f = t as f64;
    let b2 = c.beta2.unwrap_or(1.0 - t_f.powf(-0.8));
    let g2 = g.clone().square().add_scalar(c.epsilon1);
    let v = match factored_axes(&dims, c.min_dim_size_to_factor) {
        Some((largest, second)) => {
            let mut r_dims = dims;
            r_dims[largest] = 1;
            let mut c_dims = dims;
            c_dims[second] = 1;
            let r_new = g2.clone().mean_dim(largest);
            let c_new = g2.mean_dim(second);
            let r = match take(slots, "vr", r_dims) {
                Some(r) => r.mul_scalar(b2) + r_new.mul_scalar(1.0 - b2),
                None => r_new.mul_scalar(1.0 - b2),
            };
            let col = match take(slots, "vc", c_dims) {
                Some(v) => v.mul_scalar(b2) + c_new.mul_scalar(1.0 - b2),
                None => c_new.mul_scalar(1.0 - b2),
            };
            let v = r.clone().mul(col.clone()).div(r.clone().mean_dim(second));
            put(slots, "vr", r);
            put(slots, "vc", col);
            v
        }
        None => {
            let v = match take(slots, "v", dims) {
                Some(v) => v.mul_scalar(b2) + g2.mul_scalar(1.0 - b2),
                None => g2.mul_scalar(1.0 - b2),
            };
            put(slots, "v", v.clone());
            v
        }
    };
    let mut u = g / v.sqrt();
    if c.clipping_threshold > 0.0 {
        let scale = rms(u.clone())
            .div_scalar(c.clipping_threshold)
            .clamp_min(1.0);
        u = u.div(scale.reshape([1; D]));
    }
    if c.beta1 > 0.0 {
        let m = match take(slots, "m", dims) {
            Some(m) => m.mul_scalar(c.beta1) + u.mul_scalar(1.0 - c.beta1),
            None => u.mul_scalar(1.0 - c.beta1),
        };
        put(slots, "m", m.clone());
        u = m;
    }
    let lr = if c.relative_step {
        (1.0 / t_f.sqrt()).min(1e-2)
    } else {
        lr
    };
    if c.multiply_by_parameter_scale {
        let scale = rms(p.clone()).clamp_min(c.epsilon2);
        u = u.mul(scale.reshape([1; D]));
    }
    p - u.mul_scalar(lr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(i: usize, salt: u64) -> f64 {
        let x = (i as u64)
            .wrapping_mul(6364136223846793005)
            .wrapping_add(salt.wrapping_mul(1442695040888963407));
        ((x >> 33) as f64 / (1u64 << 31) as f64) - 1.0
    }

    /// The rule written out in f64 with loops: rows x cols parameter, three steps. Also returns
    /// the sum over the steps of the largest update so far (its magnitude).
    fn reference(
        rows: usize,
        cols: usize,
        c: &AdaFactorConfig,
        lr: f64,
        steps: usize,
    ) -> (Vec<f64>, f64) {
        let n = rows * cols;
        let mut p: Vec<f64> = (0..n).map(|i| noise(i, 1)).collect();
        let (mut moved, mut largest) = (0.0, 0.0);
        let factored = rows.min(cols) >= c.min_dim_size_to_factor;
        let (mut row, mut col, mut full, mut m) =
            (vec![0.0; rows], vec![0.0; cols], vec![0.0; n], vec![0.0; n]);
        for t in 1..=steps {
            let g: Vec<f64> = (0..n).map(|i| noise(i, 10 + t as u64) * 0.1).collect();
            let b2 = c.beta2.unwrap_or(1.0 - (t as f64).powf(-0.8));
            let g2: Vec<f64> = g.iter().map(|x| x * x + c.epsilon1).collect();
            let v: Vec<f64> = if factored {
                for (i, r) in row.iter_mut().enumerate() {
                    let mean = (0..cols).map(|j| g2[i * cols + j]).sum::<f64>() / cols as f64;
                    *r = b2 * *r + (1.0 - b2) * mean;
                }
                for (j, cc) in col.iter_mut().enumerate() {
                    let mean = (0..rows).map(|i| g2[i * cols + j]).sum::<f64>() / rows as f64;
                    *cc = b2 * *cc + (1.0 - b2) * mean;
                }
                let overall = row.iter().sum::<f64>() / rows as f64;
                (0..n)
                    .map(|k| row[k / cols] * col[k % cols] / overall)
                    .collect()
            } else {
                for k in 0..n {
                    full[k] = b2 * full[k] + (1.0 - b2) * g2[k];
                }
                full.clone()
            };
            let mut u: Vec<f64> = (0..n).map(|k| g[k] / v[k].sqrt()).collect();
            let rms_u = (u.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
            let clip = (rms_u / c.clipping_threshold).max(1.0);
            u.iter_mut().for_each(|x| *x /= clip);
            // The momentum averages the updates so far: their largest bounds its rounding.
            largest = u.iter().fold(largest, |a: f64, x| a.max(x.abs()));
            if c.beta1 > 0.0 {
                for k in 0..n {
                    m[k] = c.beta1 * m[k] + (1.0 - c.beta1) * u[k];
                }
                u = m.clone();
            }
            let step = if c.relative_step {
                (1.0 / (t as f64).sqrt()).min(1e-2)
            } else {
                lr
            };
            let rms_p = (p.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt();
            let scale = rms_p.max(c.epsilon2);
            for k in 0..n {
                p[k] -= step * scale * u[k];
            }
            moved += step * scale * largest;
        }
        (p, moved)
    }

    /// Asserts the f32 rule is within rounding of the f64 one: each step's update rests on sums
    /// over the whole matrix (the RMS of the update and of the parameter) and over its rows and
    /// columns, each within n ε of the exact sum for n positive terms, so the updates are
    /// within (n + rows + cols) ε of their size; writing each step rounds once more, at the
    /// parameter's size (at most 1 here).
    fn assert_matches(got: &[f32], want: &[f64], moved: f64, rows: usize, cols: usize) {
        let steps = 3.0;
        let eps = f64::from(f32::EPSILON);
        let bound = (rows * cols + rows + cols) as f64 * eps * moved + steps * eps * 1.0;
        let diff = max_diff(got, want);
        assert!(diff <= bound, "{diff:e} > {bound:e}");
    }

    fn run(
        rows: usize,
        cols: usize,
        c: &AdaFactorConfig,
        lr: f64,
        steps: usize,
    ) -> (Vec<f32>, usize) {
        let device = Device::flex();
        let n = rows * cols;
        let init: Vec<f32> = (0..n).map(|i| noise(i, 1) as f32).collect();
        let mut p = Tensor::<2>::from_data(TensorData::new(init, [rows, cols]), &device);
        let mut slots = Slots::new();
        for t in 1..=steps {
            let g: Vec<f32> = (0..n)
                .map(|i| (noise(i, 10 + t as u64) * 0.1) as f32)
                .collect();
            let g = Tensor::<2>::from_data(TensorData::new(g, [rows, cols]), &device);
            p = update(c, &mut slots, p, g, lr, t as u64);
        }
        let state: usize = slots.values().map(|t| t.shape().num_elements()).sum();
        (p.into_data().try_into_vec::<f32>().unwrap(), state)
    }

    fn max_diff(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn factored_update_matches_the_written_out_rule() {
        let c = AdaFactorConfig::default();
        let (got, state) = run(128, 160, &c, 0.05, 3);
        let (want, moved) = reference(128, 160, &c, 0.05, 3);
        assert_matches(&got, &want, moved, 128, 160);
        // One value per row and per column.
        assert_eq!(state, 128 + 160);
        assert_eq!(adafactor_state_elements(&[128, 160], &c), state);
    }

    #[test]
    fn small_matrices_keep_a_full_moment_and_momentum_and_relative_steps_work() {
        let c = AdaFactorConfig {
            beta1: 0.9,
            relative_step: true,
            ..AdaFactorConfig::default()
        };
        let (got, state) = run(64, 200, &c, 123.0, 3);
        let (want, moved) = reference(64, 200, &c, 123.0, 3);
        assert_matches(&got, &want, moved, 64, 200);
        // 64 < 128: full second moment, plus momentum.
        assert_eq!(state, 2 * 64 * 200);
        assert_eq!(adafactor_state_elements(&[64, 200], &c), state);
        assert_eq!(factored_axes(&[3072, 768], 128), Some((0, 1)));
        assert_eq!(factored_axes(&[768, 2304], 128), Some((1, 0)));
        assert_eq!(factored_axes(&[768], 128), None);
    }
}
