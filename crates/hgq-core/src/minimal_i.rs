//! The smallest integer bits that represent a value (SPEC 6), as the reference computes them
//! (float `log2`, Keras' epsilon).
use crate::error::{CoreError, Result};
use crate::real::Real;

fn same_len(x: usize, p: usize, out: usize) -> Result<()> {
    if x != p || x != out {
        return Err(CoreError::Length {
            what: "minimal_i operands",
            len: p.max(out),
            shape: vec![x],
            expected: x,
        });
    }
    Ok(())
}

/// Integer bits needed for `x` with `b` bits in total (sign excluded).
///
/// ```
/// use hgq_core::minimal_i_given_xb;
/// let mut out = [0.0f32; 2];
/// minimal_i_given_xb(&[3.0f32, 0.5], &[8.0, 8.0], false, &mut out).unwrap();
/// assert_eq!(out, [2.0, 0.0]);
/// ```
pub fn minimal_i_given_xb<C: Real>(x: &[C], b: &[C], symmetric: bool, out: &mut [C]) -> Result<()> {
    same_len(x.len(), b.len(), out.len())?;
    for ((o, &x), &b) in out.iter_mut().zip(x).zip(b) {
        *o = xb(x, b, symmetric);
    }
    Ok(())
}

/// Integer bits needed for `x` with `f` fractional bits.
///
/// ```
/// use hgq_core::minimal_i_given_xf;
/// let mut out = [0.0f32; 1];
/// minimal_i_given_xf(&[3.0f32], &[2.0], false, &mut out).unwrap();
/// assert_eq!(out, [2.0]);
/// ```
pub fn minimal_i_given_xf<C: Real>(x: &[C], f: &[C], symmetric: bool, out: &mut [C]) -> Result<()> {
    same_len(x.len(), f.len(), out.len())?;
    for ((o, &x), &f) in out.iter_mut().zip(x).zip(f) {
        *o = xf(x, f, symmetric);
    }
    Ok(())
}

/// One element of [`minimal_i_given_xb`].
#[inline]
pub fn xb<C: Real>(x: C, b: C, symmetric: bool) -> C {
    let eps = C::EPS_K;
    let ip = ((x + eps) / (C::ONE - (-b).exp2() + eps)).log2().ceil();
    if symmetric {
        return ip;
    }
    if b > C::ZERO {
        if x >= C::ZERO {
            ip
        } else {
            (-x - eps).log2().ceil()
        }
    } else {
        C::from_f64(32.0)
    }
}

/// One element of [`minimal_i_given_xf`].
#[inline]
pub fn xf<C: Real>(x: C, f: C, symmetric: bool) -> C {
    let step = (-f).exp2();
    if symmetric {
        return (x.abs() + step).log2().ceil();
    }
    if x >= C::ZERO {
        (x + step).log2().ceil()
    } else {
        (-x - C::EPS_K).log2().ceil()
    }
}
