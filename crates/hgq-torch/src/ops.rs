//! The fixed-point and minifloat quantizers as plain torch ops, for any device (CUDA) and
//! float64.
//!
//! The formulas are SPEC 1-3 and 8 written with the same torch operations the reference runs
//! on its torch backend, so autograd gives the reference's gradients; the reference's custom
//! gradients (straight-through rounding with `dq/df = ln2 (x - q)`) are built from detached
//! values plus terms `a - a.detach()`, whose value is `+0.0` and whose gradient is the wanted
//! one (like the reference, this turns a rounded `-0.0` into `+0.0`). Bit widths are checked
//! as hgq-core's passes check them, with hgq-core's errors; seeded stochastic rounding draws
//! hgq-core's noise (the same counter-based generator, element by element).
use hgq_core::quantizer::{Constraint, Param, TrackRule};
use hgq_core::{BitWidths, FixedPoint, OverflowMode, RoundMode, Stochastic};
use tch::{Kind, Tensor};

use crate::quantizer::rc;
use crate::{Result, TorchError, params_as};

const LN2: f64 = std::f64::consts::LN_2;

/// `+0.0` (for finite `a`) with derivative 1 with respect to `a`.
fn zero_term(a: &Tensor) -> Tensor {
    a - a.detach()
}

/// The integer rounding `R(v)` of SPEC 1 (values only); `u` is the noise of seeded stochastic
/// rounding (training with S_ modes), `floor(v + u)`.
fn round_int(v: &Tensor, mode: RoundMode, u: Option<&Tensor>) -> Tensor {
    if let Some(u) = u {
        return (v + u).floor();
    }
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
fn round_scaled(x: &Tensor, f: &Tensor, mode: RoundMode, u: Option<&Tensor>) -> Tensor {
    let xd = x.detach();
    let scale = f.detach().exp2();
    let xq = round_int(&(&xd * &scale), mode, u) / &scale;
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
fn wrap_sm(
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    mode: RoundMode,
    u: Option<&Tensor>,
) -> Tensor {
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
    let qx = round_scaled(x, f, mode, u);
    let mapped = (qx - &high - &eps).remainder_tensor(&interval) + low;
    let mapped = (mapped.neg() - &eps).where_self(&c2, &mapped);
    (mapped.neg() - &eps).where_self(&c1, &mapped)
}

/// hgq-core's counter-based noise for the elements of a tensor of `n` elements, on `device`
/// in `kind`: element `j` gets `uniform(seed, j)`, the value hgq-core's kernels draw for it.
fn uniform_noise(seed: u64, n: i64, like: &Tensor) -> Result<Tensor> {
    // Wrapping 64-bit arithmetic on int64 tensors; logical right shifts as arithmetic ones
    // masked to the bits that shift in.
    let shr = |z: &Tensor, s: i64| -> Result<Tensor> {
        let mask = ((1u64 << (64 - s)) - 1) as i64;
        Ok(z.f_bitwise_right_shift_tensor_scalar(s)?
            .f_bitwise_and(mask)?)
    };
    let mix = |z: &Tensor, s: i64, m: u64| -> Result<Tensor> {
        Ok(z.f_bitwise_xor_tensor(&shr(z, s)?)?
            .f_mul_scalar(m as i64)?)
    };
    let idx = Tensor::f_arange(n, (Kind::Int64, like.device()))?;
    let z = idx
        .f_mul_scalar(0x9E37_79B9_7F4A_7C15u64 as i64)?
        .f_bitwise_xor(seed as i64)?;
    let z = mix(&z, 30, 0xBF58_476D_1CE4_E5B9)?;
    let z = mix(&z, 27, 0x94D0_49BB_1331_11EB)?;
    let z = z.f_bitwise_xor_tensor(&shr(&z, 31)?)?;
    // 24 bits: exact in float32 and float64.
    let u = shr(&z, 40)?
        .f_to_kind(Kind::Double)?
        .f_mul_scalar(1.0 / (1u64 << 24) as f64)?;
    Ok(u.f_to_kind(like.kind())?.f_reshape(like.size())?)
}

/// Checks `k`, `i`, `f` as hgq-core's pass would (one read of two flags from the device; the
/// values themselves only when one is bad, to name it in hgq-core's words), and says whether
/// the type is wider than float32 holds (then the pass runs in float64, as hgq-core's does).
pub(crate) fn check_bit_widths(q: &FixedPoint, k: &Tensor, i: &Tensor, f: &Tensor) -> Result<bool> {
    let bad_int = |t: &Tensor| -> Result<Tensor> {
        let finite = t.f_isfinite()?;
        Ok(finite
            .f_logical_and(&t.f_eq_tensor(&t.f_round()?)?)?
            .f_logical_not()?
            .f_any()?)
    };
    let bad_k = k.f_ne(0.0)?.f_logical_and(&k.f_ne(1.0)?)?.f_any()?;
    // The integer bit widths the pass uses.
    let (iu, fu) = match q.bit_widths() {
        BitWidths::Integer => (i.f_detach()?, f.f_detach()?),
        BitWidths::RoundHalfEven => (rc(&i.f_detach()?), rc(&f.f_detach()?)),
        BitWidths::KbiRaw => {
            let iu = rc(&f.f_detach()?);
            (iu.shallow_clone(), rc(&i.f_detach()?).f_sub(&iu)?)
        }
    };
    let bad = match q.bit_widths() {
        BitWidths::RoundHalfEven => i
            .f_isfinite()?
            .f_logical_and(&f.f_isfinite()?)?
            .f_all()?
            .f_logical_not()?,
        _ => bad_int(&iu)?.f_logical_or(&bad_int(&fu)?)?,
    };
    // k + max(i, -f) + f bits, exponents |f| and |max(i, -f) + k|.
    let kd = k.f_detach()?.f_to_kind(iu.kind())?;
    let ip = iu.f_maximum(&fu.f_neg()?)?;
    let bits = kd.f_add(&ip)?.f_add(&fu)?.f_nan_to_num(0.0, 0.0, 0.0)?;
    let exps = fu
        .f_abs()?
        .f_maximum(&ip.f_add(&kd)?.f_abs()?)?
        .f_nan_to_num(0.0, 0.0, 0.0)?;
    let over = |bits_max: f64, exp_max: f64| -> Result<Tensor> {
        Ok(bits
            .f_gt(bits_max)?
            .f_logical_or(&exps.f_gt(exp_max)?)?
            .f_any()?)
    };
    let flags = Tensor::f_stack(
        &[
            bad_k
                .f_logical_or(&bad)?
                .f_logical_or(&over(53.0, 1000.0)?)?,
            over(24.0, 100.0)?,
        ],
        0,
    )?;
    let flags = crate::host::read_bools(&flags, "bit-width check")?;
    if flags[0] {
        let all = Tensor::f_broadcast_tensors(&[k, i, f])?;
        let host = |t: &Tensor| crate::host::read_f64(t, "invalid bit widths");
        q.check_bit_widths(&host(&all[0])?, &host(&all[1])?, &host(&all[2])?)?;
    }
    Ok(flags[1])
}

/// `Q(x, k, i, f)` (SPEC 3) as torch ops on `x`'s device, differentiable by autograd;
/// `x` float32 or float64 (`k`, `i`, `f` are converted to its kind). `i`, `f` are what
/// `q.bit_widths()` says (KBI's raw `b`, `i` included), checked as hgq-core checks them.
/// Seeded stochastic rounding (S_ modes in training) draws hgq-core's noise.
pub fn fixed_quantize_ops(
    q: &FixedPoint,
    x: &Tensor,
    k: &Tensor,
    i: &Tensor,
    f: &Tensor,
    training: bool,
) -> Result<Tensor> {
    let kind = x.f_kind()?;
    if !matches!(kind, Kind::Float | Kind::Double) {
        return Err(TorchError::Kind { what: "x", kind });
    }
    crate::check_operands(x, [k, i, f])?;
    let [k, p1, p2] = params_as(x.device(), kind, [k, i, f])?;
    let wide = check_bit_widths(q, &k, &p1, &p2)?;
    if wide && kind == Kind::Float {
        // A type float32 does not hold: computed in float64, rounded to float32 once.
        let x64 = x.f_to_kind(Kind::Double)?;
        let y = fixed_quantize_ops(q, &x64, &k, &p1, &p2, training)?;
        return Ok(y.f_to_kind(Kind::Float)?);
    }
    let (i_raw, f) = match q.bit_widths() {
        BitWidths::Integer => (p1, p2),
        BitWidths::RoundHalfEven => (rc(&p1), rc(&p2)),
        // KBI: i = rc(i), f = rc(b) - rc(i); autograd forms db = df, di = di - df.
        BitWidths::KbiRaw => {
            let iu = rc(&p2);
            let fu = rc(&p1) - &iu;
            (iu, fu)
        }
    };
    let round = q.round_mode();
    let overflow = q.overflow_mode();
    let noise = match q.stochastic() {
        Stochastic::Seeded(seed) if training && round.is_stochastic() => {
            Some(uniform_noise(seed, x.numel() as i64, x)?)
        }
        _ => None,
    };
    let u = noise.as_ref();
    let round = round.deterministic();
    // i := max(i, -f) in value; the gradient reaches i unchanged.
    let i = i_raw.detach().maximum(&f.detach().neg()) + zero_term(&i_raw);
    let y = match overflow {
        OverflowMode::WrapSm => wrap_sm(x, &k, &i, &f, round, u),
        OverflowMode::Wrap => {
            let r = round_scaled(x, &f, round, u);
            if training { r } else { wrap(&r, &k, &i) }
        }
        OverflowMode::Sat | OverflowMode::SatSym => {
            round_scaled(&sat(x, &k, &i, &f, overflow), &f, round, u)
        }
    };
    Ok(if q.zero_mask() && !training {
        let bits = &k + &i_raw + &f;
        Tensor::where_scalarself(&bits.le(0.0), 0.0, &y)
    } else {
        y
    })
}

const EPS_K: f64 = 1e-7;

/// hgq-core's [`TrackRule::apply`] on every element, as torch operations on float32 bit-width
/// values (`decay` broadcast): the new integer bits and their rounding. The same operations in
/// the same order as the scalar rule (`minimal_i::xb`, `xf`), so that the same values come
/// out; no gradient.
///
/// ```
/// use hgq_core::quantizer::{Param, TrackRule};
/// use tch::Tensor;
/// let rule = TrackRule { param: Param::Kif, symmetric: false, training: true, constraint: None };
/// let t = |v: &[f32]| Tensor::from_slice(v);
/// let (i, used) = hgq_torch::ops::track_ops(rule, &t(&[3.0, f32::NAN]), &t(&[5.0, 5.0]),
///     &t(&[2.0, 2.0]), &t(&[1.0]))?;
/// assert_eq!(Vec::<f32>::try_from(&i)?, [4.0, 5.0]); // NaN data: the bits kept
/// assert_eq!(Vec::<f32>::try_from(&used)?, [4.0, 5.0]);
/// # Ok::<(), hgq_torch::TorchError>(())
/// ```
pub fn track_ops(
    rule: TrackRule,
    absmax: &Tensor,
    i: &Tensor,
    p: &Tensor,
    decay: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let float = |t: &Tensor| t.f_detach()?.f_to_kind(Kind::Float);
    let (a, i, p) = (float(absmax)?, float(i)?, float(p)?);
    let decay = float(decay)?.f_to_device(i.device())?;
    // hgq-core's `rc1` in value: round half to even, then `+ (x - x)` (so -0 becomes +0, as
    // the reference's straight-through form gives).
    let rc1 = |t: &Tensor| -> Result<Tensor> { Ok(t.f_round()?.f_add(&t.f_sub(t)?)?) };
    let pr = rc1(&p)?;
    let ir = rc1(&i)?;
    // The integer bits the data needs (a is an absolute maximum: never negative; NaN is
    // caught by the finiteness test below).
    let m = match rule.param {
        Param::Kbi => {
            // ceil(log2((a + eps) / (1 - 2^-b + eps))); 32 where b <= 0 (asymmetric).
            let den = pr
                .f_neg()?
                .f_exp2()?
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_add_scalar(EPS_K)?;
            let ip = a.f_add_scalar(EPS_K)?.f_div(&den)?.f_log2()?.f_ceil()?;
            if rule.symmetric {
                ip
            } else {
                ip.f_where_scalarother(&pr.f_gt(0.0)?, 32.0)?
            }
        }
        // ceil(log2(a + 2^-f)).
        Param::Kif => a.f_add(&pr.f_neg()?.f_exp2()?)?.f_log2()?.f_ceil()?,
    };
    let con = |v: Tensor| -> Result<Tensor> {
        match rule.constraint {
            Some(c) => constrained(&v, c),
            None => Ok(v),
        }
    };
    let v = match (rule.param, rule.training) {
        (Param::Kbi, true) => con(maximum(&i.f_sub(&decay)?, &m)?)?,
        (Param::Kbi, false) => con(maximum(&ir, &m)?)?,
        (Param::Kif, true) => maximum(&i.f_sub(&decay)?, &m)?,
        (Param::Kif, false) => maximum(&ir, &con(m)?)?,
    };
    // Where the data or the new bits are not finite, the bits as they were.
    let v = v.f_where_self(&a.f_isfinite()?.f_logical_and(&v.f_isfinite()?)?, &i)?;
    let used = rc1(&v)?;
    Ok((v, used))
}

/// hgq-core's `Real::maximum`: NaN where either is NaN, else the larger, and of equal values
/// (+0 and -0) the first (`torch.maximum` may return either zero).
pub(crate) fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let larger = b.f_where_self(&a.f_lt_tensor(b)?, a)?;
    Ok(b.f_where_self(&b.f_isnan()?, &larger)?)
}

/// hgq-core's `Real::minimum`: NaN where either is NaN, else the smaller, and of equal values
/// the second.
pub(crate) fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let smaller = a.f_where_self(&a.f_lt_tensor(b)?, b)?;
    Ok(a.f_where_self(&a.f_isnan()?, &smaller)?)
}

