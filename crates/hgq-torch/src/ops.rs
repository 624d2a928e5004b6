//! The fixed-point quantizer as plain torch ops, for any device (CUDA).
//!
//! The formulas are SPEC 1-3 written with the same torch operations the reference runs on its
//! torch backend, so autograd gives the reference's gradients; the reference's custom
//! gradients (straight-through rounding with `dq/df = ln2 (x - q)`) are built from detached
//! values plus terms `a - a.detach()`, whose value is `+0.0` and whose gradient is the wanted
//! one (like the reference, this turns a rounded `-0.0` into `+0.0`).
use hgq_core::{BitWidths, FixedPoint, OverflowMode, RoundMode, Stochastic};
use tch::{Kind, Tensor};

use crate::quantizer::rc;
use crate::{Result, TorchError, check_float, params_as};

const LN2: f64 = std::f64::consts::LN_2;

/// `+0.0` (for finite `a`) with derivative 1 with respect to `a`.
fn zero_term(a: &Tensor) -> Tensor {
    a - a.detach()
}

/// The integer rounding `R(v)` of SPEC 1 (values only).
fn round_int(v: &Tensor, mode: RoundMode) -> Tensor {
    match mode {
        RoundMode::Trn => v.floor(),
        RoundMode::Rnd | RoundMode::SRnd => (v + 0.5).floor(),
        RoundMode::RndConv | RoundMode::SRndConv => v.round(),
        RoundMode::TrnZero => v.abs().floor() * v.sign(),
        RoundMode::RndZero => (v.abs().neg() + 0.5).floor().neg() * v.sign(),
        RoundMode::RndInf => (v.abs() + 0.5).floor() * v.sign(),
        RoundMode::RndMinInf => (v.neg() + 0.5).floor().neg(),
    }
}

/// `round(x, f)` with the straight-through gradient: `dq/dx = 1`, `dq/df = ln2 (x - q)`,
/// the latter evaluated as the reference's autograd does, `(g x - g q) ln2` (this order
/// matters to the last bits where x and q are large and close).
fn round_scaled(x: &Tensor, f: &Tensor, mode: RoundMode) -> Tensor {
    let xd = x.detach();
    let scale = f.detach().exp2();
    let xq = round_int(&(&xd * &scale), mode) / &scale;
    // t = v x - v q with v = f ln2: autograd gives dt/dv = g x - g q, then dv/df multiplies
    // by ln2.
    let v = f * LN2;
    let t = &v * &xd - &v * &xq;
    &xq + zero_term(x) + zero_term(&t)
}

/// `where(x > hi, hi, where(x < lo, lo, x))`: the gradient goes to x inside, to `hi` above,
/// to `lo` below.
fn clip(x: &Tensor, lo: &Tensor, hi: &Tensor) -> Tensor {
    hi.where_self(&x.gt_tensor(hi), &lo.where_self(&x.lt_tensor(lo), x))
}

fn sat(x: &Tensor, k: &Tensor, i: &Tensor, f: &Tensor, overflow: OverflowMode) -> Tensor {
    let f_eps = f.neg().exp2();
    let top = i.exp2();
    let hi = &top - &f_eps;
    let lo = match overflow {
        OverflowMode::SatSym => hi.neg() * k,
        _ => top.neg() * k,
    };
    clip(x, &lo, &hi)
}

fn wrap(x: &Tensor, k: &Tensor, i: &Tensor) -> Tensor {
    let bk = i + k;
    let bias = k * (&bk - 1.0).exp2();
    (x + &bias).remainder_tensor(&bk.exp2()) - bias
}

/// Sign-magnitude wrap (SPEC 2, WRAP_SM), rounding inside.
fn wrap_sm(x: &Tensor, k: &Tensor, i: &Tensor, f: &Tensor, mode: RoundMode) -> Tensor {
    let eps = f.neg().exp2();
    let high = i.exp2() - &eps;
    let low = (&high + &eps).neg() * k;
    let interval = (i + k).exp2();
    let c1 = (x / &interval)
        .remainder(2.0)
        .ge(1.0)
        .logical_and(&x.abs().gt_tensor(&(&eps / 2.0)));
    let c2 = ((x + &eps / 2.0) / (&interval / 2.0))
        .remainder(2.0)
        .ge(1.0);
    let qx = round_scaled(x, f, mode);
    let mapped = (qx - &high - &eps).remainder_tensor(&interval) + low;
    let mapped = (mapped.neg() - &eps).where_self(&c2, &mapped);
    (mapped.neg() - &eps).where_self(&c1, &mapped)
}

/// `Q(x, k, i, f)` (SPEC 3) as torch ops on `x`'s device, differentiable by autograd;
/// `x` float32 or float64 (`k`, `i`, `f` are converted to its kind).
///
/// S_RND / S_RND_CONV behave as in the reference (no noise); a quantizer set to
/// [`Stochastic::Seeded`] is refused in training (its generator lives in hgq-core's kernels).
pub fn fixed_quantize_ops(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    training: bool,
) -> Result<Tensor> {
    let kind = x.f_kind()?;
    if kind != Kind::Double {
        check_float("x", x)?;
    }
    let [k, i_raw, f] = params_as(x.device(), kind, [k, i, f])?;
    // Raw bit widths: `round(v) + (v - stop_gradient(v))`, as the layer quantizers do.
    let (i_raw, f) = match q.bit_widths() {
        BitWidths::Integer => (i_raw, f),
        BitWidths::RoundHalfEven => (rc(&i_raw), rc(&f)),
    };
    let round = q.round_mode();
    let overflow = q.overflow_mode();
    let seeded = *q != q.with_stochastic(Stochastic::Reference);
    if training && seeded && matches!(round, RoundMode::SRnd | RoundMode::SRndConv) {
        return Err(TorchError::Unsupported(format!(
            "seeded stochastic rounding ({round}) on the torch-ops path"
        )));
    }
    // i := max(i, -f) in value; the gradient reaches i unchanged.
    let i = i_raw.detach().maximum(&f.detach().neg()) + zero_term(&i_raw);
    let y = match overflow {
        OverflowMode::WrapSm => wrap_sm(x, &k, &i, &f, round),
        OverflowMode::Wrap => {
            let r = round_scaled(x, &f, round);
            if training { r } else { wrap(&r, &k, &i) }
        }
        OverflowMode::Sat | OverflowMode::SatSym => {
            round_scaled(&sat(x, &k, &i, &f, overflow), &f, round)
        }
    };
    let zero_mask = *q != q.with_zero_mask(false);
    Ok(if zero_mask && !training {
        let bits = &k + &i_raw + &f;
        Tensor::where_scalarself(&bits.le(0.0), 0.0, &y)
    } else {
        y
    })
}
