//! The small Keras and hgq objects a quantizer configuration holds: constraints,
//! regularizers, initializers, initial values and the dtype policy.
use crate::de::{At, Envelope, dict, envelope};
use crate::error::{ConfigError, Result};
use crate::pyjson::PyValue;
use serde::{Deserialize, Serialize};

/// A constraint on a quantizer variable (`bc`, `ic`, `fc`, `mc`, `ec`, `e0c`).
///
/// hgq's constraints store their bounds through `float()`, so they are always written as
/// floats (`MinMax(0, 23)` becomes `{"min_value": 0.0, "max_value": 23.0}`).
///
/// Reading refuses a NaN bound and a `Constant` that is not finite (an infinite bound is
/// read: that side is open).
///
/// ```
/// use hgq_config::Constraint;
/// let c = Constraint::MinMax { min_value: 0.0, max_value: 23.0 };
/// assert_eq!(
///     c.to_value().to_json(),
///     r#"{"module": "hgq.constraints", "class_name": "MinMax", "config": {"min_value": 0.0, "max_value": 23.0}, "registered_name": "hgq>MinMax"}"#
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Constraint {
    /// hgq's `MinMax(min_value, max_value)`: clip.
    MinMax {
        /// Lower bound.
        #[serde(with = "crate::serde_impl::float")]
        min_value: f64,
        /// Upper bound.
        #[serde(with = "crate::serde_impl::float")]
        max_value: f64,
    },
    /// hgq's `Min(min_value)`.
    Min(#[serde(with = "crate::serde_impl::float")] f64),
    /// hgq's `Max(max_value)`.
    Max(#[serde(with = "crate::serde_impl::float")] f64),
    /// hgq's `Constant(value)`: the variable is always `value`.
    Constant(#[serde(with = "crate::serde_impl::float")] f64),
    /// Keras' `NonNeg()`.
    NonNeg,
}

impl Constraint {
    /// The Keras envelope of this constraint.
    pub fn to_value(&self) -> PyValue {
        let hgq = |name, cfg| envelope("hgq.constraints", name, cfg, true);
        match *self {
            Constraint::MinMax {
                min_value,
                max_value,
            } => hgq(
                "MinMax",
                dict([
                    ("min_value", PyValue::Float(min_value)),
                    ("max_value", PyValue::Float(max_value)),
                ]),
            ),
            Constraint::Min(v) => hgq("Min", dict([("min_value", PyValue::Float(v))])),
            Constraint::Max(v) => hgq("Max", dict([("max_value", PyValue::Float(v))])),
            Constraint::Constant(v) => hgq("Constant", dict([("value", PyValue::Float(v))])),
            Constraint::NonNeg => envelope("keras.constraints", "NonNeg", dict([]), false),
        }
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Constraint> {
        let e = Envelope::read(at)?;
        let mut c = e.config.dict()?;
        let r = match e.class_name {
            "MinMax" => {
                e.expect("hgq.constraints", true)?;
                Constraint::MinMax {
                    min_value: c.req("min_value")?.number()?,
                    max_value: c.req("max_value")?.number()?,
                }
            }
            "Min" => {
                e.expect("hgq.constraints", true)?;
                Constraint::Min(c.req("min_value")?.number()?)
            }
            "Max" => {
                e.expect("hgq.constraints", true)?;
                Constraint::Max(c.req("max_value")?.number()?)
            }
            "Constant" => {
                e.expect("hgq.constraints", true)?;
                Constraint::Constant(c.req("value")?.finite()?)
            }
            "NonNeg" => {
                e.expect("keras.constraints", false)?;
                Constraint::NonNeg
            }
            _ => return Err(e.unknown()),
        };
        c.finish()?;
        e.finish()?;
        Ok(r)
    }
}

/// A regularizer on a quantizer variable (`br`, `ir`, `fr`, `mr`, `er`, `e0r`).
///
/// Reading refuses a factor that is NaN or infinite.
///
/// ```
/// use hgq_config::Regularizer;
/// assert_eq!(
///     Regularizer::MonoL1(1e-8).to_value().to_json(),
///     r#"{"module": "hgq.regularizers", "class_name": "MonoL1", "config": {"l1": 1e-08}, "registered_name": "hgq>MonoL1"}"#
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Regularizer {
    /// hgq's `MonoL1(l1)`: `l1 * sum(x)`.
    MonoL1(#[serde(with = "crate::serde_impl::float")] f64),
    /// Keras' `L1(l1)`: `l1 * sum(|x|)`.
    L1(#[serde(with = "crate::serde_impl::float")] f64),
    /// Keras' `L2(l2)`: `l2 * sum(x^2)`.
    L2(#[serde(with = "crate::serde_impl::float")] f64),
    /// Keras' `L1L2(l1, l2)`.
    L1L2 {
        /// The L1 factor.
        #[serde(with = "crate::serde_impl::float")]
        l1: f64,
        /// The L2 factor.
        #[serde(with = "crate::serde_impl::float")]
        l2: f64,
    },
}

impl Regularizer {
    /// The Keras envelope of this regularizer.
    pub fn to_value(&self) -> PyValue {
        let keras = |name, cfg| envelope("keras.regularizers", name, cfg, false);
        match *self {
            Regularizer::MonoL1(l1) => envelope(
                "hgq.regularizers",
                "MonoL1",
                dict([("l1", PyValue::Float(l1))]),
                true,
            ),
            Regularizer::L1(l1) => keras("L1", dict([("l1", PyValue::Float(l1))])),
            Regularizer::L2(l2) => keras("L2", dict([("l2", PyValue::Float(l2))])),
            Regularizer::L1L2 { l1, l2 } => keras(
                "L1L2",
                dict([("l1", PyValue::Float(l1)), ("l2", PyValue::Float(l2))]),
            ),
        }
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Regularizer> {
        let e = Envelope::read(at)?;
        let mut c = e.config.dict()?;
        let r = match e.class_name {
            "MonoL1" => {
                e.expect("hgq.regularizers", true)?;
                Regularizer::MonoL1(c.req("l1")?.finite()?)
            }
            "L1" => {
                e.expect("keras.regularizers", false)?;
                Regularizer::L1(c.req("l1")?.finite()?)
            }
            "L2" => {
                e.expect("keras.regularizers", false)?;
                Regularizer::L2(c.req("l2")?.finite()?)
            }
            "L1L2" => {
                e.expect("keras.regularizers", false)?;
                Regularizer::L1L2 {
                    l1: c.req("l1")?.finite()?,
                    l2: c.req("l2")?.finite()?,
                }
            }
            _ => return Err(e.unknown()),
        };
        c.finish()?;
        e.finish()?;
        Ok(r)
    }
}

/// A number as Python keeps it: an int stays an int, a float a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// A Python int.
    Int(i64),
    /// A Python float.
    Float(f64),
}

impl Num {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn to_value(self) -> PyValue {
        match self {
            Num::Int(i) => PyValue::Int(i),
            Num::Float(f) => PyValue::Float(f),
        }
    }

    fn read(at: &At<'_>) -> Result<Num> {
        match at.v {
            PyValue::Int(i) => Ok(Num::Int(*i)),
            PyValue::Float(f) => Ok(Num::Float(*f)),
            _ => Err(at.type_err("number")),
        }
    }
}

/// A Keras initializer given as an initial value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Initializer {
    /// `keras.initializers.Constant(value)`.
    Constant(Num),
    /// `keras.initializers.Zeros()`.
    Zeros,
    /// `keras.initializers.Ones()`.
    Ones,
}

impl Initializer {
    /// The value every element starts with.
    pub fn value(&self) -> f64 {
        match self {
            Initializer::Constant(n) => n.as_f64(),
            Initializer::Zeros => 0.0,
            Initializer::Ones => 1.0,
        }
    }

    /// The Keras envelope.
    ///
    /// ```
    /// use hgq_config::{Initializer, Num};
    /// assert_eq!(
    ///     Initializer::Constant(Num::Float(1e-5)).to_value().to_json(),
    ///     r#"{"module": "keras.initializers", "class_name": "Constant", "config": {"value": 1e-05}, "registered_name": null}"#
    /// );
    /// ```
    pub fn to_value(&self) -> PyValue {
        let (name, cfg) = match self {
            Initializer::Constant(n) => ("Constant", dict([("value", n.to_value())])),
            Initializer::Zeros => ("Zeros", dict([])),
            Initializer::Ones => ("Ones", dict([])),
        };
        envelope("keras.initializers", name, cfg, false)
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Initializer> {
        let e = Envelope::read(at)?;
        e.expect("keras.initializers", false)?;
        let mut c = e.config.dict()?;
        let r = match e.class_name {
            "Constant" => Initializer::Constant(Num::read(&c.req("value")?)?),
            "Zeros" => Initializer::Zeros,
            "Ones" => Initializer::Ones,
            _ => return Err(e.unknown()),
        };
        c.finish()?;
        e.finish()?;
        Ok(r)
    }
}

/// An initial value of a quantizer variable (`k0`, `b0`, `i0`, `f0`, `m0`, `e0`, `e00`,
/// `i_decay_speed`): `numbers | bool | Initializer` in the reference, kept with its JSON type.
///
/// ```
/// use hgq_config::InitValue;
/// assert_eq!(InitValue::from(8), InitValue::Int(8));
/// assert_eq!(InitValue::from(true), InitValue::Bool(true));
/// assert_eq!(InitValue::from(0.5).as_f64(), 0.5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitValue {
    /// A Python bool (`k0=True`).
    Bool(bool),
    /// A Python int.
    Int(i64),
    /// A Python float.
    Float(f64),
    /// A Keras initializer.
    Initializer(Initializer),
}

impl InitValue {
    /// The numeric initial value (`True` is 1).
    pub fn as_f64(&self) -> f64 {
        match *self {
            InitValue::Bool(b) => b as u8 as f64,
            InitValue::Int(i) => i as f64,
            InitValue::Float(f) => f,
            InitValue::Initializer(i) => i.value(),
        }
    }

    /// The JSON value.
    pub fn to_value(&self) -> PyValue {
        match *self {
            InitValue::Bool(b) => PyValue::Bool(b),
            InitValue::Int(i) => PyValue::Int(i),
            InitValue::Float(f) => PyValue::Float(f),
            InitValue::Initializer(i) => i.to_value(),
        }
    }

    /// Reads an initial value whose number must pass `ok`; else the error names the number
    /// (`$.config.b0`, or `$.config.b0.config.value` inside a `Constant` initializer).
    pub(crate) fn read_checked(
        at: &At<'_>,
        ok: impl Fn(f64) -> bool,
        why: &str,
    ) -> Result<InitValue> {
        let v = InitValue::read(at)?;
        if ok(v.as_f64()) {
            return Ok(v);
        }
        let (path, shown) = match v {
            InitValue::Initializer(Initializer::Constant(n)) => {
                (format!("{}.config.value", at.path), n.to_value())
            }
            _ => (at.path.clone(), at.v.clone()),
        };
        Err(ConfigError::Value {
            path,
            msg: format!("{why}, not {shown}"),
        })
    }

    pub(crate) fn read(at: &At<'_>) -> Result<InitValue> {
        match at.v {
            PyValue::Bool(b) => Ok(InitValue::Bool(*b)),
            PyValue::Int(i) => Ok(InitValue::Int(*i)),
            PyValue::Float(f) => Ok(InitValue::Float(*f)),
            PyValue::Dict(_) => Ok(InitValue::Initializer(Initializer::read(at)?)),
            _ => Err(at.type_err("number, bool or initializer")),
        }
    }
}

impl From<bool> for InitValue {
    fn from(v: bool) -> Self {
        InitValue::Bool(v)
    }
}
impl From<i64> for InitValue {
    fn from(v: i64) -> Self {
        InitValue::Int(v)
    }
}
impl From<i32> for InitValue {
    fn from(v: i32) -> Self {
        InitValue::Int(v as i64)
    }
}
impl From<f64> for InitValue {
    fn from(v: f64) -> Self {
        InitValue::Float(v)
    }
}
impl From<Initializer> for InitValue {
    fn from(v: Initializer) -> Self {
        InitValue::Initializer(v)
    }
}
impl From<Num> for InitValue {
    fn from(v: Num) -> Self {
        match v {
            Num::Int(i) => InitValue::Int(i),
            Num::Float(f) => InitValue::Float(f),
        }
    }
}

/// A Keras `DTypePolicy` (`{"module": "keras", "class_name": "DTypePolicy", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DTypePolicy {
    /// The policy name: `float32`, `mixed_float16`, ...
    pub name: String,
}

impl Default for DTypePolicy {
    fn default() -> Self {
        DTypePolicy {
            name: "float32".into(),
        }
    }
}

impl DTypePolicy {
    /// The Keras envelope.
    pub fn to_value(&self) -> PyValue {
        envelope(
            "keras",
            "DTypePolicy",
            dict([("name", PyValue::str(&self.name))]),
            false,
        )
    }

    pub(crate) fn read(at: &At<'_>) -> Result<DTypePolicy> {
        let e = Envelope::read(at)?;
        if e.class_name != "DTypePolicy" {
            return Err(e.unknown());
        }
        e.expect("keras", false)?;
        let mut c = e.config.dict()?;
        let name = c.req("name")?.str()?.to_string();
        c.finish()?;
        e.finish()?;
        Ok(DTypePolicy { name })
    }
}
