//! A whole Keras model document for a chain of `QDense` layers, written byte for byte as
//! hgq2's `model.to_json()` writes it.
//!
//! [`DenseModelSpec`] describes `Input(input_dim) -> QDense -> ... -> QDense` as a Keras
//! functional model; [`DenseModelSpec::to_json`] gives exactly the text that
//! `keras.Model(inp, out).to_json()` gives for the same model (hgq2 0.2.0, Keras 3.15),
//! and [`DenseModelSpec::from_json`] reads such a document back. The demo network,
//!
//! ```python
//! import os; os.environ['KERAS_BACKEND'] = 'jax'
//! import keras
//! from hgq.layers import QDense
//! inp = keras.Input((64,)); x = QDense(32, activation='relu')(inp); out = QDense(10)(x)
//! m = keras.Model(inp, out); print(m.to_json())
//! ```
//!
//! is [`DenseModelSpec::demo`]:
//!
//! ```
//! use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
//! let m = DenseModelSpec::new(64)
//!     .layer(QDenseSpec::new(32).activation(Activation::Relu))
//!     .layer(QDenseSpec::new(10));
//! assert_eq!(m, DenseModelSpec::demo());
//! let json = m.to_json().unwrap();
//! assert!(json.starts_with(r#"{"module": "keras.src.models.functional", "class_name": "Functional", "config": {"name": "functional""#));
//! assert_eq!(DenseModelSpec::from_json(&json).unwrap(), m);
//!
//! // Its quantizers, with the layers that hold them.
//! let km = m.to_keras_model().unwrap();
//! assert_eq!(km.quantizers.len(), 6);
//! assert_eq!(km.quantizers[0].layer_path(), "functional/q_dense");
//! assert_eq!(km.quantizers[0].key, "iq_conf");
//! assert_eq!(km.to_json(), json);
//! ```
//!
//! ## What is written
//!
//! Every layer is written as the reference writes a *built* model: `parallelization_factor`
//! resolved (the reference's `-1` becomes 1 for a 2-D input), `activation=None` as
//! `"linear"`, `beta0` as `Constant(float(beta0))`, `bq_conf` `null` without a bias,
//! `iq_conf` / `oq_conf` `null` when that quantizer is off. Kernel and bias initializers,
//! regularizers and constraints are Keras' defaults (`GlorotUniform()`, `Zeros()`, none);
//! the dtype is `float32`.
//!
//! Unnamed layers take Keras' automatic names in a fresh session: the first unnamed `QDense`
//! is `q_dense`, the next `q_dense_1`, and so on (named layers do not count); the model is
//! `functional` and the input `input_layer` unless named.
//!
//! ## Checking with the reference
//!
//! The test data (`tests/data/models/*.json`, made by `tests/data/models/make_models.py`)
//! are the reference's own output, and the tests check this module writes the same bytes.
//! That Keras loads what this module writes was checked by hand (hgq2 0.2.0, Keras 3.15.1,
//! jax 0.10.2), with the JSON in `model.json`:
//!
//! ```sh
//! KERAS_BACKEND=jax python -c "
//! import sys, numpy as np, keras, hgq.layers
//! s = open(sys.argv[1]).read()
//! m = keras.models.model_from_json(s)
//! y = m(np.zeros((2,) + m.input_shape[1:], 'float32'))
//! assert m.built and m.to_json() == s, 'differs'
//! print('ok', y.shape)
//! " model.json
//! ```
//!
//! It printed `ok` for the demo model, for the models of the test data, and for a chain with
//! every [`Activation`]. One limit is the reference's own: hgq2 0.2.0 cannot build a layer
//! with a `float` quantizer configuration (`FloatPointQuantizer` refuses the `is_weight` key
//! its config carries), so such a document is written faithfully but does not load.
//!
//! Models with convolutions, pooling, `Flatten` and `Reshape`, on inputs of any rank, are
//! [`ChainModelSpec`]; a [`DenseModelSpec`] is written and read as that chain.
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::de::{At, dict, envelope};
use crate::error::{ConfigError, Result};
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model::{KerasModel, find_quantizers};
use crate::pyjson::PyValue;
use crate::quantizer::{Flavor, Params, Place, QType, QuantizerConfig};
use crate::sequential::{ChainModelSpec, LayerSpec};

