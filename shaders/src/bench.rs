//! Micro-benchmarks: each fused kernel against its reference on the same inputs, best of a few
//! repetitions after one untimed run (`cinder bench kernels` prints them).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

use crate::cross_entropy::{cross_entropy_rows, fused_applies, reference_rows};

/// One kernel's timing against its reference.
#[derive(Clone, Debug)]
pub struct Timing {
    /// What was timed, e.g. "cross-entropy forward + backward".
    pub name: String,
    /// The inputs' shape, e.g. "[1024, 8599]".
    pub shape: String,
    /// Burn's operations, milliseconds (best of the repetitions).
    pub reference_ms: f64,
    /// The fused kernel, milliseconds (best of the repetitions).
    pub fused_ms: f64,
    /// Whether the fused kernel ran (false where the device has none: both columns are then
    /// the reference).
    pub fused_ran: bool,
}

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// The cross-entropy of `rows` rows over a vocabulary of `vocab` on `device` (its CPU backend
/// takes the fused kernel): the forward pass alone, and forward and backward under autodiff
/// (the mean of the rows' losses, back to the logits, read back). The logits are the output of
/// an operation (a scaling by one), as in a model, so nothing else holds them.
pub fn cross_entropy(rows: usize, vocab: usize, reps: usize, device: &Device) -> Vec<Timing> {
    let inner = device.clone().inner();
    inner.seed(11);
    let base = Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 2.0), &inner);
    let ids: Vec<i32> = (0..rows)
        .map(|i| ((i * 7919) % vocab.max(1)) as i32)
        .collect();
    let shape = format!("[{rows}, {vocab}]");
    let mut out = Vec::new();
    for (name, dev) in [
        ("cross-entropy forward", inner.clone()),
        ("cross-entropy forward + backward", inner.clone().autodiff()),
    ] {
        let logits = Tensor::<2>::from_data(base.clone().into_data(), &dev);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [rows]), &dev);
        let fused_ran = fused_applies(&logits, &targets);
        let backward = dev.is_autodiff();
        let run = |fused: bool| {
            let x = if backward {
                logits.clone().require_grad()
            } else {
                logits.clone()
            };
            let y = x.clone().mul_scalar(1.0);
            let losses = if fused {
                cross_entropy_rows(y, targets.clone())
            } else {
                reference_rows(y, targets.clone())
            };
            let loss = losses.mean();
            if backward {
                let grads = loss.backward();
                if let Some(g) = x.grad(&grads) {
                    let _ = g.into_data();
                }
            } else {
                let _ = loss.into_data();
            }
        };
        let reference_ms = best_of(reps, || run(false));
        let fused_ms = best_of(reps, || run(true));
        out.push(Timing {
            name: name.to_string(),
            shape: shape.clone(),
            reference_ms,
            fused_ms,
            fused_ran,
        });
    }
    out
}

/// Memory read bandwidth in GB/s: the sum of `megabytes` MB of f32 values split across rayon's
/// threads, in chunks of 4 MB, best of three after one untimed pass (which also touches the
/// pages). The limit a decoding step that reads every weight once can approach.
pub fn read_bandwidth(megabytes: usize) -> f64 {
    use rayon::prelude::*;
    let values = vec![1f32; megabytes.max(1) << 18];
    let sum = || -> f32 {
        values
            .par_chunks(1 << 20)
            .map(|chunk| pulp::Arch::new().dispatch(Sum(chunk)))
            .sum()
    };
    let best = best_of(3, || {
        std::hint::black_box(sum());
    });
    (values.len() * 4) as f64 / (best * 1e-3) / 1e9
}

/// The sum of a slice with eight independent partial sums per lane, compiled for the CPU's
/// widest vector unit, so the loads rather than the additions limit it.
struct Sum<'a>(&'a [f32]);

