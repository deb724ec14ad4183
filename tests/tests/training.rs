//! Training end to end on the CPU backend: the loss falls, checkpoints resume exactly, and a
//! saved model loads back unchanged.

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::data::Corpus;
use cinder_engine::device::{DeviceChoice, select};
use cinder_engine::lm::LanguageModel;
use cinder_engine::rng;
use cinder_engine::run::{FsStorage, Run, resolve_model_dir};
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::{Precision, Recompute, TrainConfig, Trainer, save_model};
use cinder_models::gpt2::{Gpt2, Gpt2Config};
use cinder_models::recipe::{AnyTrainer, Family, ObjectiveKind, TrainSettings, prepare};

/// Sentences from a small grammar: low-entropy text a tiny model learns in a few dozen steps.
fn corpus(lines: u64) -> String {
    let subjects = ["the cat", "a dog", "my bird", "the fox"];
    let verbs = ["sees", "likes", "chases", "finds"];
    let objects = ["the ball.", "a bone.", "the moon.", "some fish."];
    (0..lines)
        .map(|i| {
            let pick = |xs: &[&'static str], s| xs[rng::below(9, s, i, xs.len() as u64) as usize];
            format!(
                "{} {} {}\n",
                pick(&subjects, 0),
                pick(&verbs, 1),
                pick(&objects, 2)
            )
        })
        .collect()
}

/// The sentences of [`corpus`] as JSONL (input, target) pairs, each target the sentence's words
/// in reverse order.
fn pairs_corpus(lines: u64) -> String {
    corpus(lines)
        .lines()
        .map(|line| {
            let reversed: Vec<&str> = line.split(' ').rev().collect();
            let pair = serde_json::json!({"input": line, "target": reversed.join(" ")});
            format!("{pair}\n")
        })
        .collect()
}

/// Couplets of two five-character lines from a small grammar of 20 characters, one per line.
fn couplet_corpus(lines: u64) -> String {
    let chars: Vec<char> = "春風花月夜江水白雲山青草落日明秋聲入古城".chars().collect();
    (0..lines)
        .map(|i| {
            let line = |s: u64| -> String {
                (0..5)
                    .map(|k| chars[rng::below(9, s * 5 + k, i, 10) as usize + (s as usize) * 10])
                    .collect()
            };
            format!("{}，{}。\n", line(0), line(1))
        })
        .collect()
}

fn setup(steps: u64, device: &Device) -> (Gpt2, Tokenizer, Vec<u32>, TrainConfig) {
    let text = corpus(400);
    let tok = Tokenizer::train_char(&text).unwrap();
    let tokens = tok.encode_corpus(&text).unwrap();
    let config = Gpt2Config::new(tok.vocab_size(), 32, 64, 2, 4);
    device.seed(5);
    let model = config.init(device);
    let train = TrainConfig {
        steps,
        batch_size: 16,
        context: 32,
        lr: 5e-3,
        warmup: 5,
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        seed: 11,
        ..TrainConfig::default()
    };
    (model, tok, tokens, train)
}

#[test]
fn loss_falls_below_1_5_within_80_steps() {
    let device = Device::flex().autodiff();
    let (model, tok, tokens, config) = setup(80, &device);
    let mut trainer = Trainer::new(model, config, tok, tokens.clone(), tokens, &device).unwrap();
    let first = trainer.step().unwrap().loss;
    let mut last = first;
    while !trainer.finished() {
        last = trainer.step().unwrap().loss;
    }
    let eval = trainer.evaluate().unwrap();
    eprintln!("loss {first:.3} -> {last:.3}, held-out {eval:.3}");
    assert!(first > 2.5, "a fresh model is near uniform: {first}");
    assert!(last < 1.5, "loss after 80 steps: {last}");
    assert!(eval < 1.5, "held-out loss after 80 steps: {eval}");
    let sample = trainer.sample(3).unwrap();
    assert!(sample.chars().count() > 10, "{sample:?}");
}

#[test]
fn the_final_evaluation_reads_every_held_out_window_at_any_batch_size() {
    use cinder_engine::data::{line_starts, lm_windows};
    use cinder_engine::train::Windows;
    let device = Device::flex().autodiff();
    let (model, tok, tokens, config) = setup(1, &device);
    let held_out = tokens[..1500].to_vec();
    let full = |batch_size, windows| {
        let config = TrainConfig {
            batch_size,
            windows,
            ..config.clone()
        };
        let trainer = Trainer::new(
            model.clone(),
            config,
            tok.clone(),
            tokens.clone(),
            held_out.clone(),
            &device,
        )
        .unwrap();
        trainer.evaluate_all().unwrap()
    };
    let context = config.context;
    let (loss, n) = full(16, Windows::Anywhere);
    assert_eq!(n, lm_windows(&held_out, &[], context).len());
    assert_eq!(n, (1500 - context).div_ceil(context));
    assert!(
        loss.is_finite() && loss > 2.0,
        "a fresh model's loss: {loss}"
    );
    // Batching leaves the mean over windows unchanged.
    let (again, n5) = full(5, Windows::Anywhere);
    assert_eq!(n5, n);
    assert!((again - loss).abs() < 1e-5, "{again} vs {loss}");
    // Line-aligned: one window per line start (and per context after it) that fits.
    let newline = tok.encode("\n").unwrap();
    let starts = line_starts(&held_out, |t| newline.contains(&t), context);
    let (_, lines) = full(16, Windows::Lines);
    assert_eq!(lines, lm_windows(&held_out, &starts, context).len());
    assert!(lines > 1500 / 40, "{lines} windows");
}

#[test]
fn resumed_run_repeats_the_uninterrupted_losses() {
    let n = 4;
    let device = Device::flex().autodiff();
    // Both runs start from the same saved weights: Burn's random source is process-wide, so
    // initialising twice could differ while other tests run in parallel.
    let init = tempfile::tempdir().unwrap();
    let (model, tok, tokens, config) = setup(2 * n, &device);
    let positions = (config.batch_size * config.context) as f64;
    save_model(&model, &tok, init.path()).unwrap();
    let model = Gpt2::from_pretrained(init.path(), &device).unwrap();
    let mut straight = Trainer::new(
        model,
        config.clone(),
        tok.clone(),
        tokens.clone(),
        tokens.clone(),
        &device,
    )
    .unwrap();
    let expected: Vec<f64> = (0..2 * n).map(|_| straight.step().unwrap().loss).collect();

    let run = tempfile::tempdir().unwrap();
    let model = Gpt2::from_pretrained(init.path(), &device).unwrap();
    let mut first = Trainer::new(
        model,
        config.clone(),
        tok.clone(),
        tokens.clone(),
        tokens.clone(),
        &device,
    )
    .unwrap();
    let mut files = Run::new(Box::new(FsStorage::new(run.path()))).unwrap();
    let mut got: Vec<f64> = (0..n)
        .map(|_| files.step(&mut first).unwrap().loss)
        .collect();
    files.save(&first).unwrap();
    drop(first);
    drop(files);

    let ckpt = resolve_model_dir(run.path()).unwrap();
    assert!(ckpt.ends_with("step-0000004"), "{}", ckpt.display());
    let model = Gpt2::from_pretrained(&ckpt, &device).unwrap();
    let tok = Tokenizer::from_file(&ckpt.join("tokenizer.json")).unwrap();
    let mut second = Trainer::new(model, config, tok, tokens.clone(), tokens, &device).unwrap();
    let mut files = Run::new(Box::new(FsStorage::new(run.path()))).unwrap();
    let latest = files.latest().unwrap().unwrap();
    second.restore(&files.checkpoint(&latest).unwrap()).unwrap();
    assert_eq!(second.step_count(), n);
    files.truncate_metrics(n).unwrap();
    got.extend((0..n).map(|_| files.step(&mut second).unwrap().loss));
    // The same operations on the same weights, moments and batches: the losses agree to the bit
    // here. A kernel that summed in another order for the reloaded weights' layout could move
    // each, a mean of batch x context positive terms, by that many ε of itself.
    for (i, (a, b)) in expected.iter().zip(&got).enumerate() {
        let bound = positions * f64::from(f32::EPSILON) * a;
        assert!(
            (a - b).abs() <= bound,
            "step {}: uninterrupted {a} vs resumed {b} (bound {bound:e})",
            i + 1
        );
    }
    let metrics = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        2 * n as usize,
        "one metrics line per step"
    );
}

