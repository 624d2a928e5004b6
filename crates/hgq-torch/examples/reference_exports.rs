//! Export folders of hgq2's reference models, for the firmware check of every layer kind.
//!
//! `cargo run --release -p hgq-torch --example reference_exports -- [REFERENCE.json] [OUT]`
//! reads the cases of `tests/data/reference/cnn.json` or `graph.json` (made by `gen_cnn.py` /
//! `gen_graph.py` running hgq2), builds each model of one input and one output from hgq2's own
//! Keras JSON ([`Sequential::from_keras_json`], else [`Functional::from_keras_json`]), sets
//! the variables hgq2 had after tracing (for a graph, whose quantizers Keras numbers in call
//! order: 30 Adam steps on the inputs instead, then `trace_minmax`), runs 512 rows of inputs
//! at several scales (so that WRAP and saturation matter) in inference, and writes one export
//! folder per case under OUT (default `out/reference`): `model.json`, `weights.safetensors`,
//! `predictions.safetensors`. Then `cargo xtask interop OUT/<case>` runs the same inputs
//! through hgq2 and through hls4ml's `bit_exact` firmware and counts the rows that differ.
use std::path::{Path, PathBuf};

use hgq_torch::hgq_config::Activation as KerasActivation;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::interop::probe_rows as inputs;
use hgq_torch::layers::{
    Activation, Flatten, Functional, MergeOp, Padding, QBatchNorm, QConv, QDense, QMerge, QSoftmax,
    QUnaryFunctionLut, Sequential,
};
use hgq_torch::optim::{Adam, AdamConfig};
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

/// hgq2's variables after `trace_minmax` (the state its inference ran with).
fn traced_state(case: &Value) -> Result<Vec<(String, Tensor)>, Error> {
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
    Ok(tensors)
}

fn write(
    dir: &Path,
    json: String,
    vars: Vec<(String, Tensor)>,
    x: &Tensor,
    y: &Tensor,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("model.json"), json)?;
    let vars: Vec<(String, Tensor)> = vars
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

fn export(case: &Value, out: &Path) -> Result<(), Error> {
    let name = case["name"].as_str().ok_or("a case name")?;
    let json = case["model_json"].as_str().ok_or("model_json")?;
    let dir = out.join(name.replace('/', "_"));
    let vs = nn::VarStore::new(Device::Cpu);
    if let Ok(model) = Sequential::from_keras_json(&vs.root(), json) {
        model.load_keras_variables(&traced_state(case)?)?;
        let x = inputs(model.layers()[0].input_dims());
        let y = tch::no_grad(|| model.forward(&x, CallMode::Inference))?.y;
        return write(
            &dir,
            model.to_keras_json()?,
            model.keras_variables(),
            &x,
            &y,
        );
    }
    let g = Functional::from_keras_json(&vs.root(), json)?;
    if g.inputs().len() != 1 || g.outputs().len() != 1 {
        eprintln!(
            "{name}: {} inputs, {} outputs: skipped (the check takes one of each)",
            g.inputs().len(),
            g.outputs().len()
        );
        return Ok(());
    }
    let x = inputs(&g.inputs()[0].1);
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2))?;
    for _ in 0..30 {
        let o = g.forward(&[&x], CallMode::Training)?;
        let target = x.flatten(1, -1).narrow(1, 0, 1).detach();
        let loss = (&o.ys[0] - target).square().mean(Kind::Float) + o.ebops_loss;
        opt.backward_step(&loss)?;
        g.apply_constraints()?;
    }
    g.trace_minmax(&[vec![x.shallow_clone()]])?;
    let y = tch::no_grad(|| g.forward(&[&x], CallMode::Inference))?
        .ys
        .remove(0);
    write(&dir, g.to_keras_json()?, g.keras_variables(), &x, &y)
}

