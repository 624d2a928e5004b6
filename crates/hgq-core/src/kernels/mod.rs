//! Fused element-wise kernels over a broadcast plan.
//!
//! A kernel is an `ElemOp`: one element's forward and local gradients, written once over
//! [`Real`], in two steps: `ElemOp::derive` turns one element of the three parameters
//! (k, i, f or m, e, e0) into the values the body needs (`2^f`, `2^-f`, the clip bounds, ...),
//! and `ElemOp::apply` quantizes one x element with them. `run` walks `x` in segments, in
//! parallel with rayon above [`PAR_MIN`] elements, and runs each segment inside
//! `pulp::Arch::dispatch`, where the target features of the best SIMD level are enabled and
//! LLVM vectorizes the branch-free element body at that width. [`Path::Scalar`] runs the same
//! body without dispatch: the reference the tests compare against bit for bit.
//!
//! Where the parameters are broadcast along x (per column, per channel), the derived values
//! are computed once per call into small streams of the bit-width shape and reused for every
//! run of x; a parameter that is one value for a whole run is derived once per run.
//!
//! Reductions of the parameter gradients (bit widths broadcast along x) are summed in a fixed
//! order that depends only on the shapes: x is split into at most [`MAX_GROUPS`] groups of
//! segments, each summed sequentially, and the group sums are added in group order. The result
//! is the same bits for any number of threads and on every path.
pub(crate) mod fixed;
pub(crate) mod float;

use crate::real::{Element, Real};
use rayon::prelude::*;

/// Below this many elements a call runs on the calling thread.
pub const PAR_MIN: usize = 1 << 16;
/// Elements per segment (the unit of parallel work).
const SEG: usize = 1 << 14;
/// Elements per conversion block for storage types narrower than the compute type.
const BLOCK: usize = 512;
/// At most this many partial sums of a reduced parameter gradient.
pub const MAX_GROUPS: usize = 64;
/// Number of derived values per parameter element.
pub(crate) const ND: usize = 8;

/// Which code path runs the element bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    /// The best SIMD level of this CPU (pulp's runtime dispatch), in parallel.
    #[default]
    Simd,
    /// Plain scalar code, single-threaded: the reference path.
    Scalar,
    /// A given pulp SIMD level, in parallel like [`Path::Simd`] (for tests: every level must
    /// give the bits of [`Path::Scalar`]). A level this CPU lacks runs as [`Path::Simd`].
    Level(SimdLevel),
}

/// The pulp SIMD levels a [`Path::Level`] can force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdLevel {
    /// `pulp::Scalar`.
    Scalar,
    /// `pulp::Scalar128b`.
    Scalar128b,
    /// `pulp::Scalar256b`.
    Scalar256b,
    /// `pulp::Scalar512b`.
    Scalar512b,
    /// x86-64-v2 (SSE4.2, 128-bit vectors).
    V2,
    /// x86-64-v3 (AVX2 and FMA, 256-bit vectors): what [`Path::Simd`] runs on such a CPU.
    V3,
}

impl SimdLevel {
    /// Every level.
    pub const ALL: [SimdLevel; 6] = [
        SimdLevel::Scalar,
        SimdLevel::Scalar128b,
        SimdLevel::Scalar256b,
        SimdLevel::Scalar512b,
        SimdLevel::V2,
        SimdLevel::V3,
    ];
}

impl Path {
    fn parallel(self) -> bool {
        self != Path::Scalar
    }
}

/// A rayon pool of `threads` threads (0: rayon's default, one per core). Kernels called inside
/// its `install` run on that many threads.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build()
}

/// One element's op with three parameters (k, i, f or m, e, e0).
pub(crate) trait ElemOp<C: Real>: Copy + Send + Sync {
    /// Which of the three parameters receive gradients.
    const HAS_GRAD: [bool; 3];
    /// How many of the [`ND`] derived values `apply` reads.
    const NDER: usize;
    /// Whether precomputing the derived values of broadcast parameters pays.
    const PRECOMPUTE: bool;
    /// Whether one element of the three parameters passes the op's rules, branch-free: checked
    /// inside the element loop where the parameters are as large as x (the callers pass the
    /// same rules as [`Check`]s, or `Any` for parameters they checked beforehand).
    fn passes(self, p: [C; 3]) -> bool;
    /// The values `apply` needs, from one element of the parameters.
    fn derive(self, p: [C; 3]) -> [C; ND];
    /// Output and local gradients times `g` (gradients only when `GRAD`). `index` is the
    /// element's flat index in `x`, for counter-based noise.
    fn apply<const GRAD: bool>(self, x: C, d: [C; ND], g: C, index: u64) -> Out<C>;
}

