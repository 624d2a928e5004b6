//! A team of spinning threads for the short parallel loops of a training step.
//!
//! A step of the small networks HGQ trains is a few hundred passes of a few to a few hundred
//! microseconds each. rayon's idle workers sleep, and waking one costs tens of microseconds on
//! a virtual machine (`benches/RESULTS.md`), so a pass of that size split over rayon is slower
//! than on one thread. A [`Session`] keeps helper threads spinning while it is alive (a
//! training step, and a moment after), so that [`for_each`] hands them work in about a
//! microsecond: the way jax's (Eigen's) and OpenMP's pools run small loops.
//!
//! One thread leads at a time: the thread that holds the session. Everywhere else (other
//! threads, and code already running inside a [`for_each`]) [`width`] is 1 and [`for_each`]
//! runs its blocks in order on the calling thread, so library code can call it
//! unconditionally. Blocks are claimed one at a time, so a helper that is late (parked,
//! descheduled) only means the leader runs more of them: never a wrong or a lost block.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! let sum = AtomicUsize::new(0);
//! {
//!     let _session = hgq_core::team::session(2); // None on one thread: then all runs here
//!     hgq_core::team::for_each(8, &|j| {
//!         sum.fetch_add(j, Ordering::Relaxed);
//!     });
//! }
//! assert_eq!(sum.into_inner(), 28);
//! ```
use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The most helpers a team has (a session of more threads gets this many).
const MAX_HELPERS: usize = 63;

/// How long helpers keep spinning after a session ends, for the next one (the next step of
/// a training loop) to find them awake.
const LINGER: Duration = Duration::from_millis(2);

/// Spins between yields: a helper or a leader that waits yields its CPU now and then, so that
/// a machine with more busy threads than CPUs still makes progress.
const SPINS_PER_YIELD: u32 = 256;

/// A waiting thread's pause: a spin hint, and every [`SPINS_PER_YIELD`] spins a yield.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    /// Pauses once; true when this pause yielded (a moment for slower checks).
    fn pause(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(SPINS_PER_YIELD) {
            std::thread::yield_now();
            true
        } else {
            std::hint::spin_loop();
            false
        }
    }
}

/// One [`for_each`] call: blocks `0..n` of `f`, claimed one at a time.
struct Job {
    /// The caller's closure, its lifetime erased: it outlives the job (see [`for_each`]).
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
    /// Helpers with an index below this take part.
    helpers: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job {
    /// Runs blocks until none is left; a panic is kept for the leader and ends the claiming.
    fn work(&self) {
        loop {
            let j = self.next.fetch_add(1, Ordering::AcqRel);
            if j >= self.n {
                return;
            }
            // SAFETY: the leader keeps `f` alive until every helper has left the job.
            let f = unsafe { &*self.f };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(j))) {
                self.next.store(self.n, Ordering::Release);
                let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
        }
    }
}

/// What the leader and the helpers share.
struct Shared {
    /// The current job (null: none). Helpers read it only while counted in `inside`.
    job: AtomicPtr<Job>,
    /// Jobs published so far: helpers spin on this (a read of a line nobody writes in
    /// between), not on `inside`.
    seq: AtomicUsize,
    /// Helpers that may hold the job's pointer.
    inside: AtomicUsize,
    /// Whether a session is alive (helpers spin), and when the last one ended.
    on: AtomicBool,
    /// Whether a thread leads (holds the session).
    led: AtomicBool,
    /// The helper threads, to wake them.
    helpers: Mutex<Vec<Thread>>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        job: AtomicPtr::new(std::ptr::null_mut()),
        seq: AtomicUsize::new(0),
        inside: AtomicUsize::new(0),
        on: AtomicBool::new(false),
        led: AtomicBool::new(false),
        helpers: Mutex::new(Vec::new()),
    })
}

thread_local! {
    /// Threads this thread may use in [`for_each`] now: the session's width on its leader
    /// outside its own blocks, else 1.
    static WIDTH: Cell<usize> = const { Cell::new(1) };
}

