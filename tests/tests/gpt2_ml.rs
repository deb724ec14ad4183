//! GPT2_ML against a PyTorch transcription of bert4keras' `GPT2_ML` (no transformers class has
//! its layout): logits and greedy tokens on a random tiny checkpoint with a character vocabulary
//! made by `tests/scripts/make_gpt2_ml_fixture.py`, loaded the way `cinder generate` loads it.

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::lm::LanguageModel;
use cinder_engine::sampling::SamplingConfig;
use cinder_models::auto::{AnyModel, load};
use cinder_models::gpt2_ml::Gpt2Ml;

fn forward_roundings(t: usize) -> usize {
    cinder_tests::gpt2_ml_tiny_roundings(t, cinder_tests::CPU_ULPS) + cinder_tests::FIXTURE_DIGITS
}

fn logits_of(model: &Gpt2Ml, ids: &[u32], device: &Device) -> TensorData {
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), device);
    model.forward(tokens).into_data()
}

#[test]
fn logits_and_greedy_tokens_match_the_bert4keras_reference() {
    let device = Device::flex();
    let dir = cinder_tests::fixtures().join("gpt2-ml-tiny");
    let loaded = load(&dir, &device, None).unwrap();
    assert_eq!(loaded.family(), "gpt2-ml");
    let AnyModel::Gpt2Ml(model) = &loaded.model else {
        panic!("loaded {:?}, not a GPT2_ML", loaded.model)
    };
    let json = cinder_tests::read_json(&dir.join("reference.json"));
    let prompts = json["prompts"].as_array().expect("no prompts");
    assert!(!prompts.is_empty());
    for p in prompts {
        let text = p["text"].as_str().expect("a prompt text");
        let ids = cinder_tests::json_ids(&p["ids"]);
        assert_eq!(
            loaded.tokenizer.encode(text).unwrap(),
            ids,
            "ids of {text:?}"
        );
        let ours = logits_of(model, &ids, &device);
        let theirs = TensorData::new(cinder_tests::json_f32s(&p["logits"]), ours.shape().clone());
        let what = format!("logits of {text:?}");
        cinder_tests::assert_close(&ours, &theirs, forward_roundings(ids.len()), &what);

        let greedy = cinder_tests::json_ids(&p["greedy_new_ids"]);
        let config = GenerateConfig::new(greedy.len(), SamplingConfig::greedy(), None);
        let (new, _) = generate(model, &ids, &config, &device, |_| true).unwrap();
        // Each choice must win by more than rounding, or another CPU could pick the runner-up.
        let mut all = ids.clone();
        all.extend(&new[..new.len() - 1]);
        let logits = logits_of(model, &all, &device);
        let values: Vec<f32> = logits.iter::<f32>().collect();
        let bound = cinder_tests::difference_bound(
            forward_roundings(all.len()),
            cinder_tests::max_abs(&values),
        );
        let clear = cinder_tests::clear_greedy_steps(&logits, ids.len() - 1, bound);
        assert_eq!(clear, new.len(), "{text:?}: step {clear} is a near tie");
        assert_eq!(new, greedy, "greedy continuation of {text:?}");
        assert_eq!(
            loaded.tokenizer.decode(&new).unwrap(),
            p["greedy_text"].as_str().expect("a greedy text")
        );
    }
}
