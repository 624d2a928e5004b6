//! # hgq-config
//!
//! Serde for the Keras JSON that hgq2 reads and writes: the quantizer configurations
//! (`QuantizerConfig`, `HardTanhConfig`, `HardSigmoidConfig`), the `Quantizer` layer,
//! `DefaultBitwidthMapper`, and the constraints, regularizers and initializers they hold.
//!
//! - [`pyjson`]: JSON as Python writes it (`Infinity`, ints apart from floats, `repr` floats),
//!   so that a document read and written back is byte-identical.
//! - [`QuantizerConfig`]: typed configuration, with the reference's defaults table and
//!   override rules in [`QuantizerConfig::builder`].
//! - [`KerasModel`] / [`extract_quantizers`]: every quantizer configuration in a whole model.
//! - [`model_json`]: the whole model document of a chain of `QDense` layers
//!   ([`DenseModelSpec`]), written as `model.to_json()` writes it.
//! - [`sequential`]: the same for a chain of `QDense`, `QConv1D/2D`, pooling, `Flatten` and
//!   `Reshape` layers on an input of any rank ([`ChainModelSpec`]), and for any DAG of them
//!   with merge layers (`QAdd`, ...) and `QBatchNormalization`, several inputs and outputs
//!   ([`GraphModelSpec`]); a chain is read from a Keras `Sequential` document too
//!   ([`ChainModelSpec::from_keras_sequential_json`]); `QEinsumDense`,
//!   `QEinsumDenseBatchnorm`, `QBatchNormDense`, `QUnaryFunctionLUT` and `QSoftmax` too
//!   ([`QEinsumDenseSpec`] and [`einsum_shapes`], [`QEinsumDenseBatchnormSpec`],
//!   [`QBatchNormDenseSpec`], [`QUnaryFunctionLUTSpec`], [`QSoftmaxSpec`]).
//! - [`convert`]: conversion to and from hgq-core's quantizer descriptions.
//!
//! ## Fidelity notes
//!
//! - Reading is strict: every key the reference writes must be present, unknown keys and
//!   classes are errors, and errors name the JSON path (`$.config.bc.config.min_value`).
//! - A key repeated in an object: the last one wins, as in Python's `json.loads` (the key
//!   keeps the place where it first appeared). [`PyValue::parse`] keeps each key once that
//!   way, so the generic tree, [`PyValue::get`] and every typed reader see the same value,
//!   and a document is written back as `json.dumps(json.loads(text))` writes it.
//! - Values that mean nothing are refused on reading, naming their JSON path (in a model,
//!   `$.config.layers[1].config.kq_conf.config.i_decay_speed`): `i_decay_speed` or an initial
//!   bit width that is NaN, `k0` other than 0 or 1 (an initializer's value too), `scaler` NaN,
//!   infinite or 0, `qnoise_factor` outside `[0, 1]`, `affine` not finite (or a scale of 0),
//!   a constraint bound that is NaN (a `Constant` that is not finite), a regularizer factor
//!   that is NaN or infinite. A negative `i_decay_speed` is read (the reference traces the
//!   integer bits in inference with it), and so is an infinite one (the weights' default).
//!   [`QuantizerConfig::validate`] checks the same for a configuration made another way.
//! - Strings are normalized the way the reference parses them (`q_type`/`place` lower-case,
//!   modes upper-case, `'default'` resolved, `SYM` read as `SAT_SYM`); a document written by
//!   the reference is already normalized, so it is written back byte for byte.
//! - `HardTanhConfig` does not write `symmetric` (the reference drops it too): one read from
//!   JSON has `symmetric: false`, exactly as the reference's `from_config` gives.
//! - The reference's float/bias defaults set both `homogeneous_axis` and
//!   `heterogeneous_axis` to `[]`. Reading accepts that (it is what the reference writes);
//!   the builder refuses both as overrides, and [`QuantizerConfig::to_core`] refuses it, as
//!   the reference's own quantizer does.
//!
//! ```
//! use hgq_config::{Place, QType, QuantizerConfig};
//! let c = QuantizerConfig::builder(QType::Kif, Place::Datalane).f0(3).build().unwrap();
//! let json = c.to_json();
//! assert!(json.contains(r#""i_decay_speed": 0.01"#));
//! assert_eq!(QuantizerConfig::from_json(&json).unwrap().to_json(), json);
//! ```
//!
//! ## Serde
//!
//! [`QuantizerConfig`] and what it holds ([`Params`] and its [`KbiParams`], [`KifParams`],
//! [`FloatParams`], [`Common`], [`Place`], [`QType`], [`Flavor`], [`Constraint`],
//! [`Regularizer`], [`InitValue`], [`Initializer`], [`Num`], [`BitwidthMapperConfig`]), as well
//! as [`QuantizerLayer`] and [`DTypePolicy`], implement serde's `Serialize` and `Deserialize`,
//! so a quantizer configuration can sit in a training configuration of one's own (JSON,
//! TOML, YAML: any self-describing format). This serde form is not the Keras JSON (that is
//! [`QuantizerConfig::to_json`] / [`QuantizerConfig::from_json`], byte for byte): it is the
//! Rust structure, field for field, whose names are the reference's keyword arguments:
//!
//! - structs are maps of their fields; `Place` and `QType` are the reference's strings
//!   (`"weight"`, `"kbi"`; read case-insensitively), and so are the rounding and overflow modes
//!   (`"RND"`, `"SAT_SYM"`), except the `q_type` tag of [`Params`], which is lower-case;
//! - [`Params`] is a map tagged by `q_type` (`{"q_type": "kbi", "k0": true, "b0": 8, ...}`,
//!   `{"q_type": "dummy"}`); the other enums are tagged by their variant name, which is the
//!   Keras class name: `{"MinMax": {"min_value": 0.0, "max_value": 23.0}}`,
//!   `{"MonoL1": 1e-08}`, `"NonNeg"`, `{"Constant": 3}`, `"Zeros"`, and for the flavor
//!   `"Plain"`, `{"HardTanh": {"symmetric": true}}`, `"HardSigmoid"`;
//! - an initial value ([`InitValue`]) is a bool, an int, a float or an initializer, and keeps
//!   which (`8` stays an int, `8.0` a float);
//! - a float that is not finite is written as the string `"Infinity"`, `"-Infinity"` or
//!   `"NaN"` (serde_json would write `null`); reading takes those strings, `"inf"`-style
//!   names, or a format's own infinity (TOML `inf`, YAML `.inf`);
//! - an `Option` that is `None` is written as `null` and may be left out when read (TOML has
//!   no `null`), and `flavor` may be left out (`Plain`); everything else must be given, and an
//!   unknown field is an error.
//!
//! Reading a [`QuantizerConfig`] (or a [`BitwidthMapperConfig`]) checks what reading the
//! Keras JSON checks ([`QuantizerConfig::validate`]); its errors name the JSON path the value
//! has in the Keras JSON, whose keys are the serde form's field names
//! (`invalid quantizer config: $.config.i_decay_speed: ...`).
//!
//! ```
//! use hgq_config::{Place, QType, QuantizerConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Training {
//!     epochs: u32,
//!     kernel: QuantizerConfig,
//! }
//! let t = Training {
//!     epochs: 200,
//!     kernel: QuantizerConfig::builder(QType::Kbi, Place::Weight).b0(6).build().unwrap(),
//! };
//! let text = serde_json::to_string(&t).unwrap();
//! assert!(text.starts_with(
//!     r#"{"epochs":200,"kernel":{"flavor":"Plain","place":"weight","scaler":null,"qnoise_factor":null,"affine":null,"params":{"q_type":"kbi","k0":true,"b0":6,"i0":2,"round_mode":"RND","overflow_mode":"SAT_SYM","bc":{"MinMax":{"min_value":0.0,"max_value":23.0}},"#
//! ));
//! assert!(text.contains(r#""i_decay_speed":"Infinity""#));
//! assert_eq!(serde_json::from_str::<Training>(&text).unwrap(), t);
//!
//! let bad = text.replace(r#""b0":6"#, r#""b0":"NaN""#);
//! let e = serde_json::from_str::<Training>(&bad).unwrap_err();
//! assert!(e.to_string().contains("$.config.b0"));
//! ```
#![warn(missing_docs)]

