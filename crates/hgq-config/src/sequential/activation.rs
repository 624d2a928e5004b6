//! Keras' own activation layers: `Activation` and `ReLU` (module `keras.layers`).
//!
//! Both are built when they are made (Keras' `_build_at_init`), so neither writes a
//! `build_config`; neither has weights, quantizers or EBOPs, and the output shape is the
//! input's.
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::DTypePolicy;
use crate::model_json::{Activation, read_activation};
use crate::pyjson::{PyValue, float_repr};

/// Keras' `Activation(activation)` layer: `keras.layers.Activation('relu')`.
///
/// Keras writes its config as `{"name", "trainable", "dtype", "activation"}`, the
/// activation as `activations.serialize` names it (`'swish'` is written `"silu"`,
/// `None` and `'linear'` are `"linear"`), and no `build_config`.
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::sequential::{ActivationSpec, ChainModelSpec};
/// let m = ChainModelSpec::new([4])
///     .layer(QDenseSpec::new(3))
///     .layer(ActivationSpec::new(Activation::Relu))
///     .layer(ActivationSpec::new(None).name("identity"));
/// assert_eq!(m.layer_names().unwrap(), ["q_dense", "activation", "identity"]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""class_name": "Activation", "config": {"name": "activation", "trainable": true, "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "activation": "relu"}, "registered_name": null, "name": "activation", "inbound_nodes""#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationSpec {
    /// The layer name; `None` takes Keras' automatic name (`activation`, `activation_1`,
    /// ...).
    pub name: Option<String>,
    /// The activation; `None` is the identity (`"linear"`).
    pub activation: Option<Activation>,
    /// `trainable` as written (it changes nothing in a layer without weights).
    pub trainable: bool,
}

impl ActivationSpec {
    /// `Activation(activation)` (`None`: `Activation('linear')`): unnamed, trainable.
    pub fn new(activation: impl Into<Option<Activation>>) -> Self {
        ActivationSpec {
            name: None,
            activation: activation.into(),
            trainable: true,
        }
    }

    spec_setters!(name, activation, trainable);

    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            (
                "activation",
                PyValue::str(self.activation.map_or("linear", Activation::as_str)),
            ),
        ])
    }

    /// Reads an `Activation` `config`; the name is kept as written. An activation this
    /// crate does not name is an error at `config.activation`.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        Ok(ActivationSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            activation: read_activation(&c.req("activation")?)?,
            trainable: c.req("trainable")?.bool()?,
        })
    }
}

/// Keras' `ReLU(max_value=None, negative_slope=0.0, threshold=0.0)` layer:
/// `f(x) = max_value` for `x >= max_value`, `x` for `threshold <= x < max_value`,
/// `negative_slope * (x - threshold)` otherwise.
///
/// Keras writes its config as `{"name", "trainable", "dtype", "max_value",
/// "negative_slope", "threshold"}` with the values as given to it (`ReLU()` writes
/// `"max_value": null, "negative_slope": 0.0, "threshold": 0.0`), and no `build_config`.
/// The values here are floats, written as Python writes floats (`6.0`); an int given in
/// Python (`ReLU(max_value=6)`, written `6`) is not described here (reading it is an error
/// at that value).
///
/// Keras refuses a negative `max_value`, `negative_slope` or `threshold`; NaN is refused
/// here too (Keras' `< 0.0` checks let it through).
///
/// ```
/// use hgq_config::model_json::QDenseSpec;
/// use hgq_config::sequential::{ChainModelSpec, ReluSpec};
/// let m = ChainModelSpec::new([4])
///     .layer(QDenseSpec::new(3))
///     .layer(ReluSpec::new())
///     .layer(ReluSpec::new().max_value(6.0).name("relu6"));
/// assert_eq!(m.layer_names().unwrap(), ["q_dense", "re_lu", "relu6"]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""registered_name": null}, "max_value": null, "negative_slope": 0.0, "threshold": 0.0}, "registered_name": null, "name": "re_lu", "inbound_nodes""#));
/// assert!(json.contains(r#""max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0}"#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// let bad = ChainModelSpec::new([4]).layer(ReluSpec::new().negative_slope(-0.1));
/// assert_eq!(bad.to_json().unwrap_err().path(), Some("$.config.layers[1].config.negative_slope"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReluSpec {
    /// The layer name; `None` takes Keras' automatic name (`re_lu`, `re_lu_1`, ...).
    pub name: Option<String>,
    /// The saturation value (`None`: unbounded); at least 0.
    pub max_value: Option<f64>,
    /// The slope below `threshold`; at least 0.
    pub negative_slope: f64,
    /// Where the activation starts; at least 0.
    pub threshold: f64,
    /// `trainable` as written (it changes nothing in a layer without weights).
    pub trainable: bool,
}

impl Default for ReluSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ReluSpec {
    /// `ReLU()`: unnamed, unbounded, `negative_slope=0.0`, `threshold=0.0`, trainable.
    pub fn new() -> Self {
        ReluSpec {
            name: None,
            max_value: None,
            negative_slope: 0.0,
            threshold: 0.0,
            trainable: true,
        }
    }

    spec_setters!(name, trainable);

    /// Sets `max_value` (`None`: unbounded).
    pub fn max_value(mut self, m: impl Into<Option<f64>>) -> Self {
        self.max_value = m.into();
        self
    }

    /// Sets `negative_slope`.
    pub fn negative_slope(mut self, s: f64) -> Self {
        self.negative_slope = s;
        self
    }

    /// Sets `threshold`.
    pub fn threshold(mut self, t: f64) -> Self {
        self.threshold = t;
        self
    }

    /// Checks the values as Keras does (and refuses NaN); errors name
    /// `{at}.config.max_value` etc.
    pub(crate) fn check(&self, at: &str) -> Result<()> {
        let values = [
            ("max_value", self.max_value),
            ("negative_slope", Some(self.negative_slope)),
            ("threshold", Some(self.threshold)),
        ];
        for (key, v) in values {
            let Some(v) = v else { continue };
            if v.is_nan() || v < 0.0 {
                return Err(value_err(
                    format!("{at}.config.{key}"),
                    format!(
                        "{key} of a ReLU must be a number of at least 0, not {}",
                        float_repr(v)
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            (
                "max_value",
                self.max_value.map_or(PyValue::Null, PyValue::Float),
            ),
            ("negative_slope", PyValue::Float(self.negative_slope)),
            ("threshold", PyValue::Float(self.threshold)),
        ])
    }

    /// Reads a `ReLU` `config`; the name is kept as written. The values must be floats
    /// (an int, as Keras writes `ReLU(max_value=6)`, is an error at that value) and not
    /// NaN; range errors are [`Self::check`]'s.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        let float = |a: &At<'_>| -> Result<f64> {
            match a.v {
                PyValue::Float(_) => a.number(),
                PyValue::Int(i) => Err(a.value_err(format!(
                    "the int {i}: Keras writes a ReLU's values as given, and only floats \
                     (`{}`) are described here",
                    float_repr(*i as f64)
                ))),
                _ => Err(a.type_err("float")),
            }
        };
        Ok(ReluSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            max_value: c.req("max_value")?.nullable(float)?,
            negative_slope: float(&c.req("negative_slope")?)?,
            threshold: float(&c.req("threshold")?)?,
            trainable: c.req("trainable")?.bool()?,
        })
    }
}
