//! Opening a model of any supported family from disk: a GGUF file, a Hugging Face folder
//! (`config.json` + safetensors + `tokenizer.json`), a Cinder checkpoint or a run folder. The
//! family comes from the file itself (`general.architecture`, `model_type`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use cinder_engine::burn;
use cinder_engine::chat::ChatTemplate;
use cinder_engine::gguf::GgufFile;
use cinder_engine::quant::WeightDtype;
use cinder_engine::run::{Checkpoint, resolve_model_dir};
use cinder_engine::tokenizer::Tokenizer;
use cinder_engine::{Error, Result};

use crate::gpt2::Gpt2;
use crate::gpt2_ml::Gpt2Ml;
use crate::llama::Llama;
use crate::t5::T5;

/// A model of one of the supported families.
// One is loaded per process and never copied around or stored in bulk, so its variants' sizes
// differing costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyModel {
    /// OpenAI GPT-2 layout.
    Gpt2(Gpt2),
    /// LLaMA layout.
    Llama(Llama),
    /// GPT2_ML layout.
    Gpt2Ml(Gpt2Ml),
    /// T5 encoder-decoder.
    T5(T5),
}

impl AnyModel {
    /// Number of output classes.
    pub fn vocab_size(&self) -> usize {
        use cinder_engine::lm::LanguageModel;
        match self {
            Self::Gpt2(m) => m.vocab_size(),
            Self::Llama(m) => m.vocab_size(),
            Self::Gpt2Ml(m) => m.vocab_size(),
            Self::T5(m) => m.vocab_size(),
        }
    }
}

/// Runs `$body` with `$m` bound to the decoder that continues `$prompt` (token ids) for the
/// model inside an [`AnyModel`] and `$p` to that decoder's prompt, so generic engine code
/// (`generate`, `beam_search`) runs on whichever family was loaded: a decoder-only model itself
/// with the prompt as given; for T5, its decoder after the encoder has read the prompt (on
/// `$device`), starting from the decoder's start token. Fails (with `?`, in a function
/// returning a `Result` that a Cinder error converts into) on a prompt the encoder refuses.
#[macro_export]
macro_rules! with_decoder {
    ($any:expr, $prompt:expr, $device:expr, |$m:ident, $p:ident| $body:expr) => {
        match $any {
            $crate::auto::AnyModel::Gpt2($m) => {
                let $p: &[u32] = $prompt;
                $body
            }
            $crate::auto::AnyModel::Llama($m) => {
                let $p: &[u32] = $prompt;
                $body
            }
            $crate::auto::AnyModel::Gpt2Ml($m) => {
                let $p: &[u32] = $prompt;
                $body
            }
            $crate::auto::AnyModel::T5(t5) => {
                let (decoding, start) = t5.condition($prompt, $device)?;
                let $m = &decoding;
                let $p: &[u32] = &start;
                $body
            }
        }
    };
}

/// A model ready to generate: weights, tokenizer, and what chat needs.
pub struct LoadedModel {
    /// The network.
    pub model: AnyModel,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end a generation (end of sequence, end of turn).
    pub stop_tokens: Vec<u32>,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// The precision the weights were loaded in.
    pub dtype: WeightDtype,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedModel({})", self.source.display())
    }
}

impl LoadedModel {
    /// The family's name.
    pub fn family(&self) -> &'static str {
        match self.model {
            AnyModel::Gpt2(_) => "gpt2",
            AnyModel::Llama(_) => "llama",
            AnyModel::Gpt2Ml(_) => crate::gpt2_ml::MODEL_TYPE,
            AnyModel::T5(_) => crate::t5::MODEL_TYPE,
        }
    }
}

fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn token_text(tokenizer: &Tokenizer, id: Option<u32>) -> String {
    id.and_then(|i| tokenizer.id_to_token(i))
        .unwrap_or_default()
}

