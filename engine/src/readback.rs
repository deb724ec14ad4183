//! Reading tensors back to the host. Every copy from the device goes through these helpers, so
//! a failed read is an [`Error::Readback`] that says what was being read, never an empty vector
//! that a caller then indexes.

use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::{Error, Result};

fn failed(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Readback {
        what: what.to_string(),
        message: format!("{e:?}"),
    }
}

/// A float tensor of any precision as f32 host data.
pub fn f32_data<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<TensorData> {
    let tensor = if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(DType::F32)
    };
    tensor.try_into_data().map_err(|e| failed(what, e))
}

/// A float tensor's values in row-major order, as f32.
pub fn f32_values<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    tensor.try_into_vec_as::<f32>().map_err(|e| failed(what, e))
}

/// The single value of a one-element float tensor (a loss, a norm).
pub fn scalar(tensor: Tensor<1>, what: &str) -> Result<f64> {
    let values = f32_values(tensor, what)?;
    match values[..] {
        [v] => Ok(v as f64),
        _ => Err(failed(what, format!("{} values, expected 1", values.len()))),
    }
}

/// An integer tensor's values in row-major order (token ids).
pub fn int_values<const D: usize>(tensor: Tensor<D, Int>, what: &str) -> Result<Vec<i64>> {
    tensor.try_into_vec_as::<i64>().map_err(|e| failed(what, e))
}

/// Host data's values as f32, converting from any float type.
pub fn data_values(data: TensorData, what: &str) -> Result<Vec<f32>> {
    data.try_into_vec_as::<f32>().map_err(|e| failed(what, e))
}