/// The module of hgq2's `QDense`.
pub const QDENSE_MODULE: &str = "hgq.layers.core.dense";
/// The module a functional model is written with.
pub const FUNCTIONAL_MODULE: &str = "keras.src.models.functional";
/// Keras' automatic name of a functional model (first in a session).
pub const DEFAULT_MODEL_NAME: &str = "functional";
/// Keras' automatic name of an input layer (first in a session).
pub const DEFAULT_INPUT_NAME: &str = "input_layer";
/// The prefix of Keras' automatic `QDense` names (`q_dense`, `q_dense_1`, ...).
pub const QDENSE_AUTO_PREFIX: &str = "q_dense";

/// A Keras activation, as `activations.serialize` names it.
///
/// `activation=None` and `'linear'` are the identity, written `"linear"`: that is
/// `Option::<Activation>::None` in [`QDenseSpec::activation`].
///
/// ```
/// use hgq_config::model_json::Activation;
/// assert_eq!(Activation::LeakyRelu.as_str(), "leaky_relu");
/// assert_eq!("silu".parse::<Activation>().unwrap(), Activation::Silu);
/// assert!("linear".parse::<Activation>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `relu`.
    Relu,
    /// `relu6`.
    Relu6,
    /// `leaky_relu` (default slope).
    LeakyRelu,
    /// `sigmoid`.
    Sigmoid,
    /// `hard_sigmoid`.
    HardSigmoid,
    /// `tanh`.
    Tanh,
    /// `softmax`.
    Softmax,
    /// `log_softmax`.
    LogSoftmax,
    /// `softplus`.
    Softplus,
    /// `softsign`.
    Softsign,
    /// `elu`.
    Elu,
    /// `selu`.
    Selu,
    /// `gelu`.
    Gelu,
    /// `silu` (Keras writes `swish` as `silu`).
    Silu,
    /// `hard_silu`.
    HardSilu,
    /// `mish`.
    Mish,
    /// `exponential`.
    Exponential,
    /// `log_sigmoid`.
    LogSigmoid,
    /// `hard_tanh`.
    HardTanh,
}

impl Activation {
    /// Every activation.
    pub const ALL: [Activation; 19] = [
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu,
        Activation::Sigmoid,
        Activation::HardSigmoid,
        Activation::Tanh,
        Activation::Softmax,
        Activation::LogSoftmax,
        Activation::Softplus,
        Activation::Softsign,
        Activation::Elu,
        Activation::Selu,
        Activation::Gelu,
        Activation::Silu,
        Activation::HardSilu,
        Activation::Mish,
        Activation::Exponential,
        Activation::LogSigmoid,
        Activation::HardTanh,
    ];

    /// The name Keras writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Sigmoid => "sigmoid",
            Activation::HardSigmoid => "hard_sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
            Activation::LogSoftmax => "log_softmax",
            Activation::Softplus => "softplus",
            Activation::Softsign => "softsign",
            Activation::Elu => "elu",
            Activation::Selu => "selu",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
            Activation::HardSilu => "hard_silu",
            Activation::Mish => "mish",
            Activation::Exponential => "exponential",
            Activation::LogSigmoid => "log_sigmoid",
            Activation::HardTanh => "hard_tanh",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Activation {
    type Err = ConfigError;

    /// Reads a name Keras writes (`linear` is not an [`Activation`]: it is `None`).
    fn from_str(s: &str) -> Result<Self> {
        Activation::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ConfigError::Value {
                path: "$".into(),
                msg: format!("unknown activation `{s}`"),
            })
    }
}

/// The reference's `QuantizerConfig('default', place)`.
pub(crate) fn default_config(place: Place) -> QuantizerConfig {
    QuantizerConfig {
        flavor: Flavor::Plain,
        place,
        scaler: None,
        qnoise_factor: None,
        affine: None,
        params: Params::defaults(QType::default_for(place), place),
    }
}