#[test]
fn saved_model_loads_back_with_identical_logits() {
    let device = Device::flex();
    device.seed(1);
    let tok = Tokenizer::train_char("abcdefgh\n").unwrap();
    let model = Gpt2Config::new(tok.vocab_size(), 16, 32, 2, 2).init(&device);
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, &tok, dir.path()).unwrap();
    let back = Gpt2::from_pretrained(dir.path(), &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64, 3, 4, 5], [1, 4]), &device);
    // The same weights (f32 round-trips through safetensors exactly) and the same operations:
    // identical logits, bit for bit.
    let a = model.forward(ids.clone()).into_data();
    let b = back.forward(ids).into_data();
    a.assert_eq(&b, true);
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.path().join(name).is_file(), "{name}");
    }
}

/// Settings for a small model of `family` (2 layers of width 32 and 4 heads; for LLaMA 2 of
/// them key/value heads) trained through `prepare`, the path `cinder train --family` and the
/// app take.
fn family_settings(family: Family, steps: u64, init_from: &std::path::Path) -> TrainSettings {
    let mut s = TrainSettings::default();
    s.model.family = family;
    s.model.n_layer = Some(2);
    s.model.n_head = Some(4);
    s.model.n_kv_head = family.has_kv_heads().then_some(2);
    s.model.n_embd = Some(32);
    s.model.init_from = Some(init_from.to_path_buf());
    s.device = DeviceChoice::Cpu;
    s.train = TrainConfig {
        steps,
        batch_size: 8,
        context: 32,
        lr: 5e-3,
        warmup: 3,
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        seed: 11,
        ..TrainConfig::default()
    };
    s
}

