//! Fused element-wise kernels over a broadcast plan.
//!
//! A kernel is an [`ElemOp`]: one element's forward and local gradients, written once over
//! [`Real`]. [`run`] walks `x` in segments, in parallel with rayon above [`PAR_MIN`] elements,
//! and runs each segment inside `pulp::Arch::dispatch`, where the target features of the best
//! SIMD level are enabled and LLVM vectorizes the branch-free element body at that width.
//! [`Path::Scalar`] runs the same body without dispatch: the reference the tests compare
//! against bit for bit.
pub(crate) mod fixed;
pub(crate) mod float;

use crate::real::{Element, Real};
use rayon::prelude::*;

/// Below this many elements a call runs on the calling thread.
pub const PAR_MIN: usize = 1 << 16;
/// Elements per parallel task.
const SEG: usize = 1 << 14;
/// Elements per conversion block for storage types narrower than the compute type.
const BLOCK: usize = 512;

/// Which code path runs the element bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    /// The best SIMD level of this CPU (pulp's runtime dispatch), in parallel.
    #[default]
    Simd,
    /// Plain scalar code, single-threaded: the reference path.
    Scalar,
}

/// One element's op with three parameters (k, i, f or m, e, e0).
pub(crate) trait ElemOp<C: Real>: Copy + Send + Sync {
    /// Which of the three parameters receive gradients.
    const HAS_GRAD: [bool; 3];
    /// Output and local gradients times `g` (gradients only when `GRAD`). `index` is the
    /// element's flat index in `x`, for counter-based noise.
    fn apply<const GRAD: bool>(self, x: C, p: [C; 3], g: C, index: u64) -> Out<C>;
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

    /// Whether each x element has its own parameter (no reduction needed).
    fn elementwise(&self) -> bool {
        self.bw_len == self.len
    }
}