/// What an [`ElemOp`] returns for one element.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Out<C> {
    pub y: C,
    pub gx: C,
    pub gp: [C; 3],
}

/// How the bit-width tensor maps onto `x`: `x` is `rows` runs of `inner` contiguous elements;
/// within a run the parameters are contiguous (`vec`) or one value (`!vec`); the parameter
/// offset of a run is given by the outer dims.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// (extent, parameter stride) of the outer dims, outermost first.
    outer: Vec<(usize, usize)>,
    inner: usize,
    vec: bool,
    /// Number of parameter elements.
    pub bw_len: usize,
    /// Number of x elements.
    pub len: usize,
}

impl Plan {
    /// `bw` must have the rank of `x` with each dim 1 or equal to x's (checked by the caller).
    pub(crate) fn new(x: &[usize], bw: &[usize]) -> Plan {
        debug_assert_eq!(x.len(), bw.len());
        // Collapse dims into groups of equal kind (broadcast or full); size-1 dims vanish.
        let mut groups: Vec<(usize, bool)> = Vec::new();
        for (&xd, &bd) in x.iter().zip(bw) {
            if xd == 1 {
                continue;
            }
            let full = bd == xd;
            match groups.last_mut() {
                Some((ext, kind)) if *kind == full => *ext *= xd,
                _ => groups.push((xd, full)),
            }
        }
        let len = x.iter().product();
        let bw_len = bw.iter().product();
        let (inner, vec) = groups.pop().unwrap_or((1, false));
        // Parameter strides of the outer groups.
        let mut stride = if vec { inner } else { 1 };
        let mut outer = Vec::with_capacity(groups.len());
        for &(ext, full) in groups.iter().rev() {
            outer.push((ext, if full { stride } else { 0 }));
            if full {
                stride *= ext;
            }
        }
        outer.reverse();
        Plan {
            outer,
            inner,
            vec,
            bw_len,
            len,
        }
    }

    /// Parameter offset of run `row`.
    #[inline]
    fn offset(&self, mut row: usize) -> usize {
        let mut off = 0;
        for &(ext, stride) in self.outer.iter().rev() {
            off += (row % ext) * stride;
            row /= ext;
        }
        off
    }

    /// Whether a pass derives the op's values of every parameter element before it starts
    /// (broadcast parameters, read many times), given the op's [`ElemOp::PRECOMPUTE`].
    pub(crate) fn derives_upfront(&self, precompute: bool) -> bool {
        precompute && self.vec && self.bw_len.saturating_mul(4) <= self.len
    }

    /// A parameter of one value as a stream that passes read like a parameter of the plan's
    /// shape, without a copy per element: a segment's worth of copies, marked `same` in
    /// [`Io`] (pieces never span more than a segment, and read it from its start).
    pub(crate) fn splat<C: Copy>(&self, v: C) -> Vec<C> {
        vec![v; SEG.min(self.len).max(1)]
    }

    /// Whether each x element has its own parameter (no reduction needed).
    fn elementwise(&self) -> bool {
        self.bw_len == self.len
    }

    /// The number of partial sums of a reduction: fixed by the shapes alone.
    fn groups(&self) -> usize {
        let segs = self.len.div_ceil(SEG).max(1);
        let repeats = (self.len / self.bw_len.max(1)).max(1);
        segs.min(MAX_GROUPS).min(repeats)
    }
}

/// The upstream gradient of a call: one per element, or one value for every element (the
/// gradient of a plain sum), which the passes read from a small repeated buffer instead of a
/// materialized x-sized one.
#[derive(Clone, Copy, Debug)]
pub enum Upstream<'a, T> {
    /// One value per element of x.
    Each(&'a [T]),
    /// The same value for every element.
    Same(T),
}

