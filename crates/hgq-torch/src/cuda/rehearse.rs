//! A CUDA step rehearsed on the CPU: CPU tensors taken down the path CUDA tensors take, with
//! every read of tensor data to the host counted by what it was for.
//!
//! On a GPU each such read waits for the device to finish its queue (a synchronization: what
//! a training step must not have, issue 24). GPUs are at hand only at times, so the code that
//! decides whether a step reads anything back is checked here on any machine: inside
//! [`rehearse`], contiguous float32 CPU tensors lose their host fast paths (slices of their
//! memory, hgq-core's fused CPU pass, Adam's loop over memory), fixed-point calls take the
//! route a CUDA tensor would (the kernel's host build for [`Route::Kernel`]), and the reads
//! that CUDA tensors would make are counted. [`super::count_syncs`] counts the real
//! synchronizations on a GPU; this counts the library's own reads on any machine, by name.
//! Uploads from the host are not seen here (on the CPU there is nothing to upload).
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use super::Route;

thread_local! {
    static ROUTE: Cell<Option<Route>> = const { Cell::new(None) };
    static READS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// The reads to the host a rehearsed closure made, by what each was for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReads {
    /// How many reads of each kind (e.g. `"bit-width check"`).
    pub by_what: BTreeMap<&'static str, u64>,
}

impl HostReads {
    /// All reads.
    pub fn total(&self) -> u64 {
        self.by_what.values().sum()
    }

    /// Reads of one kind.
    pub fn of(&self, what: &str) -> u64 {
        self.by_what.get(what).copied().unwrap_or(0)
    }
}

/// Restores the thread's state before [`rehearse`] (a panic in the closure included).
struct Restore {
    route: Option<Route>,
    reads: BTreeMap<&'static str, u64>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        ROUTE.with(|r| r.set(self.route));
        let outer = std::mem::take(&mut self.reads);
        READS.with(|c| {
            let mut c = c.borrow_mut();
            // An enclosing rehearsal sees the inner one's reads too.
            let inner = std::mem::replace(&mut *c, outer);
            if self.route.is_some() {
                for (what, n) in inner {
                    *c.entry(what).or_default() += n;
                }
            }
        });
    }
}

/// Runs `f` on this thread with CPU tensors taken as CUDA tensors would be, fixed-point calls
/// on `route`, and returns what it read back to the host. Work that `f` hands to other
/// threads is neither rehearsed nor counted (a training step stays on its thread; autograd
/// runs a CPU backward on the calling thread).
///
/// ```
/// use hgq_torch::cuda::{Route, rehearse};
/// use tch::{Kind, Tensor};
/// let x = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
/// let (_, reads) = rehearse(Route::TorchOps, || x.sum(Kind::Float));
/// assert_eq!(reads.total(), 0); // a reduction stays on the device
/// ```
pub fn rehearse<T>(route: Route, f: impl FnOnce() -> T) -> (T, HostReads) {
    let restore = Restore {
        route: ROUTE.with(|r| r.replace(Some(route))),
        reads: READS.with(|c| std::mem::take(&mut *c.borrow_mut())),
    };
    let out = f();
    let by_what = READS.with(|c| c.borrow().clone());
    drop(restore);
    (out, HostReads { by_what })
}

/// The route of a rehearsal running on this thread, if any.
pub(crate) fn route() -> Option<Route> {
    ROUTE.with(Cell::get)
}

/// Counts one read to the host (while rehearsing).
pub(crate) fn note(what: &'static str) {
    if route().is_some() {
        READS.with(|c| *c.borrow_mut().entry(what).or_default() += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_counted_inside_and_the_state_comes_back() {
        assert_eq!(route(), None);
        let ((), outer) = rehearse(Route::TorchOps, || {
            note("a");
            let ((), inner) = rehearse(Route::Kernel, || {
                assert_eq!(route(), Some(Route::Kernel));
                note("b");
                note("b");
            });
            assert_eq!(inner.of("b"), 2);
            assert_eq!(inner.of("a"), 0);
            assert_eq!(route(), Some(Route::TorchOps));
        });
        assert_eq!(outer.of("a"), 1);
        assert_eq!(outer.of("b"), 2);
        assert_eq!(outer.total(), 3);
        assert_eq!(route(), None);
        note("c"); // not rehearsing: not counted anywhere
        let ((), after) = rehearse(Route::TorchOps, || {});
        assert_eq!(after.total(), 0);
    }
}
