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
//! - [`convert`]: conversion to and from hgq-core's quantizer descriptions.
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
pub mod pyjson;
pub mod quantizer;

pub use convert::{CoreQuantizer, QuantizerSpec};
pub use error::{ConfigError, Result};
pub use keras::{Constraint, DTypePolicy, InitValue, Initializer, Num, Regularizer};
pub use layer::QuantizerLayer;
pub use mapper::BitwidthMapperConfig;
pub use model::{FoundQuantizer, KerasModel, PathSeg, extract_quantizers, find_quantizers};
pub use pyjson::PyValue;
pub use quantizer::{
    Common, Flavor, FloatParams, KbiParams, KifParams, Params, Place, QType, QuantizerConfig,
    QuantizerConfigBuilder,
};