/// Steps `trainer` until it is done, in `run`, returning the losses.
fn losses(trainer: &mut AnyTrainer, run: &mut Run, stop_after: Option<usize>) -> Vec<f64> {
    let mut out = Vec::new();
    while !trainer.finished() && stop_after.is_none_or(|n| out.len() < n) {
        out.push(trainer.step_in(run).unwrap().loss);
    }
    out
}

#[test]
fn llama_trains_resumes_exactly_recomputes_blocks_in_bf16_and_saves_a_hf_folder() {
    let settings = |init: &std::path::Path| family_settings(Family::Llama, 8, init);
    let write_init = |s: &TrainSettings, tok: &Tokenizer, dir: &std::path::Path| {
        let config = s.model.llama_config(tok.vocab_size(), s.train.context);
        assert_eq!(
            (
                config.num_hidden_layers,
                config.kv_heads(),
                config.intermediate_size
            ),
            (2, 2, 96),
            "the LLaMA of a 2 x 32 recipe"
        );
        let cpu = Device::flex().autodiff();
        cpu.seed(5);
        save_model(&config.init(&cpu), tok, dir).unwrap();
    };
    let config = trains_resumes_recomputes_and_saves(settings, write_init);
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
}

#[test]
fn gpt2_ml_trains_resumes_exactly_recomputes_blocks_in_bf16_and_saves_its_folder() {
    let settings = |init: &std::path::Path| family_settings(Family::Gpt2Ml, 8, init);
    let write_init = |s: &TrainSettings, tok: &Tokenizer, dir: &std::path::Path| {
        let config = s.model.gpt2_ml_config(tok.vocab_size(), s.train.context);
        assert_eq!(
            config.intermediate_size, 128,
            "the GPT2_ML of a 2 x 32 recipe"
        );
        let cpu = Device::flex().autodiff();
        cpu.seed(5);
        save_model(&config.init(&cpu), tok, dir).unwrap();
    };
    let config = trains_resumes_recomputes_and_saves(settings, write_init);
    assert_eq!(config["model_type"], "gpt2-ml");
    assert!(
        config.get("n_embd").is_none(),
        "GPT2_ML's own keys: {config}"
    );
}

#[test]
fn bert_trains_as_a_masked_lm_resumes_exactly_accumulates_exactly_in_bf16_and_saves_a_hf_folder() {
    let settings = |init: &std::path::Path| family_settings(Family::Bert, 8, init);
    let write_init = |s: &TrainSettings, tok: &Tokenizer, dir: &std::path::Path| {
        let mut tok = tok.clone();
        tok.add_special_tokens(&["[PAD]", "[MASK]"]);
        let pad = tok.token_to_id("[PAD]").unwrap() as usize;
        let config = s.model.bert_config(tok.vocab_size(), s.train.context, pad);
        let cpu = Device::flex().autodiff();
        cpu.seed(5);
        save_model(&config.init(true, &cpu), &tok, dir).unwrap();
    };
    let config = trains_resumes_recomputes_and_saves(settings, write_init);
    assert_eq!(config["model_type"], "bert");
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
}

