//! hgq2's `QUnaryFunctionLUT`: any unary activation as a lookup table, `oq(f(iq(x)))`. The
//! firmware (hls4ml) stores `f` at every value the input quantizer can give, so the output
//! quantizer's bit widths and `2^bits_in` entries are its cost: EBOPs
//! `sum(2^bits_in * bits_out) * 1e-4` (hgq2's placeholder for a table's cost).
use std::cell::{Cell, RefCell};

use hgq_config::sequential::{LayerSpec, QUnaryFunctionLUTSpec};
use hgq_config::{Activation as KerasActivation, Params, Place, QuantizerConfig};
use hgq_core::CallMode;
use tch::{Kind, Tensor, nn};

use super::{
    Ebops, EbopsTape, Layer, Named, Names, Output, QBase, builder_base_setters, check_beta,
    config_or_default, io_quantizers, layer_builder, module_t, qbase_layer_methods,
    quantizer_variables,
};
use crate::{Result, TorchError};

/// The function a table holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TableFn {
    /// A Keras activation, as Keras' torch backend computes it (`None`: `linear`).
    Keras(Option<KerasActivation>),
    /// QSoftmax's `exp(-x * scale)` (stable) or `exp(x * scale)`.
    Exp { scale: f64, negate: bool },
    /// QSoftmax's `1 / (x + 1e-7)` (Keras' epsilon).
    Inverse,
}

impl TableFn {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            TableFn::Keras(Some(a)) => keras_activation(a, x),
            TableFn::Keras(None) => Ok(x.shallow_clone()),
            TableFn::Exp { scale, negate } => {
                let x = if negate {
                    x.f_neg()?
                } else {
                    x.shallow_clone()
                };
                Ok(x.f_mul_scalar(scale)?.f_exp()?)
            }
            // Python's `1.0 / t` is torch's `t.reciprocal() * 1.0`.
            TableFn::Inverse => Ok(x.f_add_scalar(1e-7)?.f_reciprocal()?),
        }
    }
}

/// A Keras activation (by its name in the model JSON) as Keras' torch backend computes it:
/// the same torch kernels, so the same bits. `softmax` and `log_softmax` are not unary.
pub(crate) fn keras_activation(a: KerasActivation, x: &Tensor) -> Result<Tensor> {
    use KerasActivation as A;
    Ok(match a {
        A::Relu => x.f_relu()?,
        A::Relu6 => x.f_relu6()?,
        // Keras' default slope, 0.2.
        A::LeakyRelu => x.f_where_self(&x.f_gt(0.0)?, &x.f_mul_scalar(0.2)?)?,
        A::Sigmoid => x.f_sigmoid()?,
        A::HardSigmoid => x.f_hardsigmoid()?,
        A::Tanh => x.f_tanh()?,
        A::Softplus => x.f_softplus()?,
        // torch's `input / (input.abs() + 1)`.
        A::Softsign => x.f_div(&x.f_abs()?.f_add_scalar(1.0)?)?,
        A::Elu => x.f_elu()?,
        A::Selu => x.f_selu()?,
        // Keras' `gelu` activation is the exact (erf) one.
        A::Gelu => x.f_gelu("none")?,
        A::Silu => x.f_silu()?,
        A::HardSilu => x.f_hardswish()?,
        // Keras' `x * tanh(softplus(x))`.
        A::Mish => x.f_mul(&x.f_softplus()?.f_tanh()?)?,
        A::Exponential => x.f_exp()?,
        A::LogSigmoid => x.f_log_sigmoid()?,
        A::HardTanh => x.f_hardtanh()?,
        A::Softmax | A::LogSoftmax => {
            return Err(TorchError::Invalid {
                what: "table activation",
                why: format!("{} is not unary", a.as_str()),
            });
        }
    })
}

