//! Output buffers recycled between calls on one thread.
//!
//! A training step makes the same buffers every time: each pass's output, each gradient. Made
//! new, a buffer costs the allocator's bookkeeping (large chunks split and coalesced) and, for a
//! zeroed one, a pass of stores before the kernel stores every element again. A buffer given
//! back ([`give`]) is handed out again by the next request of its length on the same thread
//! ([`elements`], [`reals`], [`indices`]), its old values in it: only outputs that are written
//! whole come from here. A thread keeps at most 256 buffers and 256 MiB per element type, those
//! kept longest freed first. [`poison`] makes every buffer handed out hold NaN from then on, so that
//! a test sees any element an output left unwritten.
//!
//! ```
//! use hgq_core::scratch;
//! let mut y: Vec<f32> = scratch::elements(4096);
//! y.iter_mut().enumerate().for_each(|(j, v)| *v = j as f32); // written whole
//! scratch::give(y);
//! let again: Vec<f32> = scratch::elements(4096); // the same memory, its values unspecified
//! assert_eq!(again.len(), 4096);
//! ```
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::real::{Element, Real};

/// Buffers below this many elements go to the allocator: for them it is fast, and zeroing them
/// costs little.
const MIN_LEN: usize = 1 << 10;

/// Buffers kept per element type and thread: a step's outputs for two batch sizes (a data
/// set's last batch is shorter) on a network of a few dozen layers.
const MAX_KEPT: usize = 256;

/// Bytes kept per element type and thread: a buffer that would pass it is freed instead.
const MAX_BYTES: usize = 256 << 20;

static POISON: AtomicBool = AtomicBool::new(false);

/// From now on, every buffer [`elements`] and [`reals`] hand out (recycled or new) holds NaN:
/// for tests, which then see any output element a call left unwritten. There is no way back
/// (tests of one process run in parallel).
pub fn poison() {
    POISON.store(true, Ordering::Relaxed);
}

/// The buffers of one element type kept on one thread, by length, each with the time it was
/// given (a count of gives).
struct Kept<T> {
    by_len: HashMap<usize, Vec<(u64, Vec<T>)>>,
    count: usize,
    bytes: usize,
    clock: u64,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            by_len: HashMap::new(),
            count: 0,
            bytes: 0,
            clock: 0,
        }
    }
}

impl<T> Kept<T> {
    /// The last buffer given of exactly `len` (a step asks for the same lengths each time; one
    /// kept for a longer request would be cut and lost to it).
    fn take(&mut self, len: usize) -> Option<Vec<T>> {
        let list = self.by_len.get_mut(&len)?;
        let (_, v) = list.pop()?;
        if list.is_empty() {
            self.by_len.remove(&len);
        }
        self.count -= 1;
        self.bytes -= v.capacity() * size_of::<T>();
        Some(v)
    }

    fn keep(&mut self, v: Vec<T>) {
        let bytes = v.capacity() * size_of::<T>();
        while self.count > 0 && (self.count >= MAX_KEPT || self.bytes + bytes > MAX_BYTES) {
            self.free_oldest();
        }
        self.clock += 1;
        self.count += 1;
        self.bytes += bytes;
        self.by_len
            .entry(v.len())
            .or_default()
            .push((self.clock, v));
    }

    /// Frees the buffer kept longest (each length's list is in the order given: its first).
    fn free_oldest(&mut self) {
        let oldest = self
            .by_len
            .iter()
            .filter_map(|(&len, list)| list.first().map(|(t, _)| (*t, len)))
            .min();
        let Some((_, len)) = oldest else {
            return;
        };
        if let Some(list) = self.by_len.get_mut(&len) {
            let (_, v) = list.remove(0);
            self.count -= 1;
            self.bytes -= v.capacity() * size_of::<T>();
            if list.is_empty() {
                self.by_len.remove(&len);
            }
        }
    }
}

