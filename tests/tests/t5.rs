//! T5 against transformers' `T5ForConditionalGeneration` on two random tiny checkpoints made by
//! `tests/scripts/make_t5_fixture.py`: the original layout (ReLU, tied and scaled head) and
//! v1.1's (gated GELU, untied head, a deeper encoder). Position buckets, teacher-forced logits of
//! a padded batch, greedy and beam decoding, loaded the way `cinder generate` loads them.

use cinder_engine::burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cinder_engine::generate::{BeamConfig, GenerateConfig, beam_search, generate};
use cinder_engine::lm::LanguageModel;
use cinder_engine::sampling::SamplingConfig;
use cinder_models::auto::{AnyModel, LoadedModel, load};
use cinder_models::t5::{T5, relative_position_bucket};

const FIXTURES: [&str; 2] = ["t5-tiny", "t5-v1_1-tiny"];

fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let width = rows[0].len();
    let data: Vec<i64> = rows.iter().flatten().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

fn rows(value: &serde_json::Value) -> Vec<Vec<u32>> {
    value
        .as_array()
        .expect("rows")
        .iter()
        .map(cinder_tests::json_ids)
        .collect()
}

fn open(name: &str, device: &Device) -> (LoadedModel, serde_json::Value) {
    let dir = cinder_tests::fixtures().join(name);
    let loaded = load(&dir, device, None).unwrap();
    assert_eq!(loaded.family(), "t5");
    (loaded, cinder_tests::read_json(&dir.join("reference.json")))
}

fn t5(loaded: &LoadedModel) -> &T5 {
    match &loaded.model {
        AnyModel::T5(m) => m,
        other => panic!("loaded {other:?}, not a T5"),
    }
}

#[test]
fn position_buckets_equal_transformers() {
    let json = cinder_tests::read_json(&cinder_tests::fixtures().join("t5-tiny/reference.json"));
    for (key, buckets, distance) in [("config", 8, 20), ("default", 32, 128)] {
        for (direction, bidirectional) in [("bidirectional", true), ("causal", false)] {
            let theirs: Vec<i64> = json["buckets"][key][direction]
                .as_array()
                .expect("a bucket table")
                .iter()
                .map(|v| v.as_i64().expect("a bucket"))
                .collect();
            let ours: Vec<i64> = (-300..=300)
                .map(|r| relative_position_bucket(r, bidirectional, buckets, distance))
                .collect();
            assert_eq!(ours, theirs, "{key} {direction}");
        }
    }
}

#[test]
fn teacher_forced_logits_of_a_padded_batch_equal_transformers() {
    let device = Device::flex();
    for name in FIXTURES {
        let (loaded, json) = open(name, &device);
        let model = t5(&loaded);
        let batch = &json["batch"];
        let input = rows(&batch["input_ids"]);
        let mask: Vec<bool> = rows(&batch["attention_mask"])
            .into_iter()
            .flatten()
            .map(|m| m == 1)
            .collect();
        let decoder = rows(&batch["decoder_input_ids"]);
        for (text, ids) in batch["texts"].as_array().unwrap().iter().zip(&input) {
            let mut ours = loaded.tokenizer.encode(text.as_str().unwrap()).unwrap();
            ours.push(model.config().eos_token_id as u32);
            assert_eq!(ours, ids[..ours.len()], "ids of {text}");
        }
        let shape = [input.len(), input[0].len()];
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, shape), &device);
        let logits = model
            .forward_pairs(
                ids_tensor(&input, &device),
                mask,
                ids_tensor(&decoder, &device),
            )
            .into_data();
        let theirs = TensorData::new(
            cinder_tests::json_f32s(&batch["logits"]),
            logits.shape().clone(),
        );
        let t = shape[1].max(decoder[0].len());
        let roundings = cinder_tests::t5_tiny_roundings(t, cinder_tests::CPU_ULPS)
            + cinder_tests::FIXTURE_DIGITS;
        cinder_tests::assert_close(&logits, &theirs, roundings, &format!("{name} logits"));
        let worst = logits
            .iter::<f32>()
            .zip(theirs.iter::<f32>())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: logits differ by {worst}");
    }
}

#[test]
fn greedy_and_beam_decoding_equal_transformers() {
    let device = Device::flex();
    for name in FIXTURES {
        let (loaded, json) = open(name, &device);
        let model = t5(&loaded);
        let eos = model.config().eos_token_id as u32;
        for (greedy, beam) in json["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .zip(json["beam"].as_array().unwrap())
        {
            let prompt = greedy["prompt"].as_str().unwrap();
            let ids = cinder_tests::json_ids(&greedy["ids"]);
            let mut ours = loaded.tokenizer.encode(prompt).unwrap();
            ours.push(eos);
            assert_eq!(ours, ids, "ids of {prompt:?}");
            // transformers returns the start token, the new tokens and the end-of-sequence
            // token if one came; Cinder returns the new tokens.
            let expected = |out: &serde_json::Value| {
                let mut out = cinder_tests::json_ids(out);
                assert_eq!(out.remove(0), model.config().decoder_start_token_id as u32);
                if out.last() == Some(&eos) {
                    out.pop();
                }
                out
            };
            let (decoding, start) = model.condition(&ids, &device).unwrap();
            let config = GenerateConfig::new(12, SamplingConfig::greedy(), Some(eos));
            let (new, _) = generate(&decoding, &start, &config, &device, |_| true).unwrap();
            assert_eq!(
                new,
                expected(&greedy["output"]),
                "{name}: greedy of {prompt:?}"
            );

            let config = BeamConfig {
                width: 3,
                max_new_tokens: 12,
                length_penalty: 1.0,
                early_stopping: false,
                stop_tokens: vec![eos],
            };
            let best = beam_search(&decoding, &start, &config, &device).unwrap();
            assert_eq!(
                best[0].tokens,
                expected(&beam["output"]),
                "{name}: beam search of {prompt:?}"
            );
        }
    }
}

#[test]
fn cached_decoding_equals_the_full_pass() {
    let device = Device::flex();
    let (loaded, _) = open("t5-v1_1-tiny", &device);
    let model = t5(&loaded);
    let prompt = loaded.tokenizer.encode("hello world").unwrap();
    let (decoding, start) = model.condition(&prompt, &device).unwrap();
    let config = GenerateConfig::new(8, SamplingConfig::greedy(), None);
    let (new, _) = generate(&decoding, &start, &config, &device, |_| true).unwrap();
    let mut decoder_input = start.clone();
    decoder_input.extend(&new[..new.len() - 1]);
    let mut input = prompt.clone();
    input.push(model.config().eos_token_id as u32);
    let logits = model.forward_with(
        ids_tensor(&[input], &device),
        None,
        ids_tensor(&[decoder_input], &device),
    );
    let best: Vec<u32> = logits
        .argmax(2)
        .into_data()
        .iter::<i64>()
        .map(|i| i as u32)
        .collect();
    assert_eq!(best, new, "each cached step picks what the full pass picks");
}
