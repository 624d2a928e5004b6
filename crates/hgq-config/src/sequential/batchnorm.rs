//! hgq2's `QBatchNormalization` (module `hgq.layers.batch_normalization`).
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{default_config, read_beta0};
use crate::pyjson::PyValue;
use crate::quantizer::{Place, QuantizerConfig};

/// One `QBatchNormalization` layer: `QBatchNormalization(axis=-1, momentum=0.99,
/// epsilon=1e-3, center=True, scale=True, kq_conf=..., bq_conf=..., iq_conf=..., beta0=...,
/// ...)`.
///
/// The layer folds the normalization into a per-channel scale (quantized by `kq`) and
/// offset (quantized by `bq`). Keras' initializers, regularizers and constraints of the
/// normalization (`beta_initializer='zeros'`, `gamma_initializer='ones'`, ...,
/// `synchronized=False`, `renorm=False`, `renorm_momentum=0.99`) are written at their
/// defaults; other values are not described. hgq2 renames the normalization's `beta` and
/// `gamma` variables `bn_beta` and `bn_gamma` (its `beta` is the EBOPs factor), but its
/// config keeps Keras' `beta_initializer` etc., and the EBOPs' `beta0`.
///
/// ```
/// use hgq_config::sequential::QBatchNormSpec;
/// let bn = QBatchNormSpec::new().momentum(0.9).epsilon(1e-5).center(false);
/// assert_eq!(bn.axis, -1);
/// assert!(bn.scale && !bn.center);
/// assert!(bn.iq.is_some() && bn.oq.is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QBatchNormSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_batch_normalization`,
    /// `q_batch_normalization_1`, ...).
    pub name: Option<String>,
    /// The normalized (channel) axis, the batch axis counted (`-1`: the last; `1`: the
    /// first after the batch); written as given.
    pub axis: i64,
    /// The moving averages' momentum.
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
    /// Whether the normalization has an offset (`center`, its `bn_beta`).
    pub center: bool,
    /// Whether the normalization has a scale (`scale`, its `bn_gamma`).
    pub scale: bool,
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
    /// The quantizer of the folded scale (`kq_conf`).
    pub kq: QuantizerConfig,
    /// The quantizer of the folded offset (`bq_conf`; written even without `center`).
    pub bq: QuantizerConfig,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
}

impl Default for QBatchNormSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl QBatchNormSpec {
    /// `QBatchNormalization()` with the reference's defaults: unnamed, `axis=-1`,
    /// `momentum=0.99`, `epsilon=1e-3`, centered and scaled, `beta0=1e-5`, EBOPs on, the
    /// `'default'` quantizer configurations for datalane (iq), weight (kq) and bias (bq),
    /// no output quantizer.
    pub fn new() -> Self {
        QBatchNormSpec {
            name: None,
            axis: -1,
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(default_config(Place::Datalane)),
            kq: default_config(Place::Weight),
            bq: default_config(Place::Bias),
            oq: None,
        }
    }

    spec_setters!(name, trainable, beta0, enable_ebops, ebops_factor, iq, oq);

    /// Sets `axis`.
    pub fn axis(mut self, a: i64) -> Self {
        self.axis = a;
        self
    }

    /// Sets `momentum`.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }

    /// Sets `epsilon`.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }

    /// Sets `center`.
    pub fn center(mut self, c: bool) -> Self {
        self.center = c;
        self
    }

    /// Sets `scale`.
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
        self
    }

    /// Sets the scale quantizer.
    pub fn kq(mut self, c: QuantizerConfig) -> Self {
        self.kq = c;
        self
    }

    /// Sets the offset quantizer.
    pub fn bq(mut self, c: QuantizerConfig) -> Self {
        self.bq = c;
        self
    }

    /// The output shape (the input's); errors at `{at}.config.axis` on an axis that is the
    /// batch axis or out of range, as Keras refuses it.
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        // With the batch axis.
        let ndim = input.len() as i64 + 1;
        let a = self.axis;
        if a >= ndim || a < -ndim || a == 0 || a == -ndim {
            return Err(value_err(
                format!("{at}.config.axis"),
                format!(
                    "axis {a} for an input of {ndim} dimensions (an axis other than the batch \
                     axis: 1 to {} or -1 to -{})",
                    ndim - 1,
                    ndim - 1
                ),
            ));
        }
        Ok(input.to_vec())
    }

    /// The layer's `config`.
    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            ("axis", PyValue::Int(self.axis)),
            ("momentum", PyValue::Float(self.momentum)),
            ("epsilon", PyValue::Float(self.epsilon)),
            ("center", PyValue::Bool(self.center)),
            ("scale", PyValue::Bool(self.scale)),
            ("beta_initializer", Initializer::Zeros.to_value()),
            ("gamma_initializer", Initializer::Ones.to_value()),
            ("moving_mean_initializer", Initializer::Zeros.to_value()),
            ("moving_variance_initializer", Initializer::Ones.to_value()),
            ("beta_regularizer", PyValue::Null),
            ("gamma_regularizer", PyValue::Null),
            ("beta_constraint", PyValue::Null),
            ("gamma_constraint", PyValue::Null),
            ("synchronized", PyValue::Bool(false)),
            ("renorm", PyValue::Bool(false)),
            ("renorm_clipping", PyValue::Null),
            ("renorm_momentum", PyValue::Float(0.99)),
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
            ("bq_conf", self.bq.to_value()),
        ])
    }

    /// Reads a `QBatchNormalization` `config`; the name is kept as written.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        Ok(QBatchNormSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            axis: c.req("axis")?.int()?,
            momentum: c.req("momentum")?.float()?,
            epsilon: c.req("epsilon")?.float()?,
            center: c.req("center")?.bool()?,
            scale: c.req("scale")?.bool()?,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            kq: QuantizerConfig::read(&c.req("kq_conf")?)?,
            bq: QuantizerConfig::read(&c.req("bq_conf")?)?,
            oq: conf(c.req("oq_conf")?)?,
        })
    }
}
