//! Errors of hgq-core: every bad input ends here, never in a panic.
use thiserror::Error;

/// Everything hgq-core can refuse.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// A rounding mode string that the reference does not know.
    #[error(
        "unknown rounding mode {0:?}: expected one of TRN, RND, RND_CONV, TRN_ZERO, RND_ZERO, RND_INF, RND_MIN_INF, S_RND, S_RND_CONV"
    )]
    UnknownRoundMode(String),
    /// An overflow mode string that the reference does not know.
    #[error("unknown overflow mode {0:?}: expected one of WRAP, SAT, SAT_SYM (or SYM), WRAP_SM")]
    UnknownOverflowMode(String),
    /// WRAP_SM is only defined with round-to-nearest modes.
    #[error("overflow mode WRAP_SM needs rounding RND, RND_CONV, S_RND or S_RND_CONV, got {0}")]
    WrapSmRounding(String),
    /// Two shapes that do not broadcast.
    #[error("shape {from:?} does not broadcast to {to:?}")]
    Broadcast {
        /// The shape that was to be broadcast.
        from: Vec<usize>,
        /// The target shape.
        to: Vec<usize>,
    },
    /// A buffer whose length does not match its shape.
    #[error(
        "{what}: buffer of {len} elements does not match shape {shape:?} ({expected} elements)"
    )]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The shape it should have.
        shape: Vec<usize>,
        /// The number of elements of that shape.
        expected: usize,
    },
    /// An axis outside `[-ndim, ndim)`.
    #[error("invalid axis {axis} for a tensor of {ndim} dimensions")]
    Axis {
        /// The axis as given.
        axis: isize,
        /// The number of dimensions.
        ndim: usize,
    },
    /// Exactly one of the two axis lists must be given.
    #[error("exactly one of heterogeneous_axis and homogeneous_axis must be given")]
    AxisSpec,
    /// A heterogeneous axis whose size is not known (the batch axis).
    #[error(
        "cannot quantize axis {axis} heterogeneously: its size is unknown in input shape {shape:?}"
    )]
    UnknownAxisSize {
        /// The axis.
        axis: usize,
        /// The input shape, `None` for an unknown size.
        shape: Vec<Option<usize>>,
    },
    /// `k` (keep negative) must be 0 or 1.
    #[error("invalid k {0}: keep-negative must be 0 or 1")]
    InvalidK(f64),
    /// A parameter the reference rejects (for example a negative initial bit width).
    #[error("invalid {name} {value}: {why}")]
    InvalidParameter {
        /// Its name (b0, i0+f0, ...).
        name: &'static str,
        /// The value given.
        value: f64,
        /// What the reference requires.
        why: &'static str,
    },
    /// A quantizer used before `build`.
    #[error("the quantizer is not built: call build with the input shape first")]
    NotBuilt,
    /// A bit-width mapper of the user's own gave a shape that does not broadcast to its input.
    #[error(
        "the bit-width mapper gave shape {bw_shape:?} for inputs of shape {input_shape:?}: \
         each dimension must be 1 or the input's size"
    )]
    MapperShape {
        /// The mapper's bit-width shape.
        bw_shape: Vec<usize>,
        /// The input shape (None: any size).
        input_shape: Vec<Option<usize>>,
    },
    /// An input whose shape differs from the one the quantizer was built for.
    #[error("input shape {got:?} does not fit the built shape {built:?}")]
    InputShape {
        /// The shape given.
        got: Vec<usize>,
        /// The shape the quantizer was built with (None: any size).
        built: Vec<Option<usize>>,
    },
    /// A tensor whose size is too large to hold (or whose element count overflows).
    #[error("{what} of shape {shape:?} is too large (at most {max} elements)")]
    TooLarge {
        /// What it is.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// The most elements allowed.
        max: usize,
    },
    /// A fixed-point type that no compute type holds exactly.
    #[error(
        "a fixed-point type of {bits} bits (k + max(i, -f) + f) with exponents up to {exponent}: \
         at most {max_bits} bits and exponents within [-1000, 1000] are computed exactly"
    )]
    TooWide {
        /// Its bits.
        bits: f64,
        /// The most bits computed exactly.
        max_bits: u32,
        /// The largest exponent it forms (|f| or |max(i, -f) + k|).
        exponent: f64,
    },
    /// A constraint or regularizer whose values mean nothing (NaN bounds, infinite factors).
    #[error("invalid {what} of {var}: {value}: {why}")]
    InvalidRule {
        /// The variable it applies to.
        var: &'static str,
        /// `constraint` or `regularizer`.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// What is required.
        why: &'static str,
    },
    /// A gradient asked for where none exists (an inference call).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A collective over data-parallel processes failed (a process gone, a timeout).
    #[error("synchronizing quantizer state across processes: {0}")]
    Collective(String),
}

/// Short for `Result<T, CoreError>`.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
