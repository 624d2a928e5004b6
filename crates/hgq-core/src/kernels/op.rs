//! What one kernel is: an [`ElemOp`], one element's forward and local gradients, written once
//! over [`Real`] and run by every path.
//!
//! An op works in two steps: [`ElemOp::derive`] turns one element of the three parameters (k, i, f
//! or m, e, e0) into the [`N_DERIVED`] values the body needs (`2^f`, `2^-f`, the clip bounds, ...),
//! and [`ElemOp::apply`] quantizes one x element with them. Split so, a pass derives broadcast
//! parameters once per parameter element rather than once per x element. The ops are in
//! `crate::ops`, their element formulas in [`super::fixed`] and [`super::float`].
use crate::real::Real;

/// Number of derived values per parameter element.
pub(crate) const N_DERIVED: usize = 8;

/// One element's op with three parameters (k, i, f or m, e, e0).
pub(crate) trait ElemOp<C: Real>: Copy + Send + Sync {
    /// Which of the three parameters receive gradients.
    const HAS_GRAD: [bool; 3];
    /// How many of the [`N_DERIVED`] derived values `apply` reads.
    const N_DERIVED_USED: usize;
    /// Whether precomputing the derived values of broadcast parameters pays.
    const PRECOMPUTE: bool;
    /// Whether one element of the three parameters passes the op's rules, branch-free: checked
    /// inside the element loop where the parameters are as large as x (the callers pass the
    /// same rules as [`Check`](super::check::Check)s, or `Any` for parameters they checked
    /// beforehand).
    fn passes(self, p: [C; 3]) -> bool;
    /// The values `apply` needs, from one element of the parameters.
    fn derive(self, p: [C; 3]) -> [C; N_DERIVED];
    /// Whether the op has a cheaper [`ElemOp::derive_normal`] for elements that pass
    /// [`ElemOp::all_normal`] (the per-element loops then check runs of elements first).
    const HAS_NORMAL: bool = false;
    /// Whether every element of a run of raw parameters (three streams of one length) passes
    /// [`ElemOp::passes`] and lies where [`ElemOp::derive_normal`] applies: one branch-free
    /// loop over the run.
    fn all_normal(self, _s: [&[C]; 3]) -> bool {
        false
    }
    /// [`ElemOp::derive`] for an element of a run that passes [`ElemOp::all_normal`]: the
    /// same values, computed more cheaply, and defined (if unspecified) for any input.
    fn derive_normal(self, p: [C; 3]) -> [C; N_DERIVED] {
        self.derive(p)
    }
    /// Output and local gradients times `g` (gradients only when `GRAD`). `index` is the
    /// element's flat index in `x`, for counter-based noise.
    fn apply<const GRAD: bool>(self, x: C, d: [C; N_DERIVED], g: C, index: u64) -> ElemOut<C>;
}

/// What an [`ElemOp`] returns for one element.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ElemOut<C> {
    pub y: C,
    pub gx: C,
    pub gp: [C; 3],
}
