//! Counting host synchronizations: what a training step on CUDA must not have (each one stalls
//! the host until the device has caught up).
//!
//! libtorch reports the operations that synchronize (`.item()`, copies to the host,
//! `nonzero`, ...) when its CUDA sync debug mode is on (`torch.cuda.set_sync_debug_mode("warn")`
//! in Python); [`count_syncs`] turns it on around a closure and counts the reports on this
//! thread, the backward passes' included (the autograd engine replays their warnings on the
//! thread that called backward).
use std::ffi::c_int;

use crate::{Result, TorchError};

unsafe extern "C" {
    fn hgq_torch_sync_watch(on: c_int) -> c_int;
    fn hgq_torch_sync_count() -> i64;
}

/// Stops the watch when dropped (a panic in the closure included).
struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: no arguments beyond the flag; stopping an idle watch does nothing.
        unsafe { hgq_torch_sync_watch(0) };
    }
}

/// Runs `f` and returns its result with the number of host synchronizations libtorch reported
/// on this thread while it ran. The sync debug mode is process-wide: other threads' CUDA work
/// is slowed by the checks (not counted) while `f` runs. Not re-entrant.
///
/// An error where libtorch has no CUDA (a CPU build); on a machine without a GPU the count is
/// that of CUDA operations, none.
///
/// ```
/// # fn main() -> hgq_torch::Result<()> {
/// # if !hgq_torch::cuda_available() { return Ok(()); }
/// use tch::{Device, Kind, Tensor};
/// let x = Tensor::ones([4], (Kind::Float, Device::Cuda(0)));
/// let ((), n) = hgq_torch::cuda::count_syncs(|| {
///     let _ = x.sum(Kind::Float).double_value(&[]); // a read to the host
/// })?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
pub fn count_syncs<T>(f: impl FnOnce() -> T) -> Result<(T, u64)> {
    // SAFETY: a flag; the C++ side keeps its state per thread.
    if unsafe { hgq_torch_sync_watch(1) } != 0 {
        return Err(TorchError::Cuda(
            "counting synchronizations needs a libtorch with CUDA".into(),
        ));
    }
    let watch = Watch;
    let out = f();
    // SAFETY: reads this thread's counter.
    let n = unsafe { hgq_torch_sync_count() };
    drop(watch);
    Ok((out, u64::try_from(n).unwrap_or(0)))
}
