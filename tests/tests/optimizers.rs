//! The optimizers inside the trainer: gradient accumulation equals the large batch, every
//! optimizer trains, and AdaFactor's state on GPT-2 124M is tiny.

use cinder_engine::burn::module::Module;
use cinder_engine::burn::tensor::Device;
use cinder_engine::lm::CausalLm;
use cinder_engine::optim::{
    AdaFactorConfig, AdamWConfig, HeunConfig, LionConfig, OptimizerConfig, SgdConfig,
    adafactor_state_elements, param_shapes,
};
use cinder_engine::rng;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::{Precision, Recompute, TrainConfig, Trainer};
use cinder_models::gpt2::{Gpt2, Gpt2Config};

/// Burn's seeded random state is global: tests that seed and draw hold this lock, so the test
/// harness's threads cannot interleave their draws.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn corpus() -> String {
    let words = [
        "red", "green", "blue", "cat", "dog", "runs", "sleeps", "fast", "slowly",
    ];
    (0..300u64)
        .map(|i| {
            let w: Vec<&str> = (0..5)
                .map(|k| words[rng::below(3, k, i, words.len() as u64) as usize])
                .collect();
            format!("{}.\n", w.join(" "))
        })
        .collect()
}

fn trainer(
    device: &Device,
    optimizer: OptimizerConfig,
    batch: usize,
    accumulate: usize,
    steps: u64,
    width: usize,
) -> Trainer<Gpt2> {
    trainer_lr(device, optimizer, batch, accumulate, steps, width, 3e-3)
}

fn trainer_lr(
    device: &Device,
    optimizer: OptimizerConfig,
    batch: usize,
    accumulate: usize,
    steps: u64,
    width: usize,
    lr: f64,
) -> Trainer<Gpt2> {
    trainer_from(None, device, optimizer, batch, accumulate, steps, width, lr)
}

/// A trainer at step 0 for `model`, or for a fresh seeded one.
#[allow(clippy::too_many_arguments)]
fn trainer_from(
    model: Option<Gpt2>,
    device: &Device,
    optimizer: OptimizerConfig,
    batch: usize,
    accumulate: usize,
    steps: u64,
    width: usize,
    lr: f64,
) -> Trainer<Gpt2> {
    let text = corpus();
    let tok = Tokenizer::train_char(&text).unwrap_or_else(|e| panic!("{e}"));
    let tokens = tok.encode_corpus(&text).unwrap_or_else(|e| panic!("{e}"));
    device.seed(21);
    let model =
        model.unwrap_or_else(|| Gpt2Config::new(tok.vocab_size(), 24, width, 3, 4).init(device));
    let config = TrainConfig {
        steps,
        batch_size: batch,
        accumulate,
        context: 24,
        lr,
        warmup: 2,
        min_lr_ratio: 0.1,
        optimizer,
        grad_clip: 0.0,
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        seed: 4,
        ..TrainConfig::default()
    };
    Trainer::new(model, config, tok, tokens.clone(), tokens, device)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn weights(model: &Gpt2) -> Vec<f32> {
    model
        .export_tensors()
        .unwrap()
        .into_values()
        .flat_map(|d| d.try_to_vec::<f32>().unwrap_or_default())
        .collect()
}

fn run(t: &mut Trainer<Gpt2>) -> Vec<f64> {
    let mut losses = Vec::new();
    while !t.finished() {
        losses.push(t.step().unwrap_or_else(|e| panic!("{e}")).loss);
    }
    losses
}

#[test]
fn accumulated_micro_batches_equal_the_large_batch() {
    let _serial = serial();
    let device = Device::flex().autodiff();
    let adamw = OptimizerConfig::AdamW(AdamWConfig::default());
    // Five AdamW steps with warmup and cosine decay: 3 micro-batches of 4 against one of 12.
    let mut small = trainer(&device, adamw, 4, 3, 5, 32);
    let mut large = trainer(&device, adamw, 12, 1, 5, 32);
    let (ls, ll) = (run(&mut small), run(&mut large));
    for (a, b) in ls.iter().zip(&ll) {
        assert!((a - b).abs() < 1e-4, "losses {ls:?} vs {ll:?}");
    }
    let (ws, wl) = (weights(small.model()), weights(large.model()));
    let diff = ws
        .iter()
        .zip(&wl)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "parameters differ by {diff}");
    // The parameters did move: the comparison is not between two untouched models.
    let fresh = weights(trainer(&device, adamw, 12, 1, 5, 32).model());
    let moved = ws
        .iter()
        .zip(&fresh)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-3, "{moved}");
}

