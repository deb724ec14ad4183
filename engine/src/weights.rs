//! Weight files: safetensors reading and writing, and moving named tensors in and out of
//! Burn modules.
//!
//! Reading validates the whole file (header, dtypes, every offset) before any tensor is used,
//! and writing goes through a temporary file and a rename, so an output is either complete or
//! absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor, TensorData, Transaction};
use safetensors::{Dtype, SafeTensors};

use crate::atomic::write_atomic;
use crate::run::{Checkpoint, WEIGHTS, WEIGHTS_INDEX};
use crate::{Error, Result, readback};

/// Tensors read from a file, by name, converted to f32.
pub type NamedTensors = BTreeMap<String, TensorData>;

/// Reads every float tensor of a safetensors file as f32 (F32, F16 and BF16 are accepted;
/// integer buffers are skipped).
pub fn read_safetensors(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(path, &bytes)
}

/// Parses safetensors bytes; `path` only names the source in errors.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<NamedTensors> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer tensors are buffers, never parameters (transformers' BERT saves its
            // position ids as one): nothing loads them.
            Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::BOOL => continue,
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; expected F32, F16 or BF16"),
                ));
            }
        };
        out.insert(name, TensorData::new(values, shape));
    }
    Ok(out)
}

/// Reads the weights of a Hugging Face model folder: `model.safetensors`, or every shard that
/// `model.safetensors.index.json` lists.
pub fn read_safetensors_dir(dir: &Path) -> Result<NamedTensors> {
    Ok(folder_weights(&Checkpoint::read_model_folder(dir)?)?.0)
}

/// The weights among a model folder's files (read from disk or handed over as bytes):
/// `model.safetensors`, or every shard that `model.safetensors.index.json` lists; with the
/// path that names them in messages (the file, or the folder of the shards).
pub fn folder_weights(files: &Checkpoint) -> Result<(NamedTensors, PathBuf)> {
    if let Some(bytes) = files.get(WEIGHTS) {
        let path = files.path(WEIGHTS);
        return Ok((parse_safetensors(&path, bytes)?, path));
    }
    if files.get(WEIGHTS_INDEX).is_none() {
        return Err(Error::format(
            files.source(),
            "no model.safetensors (nor model.safetensors.index.json) in this folder",
        ));
    }
    let mut out = NamedTensors::new();
    for shard in files.shard_names()? {
        out.append(&mut parse_safetensors(
            &files.path(&shard),
            files.file(&shard)?,
        )?);
    }
    Ok((out, files.source().to_path_buf()))
}

/// The transpose of a 2-D f32 tensor (Hugging Face's `[out, in]` projections to Burn's
/// `[in, out]` and back); `source` and `name` only label errors.
pub fn transpose_2d(data: &TensorData, source: &Path, name: &str) -> Result<TensorData> {
    let shape = data.shape().to_vec();
    let [rows, cols] = shape[..] else {
        return Err(Error::format(
            source,
            format!("tensor '{name}' has shape {shape:?}; expected a matrix"),
        ));
    };
    let values = data
        .as_slice::<f32>()
        .map_err(|e| Error::format(source, format!("tensor '{name}' is not f32: {e:?}")))?;
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    Ok(TensorData::new(out, [cols, rows]))
}

/// Serialises f32 tensors to safetensors bytes, with optional string metadata.
pub fn safetensors_bytes(
    tensors: &NamedTensors,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let values = readback::data_values(data.clone(), &format!("tensor '{name}'"))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), data.shape().to_vec(), bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::serialize(format!("tensor '{name}'"), e))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::serialize("safetensors", e))
}

/// Writes f32 tensors to a safetensors file, atomically.
pub fn write_safetensors(path: &Path, tensors: &NamedTensors) -> Result<()> {
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(path, &safetensors_bytes(tensors, Some(metadata))?)
}

/// Gathers every float parameter into one readback.
struct Collector {
    path: Vec<String>,
    names: Vec<String>,
    reads: Option<Transaction>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let tensor = if tensor.dtype() == DType::F32 {
            tensor
        } else {
            tensor.cast(DType::F32)
        };
        self.names.push(self.path.join("."));
        self.reads = self.reads.take().map(|t| t.register(tensor));
    }
}

/// Every float parameter of a module with its dotted path (`h.0.attn.c_attn.weight`), as f32.
pub fn named_parameters<M: Module>(module: &M) -> Result<Vec<(String, TensorData)>> {
    readback::resolve("the parameters", named_parameters_async(module))
}