/// A constraint on a tensor, out of place (hgq-core's [`Constraint::one`] per element, zeros'
/// signs included).
fn constrained(t: &Tensor, c: Constraint) -> Result<Tensor> {
    let lo = |v: f64| -> Result<Tensor> { maximum(t, &t.f_full_like(v)?) };
    Ok(match c {
        Constraint::MinMax { min, max } => {
            let l = lo(min)?;
            minimum(&l, &l.f_full_like(max)?)?
        }
        Constraint::Min(m) => lo(m)?,
        Constraint::Max(m) => minimum(t, &t.f_full_like(m)?)?,
        Constraint::Constant(value) => t.f_full_like(value)?,
        Constraint::NonNeg => t.f_mul(&t.f_ge(0.0)?.f_to_kind(t.kind())?)?,
    })
}

/// The minifloat quantizer (SPEC 8) as torch ops with the reference's surrogate gradients,
/// from raw `m`, `e`, `e0` (used rounded half to even, straight through). float16 and
/// bfloat16 are computed in float32 and stored in their type, as hgq-core does. The rounded
/// bit widths must be finite (hgq-core's check and error).
pub fn minifloat_ops(x: &Tensor, p: [&Tensor; 3]) -> Result<Tensor> {
    let kind = x.f_kind()?;
    if matches!(kind, Kind::Half | Kind::BFloat16) {
        return Ok(minifloat_ops(&x.f_to_kind(Kind::Float)?, p)?.f_to_kind(kind)?);
    }
    if !matches!(kind, Kind::Float | Kind::Double) {
        return Err(TorchError::Kind { what: "x", kind });
    }
    let [m, e, e0] = p.map(rc);
    let bad = [&m, &e, &e0]
        .iter()
        .try_fold(Tensor::from(false), |acc, t| -> Result<Tensor> {
            Ok(acc.f_logical_or(&t.f_isfinite()?.f_all()?.f_logical_not()?)?)
        })?;
    if crate::host::read_bool(&bad, "minifloat bit-width check")? {
        let host = |t: &Tensor| crate::host::read_f64(t, "invalid bit widths");
        hgq_core::check_minifloat_bit_widths(&host(&m)?, &host(&e)?, &host(&e0)?)?;
    }
    let (m, e, e0) = (m.to_kind(kind), e.to_kind(kind), e0.to_kind(kind));
    let xd = x.detach();
    let (md, ed, e0d) = (m.detach(), e.detach(), e0.detach());
    let big_m = &md + 1.0;
    let e_req = (xd.abs() + EPS_K).log2().floor();
    let h = (&ed - 1.0).exp2().clamp_min(1.0);
    let e_lo = -&h + &e0d + 1.0;
    let e_hi = &h + &e0d - 1.0;
    let e_act = e_req.maximum(&e_lo).minimum(&e_hi);
    let s = (&e_act - &big_m + 1.0).exp2();
    let sig = &xd / &s;
    let qs = sig.round();
    let top = big_m.exp2() - e_act.eq_tensor(&e_hi).to_kind(kind);
    let y = qs.maximum(&top.neg()).minimum(&top) * &s;
    // Surrogate coefficients (d y / d m, d y / d e, d y / d e0 per element).
    let finite = |t: Tensor| t.nan_to_num(0.0, 0.0, 0.0);
    let dm = finite(e_req.le_tensor(&e_hi).to_kind(kind) * &s * (&sig - &qs) * LN2);
    let g = finite(e_req.ne_tensor(&e_act).to_kind(kind) * (&xd - &y) * LN2);
    let de = &g * LN2 * &h;
    let de0 = g.where_self(&e_req.gt_tensor(&e_hi), &g.neg());
    // y - t with t = +0 whose gradients are minus the wanted ones: subtracting +0 keeps a
    // rounded -0 (adding would turn it into +0, unlike the reference's custom gradient).
    let nz_x = (&xd - x).where_self(&xd.isfinite(), &xd.zeros_like());
    let t = nz_x + dm * neg_zero_term(&m) + de * neg_zero_term(&e) + de0 * neg_zero_term(&e0);
    Ok(y - t)
}

