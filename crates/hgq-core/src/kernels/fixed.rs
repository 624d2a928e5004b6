//! The stateless fixed-point quantizer for one element (SPEC 1-3): forward and local gradients.
//!
//! Modes are const generics so that each (round, overflow, training) combination compiles to a
//! branch-free loop body that LLVM vectorizes at the SIMD width pulp dispatches to. The formulas
//! follow the reference's operation order so that values are bit-identical and gradients agree
//! to the last few ulps.
use crate::modes::{OverflowMode, RoundMode};
use crate::real::Real;

/// Const ids of the rounding functions (S_ modes map to their deterministic twins; `STOCH` is
/// `floor(v + u)` with `u` given per element).
pub(crate) mod r {
    pub const TRN: u8 = 0;
    pub const RND: u8 = 1;
    pub const RND_CONV: u8 = 2;
    pub const TRN_ZERO: u8 = 3;
    pub const RND_ZERO: u8 = 4;
    pub const RND_INF: u8 = 5;
    pub const RND_MIN_INF: u8 = 6;
    pub const STOCH: u8 = 7;
    /// The const id under which the rarely used modes (TRN_ZERO, RND_ZERO, RND_INF,
    /// RND_MIN_INF, and every rounding with WRAP_SM) share one instantiation: the mode is then
    /// a runtime value (any id above), matched per element. Each const id is a copy of every kernel
    /// for every element type and SIMD level, so only the modes that hgq2's defaults and
    /// firmware use (TRN, RND, RND_CONV, stochastic) get their own.
    pub const RARE: u8 = 8;
}

/// Const ids of the overflow modes.
pub(crate) mod o {
    pub const WRAP: u8 = 0;
    pub const SAT: u8 = 1;
    pub const SAT_SYM: u8 = 2;
    pub const WRAP_SM: u8 = 3;
}

pub(crate) fn round_id(m: RoundMode, stochastic: bool) -> u8 {
    if stochastic && m.is_stochastic() {
        return r::STOCH;
    }
    match m.deterministic() {
        RoundMode::Trn => r::TRN,
        RoundMode::Rnd => r::RND,
        RoundMode::RndConv => r::RND_CONV,
        RoundMode::TrnZero => r::TRN_ZERO,
        RoundMode::RndZero => r::RND_ZERO,
        RoundMode::RndInf => r::RND_INF,
        RoundMode::RndMinInf => r::RND_MIN_INF,
        RoundMode::SRnd | RoundMode::SRndConv => unreachable!("deterministic() maps S_ modes"),
    }
}

pub(crate) fn overflow_id(m: OverflowMode) -> u8 {
    match m {
        OverflowMode::Wrap => o::WRAP,
        OverflowMode::Sat => o::SAT,
        OverflowMode::SatSym => o::SAT_SYM,
        OverflowMode::WrapSm => o::WRAP_SM,
    }
}

/// `R(v)` of SPEC 1; `u` is the uniform noise of stochastic rounding (unused otherwise),
/// `rare` the runtime mode of [`r::RARE`] (unused otherwise).
#[inline(always)]
pub(crate) fn round_int<C: Real, const R: u8>(v: C, u: C, rare: u8) -> C {
    match R {
        r::STOCH => (v + u).floor(),
        r::RARE if rare == r::STOCH => (v + u).floor(),
        r::RARE => round_by_id(v, rare),
        _ => round_by_id(v, R),
    }
}

/// The deterministic rounding of id `id` (`r::TRN` to `r::RND_MIN_INF`).
#[inline(always)]
fn round_by_id<C: Real>(v: C, id: u8) -> C {
    match id {
        r::TRN => v.floor(),
        r::RND => (v + C::HALF).floor(),
        r::RND_CONV => v.round_even(),
        r::TRN_ZERO => v.abs().floor() * v.sign(),
        r::RND_ZERO => -(-v.abs() + C::HALF).floor() * v.sign(),
        r::RND_INF => (v.abs() + C::HALF).floor() * v.sign(),
        _ => -(-v + C::HALF).floor(),
    }
}

