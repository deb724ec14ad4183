//! LLaMA against Hugging Face transformers (a random tiny checkpoint with grouped-query attention
//! made by `tests/scripts/make_llama_fixture.py`), the same weights through a GGUF file with
//! llama.cpp's rotary row permutation, bad GGUF files, and beam search against brute force.

use std::path::{Path, PathBuf};

use cinder_engine::burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_engine::generate::{BeamConfig, GenerateConfig, beam_search, generate};
use cinder_engine::gguf::GgufFile;
use cinder_engine::lm::LanguageModel;
use cinder_engine::quant::WeightDtype;
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::weights::read_safetensors;
use cinder_models::auto::{AnyModel, load, load_bytes};
use cinder_models::llama::{Llama, LlamaConfig};
use cinder_tests::gguf::{Meta, RawTensor, write};
use serde_json::Value;

fn fixture() -> PathBuf {
    cinder_tests::fixtures().join("llama-tiny")
}

struct Case {
    ids: Vec<u32>,
    logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn reference() -> Vec<Case> {
    let path = fixture().join("reference.json");
    let json = cinder_tests::read_json(&path);
    let ids = cinder_tests::json_ids;
    json["prompts"]
        .as_array()
        .unwrap_or_else(|| panic!("no prompts in {}", path.display()))
        .iter()
        .map(|p| Case {
            ids: ids(&p["ids"]),
            logits: cinder_tests::json_f32s(&p["logits"]),
            greedy: ids(&p["greedy_new_ids"]),
        })
        .collect()
}

fn logits_of(model: &Llama, ids: &[u32], device: &Device) -> TensorData {
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), device);
    model.forward(tokens).into_data()
}

/// Terms summed by transformers' and by our forward pass over `t` positions.
fn forward_roundings(t: usize) -> usize {
    cinder_tests::llama_tiny_roundings(t, cinder_tests::CPU_ULPS) + cinder_tests::FIXTURE_DIGITS
}

fn check_against_reference(model: &Llama, device: &Device, what: &str) {
    for case in reference() {
        let ours = logits_of(model, &case.ids, device);
        let theirs = TensorData::new(case.logits.clone(), ours.shape().clone());
        let label = format!("{what}: logits of {:?}", case.ids);
        cinder_tests::assert_close(&ours, &theirs, forward_roundings(case.ids.len()), &label);
        let config = GenerateConfig::new(case.greedy.len(), SamplingConfig::greedy(), None);
        let (new, _) = generate(model, &case.ids, &config, device, |_| true).unwrap();
        // Each choice must win by more than rounding, or another CPU could pick the runner-up.
        let mut all = case.ids.clone();
        all.extend(&new[..new.len() - 1]);
        let logits = logits_of(model, &all, device);
        let values: Vec<f32> = logits.iter::<f32>().collect();
        let bound = cinder_tests::difference_bound(
            forward_roundings(all.len()),
            cinder_tests::max_abs(&values),
        );
        let clear = cinder_tests::clear_greedy_steps(&logits, case.ids.len() - 1, bound);
        assert_eq!(clear, new.len(), "{what}: step {clear} is a near tie");
        assert_eq!(new, case.greedy, "{what}: greedy continuation");
    }
}

fn llama(any: AnyModel) -> Llama {
    match any {
        AnyModel::Llama(m) => m,
        other => panic!("loaded {other:?}, not a LLaMA"),
    }
}

#[test]
fn hugging_face_folder_matches_transformers() {
    let device = Device::flex();
    let loaded = load(&fixture(), &device, Some(WeightDtype::F32)).unwrap();
    assert_eq!(loaded.family(), "llama");
    let case = &reference()[0];
    let text = "the quick brown fox";
    assert_eq!(loaded.tokenizer.encode(text).unwrap(), case.ids);
    check_against_reference(&llama(loaded.model), &device, "safetensors");
}