/// Buffers of one call. Parameters are in the compute type, x-shaped data in the storage type.
/// `y` is `None` only with `dy` (gradients only: the output is computed, not stored).
pub(crate) struct Io<'a, T: Element> {
    pub x: &'a [T],
    pub p: [&'a [T::C]; 3],
    /// Parameters given as [`Plan::splat`] (one value for every element): read from the
    /// stream's start, wherever the piece lies.
    pub same: [bool; 3],
    pub dy: Option<Upstream<'a, T>>,
    pub y: Option<&'a mut [T]>,
    pub gx: Option<&'a mut [T]>,
    /// Parameter gradients, overwritten, in the bit-width shape.
    pub gp: Option<[&'a mut [T::C]; 3]>,
}

/// The parameter streams of a call: the raw three (derived per element) or the [`ND`] derived
/// values precomputed for every parameter element.
#[derive(Clone, Copy)]
struct Params<'a, C> {
    s: [&'a [C]; ND],
    derived: bool,
    /// Raw streams of one repeated value (see [`Io::same`]).
    same: [bool; 3],
}

impl<'a, C> Params<'a, C> {
    /// The streams restricted to `[off, off + n)`.
    fn slice(&self, off: usize, n: usize) -> Params<'a, C> {
        Params {
            s: std::array::from_fn(|q| {
                let v = self.s[q];
                if v.is_empty() {
                    v
                } else if q < 3 && self.same[q] {
                    &v[..n]
                } else {
                    &v[off..off + n]
                }
            }),
            derived: self.derived,
            same: self.same,
        }
    }
}

/// What each parameter value must be; checked inside the pass, segment by segment, so that the
/// parameters are read from memory once (`Any`: checked by the caller, or no rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Any,
    ZeroOne,
    Integer,
    /// Finite (raw bit widths that the op rounds itself).
    Finite,
}

/// Whether `v` is a finite integer, branch-free (vectorizes inside a SIMD dispatch).
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn is_int<C: Real>(v: C) -> bool {
    v.floor() == v && (v - v) == C::ZERO
}

/// Whether `v` is 0 or 1, branch-free.
#[inline(always)]
pub(crate) fn zero_one<C: Real>(v: C) -> bool {
    v == C::ZERO || v == C::ONE
}

/// Whether `v` is finite, branch-free.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn finite<C: Real>(v: C) -> bool {
    (v - v) == C::ZERO
}

impl Check {
    /// Whether `v` passes the rule, branch-free.
    #[inline(always)]
    fn passes<C: Real>(self, v: C) -> bool {
        match self {
            Check::Any => true,
            Check::ZeroOne => zero_one(v),
            Check::Integer => is_int(v),
            Check::Finite => finite(v),
        }
    }
}

/// Whether every element of `v` passes `check` (one vectorized pass).
fn valid<C: Real>(v: &[C], check: Check) -> bool {
    match check {
        Check::Any => true,
        Check::ZeroOne => !scan(v, zero_one::<C>),
        Check::Integer => !scan(v, is_int::<C>),
        Check::Finite => !scan(v, finite::<C>),
    }
}

/// Whether some element of `v` fails `ok`, in one branch-free pass under the best SIMD level.
fn scan<C: Real, F: Fn(C) -> bool + Copy>(v: &[C], ok: F) -> bool {
    struct Scan<'a, C, F> {
        v: &'a [C],
        ok: F,
    }
    impl<C: Real, F: Fn(C) -> bool + Copy> pulp::WithSimd for Scan<'_, C, F> {
        type Output = bool;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
            let mut bad = 0u32;
            for &e in self.v {
                bad |= !(self.ok)(e) as u32;
            }
            bad != 0
        }
    }
    pulp::Arch::new().dispatch(Scan { v, ok })
}

