//! hgq2's `QBatchNormDense`: a [`QDense`] with a batch normalization of its input folded into
//! the quantized kernel and bias, `act(iq(x) @ kq(scale[:, None] * kernel) + bq(bias -
//! mean @ kernel))` with `scale = gamma / sqrt(var + epsilon)`: the batch's moments of the
//! quantized input in training (the moving ones updated), the moving ones otherwise. EBOPs are
//! the dense layer's.
//!
//! The offset is hgq2 0.2.0's, `-mean @ kernel` (not `-(mean * scale) @ kernel`, which a
//! normalization before the layer would give): reproduced as it is, so that a model trained
//! here is the one hgq2 and its firmware compute.
use hgq_config::sequential::{LayerSpec, QBatchNormDenseSpec};
use hgq_core::CallMode;
use tch::{Tensor, nn};

use super::batchnorm::Folded;
use super::{
    Layer, Named, Names, Output, QDense, QDenseBuilder, check_input, kernel_bias_variables,
    module_t, qbase_layer_methods, quantizer_variables,
};
use crate::{Result, TorchError};

/// Builder of a [`QBatchNormDense`]: a [`QDenseBuilder`] (sizes, activation, quantizers,
/// `beta`, ...; it must have its bias) and the normalization's settings, defaults as hgq2:
/// momentum 0.99, epsilon 1e-3, a learned scale (`bn_gamma`).
#[derive(Debug, Clone)]
pub struct QBatchNormDenseBuilder {
    dense: QDenseBuilder,
    momentum: f64,
    epsilon: f64,
    scale: bool,
}

impl QBatchNormDenseBuilder {
    /// The moving statistics' momentum, in `[0, 1]`.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Added to the variance before its square root; positive.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }
    /// Whether there is a learned scale `bn_gamma` (else 1).
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
        self
    }

    /// Builds the layer under `root / name` (Keras' automatic name `q_batch_norm_dense`).
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QBatchNormDense> {
        let valid = (0.0..=1.0).contains(&self.momentum)
            && self.epsilon.is_finite()
            && self.epsilon > 0.0
            && self.dense.use_bias;
        if !valid {
            return Err(TorchError::Invalid {
                what: "QBatchNormDense",
                why: format!(
                    "momentum {}, epsilon {}, bias {} (momentum in [0, 1], epsilon finite and \
                     positive, a bias: hgq2 folds the offset into it)",
                    self.momentum, self.epsilon, self.dense.use_bias
                ),
            });
        }
        let mut dense = self.dense;
        if dense.name.is_none() {
            dense.name = Some(names.next("q_batch_norm_dense"));
        }
        let dense = dense.build(root, names)?;
        let p = root / dense.base.name.as_str();
        let n_in = dense.in_features as i64;
        let gamma = self.scale.then_some("bn_gamma");
        let norm = Folded::new(&p, gamma, None, &[n_in], self.momentum);
        Ok(QBatchNormDense {
            dense,
            epsilon: self.epsilon,
            norm,
        })
    }
}

impl super::LayerBuilder for QBatchNormDenseBuilder {
    fn input_dims(&self) -> Vec<usize> {
        self.dense.input_dims.clone()
    }
    fn build_layer(self, root: &nn::Path, names: &mut Names) -> Result<Box<dyn Layer>> {
        Ok(Box::new(self.build(root, names)?))
    }
}

/// hgq2's `QBatchNormDense`: `act(iq(x) @ kq(scale[:, None] * kernel) + bq(bias - mean @
/// kernel))` with `scale = gamma / sqrt(var + epsilon)`, the batch's moments of the quantized
/// input in training (the moving ones updated), the moving ones otherwise; hgq2's offset,
/// `-mean @ kernel`, as it is. EBOPs are the dense layer's.
///
/// ```
/// use hgq_torch::layers::{Activation, Layer, QBatchNormDense, QDense};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let l = QBatchNormDense::builder(QDense::builder(16, 8).activation(Activation::Relu))
///     .momentum(0.9)
///     .build(&vs.root(), &mut Default::default())?;
/// let out = l.forward(&Tensor::randn([32, 16], (Kind::Float, Device::Cpu)), CallMode::Training)?;
/// assert_eq!(out.y.size(), [32, 8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QBatchNormDense {
    dense: QDense,
    epsilon: f64,
    norm: Folded,
}

