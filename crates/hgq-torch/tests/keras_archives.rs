//! `.keras` archives both ways: archives hgq2 saved (`tests/data/keras/gen.py`: an MLP compiled
//! and trained a batch, a CNN) open in hgq-torch with every variable, `beta` and EBOPs as
//! hgq2 saved them and hgq2's inference outputs bit for bit; a model trained on, saved and
//! opened again is the same model; bad archives are errors.
mod common;

use common::seeded;
use hgq_torch::TorchError;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Functional, Sequential, StepPath};
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
fn check_variables(m: &Sequential, r: &Value, what: &str) {
    let ours: std::collections::HashMap<String, Tensor> = m.keras_variables().into_iter().collect();
    let mut n = 0;
    for v in r["variables"].as_array().unwrap() {
        let path = v["path"].as_str().unwrap();
        let path =
            path.split_once('/').map_or(
                path,
                |(first, rest)| {
                    if first == "functional" { rest } else { path }
                },
            );
        let want = f32s(&v["values"]);
        let (layer, leaf) = path.rsplit_once('/').unwrap();
        let got: Vec<f32> = match leaf {
            "beta" if !layer.contains('/') => {
                let l = m.layers().iter().find(|l| l.name() == layer).unwrap();
                vec![l.beta().unwrap() as f32]
            }
            "ebops" if !layer.contains('/') => {
                let l = m.layers().iter().find(|l| l.name() == layer).unwrap();
                vec![l.ebops() as f32]
            }
            _ => values(
                ours.get(path)
                    .unwrap_or_else(|| panic!("{what}: no {path}")),
            ),
        };
        assert_eq!(bits(&got), bits(&want), "{what}: {path}");
        n += 1;
    }
    assert!(n >= 30, "{what}: {n} variables");
}

#[test]
fn hgq2_archives_open_with_hgq2s_values_and_outputs() {
    for name in ["mlp", "cnn"] {
        let r = reference(name);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Sequential::load_keras(&vs.root(), data_dir().join(format!("{name}.keras")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_variables(&m, &r, name);
        let inf = &r["inference"];
        let x = Tensor::from_slice(&f32s(&inf["x"])).reshape(shape(&inf["x_shape"]));
        let y = m.forward(&x, CallMode::Inference).unwrap().y;
        assert_eq!(y.size(), shape(&inf["y_shape"]), "{name}");
        assert_eq!(
            bits(&values(&y)),
            bits(&f32s(&inf["y"])),
            "{name}: inference"
        );
        // The functional reader opens the same archive to the same model.
        let vs2 = nn::VarStore::new(Device::Cpu);
        let g =
            Functional::load_keras(&vs2.root(), data_dir().join(format!("{name}.keras"))).unwrap();
        let yg = g.forward(&[&x], CallMode::Inference).unwrap().ys.remove(0);
        assert_eq!(bits(&values(&yg)), bits(&values(&y)), "{name}: as a graph");
    }
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
