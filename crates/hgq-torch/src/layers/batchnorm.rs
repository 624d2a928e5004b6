//! hgq2's `QBatchNormalization` on the last (channels) axis: `iq(x) * kq(scale) +
//! bq(offset)` with `scale = gamma / sqrt(var + epsilon)` and `offset = beta - mean * scale`,
//! the batch's moments of the quantized input in training (and the moving ones updated), the
//! moving ones otherwise. EBOPs: `sum(bits_in * bits_scale) + mean(bits_offset) * (values per
//! sample)`.
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, QBatchNormSpec};
use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Ebops, EbopsTape, Layer, Named, Names, Output, QBase, builder_common_setters, check_beta,
    check_input, config_or_default, io_quantizers, layer_builder, module_t, named_quantizer,
    qbase_layer_methods, quantizer_variables,
};
use crate::{Result, TorchError};

/// Builder of a [`QBatchNorm`]; defaults as Keras and hgq2: momentum 0.99, epsilon 1e-3,
/// center and scale, `beta = 1e-5`, the quantizers `iq` `default`/datalane, `kq`
/// `default`/weight (the scale), `bq` `default`/bias (the offset).
#[derive(Debug, Clone)]
pub struct QBatchNormBuilder {
    input_dims: Vec<usize>,
    momentum: f64,
    epsilon: f64,
    center: bool,
    scale: bool,
    beta: f64,
    name: Option<String>,
    tape: Option<EbopsTape>,
    iq: Option<QuantizerConfig>,
    oq: Option<QuantizerConfig>,
    enable_iq: bool,
    enable_ebops: bool,
    trainable: bool,
    ebops_factor: f64,
    kq: Option<QuantizerConfig>,
    bq: Option<QuantizerConfig>,
}

impl QBatchNormBuilder {
    builder_common_setters!();
    /// The moving statistics' momentum (`moving = moving * momentum + batch * (1 -
    /// momentum)`), in `[0, 1]`.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Added to the variance before its square root; positive.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }
    /// Whether there is a learned offset `beta` (`bn_beta`). Without it hgq2 takes `beta = 1`
    /// (not 0): kept as hgq2 computes it.
    pub fn center(mut self, c: bool) -> Self {
        self.center = c;
        self
    }
    /// Whether there is a learned scale `gamma` (`bn_gamma`; else 1).
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
        self
    }

    /// The scale quantizer's configuration.
    pub fn kq(mut self, c: QuantizerConfig) -> Self {
        self.kq = Some(c);
        self
    }
    /// The offset quantizer's configuration.
    pub fn bq(mut self, c: QuantizerConfig) -> Self {
        self.bq = Some(c);
        self
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QBatchNorm> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        let valid = !self.input_dims.is_empty()
            && !self.input_dims.contains(&0)
            && (0.0..=1.0).contains(&self.momentum)
            && self.epsilon.is_finite()
            && self.epsilon > 0.0;
        if !valid {
            return Err(TorchError::Invalid {
                what: "QBatchNormalization",
                why: format!(
                    "input {:?}, momentum {}, epsilon {} (positive sizes, momentum in [0, 1], \
                     epsilon finite and positive)",
                    self.input_dims, self.momentum, self.epsilon
                ),
            });
        }
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| names.next("q_batch_normalization"));
        let p = root / name.as_str();
        let channels = *self.input_dims.last().unwrap_or(&1);
        let c = channels as i64;
        let iq_conf = config_or_default(self.iq, Place::Datalane)?;
        let kq_conf = config_or_default(self.kq, Place::Weight)?;
        let bq_conf = config_or_default(self.bq, Place::Bias)?;
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq,
            &self.input_dims,
            self.enable_iq.then_some(iq_conf),
            &self.input_dims,
        )?;
        let kq = named_quantizer(names, &p, &name, "kq", kq_conf, &[Some(channels)])?;
        let bq = named_quantizer(names, &p, &name, "bq", bq_conf, &[Some(channels)])?;
        let norm = Folded::new(
            &p,
            self.scale.then_some("bn_gamma"),
            self.center.then_some("bn_beta"),
            &[c],
            self.momentum,
        );
        Ok(QBatchNorm {
            base: QBase {
                name,
                input_dims: self.input_dims,
                beta: Cell::new(self.beta),
                beta0: self.beta,
                tape: self.tape,
                ebops: RefCell::new(Ebops::Value(0)),
                iq,
                oq,
                enable_ebops: self.enable_ebops,
                trainable: self.trainable,
                ebops_factor: self.ebops_factor,
            },
            epsilon: self.epsilon,
            norm,
            kq,
            bq,
        })
    }
}

layer_builder!(QBatchNormBuilder);

/// hgq2's `QBatchNormalization` over the last (channels) axis, Keras' default `axis=-1`.
///
/// ```
/// use hgq_torch::layers::{Layer, QBatchNorm};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let bn = QBatchNorm::builder(&[16]).build(&vs.root(), &mut Default::default())?;
/// let x = Tensor::randn([32, 16], (Kind::Float, Device::Cpu));
/// let out = bn.forward(&x, CallMode::Training)?; // batch moments; moving ones updated
/// assert_eq!(out.y.size(), [32, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QBatchNorm {
    base: QBase,
    epsilon: f64,
    norm: Folded,
    kq: Named,
    bq: Named,
}

