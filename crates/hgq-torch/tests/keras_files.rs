//! A model written as Keras JSON and weights by Keras variable path, read back: the same model
//! (outputs bit for bit, the same JSON, training on from the same state), and every bad input an
//! error before anything changes.
mod common;

use common::seeded;
use hgq_torch::TorchError;
use hgq_torch::hgq_config::model_json::{DenseModelSpec, QDenseSpec};
use hgq_torch::hgq_config::{Activation as KerasActivation, Place, QType, QuantizerConfig};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, Functional, QDense, Sequential, StepPath};
use hgq_torch::optim::{Adam, AdamConfig};
use tch::{Device, Kind, Tensor, nn};

fn data() -> (Tensor, Tensor) {
    seeded(21, || {
        (
            Tensor::rand([64, 12], (Kind::Float, Device::Cpu)) * 4.0 - 2.0,
            Tensor::randint(3, [64], (Kind::Int64, Device::Cpu)),
        )
    })
}

/// A trained and traced model: its JSON and its variables.
fn trained() -> (nn::VarStore, Sequential) {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = Sequential::new();
    seeded(20, || {
        m.add(
            &vs.root(),
            QDense::builder(12, 8)
                .activation(Activation::Relu)
                .beta(1e-3)
                .kq(QuantizerConfig::builder(QType::Kif, Place::Weight)
                    .build()
                    .unwrap()),
        )
        .unwrap();
        m.add(&vs.root(), QDense::builder(8, 3).name("logits"))
            .unwrap();
    });
    let (x, y) = data();
    let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(1e-2)).unwrap();
    for _ in 0..5 {
        m.train_step(&x, &y, &mut opt).unwrap();
    }
    m.trace_minmax([&x]).unwrap();
    (vs, m)
}

/// Tensors by Keras variable path.
type Named = Vec<(String, Tensor)>;

fn snapshot(m: &Sequential) -> Vec<(String, Vec<f32>)> {
    m.keras_variables()
        .into_iter()
        .map(|(n, t)| (n, Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()))
        .collect()
}

#[test]
fn a_written_model_reads_back_the_same() {
    let (vs, m) = trained();
    let json = m.to_keras_json().unwrap();
    let weights = m.keras_variables();

    let vs2 = nn::VarStore::new(Device::Cpu);
    let m2 = Sequential::from_keras_json(&vs2.root(), &json).unwrap();
    m2.load_keras_variables(&weights).unwrap();
    assert_eq!(m2.to_keras_json().unwrap(), json);
    assert_eq!(snapshot(&m2), snapshot(&m));

    let (x, y) = data();
    let infer = |m: &Sequential| {
        tch::no_grad(|| m.forward(&x, CallMode::Inference))
            .unwrap()
            .y
    };
    assert!(infer(&m).equal(&infer(&m2)), "inference bit for bit");

    // Training on: one step from the same state with fresh optimizers, the same everywhere.
    let (mut o1, mut o2) = (
        Adam::new(&vs, AdamConfig::default()).unwrap(),
        Adam::new(&vs2, AdamConfig::default()).unwrap(),
    );
    m.train_step_on(StepPath::Native, &x, &y, &mut o1).unwrap();
    m2.train_step_on(StepPath::Native, &x, &y, &mut o2).unwrap();
    assert_eq!(snapshot(&m2), snapshot(&m));
}

/// hgq2's JSON of a chain of QDense layers with its own model and input names keeps them.
#[test]
fn names_and_configurations_survive() {
    let spec = DenseModelSpec::new(5)
        .name("tagger")
        .input_name("jets")
        .layer(
            QDenseSpec::new(4)
                .name("dense_a")
                .activation(KerasActivation::Relu)
                .beta0(3e-6),
        )
        .layer(QDenseSpec::new(2).use_bias(false));
    let json = spec.to_json().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Sequential::from_keras_json(&vs.root(), &json).unwrap();
    assert_eq!(m.to_keras_json().unwrap(), json);
    assert_eq!(m.layers()[0].name(), "dense_a");
    assert_eq!(m.layers()[0].beta(), Some(3e-6));
    assert!(!m.layer::<QDense>(1).unwrap().use_bias());
}

