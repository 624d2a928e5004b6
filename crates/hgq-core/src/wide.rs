//! Fixed-point types wider than the compute type: where float32 cannot hold what a pass forms.
//!
//! A pass over bit widths `k, i, f` forms bounds such as `2^i - 2^-f` and sums such as
//! `x + 2^(i+k-1)` (WRAP's bias), which need `k + max(i, -f) + f` bits (the type's width) to be
//! exact. float32 holds 24, float64 53. So a float32 pass over a type wider than 24 bits, or
//! with exponents beyond `[-100, 100]`, runs in float64 and rounds its results to float32 once
//! (a value of the type is exact in float64, and its float32 rounding is the nearest float32);
//! a type that float64 cannot hold either (more than 53 bits, or exponents beyond
//! `[-1000, 1000]`) is an error. hgq2 computes in float32 and is not exact there: on such types
//! hgq-core gives `ap_fixed`'s values where the reference does not.
use crate::error::{CoreError, Result};
use crate::real::Real;
use crate::shape::{TensorRef, align, broadcast};
use crate::stateless::BitWidths;

/// What a set of bit widths needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Width {
    /// Every element's type is exact in the compute type.
    Narrow,
    /// Some element needs float64.
    Wide,
}

/// Exponents a float32 pass handles exactly (with room for the sums of the pass).
const F32_EXP: f64 = 100.0;
/// Exponents a float64 pass handles exactly.
const F64_EXP: f64 = 1000.0;

/// The widest type among the bit widths `p = [k, i, f]` (broadcast to each other), as `rule`
/// reads `i` and `f`: whether the compute type `C` holds it, or an error where float64 does not
/// either. Elements that break the bit-width rules are skipped (the pass reports them).
pub(crate) fn width<C: Real>(
    p: [TensorRef<'_, C>; 3],
    x_shape: &[usize],
    rule: BitWidths,
) -> Result<Width> {
    let shapes: Vec<Vec<usize>> = p
        .iter()
        .map(|t| align(t.shape, x_shape))
        .collect::<Result<_>>()?;
    let common: Vec<usize> = (0..x_shape.len())
        .map(|d| shapes.iter().map(|s| s[d]).max().unwrap_or(1))
        .collect();
    let full = |q: usize| -> std::borrow::Cow<'_, [C]> {
        if shapes[q] == common {
            std::borrow::Cow::Borrowed(p[q].data)
        } else {
            std::borrow::Cow::Owned(broadcast(p[q].data, &shapes[q], &common))
        }
    };
    let (k, i, f) = (full(0), full(1), full(2));
    // Compiled for wider vectors: at the baseline each rounding is a call into libm.
    crate::simd::widest(|| widest_of(&k, &i, &f, rule))
}

/// [`width`] of bit widths of the same length.
#[inline(always)]
fn widest_of<C: Real>(k: &[C], i: &[C], f: &[C], rule: BitWidths) -> Result<Width> {
    let mut widest = Width::Narrow;
    for ((&k, &i), &f) in k.iter().zip(i).zip(f) {
        let (k, i, f) = (k.to_f64(), i.to_f64(), f.to_f64());
        let (i, f) = match rule {
            BitWidths::RoundHalfEven => (i.round_ties_even(), f.round_ties_even()),
            // KBI's raw b and i (here `i` and `f`).
            BitWidths::KbiRaw => (
                f.round_ties_even(),
                i.round_ties_even() - f.round_ties_even(),
            ),
            BitWidths::Integer => (i, f),
        };
        if !(k == 0.0 || k == 1.0) || !i.is_finite() || !f.is_finite() {
            continue;
        }
        let ip = i.max(-f);
        let bits = k + ip + f;
        let exps = f.abs().max((ip + k).abs());
        if bits > 53.0 || exps > F64_EXP {
            return Err(CoreError::TooWide {
                bits,
                max_bits: 53,
                exponent: exps,
            });
        }
        let exp_limit = if C::DIGITS > 24 { F64_EXP } else { F32_EXP };
        if bits > C::DIGITS as f64 || exps > exp_limit {
            widest = Width::Wide;
        }
    }
    Ok(widest)
}