/// Buffers of one call. Parameters are in the compute type, x-shaped data in the storage type.
pub(crate) struct Io<'a, T: Element> {
    pub x: &'a [T],
    pub p: [&'a [T::C]; 3],
    pub dy: Option<&'a [T]>,
    pub y: &'a mut [T],
    pub gx: Option<&'a mut [T]>,
    /// Parameter gradients, overwritten, in the bit-width shape.
    pub gp: Option<[&'a mut [T::C]; 3]>,
}

/// Runs `op` over all of `x` following `plan`.
pub(crate) fn run<T: Element, Op: ElemOp<T::C>>(op: Op, plan: &Plan, io: Io<'_, T>, path: Path) {
    let Io {
        x,
        p,
        dy,
        y,
        gx,
        gp,
    } = io;
    let grad = dy.is_some();
    match gp {
        Some(mut gp) if grad && !plan.elementwise() => {
            // Reduction: each task sums into private accumulators, then they are added.
            let n = plan.bw_len;
            let zero = || {
                [
                    vec![T::C::ZERO; n],
                    vec![T::C::ZERO; n],
                    vec![T::C::ZERO; n],
                ]
            };
            let task = |mut acc: [Vec<T::C>; 3], (c, (yc, gxc)): (usize, (&mut [T], &mut [T]))| {
                let [a0, a1, a2] = &mut acc;
                segment(op, plan, x, p, dy, c * SEG, yc, gxc, [a0, a1, a2], 0, path);
                acc
            };
            let add = |mut a: [Vec<T::C>; 3], b: [Vec<T::C>; 3]| {
                for (av, bv) in a.iter_mut().zip(b.iter()) {
                    for (s, t) in av.iter_mut().zip(bv) {
                        *s = *s + *t;
                    }
                }
                a
            };
            let gx = gx.expect("gx with dy");
            let acc = if path == Path::Scalar || plan.len < PAR_MIN {
                y.chunks_mut(SEG)
                    .zip(gx.chunks_mut(SEG))
                    .enumerate()
                    .fold(zero(), task)
            } else {
                let chunks = plan.len.div_ceil(SEG);
                let min = chunks.div_ceil(2 * rayon::current_num_threads()).max(1);
                y.par_chunks_mut(SEG)
                    .zip(gx.par_chunks_mut(SEG))
                    .enumerate()
                    .with_min_len(min)
                    .fold(zero, task)
                    .reduce(zero, add)
            };
            for (dst, src) in gp.iter_mut().zip(acc) {
                if !dst.is_empty() {
                    dst.copy_from_slice(&src);
                }
            }
        }
        gp => {
            // No reduction: every task owns disjoint pieces of y, gx and the parameter grads.
            let mut gp = gp;
            let mut empty: [&mut [T::C]; 3] = [&mut [], &mut [], &mut []];
            let gp_ref: &mut [&mut [T::C]; 3] = match gp.as_mut() {
                Some(g) if grad => {
                    for s in g.iter_mut() {
                        s.fill(T::C::ZERO);
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
            let body = |c: usize, yc: &mut [T], gxc: &mut [T], g: [&mut [T::C]; 3]| {
                segment(op, plan, x, p, dy, c * SEG, yc, gxc, g, c * SEG, path);
            };
            let [g0, g1, g2] = gp_ref;
            if path == Path::Scalar || plan.len < PAR_MIN {
                for (c, yc) in y.chunks_mut(SEG).enumerate() {
                    let gxc = seg_of(gx, c);
                    body(c, yc, gxc, [seg_of(g0, c), seg_of(g1, c), seg_of(g2, c)]);
                }
            } else {
                let n = plan.len.div_ceil(SEG);
                let gxs = chunks_or_empty(gx, n);
                let (c0, c1, c2) = (
                    chunks_or_empty(g0, n),
                    chunks_or_empty(g1, n),
                    chunks_or_empty(g2, n),
                );
                y.par_chunks_mut(SEG)
                    .zip(gxs)
                    .zip(c0)
                    .zip(c1)
                    .zip(c2)
                    .enumerate()
                    .for_each(|(c, ((((yc, gxc), a), b), d))| body(c, yc, gxc, [a, b, d]));
            }
        }
    }
}

/// Chunk `c` of `s` (empty stays empty).
fn seg_of<T>(s: &mut [T], c: usize) -> &mut [T] {
    if s.is_empty() {
        return s;
    }
    let end = ((c + 1) * SEG).min(s.len());
    &mut s[c * SEG..end]
}

/// `s` in chunks of SEG, or `n` empty slices when `s` is empty.
fn chunks_or_empty<T>(s: &mut [T], n: usize) -> Vec<&mut [T]> {
    if s.is_empty() {
        (0..n).map(|_| &mut [][..]).collect()
    } else {
        s.chunks_mut(SEG).collect()
    }
}

/// The block `[s, s + n)` of a parameter slice that runs along x, or the single value.
fn sub<C>(v: &[C], s: usize, n: usize, vec: bool) -> &[C] {
    if vec && !v.is_empty() {
        &v[s..s + n]
    } else {
        v
    }
}

/// Processes x[start .. start + y.len()], split at run boundaries. `acc` are either full
/// bit-width accumulators (`acc_base` = 0, reduction) or the slice of the parameter gradients
/// that starts at parameter offset `acc_base` (element-wise plans).
#[allow(clippy::too_many_arguments)]
fn segment<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    plan: &Plan,
    x: &[T],
    p: [&[T::C]; 3],
    dy: Option<&[T]>,
    start: usize,
    y: &mut [T],
    gx: &mut [T],
    acc: [&mut [T::C]; 3],
    acc_base: usize,
    path: Path,
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
        let ps = [
            &p[0][off..off + plen],
            &p[1][off..off + plen],
            &p[2][off..off + plen],
        ];
        let ao = off - acc_base;
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
            Some(d) => (&d[gi..gi + n], &mut gx[pos..pos + n]),
            None => (&[], &mut []),
        };
        run_piece(op, xs, ps, dys, ys, gxs, accs, gi as u64, plan.vec, path);
        pos += n;
    }
}

/// Converts narrow storage to compute type in blocks, then calls the SIMD or scalar loop.
#[allow(clippy::too_many_arguments)]
fn run_piece<T: Element, Op: ElemOp<T::C>>(
    op: Op,
    x: &[T],
    p: [&[T::C]; 3],
    dy: &[T],
    y: &mut [T],
    gx: &mut [T],
    acc: [&mut [T::C]; 3],
    index: u64,
    vec: bool,
    path: Path,
) {
    if let (Some(xc), Some(dyc)) = (T::as_c(x), T::as_c(dy)) {
        let yc = T::as_c_mut(y).expect("same storage");
        let gxc = T::as_c_mut(gx).expect("same storage");
        return dispatch(
            op,
            Piece {
                x: xc,
                p,
                dy: dyc,
                y: yc,
                gx: gxc,
                acc,
                index,
                vec,
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
            if v.is_empty() {
                v as *mut [T::C]
            } else if vec {
                &mut v[s..s + n] as *mut [T::C]
            } else {
                v as *mut [T::C]
            }
        };
        // SAFETY: distinct buffers, as above.
        let accs = unsafe { [&mut *sub_mut(a0), &mut *sub_mut(a1), &mut *sub_mut(a2)] };
        let piece = Piece {
            x: &bx[..n],
            p: [
                sub(p[0], s, n, vec),
                sub(p[1], s, n, vec),
                sub(p[2], s, n, vec),
            ],
            dy: if grad { &bdy[..n] } else { &[] },
            y: &mut by[..n],
            gx: if grad { &mut bgx[..n] } else { &mut [] },
            acc: accs,
            index: index + s as u64,
            vec,
        };
        dispatch(op, piece, path);
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
}

/// One contiguous piece in the compute type: parameters are `x.len()` long (`vec`) or one value.
struct Piece<'a, C> {
    x: &'a [C],
    p: [&'a [C]; 3],
    dy: &'a [C],
    y: &'a mut [C],
    gx: &'a mut [C],
    acc: [&'a mut [C]; 3],
    index: u64,
    vec: bool,
}

fn dispatch<C: Real, Op: ElemOp<C>>(op: Op, piece: Piece<'_, C>, path: Path) {
    let job = Job { op, piece };
    match path {
        Path::Simd => pulp::Arch::new().dispatch(job),
        Path::Scalar => job.run(),
    }
}

/// A piece and its op, runnable under any SIMD level.
struct Job<'a, C, Op> {
    op: Op,
    piece: Piece<'a, C>,
}

impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for Job<'_, C, Op> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        // The target features of S are enabled here; the loops below vectorize at its width.
        self.run()
    }
}

/// Lanes of the private sums of a broadcast parameter's gradient (keeps the loop vectorizable).
const LANES: usize = 16;

impl<C: Real, Op: ElemOp<C>> Job<'_, C, Op> {
    #[inline(always)]
    fn run(self) {
        let grad = !self.piece.dy.is_empty();
        match (grad, self.piece.vec) {
            (false, true) => self.forward::<true>(),
            (false, false) => self.forward::<false>(),
            (true, true) => self.grad_vec(),
            (true, false) => self.grad_scalar(),
        }
    }

    #[inline(always)]
    fn param(p: &[C], j: usize, vec: bool) -> C {
        if vec { p[j] } else { p[0] }
    }

    #[inline(always)]
    fn forward<const VEC: bool>(self) {
        let Piece { x, p, y, index, .. } = self.piece;
        let n = x.len();
        let (x, y) = (&x[..n], &mut y[..n]);
        let p = if VEC {
            [&p[0][..n], &p[1][..n], &p[2][..n]]
        } else {
            p
        };
        for j in 0..n {
            let pj = [
                Self::param(p[0], j, VEC),
                Self::param(p[1], j, VEC),
                Self::param(p[2], j, VEC),
            ];
            y[j] = self
                .op
                .apply::<false>(x[j], pj, C::ZERO, index + j as u64)
                .y;
        }
    }

    #[inline(always)]
    fn grad_vec(self) {
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
        let p = [&p[0][..n], &p[1][..n], &p[2][..n]];
        let [a0, a1, a2] = acc;
        let has = Op::HAS_GRAD;
        let (a0, a1, a2) = (
            if has[0] { &mut a0[..n] } else { a0 },
            if has[1] { &mut a1[..n] } else { a1 },
            if has[2] { &mut a2[..n] } else { a2 },
        );
        for j in 0..n {
            let o =
                self.op
                    .apply::<true>(x[j], [p[0][j], p[1][j], p[2][j]], dy[j], index + j as u64);
            y[j] = o.y;
            gx[j] = o.gx;
            if has[0] {
                a0[j] = a0[j] + o.gp[0];
            }
            if has[1] {
                a1[j] = a1[j] + o.gp[1];
            }
            if has[2] {
                a2[j] = a2[j] + o.gp[2];
            }
        }
    }

    #[inline(always)]
    fn grad_scalar(self) {
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
        let pj = [p[0][0], p[1][0], p[2][0]];
        let mut lanes = [[C::ZERO; LANES]; 3];
        let full = n / LANES * LANES;
        for b in (0..full).step_by(LANES) {
            for l in 0..LANES {
                let j = b + l;
                let o = self.op.apply::<true>(x[j], pj, dy[j], index + j as u64);
                y[j] = o.y;
                gx[j] = o.gx;
                for q in 0..3 {
                    lanes[q][l] = lanes[q][l] + o.gp[q];
                }
            }
        }
        for j in full..n {
            let o = self.op.apply::<true>(x[j], pj, dy[j], index + j as u64);
            y[j] = o.y;
            gx[j] = o.gx;
            for q in 0..3 {
                lanes[q][0] = lanes[q][0] + o.gp[q];
            }
        }
        for (q, a) in acc.into_iter().enumerate() {
            if Op::HAS_GRAD[q] {
                a[0] = lanes[q].iter().fold(a[0], |s, &v| s + v);
            }
        }
    }
}
