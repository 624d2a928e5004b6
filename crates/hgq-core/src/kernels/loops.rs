//! The element loops of one piece: a [`Job`] (a piece of x in the compute type, and its op)
//! runs the forward or gradient loop that fits its parameters, at whatever SIMD level
//! [`with_path`](super::dispatch::with_path) enabled.
//!
//! A piece's parameters are one per element or one value, raw or derived up front. Raw
//! per-element parameters go in runs of [`NORMAL_RUN_LEN`] elements, each checked first: a normal
//! run takes the op's cheaper `derive_normal`, the others `derive` and the op's rules. A
//! single-value piece sums its parameter gradients in [`SUM_LANES`] private lanes (one order
//! whatever the SIMD width); per-element ones are stored per element or added into the blocked
//! accumulators of [`super::reduce`]. Every loop is branch-free over its elements and cuts its
//! streams to one length first, so that LLVM vectorizes it without bounds checks.
use super::buffers::{ParamStreams, PieceGrads};
use super::check::{PASSED_NOT_NORMAL, Verdict};
use super::op::{ElemOp, N_DERIVED};
use super::reduce::{add_blocks, block_index, grad_slots};
use crate::real::Real;

/// One contiguous piece in the compute type: parameters for `x.len()` elements (`vec`) or
/// one value. `y` is empty when not stored; `dy` and `gx` are empty in a forward pass.
pub(super) struct Piece<'a, C> {
    pub(super) x: &'a [C],
    pub(super) p: ParamStreams<'a, C>,
    pub(super) dy: &'a [C],
    pub(super) y: &'a mut [C],
    pub(super) gx: &'a mut [C],
    pub(super) grads: PieceGrads<'a, C>,
    pub(super) index: u64,
    pub(super) vec: bool,
}

/// A piece and its op, runnable under any SIMD level.
pub(super) struct Job<'a, C, Op> {
    pub(super) op: Op,
    pub(super) piece: Piece<'a, C>,
    /// Raw per-element parameters are known to pass `Op::all_normal` (see
    /// [`run`](super::pass::run)).
    pub(super) known_normal: bool,
    /// `0`, or the length of the rows of a piece of several rows that read the same
    /// parameters (`p` and the gradient destination are one row's): each row runs as the
    /// piece it would be alone, all under one dispatch (rows of a few elements, such as a
    /// layer's features over its batch, would otherwise pay a dispatch each).
    pub(super) row_len: usize,
}

/// Lanes of the private sums of a single-value parameter's gradient (keeps the loop
/// vectorizable: the sum order is fixed, whatever the SIMD width).
const SUM_LANES: usize = 16;

/// Elements per run of the per-element loops that are checked with [`all_normal`] as one:
/// the check reads the run's parameters into L1, where the loop then finds them.
const NORMAL_RUN_LEN: usize = 512;