/// Runs `op` over all of `x` following `plan`; checks the raw parameters on the way (`checks`)
/// and returns whether they all passed (the outputs are unspecified where not).
pub(crate) fn run<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    io: Io<'_, T>,
    path: Path,
    checks: [Check; 3],
) -> bool {
    let bad = std::sync::atomic::AtomicBool::new(false);
    let chk = Checks {
        kinds: checks,
        bad: &bad,
    };
    let Io {
        x,
        p,
        same,
        dy,
        y,
        gx,
        gp,
    } = io;
    // Broadcast parameters: derive once per parameter element, not once per x element.
    let upfront = plan.derives_upfront(Op::PRECOMPUTE);
    debug_assert!(
        !upfront || same == [false; 3],
        "splats are for x-sized plans"
    );
    let pre: Option<[Vec<T::C>; ND]> = upfront.then(|| precompute(op, p, plan.bw_len, path));
    let params = match &pre {
        Some(d) => Params {
            s: std::array::from_fn(|q| d[q].as_slice()),
            derived: true,
            same: [false; 3],
        },
        None => Params {
            s: std::array::from_fn(|q| if q < 3 { p[q] } else { &[][..] }),
            derived: false,
            same,
        },
    };
    let grad = dy.is_some();
    // A uniform upstream gradient is read from one segment's worth of copies (pieces never
    // span more than a segment), so it costs no pass over memory.
    let same: Vec<T> = match dy {
        Some(Upstream::Same(v)) => vec![v; SEG.min(plan.len)],
        _ => Vec::new(),
    };
    let dy = match dy {
        Some(Upstream::Each(d)) => Some(Dy::Each(d)),
        Some(Upstream::Same(_)) => Some(Dy::Same(&same)),
        None => None,
    };
    // Without y (gradients only), the passes write it into a segment-sized scratch.
    let keep_y = y.is_some();
    let mut y_none: [T; 0] = [];
    let y: &mut [T] = y.unwrap_or(&mut y_none);
    let parallel = path.parallel() && plan.len >= PAR_MIN;
    match gp {
        Some(mut gp) if grad && !plan.elementwise() => {
            // Reduction: fixed groups of segments, each summed in order, then added in order.
            let n = plan.bw_len;
            let gx = gx.expect("gx with dy");
            let groups = plan.groups();
            let segs = plan.len.div_ceil(SEG);
            let mut parts: Vec<(usize, &mut [T], &mut [T])> = Vec::with_capacity(groups);
            let (mut yr, mut gr) = (y, gx);
            let mut start = 0;
            for g in 0..groups {
                let end = ((g + 1) * segs / groups * SEG).min(plan.len);
                let (a, b) = if keep_y {
                    std::mem::take(&mut yr).split_at_mut(end - start)
                } else {
                    (&mut [][..], &mut [][..])
                };
                let (c, d) = std::mem::take(&mut gr).split_at_mut(end - start);
                parts.push((start, a, c));
                (yr, gr) = (b, d);
                start = end;
            }
            let task = |(start, yc, gxc): (usize, &mut [T], &mut [T])| {
                let mut scratch = Vec::new();
                if !keep_y {
                    scratch.resize(SEG.min(gxc.len()), T::default());
                }
                let mut acc: [Vec<T::C>; 3] = std::array::from_fn(|q| {
                    if Op::HAS_GRAD[q] {
                        vec![T::C::ZERO; n]
                    } else {
                        Vec::new()
                    }
                });
                let mut s = 0;
                while s < gxc.len() {
                    let e = (s + SEG).min(gxc.len());
                    let [a0, a1, a2] = &mut acc;
                    let ys = if keep_y {
                        &mut yc[s..e]
                    } else {
                        &mut scratch[..e - s]
                    };
                    segment(
                        op,
                        plan,
                        x,
                        params,
                        dy,
                        start + s,
                        ys,
                        &mut gxc[s..e],
                        [a0, a1, a2],
                        0,
                        true,
                        path,
                        chk,
                    );
                    s = e;
                }
                acc
            };
            let sums: Vec<[Vec<T::C>; 3]> = if parallel {
                parts.into_par_iter().with_max_len(1).map(task).collect()
            } else {
                parts.into_iter().map(task).collect()
            };
            let mut it = sums.into_iter();
            let mut total = it.next().expect("one group at least");
            for s in it {
                for (av, bv) in total.iter_mut().zip(s.iter()) {
                    for (a, b) in av.iter_mut().zip(bv) {
                        *a = *a + *b;
                    }
                }
            }
            for (q, (dst, src)) in gp.iter_mut().zip(total).enumerate() {
                if dst.is_empty() {
                    continue;
                }
                if Op::HAS_GRAD[q] {
                    dst.copy_from_slice(&src);
                } else {
                    dst.fill(T::C::ZERO);
                }
            }
        }
        gp => {
            // No reduction: every task owns disjoint pieces of y, gx and the parameter grads,
            // and stores each parameter gradient once (no accumulation).
            let mut gp = gp;
            let mut empty: [&mut [T::C]; 3] = [&mut [], &mut [], &mut []];
            let gp_ref: &mut [&mut [T::C]; 3] = match gp.as_mut() {
                Some(g) if grad => {
                    for (q, s) in g.iter_mut().enumerate() {
                        // Parameters without a gradient, and single-value runs (which add
                        // into their element), start from zero.
                        if !Op::HAS_GRAD[q] || !plan.vec {
                            s.fill(T::C::ZERO);
                        }
                    }
                    g
                }
                _ => &mut empty,
            };
            let mut gx_empty: [T; 0] = [];
            let gx: &mut [T] = match gx {
                Some(g) if grad => g,
                _ => &mut gx_empty,
            };
            let body = |scratch: &mut Vec<T>,
                        c: usize,
                        yc: &mut [T],
                        gxc: &mut [T],
                        g: [&mut [T::C]; 3]| {
                let len = SEG.min(plan.len - c * SEG);
                let yc = if keep_y {
                    yc
                } else {
                    scratch.resize(len, T::default());
                    &mut scratch[..len]
                };
                segment(
                    op,
                    plan,
                    x,
                    params,
                    dy,
                    c * SEG,
                    yc,
                    gxc,
                    g,
                    c * SEG,
                    false,
                    path,
                    chk,
                );
            };
            let [g0, g1, g2] = gp_ref;
            let n = plan.len.div_ceil(SEG);
            let chunks = chunks_or_empty(y, n)
                .into_iter()
                .zip(chunks_or_empty(gx, n))
                .zip(chunks_or_empty(g0, n))
                .zip(chunks_or_empty(g1, n))
                .zip(chunks_or_empty(g2, n))
                .enumerate();
            if !parallel {
                let mut scratch = Vec::new();
                for (c, ((((yc, gxc), a), b), d)) in chunks {
                    body(&mut scratch, c, yc, gxc, [a, b, d]);
                }
            } else {
                chunks
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .for_each_init(Vec::new, |scratch, (c, ((((yc, gxc), a), b), d))| {
                        body(scratch, c, yc, gxc, [a, b, d])
                    });
            }
        }
    }
    !bad.load(std::sync::atomic::Ordering::Relaxed)
}