impl QBatchNorm {
    /// A builder for inputs `[batch, *input_dims]`, normalized per channel (the last axis).
    pub fn builder(input_dims: &[usize]) -> QBatchNormBuilder {
        QBatchNormBuilder {
            input_dims: input_dims.to_vec(),
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            beta: 1e-5,
            name: None,
            tape: None,
            iq: None,
            oq: None,
            enable_iq: true,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
            kq: None,
            bq: None,
        }
    }

    /// The channels (the last axis' size).
    pub fn channels(&self) -> usize {
        self.base.input_dims.last().copied().unwrap_or(0)
    }
    /// The moving statistics' momentum.
    pub fn momentum(&self) -> f64 {
        self.norm.momentum()
    }
    /// Added to the variance.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }
    /// The learned scale (`bn_gamma`), if any.
    pub fn gamma(&self) -> Option<&Tensor> {
        self.norm.gamma()
    }
    /// The learned offset (`bn_beta`), if any.
    pub fn offset(&self) -> Option<&Tensor> {
        self.norm.offset()
    }
    /// The moving mean (not trained: updated by training forwards).
    pub fn moving_mean(&self) -> &Tensor {
        self.norm.moving_mean()
    }
    /// The moving variance.
    pub fn moving_variance(&self) -> &Tensor {
        self.norm.moving_variance()
    }
    /// The input quantizer.
    pub fn iq(&self) -> Option<&Named> {
        self.base.iq.as_ref()
    }
    /// The scale's quantizer.
    pub fn kq(&self) -> &Named {
        &self.kq
    }
    /// The offset's quantizer.
    pub fn bq(&self) -> &Named {
        &self.bq
    }

    /// `(scale, offset)` from a mean and a variance, as hgq2 computes them (`gamma = 1`
    /// without scale, `beta = 1` without center).
    fn scale_and_offset(&self, mean: &Tensor, var: &Tensor) -> Result<(Tensor, Tensor)> {
        let scale = self
            .norm
            .scale(var, self.epsilon, |t| self.base.weight(t))?;
        let offset = match self.norm.offset() {
            Some(b) => self.base.weight(b).f_sub(&mean.f_mul(&scale)?)?,
            None => mean.f_mul(&scale)?.f_neg()?.f_add_scalar(1.0)?,
        };
        Ok((scale, offset))
    }

    /// EBOPs from the current bit widths (differentiable through them).
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let bw_inp = self.base.input_bits()?;
        let c = self.channels() as i64;
        let bw_ker = self.kq.q.bits_like(&[c])?.f_to_device(bw_inp.device())?;
        let bw_bias = self.bq.q.bits_like(&[c])?.f_to_device(bw_inp.device())?;
        let size: usize = self.base.input_dims.iter().product();
        let e = bw_inp.f_mul(&bw_ker)?.f_sum(Kind::Float)?;
        Ok(e.f_add(&(bw_bias.f_mean(Kind::Float)? * size as f64))?)
    }
}

impl Layer for QBatchNorm {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.base.input_dims.clone()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_input(
            "QBatchNormalization input",
            x,
            self.norm.moving_mean(),
            &self.base.input_dims,
        )?;
        let xq = self.base.input(x, mode)?;
        // hgq2's QBatchNormalization takes the batch's moments in every training call.
        let (scale, offset) = self.norm.fold(
            mode == CallMode::Training,
            || Ok((xq.shallow_clone(), (0..xq.dim() as i64 - 1).collect())),
            |mean, var| self.scale_and_offset(mean, var),
        )?;
        let qscale = self.kq.q.forward(&scale, mode)?;
        let qoffset = self.bq.q.forward(&offset, mode)?;
        let y = xq.f_mul(&qscale)?.f_add(&qoffset)?;
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    fn quantizers(&self) -> Vec<&Named> {
        self.base
            .oq
            .iter()
            .chain(self.base.iq.iter())
            .chain([&self.kq, &self.bq])
            .collect()
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        let mut v = self.norm.keras_variables(&self.base.name);
        v.extend(quantizer_variables(&self.quantizers()));
        v
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        Ok(QBatchNormSpec::new()
            .name(self.name())
            .trainable(self.base.trainable)
            .momentum(self.norm.momentum())
            .epsilon(self.epsilon)
            .center(self.norm.offset().is_some())
            .scale(self.norm.gamma().is_some())
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .kq(self.kq.config.clone())
            .bq(self.bq.config.clone())
            .into())
    }
}

module_t!(QBatchNorm);

/// Keras' `ops.moments` (torch backend) over `axes`, not kept: `(E[x], E[x^2] - E[x]^2)`.
fn moments(x: &Tensor, axes: &[i64]) -> Result<(Tensor, Tensor)> {
    let mean = x.f_mean_dim(axes, false, None::<Kind>)?;
    let var = x
        .f_square()?
        .f_mean_dim(axes, false, None::<Kind>)?
        .f_sub(&mean.f_square()?)?;
    Ok((mean, var))
}

