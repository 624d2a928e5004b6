//! One call of a kernel: [`run`] derives what it can up front, splits x into segments of
//! [`SEGMENT_LEN`] elements (in parallel from [`PAR_MIN`] elements on), a segment into pieces at
//! run boundaries (whole runs that read the same parameters, such as the rows of a batch over
//! per-feature bit widths, stay one piece), and runs each piece's job on the chosen path.
//!
//! A forward pass, and the gradients of an element-wise plan, store their results segment by
//! segment ([`Pass::store`]); the gradients of broadcast parameters are summed
//! ([`Pass::reduce`], in [`super::reduce`]). Storage types narrower than the compute type (f16,
//! bf16) are widened and narrowed in blocks of [`CONVERT_BLOCK`] elements around each piece
//! ([`run_piece`]).
use super::buffers::{
    Buffers, ParamStreams, PieceGrads, SegmentGrads, Upstream, UpstreamSlice, cut,
};
use super::check::{CallChecks, Check, Verdict, valid};
use super::dispatch::{Par, Path};
use super::loops::{Job, Piece};
use super::op::ElemOp;
use super::plan::{Plan, precompute};
use super::{PAR_MIN, SEGMENT_LEN, TEAM_MIN};
use crate::real::{Element, Real};
use rayon::prelude::*;

/// Elements per conversion block for storage types narrower than the compute type.
const CONVERT_BLOCK: usize = 512;

