//! Which code runs the element bodies: the paths ([`Path`]) and SIMD levels ([`SimdLevel`])
//! a caller can choose, the rayon pool, and how a job runs at a level.
//!
//! A job (a piece's pass, the up-front derivation, ...) is a [`pulp::WithSimd`] whose body uses
//! no SIMD token, only the target features its level enables: LLVM vectorizes the branch-free
//! loops at that width, and the scalar level is the same body without them ([`SimdJob`]).
//! [`with_path`] runs a job on a path, never inlined, one copy per job type. Forward jobs run
//! at the widest level the CPU has, and so do float32 gradient jobs; float64 gradient jobs at
//! most at x86-64-v3 ([`ForwardJob`], [`GradientJob`]).
use super::check::Verdict;
use super::loops::Job;
use super::op::ElemOp;
use crate::real::Real;

/// How many threads a pass may use, separate from the SIMD level its element bodies run at
/// ([`Path`]), as faer's `Par`. Results are the same bits whatever the choice: the split into
/// segments and the order of every sum are fixed by the shapes, not by the threads.
///
/// ```
/// use hgq_core::{FixedPoint, OverflowMode, Par, RoundMode};
/// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap().with_par(Par::Seq);
/// assert_eq!(q.par(), Par::Seq);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    /// One thread: the caller's.
    Seq,
    /// Rayon: `0` for the current pool (the global one, or the one whose `install` the call
    /// runs in), `n` for a pool of `n` threads (made once per `n` and kept).
    Rayon(usize),
}

impl Default for Par {
    fn default() -> Self {
        Par::Rayon(0)
    }
}

impl Par {
    /// Whether a pass may split its work over threads.
    pub(crate) fn splits(self) -> bool {
        self != Par::Seq
    }

    /// Runs `f` where this `Par` says: in the pool of `n` threads for `Rayon(n)`, else here.
    pub(crate) fn install<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Par::Rayon(n) if n > 0 => match pool(n) {
                Some(p) => p.install(f),
                // A pool that cannot be made (no threads left): the current one.
                None => f(),
            },
            _ => f(),
        }
    }
}

/// The pool of `n` threads, made on first use and kept.
fn pool(n: usize) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    type Pools = std::sync::Mutex<Vec<(usize, std::sync::Arc<rayon::ThreadPool>)>>;
    static POOLS: std::sync::OnceLock<Pools> = std::sync::OnceLock::new();
    let pools = POOLS.get_or_init(Default::default);
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = pools.iter().find(|(m, _)| *m == n) {
        return Some(p.clone());
    }
    let p = std::sync::Arc::new(thread_pool(n).ok()?);
    pools.push((n, p.clone()));
    Some(p)
}

/// Which code path runs the element bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    /// The best SIMD level of this CPU (pulp's runtime dispatch), in parallel. With the
    /// `avx512` feature, on a CPU with AVX-512, forward passes and float32 gradient passes run
    /// at x86-64-v4, float64 gradient passes at v3 (see [`SimdLevel::V4`]).
    #[default]
    Simd,
    /// Plain scalar code: the reference path (on as many threads as the call's [`Par`] says).
    Scalar,
    /// A given pulp SIMD level, in parallel like [`Path::Simd`] (for tests: every level must
    /// give the bits of [`Path::Scalar`]). A level this CPU lacks runs as [`Path::Simd`].
    Level(SimdLevel),
}

/// The SIMD levels the kernels are compiled for, which a [`Path::Level`] can force.
///
/// Each level is a copy of every kernel in the build, so there are only the ones that
/// [`Path::Simd`] dispatches to: the scalar code (CPUs without AVX2, and other architectures
/// where pulp has no level), x86-64-v3 and, with the `avx512` feature, x86-64-v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// Plain scalar code (what LLVM makes of the loops without target features).
    Scalar,
    /// x86-64-v3 (AVX2 and FMA, 256-bit vectors): what [`Path::Simd`] runs on a CPU with
    /// AVX2 (with the `avx512` feature on one with AVX-512: for float64 gradient passes).
    V3,
    /// x86-64-v4 (AVX-512 F/BW/CD/DQ/VL, 512-bit vectors) for forward passes and float32
    /// gradient passes, x86-64-v3 for float64 gradient passes: what [`Path::Simd`] runs on a
    /// CPU with AVX-512, with the `avx512` feature.
    V4,
}