#[test]
fn every_optimizer_lowers_the_loss() {
    let _serial = serial();
    let device = Device::flex().autodiff();
    let configs = [
        OptimizerConfig::AdamW(AdamWConfig::default()),
        OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        }),
        OptimizerConfig::AdaFactor(AdaFactorConfig::default()),
        OptimizerConfig::Lion(LionConfig {
            beta2: 0.99,
            ..LionConfig::default()
        }),
        OptimizerConfig::Heun(HeunConfig::default()),
    ];
    for config in configs {
        // AdaFactor's steps are relative to each parameter's RMS (about 0.02 here); Lion moves
        // every coordinate by the full learning rate; Heun has no momentum.
        let lr = match config {
            OptimizerConfig::AdaFactor(_) => 0.3,
            OptimizerConfig::Heun(_) => 0.1,
            OptimizerConfig::Lion(_) => 2e-3,
            _ => 1e-2,
        };
        let mut t = trainer_lr(&device, config, 8, 1, 12, 32, lr);
        let losses = run(&mut t);
        let (first, last) = (losses[0], losses[losses.len() - 1]);
        eprintln!("{}: {first:.3} -> {last:.3}", config.kind());
        assert!(last < first - 0.2, "{}: {first} -> {last}", config.kind());
    }
}

#[test]
fn heun_takes_the_average_of_two_gradients() {
    let _serial = serial();
    // Heun: q = p - lr g(p), then p' = p - lr (g(p) + g(q)) / 2. Two plain SGD steps on the
    // same batch give q and r = q - lr g(q), so p' must equal (p + r) / 2.
    let device = Device::flex().autodiff();
    let heun = OptimizerConfig::Heun(HeunConfig::default());
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    });
    let mut h = trainer_lr(&device, heun, 8, 1, 3, 32, 1e-2);
    let start = weights(h.model());
    h.step().unwrap_or_else(|e| panic!("{e}"));
    let mut first = trainer_lr(&device, sgd, 8, 1, 3, 32, 1e-2);
    let p = weights(first.model());
    assert_eq!(start, p, "both runs start from the same weights");
    first.step().unwrap_or_else(|e| panic!("{e}"));
    let q = first.model().clone();
    let qw = weights(&q);
    let mut second = trainer_from(Some(q), &device, sgd, 8, 1, 3, 32, 1e-2);
    second.step().unwrap_or_else(|e| panic!("{e}"));
    let r = weights(second.model());
    let ph = weights(h.model());
    let max = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    // Heun's step is not the Euler step q, though close to it.
    assert!(max(&ph, &qw) > 1e-6 && max(&ph, &qw) < 0.2 * max(&qw, &p));
    let diff = ph
        .iter()
        .zip(p.iter().zip(&r))
        .map(|(h, (p, r))| (h - (p + r) / 2.0).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-6, "Heun differs from (p + r) / 2 by {diff}");
    assert!(max(&ph, &p) > 1e-4);
}

