//! Conversion between configurations and hgq-core's layer-quantizer descriptions
//! ([`hgq_core::quantizer`]).
//!
//! A configuration becomes a [`CoreQuantizer`]: the hgq-core spec of its type (KBI, KIF,
//! minifloat or dummy) plus the layer-level `scaler`, `qnoise_factor` and `affine` that the
//! reference's `Quantizer` layer applies around it. Initial values given as initializers become
//! their constant value. Stochastic rounding is left at hgq-core's default
//! ([`hgq_core::quantizer::FixedSpec::new`]); set `fixed.stochastic` to
//! [`hgq_core::Stochastic::Reference`] for the reference's behaviour.
//!
//! ```
//! use hgq_config::convert::{CoreQuantizer, QuantizerSpec};
//! use hgq_config::{Place, QType, QuantizerConfig};
//! let c = QuantizerConfig::builder(QType::Kbi, Place::Weight).build().unwrap();
//! let core = c.to_core().unwrap();
//! let QuantizerSpec::Kbi(spec) = &core.spec else { panic!() };
//! assert_eq!((spec.k0, spec.b0, spec.i0), (1.0, 8.0, 2.0));
//! assert_eq!(QuantizerConfig::from_core(&core, Place::Weight).unwrap(), c);
//! ```
use crate::error::{ConfigError, Result};
use crate::keras::{Constraint, InitValue, Regularizer};
use crate::quantizer::{
    Common, Flavor, FloatParams, KbiParams, KifParams, Params, Place, QType, QuantizerConfig,
};
use hgq_core::mapper::Axes;
use hgq_core::quantizer as q;

pub use hgq_core::quantizer::QuantizerSpec;

/// A quantizer as hgq-core describes it, with the `Quantizer` layer's extras.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreQuantizer {
    /// The quantizer.
    pub spec: QuantizerSpec,
    /// Inputs are divided by it before quantization and multiplied back after.
    pub scaler: Option<f64>,
    /// Fraction of the quantization noise applied in training.
    pub qnoise_factor: Option<f64>,
    /// Post-quantization `(scale, shift)`.
    pub affine: Option<(f64, f64)>,
}

impl CoreQuantizer {
    /// Checks the `Quantizer` layer's extras: `scaler` finite and not 0, `qnoise_factor` in
    /// `[0, 1]`, `affine` finite with a scale that is not 0 (the quantizer's own values are
    /// checked where it is made).
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.scaler
            && (!s.is_finite() || s == 0.0)
        {
            return Err(ConfigError::Convert(format!(
                "scaler = {s}: must be finite and not 0"
            )));
        }
        if let Some(n) = self.qnoise_factor
            && !(0.0..=1.0).contains(&n)
        {
            return Err(ConfigError::Convert(format!(
                "qnoise_factor = {n}: must be between 0 and 1"
            )));
        }
        if let Some((a, b)) = self.affine
            && (!a.is_finite() || !b.is_finite() || a == 0.0)
        {
            return Err(ConfigError::Convert(format!(
                "affine = ({a}, {b}): must be finite, with a scale that is not 0"
            )));
        }
        Ok(())
    }
}

fn con_to(c: &Option<Constraint>) -> Option<q::Constraint> {
    c.map(|c| match c {
        Constraint::MinMax {
            min_value,
            max_value,
        } => q::Constraint::MinMax {
            min: min_value,
            max: max_value,
        },
        Constraint::Min(v) => q::Constraint::Min(v),
        Constraint::Max(v) => q::Constraint::Max(v),
        Constraint::Constant(v) => q::Constraint::Constant(v),
        Constraint::NonNeg => q::Constraint::NonNeg,
    })
}

fn con_from(c: &Option<q::Constraint>) -> Option<Constraint> {
    c.map(|c| match c {
        q::Constraint::MinMax { min, max } => Constraint::MinMax {
            min_value: min,
            max_value: max,
        },
        q::Constraint::Min(v) => Constraint::Min(v),
        q::Constraint::Max(v) => Constraint::Max(v),
        q::Constraint::Constant(v) => Constraint::Constant(v),
        q::Constraint::NonNeg => Constraint::NonNeg,
    })
}

