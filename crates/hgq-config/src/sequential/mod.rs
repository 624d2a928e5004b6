//! A whole Keras model document for a chain of layers (`QDense`, `QConv1D`/`QConv2D`, the
//! pooling layers, `Flatten`, `Reshape`, `QBatchNormalization`, Keras' `Activation` and
//! `ReLU`, `QEinsumDense`, `QEinsumDenseBatchnorm`, `QBatchNormDense`, `QUnaryFunctionLUT`,
//! `QSoftmax`) on an input of any rank, or
//! for a graph of them with merge layers (`QAdd`, `QSubtract`, `QMultiply`, `QMaximum`,
//! `QMinimum`, `QAveragePow2`), several inputs and outputs ([`GraphModelSpec`]), written
//! byte for byte as hgq2's `model.to_json()` writes it.
//!
//! [`ChainModelSpec`] describes `Input(shape) -> layer -> ... -> layer` as a Keras functional
//! model; [`ChainModelSpec::to_json`] gives exactly the text that
//! `keras.Model(inp, out).to_json()` gives for the same model (hgq2 0.2.0, Keras 3.15), and
//! [`ChainModelSpec::from_json`] reads such a document back. The same chain as a Keras
//! `Sequential` (`keras.Sequential([keras.Input(shape), ...])`, whose document lists the same
//! layer configs without `inbound_nodes`) is written by
//! [`ChainModelSpec::to_keras_sequential_json`] and read by
//! [`ChainModelSpec::from_keras_sequential_json`] (and by `from_json`, which takes either form).
//! The digits CNN,
//!
//! ```python
//! import os; os.environ['KERAS_BACKEND'] = 'jax'
//! import keras
//! from hgq.layers import QConv2D, QDense, QMaxPooling2D
//! inp = keras.Input((64,))
//! x = keras.layers.Reshape((8, 8, 1))(inp)
//! x = QConv2D(4, (3, 3), activation='relu')(x)
//! x = QMaxPooling2D((2, 2))(x)
//! x = keras.layers.Flatten()(x)
//! out = QDense(10)(x)
//! print(keras.Model(inp, out).to_json())
//! ```
//!
//! is
//!
//! ```
//! use hgq_config::model_json::{Activation, QDenseSpec};
//! use hgq_config::sequential::{ChainModelSpec, FlattenSpec, QConvSpec, QPoolSpec, ReshapeSpec};
//! let m = ChainModelSpec::new([64])
//!     .layer(ReshapeSpec::new([8, 8, 1]))
//!     .layer(QConvSpec::new(4, [3, 3]).activation(Activation::Relu))
//!     .layer(QPoolSpec::max([2, 2]))
//!     .layer(FlattenSpec::new())
//!     .layer(QDenseSpec::new(10));
//! assert_eq!(
//!     m.layer_names().unwrap(),
//!     ["reshape", "q_conv2d", "q_max_pooling2d", "flatten", "q_dense"]
//! );
//! let shapes = m.output_shapes().unwrap();
//! assert_eq!(shapes, [vec![8, 8, 1], vec![6, 6, 4], vec![3, 3, 4], vec![36], vec![10]]);
//! let json = m.to_json().unwrap();
//! assert!(json.contains(r#""parallelization_factor": 36}"#)); // 6 x 6 output positions
//! assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
//! ```
//!
//! ## What is written
//!
//! Every layer is written as the reference writes a *built* model: the `__keras_tensor__`
//! shapes of `inbound_nodes` and `build_config.input_shape` are the input shapes Keras
//! computes (Keras' formulas for `valid`, `same` and `causal` padding with strides and
//! dilation, computed here); `parallelization_factor` of `QDense` and the convolutions is
//! resolved (see [`QDenseSpec::parallelization_factor`] and
//! [`QConvSpec::parallelization_factor`]); `activation=None` is `"linear"`, `beta0` is
//! `Constant(float(beta0))`, `bq_conf` is `null` without a bias, `iq_conf` / `oq_conf` are
//! `null` when that quantizer is off; `data_format` is `channels_last` (the only one
//! described here); a pooling layer's `strides=None` is written as its `pool_size`. Kernel
//! and bias initializers, regularizers and constraints are Keras' defaults; the dtype is
//! `float32`.
//!
//! Some of what the reference writes is not what one might expect:
//!
//! - the pooling layers do not write `parallelization_factor` at all (hgq2's `QBasePooling`
//!   takes the argument but its `get_config` leaves it out), so [`QPoolSpec`] has no such
//!   field: a value given in Python is lost on saving;
//! - `Reshape`, `Activation` and `ReLU` have no `build_config` (Keras builds them when they
//!   are made);
//! - `ReLU` writes its `max_value`, `negative_slope` and `threshold` as given to it
//!   (`ReLU()`: `null`, `0.0`, `0.0`; see [`ReluSpec`]), `Activation` its activation as
//!   `QDense` does (`"linear"` for `None`);
//! - the convolutions write `activity_regularizer` (always `null`) and no
//!   `quantization_config`, `QDense` the other way round;
//! - the global pooling layers write `keepdims`, and no `pool_size`, `strides` or `padding`;
//! - a merge layer writes its input quantizers as `iq_confs`, one per input once built (see
//!   [`QMergeSpec`]);
//! - `QBatchNormalization` writes Keras' `BatchNormalization` config (`beta_initializer`,
//!   ..., `synchronized`, `renorm`, `renorm_clipping`, `renorm_momentum`) and then hgq2's
//!   keys (`enable_ebops`, ..., `iq_conf`, `kq_conf`, `bq_conf`; no `parallelization_factor`),
//!   and is called with `"kwargs": {"mask": null}` (see [`QBatchNormSpec`]);
//! - `QEinsumDense` writes `output_shape` as Keras' partial output shape (a list, `null` for
//!   a size left to the input) and its `parallelization_factor` resolved from the input
//!   ([`einsum_shapes`]); `QEinsumDenseBatchnorm` writes exactly `QEinsumDense`'s keys (its
//!   normalization's arguments are lost: see [`QEinsumDenseBatchnormSpec`]);
//!   `QBatchNormDense` writes `QDense`'s and then its normalization's
//!   ([`QBatchNormDenseSpec`]);
//! - `QUnaryFunctionLUT` and `QSoftmax` write their table quantizers as hgq2 changes them
//!   (one bit width per element, `k0=0`, `SAT`, `RND_CONV`: see [`QUnaryFunctionLUTSpec`],
//!   [`QSoftmaxSpec`]); `QSoftmax` writes its axes sorted and counted from the batch axis,
//!   its `parallelization_factor` as given, and is called with `"kwargs": {"mask": null}`.
//!
//! Unnamed layers take Keras' automatic names in a fresh session, counted per class
//! (named layers do not count): `q_dense`, `q_conv1d`, `q_conv2d`, `q_max_pooling1d`,
//! `q_max_pooling2d`, `q_average_pooling1d`, `q_average_pooling2d`,
//! `q_global_max_pooling1d`, `q_global_max_pooling2d`, `q_global_average_pooling1d`,
//! `q_global_average_pooling2d`, `flatten`, `reshape`, `q_add`, `q_subtract`, `q_multiply`,
//! `q_maximum`, `q_minimum`, `q_average_pow2`, `q_batch_normalization`, `activation`,
//! `re_lu` (Keras' snake case of `ReLU`), `q_einsum_dense`, `q_einsum_dense_batchnorm`,
//! `q_batch_norm_dense`, `q_unary_function_lut`, `q_softmax`, then `q_conv2d_1`,
//! `q_conv2d_2`, ... The model is `functional` and the input `input_layer` unless named.
//! A merge layer in a chain takes the one layer before it (`QAdd()([x])`, which Keras
//! allows; `QSubtract` needs two inputs, so only a graph has it).
//!
//! ## Checking with the reference
//!
//! The test data (`tests/data/models/*.json`, made by `tests/data/models/make_models.py`)
//! are the reference's own output, and the tests check this module writes the same bytes.
//! That Keras loads what this module writes, and writes it back unchanged, was checked by
//! hand (hgq2 0.2.0, Keras 3.15.1, jax 0.10.2) with the script in
//! [`model_json`](crate::model_json#checking-with-the-reference), for every model of the
//! test data as this module writes it and for a few more (strides with groups, a pooling
//! window larger than its input with `same` padding, `keepdims`, output quantizers,
//! `Reshape((-1,))`, a chain of every class with automatic names), and for graphs: the
//! `graph_*` models of the test data, an input listed late, a chain with
//! `QBatchNormalization` and a one-input `QAveragePow2`, every merge class with
//! per-input `iq_confs` feeding a six-input `QMaximum`. Each loaded and wrote the
//! same text back; each ran a forward pass but those with a causal `QConv1D`. That limit is
//! the reference's own: hgq2 0.2.0 pads the input of a causal `QConv1D` before its input
//! quantizer, which was built for the unpadded shape, so such a layer with `enable_iq=True`
//! fails on its first call (a model built in Python fails the same way; without the input
//! quantizer it runs).
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::de::At;
use crate::error::{ConfigError, Result};
use crate::model::{KerasModel, find_quantizers};
use crate::model_json::{
    DEFAULT_INPUT_NAME, DEFAULT_MODEL_NAME, DenseModelSpec, QDENSE_AUTO_PREFIX, QDENSE_MODULE,
    QDenseSpec, check_name, check_size, first_difference, n_parallel, numbered, qdense_config,
    read_qdense, size,
};
use crate::pyjson::PyValue;