/// The builder setters that layer specs share, one arm per field: `spec_setters!(name,
/// trainable, ...)` inside the `impl` of a spec with those fields writes them. A setter
/// whose rule is a spec's own stays written out there.
macro_rules! spec_setters {
    ($($f:ident),* $(,)?) => { $(spec_setters!(@ $f);)* };
    (@ name) => {
        /// Sets the layer name.
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.name = Some(name.into());
            self
        }
    };
    (@ activation) => {
        /// Sets the activation (`None`: linear).
        pub fn activation(mut self, a: impl Into<Option<$crate::Activation>>) -> Self {
            self.activation = a.into();
            self
        }
    };
    (@ use_bias) => {
        /// Sets `use_bias`.
        pub fn use_bias(mut self, b: bool) -> Self {
            self.use_bias = b;
            self
        }
    };
    (@ trainable) => {
        /// Sets `trainable`.
        pub fn trainable(mut self, t: bool) -> Self {
            self.trainable = t;
            self
        }
    };
    (@ beta0) => {
        /// Sets `beta0`.
        pub fn beta0(mut self, b: f64) -> Self {
            self.beta0 = b;
            self
        }
    };
    (@ enable_ebops) => {
        /// Sets `enable_ebops`.
        pub fn enable_ebops(mut self, e: bool) -> Self {
            self.enable_ebops = e;
            self
        }
    };
    (@ ebops_factor) => {
        /// Sets `ebops_factor`.
        pub fn ebops_factor(mut self, f: f64) -> Self {
            self.ebops_factor = f;
            self
        }
    };
    (@ iq) => {
        /// Sets the input quantizer; `None` turns it off (`enable_iq=False`) and, as the
        /// reference's default does, EBOPs with it.
        pub fn iq(mut self, c: impl Into<Option<$crate::QuantizerConfig>>) -> Self {
            self.iq = c.into();
            if self.iq.is_none() {
                self.enable_ebops = false;
            }
            self
        }
    };
    (@ kq) => {
        /// Sets the kernel quantizer.
        pub fn kq(mut self, c: $crate::QuantizerConfig) -> Self {
            self.kq = c;
            self
        }
    };
    (@ bq) => {
        /// Sets the bias quantizer.
        pub fn bq(mut self, c: $crate::QuantizerConfig) -> Self {
            self.bq = c;
            self
        }
    };
    (@ oq) => {
        /// Sets the output quantizer (`Some`: `enable_oq=True`).
        pub fn oq(mut self, c: impl Into<Option<$crate::QuantizerConfig>>) -> Self {
            self.oq = c.into();
            self
        }
    };
}

