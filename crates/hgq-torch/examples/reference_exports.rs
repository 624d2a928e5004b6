//! Export folders of hgq2's reference models, for the firmware check of every layer kind.
//!
//! `cargo run --release -p hgq-torch --example reference_exports -- [REFERENCE.json] [OUT]`
//! reads the cases of `tests/data/reference/cnn.json` (made by `gen_cnn.py` running hgq2),
//! builds each model from hgq2's own Keras JSON ([`Sequential::from_keras_json`]), sets the
//! variables hgq2 had after tracing, runs 512 rows of inputs at several scales (so that WRAP
//! and saturation matter) in inference, and writes one export folder per case under OUT
//! (default `out/reference`): `model.json`, `weights.safetensors`, `predictions.safetensors`.
//! Then `cargo xtask interop OUT/<case>` runs the same inputs through hgq2 and through
//! hls4ml's `bit_exact` firmware and counts the rows that differ.
use std::path::{Path, PathBuf};

use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::Sequential;
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

type Error = Box<dyn std::error::Error>;

fn f32s(v: &Value) -> Result<Vec<f32>, Error> {
    v.as_array()
        .ok_or("an array")?
        .iter()
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| "a number".into())
        })
        .collect()
}

fn export(case: &Value, out: &Path) -> Result<(), Error> {
    let name = case["name"].as_str().ok_or("a case name")?;
    let json = case["model_json"].as_str().ok_or("model_json")?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Sequential::from_keras_json(&vs.root(), json)?;
    // hgq2's variables after trace_minmax (the state its inference ran with).
    let state = &case["calls"][1]["state_after"];
    let mut tensors = Vec::new();
    for (path, v) in state.as_object().ok_or("a state")? {
        let shape: Vec<i64> = v["shape"]
            .as_array()
            .ok_or("a shape")?
            .iter()
            .map(|d| d.as_i64().unwrap_or(0))
            .collect();
        tensors.push((
            path.clone(),
            Tensor::from_slice(&f32s(&v["value"])?).reshape(shape),
        ));
    }
    model.load_keras_variables(&tensors)?;
    let dims: Vec<i64> = std::iter::once(512)
        .chain(model.layers()[0].input_dims().iter().map(|&d| d as i64))
        .collect();
    tch::manual_seed(0);
    // Rows at scales 1/2 to 8: small values, values past the integer bits.
    let scale = Tensor::from_slice(&[0.5f32, 1.0, 2.0, 4.0, 8.0, 1.0, 2.0, 0.5])
        .repeat([64])
        .reshape(
            std::iter::once(512)
                .chain(dims[1..].iter().map(|_| 1))
                .collect::<Vec<i64>>(),
        );
    let x = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu)) * scale;
    let y = tch::no_grad(|| model.forward(&x, CallMode::Inference))?.y;
    let dir = out.join(name.replace('/', "_"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("model.json"), model.to_keras_json()?)?;
    let vars: Vec<(String, Tensor)> = model
        .keras_variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().contiguous()))
        .collect();
    Tensor::write_safetensors(&vars, dir.join("weights.safetensors"))?;
    Tensor::write_safetensors(
        &[("x", x.contiguous()), ("y", y.contiguous())],
        dir.join("predictions.safetensors"),
    )?;
    println!("{}", dir.display());
    Ok(())
}

fn main() -> Result<(), Error> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .map_or_else(|| root.join("tests/data/reference/cnn.json"), PathBuf::from);
    let out = args
        .next()
        .map_or_else(|| PathBuf::from("out/reference"), PathBuf::from);
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&data)?)?;
    let cases = d
        .as_object()
        .and_then(|o| o.values().find_map(Value::as_array))
        .ok_or("no cases")?;
    for case in cases {
        export(case, &out)?;
    }
    Ok(())
}
