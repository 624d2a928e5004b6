//! hgq2's `QEinsumDenseBatchnorm`: a [`QEinsumDense`] whose output is batch-normalized over
//! `normalize_axes` (default: its bias axes), the normalization folded into the kernel and
//! the bias before they are quantized: `scale = gamma / sqrt(var + 1e-7)`, `kernel' =
//! kq(einsum("{kernel},{norm}->{kernel}", kernel, scale))`, `bias' = bq(bias - mean *
//! scale)`. In training the moments are the batch's of `einsum(equation, iq(x), kernel)`
//! (the raw kernel; the moving ones updated), the moving ones otherwise. EBOPs are the
//! einsum layer's.
//!
//! As hgq2 0.2.0: the fold uses Keras' global epsilon (1e-7), whatever the layer's epsilon,
//! and its Keras JSON carries none of the normalization's settings (a layer read back has
//! the defaults).
use hgq_config::sequential::{
    EinsumNormShapes, LayerSpec, QEinsumDenseBatchnormSpec, einsum_norm_shapes,
};
use hgq_core::CallMode;
use tch::{Tensor, nn};

use super::batchnorm::Folded;
use super::{
    Layer, Named, Names, Output, QEinsumDense, QEinsumDenseBuilder, check_input,
    kernel_bias_variables, module_t, qbase_layer_methods, quantizer_variables,
};
use crate::{Result, TorchError};

/// Keras' `backend.epsilon()`, which hgq2 folds with.
const KERAS_EPSILON: f64 = 1e-7;

/// Builder of a [`QEinsumDenseBatchnorm`]: a [`QEinsumDenseBuilder`] (with its `bias_axes`)
/// and the normalization's settings, defaults as hgq2: over the bias axes, momentum 0.99,
/// centered (the bias trained) and scaled (`gamma`).
#[derive(Debug, Clone)]
pub struct QEinsumDenseBatchnormBuilder {
    dense: QEinsumDenseBuilder,
    normalize_axes: Option<String>,
    momentum: f64,
    center: bool,
    scale: bool,
}

impl QEinsumDenseBatchnormBuilder {
    /// The normalized output axes (letters of the equation's kernel and output, among the
    /// bias axes). Default: the bias axes.
    pub fn normalize_axes(mut self, axes: impl Into<String>) -> Self {
        self.normalize_axes = Some(axes.into());
        self
    }
    /// The moving statistics' momentum, in `[0, 1]`.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Whether the bias (the normalization's offset) is trained.
    pub fn center(mut self, c: bool) -> Self {
        self.center = c;
        self
    }
    /// Whether there is a learned scale `gamma` (else 1).
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
        self
    }

    /// Builds the layer under `root / name` (Keras' automatic name
    /// `q_einsum_dense_batchnorm`).
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QEinsumDenseBatchnorm> {
        let Some(bias_axes) = self.dense.bias_axes.clone() else {
            return Err(TorchError::Invalid {
                what: "QEinsumDenseBatchnorm",
                why: "no bias_axes (hgq2 folds the offset into the bias)".into(),
            });
        };
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(TorchError::Invalid {
                what: "QEinsumDenseBatchnorm momentum",
                why: format!("{} (in [0, 1])", self.momentum),
            });
        }
        let axes = self.normalize_axes.clone().unwrap_or(bias_axes);
        let norm = einsum_norm_shapes(
            &self.dense.equation,
            &axes,
            &self.dense.input_dims,
            &self.dense.output_shape,
        )?;
        let mut dense = self.dense;
        if dense.name.is_none() {
            dense.name = Some(names.next("q_einsum_dense_batchnorm"));
        }
        let dense = dense.build(root, names)?;
        if let Some(b) = &dense.bias {
            let _ = b.shallow_clone().set_requires_grad(self.center);
        }
        let p = root / dense.base.name.as_str();
        let shape: Vec<i64> = norm.norm.iter().map(|&d| d as i64).collect();
        let stats = Folded::new(
            &p,
            self.scale.then_some("gamma"),
            None,
            &shape,
            self.momentum,
        );
        Ok(QEinsumDenseBatchnorm {
            dense,
            norm,
            normalize_axes: self.normalize_axes,
            center: self.center,
            stats,
        })
    }
}

impl super::LayerBuilder for QEinsumDenseBatchnormBuilder {
    fn input_dims(&self) -> Vec<usize> {
        self.dense.input_dims.clone()
    }
    fn build_layer(self, root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>> {
        Ok(Box::new(self.build(root, names)?))
    }
}

/// hgq2's `QEinsumDenseBatchnorm`: a [`QEinsumDense`] whose output is batch-normalized over
/// `normalize_axes`, folded into the kernel and bias before they are quantized (with Keras'
/// epsilon 1e-7, as hgq2); EBOPs are the einsum layer's.
///
/// ```
/// use hgq_torch::layers::{Layer, QEinsumDense, QEinsumDenseBatchnorm};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let e = QEinsumDense::builder("abc,cd->abd", &[4, 6], &[Some(4), Some(5)]).bias_axes("d");
/// let l = QEinsumDenseBatchnorm::builder(e).build(&vs.root(), &mut Default::default())?;
/// let out = l.forward(&Tensor::randn([8, 4, 6], (Kind::Float, Device::Cpu)), CallMode::Training)?;
/// assert_eq!(out.y.size(), [8, 4, 5]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QEinsumDenseBatchnorm {
    dense: QEinsumDense,
    norm: EinsumNormShapes,
    normalize_axes: Option<String>,
    center: bool,
    stats: Folded,
}