/// The upstream gradient inside a pass: x-sized, or a segment's worth of one repeated value.
#[derive(Clone, Copy)]
enum Dy<'a, T> {
    Each(&'a [T]),
    Same(&'a [T]),
}

/// The checks of one call and where a failure is recorded.
#[derive(Clone, Copy)]
struct Checks<'a> {
    kinds: [Check; 3],
    bad: &'a std::sync::atomic::AtomicBool,
}

/// `s` in chunks of SEG, or `n` empty slices when `s` is empty.
fn chunks_or_empty<T>(s: &mut [T], n: usize) -> Vec<&mut [T]> {
    if s.is_empty() {
        (0..n).map(|_| &mut [][..]).collect()
    } else {
        s.chunks_mut(SEG).collect()
    }
}

/// The derived values of every parameter element, in [`ND`] streams (the unused ones empty).
fn precompute<C: Real, Op: ElemOp<C>>(op: Op, p: [&[C]; 3], n: usize, path: Path) -> [Vec<C>; ND] {
    let mut out: [Vec<C>; ND] = std::array::from_fn(|q| {
        if q < Op::NDER {
            vec![C::ZERO; n]
        } else {
            Vec::new()
        }
    });
    struct Pre<'a, C, Op> {
        op: Op,
        p: [&'a [C]; 3],
        out: &'a mut [Vec<C>; ND],
    }
    impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for Pre<'_, C, Op> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            self.run_scalar()
        }
    }
    impl<C: Real, Op: ElemOp<C>> RunScalar for Pre<'_, C, Op> {
        #[inline(always)]
        fn run_scalar(self) {
            let n = self.p[0].len();
            let p = [&self.p[0][..n], &self.p[1][..n], &self.p[2][..n]];
            let o: [&mut [C]; ND] = {
                let mut it = self.out.iter_mut();
                std::array::from_fn(|q| {
                    let v = it.next().expect("ND streams");
                    if q < Op::NDER {
                        &mut v[..n]
                    } else {
                        &mut v[..]
                    }
                })
            };
            for j in 0..n {
                let d = self.op.derive([p[0][j], p[1][j], p[2][j]]);
                for q in 0..Op::NDER {
                    o[q][j] = d[q];
                }
            }
        }
    }
    let pre = Pre {
        op,
        p: [&p[0][..n], &p[1][..n], &p[2][..n]],
        out: &mut out,
    };
    with_path(pre, path);
    out
}

/// Runs a pulp job on a path.
fn with_path<J: RunScalar>(job: J, path: Path) -> J::Output {
    use pulp::Simd;
    match path {
        Path::Scalar => job.run_scalar(),
        Path::Simd => pulp::Arch::new().dispatch(job),
        Path::Level(l) => match l {
            // The element bodies do not use the SIMD token, only the target features its level
            // enables: pulp's portable levels enable none, so they are the scalar code (one
            // instantiation for all four keeps compile times down).
            SimdLevel::Scalar
            | SimdLevel::Scalar128b
            | SimdLevel::Scalar256b
            | SimdLevel::Scalar512b => job.run_scalar(),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            SimdLevel::V2 => match pulp::x86::V2::try_new() {
                Some(s) => Simd::vectorize(s, job),
                None => pulp::Arch::new().dispatch(job),
            },
            // x86-64-v3 is what pulp's dispatch picks on a CPU with AVX2 (x86-v4 is off).
            _ => pulp::Arch::new().dispatch(job),
        },
    }
}

