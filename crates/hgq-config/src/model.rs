//! Finding every quantizer configuration in a whole Keras model.
use crate::de::At;
use crate::error::Result;
use crate::pyjson::{PyValue, visible_entries};
use crate::quantizer::{CONFIG_MODULE, QuantizerConfig};

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A dict key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// Writes a path as `$.config.layers[1].config.iq_conf`.
pub fn json_path(segs: &[PathSeg]) -> String {
    let mut s = String::from("$");
    for seg in segs {
        match seg {
            PathSeg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A quantizer configuration found in a model.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundQuantizer {
    /// The names of the layers that hold it, outermost first (the model itself included),
    /// e.g. `["sequential", "q_dense"]`.
    pub layers: Vec<String>,
    /// The key it sits under in its layer's config (`iq_conf`, `kq_conf`, `bq_conf`,
    /// `config` for a `Quantizer` layer, ...).
    pub key: String,
    /// Where it is in the document.
    pub location: Vec<PathSeg>,
    /// The configuration.
    pub config: QuantizerConfig,
}

impl FoundQuantizer {
    /// The layer path joined with `/`, e.g. `sequential/q_dense`.
    pub fn layer_path(&self) -> String {
        self.layers.join("/")
    }

    /// The JSON path, e.g. `$.config.layers[1].config.iq_conf`.
    pub fn json_path(&self) -> String {
        json_path(&self.location)
    }
}

/// A whole Keras model document (`model.to_json()`, or the `config.json` inside a `.keras`
/// file) with its quantizer configurations read out.
///
/// ```
/// use hgq_config::{KerasModel, Place, QType, QuantizerConfig};
/// let q = QuantizerConfig::builder(QType::Kbi, Place::Weight).build().unwrap();
/// let text = format!(
///     r#"{{"module": "keras", "class_name": "Sequential", "config": {{"name": "seq", "layers": [{{"class_name": "QDense", "config": {{"name": "d", "kq_conf": {}}}}}]}}}}"#,
///     q.to_json()
/// );
/// let m = KerasModel::from_json(&text).unwrap();
/// assert_eq!(m.quantizers.len(), 1);
/// assert_eq!(m.quantizers[0].layer_path(), "seq/d");
/// assert_eq!(m.quantizers[0].key, "kq_conf");
/// assert_eq!(m.to_json(), text);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KerasModel {
    /// The whole document.
    pub root: PyValue,
    /// Every quantizer configuration, in document order. Edits here are written by
    /// [`KerasModel::to_json`].
    pub quantizers: Vec<FoundQuantizer>,
}

impl KerasModel {
    /// Parses a model document and reads every quantizer configuration in it.
    pub fn from_json(text: &str) -> Result<Self> {
        let root = PyValue::parse(text)?;
        let quantizers = find_quantizers(&root)?;
        Ok(KerasModel { root, quantizers })
    }

    /// The document, with each quantizer configuration written from [`Self::quantizers`].
    pub fn to_json(&self) -> String {
        let mut root = self.root.clone();
        for q in &self.quantizers {
            if let Some(slot) = get_mut(&mut root, &q.location) {
                *slot = q.config.to_value();
            }
        }
        root.to_json()
    }
}

/// Every quantizer configuration in a parsed document, with the layers that hold it.
pub fn find_quantizers(root: &PyValue) -> Result<Vec<FoundQuantizer>> {
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Parses `text` and returns every quantizer configuration in it.
pub fn extract_quantizers(text: &str) -> Result<Vec<FoundQuantizer>> {
    find_quantizers(&PyValue::parse(text)?)
}

fn walk(
    v: &PyValue,
    loc: &mut Vec<PathSeg>,
    layers: &mut Vec<String>,
    out: &mut Vec<FoundQuantizer>,
) -> Result<()> {
    match v {
        PyValue::Dict(d) => {
            if matches!(v.get("module"), Some(PyValue::Str(m)) if m == CONFIG_MODULE) {
                let config = QuantizerConfig::read(&At::new(v, json_path(loc)))?;
                let key = match loc.last() {
                    Some(PathSeg::Key(k)) => k.clone(),
                    Some(PathSeg::Index(i)) => format!("[{i}]"),
                    None => String::new(),
                };
                out.push(FoundQuantizer {
                    layers: layers.clone(),
                    key,
                    location: loc.clone(),
                    config,
                });
                return Ok(());
            }
            // A Keras layer (or model) names itself in `config.name`.
            let name = match (v.get("class_name"), v.get("config")) {
                (Some(PyValue::Str(_)), Some(c)) => match c.get("name") {
                    Some(PyValue::Str(n)) => Some(n.clone()),
                    _ => None,
                },
                _ => None,
            };
            let pushed = name.is_some();
            if let Some(n) = name {
                layers.push(n);
            }
            for (k, child) in visible_entries(d) {
                loc.push(PathSeg::Key(k.clone()));
                let r = walk(child, loc, layers, out);
                loc.pop();
                r?;
            }
            if pushed {
                layers.pop();
            }
            Ok(())
        }
        PyValue::List(l) => {
            for (j, child) in l.iter().enumerate() {
                loc.push(PathSeg::Index(j));
                let r = walk(child, loc, layers, out);
                loc.pop();
                r?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn get_mut<'a>(v: &'a mut PyValue, loc: &[PathSeg]) -> Option<&'a mut PyValue> {
    let Some((first, rest)) = loc.split_first() else {
        return Some(v);
    };
    let child = match (v, first) {
        (PyValue::Dict(d), PathSeg::Key(k)) => &mut d.iter_mut().rev().find(|(e, _)| e == k)?.1,
        (PyValue::List(l), PathSeg::Index(i)) => l.get_mut(*i)?,
        _ => return None,
    };
    get_mut(child, rest)
}
