//! Keras `Sequential` documents of a chain: `keras.Sequential([keras.Input(shape), ...])`.
//!
//! A built `Sequential`'s `to_json()` lists its layers as a functional model does, an
//! `InputLayer` first, each layer's `config` (and `build_config`) the same as in the functional
//! model of the same layers; only the envelope differs:
//!
//! ```text
//! {"module": "keras", "class_name": "Sequential",
//!  "config": {"name": "sequential", "trainable": true, "dtype": <DTypePolicy float32>,
//!             "layers": [<layer without "name" and "inbound_nodes">, ...],
//!             "build_input_shape": [null, *input_shape]},
//!  "registered_name": null, "build_config": {"input_shape": [null, *input_shape]},
//!  "compile_config": {}}
//! ```
use super::{ChainModelSpec, LayerSpec, read_chain, value_err};
use crate::de::{At, dict};
use crate::error::{ConfigError, Result};
use crate::keras::DTypePolicy;
use crate::model_json::first_difference;
use crate::pyjson::PyValue;

/// The module Keras writes for `Sequential`.
pub const SEQUENTIAL_MODULE: &str = "keras";

/// Whether a document is a Keras `Sequential` (its top-level `class_name`).
pub(crate) fn is_sequential(v: &PyValue) -> bool {
    matches!(v.get("class_name"), Some(PyValue::Str(c)) if c == "Sequential")
}