/// Helper `index`'s loop: spin while a session is alive (and [`LINGER`] after), run the
/// blocks of each job it takes part in, park when idle.
fn helper(s: &'static Shared, index: usize) {
    let mut idle_since: Option<Instant> = None;
    let mut backoff = Backoff::default();
    let mut seen = s.seq.load(Ordering::Acquire);
    loop {
        let q = s.seq.load(Ordering::Acquire);
        if q != seen {
            seen = q;
            s.inside.fetch_add(1, Ordering::SeqCst);
            let p = s.job.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: while this helper is counted in `inside`, the leader does not end
                // the job it published (it clears the pointer, then waits for `inside` to be
                // 0). A job published after `seq` was read may be the one found: it runs,
                // and on its own `seq` it is found again with no block left.
                let job = unsafe { &*p };
                if index < job.helpers {
                    job.work();
                }
            }
            s.inside.fetch_sub(1, Ordering::SeqCst);
        }
        // The clock is read on yields only: a read per spin is a call per spin.
        if backoff.pause() && !s.on.load(Ordering::Acquire) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > LINGER {
                // A session's start unparks (an unpark before the park makes it return).
                std::thread::park();
                idle_since = None;
            }
        } else if s.on.load(Ordering::Relaxed) {
            idle_since = None;
        }
    }
}

/// While alive, its thread leads the team: [`for_each`] there uses up to the session's width.
/// Made by [`session`]; not `Send` (it belongs to the thread that leads).
#[derive(Debug)]
pub struct Session {
    _thread: PhantomData<*const ()>,
}

/// Makes this thread the team's leader with `threads` threads in all (itself and
/// `threads - 1` spinning helpers, at most 64 in all), until the session is dropped.
///
/// `None`, and nothing changes, where `threads < 2`, where this thread already leads or runs
/// inside a [`for_each`], or where another thread leads: [`for_each`] then runs on the
/// calling thread alone. The helpers are made on first use and kept for the process; they
/// spin (use a CPU each) while a session is alive and for 2 ms after, then sleep.
pub fn session(threads: usize) -> Option<Session> {
    // Inside a block the leader's width is 1; the team is led then, so `led` refuses.
    if threads < 2 || width() > 1 {
        return None;
    }
    let s = shared();
    if s.led.swap(true, Ordering::AcqRel) {
        return None;
    }
    let width = threads.min(MAX_HELPERS + 1);
    {
        let mut helpers = s.helpers.lock().unwrap_or_else(|e| e.into_inner());
        while helpers.len() < width - 1 {
            let index = helpers.len();
            let spawned = std::thread::Builder::new()
                .name(format!("hgq-team-{index}"))
                .spawn(move || helper(shared(), index));
            match spawned {
                Ok(h) => helpers.push(h.thread().clone()),
                // No thread to be had: a narrower team.
                Err(_) => break,
            }
        }
        s.on.store(true, Ordering::Release);
        helpers.iter().for_each(Thread::unpark);
        let width = width.min(helpers.len() + 1);
        WIDTH.with(|w| w.set(width));
    }
    Some(Session {
        _thread: PhantomData,
    })
}

impl Drop for Session {
    fn drop(&mut self) {
        WIDTH.with(|w| w.set(1));
        let s = shared();
        s.on.store(false, Ordering::Release);
        s.led.store(false, Ordering::Release);
    }
}

/// The threads a [`for_each`] on this thread may use now: the session's width on its
/// leader, 1 everywhere else (inside a block included). Callers size their blocks by it.
pub fn width() -> usize {
    WIDTH.with(Cell::get)
}

/// A length to cut `n` elements into, one part per thread of [`width`], each a whole number
/// of 64-element cache lines (of `f32`) but the last.
pub fn part_len(n: usize) -> usize {
    n.div_ceil(width()).next_multiple_of(64).max(1)
}

/// The most elements per block of an element-wise pass split over the team ([`block_len`]).
pub const BLOCK: usize = 1 << 14;

/// A length to cut an element-wise pass over `n` elements into: [`part_len`]'s, at most
/// [`BLOCK`], so that a faster thread takes more blocks (a VM's cores run at different speeds
/// from minute to minute).
pub fn block_len(n: usize) -> usize {
    part_len(n).min(BLOCK)
}