/// One `QDense` layer: `QDense(units, activation=..., use_bias=..., beta0=..., iq_conf=...,
/// kq_conf=..., bq_conf=..., ...)`.
///
/// [`QDenseSpec::new`] gives the reference's defaults; the setters change one argument each.
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::{Place, QType, QuantizerConfig};
/// let iq = QuantizerConfig::builder(QType::Kif, Place::Datalane).i0(3).f0(4).build().unwrap();
/// let d = QDenseSpec::new(16)
///     .name("hidden")
///     .activation(Activation::Relu)
///     .beta0(3e-6)
///     .iq(iq.clone());
/// assert_eq!(d.iq, Some(iq));
/// assert!(d.use_bias && d.enable_ebops);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QDenseSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_dense`, `q_dense_1`, ...).
    pub name: Option<String>,
    /// Output size (`units`).
    pub units: usize,
    /// The activation; `None` is the identity (`"linear"`).
    pub activation: Option<Activation>,
    /// Whether the layer has a bias (`use_bias`).
    pub use_bias: bool,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`). The reference's default is
    /// `enable_iq`; it needs the input quantizer.
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
    /// `parallelization_factor`. A negative value (the default, `-1`, as in the reference)
    /// is written resolved, as a built layer writes it: the product of the output's sizes
    /// between the batch axis and the last one (1 for a 2-D input, 4 for an input
    /// `(batch, 4, 8)`). A document whose value equals that product reads as `-1`.
    pub parallelization_factor: i64,
}

impl QDenseSpec {
    /// `QDense(units)` with every other argument at the reference's default: unnamed, no
    /// activation, a bias, `beta0=1e-5`, EBOPs on, the `'default'` quantizer configurations
    /// for datalane (iq), weight (kq) and bias (bq), no output quantizer,
    /// `parallelization_factor=-1` (resolved when written).
    pub fn new(units: usize) -> Self {
        QDenseSpec {
            name: None,
            units,
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

    /// Sets `parallelization_factor` (negative: the reference's automatic value).
    pub fn parallelization_factor(mut self, p: i64) -> Self {
        self.parallelization_factor = p;
        self
    }

    /// The `parallelization_factor` written for an output of `out_shape` (without batch):
    /// the field itself unless negative, else the product of `out_shape` without its last
    /// size.
    pub(crate) fn resolved_parallelization(&self, out_shape: &[usize]) -> i64 {
        if self.parallelization_factor < 0 {
            n_parallel(&out_shape[..out_shape.len().saturating_sub(1)])
        } else {
            self.parallelization_factor
        }
    }
}

/// The product of `dims` as the reference's `n_parallel` (saturating; shapes are checked
/// before this is written).
pub(crate) fn n_parallel(dims: &[usize]) -> i64 {
    dims.iter()
        .try_fold(1i64, |p, &d| p.checked_mul(i64::try_from(d).ok()?))
        .unwrap_or(i64::MAX)
}

/// A Keras functional model `Input((input_dim,)) -> QDense -> ... -> QDense`.
///
/// ```
/// use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
/// let m = DenseModelSpec::new(16)
///     .name("mlp")
///     .input_name("features")
///     .layer(QDenseSpec::new(8).name("hidden").activation(Activation::Tanh))
///     .layer(QDenseSpec::new(4).use_bias(false));
/// assert_eq!(m.layer_names().unwrap(), ["hidden", "q_dense"]);
/// let json = m.to_json().unwrap();
/// assert!(json.ends_with(r#""input_layers": ["features", 0, 0], "output_layers": ["q_dense", 0, 0]}, "registered_name": "Functional", "build_config": {"input_shape": null}, "compile_config": {}}"#));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DenseModelSpec {
    /// The model name (`functional` by default).
    pub name: String,
    /// The input layer's name (`input_layer` by default).
    pub input_name: String,
    /// The input size: the input is `(batch, input_dim)`.
    pub input_dim: usize,
    /// The `QDense` layers, input side first.
    pub layers: Vec<QDenseSpec>,
}

impl DenseModelSpec {
    /// A model on `input_dim` inputs with no layers yet, named as Keras names it.
    pub fn new(input_dim: usize) -> Self {
        DenseModelSpec {
            name: DEFAULT_MODEL_NAME.into(),
            input_name: DEFAULT_INPUT_NAME.into(),
            input_dim,
            layers: Vec::new(),
        }
    }

    /// The demo network: `Input(64) -> QDense(32, activation='relu') -> QDense(10)`.
    ///
    /// ```
    /// use hgq_config::model_json::DenseModelSpec;
    /// let m = DenseModelSpec::demo();
    /// assert_eq!(m.layer_names().unwrap(), ["q_dense", "q_dense_1"]);
    /// ```
    pub fn demo() -> Self {
        DenseModelSpec::new(64)
            .layer(QDenseSpec::new(32).activation(Activation::Relu))
            .layer(QDenseSpec::new(10))
    }