/// [`named_parameters`], read back in one asynchronous transfer.
pub async fn named_parameters_async<M: Module>(module: &M) -> Result<Vec<(String, TensorData)>> {
    let mut collector = Collector {
        path: Vec::new(),
        names: Vec::new(),
        reads: Some(Transaction::default()),
    };
    module.visit(&mut collector);
    let (names, reads) = (collector.names, collector.reads);
    let Some(reads) = reads.filter(|_| !names.is_empty()) else {
        return Ok(Vec::new());
    };
    let data = reads.execute_async().await.map_err(|e| Error::Readback {
        what: "the parameters".into(),
        message: format!("{e:?}"),
    })?;
    if data.len() != names.len() {
        return Err(Error::Readback {
            what: "the parameters".into(),
            message: format!("{} tensors read back for {} names", data.len(), names.len()),
        });
    }
    Ok(names.into_iter().zip(data).collect())
}

struct Loader<'a> {
    path: Vec<String>,
    source: &'a Path,
    tensors: &'a mut NamedTensors,
    rename: &'a dyn Fn(&str) -> Vec<String>,
    device: Device,
    errors: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let candidates = (self.rename)(&path);
        let Some(key) = candidates.iter().find(|k| self.tensors.contains_key(*k)) else {
            self.errors
                .push(format!("missing tensor '{}'", candidates.join("' or '")));
            return param;
        };
        // The shape a parameter will have, read without initialising it: a config that declares
        // absurd sizes is refused against the tensors present before anything that large is
        // allocated.
        let expected = param.lazy_shape().to_vec();
        let Some(data) = self.tensors.remove(key) else {
            return param;
        };
        if data.shape().to_vec() != expected {
            self.errors.push(format!(
                "tensor '{key}' has shape {:?}, the model expects {expected:?}",
                data.shape().to_vec()
            ));
            return param;
        }
        let id = param.id;
        param.transform_for_load(Tensor::<D>::from_data(data, &self.device), id)
    }
}

/// Refuses a config whose sizes the weights in `tensors` cannot back, before a model of those
/// sizes is built (building allocates by the config, not by the file): the repeated `layers`
/// (config key and value) may not outnumber the tensors, since each layer has at least one of
/// its own, and no width in `widths` may exceed the largest dimension of any tensor, since
/// every width is the side of some weight. `source` names the weights.
pub fn check_config_sizes(
    source: &Path,
    layers: &[(&str, usize)],
    widths: &[(&str, usize)],
    tensors: &NamedTensors,
) -> Result<()> {
    let total: usize = layers
        .iter()
        .map(|(_, n)| *n)
        .fold(0, usize::saturating_add);
    if total > tensors.len() {
        let declared: Vec<String> = layers.iter().map(|(k, n)| format!("{k} = {n}")).collect();
        return Err(Error::format(
            source,
            format!(
                "config.json declares {} layers, but the weights hold only {} tensors",
                declared.join(" and "),
                tensors.len()
            ),
        ));
    }
    let widest = tensors
        .values()
        .flat_map(|t| t.shape().to_vec())
        .max()
        .unwrap_or(0);
    if let Some((key, n)) = widths.iter().find(|(_, n)| *n > widest) {
        return Err(Error::format(
            source,
            format!(
                "config.json declares {key} = {n}, but no tensor of the weights has a dimension \
                 above {widest}"
            ),
        ));
    }
    Ok(())
}

/// Replaces every float parameter of `module` with the tensor named by `rename(path)` (the first
/// candidate present wins). Fails, naming `source`, on a missing tensor or a shape mismatch;
/// tensors left unused are returned so the caller can decide whether they matter.
pub fn load_parameters<M: Module>(
    module: M,
    tensors: &mut NamedTensors,
    rename: &dyn Fn(&str) -> Vec<String>,
    source: &Path,
    device: &Device,
) -> Result<M> {
    let mut loader = Loader {
        path: Vec::new(),
        source,
        tensors,
        rename,
        device: device.clone(),
        errors: vec![],
    };
    let module = module.map(&mut loader);
    if !loader.errors.is_empty() {
        let shown: Vec<_> = loader.errors.iter().take(5).cloned().collect();
        let more = loader.errors.len().saturating_sub(5);
        let tail = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        return Err(Error::format(
            loader.source,
            format!("{}{tail}", shown.join("; ")),
        ));
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut tensors = NamedTensors::new();
        tensors.insert(
            "a".into(),
            TensorData::new(vec![1.0f32, -2.5, 3.0, 4.0], [2, 2]),
        );
        write_safetensors(&path, &tensors).unwrap();
        let back = read_safetensors(&path).unwrap();
        let values = back["a"].try_to_vec::<f32>().unwrap();
        assert_eq!(values, vec![1.0, -2.5, 3.0, 4.0]);
        assert_eq!(back["a"].shape().to_vec(), vec![2, 2]);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = read_safetensors(&path)
            .expect_err("a truncated file loaded")
            .to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }
}