/// `round(x, f)` with the reference's straight-through form `R(v) + (v - v)` (it makes `-0`
/// into `+0` and an infinite `v` into NaN exactly as the reference does), divided by
/// `scale = 2^f`: computed as a product with `inv = 2^-f`, which is the same bits as the
/// quotient (both are the correctly rounded `t * 2^-f`) except where `2^-f` overflows while
/// `2^f` does not, where the quotient of a zero is that zero.
#[inline(always)]
#[allow(clippy::eq_op)]
pub(crate) fn round_to<C: Real, const R: u8>(x: C, scale: C, inv: C, u: C, rare: u8) -> C {
    let v = x * scale;
    let t = round_int::<C, R>(v, u, rare) + (v - v);
    if t == C::ZERO && scale != C::ZERO {
        t
    } else {
        t * inv
    }
}

/// d round(x, f) / df for upstream `g`, in the order autograd evaluates it.
#[inline(always)]
fn round_df<C: Real>(g: C, x: C, y: C) -> C {
    (g * x - g * y) * C::LN2
}

/// The local result for one element: output and the gradients of `g * y` with respect to x, i, f.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Local<C> {
    pub y: C,
    pub gx: C,
    pub gi: C,
    pub gf: C,
}

/// Indices of the derived values of one (k, i, f) element.
pub(crate) mod d {
    /// k.
    pub const K: usize = 0;
    /// `max(i, -f)`.
    pub const IP: usize = 1;
    /// `2^f`.
    pub const SCALE: usize = 2;
    /// `2^-f` (the step, epsilon).
    pub const INV: usize = 3;
    /// `2^max(i, -f)`.
    pub const P: usize = 4;
    /// 1, or 0 where the zero mask applies (`k + i + f <= 0`).
    pub const KEEP: usize = 5;
    /// SAT, SAT_SYM: the upper clip bound; WRAP: the period; WRAP_SM: the largest value.
    pub const HI: usize = 6;
    /// SAT, SAT_SYM: the lower clip bound; WRAP: the bias; WRAP_SM: the smallest value.
    pub const LO: usize = 7;
}

/// `2^n` for an integer `n`: [`Real::exp2i_normal`] where the caller has checked that every
/// power an element forms is normal (`NORMAL`), else the exact [`Real::exp2i`].
#[inline(always)]
fn pow2<C: Real, const NORMAL: bool>(n: C) -> C {
    if NORMAL { n.exp2i_normal() } else { n.exp2i() }
}

/// The per-parameter values of [`forward_grad`], from one (k, i, f) element. Bit widths are
/// finite (checked by the caller), so no NaN handling is needed here. `NORMAL`: k is 0 or 1
/// and i, f are integers in `[-100, 100]` (checked by the caller), so every power of two here
/// is a normal number and comes from the exponent bits alone; the values are the same bits.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub(crate) fn derive<C: Real, const O: u8, const NORMAL: bool>(
    k: C,
    i: C,
    f: C,
    mask: bool,
) -> [C; 8] {
    // i := max(i, -f) in value; the gradient reaches i unchanged (straight-through).
    let nf = -f;
    let ip = if i > nf { i } else { nf };
    let scale = pow2::<C, NORMAL>(f);
    let eps = pow2::<C, NORMAL>(nf);
    let p = pow2::<C, NORMAL>(ip);
    let keep = if mask && !(k + i + f > C::ZERO) {
        C::ZERO
    } else {
        C::ONE
    };
    let (hi, lo) = match O {
        o::SAT => {
            let hi = p - eps;
            (hi, -p * k)
        }
        o::SAT_SYM => {
            let hi = p - eps;
            (hi, -hi * k)
        }
        o::WRAP => {
            let bk = ip + k;
            (pow2::<C, NORMAL>(bk), k * pow2::<C, NORMAL>(bk - C::ONE))
        }
        _ => {
            let high = p - eps;
            (high, -(high + eps) * k)
        }
    };
    [k, ip, scale, eps, p, keep, hi, lo]
}