pub mod convert;
mod de;
pub mod error;
pub mod keras;
pub mod layer;
pub mod mapper;
pub mod model;
pub mod model_json;
pub mod pyjson;
pub mod quantizer;
pub mod sequential;
mod serde_impl;

pub use convert::{CoreQuantizer, QuantizerSpec};
pub use error::{ConfigError, Result};
pub use keras::{Constraint, DTypePolicy, InitValue, Initializer, Num, Regularizer};
pub use layer::QuantizerLayer;
pub use mapper::BitwidthMapperConfig;
pub use model::{FoundQuantizer, KerasModel, PathSeg, extract_quantizers, find_quantizers};
pub use model_json::{Activation, DenseModelSpec, QDenseSpec};
pub use pyjson::PyValue;
pub use quantizer::{
    Common, Flavor, FloatParams, KbiParams, KifParams, Params, Place, QType, QuantizerConfig,
    QuantizerConfigBuilder,
};
pub use sequential::{
    ActivationSpec, ChainModelSpec, EinsumShapes, FlattenSpec, GraphModelSpec, InputSpec,
    LayerSpec, MergeOp, NodeSpec, Padding, PoolKind, PoolWindow, QBatchNormDenseSpec,
    QBatchNormSpec, QConvSpec, QEinsumDenseBatchnormSpec, QEinsumDenseSpec, QMergeSpec, QPoolSpec,
    QSoftmaxSpec, QUnaryFunctionLUTSpec, ReluSpec, ReshapeSpec, einsum_shapes,
};
