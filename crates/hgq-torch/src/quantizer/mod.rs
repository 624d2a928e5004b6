//! Layer-level quantizers on tensors: KBI, KIF, minifloat and dummy, with their raw
//! parameters in a [`VarStore`](tch::nn::VarStore), behind the reference's `Quantizer` layer
//! (`scaler`, `qnoise_factor`, `affine`).
//!
//! ```no_run
//! use hgq_torch::quantizer::Quantizer;
//! use hgq_torch::hgq_config::{Place, QType, QuantizerConfig};
//! use hgq_torch::hgq_core::CallMode;
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let conf = QuantizerConfig::builder(QType::Kif, Place::Datalane).build()?;
//! let q = Quantizer::from_config(&(vs.root() / "iq"), &conf, &[None, Some(16)])?;
//! let x = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
//! let y = q.forward(&x, CallMode::Training)?;   // gradients reach vs's trainable variables
//! let loss = y.square().sum(Kind::Float) + q.regularization_loss();
//! loss.backward();
//! q.apply_constraints();                          // after the optimizer step
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
mod fixed;
mod float;

pub use fixed::{FixedQuantizer, Param};
pub use float::FloatQuantizer;

use hgq_config::QuantizerConfig;
use hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_core::mapper::Axes;
use hgq_core::quantizer::{Constraint, Regularizer};
use hgq_core::{BitwidthMapper, CallMode, DefaultBitwidthMapper};
use tch::{Device, Kind, Tensor, nn};

use crate::{Result, TorchError};

/// The derived properties of a quantizer's bit widths (bit-width shape).
#[derive(Debug)]
pub struct Props {
    /// Bits including the sign bit as the reference counts them (EBOPs use these).
    pub bits: Tensor,
    /// Bits including the sign bit for the fractional grid.
    pub fbits: Tensor,
    /// The smallest representable value.
    pub min: Tensor,
    /// The largest representable value.
    pub max: Tensor,
    /// The step of the grid.
    pub epsilon: Tensor,
}

/// One raw parameter in the `VarStore`, with its constraint and regularizer.
#[derive(Debug)]
pub(crate) struct Var {
    pub(crate) name: &'static str,
    tensor: Tensor,
    pub(crate) trainable: bool,
    pub(crate) constraint: Option<Constraint>,
    pub(crate) regularizer: Option<Regularizer>,
}

impl Var {
    pub(crate) fn new(
        path: &nn::Path,
        name: &'static str,
        shape: &[i64],
        init: f64,
        trainable: bool,
        constraint: Option<Constraint>,
        regularizer: Option<Regularizer>,
    ) -> Var {
        let tensor = if trainable {
            path.var(name, shape, nn::Init::Const(init))
        } else {
            let t = path.zeros_no_train(name, shape);
            let _ = tch::no_grad(|| t.shallow_clone().fill_(init));
            t
        };
        Var {
            name,
            tensor,
            trainable,
            constraint,
            regularizer,
        }
    }

    pub(crate) fn value(&self) -> &Tensor {
        &self.tensor
    }

    fn constrain(&self) {
        let Some(c) = self.constraint else { return };
        tch::no_grad(|| {
            let mut t = self.tensor.shallow_clone();
            let _ = match c {
                Constraint::MinMax { min, max } => t.clamp_(min, max),
                Constraint::Min(m) => t.clamp_min_(m),
                Constraint::Max(m) => t.clamp_max_(m),
                Constraint::Constant(v) => t.fill_(v),
                Constraint::NonNeg => {
                    let keep = t.ge(0.0).to_kind(t.kind());
                    t.g_mul_(&keep)
                }
            };
        });
    }

    fn loss(&self) -> Option<Tensor> {
        let t = &self.tensor;
        self.regularizer.map(|r| match r {
            Regularizer::MonoL1(l) => t.sum(Kind::Float) * l,
            Regularizer::L1(l) => t.abs().sum(Kind::Float) * l,
            Regularizer::L2(l) => t.square().sum(Kind::Float) * l,
        })
    }
}