thread_local! {
    static KEPT: RefCell<Vec<(TypeId, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// `f` on this thread's buffers of `T` (none kept where the thread is being torn down).
fn with_kept<T: Copy + 'static, R>(f: impl FnOnce(&mut Kept<T>) -> R) -> Option<R> {
    KEPT.try_with(|k| {
        let mut k = k.try_borrow_mut().ok()?;
        let id = TypeId::of::<T>();
        let j = match k.iter().position(|(t, _)| *t == id) {
            Some(j) => j,
            None => {
                k.push((id, Box::new(Kept::<T>::default())));
                k.len() - 1
            }
        };
        k[j].1.downcast_mut::<Kept<T>>().map(f)
    })
    .ok()
    .flatten()
}

/// A buffer of `len` values: the last kept one of exactly `len` (a step asks for the same
/// sizes every time; a larger one cut down would be lost to its own size), else a new one of
/// `zero`s; all `nan` where poisoned.
fn take<T: Copy + 'static>(len: usize, zero: T, nan: T) -> Vec<T> {
    let poisoned = POISON.load(Ordering::Relaxed);
    let kept = if len < MIN_LEN {
        None
    } else {
        with_kept(|k: &mut Kept<T>| k.take(len)).flatten()
    };
    match kept {
        Some(mut v) => {
            if poisoned {
                v.fill(nan);
            }
            v
        }
        None => vec![if poisoned { nan } else { zero }; len],
    }
}

/// A buffer of `len` storage values for an output that is written whole: recycled (its values
/// unspecified: stale or zero) or new (zeros); NaN where [`poison`]ed.
pub fn elements<T: Element>(len: usize) -> Vec<T> {
    take(len, T::default(), T::from_c(T::C::from_f64(f64::NAN)))
}

/// [`elements`] for the compute types (gradients of bit widths, sums).
pub fn reals<C: Real>(len: usize) -> Vec<C> {
    take(len, C::ZERO, C::from_f64(f64::NAN))
}

/// [`elements`] for indices (offsets of maxima, positions): recycled or new (zeros);
/// `u32::MAX` in every element where [`poison`]ed.
pub fn indices(len: usize) -> Vec<u32> {
    take(len, 0, u32::MAX)
}

/// Keeps `v` for a later request of its length on this thread (small buffers are freed; past
/// the thread's limits, those kept longest are freed first).
pub fn give<T: Copy + 'static>(v: Vec<T>) {
    let bytes = v.capacity() * size_of::<T>();
    if v.len() < MIN_LEN || bytes > MAX_BYTES {
        return;
    }
    with_kept(move |k: &mut Kept<T>| k.keep(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_handed_out_again_for_its_length_only() {
        let v: Vec<f32> = elements(5000);
        let p = v.as_ptr();
        give(v);
        // Another length, another type: buffers of their own.
        let shorter: Vec<f32> = elements(4000);
        let other: Vec<f64> = reals(5000);
        let offsets = indices(5000);
        assert_ne!(shorter.as_ptr(), p);
        assert_ne!(other.as_ptr().cast::<f32>(), p);
        assert_ne!(offsets.as_ptr().cast::<f32>(), p);
        assert!(offsets.iter().all(|&j| j == 0 || j == u32::MAX));
        assert!(shorter.iter().all(|&x| x == 0.0 || x.is_nan()));
        let again: Vec<f32> = elements(5000);
        assert_eq!((again.as_ptr(), again.len()), (p, 5000));
    }

    #[test]
    fn the_buffers_kept_longest_go_first() {
        // Lengths no other test on this thread asks for.
        let lens: Vec<usize> = (0..=MAX_KEPT).map(|j| 7000 + j).collect();
        let ptrs: Vec<*const f32> = lens
            .iter()
            .map(|&n| {
                let v: Vec<f32> = elements(n);
                let p = v.as_ptr();
                give(v);
                p
            })
            .collect();
        // The first one given was freed to keep MAX_KEPT; the last is kept.
        let last: Vec<f32> = elements(lens[MAX_KEPT]);
        assert_eq!(last.as_ptr(), ptrs[MAX_KEPT]);
        with_kept(|k: &mut Kept<f32>| {
            assert!(k.count <= MAX_KEPT);
            assert!(!k.by_len.contains_key(&lens[0]));
            assert!(k.by_len.contains_key(&lens[1]));
        });
    }

    #[test]
    fn poisoned_buffers_hold_nan() {
        poison();
        let mut v: Vec<f64> = reals(3000);
        assert!(v.iter().all(|x| x.is_nan()));
        v.fill(1.0);
        give(v);
        let v: Vec<f64> = reals(3000);
        assert!(v.iter().all(|x| x.is_nan()));
        let h: Vec<half::bf16> = elements(2048);
        assert!(h.iter().all(|x| x.is_nan()));
        let mut j = indices(2048);
        assert!(j.iter().all(|&j| j == u32::MAX));
        j.fill(3);
        give(j);
        assert!(indices(2048).iter().all(|&j| j == u32::MAX));
    }
}
