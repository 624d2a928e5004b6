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
//! - [`convert`]: conversion to and from hgq-core's quantizer descriptions.
//!
//! ## Fidelity notes
//!
//! - Reading is strict: every key the reference writes must be present, unknown keys and
//!   classes are errors, and errors name the JSON path (`$.config.bc.config.min_value`).
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
#![warn(missing_docs)]

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
