use std::cell::{Cell, RefCell};

use hgq_config::sequential::LayerSpec;
use hgq_config::{Place, QDenseSpec, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Activation, Ebops, EbopsTape, Layer, Named, Names, Output, QBase, builder_common_setters,
    check_beta, check_input, config_or_default, io_quantizers, kernel_builder_setters,
    kernel_layer_methods, layer_builder, module_t, named_quantizer, qbase_layer_methods,
};
use crate::{Result, TorchError};

/// Builder of a [`QDense`]; defaults as hgq2: `kq` `default`/weight (KBI, SAT_SYM), `iq`
/// `default`/datalane (KIF, WRAP, one bit width per feature), `bq` `default`/bias, a bias,
/// no activation, `beta = 1e-5` (hgq2's `beta0`).
#[derive(Debug, Clone)]
pub struct QDenseBuilder {
    pub(crate) in_features: usize,
    /// The input's dimensions after the batch (the last is `in_features`).
    pub(crate) input_dims: Vec<usize>,
    pub(crate) units: usize,
    pub(crate) tape: Option<EbopsTape>,
    pub(crate) activation: Activation,
    pub(crate) use_bias: bool,
    pub(crate) beta: f64,
    pub(crate) name: Option<String>,
    pub(crate) iq: Option<QuantizerConfig>,
    pub(crate) oq: Option<QuantizerConfig>,
    pub(crate) enable_iq: bool,
    pub(crate) enable_ebops: bool,
    pub(crate) trainable: bool,
    pub(crate) ebops_factor: f64,
    pub(crate) parallelization_factor: Option<usize>,
    pub(crate) kq: Option<QuantizerConfig>,
    pub(crate) bq: Option<QuantizerConfig>,
}

impl QDenseBuilder {
    builder_common_setters!();
    kernel_builder_setters!();
    /// hgq2's `parallelization_factor`: how many outputs the firmware computes at once (its
    /// EBOPs scale by it over the layer's `n_parallel`); at least 1. Default: `n_parallel`,
    /// every output at once.
    pub fn parallelization_factor(mut self, p: usize) -> Self {
        self.parallelization_factor = Some(p);
        self
    }
    /// Whether the layer has a bias.
    pub fn use_bias(mut self, b: bool) -> Self {
        self.use_bias = b;
        self
    }

    /// The input's dimensions after the batch, for inputs of more than two dimensions (Keras'
    /// `Dense` on the last axis: `[particles, features]` for a Deep Sets layer over particles);
    /// the last must be `in_features`. The input quantizer's bit widths and the EBOPs take the
    /// whole shape (one multiply per position, as hgq2 counts them). Default: `[in_features]`.
    pub fn input_dims(mut self, dims: &[usize]) -> Self {
        self.input_dims = dims.to_vec();
        self
    }

    /// Builds the layer under `root / name` of a `VarStore`; `names` gives Keras' unique
    /// names (share one per model).
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QDense> {
        if self.in_features == 0 || self.units == 0 {
            return Err(TorchError::Invalid {
                what: "QDense size",
                why: format!(
                    "{} inputs and {} units (both must be positive)",
                    self.in_features, self.units
                ),
            });
        }
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        QBase::check_ebops_need_iq("the layer", self.enable_iq, self.enable_ebops)?;
        if self.parallelization_factor == Some(0) {
            return Err(TorchError::Invalid {
                what: "parallelization_factor",
                why: "0 (at least 1)".into(),
            });
        }
        if self.input_dims.last() != Some(&self.in_features) || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "QDense input dimensions",
                why: format!(
                    "{:?} for {} inputs (positive sizes, the last the number of inputs)",
                    self.input_dims, self.in_features
                ),
            });
        }
        let name = self.name.clone().unwrap_or_else(|| names.next("q_dense"));
        let p = root / name.as_str();
        let (n_in, units) = (self.in_features as i64, self.units as i64);
        let iq_conf = config_or_default(self.iq, Place::Datalane)?;
        let kq_conf = config_or_default(self.kq, Place::Weight)?;
        let bq_conf = config_or_default(self.bq, Place::Bias)?;
        let (oq, iq) = io_quantizers(
            names,
            &p,
            &name,
            self.oq,
            &{
                let mut d = self.input_dims.clone();
                if let Some(l) = d.last_mut() {
                    *l = self.units;
                }
                d
            },
            self.enable_iq.then_some(iq_conf),
            &self.input_dims,
        )?;
        let kq = named_quantizer(
            names,
            &p,
            &name,
            "kq",
            kq_conf,
            &[Some(self.in_features), Some(self.units)],
        )?;
        let bq = if self.use_bias {
            Some(named_quantizer(
                names,
                &p,
                &name,
                "bq",
                bq_conf,
                &[Some(self.units)],
            )?)
        } else {
            None
        };
        // Keras' glorot_uniform and zeros.
        let limit = (6.0 / (n_in + units) as f64).sqrt();
        let kernel = p.var(
            "kernel",
            &[n_in, units],
            nn::Init::Uniform {
                lo: -limit,
                up: limit,
            },
        );
        let bias = self
            .use_bias
            .then(|| p.var("bias", &[units], nn::Init::Const(0.0)));
        Ok(QDense {
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
            in_features: self.in_features,
            units: self.units,
            activation: self.activation,
            kernel,
            bias,
            kq,
            bq,
            parallelization_factor: self.parallelization_factor,
        })
    }
}

layer_builder!(QDenseBuilder);

/// hgq2's `QDense`: `act(iq(x) @ kq(kernel) + bq(bias))`, with EBOPs.
#[derive(Debug)]
pub struct QDense {
    pub(crate) base: QBase,
    pub(crate) in_features: usize,
    pub(crate) units: usize,
    pub(crate) activation: Activation,
    pub(crate) kernel: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) kq: Named,
    pub(crate) bq: Option<Named>,
    pub(crate) parallelization_factor: Option<usize>,
}