#[test]
fn t5_trains_on_pairs_resumes_exactly_accumulates_exactly_in_bf16_and_saves_a_hf_folder() {
    let settings = |init: &std::path::Path| {
        let mut s = family_settings(Family::T5, 8, init);
        s.model.corpus = "pairs.jsonl".parse().unwrap();
        s
    };
    let write_init = |s: &TrainSettings, tok: &Tokenizer, dir: &std::path::Path| {
        let mut tok = tok.clone();
        tok.add_special_tokens(&["<pad>", "</s>"]);
        let id = |t: &str| tok.token_to_id(t).unwrap() as usize;
        let config = s
            .model
            .t5_config(tok.vocab_size(), s.train.context, id("<pad>"), id("</s>"));
        assert_eq!(
            (
                config.num_layers,
                config.decoder_layers(),
                config.d_kv,
                config.d_ff
            ),
            (2, 2, 8, 128),
            "the T5 of a 2 x 32 recipe"
        );
        let cpu = Device::flex().autodiff();
        cpu.seed(5);
        save_model(&config.init(&cpu).unwrap(), &tok, dir).unwrap();
    };
    let config = trains_resumes_recomputes_and_saves(settings, write_init);
    assert_eq!(config["model_type"], "t5");
    assert_eq!(config["architectures"][0], "T5ForConditionalGeneration");
}

#[test]
fn poetry_vae_trains_on_couplets_resumes_exactly_accumulates_exactly_in_bf16_and_saves_its_folder()
{
    let settings = |init: &std::path::Path| {
        let mut s = family_settings(Family::PoetryVae, 8, init);
        // 8 x 40 tokens: 32 couplets a step, 16 per micro-batch when accumulated.
        s.train.context = 40;
        s.train.lr = 1e-2;
        s
    };
    let write_init = |_: &TrainSettings, tok: &Tokenizer, dir: &std::path::Path| {
        let config = cinder_models::poetry_vae::PoetryVaeConfig::new(tok.vocab_size())
            .with_hidden_dim(32)
            .with_latent_dim(16);
        let cpu = Device::flex().autodiff();
        cpu.seed(5);
        save_model(&config.init(&cpu), tok, dir).unwrap();
    };
    let config = trains_resumes_recomputes_and_saves(settings, write_init);
    assert_eq!(config["model_type"], "poetry-vae");
    assert_eq!(config["length"], 10);
}