/// Opens the model at `path` on `device`, its weights in `dtype`; `None` keeps the file's own
/// precision where the quantized kernel can (a Q4_0/Q4_1 GGUF stays 4-bit, a Q8_0 one 8-bit,
/// anything else f32).
pub fn load(path: &Path, device: &Device, dtype: Option<WeightDtype>) -> Result<LoadedModel> {
    if path.is_file() {
        if !is_gguf(path) {
            return Err(Error::format(
                path,
                "not a GGUF file; give a .gguf file or a model folder",
            ));
        }
        return load_gguf(GgufFile::open(path)?, device, dtype);
    }
    let dir = resolve_model_dir(path)?;
    load_files(&Checkpoint::read_model_folder(&dir)?, device, dtype)
}

/// Opens a model from files handed over as bytes (files a web page fetched or a user dropped),
/// each named by its file name: one GGUF file, or the files of a Hugging Face folder or Cinder
/// checkpoint (`config.json`, `tokenizer.json`, `model.safetensors`, ...). `source` names them
/// in messages. Precision as in [`load`].
pub fn load_bytes(
    source: &Path,
    files: Vec<(String, Vec<u8>)>,
    device: &Device,
    dtype: Option<WeightDtype>,
) -> Result<LoadedModel> {
    let file_name = |name: &str| name.rsplit(['/', '\\']).next().unwrap_or(name).to_string();
    let is_gguf = |(name, bytes): &(String, Vec<u8>)| {
        name.to_ascii_lowercase().ends_with(".gguf") || bytes.starts_with(b"GGUF")
    };
    if files.iter().any(is_gguf) {
        let mut files = files;
        return match (files.pop(), files.is_empty()) {
            (Some((name, bytes)), true) => {
                load_gguf(GgufFile::parse(Path::new(&name), bytes)?, device, dtype)
            }
            _ => Err(Error::format(
                source,
                "give one .gguf file alone, or the files of a model folder",
            )),
        };
    }
    let mut folder = Checkpoint::new(source);
    for (name, bytes) in files {
        folder.insert(&file_name(&name), bytes);
    }
    load_files(&folder, device, dtype)
}

/// Opens a Hugging Face folder or Cinder checkpoint from its files.
fn load_files(
    files: &Checkpoint,
    device: &Device,
    dtype: Option<WeightDtype>,
) -> Result<LoadedModel> {
    for needed in ["config.json", "tokenizer.json"] {
        if files.get(needed).is_none() {
            return Err(Error::format(
                files.source(),
                format!(
                    "{needed} is missing; a model folder needs config.json, model.safetensors \
                     and tokenizer.json"
                ),
            ));
        }
    }
    let config_path = files.path("config.json");
    let config: serde_json::Value = serde_json::from_str(files.text("config.json")?)
        .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
    let family = config
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("gpt2");
    let tokenizer = Tokenizer::from_json(files.text("tokenizer.json")?)
        .map_err(|e| Error::format(files.path("tokenizer.json"), e.to_string()))?;
    let (model, mut stop_tokens) = match family {
        "gpt2" | crate::gpt2_ml::MODEL_TYPE | crate::t5::MODEL_TYPE => {
            if dtype.is_some_and(|d| d != WeightDtype::F32) {
                return Err(Error::Config(format!(
                    "--dtype {dtype:?}: quantized weights are implemented for LLaMA models; \
                     {family} runs in f32"
                )));
            }
            if family == "gpt2" {
                let model = Gpt2::from_files(files, device)?;
                let eos = model.config().eos_token_id.map(|e| e as u32);
                (AnyModel::Gpt2(model), eos.into_iter().collect::<Vec<_>>())
            } else if family == crate::t5::MODEL_TYPE {
                let model = T5::from_files(files, device)?;
                let eos = model.config().eos_token_id as u32;
                (AnyModel::T5(model), vec![eos])
            } else {
                let model = Gpt2Ml::from_files(files, device)?;
                let eos = model.config().eos_token_id.map(|e| e as u32);
                (AnyModel::Gpt2Ml(model), eos.into_iter().collect::<Vec<_>>())
            }
        }
        "llama" => {
            let dtype = dtype.unwrap_or_default();
            let model = Llama::from_files(files, device)?.quantize(dtype, None)?;
            let eos = model.config().eos_ids();
            (AnyModel::Llama(model), eos)
        }
        "bert" => {
            return Err(Error::format(
                &config_path,
                "model_type 'bert' is an encoder, which does not generate text: use `cinder \
                 embed` or `cinder fill-mask`",
            ));
        }
        other => {
            return Err(Error::format(
                &config_path,
                format!("model_type '{other}' is not supported (gpt2, llama, gpt2-ml and t5 are)"),
            ));
        }
    };
    stop_tokens.extend(tokenizer.eos_id());
    let chat_template = folder_chat_template(files, &tokenizer)?;
    if let Some(end) = tokenizer.token_to_id("<|im_end|>")
        && chat_template.is_some()
    {
        stop_tokens.push(end);
    }
    stop_tokens.sort_unstable();
    stop_tokens.dedup();
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        stop_tokens,
        source: files.source().to_path_buf(),
        dtype: dtype.unwrap_or_default(),
    })
}

