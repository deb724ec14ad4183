//! The `cinder` binary as a user runs it.

// A set-up step that fails (starting the binary, a temporary folder) should fail the test loudly.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cinder(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running cinder")
}

/// A 200-line text file in `dir` that a tiny model learns in a few steps.
fn little_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("poems.txt");
    let lines: String = (0..200)
        .map(|i| format!("line {} of the little corpus.\n", i % 13))
        .collect();
    std::fs::write(&corpus, lines).expect("write corpus");
    corpus
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpt2-tiny")
}

#[test]
fn greedy_generation_prints_the_transformers_continuation() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("reference.json")).expect("read the reference"),
    )
    .expect("parse the reference");
    let case = &reference["prompts"][0];
    let prompt = case["text"].as_str().expect("a prompt");
    let expected = case["greedy_text"].as_str().expect("a continuation");
    let model = fixture();
    let out = cinder(
        &[
            "generate",
            "--model",
            &model.to_string_lossy(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "24",
            "--temperature",
            "0",
            "--device",
            "cpu",
            "--ignore-eos",
        ],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{expected}\n"));
}

#[test]
fn bad_arguments_get_clear_errors() {
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = fixture();
    let out = cinder(
        &[
            "generate",
            "--model",
            &model.to_string_lossy(),
            "--device",
            "tpu",
        ],
        cwd,
    );
    // A usage error (exit status 2) that names the value and the choices.
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'tpu'")
            && text(&out.stderr).contains("auto, gpu, wgpu, cpu"),
        "{}",
        text(&out.stderr)
    );

    let out = cinder(
        &[
            "generate",
            "--model",
            "/nonexistent/model",
            "--device",
            "cpu",
        ],
        cwd,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/model"),
        "{}",
        text(&out.stderr)
    );

    let out = cinder(
        &[
            "train",
            "--corpus",
            "/nonexistent/corpus.txt",
            "--device",
            "cpu",
        ],
        cwd,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/corpus.txt"),
        "{}",
        text(&out.stderr)
    );

    // Settings of one family given to the other.
    for (family, flag, value) in [
        ("llama", "--dropout", "0.1"),
        ("gpt2", "--n-kv-head", "2"),
        ("gpt2-ml", "--n-kv-head", "2"),
        ("gpt2", "--objective", "mlm"),
        ("bert", "--objective", "causal"),
        ("gpt2", "--objective", "seq2seq"),
        ("t5", "--objective", "mlm"),
        ("t5", "--n-kv-head", "2"),
    ] {
        let out = cinder(
            &["train", "--family", family, flag, value, "--device", "cpu"],
            cwd,
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(flag) && err.contains(&format!("--family {family}")),
            "{err}"
        );
    }
}

#[test]
fn train_a_llama_and_generate_from_its_run() {
    let kv = ["--n-kv-head", "2"];
    let line = "model llama: 1 layers, 4 heads (2 key/value), width 32";
    // Greedy: twelve steps teach it little, but it continues the prompt.
    train_and_generate("llama", &kv, line, &["--temperature", "0"]);
}

#[test]
fn train_a_gpt2_ml_and_sample_from_its_run_with_top_k_and_top_p() {
    let line = "model gpt2-ml: 1 layers, 4 heads, width 32, feed-forward 128";
    let sampling = ["--top-k", "5", "--top-p", "0.95", "--seed", "7"];
    train_and_generate("gpt2-ml", &[], line, &sampling);
}

/// Trains a one-layer model of `family` for 12 steps on a little corpus (`extra` added to the
/// flags), checks the model line `model_line` and that the loss falls, then generates 10 tokens
/// from the run with the decoding flags `decoding`.
fn train_and_generate(family: &str, extra: &[&str], model_line: &str, decoding: &[&str]) {
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    let run = work.path().join("run");
    let run_path = run.to_str().expect("a UTF-8 path");
    #[rustfmt::skip]
    let mut args = vec![
        "train", "--family", family, "--corpus", corpus.to_str().expect("a UTF-8 path"),
        "--n-layer", "1", "--n-embd", "32", "--n-head", "4",
        "--context", "16", "--batch-size", "4", "--steps", "12", "--sample-every", "6",
        "--sample-tokens", "8", "--device", "cpu", "--out", run_path,
    ];
    args.extend(extra);
    let out = cinder(&args, work.path());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(model_line), "{err}");
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("read metrics")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a metrics line")["loss"]
                .as_f64()
                .expect("a loss")
        })
        .collect();
    assert_eq!(losses.len(), 12);
    assert!(losses[11] < losses[0], "the loss falls: {losses:?}");
    let mut args = vec![
        "generate",
        "--model",
        run_path,
        "--prompt",
        "line",
        "--max-new-tokens",
        "10",
        "--device",
        "cpu",
    ];
    args.extend(decoding);
    let out = cinder(&args, work.path());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("({family}, F32 weights)")), "{err}");
    assert!(err.contains("10 new tokens"), "{err}");
}

