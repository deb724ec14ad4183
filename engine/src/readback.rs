//! Reading tensors back to the host. Every copy from the device goes through these helpers, so
//! a failed read is an [`Error::Readback`] that says what was being read, never an empty vector
//! that a caller then indexes.
//!
//! Each read is asynchronous at heart (`*_async`): WebGPU can only read back by awaiting, so the
//! browser path awaits these. The plain versions wait for the same future: natively by blocking,
//! in the browser by polling it once, which completes on the CPU backend and is an error (not a
//! panic) on WebGPU.

use std::future::Future;

use burn::tensor::{DType, Int, Tensor, TensorData, Transaction};

use crate::{Error, Result};

fn failed(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Readback {
        what: what.to_string(),
        message: format!("{e:?}"),
    }
}

/// Waits for `future`, a computation whose only waiting is on device readbacks.
pub fn resolve<T>(what: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = what;
        pollster::block_on(future)
    }
    #[cfg(target_family = "wasm")]
    {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => Err(failed(
                what,
                "this device reads back asynchronously only (WebGPU in a browser); the caller \
                 must use the asynchronous version",
            )),
        }
    }
}

/// A float tensor of any precision as f32 host data.
pub async fn f32_data_async<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<TensorData> {
    let tensor = if tensor.dtype() == DType::F32 {
        tensor
    } else {
        tensor.cast(DType::F32)
    };
    tensor.into_data_async().await.map_err(|e| failed(what, e))
}

/// Float tensors of any precision as f32 host data, read back in one transfer (one round trip
/// to the device instead of one per tensor).
pub async fn f32_all_async<const D: usize>(
    tensors: Vec<Tensor<D>>,
    what: &str,
) -> Result<Vec<TensorData>> {
    let count = tensors.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let reads = tensors
        .into_iter()
        .fold(Transaction::default(), |reads, t| {
            reads.register(if t.dtype() == DType::F32 {
                t
            } else {
                t.cast(DType::F32)
            })
        });
    let data = reads.execute_async().await.map_err(|e| failed(what, e))?;
    if data.len() != count {
        return Err(failed(
            what,
            format!("{} tensors read back for {count}", data.len()),
        ));
    }
    Ok(data)
}

/// [`f32_data_async`], waited for.
pub fn f32_data<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<TensorData> {
    resolve(what, f32_data_async(tensor, what))
}

/// A float tensor's values in row-major order, as f32.
pub async fn f32_values_async<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| failed(what, e))?;
    data_values(data, what)
}

/// [`f32_values_async`], waited for.
pub fn f32_values<const D: usize>(tensor: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    resolve(what, f32_values_async(tensor, what))
}

/// The single value of a one-element float tensor (a loss, a norm).
pub async fn scalar_async(tensor: Tensor<1>, what: &str) -> Result<f64> {
    let values = f32_values_async(tensor, what).await?;
    match values[..] {
        [v] => Ok(v as f64),
        _ => Err(failed(what, format!("{} values, expected 1", values.len()))),
    }
}

/// [`scalar_async`], waited for.
pub fn scalar(tensor: Tensor<1>, what: &str) -> Result<f64> {
    resolve(what, scalar_async(tensor, what))
}

/// An integer tensor's values in row-major order (token ids).
pub async fn int_values_async<const D: usize>(
    tensor: Tensor<D, Int>,
    what: &str,
) -> Result<Vec<i64>> {
    let data = tensor
        .into_data_async()
        .await
        .map_err(|e| failed(what, e))?;
    data.try_into_vec_as::<i64>().map_err(|e| failed(what, e))
}

/// [`int_values_async`], waited for.
pub fn int_values<const D: usize>(tensor: Tensor<D, Int>, what: &str) -> Result<Vec<i64>> {
    resolve(what, int_values_async(tensor, what))
}

/// Host data's values as f32, converting from any float type.
pub fn data_values(data: TensorData, what: &str) -> Result<Vec<f32>> {
    data.try_into_vec_as::<f32>().map_err(|e| failed(what, e))
}
