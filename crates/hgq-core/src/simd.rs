//! Plain loops compiled for the widest vector instructions the CPU has, chosen at run time.
//!
//! The crates are built for the baseline of their target (SSE2 on x86-64), so a plain loop
//! runs four float32 lanes at a time where the CPU has sixteen, and a rounding such as
//! `round_ties_even` is a call into libm. [`widest`] runs a closure inside a function compiled
//! for AVX-512 (or AVX2): the closure, inlined there, vectorizes at that width. The results are
//! the same bits on every level: Rust contracts no multiply and add into a fused one, and
//! vector IEEE operations round as scalar ones. (The quantizers' kernels have their own
//! dispatch, [`crate::kernels`]; this is for the small loops around them.)
//!
//! ```
//! let x = [1.5f32, -2.0, 3.25];
//! let sum: f32 = hgq_core::simd::widest(|| x.iter().map(|v| v * v).sum());
//! assert_eq!(sum, 1.5 * 1.5 + 4.0 + 3.25 * 3.25);
//! ```

/// A level of vector instructions that [`at`] can run a closure at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The target's baseline (what the crate is built for).
    Baseline,
    /// x86-64 with AVX2 (eight float32 lanes).
    Avx2,
    /// x86-64 with AVX-512F (sixteen float32 lanes).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// Whether this CPU runs the level.
    pub fn available(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest level this CPU runs, found once per process: the loops [`widest`] runs
    /// are as short as a row of a kernel, so a few feature checks per call would show.
    pub fn best() -> Level {
        use std::sync::atomic::{AtomicU8, Ordering};
        // 0: not looked at yet; else 1 + the level's index in `ALL`.
        static BEST: AtomicU8 = AtomicU8::new(0);
        match BEST.load(Ordering::Relaxed) {
            0 => {
                let best = Level::ALL
                    .into_iter()
                    .rev()
                    .find(|l| l.available())
                    .unwrap_or(Level::Baseline);
                let index = Level::ALL.iter().position(|&l| l == best).unwrap_or(0);
                BEST.store(index as u8 + 1, Ordering::Relaxed);
                best
            }
            n => Level::ALL[usize::from(n - 1).min(Level::ALL.len() - 1)],
        }
    }
}

/// `f()` compiled for the widest level this CPU has ([`Level::best`]).
#[inline(always)]
pub fn widest<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: `best` is a level this CPU runs.
    unsafe { run(Level::best(), f) }
}

/// `f()` compiled for `level`, or `f` back where this CPU does not run it.
#[inline(always)]
pub fn at<R, F: FnOnce() -> R>(level: Level, f: F) -> Result<R, F> {
    if !level.available() {
        return Err(f);
    }
    // SAFETY: the CPU has the level's features (checked above).
    Ok(unsafe { run(level, f) })
}

/// `f()` compiled for `level`.
///
/// # Safety
/// The CPU runs `level`.
#[inline(always)]
unsafe fn run<R>(level: Level, f: impl FnOnce() -> R) -> R {
    match level {
        Level::Baseline => f(),
        // SAFETY: as the caller promises.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { avx2(f) },
        // SAFETY: as the caller promises.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { avx512(f) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Defines a function whose body runs compiled for AVX2 where the CPU has it (eight float32
/// lanes: loops over `[f32; 8]` chunks become whole vectors, selects become blends), and for
/// the baseline elsewhere.
///
/// [`widest`] and [`at`] take a closure, which the compiler inlines into their vector-level
/// functions only while it is small: a large body stays a function of its own, compiled for
/// the baseline (four lanes, selects as branches). The body given here is an `#[inline(always)]`
/// function called from a `#[target_feature(enable = "avx2")]` one, so it is always compiled
/// at that level. Arguments are plain names with their types (no patterns, no `self`).
///
/// ```
/// hgq_core::simd::avx2_fn! {
///     /// Each lane's larger value.
///     fn max_lanes(a: &[[f32; 8]], b: &[[f32; 8]], out: &mut [[f32; 8]]) {
///         for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
///             for j in 0..8 {
///                 o[j] = if x[j] > y[j] { x[j] } else { y[j] };
///             }
///         }
///     }
/// }
/// let mut out = [[0.0; 8]];
/// max_lanes(&[[1.0; 8]], &[[2.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0]], &mut out);
/// assert_eq!(out, [[2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0]]);
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __simd_avx2_fn {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if $crate::simd::Level::best() >= $crate::simd::Level::Avx2 {
                // SAFETY: the CPU has AVX2.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

#[doc(inline)]
pub use crate::__simd_avx2_fn as avx2_fn;

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop run at each level this CPU has gives the baseline's bits (it runs at all: a
    /// level that did not call the closure would return other values); a level the CPU lacks
    /// hands the closure back.
    #[test]
    fn every_level_gives_the_baselines_bits() {
        let x: Vec<f32> = (0..1000).map(|j| (j as f32 * 0.37).sin() * 9.0).collect();
        let work = || -> Vec<u32> {
            x.iter()
                .map(|&v| {
                    ((v * 1.5 + 0.25) / (v.abs() + 1.0))
                        .sqrt()
                        .max(0.0)
                        .to_bits()
                })
                .collect()
        };
        let plain = work();
        let mut ran = 0;
        for level in Level::ALL {
            match at(level, work) {
                Ok(bits) => {
                    assert_eq!(bits, plain, "{level:?}");
                    ran += 1;
                }
                Err(_) => assert!(!level.available(), "{level:?}"),
            }
        }
        assert!(ran >= 1);
        assert_eq!(widest(work), plain);
        let best = Level::best();
        assert!(best.available());
        assert!(Level::ALL.iter().all(|&l| l <= best || !l.available()));
        assert_eq!(Level::best(), best, "the same on every call");
    }
}