impl pulp::WithSimd for Sum<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> f32 {
        let (vectors, rest) = S::as_simd_f32s(self.0);
        let mut acc = [simd.splat_f32s(0.0); 8];
        let (groups, tail) = vectors.as_chunks::<8>();
        for group in groups {
            for (a, &v) in acc.iter_mut().zip(group) {
                *a = simd.add_f32s(*a, v);
            }
        }
        for &v in tail {
            acc[0] = simd.add_f32s(acc[0], v);
        }
        let total = acc
            .iter()
            .fold(simd.splat_f32s(0.0), |a, &b| simd.add_f32s(a, b));
        simd.reduce_sum_f32s(total) + rest.iter().sum::<f32>()
    }
}

/// The threads the kernels split their work across (rayon's pool).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// The training step's other fused kernels against their references at the `small` workload's
/// shapes (batch 8 x 256 tokens, width 384, 6 heads): causal attention, GELU, SwiGLU's gating,
/// a feed-forward layer's first product with its bias, the default run's tied head and
/// LayerNorm forward and backward under autodiff (the gradients read back), and one AdamW update of a
/// feed-forward weight. The fused kernels run only on the CPU backend; elsewhere both columns
/// are the reference.
pub fn training_kernels(reps: usize, device: &Device) -> Vec<Timing> {
    let inner = device.clone().inner();
    let ad = inner.clone().autodiff();
    inner.seed(13);
    let random = |dims: Vec<usize>, dev: &Device| {
        let n: usize = dims.iter().product();
        let x = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &inner);
        Tensor::<1>::from_data(x.into_data(), dev)
    };
    let mut out = Vec::new();
    let mut time = |name: &str, shape: String, fused_ran: bool, run: &dyn Fn(bool)| {
        let reference_ms = best_of(reps, || run(false));
        let fused_ms = best_of(reps, || run(true));
        out.push(Timing {
            name: name.to_string(),
            shape,
            reference_ms,
            fused_ms,
            fused_ran,
        });
    };
    let read = |t: Option<Tensor<1>>| {
        if let Some(t) = t {
            let _ = t.into_data();
        }
    };

    let (b, h, t, d) = (8, 6, 256, 64);
    let qkv: Vec<Tensor<4>> = (0..3)
        .map(|_| random(vec![b, h, t, d], &ad).reshape([b, h, t, d]))
        .collect();
    let fused_ran = crate::attention::fused_applies(&qkv[0], &qkv[1], &qkv[2]);
    time(
        "causal attention forward + backward",
        format!("[{b}, {h}, {t}, {d}]"),
        fused_ran,
        &|fused| {
            let [q, k, v] = [0, 1, 2].map(|i| qkv[i].clone().require_grad());
            let y = if fused {
                crate::attention::causal(q.clone(), k.clone(), v.clone())
            } else {
                crate::attention::reference(q.clone(), k.clone(), v.clone())
            };
            let grads = y.sum().backward();
            for x in [q, k, v] {
                read(x.grad(&grads).map(|g| g.reshape([b * h * t * d])));
            }
        },
    );

    let (rows, width) = (b * t, 4 * 384);
    let x = random(vec![rows * width], &ad).reshape([rows, width]);
    time(
        "GELU (tanh) forward + backward",
        format!("[{rows}, {width}]"),
        crate::activation::fused_applies(&x),
        &|fused| {
            let x = x.clone().require_grad();
            let y = if fused {
                crate::activation::gelu_tanh(x.clone())
            } else {
                crate::activation::gelu_tanh_reference(x.clone())
            };
            let grads = y.sum().backward();
            read(x.grad(&grads).map(|g| g.reshape([rows * width])));
        },
    );

    let up = random(vec![rows * width], &ad).reshape([rows, width]);
    time(
        "SwiGLU gating forward + backward",
        format!("[{rows}, {width}] x 2"),
        crate::activation::fused_applies(&x),
        &|fused| {
            let (g, u) = (x.clone().require_grad(), up.clone().require_grad());
            let y = if fused {
                crate::activation::swiglu(g.clone(), u.clone())
            } else {
                crate::activation::swiglu_reference(g.clone(), u.clone())
            };
            let grads = y.sum().backward();
            read(g.grad(&grads).map(|t| t.reshape([rows * width])));
            read(u.grad(&grads).map(|t| t.reshape([rows * width])));
        },
    );

    let c = 384;
    let x = random(vec![rows * c], &ad).reshape([rows, c]);
    let w = random(vec![c * width], &ad).reshape([c, width]);
    let bias = random(vec![width], &ad);
    time(
        "linear layer (with bias) forward + backward",
        format!("[{rows}, {c}] x [{c}, {width}]"),
        crate::linear::fused_applies(&x, &w, Some(&bias), false),
        &|fused| {
            let (x, w, bias) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                bias.clone().require_grad(),
            );
            let y = if fused {
                crate::linear::linear(x.clone(), w.clone(), Some(bias.clone()))
            } else {
                crate::linear::reference(x.clone(), w.clone(), Some(bias.clone()))
            };
            let grads = y.sum().backward();
            read(x.grad(&grads).map(|g| g.reshape([rows * c])));
            read(w.grad(&grads).map(|g| g.reshape([c * width])));
            read(bias.grad(&grads));
        },
    );

    // The default run's tied head: 4 x 128 positions of width 64 against a vocabulary of 8,599
    // (the Tang poems' characters).
    let (head_rows, head_c, vocab) = (512, 64, 8599);
    let h = random(vec![head_rows * head_c], &ad).reshape([head_rows, head_c]);
    let e = random(vec![vocab * head_c], &ad).reshape([vocab, head_c]);
    time(
        "tied head x Eᵀ forward + backward",
        format!("[{head_rows}, {head_c}] x [{vocab}, {head_c}]ᵀ"),
        crate::linear::fused_applies(&h, &e, None, true),
        &|fused| {
            let (h, e) = (h.clone().require_grad(), e.clone().require_grad());
            let y = if fused {
                crate::linear::linear_transposed(h.clone(), e.clone())
            } else {
                crate::linear::reference(h.clone(), e.clone().transpose(), None)
            };
            let grads = y.sum().backward();
            read(h.grad(&grads).map(|g| g.reshape([head_rows * head_c])));
            read(e.grad(&grads).map(|g| g.reshape([vocab * head_c])));
        },
    );
    let (gamma, beta) = (random(vec![c], &ad), random(vec![c], &ad));
    time(
        "LayerNorm forward + backward",
        format!("[{rows}, {c}]"),
        crate::norm::fused_applies(&x, &gamma, &beta),
        &|fused| {
            let (x, g, bias) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let y = if fused {
                crate::norm::layer_norm(x.clone(), g.clone(), bias.clone(), 1e-5)
            } else {
                crate::norm::reference(x.clone(), g.clone(), bias.clone(), 1e-5)
            };
            let grads = y.sum().backward();
            read(x.grad(&grads).map(|g| g.reshape([rows * c])));
            read(g.grad(&grads));
        },
    );

    let n = 384 * 1536;
    let tensors: Vec<Tensor<1>> = (0..4).map(|_| random(vec![n], &inner).abs()).collect();
    let refs: Vec<&Tensor<1>> = tensors.iter().collect();
    let step = crate::optim::AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        epsilon: 1e-8,
        weight_decay: 0.1,
        t: 10,
    };
    time(
        "AdamW update",
        format!("[{n}]"),
        crate::optim::fused_applies(&refs),
        &|fused| {
            // Fresh copies, as a training step's parameter and moments have no other holder.
            let [p, g, m, v] = [0, 1, 2, 3].map(|i| tensors[i].clone().mul_scalar(1.0));
            let [p, _, _] = if fused {
                crate::optim::adamw(p, g, m, v, step)
            } else {
                crate::optim::adamw_reference(p, g, m, v, step)
            };
            let _ = p.into_data();
        },
    );
    out
}