impl<C: Real, Op: ElemOp<C>> Job<'_, C, Op> {
    /// [`Job::forward`] of each row (see [`Job::row_len`]).
    #[inline(always)]
    pub(super) fn forward_rows(self) -> Verdict {
        self.each_row::<false>()
    }

    /// [`Job::gradient`] of each row (see [`Job::row_len`]).
    #[inline(always)]
    pub(super) fn gradient_rows(self) -> Verdict {
        self.each_row::<true>()
    }

    /// The forward or (`GRAD`) gradient pass of each row. No closure here: a closure is a
    /// function of its own, compiled without the caller's target features.
    #[inline(always)]
    fn each_row<const GRAD: bool>(self) -> Verdict {
        let n = self.piece.x.len();
        // One loop for one row or several: the body is compiled once per job.
        let rl = match self.row_len {
            0 => n,
            r => r.min(n),
        };
        let rows = n.checked_div(rl).unwrap_or(1);
        let Job {
            op,
            piece,
            known_normal,
            ..
        } = self;
        let Piece {
            x,
            p,
            dy,
            y,
            gx,
            mut grads,
            index,
            vec,
        } = piece;
        let (mut y, mut gx) = (y, gx);
        let mut verdict = Verdict {
            passed: true,
            normal: true,
        };
        for r in 0..rows {
            let s = r * rl;
            // y and gx are empty where not stored; otherwise each row takes its part.
            let (ny, ng) = (rl.min(y.len()), rl.min(gx.len()));
            let (yr, rest) = std::mem::take(&mut y).split_at_mut(ny);
            y = rest;
            let (gr, rest) = std::mem::take(&mut gx).split_at_mut(ng);
            gx = rest;
            let row = Piece {
                x: &x[s..s + rl],
                p,
                dy: if dy.is_empty() { dy } else { &dy[s..s + rl] },
                y: yr,
                gx: gr,
                grads: grads.reborrow(),
                index: index + s as u64,
                vec,
            };
            let job = Job {
                op,
                piece: row,
                known_normal,
                row_len: 0,
            };
            verdict = verdict.and(if GRAD { job.gradient() } else { job.forward() });
        }
        verdict
    }

    /// The forward pass of the piece. Returns whether raw contiguous parameters passed
    /// `Op::passes` (checked in the element loop; passed where the parameters are derived or
    /// one value) and whether they were all normal (never where they are derived or one
    /// value: those take no per-element path).
    #[inline(always)]
    pub(super) fn forward(self) -> Verdict {
        if self.piece.vec {
            self.forward_vec()
        } else {
            self.forward_const()
        }
    }

    /// The gradient pass of the piece (and y where it is stored); the [`Verdict`] as for
    /// [`Job::forward`].
    #[inline(always)]
    pub(super) fn gradient(self) -> Verdict {
        match (self.piece.vec, !self.piece.y.is_empty()) {
            (false, true) => self.grad_const::<true>(),
            (false, false) => self.grad_const::<false>(),
            (true, true) => self.grad_vec::<true>(),
            (true, false) => self.grad_vec::<false>(),
        }
    }

    /// The derived values of a single-value piece.
    #[inline(always)]
    fn const_params(&self) -> [C; N_DERIVED] {
        match self.piece.p {
            ParamStreams::Raw { s, .. } => self.op.derive([s[0][0], s[1][0], s[2][0]]),
            ParamStreams::Derived { s } => DerivedLanes(s).at(self.op, 0).0,
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
        PASSED_NOT_NORMAL
    }

    #[inline(always)]
    fn forward_vec(self) -> Verdict {
        let (op, known) = (self.op, self.known_normal);
        let Piece { x, p, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        match p {
            ParamStreams::Raw { s, .. } => {
                let (mut bad, mut general) = (0u32, 0u32);
                for j in (0..n).step_by(NORMAL_RUN_LEN) {
                    let m = NORMAL_RUN_LEN.min(n - j);
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
            ParamStreams::Derived { s } => {
                let s = DerivedLanes(s).cut(0, n);
                for j in 0..n {
                    let d = s.at(op, j).0;
                    y[j] = op.apply::<false>(x[j], d, C::ZERO, index + j as u64).y;
                }
                PASSED_NOT_NORMAL
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
            grads,
            index,
            ..
        } = self.piece;
        let n = x.len();
        let (x, dy, gx) = (&x[..n], &dy[..n], &mut gx[..n]);
        let y: &mut [C] = if Y { &mut y[..n] } else { &mut [] };
        let has = Op::HAS_GRAD;
        match (p, grads) {
            (ParamStreams::Raw { s, .. }, PieceGrads::Store([a0, a1, a2])) => {
                let (mut bad, mut general) = (0u32, 0u32);
                for j in (0..n).step_by(NORMAL_RUN_LEN) {
                    let m = NORMAL_RUN_LEN.min(n - j);
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
            (ParamStreams::Raw { s, .. }, PieceGrads::Add { a, off }) => Verdict {
                passed: add_blocks::<C, Op, _, Y>(op, RawLanes(s), x, dy, y, gx, a, off, index)
                    == 0,
                normal: false,
            },
            (ParamStreams::Derived { s }, PieceGrads::Add { a, off }) => {
                add_blocks::<C, Op, _, Y>(op, DerivedLanes(s), x, dy, y, gx, a, off, index);
                PASSED_NOT_NORMAL
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
            grads,
            index,
            ..
        } = self.piece;
        let n = x.len();
        let (x, dy, gx) = (&x[..n], &dy[..n], &mut gx[..n]);
        let y: &mut [C] = if Y { &mut y[..n] } else { &mut [] };
        let mut lanes = [[C::ZERO; SUM_LANES]; 3];
        let full = n / SUM_LANES * SUM_LANES;
        let (xf, dyf) = (&x[..full], &dy[..full]);
        let (gxf, gxt) = gx.split_at_mut(full);
        let (yf, yt): (&mut [C], &mut [C]) = if Y {
            y.split_at_mut(full)
        } else {
            (&mut [], &mut [])
        };
        for b in (0..full).step_by(SUM_LANES) {
            for l in 0..SUM_LANES {
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
        let PieceGrads::Add { a, off } = grads else {
            unreachable!("single-value gradients are reduced (`run`)")
        };
        let (slot, ng) = grad_slots(Op::HAS_GRAD);
        for q in 0..3 {
            if Op::HAS_GRAD[q] {
                let i = block_index(off, slot[q], ng);
                a[i] = lanes[q].iter().fold(a[i], |s, &v| s + v);
            }
        }
        PASSED_NOT_NORMAL
    }
}

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
fn raw_at<C: Real, Op: ElemOp<C>, const NORMAL: bool>(op: Op, p: [C; 3]) -> ([C; N_DERIVED], u32) {
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
pub(super) trait Lanes<C: Real>: Copy {
    /// Element `t`: its derived values, and whether it fails `Op::passes` (as 0 or 1, for a
    /// branch-free OR over the loop).
    fn at<Op: ElemOp<C>>(self, op: Op, t: usize) -> ([C; N_DERIVED], u32);
    /// The elements `[j, j + m)`.
    fn cut(self, j: usize, m: usize) -> Self;
}

/// Precomputed derived values, one stream each.
#[derive(Clone, Copy)]
struct DerivedLanes<'a, C>([&'a [C]; N_DERIVED]);

impl<C: Real> Lanes<C> for DerivedLanes<'_, C> {
    #[inline(always)]
    fn at<Op: ElemOp<C>>(self, _op: Op, t: usize) -> ([C; N_DERIVED], u32) {
        let d = std::array::from_fn(|q| {
            if q < Op::N_DERIVED_USED {
                self.0[q][t]
            } else {
                C::ZERO
            }
        });
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
    fn at<Op: ElemOp<C>>(self, op: Op, t: usize) -> ([C; N_DERIVED], u32) {
        let s = self.0;
        raw_at::<C, Op, false>(op, [s[0][t], s[1][t], s[2][t]])
    }
    #[inline(always)]
    fn cut(self, j: usize, m: usize) -> Self {
        RawLanes(cut_streams(self.0, j, m))
    }
}
