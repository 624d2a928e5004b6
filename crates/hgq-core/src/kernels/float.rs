//! The minifloat quantizer for one element (SPEC 8), with its surrogate gradients.
use crate::real::Real;

/// Output and the gradients of `g * y` with respect to x, m, e, e0.
#[inline(always)]
pub(crate) fn forward_grad<C: Real, const GRAD: bool>(x: C, m: C, e: C, e0: C, g: C) -> [C; 5] {
    let mm = m + C::ONE;
    let e_req = (x.abs() + C::EPS_K).log2().floor();
    let h = (e - C::ONE).exp2i().maximum(C::ONE);
    let e_lo = -h + e0 + C::ONE;
    let e_hi = h + e0 - C::ONE;
    // ops.clip is clamp(min(max(x, lo), hi)).
    let e_act = e_req.maximum(e_lo).minimum(e_hi);
    let scale = (e_act - mm + C::ONE).exp2i();
    let sig = x / scale;
    let qsig = sig.round_even();
    let top = mm.exp2i();
    let top = if e_hi != e_act { top } else { top - C::ONE };
    let clip = qsig.maximum(-top).minimum(top);
    let y = clip * scale;
    if !GRAD {
        return [y, C::ZERO, C::ZERO, C::ZERO, C::ZERO];
    }
    let dm = if e_req <= e_hi {
        scale * (sig - qsig) * g * C::LN2
    } else {
        C::ZERO
    };
    let d_exp = if e_req != e_act {
        (x - y) * g * C::LN2
    } else {
        C::ZERO
    };
    let de = d_exp * C::LN2 * h;
    let de0 = if e_req > e_hi { d_exp } else { -d_exp };
    [y, g, dm, de, de0]
}

/// Whether float32 `log2` rounding up to an integer just below a power of two decides `e_req`
/// for this element (SPEC 8's boundary): the exact exponent differs from the float one.
pub fn log2_boundary(x: f32) -> bool {
    let a = x.abs() + 1e-7f32;
    if !a.is_finite() || a <= 0.0 {
        return false;
    }
    let float_e = a.log2().floor();
    let exact_e = (a as f64).log2().floor() as f32;
    float_e != exact_e
}