impl QBatchNormDense {
    /// A builder around a dense layer's builder (which must keep its bias).
    pub fn builder(dense: QDenseBuilder) -> QBatchNormDenseBuilder {
        QBatchNormDenseBuilder {
            dense,
            momentum: 0.99,
            epsilon: 1e-3,
            scale: true,
        }
    }

    /// The dense layer (its raw kernel and bias, quantizers, sizes).
    pub fn dense(&self) -> &QDense {
        &self.dense
    }
    /// The moving statistics' momentum.
    pub fn momentum(&self) -> f64 {
        self.norm.momentum()
    }
    /// Added to the variance.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    /// The learned scale (`bn_gamma`, per input feature), if any.
    pub fn gamma(&self) -> Option<&Tensor> {
        self.norm.gamma()
    }
    /// The moving mean of the quantized input (per input feature).
    pub fn moving_mean(&self) -> &Tensor {
        self.norm.moving_mean()
    }
    /// The moving variance.
    pub fn moving_variance(&self) -> &Tensor {
        self.norm.moving_variance()
    }

    /// The fused, quantized `(kernel, bias)` from a mean and a variance of the input.
    fn fused(&self, mean: &Tensor, var: &Tensor, mode: CallMode) -> Result<(Tensor, Tensor)> {
        let d = &self.dense;
        let w = |t: &Tensor| d.base.weight(t);
        let scale = self.norm.scale(var, self.epsilon, w)?;
        let kernel = scale.f_unsqueeze(1)?.f_mul(&w(&d.kernel))?;
        let qkernel = d.kq.q.forward(&kernel, mode)?;
        let (Some(bias), Some(bq)) = (&d.bias, &d.bq) else {
            return Err(TorchError::Invalid {
                what: "QBatchNormDense",
                why: "no bias".into(),
            });
        };
        let offset = mean.f_matmul(&w(&d.kernel))?.f_neg()?;
        let qbias = bq.q.forward(&w(bias).f_add(&offset)?, mode)?;
        Ok((qkernel, qbias))
    }
}

impl Layer for QBatchNormDense {
    qbase_layer_methods!(dense.base);

    fn output_dims(&self) -> Vec<usize> {
        self.dense.output_dims()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        let d = &self.dense;
        check_input("QBatchNormDense input", x, &d.kernel, &d.base.input_dims)?;
        let xq = d.base.input(x, mode)?;
        // hgq2 takes the batch's moments only when `training and self.trainable`.
        let (qkernel, qbias) = self.norm.fold(
            mode == CallMode::Training && d.base.trainable,
            || Ok((xq.shallow_clone(), (0..xq.dim() as i64 - 1).collect())),
            |mean, var| self.fused(mean, var, mode),
        )?;
        let y = xq.f_matmul(&qkernel)?.f_add(&qbias)?;
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
        v.extend(self.norm.keras_variables(name));
        v.extend(quantizer_variables(&self.quantizers()));
        v
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        let LayerSpec::QDense(d) = self.dense.keras_spec()? else {
            return Err(TorchError::Unsupported(format!(
                "{}: the dense layer's spec",
                self.name()
            )));
        };
        Ok(QBatchNormDenseSpec {
            dense: d,
            scale: self.norm.gamma().is_some(),
            momentum: self.norm.momentum(),
            epsilon: self.epsilon,
            synchronized: false,
        }
        .into())
    }
}

module_t!(QBatchNormDense);
