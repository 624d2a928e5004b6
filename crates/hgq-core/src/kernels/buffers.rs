//! The buffers of one call, and how each level of a pass's split sees them.
//!
//! A caller hands a pass its buffers as [`Buffers`]: x and y in the storage type, the parameters in
//! the compute type, the upstream gradient as an [`Upstream`]. A pass cuts them into segments (the
//! unit of parallel work) and a segment into pieces (one run of x, whose parameters are contiguous
//! or one value): the parameters as [`ParamStreams`] (raw, or derived up front), the upstream
//! gradient as an [`UpstreamSlice`], and where the parameter gradients go as a [`SegmentGrads`] for
//! a segment and a [`PieceGrads`] for a piece (stored per element, or added into blocked
//! accumulators).
use super::op::N_DERIVED;
use crate::real::Element;

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
pub(crate) struct Buffers<'a, T: Element> {
    pub x: &'a [T],
    pub p: [&'a [T::C]; 3],
    /// Parameters given as [`Plan::splat`](super::plan::Plan::splat) (one value for every
    /// element): read from the stream's start, wherever the piece lies.
    pub same: [bool; 3],
    pub dy: Option<Upstream<'a, T>>,
    pub y: Option<&'a mut [T]>,
    pub gx: Option<&'a mut [T]>,
    /// Parameter gradients, overwritten, in the bit-width shape.
    pub gp: Option<[&'a mut [T::C]; 3]>,
}

/// The upstream gradient inside a pass: x-sized, or a segment's worth of one repeated value.
#[derive(Clone, Copy)]
pub(super) enum UpstreamSlice<'a, T> {
    Each(&'a [T]),
    Same(&'a [T]),
}

/// Where the parameter gradients of a segment go.
pub(super) enum SegmentGrads<'a, C> {
    /// Nowhere (a forward pass).
    None,
    /// Stored; the slices start at parameter element `.1` (element-wise plans).
    Store([&'a mut [C]; 3], usize),
    /// Added into a group's blocked accumulators (all parameter elements).
    Add(&'a mut [C]),
}

/// The parameters of a pass or a piece of it.
#[derive(Clone, Copy)]
pub(super) enum ParamStreams<'a, C> {
    /// The three raw streams, derived per element. `same[q]`: a
    /// [`Plan::splat`](super::plan::Plan::splat) (one value for every element), read from its
    /// start wherever the piece lies.
    Raw { s: [&'a [C]; 3], same: [bool; 3] },
    /// The `Op::N_DERIVED_USED` derived values of every parameter element, precomputed, one stream
    /// each (all [`N_DERIVED`] streams as long as the parameters; the unused ones zero).
    Derived { s: [&'a [C]; N_DERIVED] },
}

impl<'a, C> ParamStreams<'a, C> {
    /// The parameters of elements `[off, off + n)`.
    pub(super) fn slice(&self, off: usize, n: usize) -> ParamStreams<'a, C> {
        match *self {
            ParamStreams::Raw { s, same } => ParamStreams::Raw {
                s: std::array::from_fn(|q| {
                    let v = s[q];
                    if v.is_empty() {
                        v
                    } else if same[q] {
                        &v[..n]
                    } else {
                        &v[off..off + n]
                    }
                }),
                same,
            },
            ParamStreams::Derived { s } => ParamStreams::Derived {
                s: s.map(|v| &v[off..off + n]),
            },
        }
    }
}

/// Where a piece's parameter gradients go.
pub(super) enum PieceGrads<'a, C> {
    /// Nowhere (a forward pass).
    None,
    /// Stored: element `j`'s gradient of parameter `q` at `s[q][j]` (element-wise plans; as
    /// long as the piece for every parameter with a gradient).
    Store([&'a mut [C]; 3]),
    /// Added into the blocked accumulators of a reduction (`grad_slots` values per element):
    /// element `j` of the piece is parameter element `off + j`, or `off` for every element of
    /// a single-value piece.
    Add { a: &'a mut [C], off: usize },
}

impl<C> PieceGrads<'_, C> {
    /// The gradients of elements `[off, off + n)` of a piece with contiguous parameters.
    pub(super) fn slice(&mut self, off: usize, n: usize) -> PieceGrads<'_, C> {
        match self {
            PieceGrads::None => PieceGrads::None,
            PieceGrads::Store([a, b, c]) => {
                PieceGrads::Store([cut(a, off, n), cut(b, off, n), cut(c, off, n)])
            }
            PieceGrads::Add { a, off: o } => PieceGrads::Add { a, off: *o + off },
        }
    }

    /// The same destination, reborrowed (a single-value piece: every element adds into one).
    pub(super) fn reborrow(&mut self) -> PieceGrads<'_, C> {
        match self {
            PieceGrads::None => PieceGrads::None,
            PieceGrads::Store([a, b, c]) => PieceGrads::Store([a, b, c]),
            PieceGrads::Add { a, off } => PieceGrads::Add { a, off: *off },
        }
    }
}

/// `v[off .. off + n]`, or `v` when it is empty (a gradient nobody asked for).
pub(super) fn cut<C>(v: &mut [C], off: usize, n: usize) -> &mut [C] {
    if v.is_empty() {
        v
    } else {
        &mut v[off..off + n]
    }
}