    /// Sets the model name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the input layer's name.
    pub fn input_name(mut self, name: impl Into<String>) -> Self {
        self.input_name = name.into();
        self
    }

    /// Appends a layer.
    pub fn layer(mut self, layer: QDenseSpec) -> Self {
        self.layers.push(layer);
        self
    }

    /// The layer names as written: explicit names, and Keras' automatic names for the rest.
    /// Errors as [`Self::validate`] does on names.
    pub fn layer_names(&self) -> Result<Vec<String>> {
        check_name(&self.name, "$.config.name")?;
        check_name(&self.input_name, "$.config.layers[0].config.name")?;
        let mut seen = HashSet::from([self.input_name.clone()]);
        let mut auto = 0usize;
        let mut names = Vec::with_capacity(self.layers.len());
        for (j, l) in self.layers.iter().enumerate() {
            let name = match &l.name {
                Some(n) => n.clone(),
                None => {
                    auto += 1;
                    auto_name(auto - 1)
                }
            };
            let path = format!("$.config.layers[{}].config.name", j + 1);
            check_name(&name, &path)?;
            if !seen.insert(name.clone()) {
                return Err(ConfigError::Value {
                    path,
                    msg: format!("layer name `{name}` is used twice"),
                });
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Checks what Keras would refuse (or what would not load): at least one layer, sizes of
    /// at least 1, names non-empty, without `/` and distinct, EBOPs only with an input
    /// quantizer. Errors name the JSON path of the offending value in the written document.
    pub fn validate(&self) -> Result<()> {
        let value_err = |path: String, msg: &str| ConfigError::Value {
            path,
            msg: msg.into(),
        };
        if self.layers.is_empty() {
            return Err(value_err(
                "$.config.layers".into(),
                "a model needs at least one QDense layer",
            ));
        }
        check_size(self.input_dim, "$.config.layers[0].config.batch_shape[1]")?;
        self.layer_names()?;
        for (j, l) in self.layers.iter().enumerate() {
            let at = format!("$.config.layers[{}].config", j + 1);
            check_size(l.units, &format!("{at}.units"))?;
            if l.enable_ebops && l.iq.is_none() {
                return Err(value_err(
                    format!("{at}.enable_ebops"),
                    "EBOPs need the input quantizer (enable_iq)",
                ));
            }
        }
        Ok(())
    }

    /// The whole document as a value (see [`Self::to_json`]).
    pub fn to_value(&self) -> Result<PyValue> {
        self.validate()?;
        ChainModelSpec::from(self.clone()).to_value()
    }

    /// The exact text of the reference's `model.to_json()` for this model.
    ///
    /// ```
    /// use hgq_config::model_json::{DenseModelSpec, QDenseSpec};
    /// let bad = DenseModelSpec::new(4).layer(QDenseSpec::new(0));
    /// let e = bad.to_json().unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[1].config.units"));
    /// ```
    pub fn to_json(&self) -> Result<String> {
        Ok(self.to_value()?.to_json())
    }

    /// The written document as a [`KerasModel`], with every quantizer configuration found
    /// and its layer path (`functional/q_dense`) and key (`iq_conf`, `kq_conf`, `bq_conf`,
    /// `oq_conf`).
    pub fn to_keras_model(&self) -> Result<KerasModel> {
        let root = self.to_value()?;
        let quantizers = find_quantizers(&root)?;
        Ok(KerasModel { root, quantizers })
    }

    /// Reads a document that [`Self::to_json`] (or the reference, for such a model) wrote.
    ///
    /// The fields are read, the model is written again and compared with the input: any
    /// difference (a key this type does not describe, another initializer, a branch in the
    /// graph, ...) is an error naming the first JSON path where they differ. A layer name
    /// equal to the automatic name it would get is read as `None`.
    ///
    /// ```
    /// use hgq_config::model_json::DenseModelSpec;
    /// let json = DenseModelSpec::demo().to_json().unwrap();
    /// let bad = json.replacen(r#""use_bias": true"#, r#""use_bias": true, "x": 1"#, 1);
    /// let e = DenseModelSpec::from_json(&bad).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[1].config.x"));
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&PyValue::parse(text)?)
    }

    /// Reads a parsed document (see [`Self::from_json`]): as a [`ChainModelSpec`], which
    /// must then be a 2-D input and `QDense` layers only.
    pub fn from_value(v: &PyValue) -> Result<Self> {
        DenseModelSpec::try_from(ChainModelSpec::from_value(v)?)
    }
}

impl TryFrom<ChainModelSpec> for DenseModelSpec {
    type Error = ConfigError;

