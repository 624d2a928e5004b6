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
//! is the same bits for any number of threads and on every path. The sums live in blocked
//! accumulators (blocks of 16 parameter elements, their gradients interleaved), and a pass
//! that computes gradients only stores no y.
pub(crate) mod buffers;
pub(crate) mod check;
mod dispatch;
pub(crate) mod fixed;
pub(crate) mod float;
pub(crate) mod op;
pub(crate) mod plan;

pub use buffers::Upstream;
pub use dispatch::{Path, SimdLevel, thread_pool};

use crate::real::{Element, Real};
use buffers::{Acc, Dst, Dy, Io, Params, cut};
use check::{Check, Checks, GENERAL, Verdict, valid};
use op::{ElemOp, ND};
use plan::{Plan, precompute};
use rayon::prelude::*;

/// Below this many elements a call runs on the calling thread.
pub const PAR_MIN: usize = 1 << 16;
/// Elements per segment (the unit of parallel work).
const SEG: usize = 1 << 14;
/// Elements per conversion block for storage types narrower than the compute type.
const BLOCK: usize = 512;
/// At most this many partial sums of a reduced parameter gradient.
pub const MAX_GROUPS: usize = 64;

/// Elements per block of the blocked accumulators of a reduction: one AVX-512 vector of f32,
/// two AVX2 ones.
///
/// Why blocked: a reduction pass adds the gradients of two or three parameters for every x
/// element into accumulators as long as a run. As separate arrays those are streams at equal
/// offsets modulo 4 KiB (whose stores and loads the CPU takes for dependent); interleaved by
/// blocks they are one, read and written in whole cache lines: about 20% faster per pass.
/// (The precomputed derived values stay separate streams: blocked, the forward is slower.)
pub(crate) const B: usize = 16;

/// The index of value `q` of element `c` in a blocked buffer of `nq` values per element:
/// blocks of [`B`] elements, each holding the `B` copies of value 0, then those of value 1, ...
#[inline(always)]
fn bidx(c: usize, q: usize, nq: usize) -> usize {
    (c / B) * nq * B + q * B + c % B
}

/// The length of a blocked buffer of `n` elements with `nq` values each.
fn blocked_len(n: usize, nq: usize) -> usize {
    n.div_ceil(B) * nq * B
}

/// Where each parameter's gradient sits among those the op has (`ElemOp::HAS_GRAD`), and how
/// many it has: the values per element of the blocked accumulators.
const fn grad_slots(has: [bool; 3]) -> ([usize; 3], usize) {
    let mut slot = [0; 3];
    let mut n = 0;
    let mut q = 0;
    while q < 3 {
        slot[q] = n;
        if has[q] {
            n += 1;
        }
        q += 1;
    }
    (slot, n)
}

/// Runs `op` over all of `x` following `plan`; checks the raw parameters on the way (`checks`)
/// and says whether they all passed and whether all were normal. `known_normal`: the raw
/// per-element parameters are known to pass `Op::all_normal` (an earlier pass found it), so they
/// are neither checked nor derived the general way; claimed wrongly, the outputs are
/// unspecified (but defined: `Op::derive_normal` is safe for any input).
pub(crate) fn run<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    io: Io<'_, T>,
    path: Path,
    checks: [Check; 3],
    known_normal: bool,
) -> Verdict {
    let bad = std::sync::atomic::AtomicBool::new(false);
    let general = std::sync::atomic::AtomicBool::new(false);
    let chk = Checks {
        kinds: checks,
        bad: &bad,
        known_normal,
        general: &general,
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
        Some(d) => Params::Derived {
            s: std::array::from_fn(|q| d[q].as_slice()),
        },
        None => Params::Raw { s: p, same },
    };
    // A uniform upstream gradient is read from one segment's worth of copies (pieces never
    // span more than a segment), so it costs no pass over memory.
    let same_dy: Vec<T> = match dy {
        Some(Upstream::Same(v)) => vec![v; SEG.min(plan.len)],
        _ => Vec::new(),
    };
    let dy = match dy {
        Some(Upstream::Each(d)) => Some(Dy::Each(d)),
        Some(Upstream::Same(_)) => Some(Dy::Same(&same_dy)),
        None => None,
    };
    let pass = Pass {
        op,
        plan,
        x,
        params,
        dy,
        path,
        chk,
        parallel: path.parallel() && plan.len >= PAR_MIN,
    };
    // Without y (gradients only), no y is stored at all.
    let mut y_none: [T; 0] = [];
    let y: &mut [T] = y.unwrap_or(&mut y_none);
    match (dy, gx) {
        (Some(_), Some(gx)) => {
            let gp = gp.unwrap_or([&mut [], &mut [], &mut []]);
            if plan.elementwise() && plan.vec {
                pass.store(y, gx, gp);
            } else {
                // Broadcast parameters, or a single value: gradients summed over x.
                pass.reduce(y, gx, gp);
            }
        }
        _ => pass.store(y, &mut [], [&mut [], &mut [], &mut []]),
    }
    let load = |b: &std::sync::atomic::AtomicBool| b.load(std::sync::atomic::Ordering::Relaxed);
    Verdict {
        passed: !load(&bad),
        normal: !load(&general),
    }
}