/// Forward and, when `GRAD`, the gradients for upstream `g`, from the derived values `dv` of
/// the element's (k, i, f). One body for both so that the value computed with gradients is
/// the same bits as the forward alone.
#[inline(always)]
pub(crate) fn forward_grad<
    C: Real,
    const R: u8,
    const O: u8,
    const TRAIN: bool,
    const GRAD: bool,
>(
    x: C,
    dv: [C; 8],
    g: C,
    u: C,
    rare: u8,
) -> Local<C> {
    let k = dv[d::K];
    let scale = dv[d::SCALE];
    let eps = dv[d::INV];
    let p = dv[d::P];
    match O {
        o::SAT | o::SAT_SYM => {
            let hi = dv[d::HI];
            let lo = dv[d::LO];
            let over = x > hi;
            let under = x < lo;
            let xs = if over {
                hi
            } else if under {
                lo
            } else {
                x
            };
            let y = round_to::<C, R>(xs, scale, eps, u, rare);
            if !GRAD {
                return Local {
                    y,
                    ..Default::default()
                };
            }
            let inside = !over && !under;
            let gx = if inside { g } else { C::ZERO };
            let mut gf = round_df(g, xs, y);
            let mut gi = C::ZERO;
            if over {
                gi = g * (p * C::LN2);
                gf = gf + g * (eps * C::LN2);
            }
            if under {
                let gk = -(g * k);
                gi = gk * (p * C::LN2);
                if O == o::SAT_SYM {
                    gf = gf + gk * (eps * C::LN2);
                }
            }
            Local { y, gx, gi, gf }
        }
        o::WRAP => {
            let r = round_to::<C, R>(x, scale, eps, u, rare);
            if TRAIN {
                let gf = if GRAD { round_df(g, x, r) } else { C::ZERO };
                return Local {
                    y: r,
                    gx: g,
                    gi: C::ZERO,
                    gf,
                };
            }
            let period = dv[d::HI];
            let bias = dv[d::LO];
            let a = r + bias;
            let y = a.remainder(period) - bias;
            if !GRAD {
                return Local {
                    y,
                    ..Default::default()
                };
            }
            let gi = -g * (a / period).floor() * (period * C::LN2);
            Local {
                y,
                gx: g,
                gi,
                gf: round_df(g, x, r),
            }
        }
        _ => {
            // WRAP_SM: sign-magnitude wrap, literally as the reference writes it.
            let high = dv[d::HI];
            let low = dv[d::LO];
            let interval = (dv[d::IP] + k).exp2i();
            let two = C::ONE + C::ONE;
            let c1 = (x / interval).remainder(two) >= C::ONE && x.abs() > eps / two;
            let c2 = ((x + eps / two) / (interval / two)).remainder(two) >= C::ONE;
            let qx = round_to::<C, R>(x, scale, eps, u, rare);
            let a = qx - high - eps;
            let m0 = a.remainder(interval) + low;
            let m1 = if c2 { -m0 - eps } else { m0 };
            let y = if c1 { -m1 - eps } else { m1 };
            if !GRAD {
                return Local {
                    y,
                    ..Default::default()
                };
            }
            // Backward in the reference's order: the flips route +-g to m0, and add g * eps
            // terms for each applied "- eps".
            let g1 = if c1 { -g } else { g };
            let g0 = if c2 { -g1 } else { g1 };
            let flips = (if c1 { g } else { C::ZERO }) + (if c2 { g1 } else { C::ZERO });
            let gf = round_df(g0, x, qx) + flips * (eps * C::LN2);
            let gi = (-g0 - g0 * k) * (p * C::LN2)
                + (-g0 * (a / interval).floor()) * (interval * C::LN2);
            Local { y, gx: g0, gi, gf }
        }
    }
}
