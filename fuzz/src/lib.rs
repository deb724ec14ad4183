//! The bodies of Cinder's fuzz targets: every reader of a file a user or a web page can hand to
//! Cinder, driven from arbitrary bytes. Each returns normally for any input, `true` when the
//! input was accepted all the way (loaded, then run); a panic, an abort or an allocation the
//! input does not justify is a finding.
//!
//! The same functions run under libFuzzer (`cargo +nightly fuzz run TARGET`, see
//! `scripts/fuzz.sh`) and, over the committed seeds and their mutations, in the test suite
//! (`tests/tests/fuzz_targets.rs`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use cinder_engine::burn::tensor::Device;
use cinder_engine::chat::{ChatTemplate, Message, chat_prompt};
use cinder_engine::data::Corpus;
use cinder_engine::device::{DeviceChoice, select};
use cinder_engine::generate::{GenerateConfig, generate};
use cinder_engine::run::{MemoryStorage, Run, RunStorage};
use cinder_engine::sampling::SamplingConfig;
use cinder_engine::tokenizer::Tokenizer;
use cinder_models::auto::{LoadedModel, load_bytes};
use cinder_models::recipe::{TrainSettings, prepare};

/// The largest single allocation a target may make: far above what the seeds need (a few MB
/// for the biggest model), far below what a lying header asks for.
pub const LIMIT: usize = 256 << 20;

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with allocations above [`LIMIT`] refused on this thread: such a request fails,
/// which aborts the process ("memory allocation of N bytes failed") and makes it a finding.
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    GUARDED.with(|g| g.set(true));
    let out = f();
    GUARDED.with(|g| g.set(false));
    out
}

fn refused(size: usize) -> bool {
    size > LIMIT && GUARDED.with(Cell::get)
}

/// The system allocator, refusing oversized requests inside [`guarded`].
struct Guarded;

// SAFETY: every call is forwarded to the system allocator unchanged, except that an oversized
// request inside `guarded` returns null, which the allocation API reports as a failure.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refused(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Guarded = Guarded;

/// A target: takes any bytes, says whether they were accepted all the way.
pub type Target = fn(&[u8]) -> bool;

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the seed folders).
pub const TARGETS: [(&str, Target); 7] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("config", config),
    ("tokenizer", tokenizer),
    ("chat_template", chat_template),
    ("run_folder", run_folder),
    ("metrics", metrics),
];

/// A model folder: its family, `config.json`, `model.safetensors` and `tokenizer.json`.
type Folder = (&'static str, &'static [u8], &'static [u8], &'static [u8]);

/// The model folders whose `config.json` the config target replaces, and whose files the
/// safetensors target keeps around the weights it is given.
const FOLDERS: [Folder; 5] = [
    (
        "gpt2",
        include_bytes!("../../tests/fixtures/gpt2-tiny/config.json"),
        include_bytes!("../../tests/fixtures/gpt2-tiny/model.safetensors"),
        include_bytes!("../../tests/fixtures/gpt2-tiny/tokenizer.json"),
    ),
    (
        "llama",
        include_bytes!("../../tests/fixtures/llama-tiny/config.json"),
        include_bytes!("../../tests/fixtures/llama-tiny/model.safetensors"),
        include_bytes!("../../tests/fixtures/llama-tiny/tokenizer.json"),
    ),
    (
        "gpt2-ml",
        include_bytes!("../../tests/fixtures/gpt2-ml-tiny/config.json"),
        include_bytes!("../../tests/fixtures/gpt2-ml-tiny/model.safetensors"),
        include_bytes!("../../tests/fixtures/gpt2-ml-tiny/tokenizer.json"),
    ),
    (
        "t5",
        include_bytes!("../../tests/fixtures/t5-tiny/config.json"),
        include_bytes!("../../tests/fixtures/t5-tiny/model.safetensors"),
        include_bytes!("../../tests/fixtures/t5-tiny/tokenizer.json"),
    ),
    (
        "bert",
        include_bytes!("../../tests/fixtures/bert-tiny/config.json"),
        include_bytes!("../../tests/fixtures/bert-tiny/model.safetensors"),
        include_bytes!("../../tests/fixtures/bert-tiny/tokenizer.json"),
    ),
];

/// The files of a run folder, in the order the run-folder target reads them from its input.
pub const RUN_FILES: [&str; 9] = [
    "run.json",
    "metrics.jsonl",
    "latest",
    "checkpoints/step-0000001/config.json",
    "checkpoints/step-0000001/tokenizer.json",
    "checkpoints/step-0000001/trainer_state.json",
    "checkpoints/step-0000001/train_config.json",
    "checkpoints/step-0000001/model.safetensors",
    "checkpoints/step-0000001/optimizer.safetensors",
];

/// The run-folder target's input cut into files: each a little-endian u32 length, then that
/// many bytes (fewer where the input ends first), in the order of [`RUN_FILES`].
fn unpack_run(mut data: &[u8]) -> Vec<(&'static str, &[u8])> {
    let mut files = Vec::new();
    for name in RUN_FILES {
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            break;
        };
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        files.push((name, &rest[..len]));
        data = &rest[len..];
    }
    files
}

fn device() -> Device {
    Device::flex()
}