/// What every piece of one call shares.
struct Pass<'a, T: Element, Op> {
    op: Op,
    plan: &'a Plan,
    x: &'a [T],
    params: Params<'a, T::C>,
    dy: Option<Dy<'a, T>>,
    path: Path,
    chk: Checks<'a>,
    parallel: bool,
}

impl<T: Element, Op: ElemOp<T::C>> Pass<'_, T, Op> {
    /// x elements `[start, start + len)`; `y` empty when not stored, `gx` empty without dy.
    fn segment(&self, start: usize, len: usize, y: &mut [T], gx: &mut [T], dst: Dst<'_, T::C>) {
        segment(
            self.op,
            self.plan,
            self.x,
            self.params,
            self.dy,
            start,
            len,
            y,
            gx,
            dst,
            self.path,
            self.chk,
        );
    }

    /// A forward pass, or gradients of an element-wise plan (each parameter element belongs
    /// to one x element): every task owns disjoint pieces of y, dx and the parameter
    /// gradients, and stores each gradient once.
    fn store(&self, y: &mut [T], gx: &mut [T], gp: [&mut [T::C]; 3]) {
        let plan = self.plan;
        let grad = self.dy.is_some();
        // Parameters without a gradient read 0; one with a gradient nobody asked for goes to
        // a buffer of its own (the loop stores every gradient the op has).
        let mut spare: [Vec<T::C>; 3] = Default::default();
        let mut gp = gp;
        for (q, (g, s)) in gp.iter_mut().zip(spare.iter_mut()).enumerate() {
            if !grad {
                continue;
            }
            if !Op::HAS_GRAD[q] {
                g.fill(T::C::ZERO);
                *g = &mut [];
            } else if g.is_empty() {
                *s = vec![T::C::ZERO; plan.bw_len];
            }
        }
        let [g0, g1, g2] = gp;
        let [s0, s1, s2] = &mut spare;
        let (g0, g1, g2) = (pick(g0, s0), pick(g1, s1), pick(g2, s2));
        let n = plan.len.div_ceil(SEG);
        let chunks = chunks_or_empty(y, n)
            .into_iter()
            .zip(chunks_or_empty(gx, n))
            .zip(chunks_or_empty(g0, n))
            .zip(chunks_or_empty(g1, n))
            .zip(chunks_or_empty(g2, n))
            .enumerate();
        let body = |c: usize, yc: &mut [T], gxc: &mut [T], g: [&mut [T::C]; 3]| {
            let len = SEG.min(plan.len - c * SEG);
            let dst = if grad {
                Dst::Store(g, c * SEG)
            } else {
                Dst::None
            };
            self.segment(c * SEG, len, yc, gxc, dst);
        };
        if self.parallel {
            chunks
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(|(c, ((((yc, gxc), a), b), d))| body(c, yc, gxc, [a, b, d]));
        } else {
            for (c, ((((yc, gxc), a), b), d)) in chunks {
                body(c, yc, gxc, [a, b, d]);
            }
        }
    }

    /// Gradients of broadcast parameters: x in a fixed number of groups of segments, each
    /// summed in order into blocked accumulators, the group sums added in group order.
    fn reduce(&self, y: &mut [T], gx: &mut [T], gp: [&mut [T::C]; 3]) {
        let plan = self.plan;
        let n = plan.bw_len;
        let (slot, ng) = grad_slots(Op::HAS_GRAD);
        let keep_y = !y.is_empty();
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
            let mut acc = vec![T::C::ZERO; blocked_len(n, ng)];
            let mut s = 0;
            while s < gxc.len() {
                let e = (s + SEG).min(gxc.len());
                let ys = if keep_y { &mut yc[s..e] } else { &mut [][..] };
                self.segment(start + s, e - s, ys, &mut gxc[s..e], Dst::Add(&mut acc));
                s = e;
            }
            acc
        };
        // Groups run in waves of one per thread, each wave's sums added in group order as it
        // ends: a few accumulators alive at a time, not one per group (64 of a run's length
        // would be fresh memory, page-faulted in, on every call).
        let wave = if self.parallel {
            rayon::current_num_threads().max(1)
        } else {
            1
        };
        let mut total: Vec<T::C> = Vec::new();
        let mut parts = parts.into_iter();
        loop {
            let some: Vec<_> = parts.by_ref().take(wave).collect();
            if some.is_empty() {
                break;
            }
            let sums: Vec<Vec<T::C>> = if wave > 1 {
                some.into_par_iter().with_max_len(1).map(task).collect()
            } else {
                some.into_iter().map(task).collect()
            };
            for s in sums {
                if total.is_empty() {
                    total = s;
                } else {
                    for (a, b) in total.iter_mut().zip(&s) {
                        *a = *a + *b;
                    }
                }
            }
        }
        for (q, dst) in gp.into_iter().enumerate() {
            if dst.is_empty() {
                continue;
            }
            if Op::HAS_GRAD[q] {
                for (c, v) in dst.iter_mut().enumerate() {
                    *v = total[bidx(c, slot[q], ng)];
                }
            } else {
                dst.fill(T::C::ZERO);
            }
        }
    }
}