/// The chat template of a Hugging Face folder: `chat_template.jinja`, or `chat_template` in
/// `tokenizer_config.json`.
fn folder_chat_template(files: &Checkpoint, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let mut bos = String::new();
    let mut eos = token_text(tokenizer, tokenizer.eos_id());
    let source = if let Some(text) = files.get_text("chat_template.jinja")? {
        Some(text.to_string())
    } else if let Some(text) = files.get_text("tokenizer_config.json")? {
        let config_path = files.path("tokenizer_config.json");
        let config: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
        let named = |key: &str| {
            config.get(key).and_then(|v| {
                v.as_str()
                    .or_else(|| v.get("content").and_then(serde_json::Value::as_str))
                    .map(str::to_string)
            })
        };
        bos = named("bos_token").unwrap_or_default();
        eos = named("eos_token").unwrap_or(eos);
        config
            .get("chat_template")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    } else {
        None
    };
    source
        .map(|s| {
            ChatTemplate::new(&s, &bos, &eos)
                .map_err(|e| Error::format(files.source(), e.to_string()))
        })
        .transpose()
}

/// The precision a GGUF file's projections are stored in, as the closest [`WeightDtype`].
pub fn native_dtype(file: &GgufFile) -> WeightDtype {
    use cinder_engine::gguf::GgmlType;
    let mut counts = [0usize; 4];
    for t in file.tensors.iter().filter(|t| t.dims.len() == 2) {
        match t.ggml_type {
            GgmlType::Q4_0 | GgmlType::Q4_1 => counts[3] += 1,
            GgmlType::Q8_0 => counts[2] += 1,
            GgmlType::F16 => counts[1] += 1,
            _ => counts[0] += 1,
        }
    }
    match (0..4).max_by_key(|&i| (counts[i], i)) {
        Some(3) => WeightDtype::Q4,
        Some(2) => WeightDtype::Q8,
        Some(1) => WeightDtype::F16,
        _ => WeightDtype::F32,
    }
}

fn load_gguf(file: GgufFile, device: &Device, dtype: Option<WeightDtype>) -> Result<LoadedModel> {
    let path = file.path().to_path_buf();
    let dtype = dtype.unwrap_or_else(|| native_dtype(&file));
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let model = Llama::from_gguf(&file, device)?.quantize(dtype, Some(&file))?;
    let id = |key: &str| file.get_u64(key).ok().map(|v| v as u32);
    let bos = token_text(&tokenizer, id("tokenizer.ggml.bos_token_id"));
    let eos = token_text(&tokenizer, id("tokenizer.ggml.eos_token_id"));
    let chat_template = match file.metadata.get("tokenizer.chat_template") {
        Some(v) => {
            let source = v.as_str().ok_or_else(|| {
                Error::format(&path, "metadata 'tokenizer.chat_template' is not a string")
            })?;
            Some(
                ChatTemplate::new(source, &bos, &eos)
                    .map_err(|e| Error::format(&path, e.to_string()))?,
            )
        }
        None => None,
    };
    let mut stop_tokens: Vec<u32> = id("tokenizer.ggml.eos_token_id").into_iter().collect();
    stop_tokens.extend(id("tokenizer.ggml.eot_token_id"));
    stop_tokens.extend(tokenizer.token_to_id("<|im_end|>"));
    stop_tokens.sort_unstable();
    stop_tokens.dedup();
    Ok(LoadedModel {
        model: AnyModel::Llama(model),
        tokenizer,
        chat_template,
        stop_tokens,
        source: path,
        dtype,
    })
}