/// Graphs of this crate's own, in the forms hls4ml 1.3 converts (merges of two inputs; no
/// 2-D global pooling): every merge operation, and batch norm after dense and convolution
/// layers in a residual block.
fn own_graphs() -> Result<Vec<(&'static str, Functional, nn::VarStore)>, Error> {
    let mut out = Vec::new();
    // Every merge of two.
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut g = Functional::new();
    let x = g.input(&[6])?;
    let a = g.add(&root, QDense::builder(6, 5).activation(Activation::Relu), x)?;
    let b = g.add(&root, QDense::builder(6, 5), x)?;
    let m = |op| QMerge::builder(op, &[5], 2);
    let sub = g.merge(&root, m(MergeOp::Subtract), &[a, b])?;
    let mul = g.merge(&root, m(MergeOp::Multiply), &[a, b])?;
    let max = g.merge(&root, m(MergeOp::Maximum), &[sub, mul])?;
    let min = g.merge(&root, m(MergeOp::Minimum), &[max, a])?;
    let avg = g.merge(&root, m(MergeOp::AveragePow2), &[min, b])?;
    let add = g.merge(&root, m(MergeOp::Add), &[avg, sub])?;
    let y = g.add(&root, QDense::builder(5, 2), add)?;
    g.set_outputs(&[y])?;
    out.push(("own_merges", g, vs));
    // Batch norm after a dense layer and in a residual convolution block.
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut g = Functional::new();
    let x = g.input(&[6, 6, 2])?;
    let c = g.add(
        &root,
        QConv::builder_2d([6, 6, 2], 4, [3, 3]).padding(Padding::Same),
        x,
    )?;
    let n = g.add(&root, QBatchNorm::builder(&[6, 6, 4]), c)?;
    let d = g.add(
        &root,
        QConv::builder_2d([6, 6, 4], 4, [3, 3])
            .padding(Padding::Same)
            .activation(Activation::Relu),
        n,
    )?;
    let s = g.merge(&root, QMerge::builder(MergeOp::Add, &[6, 6, 4], 2), &[c, d])?;
    let f = g.add(&root, Flatten::new(&[6, 6, 4])?, s)?;
    let h = g.add(&root, QDense::builder(144, 8), f)?;
    let h = g.add(&root, QBatchNorm::builder(&[8]), h)?;
    let y = g.add(&root, QDense::builder(8, 3), h)?;
    g.set_outputs(&[y])?;
    out.push(("own_conv_batchnorm_residual", g, vs));
    // Lookup tables of one bit width each (what hls4ml 1.3 converts), a QSoftmax at the end.
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut g = Functional::new();
    let x = g.input(&[6])?;
    let h = g.add(&root, QDense::builder(6, 5), x)?;
    let table = |a| -> Result<_, Error> {
        Ok(QUnaryFunctionLut::builder(&[5], a)?.allow_heterogeneous_table(false))
    };
    let h = g.add(&root, table(KerasActivation::Tanh)?, h)?;
    let h = g.add(&root, QDense::builder(5, 5), h)?;
    let h = g.add(&root, table(KerasActivation::Sigmoid)?, h)?;
    let h = g.add(&root, QDense::builder(5, 4), h)?;
    let y = g.add(&root, QSoftmax::builder(&[4]), h)?;
    g.set_outputs(&[y])?;
    out.push(("own_tables_softmax", g, vs));
    Ok(out)
}

/// 30 Adam steps toward a target made of the inputs (so that bit widths and batch norm
/// statistics move), `trace_minmax`, inference on `x`, an export folder.
fn train_and_export(g: &Functional, vs: &nn::VarStore, dir: &Path) -> Result<(), Error> {
    let x = inputs(&g.inputs()[0].1);
    let mut opt = Adam::new(vs, AdamConfig::default().learning_rate(1e-2))?;
    for _ in 0..30 {
        let o = g.forward(&[&x], CallMode::Training)?;
        let width = o.ys[0].size()[1];
        let target = x.flatten(1, -1).narrow(1, 0, width).detach();
        let loss = (&o.ys[0] - target).square().mean(Kind::Float) + o.ebops_loss;
        opt.backward_step(&loss)?;
        g.apply_constraints()?;
    }
    g.trace_minmax(&[vec![x.shallow_clone()]])?;
    let y = tch::no_grad(|| g.forward(&[&x], CallMode::Inference))?
        .ys
        .remove(0);
    write(dir, g.to_keras_json()?, g.keras_variables(), &x, &y)
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
    for (name, g, vs) in own_graphs()? {
        train_and_export(&g, &vs, &out.join(name))?;
    }
    Ok(())
}
