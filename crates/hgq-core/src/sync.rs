//! Quantizer state kept identical across data-parallel processes.
//!
//! A WRAP quantizer tracks the integer bits its data needs (hgq2's `get_minimal_i`, and the
//! sign bits while tracing): with the data split over processes, each process sees its shard
//! only. A [`StateSync`] installed on a thread (an all-reduce over the processes, e.g.
//! hgq-torch's process group) replaces each quantizer's per-bit-width absolute maxima (and
//! sign flags) by their maximum over the processes before they become state, so that every
//! process tracks exactly what one process would on the whole batch. Without one, nothing
//! changes. A training step that wants one collective for all of its quantizers, not one
//! each, runs its forward under [`defer`] and reduces their pending maxima itself.
//!
//! ```
//! use std::sync::Arc;
//! use hgq_core::sync::{StateSync, install};
//!
//! /// Pretends another process saw twice the values.
//! struct Doubling;
//! impl StateSync for Doubling {
//!     fn max(&self, values: &mut [f64]) -> Result<(), String> {
//!         values.iter_mut().for_each(|v| *v *= 2.0);
//!         Ok(())
//!     }
//! }
//! let guard = install(Arc::new(Doubling));
//! // Quantizer calls on this thread now see the synchronized maxima.
//! drop(guard); // and from here on their own again
//! ```
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::error::CoreError;
use crate::real::Real;

/// An all-reduce with MAX over the processes of a data-parallel group.
pub trait StateSync {
    /// Replaces each value by its maximum over every process (all processes call this with
    /// the same number of values, in the same order); an error (a process gone, a timeout)
    /// is returned as its message.
    fn max(&self, values: &mut [f64]) -> Result<(), String>;

    /// The sync as [`Any`](std::any::Any), for a backend that reduces its own tensors with it
    /// (where they live: a device all-reduce instead of a read to the host); `None` by
    /// default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

thread_local! {
    static SYNC: RefCell<Option<Arc<dyn StateSync>>> = const { RefCell::new(None) };
    static DEFER: Cell<bool> = const { Cell::new(false) };
}

/// Installs `sync` on this thread until the guard is dropped (the one before is restored).
#[must_use = "the sync is uninstalled when the guard is dropped"]
pub fn install(sync: Arc<dyn StateSync>) -> SyncGuard {
    let previous = SYNC.with(|s| s.replace(Some(sync)));
    SyncGuard { previous }
}

/// Keeps a [`StateSync`] installed; dropping it restores the one before.
pub struct SyncGuard {
    previous: Option<Arc<dyn StateSync>>,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SYNC.with(|s| *s.borrow_mut() = previous);
    }
}

impl std::fmt::Debug for SyncGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncGuard")
    }
}

/// Uninstalls this thread's sync until the guard is dropped: for quantizers whose inputs are
/// the same on every process (a layer's kernel and bias), whose tracking needs no collective.
#[must_use = "the sync comes back when the guard is dropped"]
pub fn suspend() -> SyncGuard {
    let previous = SYNC.with(|s| s.replace(None));
    SyncGuard { previous }
}

/// The sync installed on this thread, if any.
pub fn current() -> Option<Arc<dyn StateSync>> {
    SYNC.with(|s| s.borrow().clone())
}

/// Whether a sync is installed on this thread.
pub fn installed() -> bool {
    SYNC.with(|s| s.borrow().is_some())
}

/// Defers the collectives of the KIF quantizers' WRAP tracking in training on this thread
/// until the guard is dropped, while a sync is installed.
///
/// A KIF quantizer's output does not depend on the integer bits it tracks (a training call
/// rounds to its `f` and does not wrap), only its state does, and its bit widths, which the
/// EBOPs read. So a training step can run every layer's forward first, each tracking quantizer
/// keeping its own maxima as pending
/// ([`FixedQuantizer::pending_maxima`](crate::quantizer::FixedQuantizer::pending_maxima)),
/// reduce all of them in one collective, and hand each quantizer its part
/// ([`FixedQuantizer::finish_tracking`](crate::quantizer::FixedQuantizer::finish_tracking))
/// before the EBOPs: one collective per step instead of one per layer, with the same state.
/// KBI quantizers (whose fractional bits are `b - i`) and tracing still reduce at once.
///
/// ```
/// use std::sync::Arc;
/// use hgq_core::mapper::Axes;
/// use hgq_core::quantizer::{Cpu, CpuQuantizer, KifSpec, QuantizerSpec};
/// use hgq_core::sync::{self, StateSync};
/// use hgq_core::{CallMode, OverflowMode, RoundMode, TensorRef};
///
/// /// Another process, which saw values up to 6.
/// struct Other;
/// impl StateSync for Other {
///     fn max(&self, values: &mut [f64]) -> Result<(), String> {
///         values.iter_mut().for_each(|v| *v = v.max(6.0));
///         Ok(())
///     }
/// }
/// // One bit width per feature (shared over the batch).
/// let spec = KifSpec::new(1.0, 0.0, 2.0, RoundMode::Rnd, OverflowMode::Wrap)
///     .with_axes(Axes::Homogeneous(vec![0]));
/// let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)])?;
/// let (x, mut y) = ([0.5f32, -1.0, 1.5, 0.25], [0.0f32; 4]);
/// let _sync = sync::install(Arc::new(Other));
/// {
///     let _defer = sync::defer();
///     q.forward(TensorRef::new(&x, &[2, 2])?, CallMode::Training, &mut y)?;
/// }
/// assert_eq!(y, [0.5, -1.0, 1.5, 0.25]); // this process's output, whatever the others saw
/// // The step reduces every quantizer's pending maxima in one collective, then hands them out.
/// let mut maxima = q.inner().pending_maxima().unwrap_or_default().to_vec();
/// Other.max(&mut maxima)?;
/// q.inner_mut().finish_tracking(&Cpu::<f32>::new(), &maxima)?;
/// assert!(q.inner().pending_maxima().is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "tracking reduces at once again when the guard is dropped"]
pub fn defer() -> DeferGuard {
    DeferGuard {
        previous: DEFER.with(|d| d.replace(true)),
    }
}

/// Keeps [`defer`] in force; dropping it restores what was before.
#[derive(Debug)]
pub struct DeferGuard {
    previous: bool,
}

impl Drop for DeferGuard {
    fn drop(&mut self) {
        DEFER.with(|d| d.set(self.previous));
    }
}

/// Whether a KIF quantizer's training tracking leaves its maxima pending ([`defer`] with a
/// sync installed).
pub(crate) fn deferring() -> bool {
    DEFER.with(Cell::get) && installed()
}

/// `values`, each the maximum over the processes when a sync is installed.
pub(crate) fn max_over_processes<C: Real>(values: Vec<C>) -> Result<Vec<C>, CoreError> {
    let Some(sync) = SYNC.with(|s| s.borrow().clone()) else {
        return Ok(values);
    };
    let mut v: Vec<f64> = values.into_iter().map(Real::to_f64).collect();
    sync.max(&mut v).map_err(CoreError::Collective)?;
    Ok(v.into_iter().map(C::from_f64).collect())
}

/// `flags`, each true where any process has it true, when a sync is installed.
pub(crate) fn any_over_processes(flags: Vec<bool>) -> Result<Vec<bool>, CoreError> {
    if !installed() {
        return Ok(flags);
    }
    let v: Vec<f64> = flags.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
    Ok(max_over_processes(v)?
        .into_iter()
        .map(|v| v > 0.5)
        .collect())
}