/// Runs `op` over all of `x` following `plan`; checks the raw parameters on the way (`checks`)
/// and says whether they all passed and whether all were normal. `known_normal`: the raw
/// per-element parameters are known to pass `Op::all_normal` (an earlier pass found it), so they
/// are neither checked nor derived the general way; claimed wrongly, the outputs are
/// unspecified (but defined: `Op::derive_normal` is safe for any input).
pub(crate) fn run<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    io: Buffers<'_, T>,
    path: Path,
    par: Par,
    checks: [Check; 3],
    known_normal: bool,
) -> Verdict {
    let bad = std::sync::atomic::AtomicBool::new(false);
    let general = std::sync::atomic::AtomicBool::new(false);
    let chk = CallChecks {
        kinds: checks,
        bad: &bad,
        known_normal,
        general: &general,
    };
    let Buffers {
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
    let pre: Option<Vec<T::C>> = upfront.then(|| precompute(op, p, plan.bw_len, path));
    let params = match &pre {
        Some(d) => ParamStreams::Derived {
            s: std::array::from_fn(|q| &d[q * plan.bw_len..(q + 1) * plan.bw_len]),
        },
        None => ParamStreams::Raw { s: p, same },
    };
    // A uniform upstream gradient is read from one segment's worth of copies (pieces never
    // span more than a segment), so it costs no pass over memory.
    let same_dy: Vec<T> = match dy {
        Some(Upstream::Same(v)) => vec![v; SEGMENT_LEN.min(plan.len)],
        _ => Vec::new(),
    };
    let dy = match dy {
        Some(Upstream::Each(d)) => Some(UpstreamSlice::Each(d)),
        Some(Upstream::Same(_)) => Some(UpstreamSlice::Same(&same_dy)),
        None => None,
    };
    // A team session on this thread splits smaller calls than rayon, and instead of it.
    let team = if par.splits() && plan.len >= TEAM_MIN {
        crate::team::width()
    } else {
        1
    };
    let pass = Pass {
        op,
        plan,
        x,
        params,
        dy,
        path,
        chk,
        parallel: team == 1 && par.splits() && plan.len >= PAR_MIN,
        team,
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
pub(super) struct Pass<'a, T: Element, Op> {
    op: Op,
    pub(super) plan: &'a Plan,
    x: &'a [T],
    params: ParamStreams<'a, T::C>,
    dy: Option<UpstreamSlice<'a, T>>,
    path: Path,
    chk: CallChecks<'a>,
    pub(super) parallel: bool,
    /// The threads of the team session that runs the call's pieces (1: none).
    pub(super) team: usize,
}

impl<T: Element, Op: ElemOp<T::C>> Pass<'_, T, Op> {
    /// x elements `[start, start + len)`; `y` empty when not stored, `gx` empty without dy.
    pub(super) fn segment(
        &self,
        start: usize,
        len: usize,
        y: &mut [T],
        gx: &mut [T],
        dst: SegmentGrads<'_, T::C>,
    ) {
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
        // A team gets one chunk per thread (whole cache lines each), rayon segments.
        let chunk = if self.team > 1 {
            crate::team::part_len(plan.len).min(SEGMENT_LEN)
        } else {
            SEGMENT_LEN
        };
        let n = plan.len.div_ceil(chunk);
        let chunks = chunks_or_empty(y, n, chunk)
            .zip(chunks_or_empty(gx, n, chunk))
            .zip(chunks_or_empty(g0, n, chunk))
            .zip(chunks_or_empty(g1, n, chunk))
            .zip(chunks_or_empty(g2, n, chunk))
            .enumerate();
        let body = |c: usize, yc: &mut [T], gxc: &mut [T], g: [&mut [T::C]; 3]| {
            let len = chunk.min(plan.len - c * chunk);
            let dst = if grad {
                SegmentGrads::Store(g, c * chunk)
            } else {
                SegmentGrads::None
            };
            self.segment(c * chunk, len, yc, gxc, dst);
        };
        if self.team > 1 {
            crate::team::for_each_item(chunks.collect(), |(c, ((((yc, gxc), a), b), d))| {
                body(c, yc, gxc, [a, b, d])
            });
        } else if self.parallel {
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
}

/// `g`, or `s` where it holds a buffer.
fn pick<'a, C>(g: &'a mut [C], s: &'a mut Vec<C>) -> &'a mut [C] {
    if s.is_empty() { g } else { s.as_mut_slice() }
}

/// `s` in `n` chunks of `len`, or `n` empty slices when `s` is empty (no allocation: a step
/// runs a few dozen passes).
fn chunks_or_empty<T>(s: &mut [T], n: usize, len: usize) -> impl Iterator<Item = &mut [T]> {
    s.chunks_mut(len.max(1))
        .chain(std::iter::repeat_with(|| &mut [][..]))
        .take(n)
}

/// Processes x elements `[start, start + len)`, split at run boundaries into pieces.
/// `y` is empty when not stored, `gx` without an upstream gradient.
#[allow(clippy::too_many_arguments)]
fn segment<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    x: &[T],
    p: ParamStreams<'_, T::C>,
    dy: Option<UpstreamSlice<'_, T>>,
    start: usize,
    len: usize,
    y: &mut [T],
    gx: &mut [T],
    mut dst: SegmentGrads<'_, T::C>,
    path: Path,
    chk: CallChecks<'_>,
) {
    let mut pos = 0;
    // Gathered over the segment and recorded once: every piece of a broadcast pass is not
    // normal, and a store per piece would be a write to a line all threads share.
    let mut general = false;
    // Whole rows that read the same parameters go in one piece (one dispatch), where x needs
    // no widening and the gradients are not stored per element.
    let rows_ok = T::as_c(&x[..0]).is_some() && !matches!(dst, SegmentGrads::Store(..));
    while pos < len {
        let gi = start + pos;
        let row = gi / plan.inner;
        let within = gi % plan.inner;
        let rows = if rows_ok && within == 0 {
            plan.shared_rows(row).min((len - pos) / plan.inner)
        } else {
            1
        };
        let row_len = if rows > 1 { plan.inner } else { 0 };
        let n = if rows > 1 {
            rows * plan.inner
        } else {
            (plan.inner - within).min(len - pos)
        };
        let off = plan.offset(row) + if plan.vec { within } else { 0 };
        let plen = match (plan.vec, rows > 1) {
            (false, _) => 1,
            (true, true) => plan.inner,
            (true, false) => n,
        };
        let ps = p.slice(off, plen);
        // Raw parameters: a single value per run is checked here, contiguous ones inside the
        // element loop (one pass over them, no second read).
        if let ParamStreams::Raw { s, .. } = ps
            && !plan.vec
        {
            for (v, kind) in s.iter().zip(chk.kinds) {
                if !valid(v, kind) {
                    chk.bad.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        let grads = match &mut dst {
            SegmentGrads::None => PieceGrads::None,
            // Element-wise plans: parameter element `off` is x element `gi`, at or after `base`.
            SegmentGrads::Store([a, b, c], base) => {
                let o = off - *base;
                PieceGrads::Store([cut(a, o, plen), cut(b, o, plen), cut(c, o, plen)])
            }
            SegmentGrads::Add(a) => PieceGrads::Add { a, off },
        };
        let xs = &x[gi..gi + n];
        let ys: &mut [T] = if y.is_empty() {
            &mut []
        } else {
            &mut y[pos..pos + n]
        };
        let (dys, gxs): (&[T], &mut [T]) = match dy {
            Some(UpstreamSlice::Each(d)) => (&d[gi..gi + n], &mut gx[pos..pos + n]),
            Some(UpstreamSlice::Same(d)) => (&d[..n], &mut gx[pos..pos + n]),
            None => (&[], &mut []),
        };
        let known = chk.known_normal;
        let v = run_piece(
            op, xs, ps, dys, ys, gxs, grads, gi as u64, plan.vec, known, path, row_len,
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
    p: ParamStreams<'_, T::C>,
    dy: &[T],
    y: &mut [T],
    gx: &mut [T],
    mut grads: PieceGrads<'_, T::C>,
    index: u64,
    vec: bool,
    known_normal: bool,
    path: Path,
    row_len: usize,
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
            grads,
            index,
            vec,
        };
        let job = Job {
            op,
            piece,
            known_normal,
            row_len,
        };
        return job.run_on(path);
    }
    // Narrow storage: widen a block, compute, narrow the results. Pieces of several rows
    // come only where x needs no widening (`segment`): a block's parameters are x's.
    debug_assert_eq!(row_len, 0, "a piece of several rows in narrow storage");
    let grad = !dy.is_empty();
    let keep_y = !y.is_empty();
    let mut bx = [T::C::ZERO; CONVERT_BLOCK];
    let mut bdy = [T::C::ZERO; CONVERT_BLOCK];
    let mut by = [T::C::ZERO; CONVERT_BLOCK];
    let mut bgx = [T::C::ZERO; CONVERT_BLOCK];
    let mut verdict = Verdict {
        passed: true,
        normal: true,
    };
    let mut s = 0;
    while s < x.len() {
        let n = CONVERT_BLOCK.min(x.len() - s);
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
            grads: if vec {
                grads.slice(s, n)
            } else {
                grads.reborrow()
            },
            index: index + s as u64,
            vec,
        };
        let job = Job {
            op,
            piece,
            known_normal,
            row_len: 0,
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
