//! The `Quantizer` Keras layer (`hgq.quantizer.quantizer.Quantizer`).
use crate::de::{At, Envelope, dict};
use crate::error::Result;
use crate::keras::DTypePolicy;
use crate::pyjson::PyValue;
use crate::quantizer::QuantizerConfig;
use serde::{Deserialize, Serialize};

/// The module of the `Quantizer` layer.
pub const LAYER_MODULE: &str = "hgq.quantizer.quantizer";

/// A serialized `Quantizer` layer: Keras' layer keys around a [`QuantizerConfig`].
///
/// ```
/// use hgq_config::{Place, QType, QuantizerConfig, QuantizerLayer};
/// let cfg = QuantizerConfig::builder(QType::Kbi, Place::Weight).build().unwrap();
/// let layer = QuantizerLayer::new("quantizer", cfg).built_on([Some(8), Some(4)]);
/// let json = layer.to_json();
/// assert!(json.ends_with(r#""registered_name": "hgq>Quantizer", "build_config": {"input_shape": [8, 4]}}"#));
/// assert_eq!(QuantizerLayer::from_json(&json).unwrap(), layer);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizerLayer {
    /// The layer name.
    pub name: String,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The dtype policy.
    pub dtype: DTypePolicy,
    /// The quantizer configuration.
    pub config: QuantizerConfig,
    /// The input shape the layer was built on (`None` entries: unknown sizes); `None` when
    /// the layer was not built.
    pub input_shape: Option<Vec<Option<i64>>>,
}

impl QuantizerLayer {
    /// An unbuilt, trainable, float32 layer.
    pub fn new(name: impl Into<String>, config: QuantizerConfig) -> Self {
        QuantizerLayer {
            name: name.into(),
            trainable: true,
            dtype: DTypePolicy::default(),
            config,
            input_shape: None,
        }
    }

    /// The same layer, built on `shape`.
    pub fn built_on(mut self, shape: impl IntoIterator<Item = Option<i64>>) -> Self {
        self.input_shape = Some(shape.into_iter().collect());
        self
    }

    /// The Keras envelope.
    pub fn to_value(&self) -> PyValue {
        let mut v = vec![
            ("module".to_string(), PyValue::str(LAYER_MODULE)),
            ("class_name".into(), PyValue::str("Quantizer")),
            (
                "config".into(),
                dict([
                    ("name", PyValue::str(&self.name)),
                    ("trainable", PyValue::Bool(self.trainable)),
                    ("dtype", self.dtype.to_value()),
                    ("config", self.config.to_value()),
                ]),
            ),
            ("registered_name".into(), PyValue::str("hgq>Quantizer")),
        ];
        if let Some(s) = &self.input_shape {
            let shape = s
                .iter()
                .map(|d| d.map_or(PyValue::Null, PyValue::Int))
                .collect();
            v.push((
                "build_config".into(),
                dict([("input_shape", PyValue::List(shape))]),
            ));
        }
        PyValue::Dict(v)
    }

    /// The exact JSON text Keras writes.
    pub fn to_json(&self) -> String {
        self.to_value().to_json()
    }

    /// Reads the JSON text of a `Quantizer` layer.
    pub fn from_json(text: &str) -> Result<Self> {
        let v = PyValue::parse(text)?;
        Self::from_value(&v)
    }

    /// Reads a parsed `Quantizer` layer envelope.
    pub fn from_value(v: &PyValue) -> Result<Self> {
        Self::read(&At::root(v))
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut e = Envelope::read(at)?;
        if e.class_name != "Quantizer" {
            return Err(e.unknown());
        }
        e.expect(LAYER_MODULE, true)?;
        let mut c = e.config.dict()?;
        let name = c.req("name")?.str()?.to_string();
        let trainable = c.req("trainable")?.bool()?;
        let dtype = DTypePolicy::read(&c.req("dtype")?)?;
        let config = QuantizerConfig::read(&c.req("config")?)?;
        c.finish()?;
        let input_shape = match e.rest.opt("build_config") {
            None => None,
            Some(b) => {
                let mut bd = b.dict()?;
                let s = bd
                    .req("input_shape")?
                    .list()?
                    .iter()
                    .map(|d| d.nullable(At::int))
                    .collect::<Result<Vec<_>>>()?;
                bd.finish()?;
                Some(s)
            }
        };
        e.finish()?;
        Ok(QuantizerLayer {
            name,
            trainable,
            dtype,
            config,
            input_shape,
        })
    }
}
