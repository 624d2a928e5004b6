//! Keras 3 `.keras` archives, read and written without libtorch, Python or libhdf5.
//!
//! A `.keras` file (what `model.save("m.keras")` writes and `keras.models.load_model` reads) is a
//! zip of three members:
//!
//! - `metadata.json`: `{"keras_version": "3.15.1", "date_saved": "2026-12-05@00:09:04"}`;
//! - `config.json`: the model's config (`keras.saving.serialize_keras_object(model)`: the
//!   layers, and `compile_config` when the model was compiled);
//! - `model.weights.h5`: the variables, one HDF5 group per saved object (the model, each layer,
//!   each sub-layer, the optimizer), each with a `vars` subgroup that holds the object's own
//!   variables as datasets `0`, `1`, ... and has the object's name as its `name` attribute:
//!
//! ```text
//! vars                                     name="functional"   (the model; no datasets)
//! layers/input_layer/vars                  name="input_layer"
//! layers/q_dense/vars/{0,1,2,3}            name="q_dense"      kernel, bias, beta, ebops
//! layers/q_dense/kq/vars                   name="q_dense_kq"   (hgq's Quantizer wrapper)
//! layers/q_dense/kq/quantizer/vars/{0,1,2} name="fixed_point_quantizer_kbi"   b, i, k
//! layers/q_dense_1/...                     the second QDense
//! layers/q_add/iq/vars                     name="multiple_quantizers"   (a merge layer's iq)
//! layers/q_add/iq/quantizers/quantizer_1/quantizer/vars/{0,1,2,3}
//!                                          name="fixed_point_quantizer_kif_3"   its input 1's
//! optimizer/vars/{0,1,...}                 name="adam"         iterations, learning_rate, ...
//! ```
//!
//! [`KerasArchive`] holds the three members, the HDF5 file as its datasets by path
//! ([`KerasArchive::weights`]) and its objects ([`KerasArchive::objects`]).
//! [`KerasArchive::variable_paths`] and [`KerasArchive::from_variables`] map between that
//! layout and Keras variable paths (`[v.path for v in model.variables]`: `q_dense/kernel`,
//! `q_dense/q_dense_kq/fixed_point_quantizer_kbi/b`, ...); see the [`KerasArchive::from_variables`]
//! docs for the rules, and the `mapping` module's for merge layers (whose input quantizers are
//! saved by position: `quantizers/quantizer`, `quantizers/quantizer_1`, ...) and
//! `QBatchNormalization`.
//!
//! ```no_run
//! use hgq_keras::KerasArchive;
//! let archive = KerasArchive::read("model.keras")?;
//! let names = ["q_dense/kernel", "q_dense/bias", "q_dense/beta", "q_dense/ebops"];
//! for (path, array) in archive.variable_paths(&names)? {
//!     println!("{path}: {:?} {}", array.shape, array.data.dtype());
//! }
//! # Ok::<(), hgq_keras::Error>(())
//! ```

mod error;
mod h5;
mod mapping;
mod metadata;

use std::io::{Cursor, Read, Write};
use std::path::Path;

pub use error::{Error, Result};
pub use mapping::{SavedObject, snake_case};
pub use metadata::{KERAS_VERSION, keras_metadata, keras_metadata_now};

/// The archive member holding the model config.
pub const CONFIG_MEMBER: &str = "config.json";
/// The archive member holding the Keras version and save date.
pub const METADATA_MEMBER: &str = "metadata.json";
/// The archive member holding the variables.
pub const WEIGHTS_MEMBER: &str = "model.weights.h5";

/// The most bytes this crate reads from one archive member (Keras' own bomb guard starts at
/// 4 GiB too).
const MAX_MEMBER: u64 = 1 << 32;