/// Trains the settings `settings(init)` make for 8 steps, `write_init(settings, tokenizer,
/// init)` having written the starting weights into `init`: the loss falls, a run stopped after
/// 4 steps and resumed from its checkpoint repeats the losses, recomputing blocks changes
/// nothing, bf16 follows f32, and the checkpoint loads as a model folder of the family. Returns
/// the checkpoint's `config.json`.
fn trains_resumes_recomputes_and_saves(
    settings: impl Fn(&std::path::Path) -> TrainSettings,
    write_init: impl Fn(&TrainSettings, &Tokenizer, &std::path::Path),
) -> serde_json::Value {
    let n: usize = 4;
    let selected = select(DeviceChoice::Cpu).unwrap();
    let init = tempfile::tempdir().unwrap();
    let settings = settings(init.path());
    let causal = settings.model.family.objective() == ObjectiveKind::Causal;
    let text = match settings.model.family.objective() {
        ObjectiveKind::Seq2Seq => pairs_corpus(400),
        ObjectiveKind::Vae => couplet_corpus(400),
        _ => corpus(400),
    };
    let data = || Corpus {
        train: text.clone(),
        val: text.clone(),
    };
    // The starting weights, written once: Burn's random source is process-wide, so two
    // initialisations could differ while other tests run in parallel.
    assert_eq!(settings.train.steps, 2 * n as u64);
    let family = settings.model.family;
    let tok = Tokenizer::train_char(&text).unwrap();
    write_init(&settings, &tok, init.path());
    let quiet = &mut |_: String| {};

    let straight_dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(Box::new(FsStorage::new(straight_dir.path()))).unwrap();
    let mut straight = prepare(&settings, &mut run, false, &selected, data(), quiet).unwrap();
    assert_eq!(straight.family(), family.to_string());
    let expected = losses(&mut straight, &mut run, None);
    let positions = (settings.train.batch_size * settings.train.context) as f64;
    // The last two steps against the first two: a masked-LM loss is a mean over the few
    // dozen tokens chosen in a batch, noisier than a causal one over every position (and a
    // pair's over its target alone).
    let ends = (
        expected[0] + expected[1],
        expected[2 * n - 2] + expected[2 * n - 1],
    );
    assert!(ends.1 < 0.95 * ends.0, "the loss falls: {expected:?}");

    // Stopped after n steps, resumed from the checkpoint: the same losses.
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(Box::new(FsStorage::new(dir.path()))).unwrap();
    let mut first = prepare(&settings, &mut run, false, &selected, data(), quiet).unwrap();
    let mut got = losses(&mut first, &mut run, Some(n));
    first.save_in(&mut run).unwrap();
    drop((first, run));
    let mut run = Run::new(Box::new(FsStorage::new(dir.path()))).unwrap();
    let saved = TrainSettings::read(&run).unwrap().unwrap();
    assert_eq!(saved.model.family, family, "run.json keeps the family");
    let mut second = prepare(&saved, &mut run, true, &selected, data(), quiet).unwrap();
    assert_eq!(second.step_count(), n as u64);
    got.extend(losses(&mut second, &mut run, None));
    // Recomputing each block in the backward pass changes what is kept, not what is computed.
    // (An encoder has no block-wise form: there, half the batch accumulated twice is the same
    // update, since each micro-batch's loss is divided by the whole step's chosen or target
    // tokens.)
    let mut blocks = settings.clone();
    if !causal {
        blocks.train.batch_size /= 2;
        blocks.train.accumulate = 2;
    } else {
        blocks.train.recompute = Recompute::Blocks;
    }
    let blocks_dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(Box::new(FsStorage::new(blocks_dir.path()))).unwrap();
    let mut recomputed = prepare(&blocks, &mut run, false, &selected, data(), quiet).unwrap();
    let recomputed = losses(&mut recomputed, &mut run, None);
    // In bf16 (8 significant bits) the losses follow: the residual stream is rounded after
    // each of the 2 layers' attention and feed-forward, the final norm and the head, 6
    // roundings at the scale of the loss (bounded by 8 as in half_precision_losses_follow_the_f32_run).
    let mut half = settings.clone();
    half.train.precision = Precision::Bf16;
    let half_dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(Box::new(FsStorage::new(half_dir.path()))).unwrap();
    let mut bf16 = prepare(&half, &mut run, false, &selected, data(), quiet).unwrap();
    let bf16 = losses(&mut bf16, &mut run, None);
    let worst = bf16
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let bound = 8.0 * 2f64.powi(-8) * expected[0];
    eprintln!(
        "{family} bf16: worst gap {worst:.4} over {} steps (bound {bound:.4})",
        2 * n
    );
    assert!(
        worst < bound,
        "bf16 {bf16:?} vs f32 {expected:?} (bound {bound})"
    );
    for (i, (a, b)) in expected.iter().zip(&got).enumerate() {
        // As in resumed_run_repeats_the_uninterrupted_losses: each loss is a mean of
        // batch x context positive terms, which a different summation order moves by that
        // many ε of itself at most.
        let bound = positions * f64::from(f32::EPSILON) * a;
        assert!(
            (a - b).abs() <= bound,
            "step {}: uninterrupted {a} vs resumed {b} (bound {bound:e})",
            i + 1
        );
        let c = recomputed[i];
        assert!(
            (a - c).abs() <= bound,
            "step {}: kept {a} vs recomputed blocks (or accumulated) {c} (bound {bound:e})",
            i + 1
        );
    }

    // The run's checkpoint is a model folder of the family: it loads as one.
    let ckpt = resolve_model_dir(dir.path()).unwrap();
    if family.objective() == ObjectiveKind::Mlm {
        let bert = cinder_models::bert::Bert::from_pretrained(&ckpt, &Device::flex()).unwrap();
        assert!(bert.has_mlm_head());
    } else if family.objective() == ObjectiveKind::Vae {
        let vae =
            cinder_models::poetry_vae::PoetryVae::from_pretrained(&ckpt, &Device::flex()).unwrap();
        assert_eq!(vae.config().latent_dim, 16);
    } else {
        let loaded = cinder_models::auto::load(&ckpt, &Device::flex(), None).unwrap();
        assert_eq!(loaded.family(), family.to_string());
    }
    serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap()
}

