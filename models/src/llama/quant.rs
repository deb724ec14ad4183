//! Reduced-precision LLaMA weights: on the CPU, the projections and the output head move into
//! the engine's block-quantized matrices (GGUF blocks kept bit for bit where the format
//! matches); on GPU backends, the projections become Burn's own block-quantized tensors.
//!
//! V=vocab, C=hidden

use burn::tensor::Device;
use cinder_engine::burn;
use cinder_engine::gguf::{GgmlType, GgufFile};
use cinder_engine::quant::{BlockKind, QuantMatrix, WeightDtype};
use cinder_engine::{Result, readback};

use super::Llama;
use super::formats::rotary_file_row;
use super::layers::{PROJECTIONS, Rows};
use crate::projection::Projection;

/// Whether a GGUF tensor type is stored exactly as `kind` keeps it.
fn file_matches(ggml: GgmlType, kind: BlockKind) -> bool {
    matches!(
        (ggml, kind),
        (GgmlType::Q8_0, BlockKind::Q8)
            | (GgmlType::Q4_0 | GgmlType::Q4_1, BlockKind::Q4)
            | (GgmlType::F16, BlockKind::F16)
            | (GgmlType::F32, BlockKind::F32)
    )
}

/// A GGUF tensor already stored the way `kind` keeps it, taken as it is; rows of a rotated
/// projection (heads of size `rotary`) are put back in Hugging Face's order.
fn from_file(
    file: Option<&GgufFile>,
    name: &str,
    kind: BlockKind,
    rotary: Option<usize>,
) -> Option<Projection> {
    let (info, raw) = file?.raw(name).ok()?;
    if !file_matches(info.ggml_type, kind) {
        return None;
    }
    let shape = info.shape();
    let mut q = QuantMatrix::from_gguf(info.ggml_type, raw, shape[0], shape[1])?;
    if let Some(d) = rotary {
        let order: Vec<usize> = (0..q.rows()).map(|r| rotary_file_row(r, d)).collect();
        q.permute_rows(&order);
    }
    Some(Projection::host(q))
}

impl Llama {
    /// Puts the weights in `dtype`. On the CPU every projection and the output head become
    /// block-quantized matrices (the token embedding stays f32 for lookups, and a tied head gets
    /// its own quantized copy of it); with `file`, GGUF tensors already in the requested format
    /// (Q8_0 for q8, Q4_0 or Q4_1 for q4, F16 for f16) are kept bit for bit and anything else is
    /// quantized from the f32 weights. The head is 8-bit for q8 and q4 (4-bit heads cost
    /// answers), f16 for f16. On other devices q8 and q4 use Burn's block-quantized tensors for
    /// the projections instead, and the head and embedding stay f32; f16 stays on the host
    /// kernel. f32 on the CPU (natively) moves the f32 weights into host matrices as they are,
    /// for the host decoding path; elsewhere it leaves the model as it is. A model with host
    /// matrices is for inference: they are not parameters, and
    /// [`export_tensors`](cinder_engine::lm::CausalLm::export_tensors) fails.
    pub fn quantize(mut self, dtype: WeightDtype, file: Option<&GgufFile>) -> Result<Self> {
        let on_cpu = self.embed_tokens.weight.device() == Device::flex();
        // Host matrices hold rows in blocks of 32 inputs: an f32 model whose projections' inputs
        // are not multiples of 32 stays on tensors (the other formats refuse it).
        let c = &self.config;
        let blocks_fit = [
            c.hidden_size,
            c.num_attention_heads * c.head_size(),
            c.intermediate_size,
        ]
        .iter()
        .all(|&k| k > 0 && k % cinder_engine::gguf::QK == 0);
        let (kind, head_kind) = match dtype {
            // The browser keeps f32 models on tensors (its decoding runs one thread).
            WeightDtype::F32 if on_cpu && blocks_fit && !cfg!(target_family = "wasm") => {
                (BlockKind::F32, BlockKind::F32)
            }
            WeightDtype::F32 => return Ok(self),
            WeightDtype::F16 => (BlockKind::F16, BlockKind::F16),
            WeightDtype::Q8 => (BlockKind::Q8, BlockKind::Q8),
            WeightDtype::Q4 => (BlockKind::Q4, BlockKind::Q8),
        };
        if !on_cpu && kind != BlockKind::F16 {
            for layer in self.layers.iter_mut() {
                for projection in layer.projections_mut() {
                    projection.quantize_on_device(kind);
                }
            }
            return Ok(self);
        }
        let d = self.config.head_size();
        for (n, layer) in self.layers.iter_mut().enumerate() {
            for ((_, gguf, rows), projection) in PROJECTIONS.iter().zip(layer.projections_mut()) {
                let name = format!("blk.{n}.{gguf}.weight");
                let rotary = (*rows != Rows::Plain).then_some(d);
                *projection = match from_file(file, &name, kind, rotary) {
                    Some(host) => host,
                    None => projection.to_host(kind)?,
                };
            }
        }
        let head = match &self.lm_head {
            Some(head) => match from_file(file, "output.weight", head_kind, None) {
                Some(host) => host,
                None => head.to_host(head_kind)?,
            },
            None => match from_file(file, "token_embd.weight", head_kind, None) {
                Some(host) => host,
                None => {
                    let [v, c] = self.embed_tokens.weight.dims();
                    let w = readback::f32_values(self.embed_tokens.weight.val(), "weights")?;
                    Projection::host(QuantMatrix::quantize(head_kind, &w, v, c)?)
                }
            },
        };
        self.lm_head = Some(head);
        self.host = super::host::HostNorms::read(&self)?.map(std::sync::Arc::new);
        Ok(self)
    }

    /// Bytes held by the CPU kernel's quantized weights, if the model has them.
    pub fn quantized_bytes(&self) -> Option<usize> {
        let host: Vec<usize> = self
            .layers
            .iter()
            .flat_map(|layer| layer.projections())
            .chain(self.lm_head.as_ref())
            .filter_map(Projection::host_bytes)
            .collect();
        (!host.is_empty()).then(|| host.iter().sum())
    }
}