/// Keras' moving statistics: `moving = moving * momentum + batch * (1 - momentum)`, in place
/// and outside autograd.
fn update_moving(
    (moving_mean, moving_var): (&Tensor, &Tensor),
    (mean, var): (&Tensor, &Tensor),
    momentum: f64,
) -> Result<()> {
    let one_m = 1.0 - momentum;
    tch::no_grad(|| -> Result<()> {
        let mm = (moving_mean * momentum).f_add(&(mean.f_detach()? * one_m))?;
        let mv = (moving_var * momentum).f_add(&(var.f_detach()? * one_m))?;
        moving_mean.shallow_clone().f_copy_(&mm)?;
        moving_var.shallow_clone().f_copy_(&mv)?;
        Ok(())
    })
}

/// A batch normalization's variables and statistics, which a layer folds into its quantized
/// weights (QBatchNormalization's scale and offset, QBatchNormDense's and
/// QEinsumDenseBatchnorm's kernel and bias): the learned scale and offset, the moving
/// statistics, and the choice between them and the batch's moments.
#[derive(Debug)]
pub(crate) struct Folded {
    /// The learned scale, with its Keras name.
    gamma: Option<(&'static str, Tensor)>,
    /// The learned offset, with its Keras name (the layers that fold it into their bias have
    /// none here).
    beta: Option<(&'static str, Tensor)>,
    moving_mean: Tensor,
    moving_variance: Tensor,
    momentum: f64,
}

impl Folded {
    /// The variables under `p`, of `shape`, in Keras' order: the scale `gamma` (its name, if
    /// learned) at 1, the offset `beta` (its name, if learned) at 0, the moving mean at 0 and
    /// variance at 1 (not trained).
    pub(crate) fn new(
        p: &nn::Path,
        gamma: Option<&'static str>,
        beta: Option<&'static str>,
        shape: &[i64],
        momentum: f64,
    ) -> Self {
        let learned =
            |name: Option<&'static str>, v| name.map(|n| (n, p.var(n, shape, nn::Init::Const(v))));
        Folded {
            gamma: learned(gamma, 1.0),
            beta: learned(beta, 0.0),
            moving_mean: p.zeros_no_train("moving_mean", shape),
            moving_variance: p.ones_no_train("moving_variance", shape),
            momentum,
        }
    }

    pub(crate) fn gamma(&self) -> Option<&Tensor> {
        self.gamma.as_ref().map(|(_, g)| g)
    }
    pub(crate) fn offset(&self) -> Option<&Tensor> {
        self.beta.as_ref().map(|(_, b)| b)
    }
    pub(crate) fn moving_mean(&self) -> &Tensor {
        &self.moving_mean
    }
    pub(crate) fn moving_variance(&self) -> &Tensor {
        &self.moving_variance
    }
    pub(crate) fn momentum(&self) -> f64 {
        self.momentum
    }

    /// `gamma / sqrt(var + epsilon)` (`1 / sqrt(var + epsilon)` without a learned scale),
    /// `gamma` seen through `w` (the layer's view of its weights: detached when frozen).
    pub(crate) fn scale(
        &self,
        var: &Tensor,
        epsilon: f64,
        w: impl Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        let denom = var.f_add_scalar(epsilon)?.f_sqrt()?;
        Ok(match self.gamma() {
            Some(g) => w(g).f_div(&denom)?,
            None => denom.f_reciprocal()?,
        })
    }

    /// `fuse(mean, var)`: of the batch's moments of `of()`'s tensor over its axes (the moving
    /// statistics updated) where the layer takes them (`batch`: hgq2's `training and
    /// self.trainable`), else of the moving statistics.
    pub(crate) fn fold<R>(
        &self,
        batch: bool,
        of: impl FnOnce() -> Result<(Tensor, Vec<i64>)>,
        fuse: impl FnOnce(&Tensor, &Tensor) -> Result<R>,
    ) -> Result<R> {
        if !batch {
            return fuse(&self.moving_mean, &self.moving_variance);
        }
        let (y, axes) = of()?;
        let (mean, var) = moments(&y, &axes)?;
        update_moving(
            (&self.moving_mean, &self.moving_variance),
            (&mean, &var),
            self.momentum,
        )?;
        fuse(&mean, &var)
    }

    /// The Keras variables under `name`: the learned scale and offset, the moving mean and
    /// variance.
    pub(crate) fn keras_variables(&self, name: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .gamma
            .iter()
            .chain(&self.beta)
            .map(|(g, t)| (format!("{name}/{g}"), t.shallow_clone()))
            .collect();
        v.push((
            format!("{name}/moving_mean"),
            self.moving_mean.shallow_clone(),
        ));
        v.push((
            format!("{name}/moving_variance"),
            self.moving_variance.shallow_clone(),
        ));
        v
    }
}
