//! Direct access to the memory of contiguous float32 CPU tensors.
//!
//! The small tensors of quantizer and optimizer state (bit widths, their reductions, Adam's
//! moments) are read and written every step; going through libtorch for them (detach,
//! convert, copy out, one dispatched operation each) costs more than the values themselves.
use tch::{Device, Kind, Tensor};

/// Whether `t` is a contiguous float32 CPU tensor (its memory is a plain `[f32]`).
pub(crate) fn is_plain(t: &Tensor) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
}

/// The values of a contiguous float32 CPU tensor, read in place; `None` for any other tensor.
pub(crate) fn slice(t: &Tensor) -> Option<&[f32]> {
    if !is_plain(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: a contiguous float32 CPU tensor of `n` elements, alive as long as `t`; this
    // crate does not write it while the slice is alive.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<f32>(), n) })
}

/// The values of a contiguous float32 CPU tensor, writable in place; `None` for any other.
///
/// # Safety
/// Nothing else reads or writes `t`'s memory while the slice is alive, and no autograd graph
/// saved `t` (the write does not bump its version counter).
// A tch `Tensor` is a shared handle to libtorch's memory (as `data_ptr` is): writing through
// `&Tensor` is what libtorch's in-place operations do too, hence `&` in, `&mut` out.
#[allow(clippy::mut_from_ref)]
pub(crate) unsafe fn slice_mut(t: &Tensor) -> Option<&mut [f32]> {
    if !is_plain(t) {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: as `slice`, exclusive per the caller.
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<f32>(), n) })
}

/// The values of any float tensor as float32 on the CPU (in place when [`slice`] applies).
pub(crate) fn values(t: &Tensor) -> crate::Result<Vec<f32>> {
    match slice(t) {
        Some(s) => Ok(s.to_vec()),
        None => crate::quantizer::to_f32_vec(t),
    }
}