/// `config` with one bit width over all axes (hgq2's `homogeneous_axis=None,
/// heterogeneous_axis=()`), what hgq2 does to a table's configurations where it does not
/// allow per-element ones.
pub(crate) fn one_bit_width(mut config: QuantizerConfig) -> QuantizerConfig {
    if let Some(c) = common_mut(&mut config.params) {
        c.homogeneous_axis = None;
        c.heterogeneous_axis = Some(Vec::new());
    }
    config
}

fn common_mut(p: &mut Params) -> Option<&mut hgq_config::quantizer::Common> {
    match p {
        Params::Kbi(k) => Some(&mut k.common),
        Params::Kif(k) => Some(&mut k.common),
        Params::Float(f) => Some(&mut f.common),
        Params::Dummy => None,
    }
}

/// Builder of a [`QUnaryFunctionLut`]; defaults as hgq2: the input quantizer
/// `default`/datalane, the output quantizer `default`/table (KBI), both per element, EBOPs on,
/// `beta = 1e-5`.
#[derive(Debug, Clone)]
pub struct QUnaryFunctionLutBuilder {
    input_dims: Vec<usize>,
    function: TableFn,
    tape: Option<EbopsTape>,
    beta: f64,
    name: Option<String>,
    iq: Option<QuantizerConfig>,
    oq: Option<QuantizerConfig>,
    enable_iq: bool,
    enable_oq: bool,
    enable_ebops: bool,
    trainable: bool,
    ebops_factor: f64,
    heterogeneous_input: bool,
    heterogeneous_table: bool,
}

impl QUnaryFunctionLutBuilder {
    builder_base_setters!();
    /// The input quantizer's configuration.
    pub fn iq(mut self, c: QuantizerConfig) -> Self {
        self.iq = Some(c);
        self.enable_iq = true;
        self
    }
    /// No input quantizer (hgq2's `enable_iq=False`; EBOPs off with it).
    pub fn no_iq(mut self) -> Self {
        self.iq = None;
        self.enable_iq = false;
        self.enable_ebops = false;
        self
    }
    /// The output quantizer's configuration (the table's values).
    pub fn oq(mut self, c: QuantizerConfig) -> Self {
        self.oq = Some(c);
        self.enable_oq = true;
        self
    }
    /// No output quantizer (hgq2's `enable_oq=False`; EBOPs off with it).
    pub fn no_oq(mut self) -> Self {
        self.oq = None;
        self.enable_oq = false;
        self.enable_ebops = false;
        self
    }
    /// hgq2's `allow_heterogeneous_input`: `false` gives the input quantizer one bit width
    /// (one table for all inputs). Default: `true`.
    pub fn allow_heterogeneous_input(mut self, on: bool) -> Self {
        self.heterogeneous_input = on;
        self
    }
    /// hgq2's `allow_heterogeneous_table`: `false` gives the output quantizer one bit width.
    /// Default: `true`.
    pub fn allow_heterogeneous_table(mut self, on: bool) -> Self {
        self.heterogeneous_table = on;
        self
    }

    /// The configurations as hgq2 makes them: `(iq, oq)`.
    fn configs(&self) -> Result<(Option<QuantizerConfig>, Option<QuantizerConfig>)> {
        let iq = match self.enable_iq {
            true => {
                let c = config_or_default(self.iq.clone(), Place::Datalane)?;
                Some(if self.heterogeneous_input {
                    c
                } else {
                    one_bit_width(c)
                })
            }
            false => None,
        };
        let oq = match self.enable_oq {
            true => {
                let c = config_or_default(self.oq.clone(), Place::Table)?;
                Some(if self.heterogeneous_table {
                    c
                } else {
                    one_bit_width(c)
                })
            }
            false => None,
        };
        Ok((iq, oq))
    }

