//! `QConv1D` / `QConv2D`.
use super::{Padding, read_padding, read_sizes, sizes_value, value_err};
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{
    Activation, check_size, default_config, glorot_uniform, n_parallel, read_activation,
    read_beta0, size,
};
use crate::pyjson::PyValue;
use crate::quantizer::{Place, QuantizerConfig};

/// One `QConv1D` or `QConv2D` layer (channels last): `QConv2D(filters, kernel_size,
/// strides=..., padding=..., dilation_rate=..., groups=..., activation=..., use_bias=...,
/// beta0=..., iq_conf=..., kq_conf=..., bq_conf=..., ...)`.
///
/// The rank is the length of [`Self::kernel_size`] (1: `QConv1D`, 2: `QConv2D`);
/// [`Self::strides`] and [`Self::dilation_rate`] have one size per spatial axis too.
/// [`QConvSpec::new`] gives the reference's defaults; the setters change one argument each.
///
/// ```
/// use hgq_config::model_json::Activation;
/// use hgq_config::sequential::{Padding, QConvSpec};
/// use hgq_config::{Place, QType, QuantizerConfig};
/// let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight).b0(6).build().unwrap();
/// let c = QConvSpec::new(8, [3, 3])
///     .strides([2, 2])
///     .padding(Padding::Same)
///     .activation(Activation::Relu)
///     .kq(kq.clone());
/// assert_eq!(c.rank(), 2);
/// assert_eq!(c.dilation_rate, [1, 1]);
/// assert_eq!(c.kq, kq);
/// assert_eq!(QConvSpec::new(4, [5]).class_name(), Some("QConv1D"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QConvSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_conv2d`, `q_conv2d_1`, ...;
    /// `q_conv1d`, ...).
    pub name: Option<String>,
    /// The number of output channels (`filters`).
    pub filters: usize,
    /// The window size per spatial axis (`kernel_size`); its length is the rank.
    pub kernel_size: Vec<usize>,
    /// The step per spatial axis (`strides`).
    pub strides: Vec<usize>,
    /// `valid`, `same`, or `causal` (rank 1 only).
    pub padding: Padding,
    /// The dilation per spatial axis (`dilation_rate`); Keras refuses a dilation above 1
    /// together with a stride above 1.
    pub dilation_rate: Vec<usize>,
    /// The number of groups the input channels and [`Self::filters`] are split into; both
    /// must be divisible by it.
    pub groups: usize,
    /// The activation; `None` is the identity (`"linear"`).
    pub activation: Option<Activation>,
    /// Whether the layer has a bias (`use_bias`).
    pub use_bias: bool,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`); it needs the input quantizer.
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizer (`iq_conf`); `None` is `enable_iq=False`.
    pub iq: Option<QuantizerConfig>,
    /// The kernel quantizer (`kq_conf`).
    pub kq: QuantizerConfig,
    /// The bias quantizer (`bq_conf`); written only when [`Self::use_bias`] (else `null`).
    pub bq: QuantizerConfig,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
    /// `parallelization_factor`. Zero or negative (the default, `-1`, as in the reference)
    /// is written resolved, as a built layer writes it: the number of output positions
    /// (the product of the output's spatial sizes, 16 for a `4 x 4` output). A document
    /// whose value equals that number reads as `-1`.
    pub parallelization_factor: i64,
}

impl QConvSpec {
    /// `QConv1D(filters, kernel_size)` (one size) or `QConv2D(filters, kernel_size)` (two
    /// sizes) with every other argument at the reference's default: unnamed, strides and
    /// dilation 1, `valid` padding, one group, no activation, a bias, `beta0=1e-5`, EBOPs on,
    /// the `'default'` quantizer configurations for datalane (iq), weight (kq) and bias (bq),
    /// no output quantizer, `parallelization_factor=-1`.
    pub fn new(filters: usize, kernel_size: impl Into<Vec<usize>>) -> Self {
        let kernel_size = kernel_size.into();
        let rank = kernel_size.len();
        QConvSpec {
            name: None,
            filters,
            kernel_size,
            strides: vec![1; rank],
            padding: Padding::Valid,
            dilation_rate: vec![1; rank],
            groups: 1,
            activation: None,
            use_bias: true,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(default_config(Place::Datalane)),
            kq: default_config(Place::Weight),
            bq: default_config(Place::Bias),
            oq: None,
            parallelization_factor: -1,
        }
    }

    /// The number of spatial axes (the length of [`Self::kernel_size`]).
    pub fn rank(&self) -> usize {
        self.kernel_size.len()
    }

    /// `QConv1D` or `QConv2D` by [`Self::rank`]; `None` for other ranks.
    pub fn class_name(&self) -> Option<&'static str> {
        match self.rank() {
            1 => Some("QConv1D"),
            2 => Some("QConv2D"),
            _ => None,
        }
    }

    spec_setters!(
        name,
        activation,
        use_bias,
        trainable,
        beta0,
        enable_ebops,
        ebops_factor,
        iq,
        kq,
        bq,
        oq
    );

    /// Sets `strides` (one size per spatial axis).
    pub fn strides(mut self, s: impl Into<Vec<usize>>) -> Self {
        self.strides = s.into();
        self
    }

    /// Sets `padding`.
    pub fn padding(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }

    /// Sets `dilation_rate` (one size per spatial axis).
    pub fn dilation_rate(mut self, d: impl Into<Vec<usize>>) -> Self {
        self.dilation_rate = d.into();
        self
    }

    /// Sets `groups`.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// Sets `parallelization_factor` (zero or negative: the reference's automatic value).
    pub fn parallelization_factor(mut self, p: i64) -> Self {
        self.parallelization_factor = p;
        self
    }

    /// The reference's `n_parallel` for an output of `output` (without batch): the product
    /// of its spatial sizes.
    pub(crate) fn n_parallel(&self, output: &[usize]) -> i64 {
        n_parallel(&output[..output.len().saturating_sub(1)])
    }

    /// The output shape (without batch) for an input of `input`, as Keras computes it;
    /// errors name paths under `at` (`$.config.layers[j]`), in the order Keras checks.
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        let c = format!("{at}.config");
        let rank = self.rank();
        if !(1..=2).contains(&rank) {
            return Err(value_err(
                format!("{c}.kernel_size"),
                format!("{rank} kernel sizes: QConv1D takes one, QConv2D two"),
            ));
        }
        check_size(self.filters, &format!("{c}.filters"))?;
        check_size(self.groups, &format!("{c}.groups"))?;
        if !self.filters.is_multiple_of(self.groups) {
            return Err(value_err(
                format!("{c}.filters"),
                format!(
                    "{} filters are not divisible by {} groups",
                    self.filters, self.groups
                ),
            ));
        }
        for (key, v) in [
            ("kernel_size", &self.kernel_size),
            ("strides", &self.strides),
            ("dilation_rate", &self.dilation_rate),
        ] {
            if v.len() != rank {
                return Err(value_err(
                    format!("{c}.{key}"),
                    format!("{} sizes for a convolution of rank {rank}", v.len()),
                ));
            }
            for (i, &n) in v.iter().enumerate() {
                check_size(n, &format!("{c}.{key}[{i}]"))?;
            }
        }
        if self.strides.iter().any(|&s| s > 1) && self.dilation_rate.iter().any(|&d| d > 1) {
            return Err(value_err(
                format!("{c}.dilation_rate"),
                "Keras refuses strides > 1 together with dilation_rate > 1",
            ));
        }
        if self.padding == Padding::Causal && rank != 1 {
            return Err(value_err(
                format!("{c}.padding"),
                "causal padding is for QConv1D only",
            ));
        }
        if input.len() != rank + 1 {
            return Err(value_err(
                format!("{at}.build_config.input_shape"),
                format!(
                    "an input of {} dimensions for a convolution of rank {rank} \
                     (it takes (batch, {}channels))",
                    input.len() + 1,
                    "size, ".repeat(rank)
                ),
            ));
        }
        let channels = input[rank];
        if !channels.is_multiple_of(self.groups) {
            return Err(value_err(
                format!("{c}.groups"),
                format!(
                    "{channels} input channels are not divisible by {} groups",
                    self.groups
                ),
            ));
        }
        let mut out = Vec::with_capacity(rank + 1);
        let windows = self
            .kernel_size
            .iter()
            .zip(&self.strides)
            .zip(&self.dilation_rate);
        for (i, (&n, ((&k, &s), &d))) in input.iter().zip(windows).enumerate() {
            out.push(match self.padding {
                Padding::Valid => {
                    // The dilated window: d * (k - 1) + 1.
                    let span = d.checked_mul(k - 1).and_then(|x| x.checked_add(1));
                    match span {
                        Some(span) if span <= n => (n - span) / s + 1,
                        _ => {
                            return Err(value_err(
                                format!("{c}.kernel_size[{i}]"),
                                format!(
                                    "a kernel of {k} (dilation {d}) does not fit an input \
                                     of {n} with valid padding"
                                ),
                            ));
                        }
                    }
                }
                Padding::Same | Padding::Causal => (n - 1) / s + 1,
            });
        }
        out.push(self.filters);
        Ok(out)
    }

    /// The layer's `config`, for an output of `output`.
    pub(crate) fn config_value(&self, name: &str, output: &[usize]) -> PyValue {
        let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
        let parallelization = if self.parallelization_factor <= 0 {
            self.n_parallel(output)
        } else {
            self.parallelization_factor
        };
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            ("filters", PyValue::Int(self.filters as i64)),
            ("kernel_size", sizes_value(&self.kernel_size)),
            ("strides", sizes_value(&self.strides)),
            ("padding", PyValue::str(self.padding.as_str())),
            ("data_format", PyValue::str("channels_last")),
            ("dilation_rate", sizes_value(&self.dilation_rate)),
            ("groups", PyValue::Int(self.groups as i64)),
            (
                "activation",
                PyValue::str(self.activation.map_or("linear", Activation::as_str)),
            ),
            ("use_bias", PyValue::Bool(self.use_bias)),
            ("kernel_initializer", glorot_uniform()),
            ("bias_initializer", Initializer::Zeros.to_value()),
            ("kernel_regularizer", PyValue::Null),
            ("bias_regularizer", PyValue::Null),
            ("activity_regularizer", PyValue::Null),
            ("kernel_constraint", PyValue::Null),
            ("bias_constraint", PyValue::Null),
            ("enable_ebops", PyValue::Bool(self.enable_ebops)),
            ("ebops_factor", PyValue::Float(self.ebops_factor)),
            (
                "beta0",
                Initializer::Constant(Num::Float(self.beta0)).to_value(),
            ),
            ("enable_oq", PyValue::Bool(self.oq.is_some())),
            ("enable_iq", PyValue::Bool(self.iq.is_some())),
            ("oq_conf", conf(self.oq.as_ref())),
            ("iq_conf", conf(self.iq.as_ref())),
            ("kq_conf", self.kq.to_value()),
            ("bq_conf", conf(self.use_bias.then_some(&self.bq))),
            ("parallelization_factor", PyValue::Int(parallelization)),
        ])
    }

    /// Reads a `QConv1D` (`rank` 1) or `QConv2D` (`rank` 2) `config`; the name is kept as
    /// written, `parallelization_factor` too.
    pub(crate) fn read(at: &At<'_>, rank: usize) -> Result<Self> {
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        let use_bias = c.req("use_bias")?.bool()?;
        let bq = conf(c.req("bq_conf")?)?;
        Ok(QConvSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            filters: size(&c.req("filters")?)?,
            kernel_size: read_sizes(&c.req("kernel_size")?, rank)?,
            strides: read_sizes(&c.req("strides")?, rank)?,
            padding: read_padding(&c.req("padding")?)?,
            dilation_rate: read_sizes(&c.req("dilation_rate")?, rank)?,
            groups: size(&c.req("groups")?)?,
            activation: read_activation(&c.req("activation")?)?,
            use_bias,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            kq: QuantizerConfig::read(&c.req("kq_conf")?)?,
            bq: bq.unwrap_or_else(|| default_config(Place::Bias)),
            oq: conf(c.req("oq_conf")?)?,
            parallelization_factor: c.req("parallelization_factor")?.int()?,
        })
    }
}
