//! `.keras` archives both ways: archives hgq2 saved (`tests/data/keras/gen.py`: an MLP compiled
//! and trained a batch, a CNN, a Keras `Sequential`, a residual block, every merge, batch
//! norm) open in hgq-torch with every variable, `beta` and EBOPs as hgq2 saved them and hgq2's
//! inference outputs bit for bit; a model trained on, saved and opened again is the same
//! model (the graphs of `tests/data/reference/more.json` too: QEinsumDense, QBatchNormDense,
//! QEinsumDenseBatchnorm, QUnaryFunctionLUT, QSoftmax); bad archives are errors.
mod common;

use common::seeded;
use hgq_torch::TorchError;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Functional, Layer, Sequential, StepPath};
use hgq_torch::optim::{Adam, AdamConfig};
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/keras")
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(data_dir().join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn shape(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_i64().unwrap())
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).contiguous().view([-1])).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every variable hgq2 saved (less the model name) equals ours, `beta` and `ebops` included.
fn check_variables(layers: &[Box<dyn Layer>], vars: Vec<(String, Tensor)>, r: &Value, what: &str) {
    let ours: std::collections::HashMap<String, Tensor> = vars.into_iter().collect();
    let mut n = 0;
    for v in r["variables"].as_array().unwrap() {
        let path = v["path"].as_str().unwrap();
        let path = path.split_once('/').map_or(path, |(first, rest)| {
            if first == "functional" || first == "sequential" {
                rest
            } else {
                path
            }
        });
        let want = f32s(&v["values"]);
        let (layer, leaf) = path.rsplit_once('/').unwrap();
        let by_name = || layers.iter().find(|l| l.name() == layer).unwrap();
        let got: Vec<f32> = match leaf {
            "beta" if !layer.contains('/') => vec![by_name().beta().unwrap() as f32],
            "ebops" if !layer.contains('/') => vec![by_name().ebops() as f32],
            _ => values(
                ours.get(path)
                    .unwrap_or_else(|| panic!("{what}: no {path}")),
            ),
        };
        assert_eq!(bits(&got), bits(&want), "{what}: {path}");
        n += 1;
    }
    assert!(n >= 20, "{what}: {n} variables");
}

#[test]
fn hgq2_archives_open_with_hgq2s_values_and_outputs() {
    for name in ["mlp", "cnn", "seq", "residual", "merges", "bn"] {
        let r = reference(name);
        let path = data_dir().join(format!("{name}.keras"));
        let vs = nn::VarStore::new(Device::Cpu);
        let g = Functional::load_keras(&vs.root(), &path).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_variables(g.layers(), g.keras_variables(), &r, name);
        let inf = &r["inference"];
        let x = Tensor::from_slice(&f32s(&inf["x"])).reshape(shape(&inf["x_shape"]));
        let y = g.forward(&[&x], CallMode::Inference).unwrap().ys.remove(0);
        assert_eq!(y.size(), shape(&inf["y_shape"]), "{name}");
        assert_eq!(
            bits(&values(&y)),
            bits(&f32s(&inf["y"])),
            "{name}: inference"
        );
        // A chain opens as a Sequential too, to the same model.
        let vs2 = nn::VarStore::new(Device::Cpu);
        if let Ok(m) = Sequential::load_keras(&vs2.root(), &path) {
            check_variables(m.layers(), m.keras_variables(), &r, name);
            let ys = m.forward(&x, CallMode::Inference).unwrap().y;
            assert_eq!(bits(&values(&ys)), bits(&values(&y)), "{name}: as a chain");
        } else {
            assert!(["residual", "merges"].contains(&name), "{name} is a chain");
        }
    }
}