/// A job's body without any target features.
trait RunScalar: pulp::WithSimd {
    fn run_scalar(self) -> Self::Output;
}

impl<C: Real, Op: ElemOp<C>> RunScalar for Job<'_, C, Op> {
    #[inline(always)]
    fn run_scalar(self) -> bool {
        self.run()
    }
}

/// Processes x[start .. start + y.len()], split at run boundaries. `acc` are either full
/// bit-width accumulators (`acc_base` = 0, `accumulate`) or the slice of the parameter
/// gradients that starts at parameter offset `acc_base` (element-wise plans, stored).
#[allow(clippy::too_many_arguments)]
fn segment<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    x: &[T],
    p: Params<'_, T::C>,
    dy: Option<Dy<'_, T>>,
    start: usize,
    y: &mut [T],
    gx: &mut [T],
    acc: [&mut [T::C]; 3],
    acc_base: usize,
    accumulate: bool,
    path: Path,
    chk: Checks<'_>,
) {
    let [a0, a1, a2] = acc;
    let mut pos = 0;
    while pos < y.len() {
        let gi = start + pos;
        let row = gi / plan.inner;
        let within = gi % plan.inner;
        let n = (plan.inner - within).min(y.len() - pos);
        let off = plan.offset(row) + if plan.vec { within } else { 0 };
        let plen = if plan.vec { n } else { 1 };
        let ps = p.slice(off, plen);
        // Raw parameters: a single value per run is checked here, contiguous ones inside the
        // element loop (one pass over them, no second read).
        if !p.derived && !plan.vec {
            for q in 0..3 {
                if !valid(ps.s[q], chk.kinds[q]) {
                    chk.bad.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        // Element-wise plans store from parameter offset `acc_base` (then `off >= acc_base`);
        // calls without gradients have empty accumulators and never index them.
        let ao = off.wrapping_sub(acc_base);
        let acc_slice = |a: &mut [T::C]| -> *mut [T::C] {
            if a.is_empty() {
                &mut [][..] as *mut [T::C]
            } else {
                &mut a[ao..ao + plen] as *mut [T::C]
            }
        };
        // SAFETY: the three slices come from three distinct buffers (or are empty).
        let accs = unsafe {
            [
                &mut *acc_slice(a0),
                &mut *acc_slice(a1),
                &mut *acc_slice(a2),
            ]
        };
        let xs = &x[gi..gi + n];
        let ys = &mut y[pos..pos + n];
        let (dys, gxs): (&[T], &mut [T]) = match dy {
            Some(Dy::Each(d)) => (&d[gi..gi + n], &mut gx[pos..pos + n]),
            Some(Dy::Same(d)) => (&d[..n], &mut gx[pos..pos + n]),
            None => (&[], &mut []),
        };
        let ok = run_piece(
            op,
            xs,
            ps,
            dys,
            ys,
            gxs,
            accs,
            gi as u64,
            plan.vec,
            accumulate || !plan.vec,
            path,
        );
        // The loop checks `Op::passes`: the rules the caller passes for unchecked parameters.
        if !ok && chk.kinds != [Check::Any; 3] {
            chk.bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        pos += n;
    }
}

/// Converts narrow storage to compute type in blocks, then calls the SIMD or scalar loop.
/// Returns whether raw contiguous parameters passed `Op::passes` (true for the others).
#[allow(clippy::too_many_arguments)]
fn run_piece<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    x: &[T],
    p: Params<'_, T::C>,
    dy: &[T],
    y: &mut [T],
    gx: &mut [T],
    acc: [&mut [T::C]; 3],
    index: u64,
    vec: bool,
    accumulate: bool,
    path: Path,
) -> bool {
    if let (Some(xc), Some(dyc)) = (T::as_c(x), T::as_c(dy)) {
        let yc = T::as_c_mut(y).expect("same storage");
        let gxc = T::as_c_mut(gx).expect("same storage");
        return with_path(
            Job {
                op,
                piece: Piece {
                    x: xc,
                    p,
                    dy: dyc,
                    y: yc,
                    gx: gxc,
                    acc,
                    index,
                    vec,
                    accumulate,
                },
            },
            path,
        );
    }
    // Narrow storage: widen a block, compute, narrow the results.
    let grad = !dy.is_empty();
    let [a0, a1, a2] = acc;
    let mut bx = [T::C::ZERO; BLOCK];
    let mut bdy = [T::C::ZERO; BLOCK];
    let mut by = [T::C::ZERO; BLOCK];
    let mut bgx = [T::C::ZERO; BLOCK];
    let mut ok = true;
    let mut s = 0;
    while s < x.len() {
        let n = BLOCK.min(x.len() - s);
        for j in 0..n {
            bx[j] = x[s + j].to_c();
        }
        if grad {
            for j in 0..n {
                bdy[j] = dy[s + j].to_c();
            }
        }
        let sub_mut = |v: &mut [T::C]| -> *mut [T::C] {
            if v.is_empty() || !vec {
                v as *mut [T::C]
            } else {
                &mut v[s..s + n] as *mut [T::C]
            }
        };
        // SAFETY: distinct buffers, as above.
        let accs = unsafe { [&mut *sub_mut(a0), &mut *sub_mut(a1), &mut *sub_mut(a2)] };
        let piece = Piece {
            x: &bx[..n],
            p: if vec { p.slice(s, n) } else { p },
            dy: if grad { &bdy[..n] } else { &[] },
            y: &mut by[..n],
            gx: if grad { &mut bgx[..n] } else { &mut [] },
            acc: accs,
            index: index + s as u64,
            vec,
            accumulate,
        };
        ok &= with_path(Job { op, piece }, path);
        for j in 0..n {
            y[s + j] = T::from_c(by[j]);
        }
        if grad {
            for j in 0..n {
                gx[s + j] = T::from_c(bgx[j]);
            }
        }
        s += n;
    }
    ok
}

/// One contiguous piece in the compute type: parameters are `x.len()` long (`vec`) or one value.
struct Piece<'a, C> {
    x: &'a [C],
    p: Params<'a, C>,
    dy: &'a [C],
    y: &'a mut [C],
    gx: &'a mut [C],
    acc: [&'a mut [C]; 3],
    index: u64,
    vec: bool,
    /// Add the parameter gradients into `acc` (else store them).
    accumulate: bool,
}

/// A piece and its op, runnable under any SIMD level.
struct Job<'a, C, Op> {
    op: Op,
    piece: Piece<'a, C>,
}

impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for Job<'_, C, Op> {
    /// Whether raw contiguous parameters passed `Op::passes`.
    type Output = bool;
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
        // The target features of S are enabled here; the loops below vectorize at its width.
        self.run()
    }
}