impl SimdLevel {
    /// Every level.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::V3, SimdLevel::V4];

    /// Whether this build has the level's code and this CPU runs it (a [`Path::Level`] of a
    /// level that is not available runs as [`Path::Simd`]).
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            SimdLevel::V3 => pulp::x86::V3::try_new().is_some(),
            #[cfg(all(feature = "avx512", any(target_arch = "x86", target_arch = "x86_64")))]
            SimdLevel::V4 => pulp::x86::V4::try_new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels [`SimdLevel::is_available`] finds.
    pub fn available() -> Vec<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .filter(|l| l.is_available())
            .collect()
    }
}

/// A rayon pool of `threads` threads (0: rayon's default, one per core). Kernels called inside
/// its `install` run on that many threads.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build()
}

/// Runs a pulp job on a path, through the copy of the dispatch of the job's shard
/// ([`SimdJob::SHARD`]).
///
/// Why shards: rustc places every instance of a generic function in the codegen unit of the
/// module that defines it. With one dispatch (pulp's `vectorize`, or one function of ours)
/// every job's SIMD body sat in one unit, most of the crate's code, which LLVM compiles on one
/// core while the others wait. Each shard is a module of its own with the same functions
/// (the `shard!` macro below), so the bodies fall into several units that compile in
/// parallel. The match is on a constant of the job: only its shard's copy is instantiated.
#[inline(always)]
pub(super) fn with_path<J: SimdJob>(job: J, path: Path) -> J::Output {
    match J::SHARD {
        0 => shard0::with_path(job, path),
        1 => shard1::with_path(job, path),
        2 => shard2::with_path(job, path),
        _ => shard3::with_path(job, path),
    }
}

/// A job's body without any target features, the levels it may run at, and its shard. The
/// element bodies do not use the SIMD token, only the target features its level enables, so
/// the scalar level is the plain body: pulp's own `Scalar` dispatch would be a second copy of
/// the same code.
pub(super) trait SimdJob: pulp::WithSimd + Sized {
    /// Which copy of the dispatch compiles the job's bodies (0 to 3; see [`with_path`]).
    const SHARD: usize;

    /// Whether [`Path::Simd`] may run the job at x86-64-v4 (with the `avx512` feature), else
    /// at most at x86-64-v3. A job kept off v4 is not compiled for it.
    #[cfg_attr(not(feature = "avx512"), allow(dead_code))]
    const WIDE: bool;

    fn run_scalar(self) -> Self::Output;
}

/// The shard of a job of compute type `C`: the two float kinds (and forward against gradient
/// jobs, `gradient`) apart, so that the four shards' bodies are of like sizes.
pub(super) const fn shard_of<C: Real>(gradient: bool) -> usize {
    (if C::DIGITS <= 24 { 0 } else { 1 }) + if gradient { 2 } else { 0 }
}