/// Builder setters of a wrapped layer spec (`field`), forwarded to it.
macro_rules! forward_setters {
    ($field:ident; $($(#[$m:meta])* $f:ident($t:ty);)*) => {
        $(
            $(#[$m])*
            pub fn $f(mut self, v: $t) -> Self {
                self.$field = self.$field.$f(v);
                self
            }
        )*
    };
}

mod activation;
mod batchnorm;
mod bn_dense;
mod conv;
mod einsum;
mod graph;
mod keras_seq;
mod merge;
mod pool;
mod reshape;
mod softmax;
mod table;

pub use activation::{ActivationSpec, ReluSpec};
pub use batchnorm::QBatchNormSpec;
pub use bn_dense::QBatchNormDenseSpec;
pub use conv::QConvSpec;
pub use einsum::{
    EinsumNormShapes, EinsumShapes, QEINSUM_DENSE_BATCHNORM_MODULE, QEINSUM_DENSE_MODULE,
    QEinsumDenseBatchnormSpec, QEinsumDenseSpec, einsum_norm_shapes, einsum_shapes,
};
pub use graph::{GraphModelSpec, InputSpec, NodeSpec};
pub use keras_seq::SEQUENTIAL_MODULE;
pub use merge::{MergeOp, QMergeSpec};
pub use pool::{PoolKind, PoolWindow, QPoolSpec};
pub use reshape::{FlattenSpec, ReshapeSpec};
pub use softmax::{QSOFTMAX_MODULE, QSoftmaxSpec};
pub use table::{QUNARY_FUNCTION_LUT_MODULE, QUnaryFunctionLUTSpec};

/// The module of hgq2's `QConv1D` / `QConv2D`.
pub const QCONV_MODULE: &str = "hgq.layers.conv";
/// The module of hgq2's pooling layers.
pub const QPOOLING_MODULE: &str = "hgq.layers.pooling";
/// The module of hgq2's merge layers (`QAdd`, `QSubtract`, ...).
pub const QMERGE_MODULE: &str = "hgq.layers.ops.merge";
/// The module of hgq2's `QBatchNormalization`.
pub const QBATCHNORM_MODULE: &str = "hgq.layers.batch_normalization";
/// The module Keras writes for its own layers (`InputLayer`, `Flatten`, `Reshape`,
/// `Activation`, `ReLU`).
pub const KERAS_LAYERS_MODULE: &str = "keras.layers";

/// A convolution's or pooling layer's `padding`.
///
/// ```
/// use hgq_config::sequential::Padding;
/// assert_eq!(Padding::Same.as_str(), "same");
/// assert_eq!("causal".parse::<Padding>().unwrap(), Padding::Causal);
/// assert!("full".parse::<Padding>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Padding {
    /// `valid`: no padding; the window must fit in the input.
    #[default]
    Valid,
    /// `same`: padded so that the output has `ceil(n / stride)` positions.
    Same,
    /// `causal`: padded on the left only (`QConv1D` only); sizes as `same`.
    Causal,
}

impl Padding {
    /// The name Keras writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
            Padding::Causal => "causal",
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Padding {
    type Err = ConfigError;

    /// Reads a name Keras writes (`valid`, `same`, `causal`).
    fn from_str(s: &str) -> Result<Self> {
        [Padding::Valid, Padding::Same, Padding::Causal]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ConfigError::Value {
                path: "$".into(),
                msg: format!("unknown padding `{s}`"),
            })
    }
}

/// One layer of a [`ChainModelSpec`] or a [`GraphModelSpec`].
///
/// Every layer type converts into it (`From`), so [`ChainModelSpec::layer`] and
/// [`GraphModelSpec::node`] take any of them.
// Specs are made once per layer and matched by value: `QSoftmaxSpec`'s five quantizer
// configurations are not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LayerSpec {
    /// hgq2's `QDense` (on the last axis of an input of any rank).
    QDense(QDenseSpec),
    /// hgq2's `QConv1D` / `QConv2D`.
    QConv(QConvSpec),
    /// hgq2's `QMaxPooling1D/2D`, `QAveragePooling1D/2D` and their global forms.
    QPool(QPoolSpec),
    /// Keras' `Flatten`.
    Flatten(FlattenSpec),
    /// Keras' `Reshape`.
    Reshape(ReshapeSpec),
    /// hgq2's `QAdd`, `QSubtract`, `QMultiply`, `QMaximum`, `QMinimum`, `QAveragePow2`. In a
    /// chain it takes the one layer before it (`QAdd()([x])`, which Keras allows).
    QMerge(QMergeSpec),
    /// hgq2's `QBatchNormalization`.
    QBatchNorm(QBatchNormSpec),
    /// Keras' `Activation` layer (`keras.layers.Activation('relu')`).
    Activation(ActivationSpec),
    /// Keras' `ReLU` layer (`keras.layers.ReLU()`).
    Relu(ReluSpec),
    /// hgq2's `QEinsumDense`.
    QEinsumDense(QEinsumDenseSpec),
    /// hgq2's `QBatchNormDense` (module `hgq.layers.core.dense`, as `QDense`).
    QBatchNormDense(QBatchNormDenseSpec),
    /// hgq2's `QEinsumDenseBatchnorm`.
    QEinsumDenseBatchnorm(QEinsumDenseBatchnormSpec),
    /// hgq2's `QUnaryFunctionLUT`.
    QUnaryFunctionLut(QUnaryFunctionLUTSpec),
    /// hgq2's `QSoftmax`.
    QSoftmax(QSoftmaxSpec),
}

impl LayerSpec {
    /// The explicit layer name, if any (`None`: Keras' automatic name).
    pub fn name(&self) -> Option<&str> {
        match self {
            LayerSpec::QDense(l) => l.name.as_deref(),
            LayerSpec::QConv(l) => l.name.as_deref(),
            LayerSpec::QPool(l) => l.name.as_deref(),
            LayerSpec::Flatten(l) => l.name.as_deref(),
            LayerSpec::Reshape(l) => l.name.as_deref(),
            LayerSpec::QMerge(l) => l.name.as_deref(),
            LayerSpec::QBatchNorm(l) => l.name.as_deref(),
            LayerSpec::Activation(l) => l.name.as_deref(),
            LayerSpec::Relu(l) => l.name.as_deref(),
            LayerSpec::QEinsumDense(l) => l.name.as_deref(),
            LayerSpec::QBatchNormDense(l) => l.dense.name.as_deref(),
            LayerSpec::QEinsumDenseBatchnorm(l) => l.dense.name.as_deref(),
            LayerSpec::QUnaryFunctionLut(l) => l.name.as_deref(),
            LayerSpec::QSoftmax(l) => l.name.as_deref(),
        }
    }

    fn name_mut(&mut self) -> &mut Option<String> {
        match self {
            LayerSpec::QDense(l) => &mut l.name,
            LayerSpec::QConv(l) => &mut l.name,
            LayerSpec::QPool(l) => &mut l.name,
            LayerSpec::Flatten(l) => &mut l.name,
            LayerSpec::Reshape(l) => &mut l.name,
            LayerSpec::QMerge(l) => &mut l.name,
            LayerSpec::QBatchNorm(l) => &mut l.name,
            LayerSpec::Activation(l) => &mut l.name,
            LayerSpec::Relu(l) => &mut l.name,
            LayerSpec::QEinsumDense(l) => &mut l.name,
            LayerSpec::QBatchNormDense(l) => &mut l.dense.name,
            LayerSpec::QEinsumDenseBatchnorm(l) => &mut l.dense.name,
            LayerSpec::QUnaryFunctionLut(l) => &mut l.name,
            LayerSpec::QSoftmax(l) => &mut l.name,
        }
    }

    /// The Keras class name written (`QDense`, `QConv2D`, `QGlobalMaxPooling1D`, `Flatten`,
    /// `QAdd`, `QBatchNormalization`, `Activation`, `ReLU`, ...); `None` for a convolution
    /// or pooling of a rank other than 1 or 2.
    pub fn class_name(&self) -> Option<&'static str> {
        match self {
            LayerSpec::QDense(_) => Some("QDense"),
            LayerSpec::QConv(l) => l.class_name(),
            LayerSpec::QPool(l) => l.class_name(),
            LayerSpec::Flatten(_) => Some("Flatten"),
            LayerSpec::Reshape(_) => Some("Reshape"),
            LayerSpec::QMerge(l) => Some(l.class_name()),
            LayerSpec::QBatchNorm(_) => Some("QBatchNormalization"),
            LayerSpec::Activation(_) => Some("Activation"),
            LayerSpec::Relu(_) => Some("ReLU"),
            LayerSpec::QEinsumDense(_) => Some("QEinsumDense"),
            LayerSpec::QBatchNormDense(_) => Some("QBatchNormDense"),
            LayerSpec::QEinsumDenseBatchnorm(_) => Some("QEinsumDenseBatchnorm"),
            LayerSpec::QUnaryFunctionLut(_) => Some("QUnaryFunctionLUT"),
            LayerSpec::QSoftmax(_) => Some("QSoftmax"),
        }
    }

    /// The module written with the class.
    pub fn module(&self) -> &'static str {
        match self {
            LayerSpec::QDense(_) | LayerSpec::QBatchNormDense(_) => QDENSE_MODULE,
            LayerSpec::QConv(_) => QCONV_MODULE,
            LayerSpec::QPool(_) => QPOOLING_MODULE,
            LayerSpec::Flatten(_)
            | LayerSpec::Reshape(_)
            | LayerSpec::Activation(_)
            | LayerSpec::Relu(_) => KERAS_LAYERS_MODULE,
            LayerSpec::QMerge(_) => QMERGE_MODULE,
            LayerSpec::QBatchNorm(_) => QBATCHNORM_MODULE,
            LayerSpec::QEinsumDense(_) => QEINSUM_DENSE_MODULE,
            LayerSpec::QEinsumDenseBatchnorm(_) => QEINSUM_DENSE_BATCHNORM_MODULE,
            LayerSpec::QUnaryFunctionLut(_) => QUNARY_FUNCTION_LUT_MODULE,
            LayerSpec::QSoftmax(_) => QSOFTMAX_MODULE,
        }
    }

    /// The first automatic name Keras gives the class in a fresh session (`q_dense`,
    /// `q_conv2d`, `q_global_average_pooling1d`, `flatten`, `q_add`,
    /// `q_batch_normalization`, `activation`, `re_lu`, ...), the prefix of the later ones
    /// (`q_conv2d_1`); `None` where [`Self::class_name`] is.
    pub fn auto_name_prefix(&self) -> Option<&'static str> {
        if let LayerSpec::QMerge(m) = self {
            return Some(m.op.auto_name_prefix());
        }
        Some(match self.class_name()? {
            "QDense" => QDENSE_AUTO_PREFIX,
            "QConv1D" => "q_conv1d",
            "QConv2D" => "q_conv2d",
            "QMaxPooling1D" => "q_max_pooling1d",
            "QMaxPooling2D" => "q_max_pooling2d",
            "QAveragePooling1D" => "q_average_pooling1d",
            "QAveragePooling2D" => "q_average_pooling2d",
            "QGlobalMaxPooling1D" => "q_global_max_pooling1d",
            "QGlobalMaxPooling2D" => "q_global_max_pooling2d",
            "QGlobalAveragePooling1D" => "q_global_average_pooling1d",
            "QGlobalAveragePooling2D" => "q_global_average_pooling2d",
            "Flatten" => "flatten",
            "Reshape" => "reshape",
            "QBatchNormalization" => "q_batch_normalization",
            "Activation" => "activation",
            "ReLU" => "re_lu",
            "QEinsumDense" => "q_einsum_dense",
            "QBatchNormDense" => "q_batch_norm_dense",
            "QEinsumDenseBatchnorm" => "q_einsum_dense_batchnorm",
            "QUnaryFunctionLUT" => "q_unary_function_lut",
            "QSoftmax" => "q_softmax",
            _ => return None,
        })
    }

    /// Whether the layer is hgq2's (registered as `hgq>Class`) rather than Keras' own.
    fn is_hgq(&self) -> bool {
        !matches!(
            self,
            LayerSpec::Flatten(_)
                | LayerSpec::Reshape(_)
                | LayerSpec::Activation(_)
                | LayerSpec::Relu(_)
        )
    }

    /// Whether Keras writes a `build_config`: not for the layers it builds when they are
    /// made (`Reshape`, `Activation`, `ReLU`).
    fn writes_build_config(&self) -> bool {
        !matches!(
            self,
            LayerSpec::Reshape(_) | LayerSpec::Activation(_) | LayerSpec::Relu(_)
        )
    }

    /// Whether Keras calls the layer with `"kwargs": {"mask": null}` (its `call` takes a
    /// mask): `QBatchNormalization` and `QSoftmax`.
    fn takes_mask(&self) -> bool {
        matches!(self, LayerSpec::QBatchNorm(_) | LayerSpec::QSoftmax(_))
    }

    /// Where Keras' shape of the layer's output, for an input of `input`, is not the real
    /// one (an einsum layer's `None` sizes or `...` axes: see
    /// [`EinsumShapes::keras_output`]), so that Keras builds the layers after it wrong: the
    /// error, at a path under `at`.
    fn keras_shape_err(&self, input: &[usize], at: &str) -> Option<ConfigError> {
        let l = match self {
            LayerSpec::QEinsumDense(l) => l,
            LayerSpec::QEinsumDenseBatchnorm(l) => &l.dense,
            _ => return None,
        };
        let shapes = l.shapes(input).ok()?;
        let (path, msg) = l.keras_shape_problem(&shapes, at)?;
        Some(value_err(
            path,
            format!(
                "{msg}, and another layer takes the output: Keras would build it for that \
                 shape (only a model output may have it)"
            ),
        ))
    }

    /// The output shape (without batch) for an input of `input` (without batch); errors
    /// name paths under `at` (`$.config.layers[j]`).
    fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        let dense = |l: &QDenseSpec| -> Result<Vec<usize>> {
            check_size(l.units, &format!("{at}.config.units"))?;
            let mut out = input.to_vec();
            *out.last_mut().expect("inputs have a rank of 1 or more") = l.units;
            Ok(out)
        };
        match self {
            LayerSpec::QDense(l) => dense(l),
            LayerSpec::QBatchNormDense(l) => {
                l.check(at)?;
                dense(&l.dense)
            }
            LayerSpec::QEinsumDense(l) => Ok(l.shapes_at(input, at)?.output),
            LayerSpec::QEinsumDenseBatchnorm(l) => l.output_shape(input, at),
            LayerSpec::QUnaryFunctionLut(l) => {
                l.check(at)?;
                Ok(input.to_vec())
            }
            LayerSpec::QSoftmax(l) => l.output_shape(input, at),
            LayerSpec::QConv(l) => l.output_shape(input, at),
            LayerSpec::QPool(l) => l.output_shape(input, at),
            LayerSpec::Flatten(_) => {
                let n = product(input).ok_or_else(|| {
                    value_err(format!("{at}.build_config.input_shape"), "too many values")
                })?;
                Ok(vec![n])
            }
            LayerSpec::Reshape(l) => l.output_shape(input, at),
            LayerSpec::QMerge(l) => l.output_shape(&[input], at),
            LayerSpec::QBatchNorm(l) => l.output_shape(input, at),
            LayerSpec::Activation(_) => Ok(input.to_vec()),
            LayerSpec::Relu(l) => {
                l.check(at)?;
                Ok(input.to_vec())
            }
        }
    }

    /// The layer's `config`, for an input of `input` (the first one's), an output of
    /// `output` and `n_inputs` inputs.
    fn config_value(
        &self,
        name: &str,
        input: &[usize],
        output: &[usize],
        n_inputs: usize,
    ) -> PyValue {
        match self {
            LayerSpec::QEinsumDense(l) => l.config_value(name, input),
            LayerSpec::QBatchNormDense(l) => l.config_value(name, output),
            LayerSpec::QEinsumDenseBatchnorm(l) => l.config_value(name, input),
            LayerSpec::QUnaryFunctionLut(l) => l.config_value(name),
            LayerSpec::QSoftmax(l) => l.config_value(name, input),
            LayerSpec::QDense(l) => qdense_config(l, name, output),
            LayerSpec::QConv(l) => l.config_value(name, output),
            LayerSpec::QPool(l) => l.config_value(name),
            LayerSpec::Flatten(l) => l.config_value(name),
            LayerSpec::Reshape(l) => l.config_value(name),
            LayerSpec::QMerge(l) => l.config_value(name, n_inputs),
            LayerSpec::QBatchNorm(l) => l.config_value(name),
            LayerSpec::Activation(l) => l.config_value(name),
            LayerSpec::Relu(l) => l.config_value(name),
        }
    }

    /// Whether EBOPs are on without the input quantizer they need.
    fn ebops_without_iq(&self) -> bool {
        match self {
            LayerSpec::QDense(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QConv(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QPool(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QMerge(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QBatchNorm(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QEinsumDense(l) => l.enable_ebops && l.iq.is_none(),
            LayerSpec::QBatchNormDense(l) => l.dense.enable_ebops && l.dense.iq.is_none(),
            LayerSpec::QEinsumDenseBatchnorm(l) => l.dense.enable_ebops && l.dense.iq.is_none(),
            LayerSpec::QUnaryFunctionLut(l) => l.enable_ebops && l.iq.is_none(),
            // QSoftmax's EBOPs count its tables' quantizers: on without its input quantizer.
            LayerSpec::QSoftmax(_) => false,
            LayerSpec::Flatten(_)
            | LayerSpec::Reshape(_)
            | LayerSpec::Activation(_)
            | LayerSpec::Relu(_) => false,
        }
    }

    /// What a written document holds resolved, read back as given by default: a negative
    /// (automatic) `parallelization_factor` where the written value is the automatic one
    /// for an input of `input` and an output of `output`, and `QSoftmax`'s last axis as
    /// `-1`.
    fn normalize_read(&mut self, input: &[usize], output: &[usize]) {
        let auto_dense = n_parallel(&output[..output.len().saturating_sub(1)]);
        match self {
            LayerSpec::QDense(l) if l.parallelization_factor == auto_dense => {
                l.parallelization_factor = -1;
            }
            LayerSpec::QBatchNormDense(l) if l.dense.parallelization_factor == auto_dense => {
                l.dense.parallelization_factor = -1;
            }
            LayerSpec::QEinsumDense(l) => normalize_einsum(l, input),
            LayerSpec::QEinsumDenseBatchnorm(l) => normalize_einsum(&mut l.dense, input),
            LayerSpec::QSoftmax(l) => l.normalize_axes(input),
            LayerSpec::QConv(l) if l.parallelization_factor == l.n_parallel(output) => {
                l.parallelization_factor = -1;
            }
            _ => {}
        }
    }
}

/// An einsum layer's automatic `parallelization_factor` read as `-1`.
fn normalize_einsum(l: &mut QEinsumDenseSpec, input: &[usize]) {
    if l.parallelization_factor >= 0
        && let Ok(s) = l.shapes(input)
        && i64::try_from(s.n_parallel) == Ok(l.parallelization_factor)
    {
        l.parallelization_factor = -1;
    }
}

impl From<QDenseSpec> for LayerSpec {
    fn from(l: QDenseSpec) -> Self {
        LayerSpec::QDense(l)
    }
}

impl From<QConvSpec> for LayerSpec {
    fn from(l: QConvSpec) -> Self {
        LayerSpec::QConv(l)
    }
}

impl From<QPoolSpec> for LayerSpec {
    fn from(l: QPoolSpec) -> Self {
        LayerSpec::QPool(l)
    }
}

impl From<FlattenSpec> for LayerSpec {
    fn from(l: FlattenSpec) -> Self {
        LayerSpec::Flatten(l)
    }
}

impl From<ReshapeSpec> for LayerSpec {
    fn from(l: ReshapeSpec) -> Self {
        LayerSpec::Reshape(l)
    }
}

impl From<QMergeSpec> for LayerSpec {
    fn from(l: QMergeSpec) -> Self {
        LayerSpec::QMerge(l)
    }
}

impl From<QBatchNormSpec> for LayerSpec {
    fn from(l: QBatchNormSpec) -> Self {
        LayerSpec::QBatchNorm(l)
    }
}

impl From<ActivationSpec> for LayerSpec {
    fn from(l: ActivationSpec) -> Self {
        LayerSpec::Activation(l)
    }
}

impl From<ReluSpec> for LayerSpec {
    fn from(l: ReluSpec) -> Self {
        LayerSpec::Relu(l)
    }
}

impl From<QEinsumDenseSpec> for LayerSpec {
    fn from(l: QEinsumDenseSpec) -> Self {
        LayerSpec::QEinsumDense(l)
    }
}

impl From<QBatchNormDenseSpec> for LayerSpec {
    fn from(l: QBatchNormDenseSpec) -> Self {
        LayerSpec::QBatchNormDense(l)
    }
}

impl From<QEinsumDenseBatchnormSpec> for LayerSpec {
    fn from(l: QEinsumDenseBatchnormSpec) -> Self {
        LayerSpec::QEinsumDenseBatchnorm(l)
    }
}

impl From<QUnaryFunctionLUTSpec> for LayerSpec {
    fn from(l: QUnaryFunctionLUTSpec) -> Self {
        LayerSpec::QUnaryFunctionLut(l)
    }
}

impl From<QSoftmaxSpec> for LayerSpec {
    fn from(l: QSoftmaxSpec) -> Self {
        LayerSpec::QSoftmax(l)
    }
}

/// A Keras functional model `Input(input_shape) -> layer -> ... -> layer`.
///
/// It is written as the same model as a [`GraphModelSpec`] (`GraphModelSpec::from(chain)`,
/// whose JSON is identical).
///
/// The digits CNN (`Input((64,)) -> Reshape((8, 8, 1)) -> QConv2D(4, (3, 3),
/// activation='relu') -> QMaxPooling2D((2, 2)) -> Flatten() -> QDense(10)`):
///
/// ```
/// use hgq_config::model_json::{Activation, QDenseSpec};
/// use hgq_config::sequential::{ChainModelSpec, FlattenSpec, QConvSpec, QPoolSpec, ReshapeSpec};
/// let m = ChainModelSpec::new([64])
///     .layer(ReshapeSpec::new([8, 8, 1]))
///     .layer(QConvSpec::new(4, [3, 3]).activation(Activation::Relu))
///     .layer(QPoolSpec::max([2, 2]))
///     .layer(FlattenSpec::new())
///     .layer(QDenseSpec::new(10));
/// let json = m.to_json().unwrap();
/// assert!(json.starts_with(r#"{"module": "keras.src.models.functional", "class_name": "Functional", "config": {"name": "functional", "trainable": true, "layers": [{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 64]"#));
/// assert_eq!(m.layer_names().unwrap()[1], "q_conv2d");
/// assert_eq!(m.output_shapes().unwrap()[2], [3, 3, 4]);
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// // Its quantizers (iq, kq, bq of the convolution; iq of the pooling; iq, kq, bq of QDense).
/// let km = m.to_keras_model().unwrap();
/// assert_eq!(km.quantizers.len(), 7);
/// assert_eq!(km.quantizers[3].layer_path(), "functional/q_max_pooling2d");
///
/// // Geometry Keras refuses is an error naming the JSON path.
/// let bad = ChainModelSpec::new([2, 2, 1]).layer(QConvSpec::new(4, [3, 3]));
/// assert_eq!(bad.to_json().unwrap_err().path(), Some("$.config.layers[1].config.kernel_size[0]"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChainModelSpec {
    /// The model name (`functional` by default).
    pub name: String,
    /// The input layer's name (`input_layer` by default).
    pub input_name: String,
    /// The input shape without the batch axis: the input is `(batch, *input_shape)`.
    pub input_shape: Vec<usize>,
    /// The layers, input side first.
    pub layers: Vec<LayerSpec>,
}

impl ChainModelSpec {
    /// A model on inputs of `input_shape` (without batch) with no layers yet, named as Keras
    /// names it.
    pub fn new(input_shape: impl Into<Vec<usize>>) -> Self {
        ChainModelSpec {
            name: DEFAULT_MODEL_NAME.into(),
            input_name: DEFAULT_INPUT_NAME.into(),
            input_shape: input_shape.into(),
            layers: Vec::new(),
        }
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
    pub fn layer(mut self, layer: impl Into<LayerSpec>) -> Self {
        self.layers.push(layer.into());
        self
    }

    /// The layer names as written: explicit names, and Keras' automatic names (counted per
    /// class) for the rest. Errors on a name that is empty, holds `/` or is used twice
    /// (the input's included), and on a convolution or pooling of a rank other than 1 or 2.
    pub fn layer_names(&self) -> Result<Vec<String>> {
        check_name(&self.name, "$.config.name")?;
        check_name(&self.input_name, "$.config.layers[0].config.name")?;
        let mut seen = HashSet::from([self.input_name.clone()]);
        let mut auto: HashMap<&str, usize> = HashMap::new();
        let mut names = Vec::with_capacity(self.layers.len());
        for (j, l) in self.layers.iter().enumerate() {
            let at = format!("$.config.layers[{}]", j + 1);
            let Some(prefix) = l.auto_name_prefix() else {
                return Err(value_err(
                    rank_path(l, &at),
                    "only ranks 1 and 2 (QConv1D/2D, pooling 1D/2D) are written",
                ));
            };
            let name = match l.name() {
                Some(n) => n.to_string(),
                None => {
                    let k = auto.entry(prefix).or_insert(0);
                    *k += 1;
                    numbered(prefix, *k - 1)
                }
            };
            let path = format!("{at}.config.name");
            check_name(&name, &path)?;
            if !seen.insert(name.clone()) {
                return Err(value_err(
                    path,
                    format!("layer name `{name}` is used twice"),
                ));
            }
            names.push(name);
        }
        Ok(names)
    }

    /// The output shape of every layer, without the batch axis, as Keras computes it.
    ///
    /// Errors on geometry Keras refuses, naming the JSON path of the offending value: an
    /// input size of 0 (`$.config.layers[0].config.batch_shape[1]`), a size of 0
    /// (`units`, `filters`, `kernel_size[0]`, `strides[1]`, `dilation_rate[0]`, `groups`,
    /// `pool_size[0]`), lists of the wrong length, a window larger than its (unpadded)
    /// input with `valid` padding (`kernel_size[i]`, `pool_size[i]`), `filters` or the
    /// input channels not divisible by `groups` (`filters`, `groups`), strides and
    /// dilation both above 1 (`dilation_rate`), `causal` padding other than in `QConv1D`
    /// or on a pooling layer (`padding`), an input of the wrong rank for a convolution or
    /// pooling (`build_config.input_shape`), a `target_shape` that does not hold the input.
    ///
    /// ```
    /// use hgq_config::model_json::QDenseSpec;
    /// use hgq_config::sequential::{ChainModelSpec, Padding, QConvSpec};
    /// let m = ChainModelSpec::new([7, 5, 2])
    ///     .layer(QConvSpec::new(4, [2, 3]).strides([2, 1]).padding(Padding::Same))
    ///     .layer(QDenseSpec::new(3));
    /// assert_eq!(m.output_shapes().unwrap(), [vec![4, 5, 4], vec![4, 5, 3]]);
    /// ```
    pub fn output_shapes(&self) -> Result<Vec<Vec<usize>>> {
        if self.input_shape.is_empty() {
            return Err(value_err(
                "$.config.layers[0].config.batch_shape",
                "the input needs at least one axis beside the batch",
            ));
        }
        for (k, &n) in self.input_shape.iter().enumerate() {
            check_size(
                n,
                &format!("$.config.layers[0].config.batch_shape[{}]", k + 1),
            )?;
        }
        let mut shape = self.input_shape.clone();
        let mut shapes = Vec::with_capacity(self.layers.len());
        let mut prev_input = Vec::new();
        for (j, l) in self.layers.iter().enumerate() {
            let at = format!("$.config.layers[{}]", j + 1);
            if j > 0
                && let Some(e) = self.layers[j - 1]
                    .keras_shape_err(&prev_input, &format!("$.config.layers[{j}]"))
            {
                return Err(e);
            }
            prev_input = shape.clone();
            shape = l.output_shape(&shape, &at)?;
            for &n in &shape {
                // A product that does not fit Python's writing of ints here.
                check_size(n, &format!("{at}.config"))?;
            }
            shapes.push(shape.clone());
        }
        Ok(shapes)
    }

    /// Checks what Keras would refuse (or what would not load): at least one layer,
    /// [`Self::layer_names`], [`Self::output_shapes`], and EBOPs only with an input
    /// quantizer. Errors name the JSON path of the offending value in the written document.
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(value_err(
                "$.config.layers",
                "a model needs at least one layer",
            ));
        }
        self.layer_names()?;
        self.output_shapes()?;
        for (j, l) in self.layers.iter().enumerate() {
            if l.ebops_without_iq() {
                return Err(value_err(
                    format!("$.config.layers[{}].config.enable_ebops", j + 1),
                    "EBOPs need the input quantizer (enable_iq)",
                ));
            }
        }
        Ok(())
    }

    /// The whole document as a value (see [`Self::to_json`]): that of the same model as a
    /// [`GraphModelSpec`].
    pub fn to_value(&self) -> Result<PyValue> {
        self.validate()?;
        GraphModelSpec::from(self.clone()).to_value()
    }

    /// The exact text of the reference's `model.to_json()` for this model.
    ///
    /// ```
    /// use hgq_config::sequential::{ChainModelSpec, QConvSpec};
    /// let bad = ChainModelSpec::new([8, 4]).layer(QConvSpec::new(6, [3]).groups(4));
    /// let e = bad.to_json().unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[1].config.filters"));
    /// ```
    pub fn to_json(&self) -> Result<String> {
        Ok(self.to_value()?.to_json())
    }

    /// The written document as a [`KerasModel`], with every quantizer configuration found
    /// and its layer path (`functional/q_conv2d`) and key (`iq_conf`, `kq_conf`, `bq_conf`,
    /// `oq_conf`).
    pub fn to_keras_model(&self) -> Result<KerasModel> {
        let root = self.to_value()?;
        let quantizers = find_quantizers(&root)?;
        Ok(KerasModel { root, quantizers })
    }

    /// Reads a document that [`Self::to_json`] (or the reference, for such a model) wrote, or a
    /// Keras `Sequential` document of such a chain (`"class_name": "Sequential"`: read by
    /// [`Self::from_keras_sequential_value`]).
    ///
    /// The fields are read, the model is written again and compared with the input: any
    /// difference (a key this type does not describe, another initializer, a branch in the
    /// graph, a shape that is not the one Keras computes, ...) is an error naming the first
    /// JSON path where they differ. A layer name equal to the automatic name it would get
    /// is read as `None`, a `parallelization_factor` equal to the automatic one as `-1`,
    /// and a pooling layer's `strides` equal to its `pool_size` as `None`.
    ///
    /// ```
    /// use hgq_config::sequential::{ChainModelSpec, QPoolSpec};
    /// use hgq_config::model_json::QDenseSpec;
    /// let m = ChainModelSpec::new([6, 2]).layer(QPoolSpec::average([2])).layer(QDenseSpec::new(1));
    /// let json = m.to_json().unwrap();
    /// let bad = json.replacen(r#""pool_size": [2]"#, r#""pool_size": [2, 2]"#, 1);
    /// let e = ChainModelSpec::from_json(&bad).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[1].config.pool_size"));
    /// ```
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&PyValue::parse(text)?)
    }

    /// Reads a parsed document (see [`Self::from_json`]).
    pub fn from_value(v: &PyValue) -> Result<Self> {
        if keras_seq::is_sequential(v) {
            return Self::from_keras_sequential_value(v);
        }
        let spec = read_chain(&At::root(v))?;
        let written = spec.to_value()?;
        match first_difference(v, &written, "$".into()) {
            None => Ok(spec),
            Some(path) => Err(ConfigError::Value {
                path,
                msg: "not what this chain model writes".into(),
            }),
        }
    }
}