/// The blocks' length ([`block_len`]) where an element-wise pass over `n` elements splits over
/// the team: this thread leads one and `n` is at least
/// [`TEAM_MIN`](crate::kernels::TEAM_MIN); `None`: it runs on the calling thread.
pub fn split_len(n: usize) -> Option<usize> {
    (width() > 1 && n >= crate::kernels::TEAM_MIN).then(|| block_len(n))
}

/// `dst.copy_from_slice(src)` in parts over the team where this thread leads one and the copy
/// is long (a copy of memory from beyond the core's cache runs at what one core draws; two
/// draw more), else here. `dst` and `src` have the same length.
pub fn copy<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    let Some(len) = split_len(src.len()).filter(|_| dst.len() == src.len()) else {
        dst.copy_from_slice(src);
        return;
    };
    for_each_item(
        dst.chunks_mut(len).zip(src.chunks(len)).collect(),
        |(d, s)| d.copy_from_slice(s),
    );
}

/// Runs `f(0)`, ..., `f(n - 1)`, each once, on the team where this thread leads one (blocks in
/// no particular order, on any of its threads), else in order here. Returns when all have
/// run. A panic in a block ends the call with that panic once no thread runs a block of it
/// any more (the blocks not yet started are skipped).
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n < 2 || width() < 2 {
        (0..n).for_each(f);
        return;
    }
    let s = shared();
    // SAFETY: only the lifetime is erased; `Finish` keeps the job (and so `f`) alive until
    // every helper has left it, on return and on unwinding alike.
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(f)
    };
    let job = Job {
        f,
        n,
        helpers: width() - 1,
        next: AtomicUsize::new(0),
        panic: Mutex::new(None),
    };

    /// Retracts the job and waits until no helper runs a block of it.
    /// The shared state, the job, and the leader's width to restore.
    struct Finish<'a>(&'a Shared, &'a Job, usize);
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            let (s, job) = (self.0, self.1);
            // No block starts from here on.
            job.next.store(job.n, Ordering::Release);
            s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
            let mut backoff = Backoff::default();
            while s.inside.load(Ordering::SeqCst) != 0 {
                backoff.pause();
            }
            WIDTH.with(|w| w.set(self.2));
        }
    }

    s.job
        .store(std::ptr::from_ref(&job).cast_mut(), Ordering::SeqCst);
    s.seq.fetch_add(1, Ordering::Release);
    // Inside its own blocks the leader is a thread of one (a nested call runs inline).
    let width = WIDTH.with(|w| w.replace(1));
    {
        let _finish = Finish(s, &job, width);
        job.work();
        // The helpers' blocks still running end before `_finish` returns.
    }
    let panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = panic {
        resume_unwind(p);
    }
}

/// Runs `f` on each item, each once, over the team as [`for_each`] does (items are moved
/// to the thread that runs them).
pub fn for_each_item<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    // A vector of `()` holds no memory.
    map_items(items, f);
}

