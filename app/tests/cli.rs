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
