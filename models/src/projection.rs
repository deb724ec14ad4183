//! A linear projection without bias whose weights live in one of two forms: dense, as a Burn
//! [`Linear`] (f32, or on GPU backends Burn's own block-quantized tensor, which its kernels
//! multiply without expanding), or block-quantized on the host, as the engine's [`QuantMatrix`]
//! (the CPU kernel, which reads GGUF blocks as the file stores them).
//!
//! B=batch, T=time, I=inputs, O=outputs

use std::sync::Arc;

use burn::module::{
    Content, Devices, Initializer, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor,
};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};
use cinder_engine::burn;
use cinder_engine::quant::{BlockKind, QuantMatrix};
use cinder_engine::{Error, Result, readback};

/// A bias-free projection `x · W` with one `forward` whatever form its weights take.
///
/// A low-rank adapter belongs here as a second field beside `weights`, its output added in
/// [`forward`](Self::forward); the hand-written [`Module`] impl below then visits it too.
#[derive(Clone, Debug)]
pub struct Projection {
    weights: Weights,
}

#[derive(Clone, Debug)]
enum Weights {
    /// `[I, O]`, a Burn parameter.
    Dense(Linear),
    /// `[O, I]` in blocks along the inputs; not a parameter (it is never trained or saved).
    Host(Arc<QuantMatrix>),
}

impl Projection {
    /// A dense projection from `d_input` to `d_output` features.
    pub fn init(
        d_input: usize,
        d_output: usize,
        initializer: &Initializer,
        device: &Device,
    ) -> Self {
        let linear = LinearConfig::new(d_input, d_output)
            .with_bias(false)
            .with_initializer(initializer.clone())
            .init(device);
        Self {
            weights: Weights::Dense(linear),
        }
    }

    /// A projection through a host block-quantized `[O, I]` matrix.
    pub fn host(matrix: QuantMatrix) -> Self {
        Self {
            weights: Weights::Host(Arc::new(matrix)),
        }
    }

    /// `x · W`.
    ///
    /// # Shapes
    /// - x: `[B, T, I]` -> `[B, T, O]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.weights {
            Weights::Dense(linear) => crate::blocks::linear(linear, x),
            Weights::Host(matrix) => host_matmul(matrix, x),
        }
    }

    /// The same projection as `kind` blocks on the host.
    pub fn to_host(&self, kind: BlockKind) -> Result<Self> {
        let matrix = match &self.weights {
            Weights::Dense(linear) => {
                let [i, o] = linear.weight.dims();
                let w = readback::f32_values(linear.weight.val().transpose(), "weights")?;
                QuantMatrix::quantize(kind, &w, o, i)?
            }
            Weights::Host(matrix) => {
                QuantMatrix::quantize(kind, &matrix.dequantize(), matrix.rows(), matrix.cols())?
            }
        };
        Ok(Self::host(matrix))
    }

    /// Quantizes dense weights in place with Burn's own block quantization (`kind` Q4 or Q8,
    /// symmetric, f32 scales, blocks of 32 output columns or the largest smaller power of two
    /// that divides them), which GPU backends multiply without expanding. Host weights stay as
    /// they are.
    pub fn quantize_on_device(&mut self, kind: BlockKind) {
        use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};
        let Weights::Dense(linear) = &mut self.weights else {
            return;
        };
        let value = match kind {
            BlockKind::Q4 => QuantValue::Q4S,
            _ => QuantValue::Q8S,
        };
        let outputs = linear.weight.dims()[1];
        let block = [32u8, 16, 8, 4, 2, 1]
            .into_iter()
            .find(|&b| outputs.is_multiple_of(b as usize))
            .unwrap_or(1);
        let scheme = QuantScheme::default()
            .with_value(value)
            .per_block([block], ScaleDtype::F32);
        linear.weight = linear.weight.clone().map(|w| w.quantize_dynamic(&scheme));
    }

    /// The host matrix, when the weights are held on the host.
    pub fn host_matrix(&self) -> Option<&QuantMatrix> {
        match &self.weights {
            Weights::Dense(_) => None,
            Weights::Host(matrix) => Some(matrix),
        }
    }

    /// Bytes held by host block-quantized weights (`None` for dense ones).
    pub fn host_bytes(&self) -> Option<usize> {
        match &self.weights {
            Weights::Dense(_) => None,
            Weights::Host(matrix) => Some(matrix.bytes()),
        }
    }

    /// Fails, naming the tensor `name`, unless the weights are plain floats that an export can
    /// write as they are (block-quantized ones, on the host or in Burn's form, are not).
    pub fn check_exportable(&self, name: &str) -> Result<()> {
        let held = match &self.weights {
            Weights::Dense(linear) => match linear.weight.val().dtype() {
                DType::QFloat(_) => "in Burn's block-quantized form".to_string(),
                _ => return Ok(()),
            },
            Weights::Host(matrix) => format!("block-quantized on the host ({matrix:?})"),
        };
        Err(Error::Export(format!(
            "tensor '{name}' is held {held}, and only float weights can be exported; load the \
             model in f32 to export it"
        )))
    }
}