/// `f` of each item, in the items' order, computed over the team as [`for_each`] does.
pub fn map_items<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 || width() < 2 {
        return items.into_iter().map(f).collect();
    }
    // Each slot holds its item until a thread takes it, then the item's result.
    let slots: Vec<Mutex<Result<R, Option<T>>>> = items
        .into_iter()
        .map(|t| Mutex::new(Err(Some(t))))
        .collect();
    for_each(slots.len(), &|j| {
        let mut slot = slots[j].lock().unwrap_or_else(|e| e.into_inner());
        if let Err(item) = &mut *slot
            && let Some(t) = item.take()
        {
            // Each slot is one block: nobody else waits on its lock.
            *slot = Ok(f(t));
        }
    });
    slots
        .into_iter()
        .filter_map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Tests that lead a team run one at a time (one leader per process).
    pub(crate) fn lead() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every block runs once, whatever the width and the count.
    #[test]
    fn every_block_runs_once() {
        let _l = lead();
        for threads in [1, 2, 3] {
            let _s = session(threads);
            assert_eq!(width(), threads);
            for n in [0, 1, 2, 3, 7, 64, 1000] {
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                for_each(n, &|j| {
                    hits[j].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n {n}");
            }
        }
        assert_eq!(width(), 1);
    }

    /// A copy over the team (parts of `BLOCK` and a shorter last one) and one too short to
    /// split are `src` element for element; outside a session, too.
    #[test]
    fn copies_are_the_source() {
        let _l = lead();
        let src: Vec<u32> = (0..3 * BLOCK as u32 + 17)
            .map(|j| j.wrapping_mul(2_654_435_761))
            .collect();
        for threads in [1, 2] {
            let _s = session(threads);
            for len in [0, 5, BLOCK, src.len()] {
                let mut dst = vec![0u32; len];
                copy(&mut dst, &src[..len]);
                assert_eq!(dst, src[..len], "{threads} threads, {len}");
            }
        }
    }

    /// Blocks run on more than one thread when a session is alive (the helpers spin).
    #[test]
    fn helpers_take_blocks() {
        let _l = lead();
        let _s = session(2).expect("a session on a free team");
        let me = std::thread::current().id();
        let elsewhere = AtomicUsize::new(0);
        for _ in 0..200 {
            for_each(64, &|_| {
                if std::thread::current().id() != me {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
                // Long enough for the helper to claim blocks.
                std::thread::sleep(Duration::from_micros(20));
            });
            if elsewhere.load(Ordering::Relaxed) > 0 {
                return;
            }
        }
        panic!("no block ran on a helper");
    }

    /// A second leader, or a call inside a block, runs inline; the widths say so.
    #[test]
    fn one_leader_and_no_nesting() {
        let _l = lead();
        let _s = session(2).expect("a session on a free team");
        assert!(session(2).is_none(), "the same thread leads already");
        std::thread::scope(|t| {
            t.spawn(|| {
                assert!(session(2).is_none(), "another thread leads");
                assert_eq!(width(), 1);
            });
        });
        let inner = AtomicUsize::new(0);
        for_each(4, &|_| {
            assert_eq!(width(), 1);
            for_each(3, &|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(inner.into_inner(), 12);
    }

    /// A panic in a block reaches the caller; the team works after it.
    #[test]
    fn a_panic_reaches_the_caller() {
        let _l = lead();
        let _s = session(2).expect("a session on a free team");
        for bad in [0, 5, 63] {
            let r = catch_unwind(|| {
                for_each(64, &|j| {
                    if j == bad {
                        panic!("block {j}");
                    }
                })
            });
            let msg = r
                .expect_err("the panic")
                .downcast::<String>()
                .expect("a message");
            assert_eq!(*msg, format!("block {bad}"));
            assert_eq!(width(), 2, "still leading");
            let count = AtomicUsize::new(0);
            for_each(16, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.into_inner(), 16);
        }
    }

    /// `fold::all_finite` split over a team finds a non-finite value in any part.
    #[test]
    fn all_finite_on_a_team() {
        let _l = lead();
        let _s = session(2).expect("a session on a free team");
        let n = 3 * crate::kernels::TEAM_MIN + 5;
        let mut x = vec![1.0f32; n];
        assert!(crate::fold::all_finite(&x));
        for (at, bad) in [
            (0, f32::NAN),
            (n / 2, f32::INFINITY),
            (n - 1, f32::NEG_INFINITY),
        ] {
            x[at] = bad;
            assert!(!crate::fold::all_finite(&x), "{bad} at {at}");
            x[at] = 1.0;
        }
    }

    /// Items are moved once each; results come back in order.
    #[test]
    fn items_and_maps() {
        let _l = lead();
        let _s = session(2);
        let items: Vec<Vec<u32>> = (0..50).map(|j| vec![j; 3]).collect();
        let sums = map_items(items, |v| v.iter().sum::<u32>());
        assert_eq!(sums, (0..50).map(|j| 3 * j).collect::<Vec<_>>());
        let total = AtomicUsize::new(0);
        for_each_item((0..100usize).collect(), |j| {
            total.fetch_add(j, Ordering::Relaxed);
        });
        assert_eq!(total.into_inner(), 4950);
    }
}