/// Lanes of the private sums of a single-value parameter's gradient (keeps the loop
/// vectorizable: the sum order is fixed, whatever the SIMD width).
const LANES: usize = 16;

/// The derived values of element `j` of `p` (derived on the fly when `p` is raw).
#[inline(always)]
fn derived_at<C: Real, Op: ElemOp<C>, const DER: bool>(
    op: Op,
    p: &[&[C]; ND],
    j: usize,
) -> [C; ND] {
    if DER {
        std::array::from_fn(|q| if q < Op::NDER { p[q][j] } else { C::ZERO })
    } else {
        op.derive([p[0][j], p[1][j], p[2][j]])
    }
}

impl<C: Real, Op: ElemOp<C>> Job<'_, C, Op> {
    /// Returns whether raw contiguous parameters passed `Op::passes` (checked in the element
    /// loop, `!DER`; true where the parameters are derived or one value).
    #[inline(always)]
    fn run(self) -> bool {
        let grad = !self.piece.dy.is_empty();
        let (vec, der, acc) = (self.piece.vec, self.piece.p.derived, self.piece.accumulate);
        match (grad, vec, der, acc) {
            (false, false, _, _) => self.forward_const(),
            (false, true, true, _) => self.forward_vec::<true>(),
            (false, true, false, _) => self.forward_vec::<false>(),
            (true, false, _, _) => self.grad_const(),
            (true, true, true, true) => self.grad_vec::<true, true>(),
            (true, true, true, false) => self.grad_vec::<true, false>(),
            (true, true, false, true) => self.grad_vec::<false, true>(),
            (true, true, false, false) => self.grad_vec::<false, false>(),
        }
    }

    /// The derived values of a single-value piece.
    #[inline(always)]
    fn const_params(&self) -> [C; ND] {
        let p = &self.piece.p;
        if p.derived {
            derived_at::<C, Op, true>(self.op, &p.s, 0)
        } else {
            derived_at::<C, Op, false>(self.op, &p.s, 0)
        }
    }

    /// The streams cut to `n` elements (bounds checks vanish in the loops).
    #[inline(always)]
    fn streams<'p, const DER: bool>(p: &[&'p [C]; ND], n: usize) -> [&'p [C]; ND] {
        std::array::from_fn(|q| {
            let used = if DER { q < Op::NDER } else { q < 3 };
            if used { &p[q][..n] } else { p[q] }
        })
    }

    #[inline(always)]
    fn forward_const(self) -> bool {
        let d = self.const_params();
        let Piece { x, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        for j in 0..n {
            y[j] = self.op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
        }
        true
    }

    /// Whether element `j` of raw streams fails `Op::passes` (as 0 or 1, for a branch-free
    /// OR over the loop); always 0 for derived streams.
    #[inline(always)]
    fn fails<const DER: bool>(op: Op, s: &[&[C]; ND], j: usize) -> u32 {
        if DER {
            return 0;
        }
        !op.passes([s[0][j], s[1][j], s[2][j]]) as u32
    }

    #[inline(always)]
    fn forward_vec<const DER: bool>(self) -> bool {
        let Piece { x, p, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        let s = Self::streams::<DER>(&p.s, n);
        let mut bad = 0u32;
        for j in 0..n {
            bad |= Self::fails::<DER>(self.op, &s, j);
            let d = derived_at::<C, Op, DER>(self.op, &s, j);
            y[j] = self.op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
        }
        bad == 0
    }

    #[inline(always)]
    fn grad_vec<const DER: bool, const ACC: bool>(self) -> bool {
        let Piece {
            x,
            p,
            dy,
            y,
            gx,
            acc,
            index,
            ..
        } = self.piece;
        let n = x.len();
        let (x, dy, y, gx) = (&x[..n], &dy[..n], &mut y[..n], &mut gx[..n]);
        let s = Self::streams::<DER>(&p.s, n);
        let [a0, a1, a2] = acc;
        let has = Op::HAS_GRAD;
        let (a0, a1, a2) = (
            if has[0] { &mut a0[..n] } else { a0 },
            if has[1] { &mut a1[..n] } else { a1 },
            if has[2] { &mut a2[..n] } else { a2 },
        );
        let mut bad = 0u32;
        for j in 0..n {
            bad |= Self::fails::<DER>(self.op, &s, j);
            let d = derived_at::<C, Op, DER>(self.op, &s, j);
            let o = self.op.apply::<true>(x[j], d, dy[j], index + j as u64);
            y[j] = o.y;
            gx[j] = o.gx;
            if has[0] {
                a0[j] = if ACC { a0[j] + o.gp[0] } else { o.gp[0] };
            }
            if has[1] {
                a1[j] = if ACC { a1[j] + o.gp[1] } else { o.gp[1] };
            }
            if has[2] {
                a2[j] = if ACC { a2[j] + o.gp[2] } else { o.gp[2] };
            }
        }
        bad == 0
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn grad_const(self) -> bool {
        let d = self.const_params();
        let Piece {
            x,
            dy,
            y,
            gx,
            acc,
            index,
            ..
        } = self.piece;
        let n = x.len();
        let (x, dy, y, gx) = (&x[..n], &dy[..n], &mut y[..n], &mut gx[..n]);
        let mut lanes = [[C::ZERO; LANES]; 3];
        let full = n / LANES * LANES;
        let (xf, dyf) = (&x[..full], &dy[..full]);
        let (yf, gxf) = (&mut y[..full], &mut gx[..full]);
        for b in (0..full).step_by(LANES) {
            for l in 0..LANES {
                let j = b + l;
                let o = self.op.apply::<true>(xf[j], d, dyf[j], index + j as u64);
                yf[j] = o.y;
                gxf[j] = o.gx;
                for q in 0..3 {
                    if Op::HAS_GRAD[q] {
                        lanes[q][l] = lanes[q][l] + o.gp[q];
                    }
                }
            }
        }
        for j in full..n {
            let o = self.op.apply::<true>(x[j], d, dy[j], index + j as u64);
            y[j] = o.y;
            gx[j] = o.gx;
            for q in 0..3 {
                if Op::HAS_GRAD[q] {
                    lanes[q][0] = lanes[q][0] + o.gp[q];
                }
            }
        }
        for (q, a) in acc.into_iter().enumerate() {
            if Op::HAS_GRAD[q] {
                a[0] = lanes[q].iter().fold(a[0], |s, &v| s + v);
            }
        }
        true
    }
}

/// The index of the first element of `v` that fails `check`.
pub(crate) fn find_bad<C: Real>(v: &[C], check: Check) -> Option<usize> {
    const CH: usize = 1 << 12;
    for (c, chunk) in v.chunks(CH).enumerate() {
        if !valid(chunk, check) {
            return chunk
                .iter()
                .position(|&e| !check.passes(e))
                .map(|j| c * CH + j);
        }
    }
    None
}
