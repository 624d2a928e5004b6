//! Checks of device values, read when the host next looks instead of at every step.
//!
//! Some errors depend on values that live on a device: an input of a tracking WRAP quantizer
//! that is not finite, a gradient given to Adam that is not finite, bit widths that hgq-core
//! refuses in a call of our CUDA kernel (which checks them as it runs). Knowing at once would mean
//! waiting for the device at every call (a synchronization per quantizer and step). On tensors
//! that are not in host memory (CUDA, or a [`crate::cuda::rehearse`]d step) these checks are
//! computed on the device and kept, per thread, as one flag per kind of check; [`check`] reads
//! them all at once and returns the first error. Meanwhile nothing is corrupted: a WRAP
//! quantizer keeps the integer bits of every bit width whose data was not finite, and Adam
//! leaves every variable and moment as it was in a step whose gradients were not all finite
//! (the step is still counted).
//!
//! Call [`check`] where the host reads anyway, e.g. with the loss at the end of an epoch;
//! `trace_minmax` checks before and after tracing (an error found while tracing restores the
//! variables, as any error of it does). On host tensors these checks run at once.
//!
//! ```
//! // Nothing pending on a thread that ran nothing on a device.
//! hgq_torch::deferred::check()?;
//! assert_eq!(hgq_torch::deferred::pending(), 0);
//! # Ok::<(), hgq_torch::TorchError>(())
//! ```
use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

use crate::{Result, TorchError};

/// What a deferred check was for (each is one error when its flag is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// An input of a WRAP quantizer that tracks its integer bits was not finite.
    TrackingInput,
    /// A gradient given to Adam was not finite.
    AdamGradient,
    /// Bit widths that hgq-core refuses reached our CUDA kernel (it checks them itself).
    BitWidths,
}

impl Check {
    fn error(self) -> TorchError {
        match self {
            Check::TrackingInput => hgq_core::CoreError::InvalidParameter {
                name: "x",
                value: f64::NAN,
                why: "a WRAP quantizer tracking its integer bits needs finite inputs \
                      (seen on the device after the call; the integer bits of the bit widths \
                      it covers were kept)",
            }
            .into(),
            Check::BitWidths => TorchError::Invalid {
                what: "bit widths",
                why: "k not 0 or 1, an i or f that is not finite (or not an integer where \
                      integers are given), or a type wider than float64 holds: seen by the \
                      kernel on the device (the call's results are not to be used)"
                    .into(),
            },
            Check::AdamGradient => TorchError::NonFinite(
                "a gradient given to Adam (seen on the device after the step, which left every \
                 variable as it was)",
            ),
        }
    }
}

/// One kind of check on one device: true once any call failed it.
struct Pending {
    check: Check,
    device: Device,
    failed: Tensor,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `failed` (a boolean tensor of one element, true where the check failed) for
/// [`check`], merged on its device with the earlier ones of the same kind.
pub(crate) fn defer(check: Check, failed: &Tensor) -> Result<()> {
    let failed = failed.f_reshape([1])?.f_to_kind(Kind::Bool)?;
    let device = failed.device();
    PENDING.with(|p| -> Result<()> {
        let mut p = p.borrow_mut();
        match p
            .iter_mut()
            .find(|q| q.check == check && q.device == device)
        {
            Some(q) => q.failed = q.failed.f_logical_or(&failed)?,
            None => p.push(Pending {
                check,
                device,
                failed,
            }),
        }
        Ok(())
    })
}

/// Runs `f` with this thread's pending checks set aside, and returns its result with the
/// check of what `f` left (the checks pending before are pending again after).
pub(crate) fn isolated<R>(f: impl FnOnce() -> R) -> (R, Result<()>) {
    let outer = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let r = f();
    let inner = check();
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let mine = std::mem::replace(&mut *p, outer);
        p.extend(mine);
    });
    (r, inner)
}

/// How many kinds of check are waiting on this thread.
pub fn pending() -> usize {
    PENDING.with(|p| p.borrow().len())
}

/// Reads every check kept on this thread (one read per device, which waits for the device),
/// forgets them, and returns the error of the first that failed.
pub fn check() -> Result<()> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let mut devices: Vec<Device> = Vec::new();
    for q in &pending {
        if !devices.contains(&q.device) {
            devices.push(q.device);
        }
    }
    for device in devices {
        let on: Vec<&Pending> = pending.iter().filter(|q| q.device == device).collect();
        let flags: Vec<Tensor> = on.iter().map(|q| q.failed.shallow_clone()).collect();
        let read = crate::host::read_bools(&Tensor::f_cat(&flags, 0)?, "deferred checks")?;
        if let Some((q, _)) = on.iter().zip(read).find(|(_, failed)| *failed) {
            return Err(q.check.error());
        }
    }
    Ok(())
}
