//! Direct access to the memory of contiguous float32 CPU tensors.
//!
//! The small tensors of quantizer and optimizer state (bit widths, their reductions, Adam's
//! moments) are read and written every step; going through libtorch for them (detach,
//! convert, copy out, one dispatched operation each) costs more than the values themselves.
use tch::{Device, Kind, Tensor};

/// Whether `t` is in host memory, where reading it costs no wait: a CPU tensor, outside a
/// rehearsed CUDA step ([`crate::cuda::rehearse`]).
pub(crate) fn on_host(t: &Tensor) -> bool {
    t.device() == Device::Cpu && crate::cuda::rehearse::route().is_none()
}

/// Whether `t` is a contiguous float32 CPU tensor (its memory is a plain `[f32]`).
pub(crate) fn is_plain(t: &Tensor) -> bool {
    crate::bridge::plain_f32(t).is_some()
}

/// The values of a contiguous float32 CPU tensor, read in place; `None` for any other tensor.
pub(crate) fn slice(t: &Tensor) -> Option<&[f32]> {
    let (data, n) = crate::bridge::plain_f32(t)?;
    if n == 0 || data.is_null() {
        return Some(&[]);
    }
    // SAFETY: a contiguous float32 CPU tensor of `n` elements, alive as long as `t`; this
    // crate does not write it while the slice is alive.
    Some(unsafe { std::slice::from_raw_parts(data, n) })
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
    let (data, n) = crate::bridge::plain_f32(t)?;
    if n == 0 || data.is_null() {
        return Some(&mut []);
    }
    // SAFETY: as `slice`, exclusive per the caller.
    Some(unsafe { std::slice::from_raw_parts_mut(data, n) })
}

/// The values of any float tensor as float32 on the CPU (in place when [`slice`] applies).
pub(crate) fn values(t: &Tensor) -> crate::Result<Vec<f32>> {
    match slice(t) {
        Some(s) => Ok(s.to_vec()),
        None => read_f32(t, "quantizer variable"),
    }
}

/// `values` as a tensor of `like`'s shape, kind and device: on a device, copied from pinned
/// memory without waiting (a copy from pageable memory would wait for the device).
pub(crate) fn upload(values: &[f32], like: &Tensor) -> crate::Result<Tensor> {
    let src = Tensor::f_from_slice(values)?
        .f_reshape(like.size())?
        .f_to_kind(like.kind())?;
    crate::upload(&src, like.device())
}

/// Counts a read to the host of `what` (see [`crate::cuda::rehearse`]).
pub(crate) fn note(what: &'static str) {
    crate::cuda::rehearse::note(what);
}

/// `t` detached, converted to `kind` on the CPU, contiguous and flat.
fn to_host(t: &Tensor, kind: Kind) -> crate::Result<Tensor> {
    Ok(t.f_detach()?
        .f_to_kind(kind)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?)
}

/// The values of any tensor as float32 on the CPU: on a device, a read that waits for it
/// (counted as `what` in a rehearsal).
pub(crate) fn read_f32(t: &Tensor, what: &'static str) -> crate::Result<Vec<f32>> {
    note(what);
    Ok(Vec::<f32>::try_from(&to_host(t, Kind::Float)?)?)
}

/// [`read_f32`] in float64.
pub(crate) fn read_f64(t: &Tensor, what: &'static str) -> crate::Result<Vec<f64>> {
    note(what);
    Ok(Vec::<f64>::try_from(&to_host(t, Kind::Double)?)?)
}

/// [`read_f32`] of boolean values.
pub(crate) fn read_bools(t: &Tensor, what: &'static str) -> crate::Result<Vec<bool>> {
    note(what);
    Ok(Vec::<bool>::try_from(&to_host(t, Kind::Bool)?)?)
}

/// The one boolean value of `t` ([`read_bools`]).
pub(crate) fn read_bool(t: &Tensor, what: &'static str) -> crate::Result<bool> {
    note(what);
    Ok(bool::try_from(t.f_detach()?.f_to_device(Device::Cpu)?)?)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// Contiguous float32 CPU tensors are read in place (views with an offset included);
    /// any other tensor is `None`, and none of them panics.
    #[test]
    fn plain_tensors_only() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(slice(&t), Some(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
        let m = t.reshape([2, 3]);
        assert_eq!(slice(&m.get(1)), Some(&[4.0f32, 5.0, 6.0][..]));
        assert!(slice(&m.tr()).is_none(), "a transpose is not contiguous");
        assert!(slice(&t.to_kind(Kind::Double)).is_none());
        assert!(slice(&Tensor::from_slice(&[1i64, 2])).is_none());
        assert_eq!(
            slice(&Tensor::zeros([0], (Kind::Float, Device::Cpu))),
            Some(&[][..])
        );
        assert!(slice(&Tensor::new()).is_none(), "undefined");
        let sparse = Tensor::eye(3, (Kind::Float, Device::Cpu)).to_sparse_sparse_dim(2);
        assert!(!is_plain(&sparse));
        let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        // SAFETY: nothing else reads or writes `w` here.
        unsafe { slice_mut(&w) }.unwrap()[1] = 7.0;
        assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [0.0, 7.0, 0.0]);
    }
}