impl From<DenseModelSpec> for ChainModelSpec {
    /// The same model: a 1-D input shape `[input_dim]` and its `QDense` layers.
    fn from(d: DenseModelSpec) -> Self {
        ChainModelSpec {
            name: d.name,
            input_name: d.input_name,
            input_shape: vec![d.input_dim],
            layers: d.layers.into_iter().map(LayerSpec::QDense).collect(),
        }
    }
}

pub(crate) fn value_err(path: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        path: path.into(),
        msg: msg.into(),
    }
}

/// The product of `dims`, if it fits.
pub(crate) fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |p, &d| p.checked_mul(d))
}

/// Where a layer's rank is written (for an unsupported rank).
fn rank_path(l: &LayerSpec, at: &str) -> String {
    match l {
        LayerSpec::QConv(_) => format!("{at}.config.kernel_size"),
        LayerSpec::QPool(p) => match p.window {
            PoolWindow::Global { .. } => format!("{at}.class_name"),
            PoolWindow::Local { .. } => format!("{at}.config.pool_size"),
        },
        _ => format!("{at}.class_name"),
    }
}

/// A list of sizes of length `rank`, each positive.
pub(crate) fn read_sizes(at: &At<'_>, rank: usize) -> Result<Vec<usize>> {
    let items = at.list()?;
    if items.len() != rank {
        return Err(at.value_err(format!(
            "expected {rank} size{} for this class, found {}",
            if rank == 1 { "" } else { "s" },
            items.len()
        )));
    }
    items.iter().map(size).collect()
}