    /// Builds the layer under `root / name`; `names` gives Keras' unique names.
    pub fn build(self, root: &nn::Path, names: &mut Names) -> Result<QUnaryFunctionLut> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => names.next("q_unary_function_lut"),
        };
        let dims = self.input_dims.clone();
        self.build_named(root, names, name, &dims)
    }

    /// Builds under `root / name` with quantizers for `[batch, *quantizer_dims]` (QSoftmax's
    /// inverse table sees its sums, not its input).
    pub(crate) fn build_named(
        self,
        root: &nn::Path,
        names: &mut Names,
        name: String,
        quantizer_dims: &[usize],
    ) -> Result<QUnaryFunctionLut> {
        check_beta(self.beta)?;
        super::check_ebops_factor(self.ebops_factor)?;
        if self.input_dims.is_empty() || self.input_dims.contains(&0) {
            return Err(TorchError::Invalid {
                what: "QUnaryFunctionLUT input dimensions",
                why: format!("{:?} (positive sizes)", self.input_dims),
            });
        }
        if self.enable_ebops && !(self.enable_iq && self.enable_oq) {
            return Err(TorchError::Invalid {
                what: "enable_ebops",
                why: format!("{name}: a table's EBOPs need its input and output quantizers"),
            });
        }
        let (iq, oq) = self.configs()?;
        let p = root / name.as_str();
        let (oq, iq) = io_quantizers(names, &p, &name, oq, quantizer_dims, iq, quantizer_dims)?;
        Ok(QUnaryFunctionLut {
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
            function: self.function,
            quantizer_dims: quantizer_dims.to_vec(),
            heterogeneous_input: self.heterogeneous_input,
            heterogeneous_table: self.heterogeneous_table,
        })
    }
}

layer_builder!(QUnaryFunctionLutBuilder);

/// hgq2's `QUnaryFunctionLUT`: `oq(f(iq(x)))` for a Keras activation `f`, which hls4ml's
/// firmware computes as a lookup table.
///
/// ```
/// use hgq_torch::hgq_config::Activation;
/// use hgq_torch::layers::{Layer, QUnaryFunctionLut};
/// use hgq_torch::hgq_core::CallMode;
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let t = QUnaryFunctionLut::builder(&[8], Activation::Tanh)?.build(&vs.root(), &mut Default::default())?;
/// let out = t.forward(&Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), CallMode::Training)?;
/// assert_eq!(out.y.size(), [4, 8]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct QUnaryFunctionLut {
    pub(crate) base: QBase,
    function: TableFn,
    /// The quantizers' dimensions after the batch (the input's, but for QSoftmax's inverse
    /// table).
    quantizer_dims: Vec<usize>,
    heterogeneous_input: bool,
    heterogeneous_table: bool,
}

impl QUnaryFunctionLut {
    /// A builder of a table of `activation` (`None`: Keras' `linear`) on inputs `[batch,
    /// *input_dims]`; `softmax` and `log_softmax` (not unary) are an error.
    pub fn builder(
        input_dims: &[usize],
        activation: impl Into<Option<KerasActivation>>,
    ) -> Result<QUnaryFunctionLutBuilder> {
        let activation = activation.into();
        if let Some(a @ (KerasActivation::Softmax | KerasActivation::LogSoftmax)) = activation {
            return Err(TorchError::Invalid {
                what: "QUnaryFunctionLUT activation",
                why: format!("{} is not unary", a.as_str()),
            });
        }
        Ok(Self::builder_of(input_dims, TableFn::Keras(activation)))
    }

    pub(crate) fn builder_of(input_dims: &[usize], function: TableFn) -> QUnaryFunctionLutBuilder {
        QUnaryFunctionLutBuilder {
            input_dims: input_dims.to_vec(),
            function,
            tape: None,
            beta: 1e-5,
            name: None,
            iq: None,
            oq: None,
            enable_iq: true,
            enable_oq: true,
            enable_ebops: true,
            trainable: true,
            ebops_factor: 1.0,
            heterogeneous_input: true,
            heterogeneous_table: true,
        }
    }

