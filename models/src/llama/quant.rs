//! Reduced-precision LLaMA weights: on the CPU, the projections and the output head move into
//! the engine's block-quantized matrices (GGUF blocks kept bit for bit where the format
//! matches); on GPU backends, the projections become Burn's own block-quantized tensors.
//!
//! B=batch, T=time

use std::sync::Arc;

use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::gguf::{GgmlType, GgufFile};
use cinder_engine::quant::{BlockKind, QuantMatrix, WeightDtype};
use cinder_engine::{Error, Result};

use super::{Llama, rotary_file_row};

/// Positions of the projections in [`LayerQuant`] and in `DecoderLayer::projections_mut`.
pub(super) const Q: usize = 0;
pub(super) const K: usize = 1;
pub(super) const V: usize = 2;
pub(super) const O: usize = 3;
pub(super) const GATE: usize = 4;
pub(super) const UP: usize = 5;
pub(super) const DOWN: usize = 6;

/// The GGUF names of the seven projections (`blk.N.<name>.weight`).
pub(super) const GGUF_NAMES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// One layer's projections in block-quantized form, `[out, in]`, indexed by [`Q`]..[`DOWN`].
#[derive(Clone, Debug)]
pub(super) struct LayerQuant([QuantMatrix; 7]);

/// Every projection and the output head of a quantized model.
#[derive(Clone, Debug)]
pub(super) struct QuantWeights {
    pub(super) layers: Vec<LayerQuant>,
    pub(super) head: QuantMatrix,
}

/// Projection `which` of a layer: through its dense weights, or through the quantized ones
/// when the model has them.
///
/// # Shapes
/// - x: `[B, T, in]` -> `[B, T, out]`
pub(super) fn project(
    linear: &Linear,
    quant: Option<&LayerQuant>,
    which: usize,
    x: Tensor<3>,
) -> Tensor<3> {
    match quant {
        Some(q) => quant_project(&q.0[which], x),
        None => linear.forward(x),
    }
}

/// `x · qᵀ` through the quantized kernel, which runs on the host: the activations are read back
/// (a few kilobytes per decoded token) and the result uploaded again.
pub(super) fn quant_project(q: &QuantMatrix, x: Tensor<3>) -> Tensor<3> {
    let [b, t, _] = x.dims();
    let device = x.device();
    let values = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let y = q.matmul(&values, b * t);
    Tensor::from_data(TensorData::new(y, [b, t, q.rows()]), &device)
}

/// Whether a GGUF tensor type is stored exactly as `kind` keeps it.
fn file_matches(ggml: GgmlType, kind: BlockKind) -> bool {
    matches!(
        (ggml, kind),
        (GgmlType::Q8_0, BlockKind::Q8)
            | (GgmlType::Q4_0 | GgmlType::Q4_1, BlockKind::Q4)
            | (GgmlType::F16, BlockKind::F16)
    )
}

/// A GGUF tensor already stored the way `kind` keeps it, taken as it is; rows of a rotated
/// projection (heads of size `rotary`) are put back in Hugging Face's order.
fn from_file(
    file: Option<&GgufFile>,
    name: &str,
    kind: BlockKind,
    rotary: Option<usize>,
) -> Option<QuantMatrix> {
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
    Some(q)
}

/// A row-major `[rows, cols]` tensor's values.
fn host_values(t: Tensor<2>) -> Result<Vec<f32>> {
    cinder_engine::readback::f32_values(t, "weights")
}

/// A dense Burn projection (`[in, out]`) as `[out, in]` blocks.
fn from_linear(linear: &Linear, kind: BlockKind) -> Result<QuantMatrix> {
    let [i, o] = linear.weight.dims();
    QuantMatrix::quantize(kind, &host_values(linear.weight.val().transpose())?, o, i)
}

