//! What the CPU backend's kernels share: their tensors as contiguous f32 slices, and work split
//! across rayon's threads (one after another in the browser, which has none).

use burn::backend::flex::FlexTensor;
use burn::tensor::DType;

/// The tensor as one contiguous row-major buffer of f32 (copied only when it is not already).
pub(crate) fn contiguous(x: FlexTensor) -> FlexTensor {
    if x.layout().contiguous_offsets().is_some() && x.dtype() == DType::F32 {
        x
    } else {
        FlexTensor::from_data(x.into_data().convert::<f32>())
    }
}

/// A [`contiguous`] tensor's values (empty for any other).
pub(crate) fn values(x: &FlexTensor) -> &[f32] {
    match x.layout().contiguous_offsets() {
        Some((start, end)) if x.dtype() == DType::F32 => &x.storage::<f32>()[start..end],
        _ => &[],
    }
}

/// Calls `f` on every item, across cores where there are threads.
pub(crate) fn each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
    }
    #[cfg(target_family = "wasm")]
    items.into_iter().for_each(f);
}
