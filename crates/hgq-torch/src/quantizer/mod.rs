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
//! let loss = y.square().sum(Kind::Float) + q.regularization_loss()?;
//! loss.backward();
//! q.apply_constraints()?;                         // after the optimizer step
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::sync::{Mutex, MutexGuard};

use hgq_config::QuantizerConfig;
use hgq_config::convert::{CoreQuantizer, QuantizerSpec};
use hgq_core::CallMode;
use hgq_core::quantizer::{self as core, VarName};
use tch::{Tensor, nn};

use crate::backend::{Tch, TchStore, TchVar};
use crate::{Result, TorchError};

/// The derived properties of a quantizer's bit widths (bit-width shape), differentiable.
pub type Props = core::Props<Tensor>;

/// `rc(v)`: round half to even with a straight-through gradient.
pub(crate) fn rc(v: &Tensor) -> Tensor {
    let d = v.detach();
    d.round() + (v - &d)
}

/// The reference's `Quantizer` layer: a quantizer (KBI, KIF, minifloat or dummy: hgq-core's
/// logic on [`Tch`] tensors, its variables in a `VarStore`) with `scaler` (divide before,
/// multiply after), `qnoise_factor` (in training, only this fraction of the quantization
/// noise) and `affine` (`y * scale + shift` after).
#[derive(Debug)]
pub struct Quantizer {
    inner: Mutex<core::Quantizer<TchVar>>,
    spec: QuantizerSpec,
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
        spec.validate()?;
        let inner = core::Quantizer::new(&mut TchStore::new(path), &spec.spec, input_shape)?;
        Ok(Quantizer {
            inner: Mutex::new(inner),
            spec: spec.spec.clone(),
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

    /// The logic (a poisoned lock only means a panic elsewhere while it was held: the state
    /// is never half-written, so it is used as it is).
    pub(crate) fn lock(&self) -> MutexGuard<'_, core::Quantizer<TchVar>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the quantizer is its inner quantizer alone (no scaler, noise factor or affine
    /// map), what a native training step runs.
    pub(crate) fn is_bare(&self) -> bool {
        self.scaler.is_none() && self.qnoise_factor.is_none() && self.affine.is_none()
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &QuantizerSpec {
        &self.spec
    }

    /// The input shape it was built for.
    pub fn input_shape(&self) -> Vec<Option<usize>> {
        self.lock().input_shape().to_vec()
    }

    /// Quantizes `x` in `mode` (training, inference, or tracing of the WRAP integer bits). On
    /// an error no state changes.
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        let xs = match self.scaler {
            Some(s) => x.f_div_scalar(s)?,
            None => x.shallow_clone(),
        };
        let mut y = self.lock().forward(&Tch, &xs, mode)?;
        if let Some(s) = self.scaler {
            y = y.f_mul_scalar(s)?;
        }
        if let (Some(n), CallMode::Training) = (self.qnoise_factor, mode) {
            y = xs.f_add(&y.f_sub(&xs)?.f_mul_scalar(n)?)?;
        }
        if let Some((a, b)) = self.affine {
            y = y.f_mul_scalar(a)?.f_add_scalar(b)?;
        }
        Ok(y)
    }

    /// The properties of the current bit widths (differentiable: EBOPs train through `bits`).
    pub fn props(&self) -> Result<Props> {
        self.lock().props(&Tch)
    }

    /// `bits` (bit-width shape; a scalar for the dummy), differentiable.
    pub fn bits(&self) -> Result<Tensor> {
        self.lock().bits(&Tch)
    }

    /// `bits` broadcast to `shape` (hgq2's `bits_(shape)`).
    pub fn bits_like(&self, shape: &[i64]) -> Result<Tensor> {
        Ok(self.bits()?.f_broadcast_to(shape)?)
    }

    /// Whether any variable has a regularizer (else [`Quantizer::regularization_loss`] is 0).
    pub fn has_regularization(&self) -> bool {
        self.lock()
            .variables()
            .iter()
            .any(|v| v.regularizer.is_some())
    }

    /// The variables (`k`, `b`, `i`, `f`, `i_decay_speed`, `m`, `e`, `e0`, ...), as handles to
    /// the `VarStore`'s tensors.
    pub fn variables(&self) -> Vec<(VarName, Tensor)> {
        self.lock()
            .variables()
            .iter()
            .map(|v| (v.name, v.value.tensor().shallow_clone()))
            .collect()
    }

    /// A variable by name.
    pub fn variable(&self, name: VarName) -> Option<Tensor> {
        self.lock()
            .variable(name)
            .map(|v| v.value.tensor().shallow_clone())
    }

    /// The trainable variables' names.
    pub fn trainable_names(&self) -> Vec<VarName> {
        self.lock()
            .variables()
            .iter()
            .filter(|v| v.trainable)
            .map(|v| v.name)
            .collect()
    }

    /// Applies every variable's constraint in place (call after an optimizer step).
    pub fn apply_constraints(&self) -> Result<()> {
        self.lock().apply_constraints(&Tch)
    }

    /// The sum of the regularization losses (MonoL1, L1, L2), a scalar to add to the loss.
    pub fn regularization_loss(&self) -> Result<Tensor> {
        match self.lock().regularization_loss(&Tch)? {
            Some(l) => Ok(l),
            None => Ok(Tensor::from(0.0f32)),
        }
    }

    /// Resets WRAP tracking before a tracing pass (`i := -1e9`, `k := 0`).
    pub fn reset_trace(&self) -> Result<()> {
        self.lock().reset_trace(&Tch)
    }

    /// hgq2's `get_minimal_i`: the integer bits `x` needs with the current bit widths, one value
    /// per bit width (bit-width shape), for a fixed-point quantizer.
    pub fn minimal_i(&self, x: &Tensor) -> Result<Tensor> {
        match &*self.lock() {
            core::Quantizer::Fixed(q) => {
                let v = q.minimal_i(&Tch, x)?;
                let shape: Vec<i64> = q.layout().bw_shape.iter().map(|&d| d as i64).collect();
                Ok(Tensor::f_from_slice(&v)?.f_reshape(shape.as_slice())?)
            }
            _ => Err(TorchError::Unsupported(
                "minimal_i of a quantizer that is not fixed point".into(),
            )),
        }
    }

    /// hgq2's `get_any_k`: 1 where any element of `x` that shares a bit width is negative
    /// (bit-width shape), for a fixed-point quantizer.
    pub fn any_k(&self, x: &Tensor) -> Result<Tensor> {
        match &*self.lock() {
            core::Quantizer::Fixed(q) => {
                let v: Vec<f32> = q
                    .any_k(&Tch, x)?
                    .into_iter()
                    .map(|n| if n { 1.0 } else { 0.0 })
                    .collect();
                let shape: Vec<i64> = q.layout().bw_shape.iter().map(|&d| d as i64).collect();
                Ok(Tensor::f_from_slice(&v)?.f_reshape(shape.as_slice())?)
            }
            _ => Err(TorchError::Unsupported(
                "any_k of a quantizer that is not fixed point".into(),
            )),
        }
    }

    /// `(k, i, f)` as used (differentiable), for a fixed-point quantizer.
    pub fn kif(&self) -> Result<(Tensor, Tensor, Tensor)> {
        match &*self.lock() {
            core::Quantizer::Fixed(q) => q.kif(&Tch),
            _ => Err(TorchError::Unsupported(
                "kif of a quantizer that is not fixed point".into(),
            )),
        }
    }
}