/// `g`, or `s` where it holds a buffer.
fn pick<'a, C>(g: &'a mut [C], s: &'a mut Vec<C>) -> &'a mut [C] {
    if s.is_empty() { g } else { s.as_mut_slice() }
}

/// `s` in chunks of SEG, or `n` empty slices when `s` is empty.
fn chunks_or_empty<T>(s: &mut [T], n: usize) -> Vec<&mut [T]> {
    if s.is_empty() {
        (0..n).map(|_| &mut [][..]).collect()
    } else {
        s.chunks_mut(SEG).collect()
    }
}

/// Processes x elements `[start, start + len)`, split at run boundaries into pieces.
/// `y` is empty when not stored, `gx` without an upstream gradient.
#[allow(clippy::too_many_arguments)]
fn segment<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    x: &[T],
    p: Params<'_, T::C>,
    dy: Option<Dy<'_, T>>,
    start: usize,
    len: usize,
    y: &mut [T],
    gx: &mut [T],
    mut dst: Dst<'_, T::C>,
    path: Path,
    chk: Checks<'_>,
) {
    let mut pos = 0;
    // Gathered over the segment and recorded once: every piece of a broadcast pass is not
    // normal, and a store per piece would be a write to a line all threads share.
    let mut general = false;
    while pos < len {
        let gi = start + pos;
        let row = gi / plan.inner;
        let within = gi % plan.inner;
        let n = (plan.inner - within).min(len - pos);
        let off = plan.offset(row) + if plan.vec { within } else { 0 };
        let plen = if plan.vec { n } else { 1 };
        let ps = p.slice(off, plen);
        // Raw parameters: a single value per run is checked here, contiguous ones inside the
        // element loop (one pass over them, no second read).
        if let Params::Raw { s, .. } = ps
            && !plan.vec
        {
            for (v, kind) in s.iter().zip(chk.kinds) {
                if !valid(v, kind) {
                    chk.bad.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let acc = match &mut dst {
            Dst::None => Acc::None,
            // Element-wise plans: parameter element `off` is x element `gi`, at or after `base`.
            Dst::Store([a, b, c], base) => {
                let o = off - *base;
                Acc::Store([cut(a, o, plen), cut(b, o, plen), cut(c, o, plen)])
            }
            Dst::Add(a) => Acc::Add { a, off },
        };
        let xs = &x[gi..gi + n];
        let ys: &mut [T] = if y.is_empty() {
            &mut []
        } else {
            &mut y[pos..pos + n]
        };
        let (dys, gxs): (&[T], &mut [T]) = match dy {
            Some(Dy::Each(d)) => (&d[gi..gi + n], &mut gx[pos..pos + n]),
            Some(Dy::Same(d)) => (&d[..n], &mut gx[pos..pos + n]),
            None => (&[], &mut []),
        };
        let known = chk.known_normal;
        let v = run_piece(
            op, xs, ps, dys, ys, gxs, acc, gi as u64, plan.vec, known, path,
        );
        // The loop checks `Op::passes`: the rules the caller passes for unchecked parameters.
        if !v.passed && chk.kinds != [Check::Any; 3] {
            chk.bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        general |= !v.normal;
        pos += n;
    }
    if general {
        chk.general
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Converts narrow storage to compute type in blocks, then calls the SIMD or scalar loop.
/// Returns the piece's [`Verdict`] (see [`Job::forward`]).
#[allow(clippy::too_many_arguments)]
fn run_piece<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    x: &[T],
    p: Params<'_, T::C>,
    dy: &[T],
    y: &mut [T],
    gx: &mut [T],
    mut acc: Acc<'_, T::C>,
    index: u64,
    vec: bool,
    known_normal: bool,
    path: Path,
) -> Verdict {
    if let (Some(xc), Some(dyc), Some(yc), Some(gxc)) =
        (T::as_c(x), T::as_c(dy), T::as_c_mut(y), T::as_c_mut(gx))
    {
        let piece = Piece {
            x: xc,
            p,
            dy: dyc,
            y: yc,
            gx: gxc,
            acc,
            index,
            vec,
        };
        let job = Job {
            op,
            piece,
            known_normal,
        };
        return job.run_on(path);
    }
    // Narrow storage: widen a block, compute, narrow the results.
    let grad = !dy.is_empty();
    let keep_y = !y.is_empty();
    let mut bx = [T::C::ZERO; BLOCK];
    let mut bdy = [T::C::ZERO; BLOCK];
    let mut by = [T::C::ZERO; BLOCK];
    let mut bgx = [T::C::ZERO; BLOCK];
    let mut verdict = Verdict {
        passed: true,
        normal: true,
    };
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
        let piece = Piece {
            x: &bx[..n],
            p: if vec { p.slice(s, n) } else { p },
            dy: if grad { &bdy[..n] } else { &[] },
            y: if keep_y { &mut by[..n] } else { &mut [] },
            gx: if grad { &mut bgx[..n] } else { &mut [] },
            acc: if vec { acc.slice(s, n) } else { acc.reborrow() },
            index: index + s as u64,
            vec,
        };
        let job = Job {
            op,
            piece,
            known_normal,
        };
        verdict = verdict.and(job.run_on(path));
        if keep_y {
            for j in 0..n {
                y[s + j] = T::from_c(by[j]);
            }
        }
        if grad {
            for j in 0..n {
                gx[s + j] = T::from_c(bgx[j]);
            }
        }
        s += n;
    }
    verdict
}

/// One contiguous piece in the compute type: parameters for `x.len()` elements (`vec`) or
/// one value. `y` is empty when not stored; `dy` and `gx` are empty in a forward pass.
struct Piece<'a, C> {
    x: &'a [C],
    p: Params<'a, C>,
    dy: &'a [C],
    y: &'a mut [C],
    gx: &'a mut [C],
    acc: Acc<'a, C>,
    index: u64,
    vec: bool,
}

/// A piece and its op, runnable under any SIMD level.
struct Job<'a, C, Op> {
    op: Op,
    piece: Piece<'a, C>,
    /// Raw per-element parameters are known to pass `Op::all_normal` (see [`run`]).
    known_normal: bool,
}

/// Lanes of the private sums of a single-value parameter's gradient (keeps the loop
/// vectorizable: the sum order is fixed, whatever the SIMD width).
const LANES: usize = 16;

/// Streams cut to elements `[j, j + m)`, every one (then the loops know their lengths and
/// vectorize without bounds checks). A loop, not `array::map`, which LLVM may leave as a call
/// inside the element loops.
#[inline(always)]
fn cut_streams<C, const N: usize>(s: [&[C]; N], j: usize, m: usize) -> [&[C]; N] {
    let mut out = s;
    for v in out.iter_mut() {
        *v = &v[j..j + m];
    }
    out
}

/// One element `p` of raw parameters: its derived values, and whether it fails `Op::passes`
/// (as 0 or 1, for a branch-free OR over the loop). `NORMAL`: the run passed `Op::all_normal`
/// (checked by [`all_normal`]), so the element passes and `Op::derive_normal` gives its values.
#[inline(always)]
fn raw_at<C: Real, Op: ElemOp<C>, const NORMAL: bool>(op: Op, p: [C; 3]) -> ([C; ND], u32) {
    if NORMAL {
        (op.derive_normal(p), 0)
    } else {
        (op.derive(p), !op.passes(p) as u32)
    }
}

/// Elements `[j, j + m)` of a per-element gradient the op has; empty for one it has not (its
/// destination may be empty).
#[inline(always)]
fn run_part<C>(a: &mut [C], has: bool, j: usize, m: usize) -> &mut [C] {
    if has { &mut a[j..j + m] } else { &mut [] }
}

/// Elements per run of the per-element loops that are checked with [`all_normal`] as one:
/// the check reads the run's parameters into L1, where the loop then finds them.
const NORMAL_RUN: usize = 512;

/// Whether a run of raw per-element parameters takes the normal path: known (`known`, from
/// an earlier pass), or checked now.
#[inline(always)]
fn normal_run<C: Real, Op: ElemOp<C>>(op: Op, known: bool, s: &[&[C]; 3], m: usize) -> bool {
    Op::HAS_NORMAL && (known || all_normal(op, s, m))
}

/// Whether every element of the raw streams (cut to one run) passes `Op::all_normal`.
#[inline(always)]
fn all_normal<C: Real, Op: ElemOp<C>>(op: Op, s: &[&[C]; 3], m: usize) -> bool {
    Op::HAS_NORMAL && op.all_normal(cut_streams(*s, 0, m))
}

/// The forward of one run of raw per-element parameters: y, and whether an element failed
/// `Op::passes` (as 0 or 1).
#[inline(always)]
fn forward_raw<C: Real, Op: ElemOp<C>, const NORMAL: bool>(
    op: Op,
    s: [&[C]; 3],
    x: &[C],
    y: &mut [C],
    index: u64,
) -> u32 {
    let n = x.len();
    // Each stream its own slice of length n, so that no index below needs a bounds check
    // (indexed through the array, one was left on k, and with it a scalar copy of the loop
    // for the last elements of every run).
    let [k, i, f] = s;
    let (k, i, f, y) = (&k[..n], &i[..n], &f[..n], &mut y[..n]);
    let mut bad = 0u32;
    for j in 0..n {
        let (d, fails) = raw_at::<C, Op, NORMAL>(op, [k[j], i[j], f[j]]);
        bad |= fails;
        y[j] = op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
    }
    bad
}

/// The gradients (and y when `Y`) of one run of raw per-element parameters, stored per
/// element (`a` as long as the run where the op has that gradient, else empty), and whether an
/// element failed `Op::passes` (as 0 or 1).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_raw<C: Real, Op: ElemOp<C>, const Y: bool, const NORMAL: bool>(
    op: Op,
    s: [&[C]; 3],
    x: &[C],
    dy: &[C],
    y: &mut [C],
    gx: &mut [C],
    a: [&mut [C]; 3],
    index: u64,
) -> u32 {
    let n = x.len();
    let has = Op::HAS_GRAD;
    // As in `forward_raw`: a slice of length n per stream.
    let [k, i, f] = s;
    let (k, i, f, dy, gx) = (&k[..n], &i[..n], &f[..n], &dy[..n], &mut gx[..n]);
    let y: &mut [C] = if Y { &mut y[..n] } else { &mut [] };
    let [a0, a1, a2] = a;
    let (a0, a1, a2) = (
        if has[0] { &mut a0[..n] } else { a0 },
        if has[1] { &mut a1[..n] } else { a1 },
        if has[2] { &mut a2[..n] } else { a2 },
    );
    let mut bad = 0u32;
    for j in 0..n {
        let (d, fails) = raw_at::<C, Op, NORMAL>(op, [k[j], i[j], f[j]]);
        bad |= fails;
        let o = op.apply::<true>(x[j], d, dy[j], index + j as u64);
        if Y {
            y[j] = o.y;
        }
        gx[j] = o.gx;
        if has[0] {
            a0[j] = o.gp[0];
        }
        if has[1] {
            a1[j] = o.gp[1];
        }
        if has[2] {
            a2[j] = o.gp[2];
        }
    }
    bad
}

/// Where the elements of a run get their derived values.
trait Lanes<C: Real>: Copy {
    /// Element `t`: its derived values, and whether it fails `Op::passes` (as 0 or 1, for a
    /// branch-free OR over the loop).
    fn at<Op: ElemOp<C>>(self, op: Op, t: usize) -> ([C; ND], u32);
    /// The elements `[j, j + m)`.
    fn cut(self, j: usize, m: usize) -> Self;
}

/// Precomputed derived values, one stream each.
#[derive(Clone, Copy)]
struct DerivedLanes<'a, C>([&'a [C]; ND]);