    /// The chain as a [`DenseModelSpec`]: a 2-D input (`input_shape` of one size) and
    /// `QDense` layers only. Anything else is an error naming the path it has in the
    /// written document (`$.config.layers[0].config.batch_shape`,
    /// `$.config.layers[2].class_name`).
    ///
    /// ```
    /// use hgq_config::model_json::{DenseModelSpec, QDenseSpec};
    /// use hgq_config::sequential::{ChainModelSpec, FlattenSpec};
    /// let chain = ChainModelSpec::from(DenseModelSpec::demo());
    /// assert_eq!(DenseModelSpec::try_from(chain.clone()).unwrap(), DenseModelSpec::demo());
    /// let e = DenseModelSpec::try_from(chain.layer(FlattenSpec::new())).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[3].class_name"));
    /// ```
    fn try_from(c: ChainModelSpec) -> Result<Self> {
        let [input_dim] = c.input_shape[..] else {
            return Err(ConfigError::Value {
                path: "$.config.layers[0].config.batch_shape".into(),
                msg: format!(
                    "a chain of QDense layers takes a 2-D input, not {} dimensions",
                    c.input_shape.len() + 1
                ),
            });
        };
        let mut layers = Vec::with_capacity(c.layers.len());
        for (j, l) in c.layers.into_iter().enumerate() {
            match l {
                LayerSpec::QDense(d) => layers.push(d),
                other => {
                    return Err(ConfigError::Value {
                        path: format!("$.config.layers[{}].class_name", j + 1),
                        msg: format!(
                            "{} in a chain of QDense layers",
                            other.class_name().unwrap_or("a layer")
                        ),
                    });
                }
            }
        }
        Ok(DenseModelSpec {
            name: c.name,
            input_name: c.input_name,
            input_dim,
            layers,
        })
    }
}

fn auto_name(k: usize) -> String {
    numbered(QDENSE_AUTO_PREFIX, k)
}

/// Keras' automatic name number `k` (from 0) for `prefix`: `prefix`, `prefix_1`, ...
pub(crate) fn numbered(prefix: &str, k: usize) -> String {
    if k == 0 {
        prefix.into()
    } else {
        format!("{prefix}_{k}")
    }
}

pub(crate) fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(ConfigError::Value {
            path: path.into(),
            msg: format!("name `{name}` must be non-empty and without `/`"),
        });
    }
    Ok(())
}

pub(crate) fn check_size(n: usize, path: &str) -> Result<()> {
    if n == 0 || i64::try_from(n).is_err() {
        return Err(ConfigError::Value {
            path: path.into(),
            msg: format!("size {n} is out of range (1 to 2^63 - 1)"),
        });
    }
    Ok(())
}

/// The `config` of a `QDense` layer whose output is `out_shape` (without batch).
pub(crate) fn qdense_config(l: &QDenseSpec, name: &str, out_shape: &[usize]) -> PyValue {
    let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
    dict([
        ("name", PyValue::str(name)),
        ("trainable", PyValue::Bool(l.trainable)),
        ("dtype", DTypePolicy::default().to_value()),
        ("units", PyValue::Int(l.units as i64)),
        (
            "activation",
            PyValue::str(l.activation.map_or("linear", Activation::as_str)),
        ),
        ("use_bias", PyValue::Bool(l.use_bias)),
        ("kernel_initializer", glorot_uniform()),
        ("bias_initializer", Initializer::Zeros.to_value()),
        ("kernel_regularizer", PyValue::Null),
        ("bias_regularizer", PyValue::Null),
        ("kernel_constraint", PyValue::Null),
        ("bias_constraint", PyValue::Null),
        ("quantization_config", PyValue::Null),
        ("enable_ebops", PyValue::Bool(l.enable_ebops)),
        ("ebops_factor", PyValue::Float(l.ebops_factor)),
        (
            "beta0",
            Initializer::Constant(Num::Float(l.beta0)).to_value(),
        ),
        ("enable_oq", PyValue::Bool(l.oq.is_some())),
        ("enable_iq", PyValue::Bool(l.iq.is_some())),
        ("oq_conf", conf(l.oq.as_ref())),
        ("iq_conf", conf(l.iq.as_ref())),
        ("kq_conf", l.kq.to_value()),
        ("bq_conf", conf(l.use_bias.then_some(&l.bq))),
        (
            "parallelization_factor",
            PyValue::Int(l.resolved_parallelization(out_shape)),
        ),
    ])
}