impl QEinsumDenseBatchnorm {
    /// A builder around an einsum layer's builder (which must have `bias_axes`).
    pub fn builder(dense: QEinsumDenseBuilder) -> QEinsumDenseBatchnormBuilder {
        QEinsumDenseBatchnormBuilder {
            dense,
            normalize_axes: None,
            momentum: 0.99,
            center: true,
            scale: true,
        }
    }

    /// The einsum layer (its raw kernel and bias, quantizers, shapes).
    pub fn dense(&self) -> &QEinsumDense {
        &self.dense
    }
    /// The learned scale (`gamma`), if any.
    pub fn gamma(&self) -> Option<&Tensor> {
        self.stats.gamma()
    }
    /// The moving mean (of the normalized output axes).
    pub fn moving_mean(&self) -> &Tensor {
        self.stats.moving_mean()
    }
    /// The moving variance.
    pub fn moving_variance(&self) -> &Tensor {
        self.stats.moving_variance()
    }

    /// The fused, quantized `(kernel, bias)` from a mean and a variance.
    fn fused(&self, mean: &Tensor, var: &Tensor, mode: CallMode) -> Result<(Tensor, Tensor)> {
        let d = &self.dense;
        let w = |t: &Tensor| d.base.weight(t);
        let scale = self.stats.scale(var, KERAS_EPSILON, w)?;
        let kernel = Tensor::f_einsum(
            &self.norm.fused_kernel_equation,
            &[&w(&d.kernel), &scale],
            None::<&[i64]>,
        )?;
        let qkernel = d.kq.q.forward(&kernel, mode)?;
        let (Some(bias), Some(bq)) = (&d.bias, &d.bq) else {
            return Err(TorchError::Invalid {
                what: "QEinsumDenseBatchnorm",
                why: "no bias".into(),
            });
        };
        let cast: Vec<i64> = self.norm.offset_cast.iter().map(|&d| d as i64).collect();
        let offset = mean.f_neg()?.f_mul(&scale)?.f_reshape(cast.as_slice())?;
        let qbias = bq.q.forward(&w(bias).f_add(&offset)?, mode)?;
        Ok((qkernel, qbias))
    }
}

impl Layer for QEinsumDenseBatchnorm {
    qbase_layer_methods!(dense.base);

    fn output_dims(&self) -> Vec<usize> {
        self.dense.output_dims()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        let d = &self.dense;
        check_input(
            "QEinsumDenseBatchnorm input",
            x,
            &d.kernel,
            &d.base.input_dims,
        )?;
        let xq = d.base.input(x, mode)?;
        // hgq2 takes the batch's moments only when `training and self.trainable`.
        let (qkernel, qbias) = self.stats.fold(
            mode == CallMode::Training && d.base.trainable,
            || {
                let y = Tensor::f_einsum(&d.equation, &[&xq, &d.kernel], None::<&[i64]>)?;
                let axes = self.norm.reduction_axes.iter().map(|&a| a as i64);
                Ok((y, axes.collect()))
            },
            |mean, var| self.fused(mean, var, mode),
        )?;
        let y = Tensor::f_einsum(&d.equation, &[&xq, &qkernel], None::<&[i64]>)?.f_add(&qbias)?;
        let y = d.activation.apply(y);
        let y = d.base.output(y, mode)?;
        let ebops_loss = d.base.ebops_loss(mode, || d.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    fn quantizers(&self) -> Vec<&Named> {
        self.dense.quantizers()
    }
    fn bookkeeping_before_state(&self) -> bool {
        true
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        let d = &self.dense;
        let name = &d.base.name;
        let mut v = kernel_bias_variables(name, &d.kernel, d.bias.as_ref());
        v.extend(self.stats.keras_variables(name));
        v.extend(quantizer_variables(&self.quantizers()));
        v
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        let LayerSpec::QEinsumDense(d) = self.dense.keras_spec()? else {
            return Err(TorchError::Unsupported(format!(
                "{}: the einsum layer's spec",
                self.name()
            )));
        };
        let axes = d.bias_axes.clone().unwrap_or_default();
        let mut s =
            QEinsumDenseBatchnormSpec::new(d.equation.clone(), d.output_shape.clone(), axes)
                .with_dense(|_| d)
                .momentum(self.stats.momentum())
                .center(self.center)
                .scale(self.stats.gamma().is_some());
        if let Some(n) = &self.normalize_axes {
            s = s.normalize_axes(n.clone());
        }
        Ok(s.into())
    }
}

module_t!(QEinsumDenseBatchnorm);
