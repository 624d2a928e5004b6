//! Fused element-wise kernels over a broadcast plan.
//!
//! A kernel is an `ElemOp`: one element's forward and local gradients, written once over
//! [`Real`](crate::Real), in two steps: `ElemOp::derive` turns one element of the three
//! parameters (k, i, f or m, e, e0) into the values the body needs (`2^f`, `2^-f`, the clip
//! bounds, ...), and `ElemOp::apply` quantizes one x element with them. `run` walks `x` in
//! segments, in parallel with rayon above [`PAR_MIN`] elements, and runs each segment inside
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
//!
//! # Layout
//!
//! - `op`: what a kernel is, an `ElemOp` (derive, then apply), and what it returns.
//! - `plan`: how the bit widths map onto x, from the shapes alone, and the values derived
//!   before a pass starts.
//! - `buffers`: the buffers of one call, and how a segment and a piece see them.
//! - `check`: the bit-width rules, and what a pass found out about its parameters.
//! - `pass`: one call: segments (in parallel), pieces at run boundaries, narrow storage
//!   widened and narrowed in blocks.
//! - `reduce`: the gradients of broadcast parameters, summed in an order fixed by the shapes,
//!   in blocked accumulators.
//! - `loops`: the element loops of one piece.
//! - `dispatch`: the paths and SIMD levels, and how a job runs at a level.
//! - `fixed`, `float`: the element formulas of the fixed-point and minifloat quantizers.
pub(crate) mod buffers;
pub(crate) mod check;
mod dispatch;
pub(crate) mod fixed;
pub(crate) mod float;
mod loops;
pub(crate) mod op;
pub(crate) mod pass;
pub(crate) mod plan;
mod reduce;

pub use buffers::Upstream;
pub use dispatch::{Par, Path, SimdLevel, thread_pool};

/// Below this many elements a call runs on the calling thread (outside a
/// [`team`](crate::team) session).
pub const PAR_MIN: usize = 1 << 16;
/// Below this many elements a call runs on the calling thread inside a
/// [`team`](crate::team) session: its spinning helpers take work in about a microsecond, where
/// waking a rayon worker takes tens. Smaller passes gain less than the other thread's reads of
/// the leader's freshly written inputs cost (`benches/RESULTS.md`).
pub const TEAM_MIN: usize = 1 << 14;
/// Elements per segment (the unit of parallel work).
const SEGMENT_LEN: usize = 1 << 14;
/// At most this many partial sums of a reduced parameter gradient.
pub const MAX_GROUPS: usize = 64;