/// Keras' default kernel initializer as written: `GlorotUniform()`.
pub(crate) fn glorot_uniform() -> PyValue {
    envelope(
        "keras.initializers",
        "GlorotUniform",
        dict([
            ("seed", PyValue::Null),
            ("input_axes", PyValue::Null),
            ("output_axes", PyValue::Null),
        ]),
        false,
    )
}

/// A positive size.
pub(crate) fn size(at: &At<'_>) -> Result<usize> {
    let n = at.int()?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| at.value_err(format!("size {n} is not positive")))
}

/// An activation as written (`"linear"` is `None`).
pub(crate) fn read_activation(at: &At<'_>) -> Result<Option<Activation>> {
    match at.str()? {
        "linear" => Ok(None),
        s => s
            .parse::<Activation>()
            .map(Some)
            .map_err(|_| at.value_err(format!("unknown activation `{s}`"))),
    }
}

/// `beta0` as written: `Constant(float(beta0))`.
pub(crate) fn read_beta0(at: &At<'_>) -> Result<f64> {
    match Initializer::read(at)? {
        Initializer::Constant(n) => Ok(n.as_f64()),
        _ => Err(at.value_err("expected a Constant initializer")),
    }
}

/// A `QDense` layer's `config`; the name is kept as written, `parallelization_factor` too.
pub(crate) fn read_qdense(at: &At<'_>) -> Result<QDenseSpec> {
    let mut c = at.dict()?;
    let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
    let activation = read_activation(&c.req("activation")?)?;
    let beta0 = read_beta0(&c.req("beta0")?)?;
    let use_bias = c.req("use_bias")?.bool()?;
    let bq = conf(c.req("bq_conf")?)?;
    Ok(QDenseSpec {
        name: Some(c.req("name")?.str()?.to_string()),
        units: size(&c.req("units")?)?,
        activation,
        use_bias,
        trainable: c.req("trainable")?.bool()?,
        beta0,
        enable_ebops: c.req("enable_ebops")?.bool()?,
        ebops_factor: c.req("ebops_factor")?.float()?,
        iq: conf(c.req("iq_conf")?)?,
        kq: QuantizerConfig::read(&c.req("kq_conf")?)?,
        bq: bq.unwrap_or_else(|| default_config(Place::Bias)),
        oq: conf(c.req("oq_conf")?)?,
        parallelization_factor: c.req("parallelization_factor")?.int()?,
    })
}

/// The first path where `a` (read) and `b` (written) differ, if any.
pub(crate) fn first_difference(a: &PyValue, b: &PyValue, path: String) -> Option<String> {
    match (a, b) {
        (PyValue::Dict(x), PyValue::Dict(y)) => {
            for (j, (k, va)) in x.iter().enumerate() {
                let p = format!("{path}.{k}");
                match y.get(j) {
                    Some((kb, vb)) if kb == k => {
                        if let Some(d) = first_difference(va, vb, p) {
                            return Some(d);
                        }
                    }
                    _ => return Some(p),
                }
            }
            // `b` has keys `a` lacks.
            y.get(x.len()).map(|(k, _)| format!("{path}.{k}"))
        }
        (PyValue::List(x), PyValue::List(y)) => {
            for (j, va) in x.iter().enumerate() {
                let p = format!("{path}[{j}]");
                match y.get(j) {
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, p) {
                            return Some(d);
                        }
                    }
                    None => return Some(p),
                }
            }
            (y.len() > x.len()).then(|| format!("{path}[{}]", x.len()))
        }
        // Floats by bits: NaN equals NaN, 0.0 differs from -0.0 (their text differs).
        (PyValue::Float(x), PyValue::Float(y)) => (x.to_bits() != y.to_bits()).then_some(path),
        _ => (a != b).then_some(path),
    }
}