/// `padding` as written.
pub(crate) fn read_padding(at: &At<'_>) -> Result<Padding> {
    let s = at.str()?;
    s.parse()
        .map_err(|_| at.value_err(format!("unknown padding `{s}`")))
}

/// A list of sizes as written (lists of ints).
pub(crate) fn sizes_value(v: &[usize]) -> PyValue {
    PyValue::List(v.iter().map(|&n| PyValue::Int(n as i64)).collect())
}

/// The `config` of a layer of class `class` (not `InputLayer`); an unknown class is an
/// error at `path` (the layer).
fn read_layer(config: &At<'_>, class: &str, path: &str) -> Result<LayerSpec> {
    Ok(match class {
        "QDense" => read_qdense(config)?.into(),
        "QConv1D" => QConvSpec::read(config, 1)?.into(),
        "QConv2D" => QConvSpec::read(config, 2)?.into(),
        "Flatten" => FlattenSpec::read(config)?.into(),
        "Reshape" => ReshapeSpec::read(config)?.into(),
        "QBatchNormalization" => QBatchNormSpec::read(config)?.into(),
        "Activation" => ActivationSpec::read(config)?.into(),
        "ReLU" => ReluSpec::read(config)?.into(),
        "QEinsumDense" => QEinsumDenseSpec::read(config)?.into(),
        "QBatchNormDense" => QBatchNormDenseSpec::read(config)?.into(),
        "QEinsumDenseBatchnorm" => QEinsumDenseBatchnormSpec::read(config)?.into(),
        "QUnaryFunctionLUT" => QUnaryFunctionLUTSpec::read(config)?.into(),
        "QSoftmax" => QSoftmaxSpec::read(config)?.into(),
        class => {
            if let Some(p) = QPoolSpec::read(config, class)? {
                p.into()
            } else if let Some(m) = QMergeSpec::read(config, class)? {
                m.into()
            } else {
                return Err(ConfigError::UnknownClass {
                    path: path.into(),
                    class_name: class.into(),
                });
            }
        }
    })
}