/// The values of an [`Array`], row-major, by element type. Keras writes `float32` for weights,
/// `uint8` for hgq2's `k` (sign) bits, `int64` (torch backend) or `uint32` (jax backend) for
/// hgq2's `ebops`, `int32` for the optimizer's `iterations`.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    /// `float32`.
    F32(Vec<f32>),
    /// `float64`.
    F64(Vec<f64>),
    /// `int8`.
    I8(Vec<i8>),
    /// `int16`.
    I16(Vec<i16>),
    /// `int32`.
    I32(Vec<i32>),
    /// `int64`.
    I64(Vec<i64>),
    /// `uint8`.
    U8(Vec<u8>),
    /// `uint16`.
    U16(Vec<u16>),
    /// `uint32`.
    U32(Vec<u32>),
    /// `uint64`.
    U64(Vec<u64>),
}

impl ArrayData {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            ArrayData::F32(v) => v.len(),
            ArrayData::F64(v) => v.len(),
            ArrayData::I8(v) => v.len(),
            ArrayData::I16(v) => v.len(),
            ArrayData::I32(v) => v.len(),
            ArrayData::I64(v) => v.len(),
            ArrayData::U8(v) => v.len(),
            ArrayData::U16(v) => v.len(),
            ArrayData::U32(v) => v.len(),
            ArrayData::U64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// NumPy's name of the element type (`"float32"`, `"uint8"`, ...).
    pub fn dtype(&self) -> &'static str {
        match self {
            ArrayData::F32(_) => "float32",
            ArrayData::F64(_) => "float64",
            ArrayData::I8(_) => "int8",
            ArrayData::I16(_) => "int16",
            ArrayData::I32(_) => "int32",
            ArrayData::I64(_) => "int64",
            ArrayData::U8(_) => "uint8",
            ArrayData::U16(_) => "uint16",
            ArrayData::U32(_) => "uint32",
            ArrayData::U64(_) => "uint64",
        }
    }

    /// The values as `f64` (exact for every type but 64-bit integers past 2^53): for comparing
    /// values across the types Keras backends store one variable as.
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            ArrayData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::F64(v) => v.clone(),
            ArrayData::I8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::I16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            ArrayData::U8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::U16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::U32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            ArrayData::U64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

/// An n-dimensional array: a shape (empty for a scalar) and its values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The dimensions; `[]` for a scalar.
    pub shape: Vec<usize>,
    /// The values; as many as the shape's product.
    pub data: ArrayData,
}

impl Array {
    /// An array, checked: the data's length is the shape's product.
    pub fn new(shape: Vec<usize>, data: ArrayData) -> Result<Self> {
        let a = Array { shape, data };
        a.check("array")?;
        Ok(a)
    }

    /// The number of values the shape holds, `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    pub(crate) fn check(&self, path: &str) -> Result<()> {
        if self.numel() == Some(self.data.len()) {
            Ok(())
        } else {
            Err(Error::Shape {
                path: path.to_string(),
                shape: self.shape.clone(),
                len: self.data.len(),
            })
        }
    }
}

/// A saved Keras object's group in `model.weights.h5`: the group that has a `vars` subgroup, and
/// that `vars` group's `name` attribute (the object's name, `None` where the file has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectGroup {
    /// The object's group, `""` for the model itself (`vars` at the root), `layers/q_dense`,
    /// `layers/q_dense/kq/quantizer`, `optimizer`.
    pub path: String,
    /// The `name` attribute of `{path}/vars`: `q_dense`, `fixed_point_quantizer_kbi`, `adam`.
    pub name: Option<String>,
}

/// A Keras 3 `.keras` archive: its three members, the weights file as datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct KerasArchive {
    /// `config.json`, verbatim.
    pub config: String,
    /// `metadata.json`, verbatim.
    pub metadata: String,
    /// The saved objects of `model.weights.h5` (groups with a `vars` subgroup), in file order.
    /// Written back as groups with the `name` attribute even when they hold no datasets, as Keras
    /// writes them.
    pub objects: Vec<ObjectGroup>,
    /// Every dataset of `model.weights.h5` by its path (`layers/q_dense/vars/0`), in file order
    /// (groups by name, `vars` indices by value).
    pub weights: Vec<(String, Array)>,
}

