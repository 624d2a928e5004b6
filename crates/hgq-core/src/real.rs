//! The compute types (`f32`, `f64`) and the storage types (`f32`, `f64`, `f16`, `bf16`).
//!
//! Every formula is written once over [`Real`]; storage types that are narrower than `f32` are
//! widened to `f32` for the arithmetic and narrowed on the way out ([`Element`]).
use half::{bf16, f16};
use std::fmt::Debug;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A floating-point type the kernels compute in. Only IEEE operations with one rounding each are
/// used (no fused multiply-add), so a result is the same on every CPU and SIMD width.
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// 0.5.
    const HALF: Self;
    /// ln 2 rounded to this type, as the reference multiplies by it.
    const LN2: Self;
    /// Keras' epsilon, 1e-7, rounded to this type.
    const EPS_K: Self;
    /// Significant bits (24 for f32, 53 for f64): a fixed-point value of at most this many
    /// bits is exact in this type.
    const DIGITS: u32;
    /// Converts from f64 (rounding).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 (exact).
    fn to_f64(self) -> f64;
    /// Largest integer not above.
    fn floor(self) -> Self;
    /// Smallest integer not below.
    fn ceil(self) -> Self;
    /// Round half to even (torch.round).
    fn round_even(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Base-2 logarithm.
    fn log2(self) -> Self;
    /// `2^self` for a finite integer-valued `self`, exact (including subnormal and overflowing
    /// results), built from exponent bits rather than `powf`.
    fn exp2i(self) -> Self;
    /// [`Real::exp2i`] for an integer-valued `self` in `[-100, 100]` (the caller checks), where
    /// `2^self` is a normal number in both compute types: the exponent bits alone, without the
    /// clamps and the subnormal branch. Any other input gives an unspecified value (no panic,
    /// no undefined behaviour).
    fn exp2i_normal(self) -> Self;
    /// `2^self` for any value (`powf`), used where bit widths need not be integers.
    fn exp2(self) -> Self;
    /// C `fmod`.
    fn fmod(self, b: Self) -> Self;
    /// NaN test.
    fn is_nan(self) -> bool;
    /// Whether the value is an integer (false for NaN and infinities).
    #[allow(clippy::eq_op)]
    fn is_integer(self) -> bool {
        !self.is_nan() && self.floor() == self && (self - self) == Self::ZERO
    }
    /// Whether the value is finite (neither infinite nor NaN).
    #[allow(clippy::eq_op)]
    fn is_finite(self) -> bool {
        (self - self) == Self::ZERO
    }
    /// torch.maximum: NaN if either is NaN; of equal values (+0 and -0) the first, as torch's
    /// scalar path (`std::max`) does (its SIMD path returns the second: no caller depends on it).
    #[inline(always)]
    fn maximum(self, b: Self) -> Self {
        if self.is_nan() || b.is_nan() {
            self + b
        } else if self < b {
            b
        } else {
            self
        }
    }
    /// torch.minimum: NaN if either is NaN.
    #[inline(always)]
    fn minimum(self, b: Self) -> Self {
        if self.is_nan() || b.is_nan() {
            self + b
        } else if self < b {
            self
        } else {
            b
        }
    }
    /// torch.sign: 1, -1, or 0 (for zeros of both signs and NaN).
    #[inline(always)]
    fn sign(self) -> Self {
        let p = if Self::ZERO < self {
            Self::ONE
        } else {
            Self::ZERO
        };
        let n = if self < Self::ZERO {
            Self::ONE
        } else {
            Self::ZERO
        };
        p - n
    }
    /// torch.remainder for floats: `fmod`, moved into the divisor's sign.
    #[inline(always)]
    fn remainder(self, b: Self) -> Self {
        let m = self.fmod(b);
        if m != Self::ZERO && ((b < Self::ZERO) != (m < Self::ZERO)) {
            m + b
        } else {
            m
        }
    }
}