/// `+0` whose gradient with respect to `a` is `-1`.
fn neg_zero_term(a: &Tensor) -> Tensor {
    a.detach() - a
}

#[cfg(test)]
mod tests {
    use super::*;
    use hgq_core::quantizer::Constraint;

    /// [`track_ops`] is hgq-core's [`TrackRule::apply`] bit for bit: every parametrization,
    /// mode and constraint, on maxima at and around powers of two, zero, subnormals, huge and
    /// non-finite values, with bit widths across their range.
    #[test]
    fn track_ops_is_the_rule() -> Result<()> {
        let mut a = vec![0.0f32, 1e-40, 1e-7, f32::INFINITY, f32::NAN, 3e38];
        for e in -30..40 {
            let p = (e as f32).exp2();
            a.extend([
                p,
                p * (1.0 + f32::EPSILON),
                p * (1.0 - f32::EPSILON / 2.0),
                p * 0.75,
            ]);
        }
        let n = a.len();
        let wave = |j: usize, lo: f32, hi: f32| lo + (hi - lo) * ((j * 7919 % 97) as f32 / 96.0);
        let i: Vec<f32> = (0..n).map(|j| wave(j, -8.0, 12.0)).collect();
        let p: Vec<f32> = (0..n).map(|j| wave(j + 3, -2.5, 14.5)).collect();
        let constraints = [
            None,
            Some(Constraint::MinMax {
                min: -4.0,
                max: 6.0,
            }),
            Some(Constraint::MinMax { min: 0.0, max: 0.0 }),
            Some(Constraint::Min(0.0)),
            Some(Constraint::Max(-0.0)),
            Some(Constraint::NonNeg),
        ];
        let mut checked = 0;
        for param in [Param::Kbi, Param::Kif] {
            for symmetric in [false, true] {
                for training in [false, true] {
                    for constraint in constraints {
                        for decay in [f32::INFINITY, 0.5] {
                            let rule = TrackRule {
                                param,
                                symmetric,
                                training,
                                constraint,
                            };
                            let t = Tensor::from_slice;
                            let (v, u) = track_ops(rule, &t(&a), &t(&i), &t(&p), &t(&[decay]))?;
                            let (v, u) = (Vec::<f32>::try_from(&v)?, Vec::<f32>::try_from(&u)?);
                            for j in 0..n {
                                let (wv, wu) = rule.apply(a[j], i[j], p[j], decay);
                                assert_eq!(
                                    (v[j].to_bits(), u[j].to_bits()),
                                    (wv.to_bits(), wu.to_bits()),
                                    "{rule:?} a {} i {} p {} decay {decay}",
                                    a[j],
                                    i[j],
                                    p[j]
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 96);
        Ok(())
    }
}