#[test]
fn recomputed_blocks_give_the_same_gradients() {
    let _serial = serial();
    // One plain SGD step with lr 1 moves each weight by exactly its gradient.
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    });
    let step = |device: &Device, recompute: Recompute, accumulate: usize| {
        let mut t = trainer_lr(device, sgd, 6 / accumulate, accumulate, 1, 32, 1.0);
        let before = weights(t.model());
        t.set_recompute(recompute);
        let loss = t.step().unwrap_or_else(|e| panic!("{e}")).loss;
        let after = weights(t.model());
        let grads: Vec<f32> = before.iter().zip(&after).map(|(b, a)| b - a).collect();
        (grads, loss)
    };
    let plain = Device::flex().autodiff();
    let (reference, loss) = step(&plain, Recompute::None, 1);
    let largest = reference.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    assert!(largest > 1e-3, "{largest}");
    let checkpointing = Device::flex().autodiff().gradient_checkpointing();
    for (device, mode, k) in [
        (&plain, Recompute::Blocks, 1),
        (&plain, Recompute::Blocks, 3),
        (&checkpointing, Recompute::All, 1),
    ] {
        let (grads, l) = step(device, mode, k);
        let diff = grads
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff < 1e-5 * largest.max(1.0),
            "{mode:?} x{k}: gradients differ by {diff}"
        );
        assert!((l - loss).abs() < 1e-5, "{mode:?} x{k}: loss {l} vs {loss}");
    }
    // Blockwise recomputation refuses a model with dropout (its first pass has none).
    let mut config = Gpt2Config::new(40, 24, 32, 2, 4);
    config.resid_pdrop = 0.1;
    let mut t = trainer_from(Some(config.init(&plain)), &plain, sgd, 4, 1, 1, 32, 1.0);
    t.set_recompute(Recompute::Blocks);
    let err = t.step().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("without dropout"), "{err}");
    // Several steps on the checkpointing device: updated weights keep its strategy.
    let adamw = OptimizerConfig::AdamW(AdamWConfig::default());
    let mut t = trainer_lr(&checkpointing, adamw, 4, 1, 3, 32, 3e-3);
    t.set_recompute(Recompute::All);
    let losses = run(&mut t);
    assert!(losses.iter().all(|l| l.is_finite()) && losses.len() == 3);
}

#[test]
fn half_precision_losses_follow_the_f32_run() {
    let _serial = serial();
    let device = Device::flex().autodiff();
    let adamw = OptimizerConfig::AdamW(AdamWConfig::default());
    let losses = |precision: Precision| {
        let mut t = trainer_lr(&device, adamw, 8, 1, 15, 32, 1e-2);
        t.set_precision(precision);
        let mut out = Vec::new();
        let mut scales = Vec::new();
        while !t.finished() {
            let r = t.step().unwrap_or_else(|e| panic!("{e}"));
            out.push(r.loss);
            scales.push(r.loss_scale);
        }
        (out, scales)
    };
    let (f32_run, _) = losses(Precision::F32);
    assert!(f32_run[14] < f32_run[0] - 0.3, "{f32_run:?}");
    for (precision, tolerance) in [(Precision::F16, 0.02), (Precision::Bf16, 0.05)] {
        let (run, scales) = losses(precision);
        let worst = run
            .iter()
            .zip(&f32_run)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{precision}: worst gap {worst:.4} over 15 steps; {run:?}");
        assert!(worst < tolerance, "{precision}: {run:?} vs {f32_run:?}");
        assert_eq!(scales[0].is_some(), precision == Precision::F16);
    }
    // A scale that overflows f16 (65504 at most): the step is skipped, the weights stay, and the
    // scale halves until the gradients fit.
    let mut t = trainer_lr(&device, adamw, 8, 1, 40, 32, 1e-2);
    t.set_precision(Precision::F16);
    t.set_loss_scale(2f64.powi(40));
    let before = weights(t.model());
    let first = t.step().unwrap_or_else(|e| panic!("{e}"));
    assert!(first.skipped, "{first:?}");
    assert_eq!(weights(t.model()), before);
    let mut reports = vec![first];
    while !t.finished() {
        reports.push(t.step().unwrap_or_else(|e| panic!("{e}")));
    }
    let scales: Vec<f64> = reports.iter().filter_map(|r| r.loss_scale).collect();
    assert!(scales.windows(2).all(|w| w[1] <= w[0]), "{scales:?}");
    assert!(!reports[39].skipped, "never recovered: {scales:?}");
    assert!(reports[39].loss < reports[0].loss - 0.2);
}

#[test]
fn adafactor_state_is_under_one_percent_of_adamw_on_gpt2_124m() {
    let _serial = serial();
    let device = Device::flex();
    let model = Gpt2Config::gpt2_124m().init(&device);
    let shapes = param_shapes(&model);
    let params: usize = shapes
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    assert_eq!(params, model.num_params());
    let c = AdaFactorConfig::default();
    let adafactor: usize = shapes
        .iter()
        .map(|(_, d)| adafactor_state_elements(d, &c))
        .sum();
    let adamw = 2 * params;
    let ratio = adafactor as f64 / adamw as f64;
    eprintln!(
        "AdaFactor {adafactor} vs AdamW {adamw} state elements: {:.3}%",
        100.0 * ratio
    );
    assert!(ratio < 0.01, "{ratio}");
}
