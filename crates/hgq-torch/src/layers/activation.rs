//! Keras' own activation layers between hgq2's layers: `Activation` and `ReLU` (no quantizer,
//! no variables, no EBOPs; hls4ml makes them activation layers of the firmware).
use std::any::Any;

use hgq_config::sequential::{ActivationSpec, LayerSpec, ReluSpec};
use hgq_core::CallMode;
use tch::{Tensor, nn};

use super::reshape::check_dims;
use super::{Activation, Layer, LayerBuilder, Names, Output, module_t};
use crate::{Result, TorchError};

/// Keras' `Activation(...)` layer of an [`Activation`] (`linear`, `relu`).
///
/// ```
/// use hgq_torch::layers::{Activation, ActivationLayer, Layer};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::Tensor;
/// let a = ActivationLayer::new(&[3], Activation::Relu)?;
/// let y = a.forward(&Tensor::from_slice(&[-1.0f32, 0.5, 2.0]).view([1, 3]), CallMode::Inference)?.y;
/// assert_eq!(Vec::<f32>::try_from(y.view([-1]))?, [0.0, 0.5, 2.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ActivationLayer {
    name: Option<String>,
    built_name: String,
    input_dims: Vec<usize>,
    activation: Activation,
}

impl ActivationLayer {
    /// The activation on inputs `[batch, *input_dims]` (named `activation`, `activation_1`,
    /// ... when added to a model).
    pub fn new(input_dims: &[usize], activation: Activation) -> Result<Self> {
        check_positive("Activation input dimensions", input_dims)?;
        Ok(ActivationLayer {
            name: None,
            built_name: "activation".into(),
            input_dims: input_dims.to_vec(),
            activation,
        })
    }
    /// Names the layer.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.built_name = n.clone();
        self.name = Some(n);
        self
    }
    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
}

/// Keras' `ReLU(max_value=None)` layer: `min(max(x, 0), max_value)`.
///
/// ```
/// use hgq_torch::layers::{Layer, ReLU};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::Tensor;
/// let r = ReLU::new(&[3])?.max_value(1.0)?;
/// let y = r.forward(&Tensor::from_slice(&[-1.0f32, 0.5, 2.0]).view([1, 3]), CallMode::Inference)?.y;
/// assert_eq!(Vec::<f32>::try_from(y.view([-1]))?, [0.0, 0.5, 1.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReLU {
    name: Option<String>,
    built_name: String,
    input_dims: Vec<usize>,
    max_value: Option<f64>,
}

impl ReLU {
    /// `ReLU()` on inputs `[batch, *input_dims]` (named `re_lu`, `re_lu_1`, ... when added to
    /// a model).
    pub fn new(input_dims: &[usize]) -> Result<Self> {
        check_positive("ReLU input dimensions", input_dims)?;
        Ok(ReLU {
            name: None,
            built_name: "re_lu".into(),
            input_dims: input_dims.to_vec(),
            max_value: None,
        })
    }
    /// The largest output (`ReLU(max_value=...)`): finite and `>= 0`.
    pub fn max_value(mut self, m: f64) -> Result<Self> {
        if !(m.is_finite() && m >= 0.0) {
            return Err(TorchError::Invalid {
                what: "ReLU max_value",
                why: format!("{m} (finite, >= 0)"),
            });
        }
        self.max_value = Some(m);
        Ok(self)
    }
    /// Names the layer.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.built_name = n.clone();
        self.name = Some(n);
        self
    }
}

fn check_positive(what: &'static str, dims: &[usize]) -> Result<()> {
    if dims.is_empty() || dims.contains(&0) {
        return Err(TorchError::Invalid {
            what,
            why: format!("{dims:?} (at least one, all positive)"),
        });
    }
    Ok(())
}

/// Builder, layer and module for a layer without variables whose output is its input's shape.
macro_rules! stateless {
    ($t:ty, $auto:literal, |$s:ident, $x:ident| $body:expr, |$sp:ident| $spec:expr) => {
        impl LayerBuilder for $t {
            fn input_dims(&self) -> Vec<usize> {
                self.input_dims.clone()
            }
            fn build_layer(
                mut self,
                _root: &nn::Path,
                names: &mut Names,
            ) -> Result<Box<dyn Layer>> {
                self.built_name = match &self.name {
                    Some(n) => n.clone(),
                    None => names.next($auto),
                };
                Ok(Box::new(self))
            }
        }

        impl Layer for $t {
            fn name(&self) -> &str {
                &self.built_name
            }
            fn input_dims(&self) -> &[usize] {
                &self.input_dims
            }
            fn output_dims(&self) -> Vec<usize> {
                self.input_dims.clone()
            }
            fn forward(&self, $x: &Tensor, _mode: CallMode) -> Result<Output> {
                check_dims(&$x.size(), &self.input_dims)?;
                let $s = self;
                Ok(Output {
                    y: $body,
                    ebops_loss: Tensor::from(0.0f32),
                })
            }
            fn keras_variables(&self) -> Vec<(String, Tensor)> {
                Vec::new()
            }
            fn keras_spec(&self) -> Result<LayerSpec> {
                let $sp = self;
                Ok($spec)
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }

        module_t!($t);
    };
}

stateless!(
    ActivationLayer,
    "activation",
    |s, x| s.activation.apply(x.shallow_clone()),
    |s| ActivationSpec::new(s.activation.to_config())
        .name(s.built_name.as_str())
        .into()
);

stateless!(
    ReLU,
    "re_lu",
    |s, x| match s.max_value {
        None => x.f_relu()?,
        Some(m) => x.f_clamp(0.0, m)?,
    },
    |s| {
        let r = ReluSpec::new().name(s.built_name.as_str());
        match s.max_value {
            Some(m) => r.max_value(m),
            None => r,
        }
        .into()
    }
);