impl<C: Real> Lanes<C> for DerivedLanes<'_, C> {
    #[inline(always)]
    fn at<Op: ElemOp<C>>(self, _op: Op, t: usize) -> ([C; ND], u32) {
        let d = std::array::from_fn(|q| if q < Op::NDER { self.0[q][t] } else { C::ZERO });
        (d, 0)
    }
    #[inline(always)]
    fn cut(self, j: usize, m: usize) -> Self {
        DerivedLanes(cut_streams(self.0, j, m))
    }
}

/// The raw streams.
#[derive(Clone, Copy)]
struct RawLanes<'a, C>([&'a [C]; 3]);

impl<C: Real> Lanes<C> for RawLanes<'_, C> {
    #[inline(always)]
    fn at<Op: ElemOp<C>>(self, op: Op, t: usize) -> ([C; ND], u32) {
        let s = self.0;
        raw_at::<C, Op, false>(op, [s[0][t], s[1][t], s[2][t]])
    }
    #[inline(always)]
    fn cut(self, j: usize, m: usize) -> Self {
        RawLanes(cut_streams(self.0, j, m))
    }
}

/// How a piece of `n` elements whose element 0 is parameter element `c0` falls on blocks:
/// `h` elements before the first block boundary, then `nb` whole blocks, then the rest.
/// Whole blocks run with literal lane bounds (a constant trip count, no remainder loop).
#[inline(always)]
fn split_blocks(c0: usize, n: usize) -> (usize, usize) {
    let h = ((B - c0 % B) % B).min(n);
    (h, (n - h) / B)
}