/// `rc(v)`: round half to even with a straight-through gradient.
pub(crate) fn rc(v: &Tensor) -> Tensor {
    let d = v.detach();
    d.round() + (v - &d)
}

/// `rc(v)` of the reference on one value: `round(v) + (v - v)` (half to even; a rounded -0
/// becomes +0, an infinity NaN), the value [`rc`] computes.
#[allow(clippy::eq_op)]
pub(crate) fn rc1(v: f32) -> f32 {
    v.round_ties_even() + (v - v)
}

/// `+0` whose gradient with respect to `a` is `-1`.
pub(crate) fn neg_zero_term(a: &Tensor) -> Tensor {
    a.detach() - a
}

/// The values of a tensor as float32 on the CPU.
pub(crate) fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&t)?)
}

/// The bit-width shape and the homogeneous axes for an input shape, and the mapper that
/// resolved them.
pub(crate) fn bw_layout(
    axes: &Axes,
    input_shape: &[Option<usize>],
) -> Result<(Vec<i64>, Vec<i64>, DefaultBitwidthMapper)> {
    let mut m = DefaultBitwidthMapper::new(axes.clone());
    let bw = m.bw_shape(input_shape)?;
    let homo = m.homogeneous_axes()?.iter().map(|&a| a as i64).collect();
    Ok((bw.iter().map(|&d| d as i64).collect(), homo, m))
}

/// `x` must be a float tensor of the built shape (any size on `None` axes).
pub(crate) fn check_input(x: &Tensor, built: &[Option<usize>]) -> Result<()> {
    let kind = x.f_kind()?;
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(TorchError::Kind { what: "x", kind });
    }
    let got = x.size();
    let fits = got.len() == built.len()
        && got
            .iter()
            .zip(built)
            .all(|(&g, b)| b.is_none_or(|b| b as i64 == g));
    if !fits {
        return Err(TorchError::Shape {
            built: built.to_vec(),
            got,
        });
    }
    Ok(())
}

/// The identity, with the reference's properties (`bits = 0`, `min/max = -/+1e9`).
#[derive(Debug, Default)]
pub struct DummyQuantizer {
    input_shape: Vec<Option<usize>>,
}

impl DummyQuantizer {
    /// `Props` as the reference's `DummyQuantizer` has them (scalars).
    pub fn props(&self) -> Props {
        let s = |v: f64| Tensor::from(v as f32);
        Props {
            bits: s(0.0),
            fbits: s(0.0),
            min: s(-1e9),
            max: s(1e9),
            epsilon: s(1e-7),
        }
    }
}

/// The quantizer inside a [`Quantizer`].
#[derive(Debug)]
pub enum Inner {
    /// KBI or KIF fixed point.
    Fixed(FixedQuantizer),
    /// Minifloat.
    Float(FloatQuantizer),
    /// The identity.
    Dummy(DummyQuantizer),
}

/// The reference's `Quantizer` layer: a quantizer with `scaler` (divide before, multiply
/// after), `qnoise_factor` (in training, only this fraction of the quantization noise) and
/// `affine` (`y * scale + shift` after).
#[derive(Debug)]
pub struct Quantizer {
    inner: Inner,
    scaler: Option<f64>,
    qnoise_factor: Option<f64>,
    affine: Option<(f64, f64)>,
}

impl Quantizer {
    /// Builds the quantizer `spec` describes for inputs of `input_shape` (`None`: batch or
    /// another axis of unknown size), its variables under `path`.
    pub fn new(
        path: &nn::Path,
        spec: &CoreQuantizer,
        input_shape: &[Option<usize>],
    ) -> Result<Self> {
        let inner = match &spec.spec {
            QuantizerSpec::Kbi(s) => Inner::Fixed(FixedQuantizer::new_kbi(path, s, input_shape)?),
            QuantizerSpec::Kif(s) => Inner::Fixed(FixedQuantizer::new_kif(path, s, input_shape)?),
            QuantizerSpec::Float(s) => Inner::Float(FloatQuantizer::new(path, s, input_shape)?),
            QuantizerSpec::Dummy => Inner::Dummy(DummyQuantizer {
                input_shape: input_shape.to_vec(),
            }),
        };
        Ok(Quantizer {
            inner,
            scaler: spec.scaler,
            qnoise_factor: spec.qnoise_factor,
            affine: spec.affine,
        })
    }