#[test]
fn train_stop_resume_and_generate_from_the_run() {
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    let run = work.path().join("run");
    let common = [
        "--corpus",
        corpus.to_str().expect("a UTF-8 path"),
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--context",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "12",
        "--eval-every",
        "6",
        "--sample-every",
        "6",
        "--sample-tokens",
        "8",
        "--device",
        "cpu",
    ];
    let mut first: Vec<&str> = vec!["train"];
    first.extend(common);
    first.extend([
        "--out",
        run.to_str().expect("a UTF-8 path"),
        "--stop-after",
        "6",
    ]);
    let out = cinder(&first, work.path());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("held-out loss") && err.contains("sample"),
        "{err}"
    );
    assert!(err.contains("stopped at step 6 of 12"), "{err}");

    let out = cinder(
        &[
            "train",
            "--resume",
            run.to_str().expect("a UTF-8 path"),
            "--device",
            "cpu",
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("resumed from") && err.contains("at step 6"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("Generating from the trained model"));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("read metrics");
    assert_eq!(metrics.lines().count(), 12);

    let out = cinder(
        &[
            "generate",
            "--model",
            run.to_str().expect("a UTF-8 path"),
            "--prompt",
            "line",
            "--max-new-tokens",
            "10",
            "--device",
            "cpu",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).trim().is_empty());
}

#[test]
fn embed_and_fill_mask_print_json_and_refuse_what_they_cannot_use() {
    let work = tempfile::tempdir().expect("tempdir");
    let bert = fixture().with_file_name("bert-tiny");
    let bert = bert.to_str().expect("a UTF-8 path");
    let texts = ["the quick brown fox", "hello world", "the lazy dog"];
    let mut args = vec!["embed", "--model", bert, "--json", "--device", "cpu"];
    args.extend(texts);
    let out = cinder(&args, work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let vectors = json["embeddings"].as_array().expect("embeddings");
    let cosine = json["cosine"].as_array().expect("cosine");
    assert_eq!((vectors.len(), cosine.len()), (3, 3));
    for (i, v) in vectors.iter().enumerate() {
        let v: Vec<f64> = v
            .as_array()
            .expect("a vector")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect();
        assert_eq!(v.len(), 32);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "text {i}: norm {norm}");
        assert!((cosine[i][i].as_f64().expect("a cosine") - 1.0).abs() < 1e-5);
    }

    // The fixture's reference: the transformers fill-mask pipeline's best five.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().with_file_name("bert-tiny").join("reference.json"))
            .expect("reference"),
    )
    .expect("reference JSON");
    let fill = &reference["fill_mask"];
    #[rustfmt::skip]
    let out = cinder(
        &["fill-mask", "--model", bert, "--json", "--device", "cpu",
          fill["text"].as_str().expect("a text")],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let ours: Vec<u64> = json[0][0]
        .as_array()
        .expect("one mask's predictions")
        .iter()
        .map(|p| p["id"].as_u64().expect("an id"))
        .collect();
    let theirs: Vec<u64> = fill["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|p| p["id"].as_u64().expect("an id"))
        .collect();
    assert_eq!(ours, theirs);

    // A decoder is not an encoder; a text without a mask has nothing to fill; an encoder does
    // not generate.
    let gpt2 = fixture();
    let gpt2 = gpt2.to_str().expect("a UTF-8 path");
    for (args, expected) in [
        (
            vec!["embed", "--model", gpt2, "hi"],
            "model_type 'gpt2' is not an encoder",
        ),
        (vec!["fill-mask", "--model", bert, "no mask"], "no [MASK]"),
        (
            vec!["generate", "--model", bert, "--prompt", "hi"],
            "cinder embed",
        ),
        (
            vec!["embed", "--model", bert, "--max-length", "1", "hi"],
            "--max-length 1",
        ),
    ] {
        let out = cinder(&args, work.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn train_a_bert_as_a_masked_lm_then_fill_masks_and_embed_with_its_run() {
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    let run = work.path().join("run");
    let run_path = run.to_str().expect("a UTF-8 path");
    #[rustfmt::skip]
    let out = cinder(
        &[
            "train", "--family", "bert", "--objective", "mlm",
            "--corpus", corpus.to_str().expect("a UTF-8 path"),
            "--n-layer", "1", "--n-embd", "32", "--n-head", "4", "--context", "32",
            "--batch-size", "8", "--steps", "12", "--sample-every", "6", "--eval-every", "6",
            "--device", "cpu", "--out", run_path,
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("model bert: 1 layers, 4 heads, width 32") && err.contains("masked LM"),
        "{err}"
    );
    // The samples fill in masked held-out lines: the masked line, then the filled one.
    assert!(err.contains('▢') && err.contains("→ "), "{err}");
    assert!(stdout.contains("cinder fill-mask --model"), "{stdout}");
    #[rustfmt::skip]
    let out = cinder(
        &["fill-mask", "--model", run_path, "--json", "--top-k", "3", "--device", "cpu",
          "line 4 of the [MASK]ittle corpus."],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let top = json[0][0].as_array().expect("one mask's predictions");
    assert_eq!(top.len(), 3);
    let scores: Vec<f64> = top
        .iter()
        .map(|p| p["score"].as_f64().expect("a score"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let out = cinder(
        &[
            "embed", "--model", run_path, "--device", "cpu", "line 1", "line 2",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cosine similarity"));
}

#[test]
fn train_a_t5_on_jsonl_pairs_then_answer_with_greedy_and_beam_decoding() {
    let work = tempfile::tempdir().expect("tempdir");
    let pairs = work.path().join("pairs.jsonl");
    let lines: String = (0..200)
        .map(|i| {
            let pair = serde_json::json!({
                "input": format!("count {} up", i % 13),
                "target": format!("{} then {}", i % 13, i % 13 + 1),
            });
            format!("{pair}\n")
        })
        .collect();
    std::fs::write(&pairs, lines).expect("write pairs");
    let run = work.path().join("run");
    let run_path = run.to_str().expect("a UTF-8 path");
    #[rustfmt::skip]
    let out = cinder(
        &[
            "train", "--family", "t5", "--corpus", pairs.to_str().expect("a UTF-8 path"),
            "--n-layer", "1", "--n-embd", "32", "--n-head", "4", "--context", "16",
            "--batch-size", "8", "--steps", "12", "--sample-every", "6", "--eval-every", "6",
            "--device", "cpu", "--out", run_path,
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("model t5: 1 + 1 layers, 4 heads of 8, width 32")
            && err.contains("pairs: 190 for training, 10 held out"),
        "{err}"
    );
    // The samples answer held-out inputs, the reference in brackets.
    assert!(
        err.contains("count ") && err.contains(" → ") && err.contains('['),
        "{err}"
    );
    assert!(stdout.contains("Answering held-out inputs"), "{stdout}");
    for decoding in [&["--temperature", "0"][..], &["--beams", "3"][..]] {
        let mut args = vec![
            "generate",
            "--model",
            run_path,
            "--prompt",
            "count 4 up",
            "--max-new-tokens",
            "6",
            "--device",
            "cpu",
        ];
        args.extend(decoding);
        let out = cinder(&args, work.path());
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("(t5, F32 weights)") && err.contains("count 4 up → "),
            "{err}"
        );
        assert!(
            err.contains("10 prompt tokens"),
            "the encoder read the prompt: {err}"
        );
    }

    // Seq2seq needs pairs: a plain text corpus is refused by name.
    let plain = little_corpus(work.path());
    let out = cinder(
        &[
            "train",
            "--family",
            "t5",
            "--corpus",
            plain.to_str().expect("a UTF-8 path"),
            "--device",
            "cpu",
            "--out",
            run_path,
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("poems.txt") && err.contains(".jsonl"), "{err}");
    let broken = work.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"input\": \"a\", \"target\": \"b\"}\n{\"input\": 3}\n",
    )
    .expect("write broken pairs");
    let out = cinder(
        &[
            "train",
            "--family",
            "t5",
            "--corpus",
            broken.to_str().expect("a UTF-8 path"),
            "--device",
            "cpu",
            "--out",
            run_path,
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broken.jsonl") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn train_a_poetry_vae_then_sample_and_interpolate_couplets() {
    let work = tempfile::tempdir().expect("tempdir");
    let poems = work.path().join("poems.txt");
    let chars: Vec<char> = "春風花月夜江水白雲山青草落日明秋聲入古城".chars().collect();
    let couplets: String = (0..200)
        .map(|i: usize| {
            let line = |s: usize| -> String {
                (0..5)
                    .map(|k| chars[s * 10 + (i * 3 + k * 7 + s) % 10])
                    .collect()
            };
            format!("{}，{}。\n", line(0), line(1))
        })
        .collect();
    std::fs::write(&poems, couplets).expect("write poems");
    let run = work.path().join("run");
    let run_path = run.to_str().expect("a UTF-8 path");
    #[rustfmt::skip]
    let out = cinder(
        &[
            "train", "--family", "poetry-vae", "--corpus", poems.to_str().expect("a UTF-8 path"),
            "--n-embd", "32", "--steps", "12", "--lr", "1e-2", "--sample-every", "6",
            "--eval-every", "6", "--device", "cpu", "--out", run_path,
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("model poetry-vae: 2 + 1 gated convolutions of width 32, latent 32"),
        "{err}"
    );
    assert!(
        err.contains("reconstruction") && err.contains("KL"),
        "{err}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("read metrics");
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().last().expect("a line")).expect("a metrics line");
    assert!(last["kl"].as_f64().expect("a KL") > 0.0, "{last}");
    assert!(last["eval_reconstruction"].as_f64().is_some(), "{last}");

    let out = cinder(
        &[
            "poem", "--model", run_path, "--count", "6", "--json", "--device", "cpu",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(lines.len(), 6);
    for line in &lines {
        let c: Vec<char> = line.chars().collect();
        assert_eq!((c.len(), c[5], c[11]), (12, '，', '。'), "{line}");
    }
    #[rustfmt::skip]
    let out = cinder(
        &["poem", "--model", run_path, "--interpolate", "--from", "春風花月夜，青草落日明。",
          "--to", "江水白雲山，秋聲入古城。", "--count", "4", "--device", "cpu"],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 4);
    // Bad input: a couplet of the wrong length, a model of another family.
    let out = cinder(
        &[
            "poem",
            "--model",
            run_path,
            "--interpolate",
            "--from",
            "春風",
            "--to",
            "江水",
            "--device",
            "cpu",
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--from") && err.contains("10 characters"),
        "{err}"
    );
    let gpt2 = fixture();
    let out = cinder(
        &[
            "poem",
            "--model",
            gpt2.to_str().expect("a UTF-8 path"),
            "--device",
            "cpu",
        ],
        work.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a poetry VAE"), "{err}");
}

/// Losses by step from a run folder's metrics (every line must parse: call after a clean end).
fn run_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("read metrics")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a metrics line");
            (
                v["step"].as_u64().expect("a step"),
                v["loss"].as_f64().expect("a loss"),
            )
        })
        .collect()
}

/// What a SIGKILL may leave in a run folder, checked after each kill: every checkpoint folder
/// (not a `.partial` one) holds a loadable model, `latest` names one of them, and every line
/// of `metrics.jsonl` but a torn last one is a whole JSON object.
fn check_killed_run(run: &Path, kill: usize) {
    let checkpoints = run.join("checkpoints");
    if let Ok(entries) = std::fs::read_dir(&checkpoints) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.contains('.') {
                continue;
            }
            let device = cinder_engine::burn::tensor::Device::flex();
            if let Err(e) = cinder_models::auto::load(&entry.path(), &device, None) {
                panic!("after kill {kill}: checkpoint {name} does not load: {e}");
            }
        }
    }
    if let Ok(latest) = std::fs::read_to_string(run.join("latest")) {
        assert!(
            run.join(latest.trim()).is_dir(),
            "after kill {kill}: latest names {latest}, which is missing"
        );
    }
    if let Ok(metrics) = std::fs::read_to_string(run.join("metrics.jsonl")) {
        let lines: Vec<&str> = metrics.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let whole = serde_json::from_str::<serde_json::Value>(line).is_ok();
            let torn_last = i + 1 == lines.len() && !metrics.ends_with('\n');
            assert!(
                whole || torn_last,
                "after kill {kill}: metrics line {} is broken: {line}",
                i + 1
            );
        }
    }
}

/// `cinder train` killed with SIGKILL 100 times at pseudo-random moments (while it trains,
/// writes a checkpoint every step, appends metrics, saves its tokenizer) and resumed each time:
/// every checkpoint left on disk loads, the metrics parse, and the finished run has the losses
/// of a run that was never interrupted, with no leftovers of interrupted writes.
#[test]
fn a_run_killed_100_times_resumes_to_the_losses_of_an_uninterrupted_one() {
    const KILLS: usize = 100;
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    #[rustfmt::skip]
    let settings = [
        "--corpus", corpus.to_str().expect("a UTF-8 path"),
        "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
        "--context", "8", "--batch-size", "2", "--steps", "1000", "--eval-every", "100",
        "--sample-every", "0", "--checkpoint-every", "1", "--keep-checkpoints", "2",
        "--device", "cpu", "--quiet",
    ];
    let start = |out: &Path| -> Vec<String> {
        let mut args: Vec<String> = ["train"]
            .iter()
            .chain(&settings)
            .map(|s| s.to_string())
            .collect();
        args.extend(["--out".into(), out.display().to_string()]);
        args
    };
    let reference = work.path().join("reference");
    let t0 = std::time::Instant::now();
    let args = start(&reference);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cinder(&args, work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let whole = t0.elapsed();
    let expected = run_losses(&reference);
    assert_eq!(expected.len(), 1000);

    let run = work.path().join("run");
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut kills = 0;
    let mut progress = Vec::new();
    while kills < KILLS {
        let args = if run.join("run.json").exists() {
            vec![
                "train".to_string(),
                "--resume".into(),
                run.display().to_string(),
                "--device".into(),
                "cpu".into(),
                "--quiet".into(),
            ]
        } else {
            start(&run)
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_cinder"))
            .args(&args)
            .current_dir(work.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start cinder");
        // A moment between the start and a hundredth of the whole run's time (at most ten steps
        // of progress), so the kills fall in start-up, steps and writes alike.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = whole.mul_f64((rng % 1000) as f64 / 100_000.0);
        std::thread::sleep(delay);
        match child.try_wait().expect("poll cinder") {
            Some(status) => {
                assert!(status.success(), "cinder train failed after {kills} kills");
                break;
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                kills += 1;
                check_killed_run(&run, kills);
                let lines = std::fs::read_to_string(run.join("metrics.jsonl"))
                    .map_or(0, |m| m.lines().count());
                progress.push(lines);
            }
        }
    }
    assert_eq!(
        kills, KILLS,
        "the run finished before it was killed {KILLS} times"
    );
    let moved = progress.windows(2).filter(|w| w[1] != w[0]).count();
    eprintln!(
        "{kills} kills; metrics lines after each: {progress:?}; {moved} kills came after new steps"
    );
    let resume = [
        "train",
        "--resume",
        run.to_str().expect("a UTF-8 path"),
        "--device",
        "cpu",
        "--quiet",
    ];
    let out = cinder(&resume, work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = run_losses(&run);
    assert_eq!(got.len(), expected.len(), "one metrics line per step");
    // The same operations on the same weights, moments and batches: each resumed step repeats
    // the uninterrupted one to the bit.
    for ((step, a), (s, b)) in expected.iter().zip(&got) {
        assert_eq!(step, s);
        assert!(
            a == b,
            "step {step}: uninterrupted {a} vs killed and resumed {b}"
        );
    }
    let leftovers: Vec<String> = walk(&run)
        .into_iter()
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            name.ends_with(".partial") || name.ends_with(".old") || name.starts_with(".tmp-")
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        leftovers.is_empty(),
        "leftovers of interrupted writes: {leftovers:?}"
    );
}

/// Every file and folder under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

/// Every command, given each kind of bad value, ends with one `error:` line naming the flag or
/// the file and the exit status 2 (a usage error, found by the argument parser) or 1 (found
/// while running), never a panic or a backtrace. All cases run; the failures are listed
/// together.
#[test]
fn every_bad_input_gets_a_one_line_error_naming_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let corpus = little_corpus(w);
    let corpus = corpus.to_str().expect("a UTF-8 path");
    std::fs::write(w.join("empty.txt"), "").expect("write");
    std::fs::write(w.join("one-line.txt"), "tiny\n").expect("write");
    std::fs::write(w.join("notes.txt"), "not a model\n").expect("write");
    std::fs::create_dir_all(w.join("empty-folder")).expect("mkdir");
    let gpt2 = fixture();
    let gpt2 = gpt2.to_str().expect("a UTF-8 path");
    let bert = fixture().with_file_name("bert-tiny");
    let bert = bert.to_str().expect("a UTF-8 path");
    let long_prompt = "the quick brown fox ".repeat(200);
    let tiny = [
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--context",
        "8",
        "--steps",
        "2",
        "--device",
        "cpu",
    ];
    // The tiny settings, with any of them that `extra` gives replaced.
    let train = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["train".to_string(), "--corpus".into(), corpus.into()];
        for pair in tiny.chunks(2) {
            if !extra.iter().any(|e| e.split('=').next() == Some(pair[0])) {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let with = |base: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let generate = ["generate", "--model", gpt2, "--device", "cpu"];
    #[rustfmt::skip]
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        // Values the argument parser refuses: exit status 2.
        (train(&["--steps", "many"]), 2, "--steps"),
        (train(&["--lr", "fast"]), 2, "--lr"),
        (train(&["--family", "gpt5"]), 2, "--family"),
        (train(&["--precision", "fp8"]), 2, "--precision"),
        (train(&["--on-nonfinite", "maybe"]), 2, "--on-nonfinite"),
        (train(&["--optimizer", "sgdx"]), 2, "--optimizer"),
        (train(&["--batch-size=-3"]), 2, "--batch-size"),
        (with(&generate, &["--max-new-tokens=-1"]), 2, "--max-new-tokens"),
        (with(&generate, &["--beams", "0"]), 2, "--beams"),
        (with(&generate, &["--temperature", "hot"]), 2, "--temperature"),
        (with(&["generate", "--model", gpt2, "--device", "tpu"], &[]), 2, "--device"),
        (with(&generate, &["--dtype", "q3"]), 2, "--dtype"),
        (with(&["fill-mask", "--model", bert, "a [MASK]", "--top-k", "0"], &[]), 2, "--top-k"),
        (with(&["poem", "--model", gpt2, "--count", "0"], &[]), 2, "--count"),
        (with(&["embed"], &[]), 2, "<TEXTS>"),
        (with(&["bench", "train", "--workload", "huge"], &[]), 2, "--workload"),
        (with(&["bench", "soak", "--every", "0"], &[]), 2, "--every"),
        // Values found wrong while running: exit status 1.
        (with(&["train", "--corpus", "/nonexistent/corpus.txt", "--device", "cpu"], &[]), 1, "/nonexistent/corpus.txt"),
        (with(&["train", "--corpus", "empty-folder", "--device", "cpu"], &[]), 1, "empty-folder"),
        (with(&["train", "--corpus", "empty.txt", "--device", "cpu"], &[]), 1, "empty.txt"),
        (with(&["train", "--corpus", "one-line.txt"], &tiny), 1, "one-line.txt"),
        (train(&["--steps", "0"]), 1, "--steps"),
        (train(&["--batch-size", "0"]), 1, "--batch-size"),
        (train(&["--context", "0"]), 1, "--context"),
        (train(&["--accumulate", "0"]), 1, "--accumulate"),
        (train(&["--lr=-1"]), 1, "--lr"),
        (train(&["--lr", "0"]), 1, "--lr"),
        (train(&["--n-layer", "0"]), 1, "--n-layer"),
        (train(&["--n-embd", "15"]), 1, "--n-embd"),
        (train(&["--dropout", "1.5"]), 1, "--dropout"),
        (train(&["--grad-clip=-1"]), 1, "--grad-clip"),
        (train(&["--out", "notes.txt/run"]), 1, "notes.txt"),
        (with(&["train", "--resume", "/nonexistent/run", "--device", "cpu"], &[]), 1, "/nonexistent/run"),
        (with(&["train", "--resume", "empty-folder", "--device", "cpu"], &[]), 1, "empty-folder"),
        (train(&["--init-from", "/nonexistent/model"]), 1, "/nonexistent/model"),
        (with(&["generate", "--model", "/nonexistent/model", "--device", "cpu"], &[]), 1, "/nonexistent/model"),
        (with(&["generate", "--model", "notes.txt", "--device", "cpu"], &[]), 1, "notes.txt"),
        (with(&["generate", "--model", "empty-folder", "--device", "cpu"], &[]), 1, "empty-folder"),
        (with(&["generate", "--model", bert, "--device", "cpu"], &[]), 1, "bert-tiny"),
        (with(&generate, &["--prompt", &long_prompt]), 1, "prompt"),
        (with(&generate, &["--top-p", "2"]), 1, "--top-p"),
        (with(&generate, &["--temperature=-1"]), 1, "--temperature"),
        (with(&generate, &["--dtype", "q4"]), 1, "--dtype"),
        (with(&["chat", "--model", bert, "--device", "cpu"], &[]), 1, "bert-tiny"),
        (with(&["embed", "--model", gpt2, "--device", "cpu", "some text"], &[]), 1, "gpt2-tiny"),
        (with(&["fill-mask", "--model", bert, "--device", "cpu", "no mask here"], &[]), 1, "[MASK]"),
        (with(&["fill-mask", "--model", gpt2, "--device", "cpu", "a [MASK]"], &[]), 1, "gpt2-tiny"),
        (with(&["poem", "--model", gpt2, "--device", "cpu"], &[]), 1, "gpt2-tiny"),
    ];
    let mut failures = Vec::new();
    for (args, code, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cinder(&args, w);
        let err = text(&out.stderr);
        let last = err.trim_end().lines().last().unwrap_or_default();
        // clap's usage errors are an "error: ..." line, the argument it is about (on the next
        // line when one is missing) and the usage.
        let error_line = if *code == 2 {
            err.split("\n\nUsage:").next().unwrap_or_default()
        } else {
            last
        };
        let problem = if out.status.code() != Some(*code) {
            Some(format!(
                "exit status {:?}, expected {code}",
                out.status.code()
            ))
        } else if err.contains("panicked") || err.contains("backtrace") {
            Some("a panic".to_string())
        } else if !error_line.starts_with("error:") {
            Some("no error line".to_string())
        } else if !error_line.contains(needle) {
            Some(format!("the error does not name {needle}"))
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "cinder {}: {problem}\n    {}",
                args.join(" "),
                err.trim().replace('\n', "\n    ")
            ));
        }
    }
    eprintln!(
        "{} bad inputs, {} handled as expected",
        cases.len(),
        cases.len() - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A checkpoint that cannot be written (files limited in size with `ulimit -f`, as on a full
/// disk) stops the run with a one-line error naming the file; the previous checkpoint stays
/// whole and `latest`, no half-written folder is left, and the run resumes once there is room.
#[test]
fn a_full_disk_stops_the_run_with_an_error_and_keeps_the_last_checkpoint() {
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    let run = work.path().join("run");
    let run_path = run.to_str().expect("a UTF-8 path");
    #[rustfmt::skip]
    let first = [
        "train", "--corpus", corpus.to_str().expect("a UTF-8 path"),
        "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16",
        "--batch-size", "2", "--steps", "8", "--stop-after", "4", "--checkpoint-every", "2",
        "--eval-every", "0", "--sample-every", "0", "--device", "cpu", "--quiet", "--out", run_path,
    ];
    let out = cinder(&first, work.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The weights (58 KB) no longer fit in a file; the metrics and settings (1 KB) still do.
    // SIGXFSZ is ignored, so a write past the limit fails with EFBIG instead of killing.
    let limited = Command::new("sh")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 20; exec \"$0\" train --resume \"$1\" --device cpu --quiet",
            env!("CARGO_BIN_EXE_cinder"),
            run_path,
        ])
        .current_dir(work.path())
        .output()
        .expect("running cinder under ulimit");
    let err = text(&limited.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert_eq!(limited.status.code(), Some(1), "{err}");
    assert!(
        last.starts_with("error: ") && last.contains("step-0000006") && last.contains("too large"),
        "{err}"
    );
    let latest = std::fs::read_to_string(run.join("latest")).expect("latest");
    assert_eq!(latest.trim(), "checkpoints/step-0000004");
    let device = cinder_engine::burn::tensor::Device::flex();
    cinder_models::auto::load(&run.join(latest.trim()), &device, None).expect("step 4 loads");
    let names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.contains('.')), "{names:?}");
    let out = cinder(
        &["train", "--resume", run_path, "--device", "cpu", "--quiet"],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(run_losses(&run).len(), 8);
}

/// An output folder that cannot be created (its parent is a file) is a one-line error naming
/// it, before any training.
#[test]
fn an_unwritable_output_folder_is_an_error_naming_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let corpus = little_corpus(work.path());
    #[rustfmt::skip]
    let args = [
        "train", "--corpus", corpus.to_str().expect("a UTF-8 path"), "--n-layer", "1",
        "--n-embd", "16", "--n-head", "2", "--context", "8", "--steps", "2", "--device", "cpu",
        "--out", "poems.txt/run",
    ];
    let out = cinder(&args, work.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("poems.txt/run"),
        "{err}"
    );
    assert!(!err.contains("step 1"), "no step trains: {err}");
}

/// The short soak: 300 training steps and 300 decoded tokens of the tiny GPT keep resident
/// memory within 10% from step 100 on. 300 steps are too few to resolve the 2% goal against the
/// allocator's levels (resident memory moves between values up to 14 MiB apart); that goal is
/// the 2,000-step `cinder bench soak`'s (see README). A leak of a tenth of the process per
/// 200 steps still fails here.
#[test]
fn a_short_soak_keeps_memory_flat() {
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    #[rustfmt::skip]
    let out = cinder(
        &[
            "bench", "soak", "--steps", "300", "--tokens", "300", "--every", "10", "--from",
            "100", "--goal-percent", "10", "--device", "cpu",
        ],
        cwd,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("train step").count(), 30, "{stderr}");
    assert_eq!(stderr.matches("decode token").count(), 30, "{stderr}");
    assert!(stdout.contains("train: resident memory"), "{stdout}");
    assert!(stdout.contains("decode: resident memory"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("soak flat"),
        "{stdout}\n{stderr}"
    );
}

/// `cinder bench train` builds each workload's model (the default run's LLaMA for `tang-llama`),
/// times the steps after the warmup and prints `<workload> <tokens/s>` as its last line; the
/// random tokens' loss starts near ln(vocabulary).
#[test]
fn bench_train_times_a_gpt2_and_the_default_runs_llama() {
    let cwd = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (workload, model, vocab) in [
        ("tiny", "gpt2 4 layers x 128 wide, 4 heads", 65f64),
        (
            "tang-llama",
            "llama 4 layers x 64 wide, 4 heads (4 for keys and values), SwiGLU 192 wide",
            8599.0,
        ),
    ] {
        #[rustfmt::skip]
        let out = cinder(
            &["bench", "train", "--workload", workload, "--steps", "2", "--warmup", "1", "--device", "cpu"],
            cwd,
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(model), "{workload}: {stderr}");
        assert_eq!(stderr.matches("(warmup)").count(), 1, "{stderr}");
        assert_eq!(stderr.matches("(timed)").count(), 2, "{stderr}");
        assert!(stderr.contains(" GFLOP/s ("), "{stderr}");
        let first_loss: f64 = stderr
            .split("loss ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("a step's loss");
        assert!(
            (first_loss - vocab.ln()).abs() < 0.5,
            "{workload}: first loss {first_loss} against ln {vocab}"
        );
        let last = stdout.trim_end();
        let tps: f64 = last
            .strip_prefix(&format!("{workload} "))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("last line {last:?}"));
        assert!(tps > 0.0, "{last}");
    }
}