/// Gradients (and `y` when `Y`) of `m` elements that are lanes `l0 .. l0 + m` of one block,
/// added into the block's accumulators `a` (`grad_slots` values per lane). `src` starts at
/// the first of them.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn add_lanes<C: Real, Op: ElemOp<C>, L: Lanes<C>, const Y: bool>(
    op: Op,
    src: L,
    x: &[C],
    dy: &[C],
    y: &mut [C],
    gx: &mut [C],
    a: &mut [C],
    l0: usize,
    m: usize,
    index: u64,
) -> u32 {
    let (slot, ng) = grad_slots(Op::HAS_GRAD);
    let (x, dy, gx, a) = (&x[..m], &dy[..m], &mut gx[..m], &mut a[..ng * B]);
    let y: &mut [C] = if Y { &mut y[..m] } else { y };
    let mut bad = 0;
    for t in 0..m {
        let l = l0 + t;
        let (d, fails) = src.at(op, t);
        bad |= fails;
        let o = op.apply::<true>(x[t], d, dy[t], index + t as u64);
        if Y {
            y[t] = o.y;
        }
        gx[t] = o.gx;
        for q in 0..3 {
            if Op::HAS_GRAD[q] {
                let i = slot[q] * B + l;
                a[i] = a[i] + o.gp[q];
            }
        }
    }
    bad
}

