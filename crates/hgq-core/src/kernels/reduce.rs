//! The reduction of broadcast parameters' gradients, in an order that depends only on the
//! shapes: the same bits for any number of threads and on every path.
//!
//! [`Pass::reduce`] splits x into [`Plan::groups`](super::plan::Plan::groups) groups of segments
//! (at most [`MAX_GROUPS`](super::MAX_GROUPS)), sums each group in order into accumulators of its
//! own, and adds the group sums in group order. The accumulators are blocked: [`ACC_BLOCK`]
//! parameter elements per block, the gradients of the op's parameters interleaved
//! ([`block_index`]). [`add_blocks`] and [`add_lanes`] are the loops that add a piece's gradients
//! into them.
use super::SEGMENT_LEN;
use super::buffers::SegmentGrads;
use super::loops::Lanes;
use super::op::ElemOp;
use super::pass::Pass;
use crate::real::{Element, Real};
use rayon::prelude::*;

/// Elements per block of the blocked accumulators of a reduction: one AVX-512 vector of f32,
/// two AVX2 ones.
///
/// Why blocked: a reduction pass adds the gradients of two or three parameters for every x
/// element into accumulators as long as a run. As separate arrays those are streams at equal
/// offsets modulo 4 KiB (whose stores and loads the CPU takes for dependent); interleaved by
/// blocks they are one, read and written in whole cache lines: about 20% faster per pass.
/// (The precomputed derived values stay separate streams: blocked, the forward is slower.)
const ACC_BLOCK: usize = 16;

/// The index of value `q` of element `c` in a blocked buffer of `nq` values per element:
/// blocks of [`ACC_BLOCK`] elements, each holding the `ACC_BLOCK` copies of value 0, then
/// those of value 1, ...
#[inline(always)]
pub(super) fn block_index(c: usize, q: usize, nq: usize) -> usize {
    (c / ACC_BLOCK) * nq * ACC_BLOCK + q * ACC_BLOCK + c % ACC_BLOCK
}

/// The length of a blocked buffer of `n` elements with `nq` values each.
pub(super) fn blocked_len(n: usize, nq: usize) -> usize {
    n.div_ceil(ACC_BLOCK) * nq * ACC_BLOCK
}

/// Where each parameter's gradient sits among those the op has (`ElemOp::HAS_GRAD`), and how
/// many it has: the values per element of the blocked accumulators.
pub(super) const fn grad_slots(has: [bool; 3]) -> ([usize; 3], usize) {
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

impl<T: Element, Op: ElemOp<T::C>> Pass<'_, T, Op> {
    /// Gradients of broadcast parameters: x in a fixed number of groups of segments, each
    /// summed in order into blocked accumulators, the group sums added in group order.
    pub(super) fn reduce(&self, y: &mut [T], gx: &mut [T], gp: [&mut [T::C]; 3]) {
        let plan = self.plan;
        let n = plan.bw_len;
        let (slot, ng) = grad_slots(Op::HAS_GRAD);
        let keep_y = !y.is_empty();
        let groups = plan.groups();
        let segs = plan.len.div_ceil(SEGMENT_LEN);
        let mut parts: Vec<(usize, &mut [T], &mut [T])> = Vec::with_capacity(groups);
        let (mut yr, mut gr) = (y, gx);
        let mut start = 0;
        for g in 0..groups {
            let end = ((g + 1) * segs / groups * SEGMENT_LEN).min(plan.len);
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
                let e = (s + SEGMENT_LEN).min(gxc.len());
                let ys = if keep_y { &mut yc[s..e] } else { &mut [][..] };
                self.segment(
                    start + s,
                    e - s,
                    ys,
                    &mut gxc[s..e],
                    SegmentGrads::Add(&mut acc),
                );
                s = e;
            }
            acc
        };
        // Groups run in waves of one per thread, each wave's sums added in group order as it
        // ends: a few accumulators alive at a time, not one per group (64 of a run's length
        // would be fresh memory, page-faulted in, on every call).
        let wave = if self.team > 1 {
            self.team
        } else if self.parallel {
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
            let sums: Vec<Vec<T::C>> = if self.team > 1 {
                crate::team::map_items(some, task)
            } else if wave > 1 {
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
                    *v = total[block_index(c, slot[q], ng)];
                }
            } else {
                dst.fill(T::C::ZERO);
            }
        }
    }
}

/// How a piece of `n` elements whose element 0 is parameter element `c0` falls on blocks:
/// `h` elements before the first block boundary, then `nb` whole blocks, then the rest.
/// Whole blocks run with literal lane bounds (a constant trip count, no remainder loop).
#[inline(always)]
fn split_blocks(c0: usize, n: usize) -> (usize, usize) {
    let h = ((ACC_BLOCK - c0 % ACC_BLOCK) % ACC_BLOCK).min(n);
    (h, (n - h) / ACC_BLOCK)
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
    let (x, dy, gx, a) = (&x[..m], &dy[..m], &mut gx[..m], &mut a[..ng * ACC_BLOCK]);
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
                let i = slot[q] * ACC_BLOCK + l;
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
pub(super) fn add_blocks<C: Real, Op: ElemOp<C>, L: Lanes<C>, const Y: bool>(
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
    let wa = grad_slots(Op::HAS_GRAD).1 * ACC_BLOCK;
    let (h, nb) = split_blocks(off, n);
    let e = h + nb * ACC_BLOCK;
    let mut bad = 0;
    for (j, m) in [(0, h), (e, n - e)] {
        if m > 0 {
            let c = off + j;
            let ab = &mut a[c / ACC_BLOCK * wa..][..wa];
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
                c % ACC_BLOCK,
                m,
                i,
            );
        }
    }
    let whole = x[h..e]
        .chunks_exact(ACC_BLOCK)
        .zip(gx[h..e].chunks_exact_mut(ACC_BLOCK))
        .zip(a[(off + h) / ACC_BLOCK * wa..][..nb * wa].chunks_exact_mut(wa))
        .enumerate();
    for (b, ((xb, gxb), ab)) in whole {
        let j = h + b * ACC_BLOCK;
        let yb: &mut [C] = if Y { &mut y[j..j + ACC_BLOCK] } else { &mut [] };
        let (s, dyb, i) = (
            src.cut(j, ACC_BLOCK),
            &dy[j..j + ACC_BLOCK],
            index + j as u64,
        );
        bad |= add_lanes::<C, Op, L, Y>(op, s, xb, dyb, yb, gxb, ab, 0, ACC_BLOCK, i);
    }
    bad
}
