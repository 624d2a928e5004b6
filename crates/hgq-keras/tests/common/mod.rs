//! The reference archives of `tests/data/keras` (written by hgq2 through `gen.py`) and their
//! variables.
#![allow(dead_code)]

use std::path::PathBuf;

use hgq_keras::{Array, ArrayData};
use serde_json::Value;

/// `tests/data/keras`.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/keras")
}

/// The reference models.
pub const MODELS: [&str; 6] = ["mlp", "cnn", "seq", "residual", "merges", "bn"];

/// One variable of a reference JSON.
#[derive(Clone, Debug)]
pub struct RefVar {
    /// Keras path.
    pub path: String,
    /// The variable's dtype in Keras (`float32`, `uint8`, `uint32`, `int32`).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, exactly (floats are the float64 of a float32).
    pub values: Vec<f64>,
}

impl RefVar {
    /// The variable as an array of its Keras dtype.
    pub fn array(&self) -> Array {
        let v = &self.values;
        let data = match self.dtype.as_str() {
            "float32" => ArrayData::F32(v.iter().map(|&x| x as f32).collect()),
            "float64" => ArrayData::F64(v.clone()),
            "uint8" => ArrayData::U8(v.iter().map(|&x| x as u8).collect()),
            "uint32" => ArrayData::U32(v.iter().map(|&x| x as u32).collect()),
            "int32" => ArrayData::I32(v.iter().map(|&x| x as i32).collect()),
            "int64" => ArrayData::I64(v.iter().map(|&x| x as i64).collect()),
            other => panic!("{}: dtype {other}", self.path),
        };
        Array::new(self.shape.clone(), data).unwrap()
    }
}

/// A reference JSON: the model's variables and the optimizer's.
pub struct Reference {
    /// `model.variables`.
    pub variables: Vec<RefVar>,
    /// `model.optimizer.variables` (empty when not compiled).
    pub optimizer: Vec<RefVar>,
}

impl Reference {
    /// `tests/data/keras/{name}.json`.
    pub fn load(name: &str) -> Self {
        Self::from_path(&data_dir().join(format!("{name}.json")))
    }

    /// A reference JSON by path.
    pub fn from_path(path: &std::path::Path) -> Self {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let vars = |key: &str| -> Vec<RefVar> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| RefVar {
                    path: e["path"].as_str().unwrap().to_string(),
                    dtype: e["dtype"].as_str().unwrap().to_string(),
                    shape: e["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                    values: e["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect(),
                })
                .collect()
        };
        Reference {
            variables: vars("variables"),
            optimizer: vars("optimizer_variables"),
        }
    }

    /// Model and optimizer variables together.
    pub fn all(&self) -> Vec<RefVar> {
        self.variables
            .iter()
            .chain(&self.optimizer)
            .cloned()
            .collect()
    }

    /// Model and optimizer variables as (Keras path, array of the Keras dtype).
    pub fn arrays(&self) -> Vec<(String, Array)> {
        self.all()
            .iter()
            .map(|v| (v.path.clone(), v.array()))
            .collect()
    }
}
