//! How the bit-width tensor maps onto x ([`Plan`]), and what a pass derives from the
//! parameters before it starts ([`precompute`]).
//!
//! A plan collapses the two shapes into runs: x is rows of `inner` contiguous elements, within a
//! run the parameters are contiguous or one value, and the outer dims give each run's parameter
//! offset. Made once per call from the shapes alone, it fixes all that depends on them: whether
//! each x element has its own parameter (the gradients are stored) or not (they are summed), how
//! many partial sums a reduction has, and whether the parameters are derived up front, once per
//! parameter element into [`N_DERIVED`] streams that every run of x reads, rather than per element.
use super::dispatch::{Path, SimdJob, with_path};
use super::op::{ElemOp, N_DERIVED};
use super::{MAX_GROUPS, SEGMENT_LEN};
use crate::real::Real;

/// How the bit-width tensor maps onto `x`: `x` is `rows` runs of `inner` contiguous elements;
/// within a run the parameters are contiguous (`vec`) or one value (`!vec`); the parameter
/// offset of a run is given by the outer dims.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// (extent, parameter stride) of the outer dims, outermost first.
    outer: Vec<(usize, usize)>,
    pub(super) inner: usize,
    pub(super) vec: bool,
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
    pub(super) fn offset(&self, mut row: usize) -> usize {
        let mut off = 0;
        for &(ext, stride) in self.outer.iter().rev() {
            off += (row % ext) * stride;
            row /= ext;
        }
        off
    }

    /// How many runs from `row` on read the parameters `row` reads: those in the same block of
    /// the innermost outer dim where that dim is broadcast (parameter stride 0), else 1.
    #[inline]
    pub(super) fn shared_rows(&self, row: usize) -> usize {
        match self.outer.last() {
            Some(&(ext, 0)) => ext - row % ext,
            _ => 1,
        }
    }

    /// Whether a pass derives the op's values of every parameter element before it starts
    /// (broadcast parameters, read many times), given the op's [`ElemOp::PRECOMPUTE`].
    pub(crate) fn derives_upfront(&self, precompute: bool) -> bool {
        precompute && self.vec && self.bw_len.saturating_mul(4) <= self.len
    }

    /// A parameter of one value as a stream that passes read like a parameter of the plan's shape,
    /// without a copy per element: a segment's worth of copies, marked `same` in
    /// [`Buffers`](super::buffers::Buffers) (pieces never span more than a segment, and read it
    /// from its start).
    pub(crate) fn splat<C: Copy>(&self, v: C) -> Vec<C> {
        vec![v; SEGMENT_LEN.min(self.len).max(1)]
    }

    /// Whether each x element has its own parameter (no reduction needed).
    pub(super) fn elementwise(&self) -> bool {
        self.bw_len == self.len
    }

    /// The number of partial sums of a reduction: fixed by the shapes alone.
    pub(super) fn groups(&self) -> usize {
        let segs = self.len.div_ceil(SEGMENT_LEN).max(1);
        let repeats = (self.len / self.bw_len.max(1)).max(1);
        segs.min(MAX_GROUPS).min(repeats)
    }
}

/// The derived values of every parameter element: [`N_DERIVED`] streams of `n` values one
/// after another in one buffer (stream `q` at `q * n..`), the unused ones zero.
pub(super) fn precompute<C: Real, Op: ElemOp<C>>(
    op: Op,
    p: [&[C]; 3],
    n: usize,
    path: Path,
) -> Vec<C> {
    // All N_DERIVED streams, the unused ones zero: the loops cut every stream to their length.
    // One buffer, not one per stream: a pass over broadcast parameters is small, and eight
    // allocations were a measurable part of it.
    let mut out = vec![C::ZERO; N_DERIVED * n];
    struct Pre<'a, C, Op> {
        op: Op,
        p: [&'a [C]; 3],
        out: &'a mut [C],
    }
    impl<C: Real, Op: ElemOp<C>> pulp::WithSimd for Pre<'_, C, Op> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) {
            self.run_scalar()
        }
    }
    impl<C: Real, Op: ElemOp<C>> SimdJob for Pre<'_, C, Op> {
        const SHARD: usize = super::dispatch::shard_of::<C>(false);
        const WIDE: bool = true;
        #[inline(always)]
        fn run_scalar(self) {
            let n = self.p[0].len();
            let p = [&self.p[0][..n], &self.p[1][..n], &self.p[2][..n]];
            let o: [&mut [C]; N_DERIVED] = {
                let mut it = self.out.chunks_exact_mut(n.max(1));
                std::array::from_fn(|_| it.next().unwrap_or(&mut []))
            };
            for j in 0..n {
                let d = self.op.derive([p[0][j], p[1][j], p[2][j]]);
                for q in 0..Op::N_DERIVED_USED {
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