impl KerasArchive {
    /// Reads a `.keras` file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Parses a `.keras` archive: the zip, both JSON members (checked to be JSON) and the HDF5
    /// weights. Members beyond the three (`assets/`) are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))?;
        let config = json_member(&mut zip, CONFIG_MEMBER)?;
        let metadata = json_member(&mut zip, METADATA_MEMBER)?;
        let h5 = member(&mut zip, WEIGHTS_MEMBER)?;
        let (objects, weights) = h5::decode(h5)?;
        Ok(KerasArchive {
            config,
            metadata,
            objects,
            weights,
        })
    }

    /// The archive's bytes: a zip of `metadata.json`, `config.json` and `model.weights.h5`,
    /// stored uncompressed in that order as Keras does. The same archive gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let h5 = h5::encode(&self.objects, &self.weights)?;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(h5.len() as u64 >= u64::from(u32::MAX));
        for (name, data) in [
            (METADATA_MEMBER, self.metadata.as_bytes()),
            (CONFIG_MEMBER, self.config.as_bytes()),
            (WEIGHTS_MEMBER, &h5),
        ] {
            zip.start_file(name, opts)?;
            zip.write_all(data).map_err(zip::result::ZipError::Io)?;
        }
        Ok(zip.finish()?.into_inner())
    }

    /// Writes the archive to a file (see [`KerasArchive::to_bytes`]).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()?).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A dataset by its HDF5 path.
    pub fn weight(&self, h5_path: &str) -> Option<&Array> {
        self.weights
            .iter()
            .find(|(p, _)| p == h5_path)
            .map(|(_, a)| a)
    }
}

fn member(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>> {
    let f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::MissingMember(name.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(f.size().min(1 << 24) as usize);
    f.take(MAX_MEMBER + 1)
        .read_to_end(&mut out)
        .map_err(zip::result::ZipError::Io)?;
    if out.len() as u64 > MAX_MEMBER {
        return Err(Error::TooLarge {
            member: name.to_string(),
            limit: MAX_MEMBER,
        });
    }
    Ok(out)
}

fn json_member(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<String> {
    let bytes = member(zip, name)?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        // Not UTF-8: let serde_json say where.
        Err(e) => {
            let source = serde_json::from_slice::<serde_json::Value>(e.as_bytes())
                .err()
                .unwrap_or_else(|| serde_json::Error::io(std::io::Error::other("not UTF-8")));
            return Err(Error::Json {
                member: name.to_string(),
                source,
            });
        }
    };
    python_json(&text, name)?;
    Ok(text)
}

/// Parses JSON as Python's `json` module writes it: the bare `NaN`, `Infinity` and `-Infinity`
/// that Keras configs hold (hgq2's `"i_decay_speed": Infinity`) read as `null`.
pub(crate) fn python_json(text: &str, member: &str) -> Result<serde_json::Value> {
    let mut strict = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                '\\' => {
                    let n = rest[1..].chars().next().map_or(0, char::len_utf8);
                    strict.push_str(&rest[..1 + n]);
                    rest = &rest[1 + n..];
                    continue;
                }
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            strict.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        strict.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&strict).map_err(|source| Error::Json {
        member: member.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_non_finite() {
        let v = python_json(
            r#"{"a": Infinity, "b": [-Infinity, NaN], "c": "NaN \" Infinity", "d": "\u00e9"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(v["a"], serde_json::Value::Null);
        assert_eq!(v["b"], serde_json::json!([null, null]));
        assert_eq!(v["c"], "NaN \" Infinity");
        assert_eq!(v["d"], "é");
        assert!(python_json("{\"a\": Inf}", "x").is_err());
        assert!(python_json("\"\\", "x").is_err());
    }
}