/// Gradients (and `y` when `Y`) of a piece whose element 0 is parameter element `off`,
/// added into the blocked accumulators `a`: the partial blocks at both ends, then the whole
/// blocks with literal lane bounds (a constant trip count, no remainder loop).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn add_blocks<C: Real, Op: ElemOp<C>, L: Lanes<C>, const Y: bool>(
    op: Op,
    src: L,
    x: &[C],
    dy: &[C],
    y: &mut [C],
    gx: &mut [C],
    a: &mut [C],
    off: usize,
    index: u64,
) -> u32 {
    let n = x.len();
    let wa = grad_slots(Op::HAS_GRAD).1 * B;
    let (h, nb) = split_blocks(off, n);
    let e = h + nb * B;
    let mut bad = 0;
    for (j, m) in [(0, h), (e, n - e)] {
        if m > 0 {
            let c = off + j;
            let ab = &mut a[c / B * wa..][..wa];
            let yb: &mut [C] = if Y { &mut y[j..] } else { &mut [] };
            let (s, i) = (src.cut(j, m), index + j as u64);
            bad |= add_lanes::<C, Op, L, Y>(
                op,
                s,
                &x[j..],
                &dy[j..],
                yb,
                &mut gx[j..],
                ab,
                c % B,
                m,
                i,
            );
        }
    }
    let whole = x[h..e]
        .chunks_exact(B)
        .zip(gx[h..e].chunks_exact_mut(B))
        .zip(a[(off + h) / B * wa..][..nb * wa].chunks_exact_mut(wa))
        .enumerate();
    for (b, ((xb, gxb), ab)) in whole {
        let j = h + b * B;
        let yb: &mut [C] = if Y { &mut y[j..j + B] } else { &mut [] };
        let (s, dyb, i) = (src.cut(j, B), &dy[j..j + B], index + j as u64);
        bad |= add_lanes::<C, Op, L, Y>(op, s, xb, dyb, yb, gxb, ab, 0, B, i);
    }
    bad
}

