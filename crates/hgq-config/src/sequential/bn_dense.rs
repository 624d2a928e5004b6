//! hgq2's `QBatchNormDense` (module `hgq.layers.core.dense`).
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::Initializer;
use crate::model_json::{Activation, QDenseSpec, qdense_config, read_qdense};
use crate::pyjson::{PyValue, float_repr};
use crate::quantizer::QuantizerConfig;

/// One `QBatchNormDense` layer: a `QDense` whose input is batch-normalized per input
/// feature (the last axis), the normalization folded into the kernel and the bias before
/// they are quantized: `QBatchNormDense(units, activation=..., scale=True, momentum=0.99,
/// epsilon=1e-3, synchronized=False, iq_conf=..., kq_conf=..., bq_conf=..., ...)`.
///
/// hgq2 writes `QDense`'s config (with `use_bias: true`: the layer needs its bias) and
/// then `scale`, `momentum`, `epsilon`, `bn_gamma_initializer`,
/// `moving_mean_initializer`, `moving_variance_initializer`, `bn_gamma_regularizer`,
/// `bn_gamma_constraint`, `synchronized`. The initializers, regularizer and constraint are
/// Keras' defaults here (`Ones()`, `Zeros()`, `Ones()`, none, none); a document with others
/// is an error naming the key. `momentum` is written as a float (`float(momentum)`),
/// `epsilon` as given: a float here (an int, as `epsilon=1` writes it, is an error at
/// `epsilon`).
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::sequential::{ChainModelSpec, QBatchNormDenseSpec};
/// let m = ChainModelSpec::new([10])
///     .layer(QBatchNormDenseSpec::new(8).activation(Activation::Relu))
///     .layer(QDenseSpec::new(3));
/// assert_eq!(m.layer_names().unwrap(), ["q_batch_norm_dense", "q_dense"]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""parallelization_factor": 1, "scale": true, "momentum": 0.99, "epsilon": 0.001, "bn_gamma_initializer""#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// let bad = json.replacen(r#""class_name": "Ones""#, r#""class_name": "Zeros""#, 1);
/// let e = ChainModelSpec::from_json(&bad).unwrap_err();
/// assert_eq!(e.path(), Some("$.config.layers[1].config.bn_gamma_initializer"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QBatchNormDenseSpec {
    /// The dense layer: name (automatic prefix `q_batch_norm_dense`), units, activation,
    /// quantizers, EBOPs, `parallelization_factor` (resolved as `QDense`'s). Its `use_bias`
    /// must be true (hgq2 asserts it).
    pub dense: QDenseSpec,
    /// Whether the normalization has a scale (`scale`, its `bn_gamma`).
    pub scale: bool,
    /// The moving averages' momentum.
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
    /// Whether the batch statistics are synchronized across devices (`synchronized`).
    pub synchronized: bool,
}

impl QBatchNormDenseSpec {
    /// `QBatchNormDense(units)` with the reference's defaults: [`QDenseSpec::new`]'s, `scale`,
    /// `momentum=0.99`, `epsilon=1e-3`, not synchronized.
    pub fn new(units: usize) -> Self {
        QBatchNormDenseSpec {
            dense: QDenseSpec::new(units),
            scale: true,
            momentum: 0.99,
            epsilon: 1e-3,
            synchronized: false,
        }
    }

    forward_setters! {dense;
        /// Sets the layer name.
        name(impl Into<String>);
        /// Sets the activation (`None`: linear).
        activation(impl Into<Option<Activation>>);
        /// Sets `trainable`.
        trainable(bool);
        /// Sets `beta0`.
        beta0(f64);
        /// Sets `enable_ebops`.
        enable_ebops(bool);
        /// Sets `ebops_factor`.
        ebops_factor(f64);
        /// Sets the input quantizer; `None` turns it off (`enable_iq=False`) and EBOPs with it.
        iq(impl Into<Option<QuantizerConfig>>);
        /// Sets the quantizer of the folded kernel.
        kq(QuantizerConfig);
        /// Sets the quantizer of the folded bias.
        bq(QuantizerConfig);
        /// Sets the output quantizer (`Some`: `enable_oq=True`).
        oq(impl Into<Option<QuantizerConfig>>);
        /// Sets `parallelization_factor` (negative: the reference's automatic value).
        parallelization_factor(i64);
    }

    /// Sets `scale`.
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
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

    /// Sets `synchronized`.
    pub fn synchronized(mut self, s: bool) -> Self {
        self.synchronized = s;
        self
    }

    /// What hgq2 refuses: no bias (`{at}.config.use_bias`).
    pub(crate) fn check(&self, at: &str) -> Result<()> {
        if !self.dense.use_bias {
            return Err(value_err(
                format!("{at}.config.use_bias"),
                "QBatchNormDense must have use_bias=True (hgq2 asserts it)",
            ));
        }
        Ok(())
    }

    /// The layer's `config` for an output of `out_shape` (without batch).
    pub(crate) fn config_value(&self, name: &str, out_shape: &[usize]) -> PyValue {
        let PyValue::Dict(mut entries) = qdense_config(&self.dense, name, out_shape) else {
            unreachable!("a config is a dict")
        };
        let extra = dict([
            ("scale", PyValue::Bool(self.scale)),
            ("momentum", PyValue::Float(self.momentum)),
            ("epsilon", PyValue::Float(self.epsilon)),
            ("bn_gamma_initializer", Initializer::Ones.to_value()),
            ("moving_mean_initializer", Initializer::Zeros.to_value()),
            ("moving_variance_initializer", Initializer::Ones.to_value()),
            ("bn_gamma_regularizer", PyValue::Null),
            ("bn_gamma_constraint", PyValue::Null),
            ("synchronized", PyValue::Bool(self.synchronized)),
        ]);
        let PyValue::Dict(extra) = extra else {
            unreachable!("a dict")
        };
        entries.extend(extra);
        PyValue::Dict(entries)
    }

    /// Reads a `QBatchNormDense` `config`; the name and `parallelization_factor` are kept as
    /// written.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let dense = read_qdense(at)?;
        let mut c = at.dict()?;
        let use_bias = c.req("use_bias")?;
        if !dense.use_bias {
            return Err(use_bias.value_err("QBatchNormDense must have use_bias=True"));
        }
        let defaults = [
            (
                "bn_gamma_initializer",
                Initializer::Ones.to_value(),
                "Ones()",
            ),
            (
                "moving_mean_initializer",
                Initializer::Zeros.to_value(),
                "Zeros()",
            ),
            (
                "moving_variance_initializer",
                Initializer::Ones.to_value(),
                "Ones()",
            ),
            ("bn_gamma_regularizer", PyValue::Null, "None"),
            ("bn_gamma_constraint", PyValue::Null, "None"),
        ];
        for (key, value, python) in defaults {
            let a = c.req(key)?;
            if *a.v != value {
                return Err(a.value_err(format!(
                    "only Keras' default ({python}) is described for {key}"
                )));
            }
        }
        let float = |a: At<'_>| -> Result<f64> {
            match a.v {
                PyValue::Float(_) => a.number(),
                PyValue::Int(i) => Err(a.value_err(format!(
                    "the int {i}: hgq2 writes epsilon as given, and only floats (`{}`) are \
                     described here",
                    float_repr(*i as f64)
                ))),
                _ => Err(a.type_err("float")),
            }
        };
        Ok(QBatchNormDenseSpec {
            dense,
            scale: c.req("scale")?.bool()?,
            momentum: c.req("momentum")?.float()?,
            epsilon: float(c.req("epsilon")?)?,
            synchronized: c.req("synchronized")?.bool()?,
        })
    }
}