/// A graph with merges and batch norm, trained, saved and opened again: the same model.
#[test]
fn a_graph_saved_and_opened_again_is_the_same_model() {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = Functional::load_keras(&vs.root(), data_dir().join("merges.keras")).unwrap();
    let x = seeded(3, || Tensor::randn([16, 6], (Kind::Float, Device::Cpu)));
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
    for _ in 0..3 {
        let o = g.forward(&[&x], CallMode::Training).unwrap();
        let loss = o.ys[0].square().mean(Kind::Float) + o.ebops_loss;
        opt.backward_step(&loss).unwrap();
        g.apply_constraints().unwrap();
    }
    let dir = std::env::temp_dir().join(format!("hgq-graph-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("merges_trained.keras");
    g.save_keras(&path).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = Functional::load_keras(&vs2.root(), &path).unwrap();
    assert_eq!(back.to_keras_json().unwrap(), g.to_keras_json().unwrap());
    for ((pa, ta), (pb, tb)) in g.keras_variables().iter().zip(&back.keras_variables()) {
        assert_eq!(pa, pb);
        assert_eq!(bits(&values(ta)), bits(&values(tb)), "{pa}");
    }
    let (ya, yb) = (
        g.forward(&[&x], CallMode::Inference).unwrap().ys.remove(0),
        back.forward(&[&x], CallMode::Inference)
            .unwrap()
            .ys
            .remove(0),
    );
    assert_eq!(bits(&values(&ya)), bits(&values(&yb)));
    std::fs::remove_dir_all(&dir).ok();
}

/// The graphs of `tests/data/reference/more.json` (QEinsumDense, QBatchNormDense,
/// QEinsumDenseBatchnorm, QUnaryFunctionLUT, QSoftmax; hgq2's JSON) of one input and one
/// output, each trained 3 steps and traced on 16 rows: `(name, model, its store, the rows)`.
fn more_graphs() -> Vec<(String, Functional, nn::VarStore, Tensor)> {
    let path = data_dir().join("../reference/more.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for case in d["graph"].as_array().unwrap() {
        let vs = nn::VarStore::new(Device::Cpu);
        let g =
            Functional::from_keras_json(&vs.root(), case["model_json"].as_str().unwrap()).unwrap();
        if g.inputs().len() != 1 || g.outputs().len() != 1 {
            continue;
        }
        let dims: Vec<i64> = std::iter::once(16)
            .chain(g.inputs()[0].1.iter().map(|&d| d as i64))
            .collect();
        let x = seeded(3, || {
            Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu))
        }) * 2.0;
        let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
        for _ in 0..3 {
            let o = g.forward(&[&x], CallMode::Training).unwrap();
            let loss = o.ys[0].square().mean(Kind::Float) + o.ebops_loss;
            opt.backward_step(&loss).unwrap();
            g.apply_constraints().unwrap();
        }
        g.trace_minmax(&[vec![x.shallow_clone()]]).unwrap();
        let name = case["name"].as_str().unwrap().replace('/', "_");
        out.push((name, g, vs, x));
    }
    out
}

