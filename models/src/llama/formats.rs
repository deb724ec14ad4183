//! LLaMA weights in and out: Hugging Face safetensors folders (projections stored `[out, in]`,
//! Burn keeps `[in, out]`) and GGUF files (query and key rows permuted for llama.cpp's rotary
//! layout), and the export back to Hugging Face names.
//!
//! C=hidden, D=head size

use std::path::Path;

use burn::module::Initializer;
use burn::tensor::{Device, TensorData};
use cinder_engine::burn;
use cinder_engine::gguf::GgufFile;
use cinder_engine::run::Checkpoint;
use cinder_engine::weights::{
    NamedTensors, check_config_sizes, folder_weights, load_parameters, transpose_2d,
};
use cinder_engine::{Error, Result};

use super::layers::{PROJECTIONS, Rows};
use super::{Llama, LlamaConfig};

/// Whether a Hugging Face tensor is a projection stored `[out, in]` (Burn keeps `[in, out]`).
fn is_projection(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// Hugging Face names for a module path: `layers.0.norm.gamma` -> `model.layers.0.norm.weight`.
fn hf_names(path: &str) -> Vec<String> {
    let name = path.replace(".gamma", ".weight");
    if name.starts_with("lm_head") {
        vec![name]
    } else {
        vec![format!("model.{name}")]
    }
}

impl Llama {
    /// Builds the model from tensors under Hugging Face names, `[out, in]` projections included.
    pub fn from_hf_tensors(
        config: &LlamaConfig,
        mut tensors: NamedTensors,
        source: &Path,
        device: &Device,
    ) -> Result<Self> {
        for (name, data) in tensors.iter_mut() {
            if is_projection(name) {
                *data = transpose_2d(data, source, name)?;
            }
        }
        let layers = [("num_hidden_layers", config.num_hidden_layers)];
        let widths = [
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.intermediate_size),
            ("vocab_size", config.vocab_size),
            ("head_dim", config.head_size()),
        ];
        check_config_sizes(source, &layers, &widths, &tensors)?;
        let model = config.init_with(Initializer::Zeros, device);
        load_parameters(model, &mut tensors, &hf_names, source, device)
    }

    /// Loads a Hugging Face `LlamaForCausalLM` folder (`config.json` and `model.safetensors`, or
    /// shards listed in `model.safetensors.index.json`). The tokenizer is loaded by the engine.
    pub fn from_pretrained(dir: &Path, device: &Device) -> Result<Self> {
        Self::from_files(&Checkpoint::read_model_folder(dir)?, device)
    }

    /// [`from_pretrained`](Self::from_pretrained) from a folder's files already in memory.
    pub fn from_files(files: &Checkpoint, device: &Device) -> Result<Self> {
        let config =
            LlamaConfig::from_json(&files.path("config.json"), files.text("config.json")?)?;
        let (tensors, source) = folder_weights(files)?;
        Self::from_hf_tensors(&config, tensors, &source, device)
    }

    /// Loads the weights of a GGUF file (llama architecture), decoding quantized tensors to f32
    /// and undoing llama.cpp's permutation of the query and key rows.
    pub fn from_gguf(file: &GgufFile, device: &Device) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let d = config.head_size();
        let mut tensors = NamedTensors::new();
        let mut take = |gguf: &str, hf: String, heads: Option<usize>| -> Result<()> {
            let mut data = file.tensor_f32(gguf)?;
            if let Some(heads) = heads {
                data = unpermute_rotary_rows(data, heads, d, file.path(), gguf)?;
            }
            tensors.insert(hf, data);
            Ok(())
        };
        take(
            "token_embd.weight",
            "model.embed_tokens.weight".into(),
            None,
        )?;
        take("output_norm.weight", "model.norm.weight".into(), None)?;
        if !config.tie_word_embeddings {
            take("output.weight", "lm_head.weight".into(), None)?;
        }
        for i in 0..config.num_hidden_layers {
            let l = |s: &str| format!("model.layers.{i}.{s}");
            let g = |s: &str| format!("blk.{i}.{s}.weight");
            for (hf, gguf, rows) in PROJECTIONS {
                let heads = match rows {
                    Rows::Query => Some(config.num_attention_heads),
                    Rows::Key => Some(config.kv_heads()),
                    Rows::Plain => None,
                };
                take(&g(gguf), l(&format!("{hf}.weight")), heads)?;
            }
            take(&g("attn_norm"), l("input_layernorm.weight"), None)?;
            take(&g("ffn_norm"), l("post_attention_layernorm.weight"), None)?;
        }
        Self::from_hf_tensors(&config, tensors, file.path(), device)
    }

    /// Every weight under its Hugging Face name, projections `[out, in]`. Fails, naming the
    /// tensor, where a projection or the head is block-quantized: only float weights are written,
    /// and none is left out.
    pub(super) fn hf_tensors(&self, parameters: Vec<(String, TensorData)>) -> Result<NamedTensors> {
        for (n, layer) in self.layers.iter().enumerate() {
            for ((hf, _, _), projection) in PROJECTIONS.iter().zip(layer.projections()) {
                projection.check_exportable(&format!("model.layers.{n}.{hf}.weight"))?;
            }
        }
        if let Some(head) = &self.lm_head {
            head.check_exportable("lm_head.weight")?;
        }
        let source = Path::new("model");
        let mut out = NamedTensors::new();
        for (path, data) in parameters {
            let Some(name) = hf_names(&path).into_iter().next() else {
                continue;
            };
            let data = if is_projection(&name) {
                transpose_2d(&data, source, &name)?
            } else {
                data
            };
            out.insert(name, data);
        }
        Ok(out)
    }
}

/// llama.cpp stores each head's query/key rows interleaved (`[x0, y0, x1, y1, ...]`, rotated in
/// adjacent pairs) where Hugging Face keeps the halves apart (`[x0, x1, ..., y0, y1, ...]`).
/// Row `h*D + 2i + s` of the file becomes row `h*D + s*D/2 + i`.
///
/// # Shapes
/// - data: `[heads * D, C]` -> same
pub fn unpermute_rotary_rows(
    data: TensorData,
    heads: usize,
    d: usize,
    source: &Path,
    name: &str,
) -> Result<TensorData> {
    let shape = data.shape().to_vec();
    let rows = heads.checked_mul(d).filter(|_| d >= 2);
    if shape.len() != 2 || Some(shape[0]) != rows || shape[1] == 0 {
        return Err(Error::format(
            source,
            format!("tensor '{name}' has shape {shape:?}; expected {heads} heads of {d} rows"),
        ));
    }
    let cols = shape[1];
    let values = data
        .try_into_vec::<f32>()
        .map_err(|e| Error::format(source, format!("tensor '{name}': {e:?}")))?;
    let mut out = vec![0f32; values.len()];
    for (to, row) in out.chunks_exact_mut(cols).enumerate() {
        let from = rotary_file_row(to, d) * cols;
        row.copy_from_slice(&values[from..from + cols]);
    }
    Ok(TensorData::new(out, shape))
}

/// The file row that holds model row `r` of a rotated projection with heads of size `d`:
/// model row `h*D + s*D/2 + i` is file row `h*D + 2i + s`.
pub(super) fn rotary_file_row(r: usize, d: usize) -> usize {
    let (h, rest) = (r / d, r % d);
    let (s, i) = (rest / (d / 2), rest % (d / 2));
    h * d + 2 * i + s
}
