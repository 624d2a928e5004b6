//! Keras' `Flatten` and `Reshape`: no quantizer, no variables, no EBOPs.
use std::any::Any;

use hgq_config::sequential::{FlattenSpec, LayerSpec, ReshapeSpec};
use hgq_core::CallMode;
use tch::{Tensor, nn};

use super::{Layer, LayerBuilder, Names, Output, module_t};
use crate::{Result, TorchError};

/// Keras' `Flatten`: `[batch, d1, d2, ...]` to `[batch, d1 * d2 * ...]` in row-major
/// (channels-last) order, as Keras flattens; between a convolution and a dense layer.
///
/// ```
/// use hgq_torch::layers::{Flatten, Layer};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{Device, Kind, Tensor};
/// let f = Flatten::new(&[3, 3, 2])?;
/// let y = f.forward(&Tensor::zeros([5, 3, 3, 2], (Kind::Float, Device::Cpu)), CallMode::Inference)?.y;
/// assert_eq!(y.size(), [5, 18]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Flatten {
    name: Option<String>,
    built_name: String,
    input_dims: Vec<usize>,
}

/// Keras' `Reshape`: `[batch, *input_dims]` to `[batch, *target]` (the same number of
/// values, row-major), e.g. the digits' 64 pixels to an `[8, 8, 1]` image for a convolution.
///
/// ```
/// use hgq_torch::layers::{Layer, Reshape};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{Device, Kind, Tensor};
/// let r = Reshape::new(&[64], &[8, 8, 1])?;
/// let y = r.forward(&Tensor::zeros([5, 64], (Kind::Float, Device::Cpu)), CallMode::Inference)?.y;
/// assert_eq!(y.size(), [5, 8, 8, 1]);
/// assert!(Reshape::new(&[64], &[8, 9]).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Reshape {
    name: Option<String>,
    built_name: String,
    input_dims: Vec<usize>,
    target: Vec<usize>,
}

impl Reshape {
    /// A `Reshape` of inputs `[batch, *input_dims]` to `[batch, *target]` (named `reshape`,
    /// `reshape_1`, ... when added to a [`super::Sequential`]).
    pub fn new(input_dims: &[usize], target: &[usize]) -> Result<Self> {
        let n: usize = input_dims.iter().product();
        let ok = !input_dims.is_empty()
            && !target.is_empty()
            && !input_dims.contains(&0)
            && !target.contains(&0)
            && target.iter().product::<usize>() == n;
        if !ok {
            return Err(TorchError::Invalid {
                what: "Reshape",
                why: format!("{input_dims:?} to {target:?} (positive sizes, as many values)"),
            });
        }
        Ok(Reshape {
            name: None,
            built_name: "reshape".into(),
            input_dims: input_dims.to_vec(),
            target: target.to_vec(),
        })
    }

    /// Names the layer (default: Keras' `reshape`, `reshape_1`, ...).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.built_name = n.clone();
        self.name = Some(n);
        self
    }

    /// The target dimensions after the batch.
    pub fn target(&self) -> &[usize] {
        &self.target
    }
}

impl LayerBuilder for Reshape {
    fn input_dims(&self) -> Vec<usize> {
        self.input_dims.clone()
    }
    fn build_layer(mut self, _root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>> {
        self.built_name = match &self.name {
            Some(n) => n.clone(),
            None => names.next("reshape"),
        };
        Ok(Box::new(self))
    }
}

impl Layer for Reshape {
    fn name(&self) -> &str {
        &self.built_name
    }
    fn input_dims(&self) -> &[usize] {
        &self.input_dims
    }
    fn output_dims(&self) -> Vec<usize> {
        self.target.clone()
    }
    fn forward(&self, x: &Tensor, _mode: CallMode) -> Result<Output> {
        let size = x.size();
        check_dims(&size, &self.input_dims)?;
        let shape: Vec<i64> = std::iter::once(size[0])
            .chain(self.target.iter().map(|&d| d as i64))
            .collect();
        Ok(Output {
            y: x.f_reshape(shape.as_slice())?,
            ebops_loss: Tensor::from(0.0f32),
        })
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        let target: Vec<i64> = self.target.iter().map(|&d| d as i64).collect();
        Ok(ReshapeSpec::new(target).name(self.name()).into())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

module_t!(Reshape);

/// `size` must be `[batch, *dims]`.
pub(crate) fn check_dims(size: &[i64], dims: &[usize]) -> Result<()> {
    let fits =
        size.len() == dims.len() + 1 && size[1..].iter().zip(dims).all(|(&s, &d)| s == d as i64);
    if fits {
        Ok(())
    } else {
        Err(TorchError::Shape {
            built: super::batch_shape(dims),
            got: size.to_vec(),
        })
    }
}

impl Flatten {
    /// A `Flatten` of inputs `[batch, *input_dims]` (named `flatten`, `flatten_1`, ... when
    /// added to a [`super::Sequential`]).
    pub fn new(input_dims: &[usize]) -> Result<Self> {
        if input_dims.is_empty() || input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "Flatten input dimensions",
                why: format!("{input_dims:?} (at least one, all positive)"),
            });
        }
        Ok(Flatten {
            name: None,
            built_name: "flatten".into(),
            input_dims: input_dims.to_vec(),
        })
    }

    /// Names the layer (default: Keras' `flatten`, `flatten_1`, ...).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.built_name = n.clone();
        self.name = Some(n);
        self
    }
}

impl LayerBuilder for Flatten {
    fn input_dims(&self) -> Vec<usize> {
        self.input_dims.clone()
    }
    fn build_layer(mut self, _root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>> {
        self.built_name = match &self.name {
            Some(n) => n.clone(),
            None => names.next("flatten"),
        };
        Ok(Box::new(self))
    }
}

impl Layer for Flatten {
    fn name(&self) -> &str {
        &self.built_name
    }
    fn input_dims(&self) -> &[usize] {
        &self.input_dims
    }
    fn output_dims(&self) -> Vec<usize> {
        vec![self.input_dims.iter().product()]
    }
    fn forward(&self, x: &Tensor, _mode: CallMode) -> Result<Output> {
        let size = x.size();
        check_dims(&size, &self.input_dims)?;
        let n = self.output_dims()[0] as i64;
        Ok(Output {
            y: x.f_reshape([size[0], n])?,
            ebops_loss: Tensor::from(0.0f32),
        })
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        Ok(FlattenSpec::new().name(self.name()).into())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

module_t!(Flatten);
