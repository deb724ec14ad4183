//! GPT-2 against Hugging Face transformers: logits and greedy tokens on a random tiny checkpoint
//! made by `tests/scripts/make_gpt2_fixture.py`.

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::lm::LanguageModel;
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::lm_loss;
use cinder_models::gpt2::Gpt2;
use serde_json::Value;

struct Case {
    text: String,
    ids: Vec<u32>,
    /// Row-major `[T, V]`.
    logits: Vec<f32>,
    greedy: Vec<u32>,
    greedy_text: String,
}

fn reference() -> (Vec<Case>, f64) {
    let json = cinder_tests::read_json(&cinder_tests::fixtures().join("gpt2-tiny/reference.json"));
    let ids = cinder_tests::json_ids;
    let text = |v: &Value| v.as_str().expect("a string in the fixture").to_string();
    let cases = json["prompts"]
        .as_array()
        .expect("no prompts")
        .iter()
        .map(|p| Case {
            text: text(&p["text"]),
            ids: ids(&p["ids"]),
            logits: cinder_tests::json_f32s(&p["logits"]),
            greedy: ids(&p["greedy_new_ids"]),
            greedy_text: text(&p["greedy_text"]),
        })
        .collect();
    (cases, json["loss"].as_f64().expect("no loss"))
}

fn load(device: &Device) -> (Gpt2, Tokenizer) {
    let dir = cinder_tests::fixtures().join("gpt2-tiny");
    let model = Gpt2::from_pretrained(&dir, device).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    (model, tok)
}

/// Terms summed by transformers' and by our forward pass over `t` positions.
fn forward_roundings(t: usize) -> usize {
    cinder_tests::gpt2_tiny_roundings(t, cinder_tests::CPU_ULPS) + cinder_tests::FIXTURE_DIGITS
}

fn logits_of(model: &Gpt2, ids: &[u32], device: &Device) -> TensorData {
    let data = TensorData::new(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    model
        .forward(Tensor::<2, Int>::from_data(data, device))
        .into_data()
}

#[test]
fn logits_match_transformers() {
    let device = Device::flex();
    let (model, tok) = load(&device);
    let (cases, _) = reference();
    assert!(!cases.is_empty());
    for case in &cases {
        assert_eq!(
            tok.encode(&case.text).unwrap(),
            case.ids,
            "tokenizer ids for {:?}",
            case.text
        );
        let ours = logits_of(&model, &case.ids, &device);
        let theirs = TensorData::new(case.logits.clone(), ours.shape().clone());
        let what = format!("logits of {:?}", case.text);
        let roundings = forward_roundings(case.ids.len());
        cinder_tests::assert_close(&ours, &theirs, roundings, &what);
    }
}

#[test]
fn loss_matches_transformers() {
    let device = Device::flex();
    let (model, _) = load(&device);
    let (cases, loss) = reference();
    let ids = &cases[0].ids;
    let n = ids.len() - 1;
    let to = |v: &[u32]| {
        Tensor::<2, Int>::from_data(
            TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        )
    };
    let logits = model.forward(to(&ids[..n]));
    let vocab = logits.dims()[2];
    let ours = lm_loss(logits, to(&ids[1..])).into_scalar::<f32>() as f64;
    // The logits' bound, plus the log-sum-exp over the vocabulary and the mean over positions.
    let scale = cinder_tests::max_abs(&cases[0].logits);
    let one_side = forward_roundings(n) as f64 * scale + (vocab + n) as f64 * loss.abs();
    let bound = 2.0 * cinder_tests::EPS * one_side;
    assert!(
        (ours - loss).abs() <= bound,
        "loss {ours} vs transformers {loss} (bound {bound:e})"
    );
}

#[test]
fn greedy_tokens_match_transformers() {
    let device = Device::flex();
    let (model, tok) = load(&device);
    let (cases, _) = reference();
    for case in &cases {
        let config = GenerateConfig::new(case.greedy.len(), SamplingConfig::greedy(), None);
        let (new, _) = generate(&model, &case.ids, &config, &device, |_| true).unwrap();
        // Each choice must win by more than rounding, or another CPU could pick the runner-up.
        let mut all = case.ids.clone();
        all.extend(&new[..new.len() - 1]);
        let logits = logits_of(&model, &all, &device);
        let values: Vec<f32> = logits.iter::<f32>().collect();
        let bound = cinder_tests::difference_bound(
            forward_roundings(all.len()),
            cinder_tests::max_abs(&values),
        );
        let clear = cinder_tests::clear_greedy_steps(&logits, case.ids.len() - 1, bound);
        assert_eq!(
            clear,
            new.len(),
            "{:?}: step {clear} is a near tie",
            case.text
        );
        assert_eq!(new, case.greedy, "greedy continuation of {:?}", case.text);
        assert_eq!(tok.decode(&new).unwrap(), case.greedy_text);
    }
}