/// A copy of the dispatch of [`with_path`]: [`Path::Scalar`] runs the plain body,
/// [`Path::Simd`] the widest level the CPU has (x86-64-v4 where it has AVX-512, the `avx512`
/// feature is on and the job is [`SimdJob::WIDE`], else v3, else the plain body; elsewhere
/// pulp's dispatch), [`SimdLevel::V3`] v3 where the CPU has it, else as [`Path::Simd`];
/// [`SimdLevel::V4`] as [`Path::Simd`].
macro_rules! shard {
    ($m:ident) => {
        mod $m {
            use super::{Path, SimdJob, SimdLevel};

            /// Never inlined: one copy per job type, called per piece, keeps the functions
            /// LLVM optimizes small.
            #[inline(never)]
            pub(super) fn with_path<J: SimdJob>(job: J, path: Path) -> J::Output {
                match path {
                    Path::Scalar | Path::Level(SimdLevel::Scalar) => job.run_scalar(),
                    Path::Simd | Path::Level(SimdLevel::V4) => simd(job),
                    Path::Level(SimdLevel::V3) => v3_or_simd(job),
                }
            }

            #[inline(always)]
            fn v3_or_simd<J: SimdJob>(job: J) -> J::Output {
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                if let Some(s) = pulp::x86::V3::try_new() {
                    // SAFETY: `try_new` found every feature `v3` enables on this CPU.
                    return unsafe { v3(s, job) };
                }
                simd(job)
            }

            #[inline(always)]
            fn simd<J: SimdJob>(job: J) -> J::Output {
                #[cfg(all(feature = "avx512", any(target_arch = "x86", target_arch = "x86_64")))]
                if J::WIDE
                    && let Some(s) = pulp::x86::V4::try_new()
                {
                    // SAFETY: `try_new` found every feature `v4` enables on this CPU.
                    return unsafe { v4(s, job) };
                }
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                {
                    match pulp::x86::V3::try_new() {
                        // SAFETY: `try_new` found every feature `v3` enables on this CPU.
                        Some(s) => unsafe { v3(s, job) },
                        None => job.run_scalar(),
                    }
                }
                #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
                {
                    pulp::Arch::new().dispatch(job)
                }
            }

            /// The job's body at x86-64-v3: pulp's `V3` features enabled here (pulp's own
            /// `vectorize` would put the body in pulp's module, one unit for every shard).
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            #[target_feature(enable = "sse,sse2,fxsr,sse3,ssse3,sse4.1,sse4.2,popcnt")]
            #[target_feature(enable = "avx,avx2,bmi1,bmi2,fma,lzcnt")]
            unsafe fn v3<J: pulp::WithSimd>(s: pulp::x86::V3, job: J) -> J::Output {
                job.with_simd(s)
            }

            /// The job's body at x86-64-v4 (pulp's `V4` features), as `v3`.
            #[cfg(all(feature = "avx512", any(target_arch = "x86", target_arch = "x86_64")))]
            #[target_feature(enable = "sse,sse2,fxsr,sse3,ssse3,sse4.1,sse4.2,popcnt")]
            #[target_feature(enable = "avx,avx2,bmi1,bmi2,fma,lzcnt")]
            #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512dq,avx512vl")]
            unsafe fn v4<J: pulp::WithSimd>(s: pulp::x86::V4, job: J) -> J::Output {
                job.with_simd(s)
            }
        }
    };
}
shard!(shard0);
shard!(shard1);
shard!(shard2);
shard!(shard3);

/// A piece's pass without gradients: [`Path::Simd`] runs it at the widest level.
struct ForwardJob<'a, C, Op>(Job<'a, C, Op>);

/// A piece's pass with gradients: at x86-64-v4 for float32, at most at x86-64-v3 for float64
/// (also for [`SimdLevel::V4`]). 512-bit vectors gain nothing on large tensors that stream
/// from memory, but a good part of a per-weight gradient pass on the small networks of a
/// training step, whose weights and activations stay in cache (benches/RESULTS.md). Each
/// level of a job is a copy of its bodies in the build: float64 gradients, rare in a step,
/// stay off v4 (not compiled for it).
struct GradientJob<'a, C, Op>(Job<'a, C, Op>);

impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for ForwardJob<'_, C, Op> {
    type Output = Verdict;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Verdict {
        // The target features of S are enabled here; the loops below vectorize at its width.
        self.0.forward_rows()
    }
}

impl<C: Real, Op: ElemOp<C>> SimdJob for ForwardJob<'_, C, Op> {
    const SHARD: usize = shard_of::<C>(false);
    const WIDE: bool = true;
    #[inline(always)]
    fn run_scalar(self) -> Verdict {
        self.0.forward_rows()
    }
}

impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for GradientJob<'_, C, Op> {
    type Output = Verdict;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Verdict {
        self.0.gradient_rows()
    }
}

impl<C: Real, Op: ElemOp<C>> SimdJob for GradientJob<'_, C, Op> {
    const SHARD: usize = shard_of::<C>(true);
    const WIDE: bool = C::DIGITS <= 24;
    #[inline(always)]
    fn run_scalar(self) -> Verdict {
        self.0.gradient_rows()
    }
}

impl<C: Real, Op: ElemOp<C>> Job<'_, C, Op> {
    /// Runs the piece on `path`: a [`ForwardJob`] or a [`GradientJob`].
    #[inline(always)]
    pub(super) fn run_on(self, path: Path) -> Verdict {
        if self.piece.dy.is_empty() {
            with_path(ForwardJob(self), path)
        } else {
            with_path(GradientJob(self), path)
        }
    }
}
