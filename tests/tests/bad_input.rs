//! Bad input gets a clear error naming the file and the problem, never a panic.

use std::path::Path;

use cinder_engine::burn::tensor::Device;
use cinder_engine::device::DeviceChoice;
use cinder_engine::weights::{read_safetensors, write_safetensors};
use cinder_models::gpt2::Gpt2;

fn copy_fixture(to: &Path) {
    let from = cinder_tests::fixtures().join("gpt2-tiny");
    std::fs::create_dir_all(to).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(name), to.join(name)).expect(name);
    }
}

fn load_error(dir: &Path) -> String {
    match Gpt2::from_pretrained(dir, &Device::flex()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn tensor_of_the_wrong_shape_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let weights = dir.path().join("model.safetensors");
    let mut tensors = read_safetensors(&weights).unwrap();
    let key = "transformer.h.0.attn.c_attn.weight".to_string();
    let data = tensors.remove(&key).expect("the fixture has the tensor");
    let values = data.try_to_vec::<f32>().unwrap();
    let n = values.len();
    tensors.insert(
        key.clone(),
        cinder_engine::burn::tensor::TensorData::new(values, [1, n]),
    );
    write_safetensors(&weights, &tensors).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains(&key) && err.contains("shape") && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let weights = dir.path().join("model.safetensors");
    let mut tensors = read_safetensors(&weights).unwrap();
    tensors.remove("transformer.ln_f.weight");
    write_safetensors(&weights, &tensors).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("missing tensor") && err.contains("ln_f.weight"),
        "{err}"
    );
}

#[test]
fn config_without_a_needed_key_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let removed = config.as_object_mut().and_then(|m| m.remove("n_embd"));
    assert!(removed.is_some(), "the fixture's config has n_embd");
    std::fs::write(&path, config.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json") && err.contains("n_embd"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    let err = cinder_engine::tokenizer::Tokenizer::from_file(&path)
        .expect_err("a missing tokenizer.json loaded")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("No such file"),
        "{err}"
    );
    std::fs::write(&path, "{\"version\": 1}").unwrap();
    let err = cinder_engine::tokenizer::Tokenizer::from_file(&path)
        .expect_err("an invalid tokenizer.json loaded")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not a valid tokenizer.json"),
        "{err}"
    );
}

#[test]
fn unknown_device_is_reported() {
    // A run.json or saved form naming a device that does not exist.
    let err = serde_json::from_str::<DeviceChoice>("\"quantum\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quantum")
            && ["auto", "gpu", "wgpu", "cpu"]
                .iter()
                .all(|c| err.contains(c)),
        "{err}"
    );
}

/// Weights full of NaN (every family, every decoding path) make generation fail with a message
/// instead of producing nothing and succeeding.
#[test]
fn nan_weights_stop_generation_with_an_error() {
    use cinder_engine::generate::{BeamConfig, GenerateConfig, beam_search, generate};
    use cinder_engine::sampling::SamplingConfig;
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let weights = dir.path().join("model.safetensors");
    let mut tensors = read_safetensors(&weights).unwrap();
    let key = "transformer.h.0.mlp.c_fc.weight".to_string();
    let data = tensors.remove(&key).expect("the fixture has the tensor");
    let shape = data.shape().to_vec();
    let nan = vec![f32::NAN; data.num_elements()];
    tensors.insert(
        key,
        cinder_engine::burn::tensor::TensorData::new(nan, shape),
    );
    write_safetensors(&weights, &tensors).unwrap();
    let device = Device::flex();
    let model = Gpt2::from_pretrained(dir.path(), &device).unwrap();
    for sampling in [SamplingConfig::greedy(), SamplingConfig::default()] {
        let config = GenerateConfig::new(8, sampling, None);
        let err = generate(&model, &[1, 2, 3], &config, &device, |_| true)
            .expect_err("tokens from NaN weights")
            .to_string();
        assert!(
            err.contains("not finite") && err.contains("new token 1"),
            "{err}"
        );
    }
    let beams = BeamConfig {
        width: 2,
        max_new_tokens: 4,
        length_penalty: 1.0,
        early_stopping: false,
        stop_tokens: vec![],
    };
    let err = beam_search(&model, &[1, 2, 3], &beams, &device)
        .expect_err("beams from NaN weights")
        .to_string();
    assert!(err.contains("not finite"), "{err}");
}

/// Every number in every family's `config.json`, replaced by a value a hostile or broken file
/// could hold (zero, negative, fractional, absurdly large), is either refused with an error
/// naming the file or loads a model that generates: never a panic or an allocation the weights
/// do not justify (a 2^40 width or vocabulary used to abort the process).
#[test]
fn hostile_config_numbers_are_refused_or_harmless() {
    use cinder_engine::generate::{GenerateConfig, generate};
    use cinder_engine::sampling::SamplingConfig;
    let device = Device::flex();
    let values = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(0.5),
        serde_json::json!(1u64 << 40),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e300),
    ];
    let mut cases = 0;
    for family in [
        "gpt2-tiny",
        "gpt2-ml-tiny",
        "llama-tiny",
        "t5-tiny",
        "t5-v1_1-tiny",
        "bert-tiny",
    ] {
        let from = cinder_tests::fixtures().join(family);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(from.join("config.json")).unwrap())
                .unwrap();
        let numeric: Vec<String> = config
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_number())
            .map(|(k, _)| k.clone())
            .collect();
        assert!(numeric.len() >= 5, "{family}: {numeric:?}");
        for key in &numeric {
            for value in &values {
                let dir = tempfile::tempdir().unwrap();
                for entry in std::fs::read_dir(&from).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
                }
                let mut hostile = config.clone();
                hostile[key.as_str()] = value.clone();
                std::fs::write(dir.path().join("config.json"), hostile.to_string()).unwrap();
                let case = format!("{family}: {key} = {value}");
                cases += 1;
                if family == "bert-tiny" {
                    match cinder_models::bert::Bert::from_pretrained(dir.path(), &device) {
                        Ok(_) => {}
                        Err(e) => {
                            let message = e.to_string();
                            assert!(
                                message.contains("config.json") || message.contains("safetensors"),
                                "{case}: {message}"
                            );
                        }
                    }
                    continue;
                }
                match cinder_models::auto::load(dir.path(), &device, None) {
                    Ok(loaded) => {
                        let config = GenerateConfig::new(2, SamplingConfig::greedy(), None);
                        // A harmless value may still make decoding refuse (a context of one
                        // position), but only with an error.
                        let decode = || -> cinder_engine::Result<()> {
                            cinder_models::with_decoder!(
                                &loaded.model,
                                &[1, 2],
                                &device,
                                |m, p| generate(m, p, &config, &device, |_| true)
                            )?;
                            Ok(())
                        };
                        let _ = decode();
                    }
                    Err(e) => {
                        let message = e.to_string();
                        assert!(
                            message.contains("config.json") || message.contains("safetensors"),
                            "{case}: {message}"
                        );
                    }
                }
            }
        }
    }
    assert!(cases > 100, "{cases} cases");
}