fn read_chain(root: &At<'_>) -> Result<ChainModelSpec> {
    let mut d = root.dict()?;
    let mut c = d.req("config")?.dict()?;
    let name = c.req("name")?.str()?.to_string();
    let layers_at = c.req("layers")?;
    let layers = layers_at.list()?;
    let Some((input, rest)) = layers.split_first() else {
        return Err(layers_at.value_err("no input layer"));
    };
    let mut ic = input.dict()?.req("config")?.dict()?;
    let input_name = ic.req("name")?.str()?.to_string();
    let shape_at = ic.req("batch_shape")?;
    let shape = shape_at.list()?;
    let Some((_, dims)) = shape.split_first() else {
        return Err(shape_at.value_err("expected a batch shape [null, ...]"));
    };
    let input_shape = dims.iter().map(size).collect::<Result<Vec<_>>>()?;
    let mut spec = ChainModelSpec {
        name,
        input_name,
        input_shape,
        layers: Vec::with_capacity(rest.len()),
    };
    let mut auto: HashMap<&str, usize> = HashMap::new();
    for l in rest {
        let mut ld = l.dict()?;
        let class = ld.req("class_name")?.str()?;
        let config = ld.req("config")?;
        let mut layer = read_layer(&config, class, &l.path)?;
        // A name equal to the automatic one it would get reads as unnamed.
        let prefix = layer
            .auto_name_prefix()
            .expect("every class read has an automatic name");
        let k = auto.entry(prefix).or_insert(0);
        if layer.name() == Some(numbered(prefix, *k).as_str()) {
            *layer.name_mut() = None;
        }
        if layer.name().is_none() {
            *k += 1;
        }
        spec.layers.push(layer);
    }
    // The automatic parallelization factors read as -1, QSoftmax's last axis as -1.
    let shapes = spec.output_shapes()?;
    let inputs = std::iter::once(&spec.input_shape).chain(&shapes);
    let inputs: Vec<Vec<usize>> = inputs.cloned().collect();
    for ((l, input), out) in spec.layers.iter_mut().zip(&inputs).zip(&shapes) {
        l.normalize_read(input, out);
    }
    Ok(spec)
}
