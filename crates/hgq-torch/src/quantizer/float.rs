//! The minifloat layer quantizer on tensors (SPEC 8), as torch ops with the reference's
//! surrogate gradients.
use hgq_core::CallMode;
use hgq_core::quantizer::FloatSpec;
use tch::{Kind, Tensor, nn};

use super::{Props, Var, bw_layout, neg_zero_term, rc};
use crate::Result;

const LN2: f64 = std::f64::consts::LN_2;
/// Keras' epsilon, as the reference's `log2(|x| + eps)` uses it.
const EPS_K: f64 = 1e-7;

/// A trainable minifloat quantizer: `m` mantissa bits, `e` exponent bits, `e0` offset.
#[derive(Debug)]
pub struct FloatQuantizer {
    spec: FloatSpec,
    input_shape: Vec<Option<usize>>,
    bw_shape: Vec<i64>,
    m: Var,
    e: Var,
    e0: Var,
}

impl FloatQuantizer {
    /// A quantizer for inputs of `input_shape`, its variables `m`, `e`, `e0` in `path`.
    pub fn new(path: &nn::Path, spec: &FloatSpec, input_shape: &[Option<usize>]) -> Result<Self> {
        let (bw_shape, _, _) = bw_layout(&spec.axes, input_shape)?;
        Ok(FloatQuantizer {
            m: Var::new(path, "m", &bw_shape, spec.m0, true, spec.mc, spec.mr),
            e: Var::new(path, "e", &bw_shape, spec.e0, true, spec.ec, spec.er),
            e0: Var::new(path, "e0", &bw_shape, spec.e00, true, spec.e0c, spec.e0r),
            spec: spec.clone(),
            input_shape: input_shape.to_vec(),
            bw_shape,
        })
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &FloatSpec {
        &self.spec
    }

    /// The bit-width shape.
    pub fn bw_shape(&self) -> &[i64] {
        &self.bw_shape
    }

    pub(crate) fn vars(&self) -> Vec<&Var> {
        vec![&self.m, &self.e, &self.e0]
    }

    /// `(m, e, e0)` as used: `rc` of the raw values.
    pub fn mee0(&self) -> (Tensor, Tensor, Tensor) {
        (rc(self.m.value()), rc(self.e.value()), rc(self.e0.value()))
    }

    /// Quantizes `x`; the same in every mode. Gradients: `dx = dy` and SPEC 8's surrogates for
    /// `m`, `e`, `e0` (zero where they are not finite, e.g. for infinite inputs).
    pub fn forward(&self, x: &Tensor, _mode: CallMode) -> Result<Tensor> {
        super::check_input(x, &self.input_shape)?;
        let kind = x.kind();
        if matches!(kind, Kind::Half | Kind::BFloat16) {
            // Computed in float32 and stored in the type, as hgq-core does.
            return Ok(self.quantize(&x.to_kind(Kind::Float))?.to_kind(kind));
        }
        self.quantize(x)
    }

    fn quantize(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let (m, e, e0) = self.mee0();
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

    /// `bits = m + e + 1`, differentiable.
    pub fn bits(&self) -> Tensor {
        let (m, e, _) = self.mee0();
        m + e + 1.0
    }

    /// Bits, fbits, min, max and epsilon of the current parameters, differentiable.
    pub fn props(&self) -> Props {
        let (m, e, e0) = self.mee0();
        let bits = &m + &e + 1.0;
        let half = (&e - 1.0).exp2();
        let max = (&half + &e0 - 1.0).exp2() * (m.neg().exp2().neg() + 2.0);
        let epsilon = (half.neg() + &e0 + 1.0).exp2() * m.neg().exp2();
        Props {
            fbits: bits.shallow_clone(),
            bits,
            min: max.neg(),
            max,
            epsilon,
        }
    }
}