/// What a web page hands over: files by name, from a dropped folder or a fetched GGUF.
#[test]
fn files_given_as_bytes_load_like_the_folder_and_the_gguf() {
    let device = Device::flex();
    let named = |names: &[&str]| -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .map(|n| {
                (
                    format!("llama-tiny/{n}"),
                    std::fs::read(fixture().join(n)).unwrap(),
                )
            })
            .collect()
    };
    let folder = named(&["config.json", "tokenizer.json", "model.safetensors"]);
    let loaded = load_bytes(
        Path::new("dropped"),
        folder,
        &device,
        Some(WeightDtype::F32),
    )
    .unwrap();
    assert_eq!(loaded.family(), "llama");
    check_against_reference(&llama(loaded.model), &device, "safetensors bytes");

    let gguf = vec![("tiny.gguf".to_string(), fixture_as_gguf())];
    let loaded = load_bytes(Path::new("dropped"), gguf, &device, Some(WeightDtype::F32)).unwrap();
    check_against_reference(&llama(loaded.model), &device, "gguf bytes");

    // A folder without its tokenizer, a GGUF among other files, a broken GGUF: each is named.
    let err = |files, needle: &str| {
        let e = load_bytes(Path::new("dropped"), files, &device, None)
            .expect_err("bad files loaded")
            .to_string();
        assert!(e.contains(needle), "{e}");
    };
    err(
        named(&["config.json", "model.safetensors"]),
        "tokenizer.json is missing",
    );
    let mut mixed = named(&["config.json"]);
    mixed.push(("tiny.gguf".into(), fixture_as_gguf()));
    err(mixed, "one .gguf file alone");
    err(
        vec![("broken.gguf".into(), b"GGUF\x03\0\0\0".to_vec())],
        "broken.gguf",
    );
}

/// llama.cpp's conversion: each head's rows go from halves to interleaved pairs.
fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for s in 0..2 {
                let hf = (h * d + s * d / 2 + i) * cols;
                let file = (h * d + 2 * i + s) * cols;
                out[file..file + cols].copy_from_slice(&values[hf..hf + cols]);
            }
        }
    }
    out
}

/// The fixture's weights and tokenizer as a llama.cpp-style GGUF (F32 tensors).
fn fixture_as_gguf() -> Vec<u8> {
    let dir = fixture();
    let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors = read_safetensors(&dir.join("model.safetensors")).unwrap();
    let mut raw = Vec::new();
    let mut put = |hf: &str, gguf: String, heads: Option<usize>| {
        let data = &tensors[hf];
        let shape = data.shape().to_vec();
        let mut values = data.try_to_vec::<f32>().unwrap();
        if let Some(h) = heads {
            values = permute_rows(&values, shape[0], shape[1], h);
        }
        raw.push(RawTensor::f32(&gguf, &shape, &values));
    };
    put(
        "model.embed_tokens.weight",
        "token_embd.weight".into(),
        None,
    );
    put("model.norm.weight", "output_norm.weight".into(), None);
    put("lm_head.weight", "output.weight".into(), None);
    for i in 0..config.num_hidden_layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        let g = |s: &str| format!("blk.{i}.{s}");
        put(&l("self_attn.q_proj.weight"), g("attn_q.weight"), Some(4));
        put(&l("self_attn.k_proj.weight"), g("attn_k.weight"), Some(2));
        put(&l("self_attn.v_proj.weight"), g("attn_v.weight"), None);
        put(&l("self_attn.o_proj.weight"), g("attn_output.weight"), None);
        put(&l("mlp.gate_proj.weight"), g("ffn_gate.weight"), None);
        put(&l("mlp.up_proj.weight"), g("ffn_up.weight"), None);
        put(&l("mlp.down_proj.weight"), g("ffn_down.weight"), None);
        put(&l("input_layernorm.weight"), g("attn_norm.weight"), None);
        put(
            &l("post_attention_layernorm.weight"),
            g("ffn_norm.weight"),
            None,
        );
    }
    let tok: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().expect("no vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().expect("an id") as usize] = t.clone();
    }
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().expect("a merge"),
                pair[1].as_str().expect("a merge")
            ),
            other => panic!("a merge that is neither a string nor a pair: {other}"),
        })
        .collect();
    let types: Vec<i32> = tokens
        .iter()
        .map(|t| if t == "<|endoftext|>" { 3 } else { 1 })
        .collect();
    let meta = [
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(2)),
        ("llama.context_length", Meta::U32(64)),
        ("llama.embedding_length", Meta::U32(32)),
        ("llama.feed_forward_length", Meta::U32(64)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        ("tokenizer.ggml.merges", Meta::Strs(merges)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(0)),
    ];
    write(&meta, &raw)
}

#[test]
fn gguf_with_permuted_rotary_rows_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, fixture_as_gguf()).unwrap();
    let device = Device::flex();
    let loaded = load(&path, &device, Some(WeightDtype::F32)).unwrap();
    assert_eq!(loaded.stop_tokens, vec![0]);
    // The tokenizer rebuilt from GGUF metadata gives the ids of the original tokenizer.json.
    let case = &reference()[1];
    let text = "rivers run to the sea, and the sea returns the rain";
    assert_eq!(loaded.tokenizer.encode(text).unwrap(), case.ids);
    assert_eq!(loaded.tokenizer.decode(&case.ids).unwrap(), text);
    check_against_reference(&llama(loaded.model), &device, "gguf");
}

