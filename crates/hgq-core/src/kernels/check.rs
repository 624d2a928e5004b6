//! The bit-width rules, and what a pass found out about its parameters.
//!
//! A parameter must be 0 or 1, an integer, or finite ([`Check`]); the rules are branch-free
//! ([`is_int`], [`zero_one`], [`finite`]) so that they vectorize. A pass checks raw parameters
//! as it reads them, in the element loop (`ElemOp::passes`) or once per run for a single-value
//! one ([`valid`]), so that they are read from memory once, and says what it found in a
//! [`Verdict`]: whether all passed (if not, the caller finds the first bad value with
//! [`find_bad`], in parameter order whatever the thread split) and whether every run was normal
//! (a later pass over the same parameters may take that as known). [`CallChecks`] is where the
//! pieces of a parallel pass record it.
use crate::real::Real;

/// What each parameter value must be; checked inside the pass, segment by segment, so that the
/// parameters are read from memory once (`Any`: checked by the caller, or no rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Any,
    ZeroOne,
    Integer,
    /// Finite (raw bit widths that the op rounds itself).
    Finite,
}

/// Whether `v` is a finite integer, branch-free (vectorizes inside a SIMD dispatch).
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn is_int<C: Real>(v: C) -> bool {
    v.floor() == v && (v - v) == C::ZERO
}

/// Whether `v` is 0 or 1, branch-free.
#[inline(always)]
pub(crate) fn zero_one<C: Real>(v: C) -> bool {
    v == C::ZERO || v == C::ONE
}

/// Whether `v` is finite, branch-free.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn finite<C: Real>(v: C) -> bool {
    (v - v) == C::ZERO
}

impl Check {
    /// Whether `v` passes the rule, branch-free.
    #[inline(always)]
    fn passes<C: Real>(self, v: C) -> bool {
        match self {
            Check::Any => true,
            Check::ZeroOne => zero_one(v),
            Check::Integer => is_int(v),
            Check::Finite => finite(v),
        }
    }
}

/// Whether every element of `v` passes `check` (one vectorized pass).
pub(super) fn valid<C: Real>(v: &[C], check: Check) -> bool {
    match check {
        Check::Any => true,
        Check::ZeroOne => !scan(v, zero_one::<C>),
        Check::Integer => !scan(v, is_int::<C>),
        Check::Finite => !scan(v, finite::<C>),
    }
}

/// Whether some element of `v` fails `ok`, in one branch-free pass under the best SIMD level.
fn scan<C: Real, F: Fn(C) -> bool + Copy>(v: &[C], ok: F) -> bool {
    struct Scan<'a, C, F> {
        v: &'a [C],
        ok: F,
    }
    impl<C: Real, F: Fn(C) -> bool + Copy> pulp::WithSimd for Scan<'_, C, F> {
        type Output = bool;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> bool {
            let mut bad = 0u32;
            for &e in self.v {
                bad |= !(self.ok)(e) as u32;
            }
            bad != 0
        }
    }
    pulp::Arch::new().dispatch(Scan { v, ok })
}

/// The index of the first element of `v` that fails `check`.
pub(crate) fn find_bad<C: Real>(v: &[C], check: Check) -> Option<usize> {
    const CH: usize = 1 << 12;
    for (c, chunk) in v.chunks(CH).enumerate() {
        if !valid(chunk, check) {
            return chunk
                .iter()
                .position(|&e| !check.passes(e))
                .map(|j| c * CH + j);
        }
    }
    None
}

/// What a pass found out about its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Every raw parameter passed its rules (the outputs are unspecified where not).
    pub passed: bool,
    /// The parameters were raw and as large as x, and every run of them passed `Op::all_normal`
    /// (or was known to): a later pass over the same parameters may take it as known.
    pub normal: bool,
}

impl Verdict {
    /// Both verdicts at once (of two parts of one pass).
    pub(super) fn and(self, o: Verdict) -> Verdict {
        Verdict {
            passed: self.passed && o.passed,
            normal: self.normal && o.normal,
        }
    }
}

/// The verdict of a piece whose parameters passed (they were derived, checked beforehand or
/// checked by the caller) and took no per-element normal path.
pub(super) const PASSED_NOT_NORMAL: Verdict = Verdict {
    passed: true,
    normal: false,
};

/// The checks of one call and where a failure is recorded.
#[derive(Clone, Copy)]
pub(super) struct CallChecks<'a> {
    pub(super) kinds: [Check; 3],
    pub(super) bad: &'a std::sync::atomic::AtomicBool,
    /// Raw per-element parameters are known to be normal (see [`run`](super::pass::run)).
    pub(super) known_normal: bool,
    /// Set by a piece that was not all normal (or not raw per-element parameters).
    pub(super) general: &'a std::sync::atomic::AtomicBool,
}