impl Llama {
    /// Puts the weights in `dtype`. On the CPU every projection and the output head become
    /// block-quantized matrices (the token embedding stays f32 for lookups); with `file`, GGUF
    /// tensors already in the requested format (Q8_0 for q8, Q4_0 or Q4_1 for q4, F16 for f16)
    /// are kept bit for bit and anything else is quantized from the f32 weights. The head is
    /// 8-bit for q8 and q4 (4-bit heads cost answers), f16 for f16. On other devices q8 and q4
    /// use Burn's block-quantized tensors instead. A quantized model is for inference: its dense
    /// projections become placeholders, so it cannot be trained or exported.
    pub fn quantize(mut self, dtype: WeightDtype, file: Option<&GgufFile>) -> Result<Self> {
        let (kind, head_kind) = match dtype {
            WeightDtype::F32 => return Ok(self),
            WeightDtype::F16 => (BlockKind::F16, BlockKind::F16),
            WeightDtype::Q8 => (BlockKind::Q8, BlockKind::Q8),
            WeightDtype::Q4 => (BlockKind::Q4, BlockKind::Q8),
        };
        let device = self.embed_tokens.weight.device();
        if device != Device::flex() && kind != BlockKind::F16 {
            return Ok(self.quantize_on_device(kind));
        }
        let d = self.config.head_size();
        let rotated = |which: usize| (which == Q || which == K).then_some(d);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (n, layer) in self.layers.iter_mut().enumerate() {
            let mut matrices = Vec::with_capacity(7);
            for (which, linear) in layer.projections_mut().into_iter().enumerate() {
                let name = format!("blk.{n}.{}.weight", GGUF_NAMES[which]);
                matrices.push(match from_file(file, &name, kind, rotated(which)) {
                    Some(q) => q,
                    None => from_linear(linear, kind)?,
                });
                *linear = LinearConfig::new(1, 1).with_bias(false).init(&device);
            }
            let matrices: [QuantMatrix; 7] = matrices
                .try_into()
                .map_err(|_| Error::Internal("a layer has seven projections".into()))?;
            layers.push(LayerQuant(matrices));
        }
        let head = match self.lm_head.take() {
            Some(head) => match from_file(file, "output.weight", head_kind, None) {
                Some(q) => q,
                None => from_linear(&head, head_kind)?,
            },
            None => match from_file(file, "token_embd.weight", head_kind, None) {
                Some(q) => q,
                None => {
                    let [v, c] = self.embed_tokens.weight.dims();
                    let w = host_values(self.embed_tokens.weight.val())?;
                    QuantMatrix::quantize(head_kind, &w, v, c)?
                }
            },
        };
        self.quant = Some(Arc::new(QuantWeights { layers, head }));
        Ok(self)
    }

    /// Quantizes the projection weights in place with Burn's own block quantization (blocks of
    /// 32 along the output dimension, symmetric, f32 scales), which GPU backends multiply
    /// without expanding. The head and embedding stay f32; f16 stays on the host kernel.
    fn quantize_on_device(mut self, kind: BlockKind) -> Self {
        use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
        let value = match kind {
            BlockKind::Q4 => QuantValue::Q4S,
            _ => QuantValue::Q8S,
        };
        // Blocks of 32 output columns, or the largest smaller power of two that divides them.
        let scheme = |outputs: usize| {
            let block = [32u8, 16, 8, 4, 2, 1]
                .into_iter()
                .find(|&b| outputs.is_multiple_of(b as usize))
                .unwrap_or(1);
            QuantScheme::default()
                .with_value(value)
                .per_block([block], ScaleDtype::F32)
        };
        for layer in self.layers.iter_mut() {
            for linear in layer.projections_mut() {
                let scheme = scheme(linear.weight.dims()[1]);
                linear.weight = linear.weight.clone().map(|w| w.quantize_dynamic(&scheme));
            }
        }
        self
    }

    /// Bytes held by the CPU kernel's quantized weights, if the model has them.
    pub fn quantized_bytes(&self) -> Option<usize> {
        self.quant.as_ref().map(|q| {
            let layers: usize = q
                .layers
                .iter()
                .flat_map(|l| l.0.iter())
                .map(QuantMatrix::bytes)
                .sum();
            q.head.bytes() + layers
        })
    }
}