fn gguf_error(bytes: &[u8]) -> String {
    match GgufFile::parse(Path::new("bad.gguf"), bytes.to_vec()) {
        Ok(file) => {
            // The table may parse; reading the model must then fail.
            let device = Device::flex();
            match Llama::from_gguf(&file, &device) {
                Ok(_) => panic!("a broken GGUF loaded"),
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_files_give_clear_errors() {
    let good = fixture_as_gguf();
    assert!(GgufFile::parse(Path::new("ok.gguf"), good.clone()).is_ok());

    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let e = gguf_error(&bad_magic);
    assert!(
        e.contains("bad.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );

    let e = gguf_error(&good[..200]);
    assert!(e.contains("bad.gguf") && e.contains("truncated"), "{e}");

    // Cut the data section only: the table is whole but the last tensors point past the end.
    let e = gguf_error(&good[..good.len() - 64]);
    assert!(e.contains("points past the end"), "{e}");

    // A lying count must not allocate: a tensor count of 2^60.
    let mut lying = good.clone();
    lying[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = gguf_error(&lying);
    assert!(e.contains("claims"), "{e}");

    // An unknown tensor type (Q6_K = 14) on the first tensor.
    let unknown = write(
        &[("general.architecture", Meta::Str("llama".into()))],
        &[RawTensor {
            name: "token_embd.weight".into(),
            dims: vec![256, 2],
            kind: 14,
            data: vec![0; 420],
        }],
    );
    let file = GgufFile::parse(Path::new("q6.gguf"), unknown).unwrap();
    let e = file
        .tensor_f32("token_embd.weight")
        .expect_err("a Q6_K tensor decoded")
        .to_string();
    assert!(e.contains("Q6_K") && e.contains("q6.gguf"), "{e}");

    // A missing metadata key.
    let missing = write(&[("general.architecture", Meta::Str("llama".into()))], &[]);
    let e = gguf_error(&missing);
    assert!(
        e.contains("bad.gguf") && e.contains("missing metadata key '"),
        "{e}"
    );
}

/// Sum of log-probabilities of `new` after `prompt`, by full forward passes, and the largest
/// logit magnitude on the way.
fn sequence_log_prob(model: &Llama, prompt: &[u32], new: &[u32], device: &Device) -> (f32, f64) {
    let mut all = prompt.to_vec();
    all.extend(new);
    let data: Vec<i64> = all.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(data, [1, all.len()]), device);
    let logits = model.forward(tokens);
    let scale = cinder_tests::max_abs(&logits.clone().into_data().try_into_vec::<f32>().unwrap());
    let logp = cinder_engine::burn::tensor::activation::log_softmax(logits, 2);
    let v = model.vocab_size();
    let values = logp.into_data().try_into_vec::<f32>().unwrap();
    let sum = new
        .iter()
        .enumerate()
        .map(|(i, &t)| values[(prompt.len() - 1 + i) * v + t as usize])
        .sum();
    (sum, scale)
}

#[test]
fn beam_search_equals_brute_force_enumeration() {
    let device = Device::flex();
    device.seed(11);
    let config = LlamaConfig::new(5, 16, 32, 1, 2).with_max_position_embeddings(16);
    let mut model = config.init(&device);
    // Sharpen the distributions so the sequences have clearly different scores.
    model = cinder_engine::burn::module::Module::map(model, &mut Scale(3.0));
    let prompt = [1u32, 3];
    let steps = 3;
    let mut best = (Vec::new(), f32::NEG_INFINITY);
    let mut all = Vec::new();
    let mut scale: f64 = 0.0;
    for n in 0..5u32.pow(steps) {
        let seq: Vec<u32> = (0..steps).map(|i| (n / 5u32.pow(i)) % 5).collect();
        let (lp, s) = sequence_log_prob(&model, &prompt, &seq, &device);
        scale = scale.max(s);
        all.push(lp);
        if lp > best.1 {
            best = (seq, lp);
        }
    }
    // The beam's cached passes and these full passes each round along the forward pass (RMS norm
    // 16, q, k, v 16, rotary angles 5, scores 8, softmax and values 5 + 5, o 16, RMS norm 16,
    // gate times up 16 + 16, down 32, 4 ulps for each of 6 transcendental functions, final norm
    // 16 + 4, head 16) and the log-softmax over 5 tokens (5 + 8), once per new token.
    let roundings = 16 + 16 + 5 + 8 + 5 + 5 + 16 + 16 + 32 + 32 + 4 * 6 + 20 + 16 + 13;
    let bound = 2.0 * steps as f64 * roundings as f64 * cinder_tests::EPS * scale;
    all.sort_by(|a, b| b.total_cmp(a));
    // The best sequence wins by more than rounding, so which one it is does not depend on the
    // CPU's summation order.
    assert!(
        f64::from(all[0] - all[1]) > 2.0 * bound,
        "the two best sequences are too close to rank: {} and {} (bound {bound:e})",
        all[0],
        all[1]
    );
    let beam = |width| BeamConfig {
        width,
        max_new_tokens: steps as usize,
        length_penalty: 1.0,
        early_stopping: false,
        stop_tokens: Vec::new(),
    };
    // Wide enough to be exhaustive: the best sequence and its log-probability.
    let found = beam_search(&model, &prompt, &beam(25), &device).unwrap();
    assert_eq!(found[0].tokens, best.0);
    // The finished list is the top of the enumeration, in order.
    for (h, lp) in found.iter().zip(&all).take(5) {
        let diff = f64::from((h.log_prob - lp).abs());
        assert!(diff <= bound, "{} vs {lp} (bound {bound:e})", h.log_prob);
    }
    // Width 1 is greedy decoding.
    let one = beam_search(&model, &prompt, &beam(1), &device).unwrap();
    let greedy_config = GenerateConfig::new(steps as usize, SamplingConfig::greedy(), None);
    let (greedy, _) = generate(&model, &prompt, &greedy_config, &device, |_| true).unwrap();
    assert_eq!(one[0].tokens, greedy);
}

/// Multiplies every weight by a constant.
struct Scale(f32);

impl cinder_engine::burn::module::ModuleMapper for Scale {
    fn map_float<const D: usize>(
        &mut self,
        param: cinder_engine::burn::module::Param<Tensor<D>>,
    ) -> cinder_engine::burn::module::Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        cinder_engine::burn::module::Param::from_mapped_value(id, tensor.mul_scalar(self.0), mapper)
    }
}

#[test]
fn quantized_weights_stay_close_to_f32() {
    let device = Device::flex();
    let dense = llama(
        load(&fixture(), &device, Some(WeightDtype::F32))
            .unwrap()
            .model,
    );
    let case = &reference()[1];
    let values = |data: TensorData| data.try_into_vec::<f32>().unwrap();
    let exact = values(logits_of(&dense, &case.ids, &device));
    let scale = exact.iter().fold(0f32, |a, &x| a.max(x.abs()));
    // Mean absolute difference as a fraction of the largest logit. To first order each
    // quantized projection in series on the path (v then o, gate and up then down, in each of 2
    // blocks, and the head where it is quantized) is off by half a step of its format: 2^-11
    // relative for f16, 1/254 of the block's largest weight for 8 bits, 1/30 of the block's
    // range for 4 bits (measured: 0.03%, 0.75% and 9.2%). Quantizing is the same integer
    // rounding on every CPU; the f32 arithmetic around it differs by some 1e-6 of the logits.
    for (dtype, tolerance) in [
        (WeightDtype::F16, 5.0 * 2f32.powi(-11)),
        (WeightDtype::Q8, 4.0 / 254.0),
        (WeightDtype::Q4, 4.0 / 30.0 + 1.0 / 254.0),
    ] {
        let loaded = load(&fixture(), &device, Some(dtype)).unwrap();
        let model = llama(loaded.model);
        let bytes = model.quantized_bytes().expect("quantized");
        assert!(bytes > 0);
        let got = values(logits_of(&model, &case.ids, &device));
        let mean = got
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / got.len() as f32;
        eprintln!(
            "{dtype:?}: mean difference {:.5} of the largest logit (bound {tolerance:.5})",
            mean / scale
        );
        assert!(
            mean < tolerance * scale,
            "{dtype:?}: logits differ by {mean} on average (scale {scale})"
        );
        // The cache path goes through the same kernel.
        let config = GenerateConfig::new(4, SamplingConfig::greedy(), None);
        let (new, _) = generate(&model, &case.ids, &config, &device, |_| true).unwrap();
        assert_eq!(new.len(), 4);
    }
}