    /// The activation the table holds (`None`: `linear`, or one of QSoftmax's inner tables).
    pub fn activation(&self) -> Option<KerasActivation> {
        match self.function {
            TableFn::Keras(a) => a,
            _ => None,
        }
    }
    /// The input quantizer.
    pub fn iq(&self) -> Option<&Named> {
        self.base.iq.as_ref()
    }
    /// The output quantizer (the table's values).
    pub fn oq(&self) -> Option<&Named> {
        self.base.oq.as_ref()
    }

    /// EBOPs from the current bit widths: `sum(2^bits_in * bits_out) * 1e-4`.
    pub fn compute_ebops(&self) -> Result<Tensor> {
        let (Some(iq), Some(oq)) = (&self.base.iq, &self.base.oq) else {
            return Err(TorchError::Invalid {
                what: "EBOPs",
                why: format!("{} lacks a quantizer", self.base.name),
            });
        };
        let shape: Vec<i64> = std::iter::once(1)
            .chain(self.quantizer_dims.iter().map(|&d| d as i64))
            .collect();
        let bw_in = iq.q.bits_like(&shape)?;
        let bw_out = oq.q.bits_like(&shape)?.f_to_device(bw_in.device())?;
        let two = Tensor::from(2.0f32).f_to_device(bw_in.device())?;
        Ok(two
            .f_pow(&bw_in)?
            .f_mul(&bw_out)?
            .f_sum(Kind::Float)?
            .f_mul_scalar(1e-4)?)
    }

    /// `oq(f(iq(x)))` without the input check, EBOPs computed (QSoftmax calls its tables so).
    pub(crate) fn call(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        let xq = self.base.input(x, mode)?;
        let y = self.function.apply(&xq)?;
        let y = self.base.output(y, mode)?;
        let ebops_loss = self.base.ebops_loss(mode, || self.compute_ebops())?;
        Ok(Output { y, ebops_loss })
    }

    pub(crate) fn spec(&self) -> QUnaryFunctionLUTSpec {
        QUnaryFunctionLUTSpec::new(self.activation())
            .name(self.name())
            .trainable(self.base.trainable)
            .beta0(self.base.beta0)
            .iq(self.base.iq.as_ref().map(|q| q.config.clone()))
            .oq(self.base.oq.as_ref().map(|q| q.config.clone()))
            .enable_ebops(self.base.enable_ebops)
            .ebops_factor(self.base.ebops_factor)
            .allow_heterogeneous_input(self.heterogeneous_input)
            .allow_heterogeneous_table(self.heterogeneous_table)
    }
}

impl Layer for QUnaryFunctionLut {
    qbase_layer_methods!();

    fn output_dims(&self) -> Vec<usize> {
        self.base.input_dims.clone()
    }
    fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Output> {
        check_float_input("QUnaryFunctionLUT input", x, &self.base)?;
        self.call(x, mode)
    }
    fn quantizers(&self) -> Vec<&Named> {
        self.base.oq.iter().chain(self.base.iq.iter()).collect()
    }
    fn keras_variables(&self) -> Vec<(String, Tensor)> {
        quantizer_variables(&self.quantizers())
    }
    fn keras_spec(&self) -> Result<LayerSpec> {
        Ok(self.spec().into())
    }
}

/// The input is `[batch, *input_dims]` and of the quantizers' kind and device (a layer without
/// variables of its own checks against its quantizers').
pub(crate) fn check_float_input(what: &'static str, x: &Tensor, base: &QBase) -> Result<()> {
    let like = base
        .iq
        .iter()
        .chain(base.oq.iter())
        .flat_map(|q| q.q.variables())
        .map(|(_, t)| t)
        .next();
    match like {
        Some(like) => super::check_input(what, x, &like, &base.input_dims),
        None => {
            let kind = x.f_kind()?;
            if !matches!(
                kind,
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                return Err(TorchError::Kind { what, kind });
            }
            super::reshape::check_dims(&x.size(), &base.input_dims)
        }
    }
}

module_t!(QUnaryFunctionLut);