fn reg_to(r: &Option<Regularizer>) -> Result<Option<q::Regularizer>> {
    Ok(match r {
        None => None,
        Some(Regularizer::MonoL1(l)) => Some(q::Regularizer::MonoL1(*l)),
        Some(Regularizer::L1(l)) => Some(q::Regularizer::L1(*l)),
        Some(Regularizer::L2(l)) => Some(q::Regularizer::L2(*l)),
        Some(Regularizer::L1L2 { l1, l2 }) => match (*l1 == 0.0, *l2 == 0.0) {
            (_, true) => Some(q::Regularizer::L1(*l1)),
            (true, false) => Some(q::Regularizer::L2(*l2)),
            _ => {
                return Err(ConfigError::Convert(
                    "L1L2 with both factors non-zero has no hgq-core regularizer".into(),
                ));
            }
        },
    })
}

fn reg_from(r: &Option<q::Regularizer>) -> Option<Regularizer> {
    r.map(|r| match r {
        q::Regularizer::MonoL1(l) => Regularizer::MonoL1(l),
        q::Regularizer::L1(l) => Regularizer::L1(l),
        q::Regularizer::L2(l) => Regularizer::L2(l),
    })
}

/// The axes the reference's quantizer would use: the mapper's when one is given, else the
/// pair, of which exactly one must be set (the reference asserts the same).
fn axes(c: &Common) -> Result<Axes> {
    if let Some(m) = &c.bw_mapper {
        return m
            .axes()
            .ok_or_else(|| ConfigError::Convert("bw_mapper names no axes".into()));
    }
    let conv = |v: &Option<Vec<i64>>| {
        v.as_ref()
            .map(|v| v.iter().map(|&x| x as isize).collect::<Vec<_>>())
    };
    Axes::from_pair(conv(&c.heterogeneous_axis), conv(&c.homogeneous_axis)).map_err(|_| {
        ConfigError::Convert(
            "exactly one of homogeneous_axis and heterogeneous_axis must be set".into(),
        )
    })
}

/// The (homogeneous, heterogeneous) lists of `a`; a mapper of the user's own has no Keras
/// config.
#[allow(clippy::type_complexity)]
fn axes_back(a: &Axes) -> Result<(Option<Vec<i64>>, Option<Vec<i64>>)> {
    let conv = |v: &[isize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    match a {
        Axes::Homogeneous(v) => Ok((Some(conv(v)), None)),
        Axes::Heterogeneous(v) => Ok((None, Some(conv(v)))),
        Axes::Mapper(m) => Err(ConfigError::Convert(format!(
            "the bit-width mapper {m:?} is the user's own: it has no Keras config"
        ))),
    }
}

fn fixed(
    round: hgq_core::RoundMode,
    overflow: hgq_core::OverflowMode,
    decay: &InitValue,
    c: &Common,
) -> Result<q::FixedSpec> {
    let mut f = q::FixedSpec::new(round, overflow);
    f.i_decay_speed = decay.as_f64();
    f.is_weight = c.is_weight;
    f.trainable = c.trainable;
    f.axes = axes(c)?;
    Ok(f)
}

/// An initial value as the reference would write it by hand: ints when integral.
fn init_back(v: f64) -> InitValue {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        InitValue::Int(v as i64)
    } else {
        InitValue::Float(v)
    }
}

impl QuantizerConfig {
    /// The hgq-core description of this configuration.
    ///
    /// Fails when the reference could not build the quantizer either: both or neither axis
    /// list without a mapper (e.g. the reference's own float/bias defaults), or a regularizer
    /// hgq-core does not have.
    pub fn to_core(&self) -> Result<CoreQuantizer> {
        let spec = match &self.params {
            Params::Kbi(p) => {
                let mut s = q::KbiSpec::new(
                    p.k0.as_f64(),
                    p.b0.as_f64(),
                    p.i0.as_f64(),
                    p.round_mode,
                    p.overflow_mode,
                );
                s.bc = con_to(&p.bc);
                s.ic = con_to(&p.ic);
                s.br = reg_to(&p.br)?;
                s.ir = reg_to(&p.ir)?;
                s.fixed = fixed(p.round_mode, p.overflow_mode, &p.i_decay_speed, &p.common)?;
                QuantizerSpec::Kbi(s)
            }
            Params::Kif(p) => {
                let mut s = q::KifSpec::new(
                    p.k0.as_f64(),
                    p.i0.as_f64(),
                    p.f0.as_f64(),
                    p.round_mode,
                    p.overflow_mode,
                );
                s.ic = con_to(&p.ic);
                s.fc = con_to(&p.fc);
                s.ir = reg_to(&p.ir)?;
                s.fr = reg_to(&p.fr)?;
                s.fixed = fixed(p.round_mode, p.overflow_mode, &p.i_decay_speed, &p.common)?;
                QuantizerSpec::Kif(s)
            }
            Params::Float(p) => {
                let mut s = q::FloatSpec::new(p.m0.as_f64(), p.e0.as_f64(), p.e00.as_f64());
                s.mc = con_to(&p.mc);
                s.ec = con_to(&p.ec);
                s.e0c = con_to(&p.e0c);
                s.mr = reg_to(&p.mr)?;
                s.er = reg_to(&p.er)?;
                s.e0r = reg_to(&p.e0r)?;
                s.axes = axes(&p.common)?;
                s.trainable = p.common.trainable;
                QuantizerSpec::Float(s)
            }
            Params::Dummy => QuantizerSpec::Dummy,
        };
        let core = CoreQuantizer {
            spec,
            scaler: self.scaler,
            qnoise_factor: self.qnoise_factor,
            affine: self.affine,
        };
        core.validate()?;
        Ok(core)
    }