impl ChainModelSpec {
    /// The same model as a Keras `Sequential` document (see [`Self::to_keras_sequential_json`]).
    ///
    /// Errors as [`Self::to_value`] does, and on a merge layer (`$.config.layers[j].class_name`):
    /// a `Sequential` calls each layer on one tensor, which hgq2's merge layers do not take.
    pub fn to_keras_sequential_value(&self) -> Result<PyValue> {
        for (j, l) in self.layers.iter().enumerate() {
            if let LayerSpec::QMerge(m) = l {
                return Err(value_err(
                    format!("$.config.layers[{}].class_name", j + 1),
                    format!(
                        "a `{}` cannot be in a Keras Sequential (it takes a list of inputs)",
                        m.class_name()
                    ),
                ));
            }
        }
        let functional = self.to_value()?;
        let layers = match functional.get("config").and_then(|c| c.get("layers")) {
            Some(PyValue::List(layers)) => layers
                .iter()
                .map(|l| match l {
                    PyValue::Dict(entries) => PyValue::Dict(
                        entries
                            .iter()
                            .filter(|(k, _)| k != "name" && k != "inbound_nodes")
                            .cloned()
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect(),
            _ => unreachable!("a functional document has its layers"),
        };
        let batch_shape = || {
            PyValue::List(
                std::iter::once(PyValue::Null)
                    .chain(self.input_shape.iter().map(|&n| PyValue::Int(n as i64)))
                    .collect(),
            )
        };
        Ok(dict([
            ("module", PyValue::str(SEQUENTIAL_MODULE)),
            ("class_name", PyValue::str("Sequential")),
            (
                "config",
                dict([
                    ("name", PyValue::str(&self.name)),
                    ("trainable", PyValue::Bool(true)),
                    ("dtype", DTypePolicy::default().to_value()),
                    ("layers", PyValue::List(layers)),
                    ("build_input_shape", batch_shape()),
                ]),
            ),
            ("registered_name", PyValue::Null),
            ("build_config", dict([("input_shape", batch_shape())])),
            ("compile_config", dict([])),
        ]))
    }

    /// The exact text of the reference's `model.to_json()` for this chain built as a Keras
    /// `Sequential`: `keras.Sequential([keras.Input(input_shape, name=input_name), *layers],
    /// name=name)` (or the same without the `Input`, then `model.build((None, *input_shape))`,
    /// which writes the same). [`Self::to_json`] writes the functional form.
    ///
    /// ```
    /// use hgq_config::model_json::QDenseSpec;
    /// use hgq_config::sequential::ChainModelSpec;
    /// let m = ChainModelSpec::new([16]).name("sequential").layer(QDenseSpec::new(4));
    /// let json = m.to_keras_sequential_json().unwrap();
    /// assert!(json.starts_with(r#"{"module": "keras", "class_name": "Sequential", "config": {"name": "sequential", "trainable": true, "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "layers": [{"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_shape": [null, 16]"#));
    /// assert!(json.ends_with(r#""build_input_shape": [null, 16]}, "registered_name": null, "build_config": {"input_shape": [null, 16]}, "compile_config": {}}"#));
    /// assert_eq!(ChainModelSpec::from_keras_sequential_json(&json).unwrap(), m);
    /// // `from_json` takes either form.
    /// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
    /// ```
    pub fn to_keras_sequential_json(&self) -> Result<String> {
        Ok(self.to_keras_sequential_value()?.to_json())
    }

    /// Reads a Keras `Sequential` document: what `model.to_json()` writes for a built
    /// `keras.Sequential` of the layers a chain holds (`QDense`, `QConv1D`/`QConv2D`, the
    /// poolings, `Flatten`, `Reshape`, `QBatchNormalization`, `Activation`, `ReLU`,
    /// `QEinsumDense`, `QEinsumDenseBatchnorm`, `QBatchNormDense`, `QUnaryFunctionLUT`,
    /// `QSoftmax`), its `InputLayer` first.
    ///
    /// As strict as [`Self::from_json`]: the layers are read, the model is written again
    /// ([`Self::to_keras_sequential_value`]) and compared with the input, and the first JSON path
    /// where they differ is the error (`$.config.layers[2].config.units`), so that nothing
    /// unknown is dropped. The model's name is read (`sequential` unless named);
    /// [`Self::to_json`] then writes the same model in the functional form under that name.
    ///
    /// Not read: a `Sequential` that was never built (no `InputLayer`, no `build_input_shape`:
    /// its input shape is unknown; the error is at `$.config.layers[0].class_name`), one built
    /// by calling it on data (a fixed batch size, `[3, 16]`, where a chain writes `null`), a
    /// merge layer. `config.json` of a `.keras` archive (`model.save`) differs from
    /// `model.to_json()`: Keras marks objects several configurations share with
    /// `shared_object_id` keys, and writes the `compile_config` of a compiled model. Both are
    /// errors here (an unexpected key where a layer's typed reader meets it, else the first
    /// difference): strip every `shared_object_id` key and empty `compile_config` first, as
    /// hgq-torch's `load_keras` does.
    ///
    /// ```
    /// use hgq_config::sequential::ChainModelSpec;
    /// use hgq_config::model_json::QDenseSpec;
    /// let m = ChainModelSpec::new([8]).name("sequential").layer(QDenseSpec::new(2));
    /// let json = m.to_keras_sequential_json().unwrap();
    /// let bad = json.replacen(r#""units": 2"#, r#""units": 2, "lora_rank": null"#, 1);
    /// let e = ChainModelSpec::from_keras_sequential_json(&bad).unwrap_err();
    /// assert_eq!(e.path(), Some("$.config.layers[1].config.lora_rank"));
    /// ```
    pub fn from_keras_sequential_json(text: &str) -> Result<Self> {
        Self::from_keras_sequential_value(&PyValue::parse(text)?)
    }

    /// Reads a parsed Keras `Sequential` document (see [`Self::from_keras_sequential_json`]).
    pub fn from_keras_sequential_value(v: &PyValue) -> Result<Self> {
        let root = At::root(v);
        let mut d = root.dict()?;
        let class_at = d.req("class_name")?;
        if class_at.str()? != "Sequential" {
            return Err(class_at.value_err(format!(
                "a `{}` document, not a Keras `Sequential`",
                class_at.str()?
            )));
        }
        let mut c = d.req("config")?.dict()?;
        let layers_at = c.req("layers")?;
        let layers = layers_at.list()?;
        let first = layers
            .first()
            .ok_or_else(|| layers_at.value_err("no layers"))?;
        let first_class = first.dict()?.req("class_name")?;
        if first_class.str()? != "InputLayer" {
            return Err(first_class.value_err(
                "a Sequential that was not built (no InputLayer first): its input shape is \
                 unknown; build it (`keras.Input(shape)` as its first layer, or \
                 `model.build((None, ...))`) before saving",
            ));
        }
        for l in &layers[1..] {
            let class = l.dict()?.req("class_name")?;
            if matches!(
                class.str()?,
                "QAdd" | "QSubtract" | "QMultiply" | "QMaximum" | "QMinimum" | "QAveragePow2"
            ) {
                return Err(class.value_err(format!(
                    "a `{}` cannot be in a Keras Sequential (it takes a list of inputs)",
                    class.str()?
                )));
            }
        }
        let spec = read_chain(&root)?;
        let written = spec.to_keras_sequential_value()?;
        match first_difference(v, &written, "$".into()) {
            None => Ok(spec),
            Some(path) => Err(ConfigError::Value {
                path,
                msg: "not what this chain model writes as a Keras Sequential".into(),
            }),
        }
    }
}
