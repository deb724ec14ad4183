//! GPT-2 against Hugging Face transformers: logits and greedy tokens on a random tiny checkpoint
//! made by `tests/scripts/make_gpt2_fixture.py`.

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::lm::CausalLm;
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::train::lm_loss;
use cinder_models::gpt2::Gpt2;
use serde_json::Value;

struct Case {
    text: String,
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
    greedy_text: String,
}

fn reference() -> (Vec<Case>, f64) {
    let path = cinder_tests::fixtures().join("gpt2-tiny/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    let cases = json["prompts"]
        .as_array()
        .unwrap_or_else(|| panic!("no prompts"))
        .iter()
        .map(|p| Case {
            text: p["text"].as_str().unwrap_or_default().to_string(),
            ids: ids(&p["ids"]),
            logits: p["logits"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            r.as_array()
                                .map(|r| {
                                    r.iter()
                                        .filter_map(|x| x.as_f64())
                                        .map(|x| x as f32)
                                        .collect()
                                })
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default(),
            greedy: ids(&p["greedy_new_ids"]),
            greedy_text: p["greedy_text"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    (cases, json["loss"].as_f64().unwrap_or(f64::NAN))
}

fn load(device: &Device) -> (Gpt2, Tokenizer) {
    let dir = cinder_tests::fixtures().join("gpt2-tiny");
    let model = Gpt2::from_pretrained(&dir, device).unwrap_or_else(|e| panic!("{e}"));
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    (model, tok)
}

fn logits_of(model: &Gpt2, ids: &[u32], device: &Device) -> Vec<f32> {
    let data = TensorData::new(
        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        [1, ids.len()],
    );
    let out = model.forward(Tensor::<2, Int>::from_data(data, device));
    out.into_data().try_to_vec::<f32>().unwrap_or_default()
}

#[test]
fn logits_match_transformers() {
    let device = Device::flex();
    let (model, tok) = load(&device);
    let (cases, _) = reference();
    assert!(!cases.is_empty());
    for case in &cases {
        assert_eq!(
            tok.encode(&case.text).unwrap_or_default(),
            case.ids,
            "tokenizer ids for {:?}",
            case.text
        );
        let ours = logits_of(&model, &case.ids, &device);
        let theirs: Vec<f32> = case.logits.iter().flatten().copied().collect();
        assert_eq!(ours.len(), theirs.len());
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff <= 1e-4,
            "{:?}: max |logit diff| = {max_diff}",
            case.text
        );
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
    let ours = lm_loss(model.forward(to(&ids[..n])), to(&ids[1..])).into_scalar::<f32>() as f64;
    assert!(
        (ours - loss).abs() < 1e-4,
        "loss {ours} vs transformers {loss}"
    );
}

#[test]
fn greedy_tokens_match_transformers() {
    let device = Device::flex();
    let (model, tok) = load(&device);
    let (cases, _) = reference();
    for case in &cases {
        let config = GenerateConfig::new(case.greedy.len(), SamplingConfig::greedy(), None);
        let (new, _) = generate(&model, &case.ids, &config, &device, |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(new, case.greedy, "greedy continuation of {:?}", case.text);
        assert_eq!(tok.decode(&new).unwrap_or_default(), case.greedy_text);
    }
}