impl QDense {
    /// A builder for a layer from `in_features` to `units`.
    pub fn builder(in_features: usize, units: usize) -> QDenseBuilder {
        QDenseBuilder {
            in_features,
            input_dims: vec![in_features],
            units,
            tape: None,
            activation: Activation::Linear,
            use_bias: true,
            beta: 1e-5,
            name: None,
            iq: None,
            oq: None,
            enable_iq: true,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
            parallelization_factor: None,
            kq: None,
            bq: None,
        }
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Output features.
    pub fn units(&self) -> usize {
        self.units
    }
    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// Whether there is a bias.
    pub fn use_bias(&self) -> bool {
        self.bias.is_some()
    }
    /// The raw kernel (`[in, units]`, Keras' layout).
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }
    /// The raw bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The input quantizer.
    pub fn iq(&self) -> Option<&Named> {
        self.base.iq.as_ref()
    }
    /// The kernel quantizer.
    pub fn kq(&self) -> &Named {
        &self.kq
    }
    /// The bias quantizer.
    pub fn bq(&self) -> Option<&Named> {
        self.bq.as_ref()
    }

    /// hgq2's `n_parallel`: the input's positions (all but its last axis; 1 for 2-D inputs),
    /// what `parallelization_factor` defaults to.
    pub fn n_parallel(&self) -> usize {
        let d = &self.base.input_dims;
        d[..d.len().saturating_sub(1)].iter().product()
    }

    /// The parallelization factor given (`None`: hgq2's default, [`Self::n_parallel`]).
    pub fn parallelization_factor(&self) -> Option<usize> {
        self.parallelization_factor
    }

    /// EBOPs from the current bit widths (differentiable through them):
    /// `sum(bits_in @ bits_kernel) + mean(bits_bias) * units`.
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let bw_inp = self.base.input_bits()?;
        let bw_ker = self.kq.q.bits_like(self.kernel.size().as_slice())?;
        let mut e = bw_inp
            .f_matmul(&bw_ker.to_device(bw_inp.device()))?
            .f_sum(Kind::Float)?;
        let positions = self.n_parallel();
        if let Some(bq) = &self.bq {
            // One bias add per output: per position and unit.
            let bw_bias = bq.q.bits_like(&[self.units as i64])?;
            let dev = e.device();
            e += bw_bias.f_mean(Kind::Float)?.to_device(dev) * (positions * self.units) as f64;
        }
        // hgq2's `ebops * parallelization_factor / n_parallel`, in that order.
        let pf = self.parallelization_factor.unwrap_or(positions);
        Ok(e.f_mul_scalar(pf as f64)?.f_div_scalar(positions as f64)?)
    }
}

impl Layer for QDense {
    qbase_layer_methods!();

    /// The input's with the last replaced by `units`.
    fn output_dims(&self) -> Vec<usize> {
        let mut d = self.base.input_dims.clone();
        if let Some(last) = d.last_mut() {
            *last = self.units;
        }
        d
    }
    /// `act(iq(x) @ kq(kernel) + bq(bias))`.
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_input("QDense input", x, &self.kernel, &self.base.input_dims)?;
        let xq = self.base.input(x, mode)?;
        let bias = self.bq.as_ref().zip(self.bias.as_ref());
        let (k, qb) = self
            .base
            .kernel_and_bias((&self.kq, &self.kernel), bias, mode)?;
        let mut y = xq.f_matmul(&k)?;
        if let Some(qb) = qb {
            y += qb;
        }
        let y = self.activation.apply(y);
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    kernel_layer_methods!();
    fn keras_spec(&self) -> Result<LayerSpec> {
        let mut s = QDenseSpec::new(self.units)
            .name(self.name())
            .trainable(self.base.trainable)
            .activation(self.activation.to_config())
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .parallelization_factor(self.parallelization_factor.map_or(-1, |p| p as i64))
            .kq(self.kq.config.clone())
            .use_bias(self.bias.is_some());
        if let Some(bq) = &self.bq {
            s = s.bq(bq.config.clone());
        }
        Ok(s.into())
    }
}

module_t!(
    /// tch's module interface, so that a `QDense` sits in `nn::seq_t()` beside tch's layers:
    /// `forward_t(xs, true)` is a training forward, `false` an inference one. The EBOPs terms of
    /// the loss come through an [`EbopsTape`]. The bit widths' constraints (which a [`Sequential`](super::Sequential)
    /// applies after each optimizer step) are applied at the start of each `forward_t`: tch's
    /// interface has no call after the step, and the next forward is where the values are used
    /// (they are the values hgq2 uses; a `VarStore` saved right after a step holds them before
    /// the constraint).
    ///
    /// tch's interface returns a tensor, not a `Result`: an input this layer refuses (see
    /// [`Layer::forward`], which returns the error) panics here with that error, as tch's own
    /// layers panic on shapes they cannot take.
    ///
    /// ```no_run
    /// use hgq_torch::layers::{Activation, EbopsTape, Names, QDense};
    /// use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let (mut names, tape) = (Names::default(), EbopsTape::new());
    /// let q = QDense::builder(16, 8).activation(Activation::Relu).ebops_tape(&tape);
    /// let net = nn::seq_t()
    ///     .add(nn::linear(vs.root() / "in", 4, 16, Default::default()))
    ///     .add_fn(|x| x.tanh())
    ///     .add(q.build(&vs.root(), &mut names)?);
    /// let x = Tensor::rand([32, 4], (Kind::Float, Device::Cpu));
    /// let y = net.forward_t(&x, true);
    /// let loss = y.square().mean(Kind::Float) + tape.take()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    QDense
);