#[test]
fn bad_files_change_nothing() {
    let (_vs, m) = trained();
    let json = m.to_keras_json().unwrap();
    let good = m.keras_variables();
    let before = snapshot(&m);
    let named = |f: &dyn Fn(&mut Named)| {
        let mut v: Named = good
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().copy()))
            .collect();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Named)> = vec![
        (
            "missing",
            named(&|v| {
                let _ = v.remove(3);
            }),
        ),
        (
            "shape",
            named(&|v| v[0].1 = Tensor::zeros([3, 3], (Kind::Float, Device::Cpu))),
        ),
        (
            "extra",
            named(&|v| {
                v.push(("q_dense/nothing".into(), Tensor::from(1.0f32)));
            }),
        ),
        (
            "nan",
            named(&|v| {
                let _ = v[1].1.fill_(f64::NAN);
            }),
        ),
    ];
    for (what, tensors) in cases {
        let err = m.load_keras_variables(&tensors).unwrap_err();
        assert!(
            matches!(err, TorchError::Invalid { .. } | TorchError::NonFinite(_)),
            "{what}: {err}"
        );
        assert_eq!(snapshot(&m), before, "{what}: a variable changed");
    }
    // hgq2's bookkeeping tensors are taken and ignored.
    let with_ebops = named(&|v| {
        v.push(("q_dense/ebops".into(), Tensor::from(5.0f32)));
    });
    m.load_keras_variables(&with_ebops).unwrap();

    // A file this crate cannot build: an error naming the layer, and nothing in the store.
    let vs = nn::VarStore::new(Device::Cpu);
    let tanh = DenseModelSpec::new(3)
        .layer(QDenseSpec::new(4))
        .layer(
            QDenseSpec::new(2)
                .name("out")
                .activation(KerasActivation::Tanh),
        )
        .to_json()
        .unwrap();
    let err = Sequential::from_keras_json(&vs.root(), &tanh).unwrap_err();
    assert!(
        matches!(&err, TorchError::Unsupported(w) if w.contains("out") && w.contains("tanh")),
        "{err}"
    );
    assert!(vs.variables().is_empty());
    let truncated = &json[..json.len() / 2];
    assert!(matches!(
        Sequential::from_keras_json(&vs.root(), truncated).unwrap_err(),
        TorchError::Config(_)
    ));
    assert!(vs.variables().is_empty());
}

/// A model trained in hgq2 (`tests/data/reference/gen_model.py`: two QDense layers, three epochs
/// on jax, `trace_minmax`), read into hgq: its JSON back byte for byte, hgq2's inference outputs
/// bit for bit, and it trains on.
#[test]
fn a_model_trained_in_hgq2_reads_into_hgq() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/reference/hgq2_mlp");
    let json = std::fs::read_to_string(dir.join("model.json")).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Sequential::from_keras_json(&vs.root(), &json).unwrap();
    m.load_keras_variables(&Tensor::read_safetensors(dir.join("weights.safetensors")).unwrap())
        .unwrap();
    assert_eq!(m.to_keras_json().unwrap(), json);
    let p = Tensor::read_safetensors(dir.join("predictions.safetensors")).unwrap();
    let get = |n: &str| p.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    let (x, y) = (get("x"), get("y"));
    let ours = tch::no_grad(|| m.forward(&x, CallMode::Inference))
        .unwrap()
        .y;
    assert!(ours.equal(&y), "hgq2's outputs bit for bit");

    let labels = ours.argmax(-1, false);
    let mut opt = Adam::new(&vs, AdamConfig::default()).unwrap();
    let before = snapshot(&m);
    let out = m.train_step(&x, &labels, &mut opt).unwrap();
    assert!(out.loss.double_value(&[]).is_finite());
    assert_ne!(snapshot(&m), before);
}

/// Keras' own `Activation` and `ReLU` layers between hgq2's: the models hgq2 wrote
/// (hgq-config's reference JSONs `act_chain`, `act_cnn`, `seq_act`) read into hgq-torch and
/// written back byte for byte (`seq_act`, a Keras Sequential document, in the functional
/// form `act_chain` has); what is not built (other activations, a leaky or thresholded ReLU)
/// is an error naming the layer.
#[test]
fn keras_activation_layers_read_and_write_back() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../hgq-config/tests/data/models");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    for f in ["act_chain.json", "act_cnn.json"] {
        let json = read(f);
        let vs = nn::VarStore::new(Device::Cpu);
        let m =
            Sequential::from_keras_json(&vs.root(), &json).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.to_keras_json().unwrap(), json, "{f}");
        let dims: Vec<i64> = std::iter::once(3)
            .chain(m.layers()[0].input_dims().iter().map(|&d| d as i64))
            .collect();
        let x = Tensor::ones(dims.as_slice(), (Kind::Float, Device::Cpu));
        m.forward(&x, CallMode::Training).unwrap();
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let seq = Sequential::from_keras_json(&vs.root(), &read("seq_act.json")).unwrap();
    let names: Vec<&str> = seq.layers().iter().map(|l| l.name()).collect();
    assert!(
        names.contains(&"activation") && names.contains(&"re_lu"),
        "{names:?}"
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let e = Functional::from_keras_json(&vs.root(), &read("graph_act.json")).unwrap_err();
    assert!(
        matches!(&e, TorchError::Unsupported(w) if w.contains("not built")),
        "{e}"
    );
}