    /// Builds the quantizer of a Keras configuration (hgq-config).
    pub fn from_config(
        path: &nn::Path,
        config: &QuantizerConfig,
        input_shape: &[Option<usize>],
    ) -> Result<Self> {
        Self::new(path, &config.to_core()?, input_shape)
    }

    /// The quantizer inside.
    pub fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Quantizes `x` in `mode` (training, inference, or tracing of the WRAP integer bits).
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        let xs = match self.scaler {
            Some(s) => x / s,
            None => x.shallow_clone(),
        };
        let mut y = match &self.inner {
            Inner::Fixed(q) => q.forward(&xs, mode)?,
            Inner::Float(q) => q.forward(&xs, mode)?,
            Inner::Dummy(d) => {
                check_input(&xs, &d.input_shape)?;
                xs.shallow_clone()
            }
        };
        if let Some(s) = self.scaler {
            y = &y * s;
        }
        if let (Some(n), CallMode::Training) = (self.qnoise_factor, mode) {
            y = &xs + (y - &xs) * n;
        }
        if let Some((a, b)) = self.affine {
            y = y * a + b;
        }
        Ok(y)
    }

    /// The properties of the current bit widths (differentiable: EBOPs train through `bits`).
    pub fn props(&self) -> Props {
        match &self.inner {
            Inner::Fixed(q) => q.props(),
            Inner::Float(q) => q.props(),
            Inner::Dummy(d) => d.props(),
        }
    }

    /// `bits` (bit-width shape; a scalar for the dummy), differentiable.
    pub fn bits(&self) -> Tensor {
        match &self.inner {
            Inner::Fixed(q) => q.bits(),
            Inner::Float(q) => q.bits(),
            Inner::Dummy(d) => d.props().bits,
        }
    }

    /// `bits` broadcast to `shape` (hgq2's `bits_(shape)`).
    pub fn bits_like(&self, shape: &[i64]) -> Result<Tensor> {
        Ok(self.bits().f_broadcast_to(shape)?)
    }

    /// Whether any variable has a regularizer (else [`Quantizer::regularization_loss`] is 0).
    pub fn has_regularization(&self) -> bool {
        self.vars().iter().any(|v| v.regularizer.is_some())
    }

    fn vars(&self) -> Vec<&Var> {
        match &self.inner {
            Inner::Fixed(q) => q.vars(),
            Inner::Float(q) => q.vars(),
            Inner::Dummy(_) => Vec::new(),
        }
    }

    /// The raw variables by name (`k`, `b`, `i`, `f`, `i_decay_speed`, `m`, `e`, `e0`, ...).
    pub fn variables(&self) -> Vec<(&'static str, &Tensor)> {
        self.vars()
            .into_iter()
            .map(|v| (v.name, v.value()))
            .collect()
    }

    /// The names of the trainable raw variables.
    pub fn trainable_names(&self) -> Vec<&'static str> {
        self.vars()
            .into_iter()
            .filter(|v| v.trainable)
            .map(|v| v.name)
            .collect()
    }

    /// Applies every variable's constraint in place (call after an optimizer step).
    pub fn apply_constraints(&self) {
        for v in self.vars() {
            v.constrain();
        }
    }

    /// The sum of the regularization losses (MonoL1, L1, L2), a scalar to add to the loss.
    pub fn regularization_loss(&self) -> Tensor {
        self.vars()
            .into_iter()
            .filter_map(Var::loss)
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::from(0.0f32))
    }

    /// Resets WRAP tracking before a tracing pass (`i := -1e9`, `k := 0`).
    pub fn reset_trace(&self) {
        if let Inner::Fixed(q) = &self.inner {
            q.reset_trace();
        }
    }
}