/// `x · qᵀ` through the host kernel: the activations are read back (a few kilobytes per decoded
/// token) and the product uploaded again. `into_data` either returns every value or panics, as
/// any backend operation of a forward pass does; nothing is ever defaulted.
///
/// # Shapes
/// - x: `[B, T, I]`, q: `[O, I]`
/// - output: `[B, T, O]`
fn host_matmul(q: &QuantMatrix, x: Tensor<3>) -> Tensor<3> {
    let [b, t, _] = x.dims();
    let device = x.device();
    let values: Vec<f32> = x.into_data().iter::<f32>().collect();
    let y = q.matmul(&values, b * t);
    Tensor::from_data(TensorData::new(y, [b, t, q.rows()]), &device)
}

/// Written by hand rather than derived: a derived enum or wrapper would put its variant or field
/// name into every parameter path (`q_proj.weights.Dense.weight`), while checkpoints and
/// optimizer state are keyed by a plain `Linear`'s paths (`q_proj.weight`). Host weights are
/// not visited, like a `#[module(skip)]` field.
impl Module for Projection {
    fn collect_devices(&self, devices: Devices) -> Devices {
        match &self.weights {
            Weights::Dense(linear) => linear.collect_devices(devices),
            Weights::Host(_) => devices,
        }
    }

    fn fork(self, device: &Device) -> Self {
        self.map_dense(|linear| linear.fork(device))
    }

    fn to_device(self, device: &Device) -> Self {
        self.map_dense(|linear| linear.to_device(device))
    }

    fn train(self) -> Self {
        self.map_dense(Module::train)
    }

    fn valid(&self) -> Self {
        let weights = match &self.weights {
            Weights::Dense(linear) => Weights::Dense(linear.valid()),
            Weights::Host(matrix) => Weights::Host(matrix.clone()),
        };
        Self { weights }
    }

    fn materialize(self) -> Self {
        self.map_dense(Module::materialize)
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        if let Weights::Dense(linear) = &self.weights {
            linear.visit(visitor);
        }
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        self.map_dense(|linear| linear.map(mapper))
    }
}

impl Projection {
    fn map_dense(self, f: impl FnOnce(Linear) -> Linear) -> Self {
        let weights = match self.weights {
            Weights::Dense(linear) => Weights::Dense(f(linear)),
            host => host,
        };
        Self { weights }
    }
}

impl ModuleDisplayDefault for Projection {
    fn content(&self, content: Content) -> Option<Content> {
        match &self.weights {
            Weights::Dense(linear) => content.add_single(linear).optional(),
            Weights::Host(matrix) => content.add_formatted(&format!("{matrix:?}")).optional(),
        }
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for Projection {}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_engine::weights::named_parameters;

    fn input(device: &Device) -> Tensor<3> {
        let values: Vec<f32> = (0..2 * 3 * 64)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0)
            .collect();
        Tensor::from_data(TensorData::new(values, [2, 3, 64]), device)
    }

    #[test]
    fn host_weights_give_the_dense_product() {
        let device = Device::flex();
        device.seed(1);
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.1,
        };
        let dense = Projection::init(64, 8, &normal, &device);
        let host = dense.to_host(BlockKind::F16).unwrap();
        let x = input(&device);
        let (a, b) = (dense.forward(x.clone()), host.forward(x.clone()));
        assert_eq!(b.dims(), [2, 3, 8]);
        // Rounding a weight to f16 moves it by at most 2^-11 of itself, and either sum of 64
        // f32 products is off by at most 64 epsilon of the sum of magnitudes: so each output
        // moves by at most (2^-11 + 2 * 64 eps) * sum |x| |w|.
        let Weights::Dense(linear) = &dense.weights else {
            unreachable!("init gives dense weights")
        };
        let mut magnitudes = linear.clone();
        magnitudes.weight = magnitudes.weight.map(|w| w.abs());
        let bound = magnitudes
            .forward(x.abs())
            .mul_scalar(2f32.powi(-11) + 128.0 * f32::EPSILON);
        let excess = ((a - b).abs() - bound).max().into_scalar::<f32>();
        assert!(excess <= 0.0, "{excess}");
        // Two bytes per weight, and the blocks' scales.
        assert!(host.host_bytes().is_some_and(|n| n >= 2 * 64 * 8));
        assert!(dense.host_bytes().is_none());
    }

    #[test]
    fn only_dense_weights_are_parameters_under_a_plain_linear_path() {
        let device = Device::flex();
        let dense = Projection::init(32, 4, &Initializer::Zeros, &device);
        let paths: Vec<String> = named_parameters(&dense)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(paths, vec!["weight".to_string()]);
        let host = dense.to_host(BlockKind::Q8).unwrap();
        assert!(named_parameters(&host).unwrap().is_empty());
        assert_eq!(Module::num_params(&host), 0);
        assert!(dense.check_exportable("w").is_ok());
        let err = host.check_exportable("w").err().unwrap();
        assert!(matches!(err, Error::Export(_)), "{err}");
        let mut on_device = dense.clone();
        on_device.quantize_on_device(BlockKind::Q8);
        let err = on_device.check_exportable("w").err().unwrap();
        assert!(matches!(err, Error::Export(_)), "{err}");
    }
}
