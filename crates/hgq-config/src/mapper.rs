//! hgq's `DefaultBitwidthMapper` configuration.
use crate::de::{At, Envelope, dict, envelope, ints, opt};
use crate::error::{ConfigError, Result};
use crate::pyjson::PyValue;
use hgq_core::mapper::Axes;
use serde::Serialize;

/// The module hgq's bit-width mappers live in.
pub const MAPPER_MODULE: &str = "hgq.quantizer.internal.base";

/// `DefaultBitwidthMapper(heterogeneous_axis, homogeneous_axis)`, as serialized.
///
/// Before shape inference exactly one of the two axis lists is given; after it
/// (`_shape_inferenced: true`) both are, resolved to non-negative axes.
///
/// ```
/// use hgq_config::BitwidthMapperConfig;
/// use hgq_core::mapper::Axes;
/// let mut m = BitwidthMapperConfig::new(Axes::Homogeneous(vec![0])).unwrap();
/// m.infer(3).unwrap();
/// assert_eq!(
///     m.to_json(),
///     r#"{"module": "hgq.quantizer.internal.base", "class_name": "DefaultBitwidthMapper", "config": {"heterogeneous_axis": [1, 2], "homogeneous_axis": [0], "_shape_inferenced": true}, "registered_name": "hgq>DefaultBitwidthMapper"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BitwidthMapperConfig {
    /// Axes with a bit width per index.
    pub heterogeneous_axis: Option<Vec<i64>>,
    /// Axes sharing one bit width.
    pub homogeneous_axis: Option<Vec<i64>>,
    /// Whether the axes were resolved against an input rank.
    pub shape_inferenced: bool,
}

impl BitwidthMapperConfig {
    /// A mapper for the given axes, not yet inferred. A mapper of the user's own
    /// ([`Axes::Mapper`]) has no such config: an error.
    pub fn new(axes: Axes) -> Result<Self> {
        let (het, hom) = match axes {
            Axes::Heterogeneous(a) => (Some(a), None),
            Axes::Homogeneous(a) => (None, Some(a)),
            Axes::Mapper(m) => {
                return Err(ConfigError::Convert(format!(
                    "the bit-width mapper {m:?} is the user's own: it has no Keras config"
                )));
            }
        };
        let conv = |a: Option<Vec<isize>>| a.map(|v| v.into_iter().map(|x| x as i64).collect());
        Ok(BitwidthMapperConfig {
            heterogeneous_axis: conv(het),
            homogeneous_axis: conv(hom),
            shape_inferenced: false,
        })
    }

    /// Resolves the axes against an input of `ndim` dimensions, as the reference's
    /// `inference_weight_shape` does (negative axes count from the end; the other list
    /// becomes the complement).
    pub fn infer(&mut self, ndim: usize) -> Result<()> {
        let n = ndim as i64;
        let check = |a: &[i64]| -> Result<Vec<i64>> {
            a.iter()
                .map(|&x| {
                    let y = if x < 0 { x + n } else { x };
                    if (0..n).contains(&y) {
                        Ok(y)
                    } else {
                        Err(crate::ConfigError::Value {
                            path: "$.config".into(),
                            msg: format!("invalid axis {x} for rank {ndim}"),
                        })
                    }
                })
                .collect()
        };
        let complement = |a: &[i64]| (0..n).filter(|x| !a.contains(x)).collect::<Vec<_>>();
        if let Some(h) = &self.heterogeneous_axis {
            let h = check(h)?;
            self.homogeneous_axis = Some(complement(&h));
            self.heterogeneous_axis = Some(h);
        } else if let Some(h) = &self.homogeneous_axis {
            let h = check(h)?;
            self.heterogeneous_axis = Some(complement(&h));
            self.homogeneous_axis = Some(h);
        }
        self.shape_inferenced = true;
        Ok(())
    }

    /// The axes as hgq-core names them (heterogeneous first, as the reference's mapper
    /// prefers them once inferred).
    pub fn axes(&self) -> Option<Axes> {
        let conv = |v: &Vec<i64>| v.iter().map(|&x| x as isize).collect();
        match (&self.heterogeneous_axis, &self.homogeneous_axis) {
            (Some(h), _) => Some(Axes::Heterogeneous(conv(h))),
            (None, Some(h)) => Some(Axes::Homogeneous(conv(h))),
            (None, None) => None,
        }
    }

    /// The hgq-core mapper for these axes (`None` when neither list is given).
    pub fn to_core(&self) -> Option<hgq_core::DefaultBitwidthMapper> {
        self.axes().map(hgq_core::DefaultBitwidthMapper::new)
    }

    /// The Keras envelope.
    pub fn to_value(&self) -> PyValue {
        envelope(
            MAPPER_MODULE,
            "DefaultBitwidthMapper",
            dict([
                (
                    "heterogeneous_axis",
                    opt(&self.heterogeneous_axis, |a| ints(a)),
                ),
                ("homogeneous_axis", opt(&self.homogeneous_axis, |a| ints(a))),
                ("_shape_inferenced", PyValue::Bool(self.shape_inferenced)),
            ]),
            true,
        )
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_json()
    }

    /// Reads the JSON text of a `DefaultBitwidthMapper`.
    pub fn from_json(text: &str) -> Result<Self> {
        let v = PyValue::parse(text)?;
        Self::from_value(&v)
    }

    /// Reads a parsed `DefaultBitwidthMapper` envelope.
    pub fn from_value(v: &PyValue) -> Result<Self> {
        Self::read(&At::root(v))
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let e = Envelope::read(at)?;
        if e.class_name != "DefaultBitwidthMapper" {
            return Err(e.unknown());
        }
        e.expect(MAPPER_MODULE, true)?;
        let mut c = e.config.dict()?;
        let het_at = c.req("heterogeneous_axis")?;
        let heterogeneous_axis = het_at.nullable(At::ints)?;
        let homogeneous_axis = c.req("homogeneous_axis")?.nullable(At::ints)?;
        let shape_inferenced = c.req("_shape_inferenced")?.bool()?;
        if !shape_inferenced && heterogeneous_axis.is_some() == homogeneous_axis.is_some() {
            return Err(het_at.value_err(
                "exactly one of heterogeneous_axis and homogeneous_axis must be given",
            ));
        }
        c.finish()?;
        e.finish()?;
        Ok(BitwidthMapperConfig {
            heterogeneous_axis,
            homogeneous_axis,
            shape_inferenced,
        })
    }
}