macro_rules! impl_real {
    ($t:ty, $bits:ty, $mant:expr, $bias:expr, $emin:expr, $emax:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const HALF: Self = 0.5;
            const LN2: Self = std::f64::consts::LN_2 as $t;
            const EPS_K: Self = 1e-7;
            const DIGITS: u32 = $mant + 1;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn round_even(self) -> Self {
                // Adding and subtracting 2^mant rounds half to even (the FPU's mode) for
                // |x| < 2^mant, and larger values are integers already: the result of
                // `round_ties_even` without its libm call (the baseline x86-64 target has
                // no rounding instruction), so that loops over bit widths vectorize.
                const BIG: $t = (1u64 << $mant) as $t;
                let a = self.abs();
                if a < BIG {
                    ((a + BIG) - BIG).copysign(self)
                } else {
                    self
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn log2(self) -> Self {
                <$t>::log2(self)
            }
            #[inline(always)]
            fn exp2i(self) -> Self {
                // Exact 2^n from the exponent bits: normal results (and +inf just above the
                // range) are the biased exponent in place, subnormal ones a single bit, and
                // anything below half the smallest subnormal rounds to 0.
                const LO: i32 = $emin - $mant - 1;
                const HI: i32 = $emax + 1;
                // Comparisons, not min/max: they map to single instructions, and NaN (never
                // asked for: bit widths are checked) goes to LO so the conversion is defined.
                let n = if self > LO as $t { self } else { LO as $t };
                let n = if n < HI as $t { n } else { HI as $t };
                // SAFETY: `n` is finite and within [LO, HI], so it fits in an i32 (`as` would
                // saturate, which LLVM does not vectorize).
                let e: i32 = unsafe { n.to_int_unchecked::<i32>() };
                let normal = ((e + $bias) as $bits) << $mant;
                let sub = (1 as $bits).wrapping_shl((e - LO) as u32) >> 1;
                <$t>::from_bits(if e >= $emin { normal } else { sub })
            }
            #[inline(always)]
            fn exp2i_normal(self) -> Self {
                // 2^mant + bias + n is an integer in [2^mant, 2^(mant+1)), exact, with ulp 1:
                // its mantissa field holds n + bias, which the shift moves into the exponent
                // field (the old exponent and sign bits shift out, and bit `mant` of the
                // mantissa, the new sign bit, is 0 for n + bias < 2^(exponent bits)). Two
                // instructions, no conversion, and defined for any input: a value outside the
                // range (NaN, inf, non-integers) gives some float, never undefined behaviour.
                const MAGIC: $t = (1u64 << $mant) as $t + $bias as $t;
                <$t>::from_bits((self + MAGIC).to_bits() << $mant)
            }
            #[inline(always)]
            fn exp2(self) -> Self {
                <$t>::powf(2.0, self)
            }
            #[inline(always)]
            fn fmod(self, b: Self) -> Self {
                self % b
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
impl_real!(f32, u32, 23, 127, -126, 127);
impl_real!(f64, u64, 52, 1023, -1022, 1023);

/// A storage type of tensors: `f32`, `f64`, `half::f16`, `half::bf16`.
///
/// `f16`/`bf16` compute in `f32` and round once when stored, as the reference does under a
/// mixed-precision policy.
pub trait Element: sealed::Sealed + Copy + Debug + Default + Send + Sync + 'static {
    /// The type the arithmetic runs in.
    type C: Real;
    /// A short name (`f32`, ...).
    const NAME: &'static str;
    /// Widens to the compute type.
    fn to_c(self) -> Self::C;
    /// Narrows from the compute type (round to nearest even).
    fn from_c(v: Self::C) -> Self;
    /// The slice as the compute type, when the storage is the compute type (no copy).
    fn as_c(s: &[Self]) -> Option<&[Self::C]>;
    /// The mutable slice as the compute type, when the storage is the compute type.
    fn as_c_mut(s: &mut [Self]) -> Option<&mut [Self::C]>;
}

/// Only the four types the kernels are instantiated for are elements.
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl Element for f32 {
    type C = f32;
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn to_c(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_c(v: f32) -> Self {
        v
    }
    fn as_c(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_c_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl Element for f64 {
    type C = f64;
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn to_c(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_c(v: f64) -> Self {
        v
    }
    fn as_c(s: &[Self]) -> Option<&[f64]> {
        Some(s)
    }
    fn as_c_mut(s: &mut [Self]) -> Option<&mut [f64]> {
        Some(s)
    }
}

impl Element for f16 {
    type C = f32;
    const NAME: &'static str = "f16";
    #[inline(always)]
    fn to_c(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_c(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn as_c(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_c_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Element for bf16 {
    type C = f32;
    const NAME: &'static str = "bf16";
    #[inline(always)]
    fn to_c(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_c(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn as_c(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_c_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `round_even` is `round_ties_even`, bit for bit (signed zeros, NaN, infinities, the
    /// halves around 2^mant included), on a sweep of f32 bit patterns and edge values.
    #[test]
    fn round_even_is_round_ties_even() {
        let same32 = |x: f32| {
            let (a, b) = (x.round_even(), x.round_ties_even());
            assert!(
                a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                "{x:e}: {a} {b}"
            );
        };
        let same64 = |x: f64| {
            let (a, b) = (x.round_even(), x.round_ties_even());
            assert!(
                a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                "{x:e}: {a} {b}"
            );
        };
        // Every 97th f32 bit pattern: all exponents, both signs.
        for bits in (0..=u32::MAX).step_by(97) {
            same32(f32::from_bits(bits));
        }
        for m in [23, 24, 52, 53] {
            for d in [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5] {
                let x = 2f64.powi(m) + d;
                for s in [1.0, -1.0] {
                    same64(s * x);
                    same32((s * x) as f32);
                }
            }
        }
        for x in [
            0.5,
            1.5,
            2.5,
            -0.5,
            -2.5,
            -0.0,
            0.0,
            0.49999997,
            f64::MIN_POSITIVE,
        ] {
            same64(x);
            same32(x as f32);
        }
        for x in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            -f64::MAX,
        ] {
            same64(x);
            same32(x as f32);
        }
    }

    #[test]
    fn exp2i_is_exact_everywhere() {
        for n in -200..200 {
            let want = 2f64.powi(n);
            assert_eq!(f32::exp2i(n as f32), want as f32, "f32 2^{n}");
            assert_eq!(f64::exp2i(n as f64), want, "f64 2^{n}");
        }
        for n in -100..=100 {
            let v = n as f32;
            assert_eq!(
                f32::exp2i_normal(v).to_bits(),
                f32::exp2i(v).to_bits(),
                "f32 2^{n}"
            );
            let v = n as f64;
            assert_eq!(
                f64::exp2i_normal(v).to_bits(),
                f64::exp2i(v).to_bits(),
                "f64 2^{n}"
            );
        }
        // Exact over the whole normal range of each type.
        for n in -126..=127 {
            assert_eq!(
                f32::exp2i_normal(n as f32),
                f32::exp2i(n as f32),
                "f32 2^{n}"
            );
        }
        for n in -1022..=1023 {
            assert_eq!(
                f64::exp2i_normal(n as f64),
                f64::exp2i(n as f64),
                "f64 2^{n}"
            );
        }
        assert_eq!(f32::exp2i(-150.0), 0.0);
        assert_eq!(f32::exp2i(-149.0), f32::from_bits(1));
        assert_eq!(f32::exp2i(128.0), f32::INFINITY);
        assert_eq!(f32::exp2i(1e9), f32::INFINITY);
        assert_eq!(f32::exp2i(-1e9), 0.0);
        assert_eq!(f64::exp2i(-1074.0), f64::from_bits(1));
    }

    /// Out of its range `exp2i_normal` owes no particular value, but it must return one (the
    /// kernels may call it on bit widths that changed after they were screened).
    #[test]
    fn exp2i_normal_is_defined_for_any_input() {
        for v in [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e30,
            -1e30,
            0.5,
            300.0,
            -300.0,
        ] {
            let _ = std::hint::black_box(f32::exp2i_normal(std::hint::black_box(v)));
            let _ = std::hint::black_box(f64::exp2i_normal(std::hint::black_box(v as f64)));
        }
    }

    #[test]
    fn remainder_follows_the_divisor() {
        assert_eq!((-1.0f32).remainder(4.0), 3.0);
        assert_eq!((5.0f32).remainder(4.0), 1.0);
        assert_eq!((-0.0f32).remainder(4.0).to_bits(), (-0.0f32).to_bits());
        assert!(f32::NAN.remainder(4.0).is_nan());
    }
}