/// A LLaMA whose embedding row for one token is NaN, and a token stream where that token shows
/// up in about one step in three: the steps that see it have a NaN loss, the others are clean.
fn poisoned_llama(
    on_nonfinite: cinder_engine::train::OnNonFinite,
) -> Trainer<cinder_models::llama::Llama> {
    use cinder_engine::weights::{read_safetensors, write_safetensors};
    const POISON: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let from = cinder_tests::fixtures().join("llama-tiny");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
    }
    let weights = dir.path().join("model.safetensors");
    let mut tensors = read_safetensors(&weights).unwrap();
    let key = "model.embed_tokens.weight";
    let data = tensors.remove(key).unwrap();
    let shape = data.shape().to_vec();
    let mut values = data.try_to_vec::<f32>().unwrap();
    values[POISON * shape[1]..(POISON + 1) * shape[1]].fill(f32::NAN);
    tensors.insert(key.to_string(), TensorData::new(values, shape));
    write_safetensors(&weights, &tensors).unwrap();
    let device = Device::flex().autodiff();
    let model = cinder_models::llama::Llama::from_pretrained(dir.path(), &device).unwrap();
    let tok = Tokenizer::from_json(&std::fs::read_to_string(from.join("tokenizer.json")).unwrap())
        .unwrap();
    let clean = |n: u64, stream: u64| -> Vec<u32> {
        (0..n)
            .map(|i| 1 + rng::below(3, stream, i, 50) as u32)
            .collect()
    };
    let mut train = clean(2000, 0);
    train[1400..1600].fill(POISON as u32);
    let config = TrainConfig {
        steps: 12,
        batch_size: 4,
        context: 16,
        lr: 1e-2,
        warmup: 2,
        eval_every: 0,
        sample_every: 0,
        checkpoint_every: 0,
        seed: 11,
        on_nonfinite,
        ..TrainConfig::default()
    };
    Trainer::new(model, config, tok, train, clean(400, 1), &device).unwrap()
}

/// A step whose loss is not finite stops the run, naming the step and the tensor, with the
/// weights of the step before; under `--on-nonfinite skip` such steps leave the weights as they
/// were and the clean steps go on training.
#[test]
fn non_finite_steps_stop_the_run_or_are_skipped_without_touching_the_weights() {
    use cinder_engine::train::OnNonFinite;
    let mut trainer = poisoned_llama(OnNonFinite::Stop);
    let err = loop {
        let before = trainer.evaluate().unwrap();
        match trainer.step() {
            Ok(r) => assert!(r.loss.is_finite() && !r.skipped, "{r:?}"),
            Err(e) => {
                // Same weights, same held-out batches: the same computation, bit for bit.
                assert_eq!(trainer.evaluate().unwrap(), before);
                break e.to_string();
            }
        }
        assert!(!trainer.finished(), "no step saw the poisoned token");
    };
    let step = trainer.step_count() + 1;
    assert!(
        err.contains(&format!("step {step}:"))
            && err.contains("the weight")
            && err.contains("embed_tokens")
            && err.contains("--on-nonfinite skip"),
        "{err}"
    );

    let mut trainer = poisoned_llama(OnNonFinite::Skip);
    let (mut skipped, mut applied) = (0, 0);
    let first = trainer.evaluate().unwrap();
    while !trainer.finished() {
        let before = trainer.evaluate().unwrap();
        let r = trainer.step().unwrap();
        let after = trainer.evaluate().unwrap();
        if r.skipped {
            skipped += 1;
            assert!(!r.loss.is_finite(), "{r:?}");
            assert_eq!(after, before, "a skipped step changed the weights");
            let note = r.note.as_deref().unwrap_or_default();
            assert!(
                note.contains("loss is not finite") && note.contains("embed_tokens"),
                "{note}"
            );
        } else {
            applied += 1;
            assert!(r.loss.is_finite() && after.is_finite(), "{r:?}");
        }
    }
    let last = trainer.evaluate().unwrap();
    eprintln!("{skipped} steps skipped, {applied} applied; held-out {first:.3} -> {last:.3}");
    assert!(
        skipped >= 1 && applied >= 1,
        "{skipped} skipped, {applied} applied"
    );
    assert!(last < first, "the clean steps train: {first} -> {last}");
}