impl<C: Real, Op: ElemOp<C>> Job<'_, C, Op> {
    /// The forward pass of the piece. Returns whether raw contiguous parameters passed
    /// `Op::passes` (checked in the element loop; passed where the parameters are derived or
    /// one value) and whether they were all normal (never where they are derived or one
    /// value: those take no per-element path).
    #[inline(always)]
    fn forward(self) -> Verdict {
        if self.piece.vec {
            self.forward_vec()
        } else {
            self.forward_const()
        }
    }

    /// The gradient pass of the piece (and y where it is stored); the [`Verdict`] as for
    /// [`Job::forward`].
    #[inline(always)]
    fn gradient(self) -> Verdict {
        match (self.piece.vec, !self.piece.y.is_empty()) {
            (false, true) => self.grad_const::<true>(),
            (false, false) => self.grad_const::<false>(),
            (true, true) => self.grad_vec::<true>(),
            (true, false) => self.grad_vec::<false>(),
        }
    }

    /// The derived values of a single-value piece.
    #[inline(always)]
    fn const_params(&self) -> [C; ND] {
        match self.piece.p {
            Params::Raw { s, .. } => self.op.derive([s[0][0], s[1][0], s[2][0]]),
            Params::Derived { s } => DerivedLanes(s).at(self.op, 0).0,
        }
    }

    #[inline(always)]
    fn forward_const(self) -> Verdict {
        let d = self.const_params();
        let Piece { x, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        for j in 0..n {
            y[j] = self.op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
        }
        GENERAL
    }

    #[inline(always)]
    fn forward_vec(self) -> Verdict {
        let (op, known) = (self.op, self.known_normal);
        let Piece { x, p, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        match p {
            Params::Raw { s, .. } => {
                let (mut bad, mut general) = (0u32, 0u32);
                for j in (0..n).step_by(NORMAL_RUN) {
                    let m = NORMAL_RUN.min(n - j);
                    let (s, x, y) = (cut_streams(s, j, m), &x[j..j + m], &mut y[j..j + m]);
                    let i = index + j as u64;
                    let normal = normal_run(op, known, &s, m);
                    general |= !normal as u32;
                    bad |= if normal {
                        forward_raw::<C, Op, true>(op, s, x, y, i)
                    } else {
                        forward_raw::<C, Op, false>(op, s, x, y, i)
                    };
                }
                Verdict {
                    passed: bad == 0,
                    normal: general == 0,
                }
            }
            Params::Derived { s } => {
                let s = DerivedLanes(s).cut(0, n);
                for j in 0..n {
                    let d = s.at(op, j).0;
                    y[j] = op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
                }
                GENERAL
            }
        }
    }

    /// Gradients (and y when `Y`) of a piece with contiguous parameters: stored per element
    /// (raw parameters of an element-wise plan) or added into blocked accumulators.
    #[inline(always)]
    fn grad_vec<const Y: bool>(self) -> Verdict {
        let (op, known) = (self.op, self.known_normal);
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
        let (x, dy, gx) = (&x[..n], &dy[..n], &mut gx[..n]);
        let y: &mut [C] = if Y { &mut y[..n] } else { &mut [] };
        let has = Op::HAS_GRAD;
        match (p, acc) {
            (Params::Raw { s, .. }, Acc::Store([a0, a1, a2])) => {
                let (mut bad, mut general) = (0u32, 0u32);
                for j in (0..n).step_by(NORMAL_RUN) {
                    let m = NORMAL_RUN.min(n - j);
                    let s = cut_streams(s, j, m);
                    let (x, dy, gx) = (&x[j..j + m], &dy[j..j + m], &mut gx[j..j + m]);
                    let y: &mut [C] = if Y { &mut y[j..j + m] } else { &mut [] };
                    let a = [
                        run_part(a0, has[0], j, m),
                        run_part(a1, has[1], j, m),
                        run_part(a2, has[2], j, m),
                    ];
                    let i = index + j as u64;
                    let normal = normal_run(op, known, &s, m);
                    general |= !normal as u32;
                    bad |= if normal {
                        grad_raw::<C, Op, Y, true>(op, s, x, dy, y, gx, a, i)
                    } else {
                        grad_raw::<C, Op, Y, false>(op, s, x, dy, y, gx, a, i)
                    };
                }
                Verdict {
                    passed: bad == 0,
                    normal: general == 0,
                }
            }
            (Params::Raw { s, .. }, Acc::Add { a, off }) => Verdict {
                passed: add_blocks::<C, Op, _, Y>(op, RawLanes(s), x, dy, y, gx, a, off, index)
                    == 0,
                normal: false,
            },
            (Params::Derived { s }, Acc::Add { a, off }) => {
                add_blocks::<C, Op, _, Y>(op, DerivedLanes(s), x, dy, y, gx, a, off, index);
                GENERAL
            }
            // Derived parameters only come with a reduction, gradients only with a
            // destination (`run`).
            _ => unreachable!("gradients of contiguous parameters without a destination"),
        }
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    fn grad_const<const Y: bool>(self) -> Verdict {
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
        let (x, dy, gx) = (&x[..n], &dy[..n], &mut gx[..n]);
        let y: &mut [C] = if Y { &mut y[..n] } else { &mut [] };
        let mut lanes = [[C::ZERO; LANES]; 3];
        let full = n / LANES * LANES;
        let (xf, dyf) = (&x[..full], &dy[..full]);
        let (gxf, gxt) = gx.split_at_mut(full);
        let (yf, yt): (&mut [C], &mut [C]) = if Y {
            y.split_at_mut(full)
        } else {
            (&mut [], &mut [])
        };
        for b in (0..full).step_by(LANES) {
            for l in 0..LANES {
                let j = b + l;
                let o = self.op.apply::<true>(xf[j], d, dyf[j], index + j as u64);
                if Y {
                    yf[j] = o.y;
                }
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
            if Y {
                yt[j - full] = o.y;
            }
            gxt[j - full] = o.gx;
            for q in 0..3 {
                if Op::HAS_GRAD[q] {
                    lanes[q][0] = lanes[q][0] + o.gp[q];
                }
            }
        }
        // A single-value piece adds into its parameter element's accumulators.
        let Acc::Add { a, off } = acc else {
            unreachable!("single-value gradients are reduced (`run`)")
        };
        let (slot, ng) = grad_slots(Op::HAS_GRAD);
        for q in 0..3 {
            if Op::HAS_GRAD[q] {
                let i = bidx(off, slot[q], ng);
                a[i] = lanes[q].iter().fold(a[i], |s, &v| s + v);
            }
        }
        GENERAL
    }
}