/// Decodes two tokens from a loaded model: odd hyper-parameters that loading accepted must
/// still fail cleanly, if at all, when the model runs.
fn run_model(loaded: &LoadedModel) -> bool {
    let device = device();
    let config = GenerateConfig::new(2, SamplingConfig::greedy(), None);
    let decode = || -> cinder_engine::Result<()> {
        cinder_models::with_decoder!(&loaded.model, &[1, 2], &device, |m, p| generate(
            m,
            p,
            &config,
            &device,
            |_| true
        ))?;
        Ok(())
    };
    let decoded = decode().is_ok();
    loaded
        .tokenizer
        .encode("the quick brown fox, 床前明月光")
        .is_ok()
        && decoded
}

/// A GGUF file: header, metadata, tensor table, tokenizer, chat template, the weights, and two
/// decoded tokens.
pub fn gguf(data: &[u8]) -> bool {
    let files = vec![("fuzz.gguf".to_string(), data.to_vec())];
    load_bytes(Path::new("fuzz.gguf"), files, &device(), None).is_ok_and(|m| run_model(&m))
}

fn folder(family: usize, config: &[u8], weights: &[u8]) -> bool {
    let (name, _, _, tokenizer) = FOLDERS[family];
    let files = vec![
        ("config.json".to_string(), config.to_vec()),
        ("model.safetensors".to_string(), weights.to_vec()),
        ("tokenizer.json".to_string(), tokenizer.to_vec()),
    ];
    if name == "bert" {
        let mut ckpt = cinder_engine::run::Checkpoint::new("fuzz");
        for (file, bytes) in files {
            ckpt.insert(&file, bytes);
        }
        let Ok(model) = cinder_models::bert::Bert::from_files(&ckpt, &device()) else {
            return false;
        };
        let Ok(tok) = Tokenizer::from_json(std::str::from_utf8(tokenizer).unwrap_or("")) else {
            return false;
        };
        return model
            .fill_mask(&tok, "the [MASK] sat on the mat", 3)
            .is_ok();
    }
    load_bytes(Path::new("fuzz"), files, &device(), None).is_ok_and(|m| run_model(&m))
}

/// A model folder's `model.safetensors` (the first byte picks the family whose config and
/// tokenizer go with it).
pub fn safetensors(data: &[u8]) -> bool {
    let Some((&pick, weights)) = data.split_first() else {
        return false;
    };
    let family = pick as usize % FOLDERS.len();
    folder(family, FOLDERS[family].1, weights)
}

/// A model folder's `config.json` (the first byte picks the family whose weights and tokenizer
/// go with it).
pub fn config(data: &[u8]) -> bool {
    let Some((&pick, config)) = data.split_first() else {
        return false;
    };
    let family = pick as usize % FOLDERS.len();
    folder(family, config, FOLDERS[family].2)
}

/// A `tokenizer.json`: loading, then encoding and decoding text with it.
pub fn tokenizer(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(tok) = Tokenizer::from_json(text) else {
        return false;
    };
    let _ = tok.decode(&[0, 1, u32::MAX]);
    tok.encode("Hello, world! 床前明月光 <|endoftext|>")
        .is_ok_and(|ids| tok.decode(&ids).is_ok())
}

/// A chat template (Jinja), compiled and rendered for a short conversation.
pub fn chat_template(data: &[u8]) -> bool {
    let Ok(source) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return false;
    };
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hello!"),
        Message::new("assistant", "Hi."),
        Message::new("user", "What is 2 + 2?"),
    ];
    chat_prompt(Some(&template), &messages).is_ok()
}

fn run_of(files: &[(&str, &[u8])]) -> Option<Run> {
    let mut storage = MemoryStorage::new();
    for (name, bytes) in files {
        storage.write(name, bytes).ok()?;
    }
    Run::new(Box::new(storage)).ok()
}

/// A run folder resumed the way `cinder train --resume` and the desktop app resume it: its
/// settings, metrics, latest-checkpoint pointer and checkpoint, then one training step.
pub fn run_folder(data: &[u8]) -> bool {
    let Some(mut run) = run_of(&unpack_run(data)) else {
        return false;
    };
    let metrics_read = run.metrics().is_ok();
    let Ok(mut settings) = TrainSettings::resumed(&run, None, DeviceChoice::Cpu) else {
        return false;
    };
    // However many steps the file asks for, one is enough to exercise the restored state.
    settings.train.steps = settings.train.steps.clamp(1, 2);
    let Ok(selected) = select(DeviceChoice::Cpu) else {
        return false;
    };
    let text = "line one of the little corpus.\nline two of it.\n".repeat(40);
    let Ok(corpus) = Corpus::from_text(Path::new("corpus.txt"), text.into_bytes()) else {
        return false;
    };
    let Ok(mut trainer) = prepare(&settings, &mut run, true, &selected, corpus, &mut |_| {}) else {
        return false;
    };
    trainer.step_in(&mut run).is_ok() && metrics_read
}

/// A run's `metrics.jsonl`, as the dashboard and `--resume` read it.
pub fn metrics(data: &[u8]) -> bool {
    let Some(mut run) = run_of(&[("metrics.jsonl", data)]) else {
        return false;
    };
    run.metrics().is_ok() && run.truncate_metrics(3).is_ok() && run.metrics().is_ok()
}
