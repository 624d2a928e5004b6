//! serde for the typed configurations: the pieces derive cannot write (see the crate
//! documentation, "Serde", for the form).
//!
//! Floats that are not finite are written as the strings `"Infinity"`, `-Infinity` and `"NaN"`
//! (Python's JSON tokens), because serde_json would write them as `null`; on reading, a float
//! is a number, or one of those strings, or a name `f64::from_str` reads as non-finite
//! (`"inf"`, `"-inf"`, `"nan"`), or a non-finite float the format has itself (TOML's `inf`,
//! YAML's `.inf`).
use crate::keras::{InitValue, Initializer, Num};
use crate::mapper::BitwidthMapperConfig;
use crate::quantizer::{Flavor, Params, Place, QType, QuantizerConfig};
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

const FLOAT_EXPECTED: &str = r#"a number, or "Infinity", "-Infinity" or "NaN""#;

/// `"Infinity"`, `"-Infinity"` or `"NaN"`.
fn non_finite_name(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// A string that names a non-finite float.
fn parse_non_finite(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| !f.is_finite())
}

fn serialize_f64<S: Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    if f.is_finite() {
        s.serialize_f64(f)
    } else {
        s.serialize_str(non_finite_name(f))
    }
}

fn u64_to_i64<E: de::Error>(v: u64, exp: &dyn de::Expected) -> Result<i64, E> {
    i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), exp))
}

struct F64Visitor;

impl Visitor<'_> for F64Visitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(FLOAT_EXPECTED)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        parse_non_finite(v).ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
    }
}

/// A float with the non-finite strings.
#[derive(Clone, Copy)]
struct F(f64);

impl Serialize for F {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_f64(self.0, s)
    }
}

impl<'de> Deserialize<'de> for F {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(F64Visitor).map(F)
    }
}

/// `#[serde(with)]` for an `f64`.
pub(crate) mod float {
    use super::F;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_f64(*v, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        F::deserialize(d).map(|F(v)| v)
    }
}

/// `#[serde(with)]` for an `Option<f64>` (with `default`: missing is `None`).
pub(crate) mod opt_float {
    use super::F;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(F).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<F>::deserialize(d)?.map(|F(v)| v))
    }
}

/// `#[serde(with)]` for an `Option<(f64, f64)>` (with `default`: missing is `None`).
pub(crate) mod opt_pair {
    use super::F;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<(f64, f64)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.map(|(a, b)| (F(a), F(b))).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<(f64, f64)>, D::Error> {
        Ok(Option::<(F, F)>::deserialize(d)?.map(|(F(a), F(b))| (a, b)))
    }
}

/// `#[serde(with)]` for a value written as its `Display` string and read by `FromStr`
/// (hgq-core's `RoundMode` and `OverflowMode`, case-insensitive as the reference reads them).
pub(crate) mod by_str {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub(crate) fn serialize<S: Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

macro_rules! string_enum_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                by_str::deserialize(d)
            }
        }
    )*};
}

string_enum_serde!(Place, QType);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Num::Int(i) => s.serialize_i64(i),
            Num::Float(f) => serialize_f64(f, s),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(FLOAT_EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                u64_to_i64(v, &self).map(Num::Int)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
                F64Visitor.visit_str(v).map(Num::Float)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for InitValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InitValue::Bool(b) => s.serialize_bool(*b),
            InitValue::Int(i) => s.serialize_i64(*i),
            InitValue::Float(f) => serialize_f64(*f, s),
            InitValue::Initializer(i) => i.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for InitValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InitValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a bool, an int, a float ("Infinity", "-Infinity", "NaN" included) or an initializer ("Zeros", "Ones", {"Constant": value})"#,
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<InitValue, E> {
                Ok(InitValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InitValue, E> {
                Ok(InitValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<InitValue, E> {
                u64_to_i64(v, &self).map(InitValue::Int)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<InitValue, E> {
                Ok(InitValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InitValue, E> {
                match v {
                    "Zeros" => Ok(InitValue::Initializer(Initializer::Zeros)),
                    "Ones" => Ok(InitValue::Initializer(Initializer::Ones)),
                    _ => match parse_non_finite(v) {
                        Some(f) => Ok(InitValue::Float(f)),
                        None => Err(E::invalid_value(Unexpected::Str(v), &self)),
                    },
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InitValue, A::Error> {
                Initializer::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(InitValue::Initializer)
            }
        }
        d.deserialize_any(V)
    }
}

fn plain() -> Flavor {
    Flavor::Plain
}

/// A [`QuantizerConfig`] as read, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizerConfigRepr {
    #[serde(default = "plain")]
    flavor: Flavor,
    place: Place,
    #[serde(default, with = "opt_float")]
    scaler: Option<f64>,
    #[serde(default, with = "opt_float")]
    qnoise_factor: Option<f64>,
    #[serde(default, with = "opt_pair")]
    affine: Option<(f64, f64)>,
    params: Params,
}

impl<'de> Deserialize<'de> for QuantizerConfig {
    /// Reads the serde form and checks it as reading the Keras JSON does
    /// ([`QuantizerConfig::validate`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = QuantizerConfigRepr::deserialize(d)?;
        let c = QuantizerConfig {
            flavor: r.flavor,
            place: r.place,
            scaler: r.scaler,
            qnoise_factor: r.qnoise_factor,
            affine: r.affine,
            params: r.params,
        };
        c.validate()
            .map_err(|e| de::Error::custom(format!("invalid quantizer config: {e}")))?;
        Ok(c)
    }
}

/// A [`BitwidthMapperConfig`] as read, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BitwidthMapperRepr {
    heterogeneous_axis: Option<Vec<i64>>,
    homogeneous_axis: Option<Vec<i64>>,
    shape_inferenced: bool,
}

impl<'de> Deserialize<'de> for BitwidthMapperConfig {
    /// Reads the serde form and checks it as reading the Keras JSON does (before shape
    /// inference, exactly one axis list).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = BitwidthMapperRepr::deserialize(d)?;
        let m = BitwidthMapperConfig {
            heterogeneous_axis: r.heterogeneous_axis,
            homogeneous_axis: r.homogeneous_axis,
            shape_inferenced: r.shape_inferenced,
        };
        BitwidthMapperConfig::from_value(&m.to_value())
            .map_err(|e| de::Error::custom(format!("invalid bit-width mapper: {e}")))?;
        Ok(m)
    }
}