    /// A plain `QuantizerConfig` for an hgq-core description, at `place`.
    ///
    /// Integral initial values are written as ints and `k0` as a bool, as the reference's
    /// defaults are; a minifloat spec has no `is_weight`, which is taken from the defaults of
    /// `place`. Stochastic-rounding settings have no JSON form and are dropped. A value that
    /// reading the JSON would refuse is refused ([`QuantizerConfig::validate`]).
    pub fn from_core(c: &CoreQuantizer, place: Place) -> Result<QuantizerConfig> {
        c.validate()?;
        let k0 = |k: f64| {
            if k == 0.0 || k == 1.0 {
                Ok(InitValue::Bool(k == 1.0))
            } else {
                Err(ConfigError::Convert(format!("k0 = {k} is not 0 or 1")))
            }
        };
        let common = |f: &q::FixedSpec| -> Result<Common> {
            let (hom, het) = axes_back(&f.axes)?;
            Ok(Common {
                homogeneous_axis: hom,
                heterogeneous_axis: het,
                bw_mapper: None,
                trainable: f.trainable,
                is_weight: f.is_weight,
            })
        };
        let params = match &c.spec {
            QuantizerSpec::Kbi(s) => Params::Kbi(KbiParams {
                k0: k0(s.k0)?,
                b0: init_back(s.b0),
                i0: init_back(s.i0),
                round_mode: s.fixed.round,
                overflow_mode: s.fixed.overflow,
                bc: con_from(&s.bc),
                ic: con_from(&s.ic),
                br: reg_from(&s.br),
                ir: reg_from(&s.ir),
                i_decay_speed: InitValue::Float(s.fixed.i_decay_speed),
                common: common(&s.fixed)?,
            }),
            QuantizerSpec::Kif(s) => Params::Kif(KifParams {
                k0: k0(s.k0)?,
                i0: init_back(s.i0),
                f0: init_back(s.f0),
                round_mode: s.fixed.round,
                overflow_mode: s.fixed.overflow,
                ic: con_from(&s.ic),
                ir: reg_from(&s.ir),
                fc: con_from(&s.fc),
                fr: reg_from(&s.fr),
                i_decay_speed: InitValue::Float(s.fixed.i_decay_speed),
                common: common(&s.fixed)?,
            }),
            QuantizerSpec::Float(s) => {
                let Some(d) = Params::defaults(QType::Float, place).common().cloned() else {
                    unreachable!("float defaults have common keys")
                };
                let (hom, het) = axes_back(&s.axes)?;
                Params::Float(FloatParams {
                    m0: init_back(s.m0),
                    e0: init_back(s.e0),
                    e00: init_back(s.e00),
                    mc: con_from(&s.mc),
                    ec: con_from(&s.ec),
                    e0c: con_from(&s.e0c),
                    mr: reg_from(&s.mr),
                    er: reg_from(&s.er),
                    e0r: reg_from(&s.e0r),
                    common: Common {
                        homogeneous_axis: hom,
                        heterogeneous_axis: het,
                        trainable: s.trainable,
                        ..d
                    },
                })
            }
            QuantizerSpec::Dummy => Params::Dummy,
        };
        let cfg = QuantizerConfig {
            flavor: Flavor::Plain,
            place,
            scaler: c.scaler,
            qnoise_factor: c.qnoise_factor,
            affine: c.affine,
            params,
        };
        // What the JSON would refuse on reading (a NaN decay speed, ...), refused here too.
        cfg.validate()?;
        Ok(cfg)
    }
}