#[test]
fn graphs_of_the_newer_layers_save_and_open_again() {
    let dir = std::env::temp_dir().join(format!("hgq-more-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let graphs = more_graphs();
    assert!(graphs.len() >= 10, "{} graphs", graphs.len());
    for (name, g, _vs, x) in &graphs {
        let path = dir.join(format!("{name}.keras"));
        g.save_keras(&path).unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let back = Functional::load_keras(&vs2.root(), &path).unwrap();
        assert_eq!(back.to_keras_json().unwrap(), g.to_keras_json().unwrap());
        for ((pa, ta), (pb, tb)) in g.keras_variables().iter().zip(&back.keras_variables()) {
            assert_eq!(pa, pb, "{name}");
            assert_eq!(bits(&values(ta)), bits(&values(tb)), "{name}: {pa}");
        }
        for (la, lb) in g.layers().iter().zip(back.layers()) {
            assert_eq!(la.ebops(), lb.ebops(), "{name}: EBOPs of {}", la.name());
        }
        let (ya, yb) = (
            g.forward(&[x], CallMode::Inference).unwrap().ys.remove(0),
            back.forward(&[x], CallMode::Inference)
                .unwrap()
                .ys
                .remove(0),
        );
        assert_eq!(bits(&values(&ya)), bits(&values(&yb)), "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn trained_on_saved_and_opened_again_is_the_same_model() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Sequential::load_keras(&vs.root(), data_dir().join("mlp.keras")).unwrap();
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
    let x = seeded(5, || Tensor::randn([32, 16], (Kind::Float, Device::Cpu))) * 2.0;
    let labels = x.argmax(-1, false).remainder(4);
    for _ in 0..3 {
        m.train_step_on(StepPath::Autograd, &x, &labels, &mut opt)
            .unwrap();
    }
    m.trace_minmax([&x]).unwrap();
    let dir = std::env::temp_dir().join(format!("hgq-archives-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mlp_trained.keras");
    m.save_keras(&path).unwrap();

    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = Sequential::load_keras(&vs2.root(), &path).unwrap();
    assert_eq!(back.to_keras_json().unwrap(), m.to_keras_json().unwrap());
    let (a, b) = (m.keras_variables(), back.keras_variables());
    assert_eq!(a.len(), b.len());
    for ((pa, ta), (pb, tb)) in a.iter().zip(&b) {
        assert_eq!(pa, pb);
        assert_eq!(bits(&values(ta)), bits(&values(tb)), "{pa}");
    }
    for (la, lb) in m.layers().iter().zip(back.layers()) {
        assert_eq!(la.ebops(), lb.ebops(), "{}", la.name());
        assert_eq!(la.beta(), lb.beta(), "{}", la.name());
    }
    let (ya, yb) = (
        m.forward(&x, CallMode::Inference).unwrap().y,
        back.forward(&x, CallMode::Inference).unwrap().y,
    );
    assert_eq!(bits(&values(&ya)), bits(&values(&yb)));
    std::fs::remove_dir_all(&dir).ok();
}

/// A model of stochastic rounding (`S_RND`: a seed state that moves with each training call)
/// saved and opened again. Keras does not save a `SeedGenerator`'s state, so an archive has
/// none (as hgq2's): the model opened starts it afresh, every other variable as saved.
#[test]
fn stochastic_rounding_saves_as_keras_does() {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = s_rnd_model(&vs);
    let x = seeded(4, || Tensor::randn([8, 6], (Kind::Float, Device::Cpu)));
    for _ in 0..2 {
        m.forward(&x, CallMode::Training).unwrap();
    }
    let seed = |m: &Sequential| {
        let v = m.keras_variables();
        let (p, t) = v
            .iter()
            .find(|(p, _)| p.ends_with("/seed_generator/seed_generator_state"))
            .expect("a seed state");
        (
            p.clone(),
            Vec::<i32>::try_from(t.contiguous().view([-1])).unwrap(),
        )
    };
    let (path, state) = seed(&m);
    assert_eq!(
        path,
        "q_dense/q_dense_iq/fixed_point_quantizer_kif/seed_generator/seed_generator_state"
    );
    assert_eq!(state[1], 2, "two training calls");
    let dir = std::env::temp_dir().join(format!("hgq-srnd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    m.save_keras(dir.join("s_rnd.keras")).unwrap();
    let archive = hgq_keras_archive(&dir.join("s_rnd.keras"));
    assert!(
        archive.objects.iter().all(|o| !o.path.contains("seed")),
        "no seed state in the archive"
    );
    let vs2 = nn::VarStore::new(Device::Cpu);
    let back = Sequential::load_keras(&vs2.root(), dir.join("s_rnd.keras")).unwrap();
    assert_eq!(seed(&back).1[1], 0, "the seed state starts afresh");
    for ((pa, ta), (pb, tb)) in m.keras_variables().iter().zip(&back.keras_variables()) {
        if !pa.ends_with("seed_generator_state") {
            assert_eq!(bits(&values(ta)), bits(&values(tb)), "{pa} ({pb})");
        }
    }
    let (ya, yb) = (
        m.forward(&x, CallMode::Inference).unwrap().y,
        back.forward(&x, CallMode::Inference).unwrap().y,
    );
    assert_eq!(bits(&values(&ya)), bits(&values(&yb)));
    std::fs::remove_dir_all(&dir).ok();
}

fn s_rnd_model(vs: &nn::VarStore) -> Sequential {
    use hgq_torch::hgq_config::{Place, QType, QuantizerConfig};
    use hgq_torch::hgq_core::RoundMode;
    use hgq_torch::layers::QDense;
    let iq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .round_mode(RoundMode::SRnd)
        .build()
        .unwrap();
    let mut m = Sequential::new();
    m.add(&vs.root(), QDense::builder(6, 3).iq(iq)).unwrap();
    m
}

#[test]
fn bad_archives_are_errors() {
    let dir = std::env::temp_dir().join(format!("hgq-bad-archives-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    // No such file.
    let e = Sequential::load_keras(&vs.root(), dir.join("missing.keras")).unwrap_err();
    assert!(
        matches!(
            e,
            TorchError::Invalid {
                what: "Keras archive",
                ..
            }
        ),
        "{e}"
    );
    // Truncated.
    let bytes = std::fs::read(data_dir().join("mlp.keras")).unwrap();
    let cut = dir.join("cut.keras");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Sequential::load_keras(&vs.root(), &cut).unwrap_err();
    assert!(
        matches!(
            e,
            TorchError::Invalid {
                what: "Keras archive",
                ..
            }
        ),
        "{e}"
    );
    // A weight of another shape: the CNN's weights under the MLP's config.
    let mut a = hgq_keras_archive(&data_dir().join("mlp.keras"));
    let other = hgq_keras_archive(&data_dir().join("cnn.keras"));
    a.weights = other.weights.clone();
    a.objects = other.objects.clone();
    let swapped = dir.join("swapped.keras");
    a.write(&swapped).unwrap();
    assert!(Sequential::load_keras(&vs.root(), &swapped).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

fn hgq_keras_archive(p: &std::path::Path) -> hgq_torch::hgq_keras::KerasArchive {
    hgq_torch::hgq_keras::KerasArchive::read(p).unwrap()
}

/// hgq2 opens what we save: each reference model, trained on here and saved, is opened by
/// `keras.models.load_model` (after `import hgq`), and its inference outputs on the same
/// inputs are ours bit for bit. Needs the project's `.venv` Python with keras and hgq2
/// (`HGQ_KERAS_PYTHON` to name another): ignored by default, `cargo test -p hgq-torch --test
/// keras_archives -- --ignored` runs it (and fails where that Python is missing).
#[test]
#[ignore = "runs hgq2: needs a Python with keras and hgq2 (HGQ_KERAS_PYTHON or .venv)"]
fn hgq2_opens_our_saves_with_our_outputs() {
    let py = std::env::var_os("HGQ_KERAS_PYTHON").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python"),
        std::path::PathBuf::from,
    );
    let dir = std::env::temp_dir().join(format!("hgq-hgq2-opens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
import os, sys
os.environ.setdefault('KERAS_BACKEND', 'torch')
import numpy as np, keras, hgq
for path in sys.argv[1:]:
    m = keras.models.load_model(path, compile=False)
    x = np.load(path + '.x.npy')
    y = keras.ops.convert_to_numpy(m(x, training=False))
    np.save(path + '.y.npy', np.ascontiguousarray(y, dtype=np.float32))
"#;
    let mut saved = Vec::new();
    for name in ["cnn", "seq", "residual", "merges", "bn"] {
        let vs = nn::VarStore::new(Device::Cpu);
        let g =
            Functional::load_keras(&vs.root(), data_dir().join(format!("{name}.keras"))).unwrap();
        let dims: Vec<i64> = std::iter::once(64)
            .chain(g.inputs()[0].1.iter().map(|&d| d as i64))
            .collect();
        let x = seeded(9, || {
            Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu))
        }) * 3.0;
        let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
        for _ in 0..3 {
            let o = g.forward(&[&x], CallMode::Training).unwrap();
            let loss = o.ys[0].square().mean(Kind::Float) + o.ebops_loss;
            opt.backward_step(&loss).unwrap();
            g.apply_constraints().unwrap();
        }
        g.trace_minmax(&[vec![x.shallow_clone()]]).unwrap();
        let path = dir.join(format!("{name}.keras"));
        g.save_keras(&path).unwrap();
        let mut xs = path.clone().into_os_string();
        xs.push(".x.npy");
        x.write_npy(&xs).unwrap();
        let y = g.forward(&[&x], CallMode::Inference).unwrap().ys.remove(0);
        saved.push((name, path, y));
    }
    {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = s_rnd_model(&vs);
        let x = seeded(9, || Tensor::randn([64, 6], (Kind::Float, Device::Cpu))) * 3.0;
        m.forward(&x, CallMode::Training).unwrap();
        let path = dir.join("s_rnd.keras");
        m.save_keras(&path).unwrap();
        let mut xs = path.clone().into_os_string();
        xs.push(".x.npy");
        x.write_npy(&xs).unwrap();
        let y = m.forward(&x, CallMode::Inference).unwrap().y;
        saved.push(("s_rnd", path, y));
    }
    for (name, g, _vs, x) in more_graphs() {
        let path = dir.join(format!("{name}.keras"));
        g.save_keras(&path).unwrap();
        let mut xs = path.clone().into_os_string();
        xs.push(".x.npy");
        x.write_npy(&xs).unwrap();
        let y = g.forward(&[&x], CallMode::Inference).unwrap().ys.remove(0);
        saved.push((name.leak(), path, y));
    }
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(saved.iter().map(|(_, p, _)| p))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, path, y) in &saved {
        let mut ys = path.clone().into_os_string();
        ys.push(".y.npy");
        let theirs = &Tensor::read_npy(&ys).unwrap();
        assert_eq!(
            bits(&values(theirs)),
            bits(&values(y)),
            "{name}: hgq2's outputs"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
