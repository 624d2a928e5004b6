//! The archives hgq2 saved (`tests/data/keras/gen.py`): read, mapped to Keras variable paths with
//! the values of the reference JSON exactly, and written back in the layout Keras wrote.
mod common;

use std::collections::BTreeSet;

use common::{MODELS, RefVar, Reference, data_dir};
use hgq_keras::{Array, ArrayData, KerasArchive};

fn archive(name: &str) -> KerasArchive {
    KerasArchive::read(data_dir().join(format!("{name}.keras"))).unwrap()
}

/// The array holds the reference's values exactly, in the dtype Keras stores it as.
fn assert_same(want: &RefVar, got: &Array) {
    assert_eq!(got.shape, want.shape, "{}", want.path);
    let ok_dtype = match want.dtype.as_str() {
        // hgq2's uint32 `ebops`: Keras' torch backend stores it as int64, jax as uint32.
        "uint32" => matches!(got.data, ArrayData::U32(_) | ArrayData::I64(_)),
        d => got.data.dtype() == d,
    };
    assert!(
        ok_dtype,
        "{}: {} stored as {}",
        want.path,
        want.dtype,
        got.data.dtype()
    );
    if let ArrayData::F32(v) = &got.data {
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        let want_bits: Vec<u32> = want.values.iter().map(|&x| (x as f32).to_bits()).collect();
        assert_eq!(bits, want_bits, "{}", want.path);
    }
    assert_eq!(got.data.to_f64(), want.values, "{}", want.path);
}

fn assert_variables(a: &KerasArchive, r: &Reference) {
    let all = r.all();
    let names: Vec<&str> = all.iter().map(|v| v.path.as_str()).collect();
    let got = a.variable_paths(&names).unwrap();
    assert_eq!(got.len(), all.len());
    for (want, (path, array)) in all.iter().zip(&got) {
        assert_eq!(path, &want.path);
        assert_same(want, array);
    }
}

fn sorted(mut a: KerasArchive) -> KerasArchive {
    a.objects.sort_by(|x, y| x.path.cmp(&y.path));
    a.weights.sort_by(|x, y| x.0.cmp(&y.0));
    a
}

#[test]
fn reads_hgq2_archives() {
    for name in MODELS {
        let a = archive(name);
        let r = Reference::load(name);
        assert_variables(&a, &r);
        // Every dataset is a model or optimizer variable.
        assert_eq!(
            a.weights.len(),
            r.variables.len() + r.optimizer.len(),
            "{name}"
        );
        let meta: serde_json::Value = serde_json::from_str(&a.metadata).unwrap();
        assert_eq!(meta["keras_version"], hgq_keras::KERAS_VERSION);
        // Python's JSON (hgq2's configs hold `Infinity`), kept verbatim.
        let class = if name == "seq" {
            "Sequential"
        } else {
            "Functional"
        };
        assert!(a.config.contains(&format!(r#""class_name": "{class}""#)));
        assert!(a.config.contains("Infinity"));
        // ebops were traced.
        for v in r.variables.iter().filter(|v| v.path.ends_with("/ebops")) {
            assert!(v.values[0] > 0.0, "{name}: {} is 0", v.path);
        }
    }
}

#[test]
fn objects_and_their_keras_paths() {
    let a = archive("mlp");
    let objects = a.saved_objects().unwrap();
    let find = |g: &str| objects.iter().find(|o| o.group == g).unwrap();
    assert_eq!(find("").keras_path, "");
    assert_eq!(find("layers/input_layer").keras_path, "input_layer");
    assert_eq!(find("layers/q_dense").keras_path, "q_dense");
    assert_eq!(find("layers/q_dense/kq").keras_path, "q_dense/q_dense_kq");
    assert_eq!(
        find("layers/q_dense/kq/quantizer").keras_path,
        "q_dense/q_dense_kq/fixed_point_quantizer_kbi"
    );
    assert_eq!(
        find("layers/q_dense_1/iq/quantizer").keras_path,
        "q_dense_1/q_dense_1_iq/fixed_point_quantizer_kif_1"
    );
    assert_eq!(find("optimizer").keras_path, "adam");
    let q = find("layers/q_dense");
    let paths: Vec<&str> = q.variables.iter().map(|v| v.0).collect();
    assert_eq!(
        paths,
        [
            "layers/q_dense/vars/0",
            "layers/q_dense/vars/1",
            "layers/q_dense/vars/2",
            "layers/q_dense/vars/3"
        ]
    );
    assert!(find("layers/input_layer").variables.is_empty());

    let c = archive("cnn");
    let objects = c.saved_objects().unwrap();
    let find = |g: &str| objects.iter().find(|o| o.group == g).unwrap();
    assert_eq!(find("layers/q_max_pooling2d").keras_path, "q_max_pooling2d");
    assert_eq!(find("layers/flatten").keras_path, "flatten");
    assert_eq!(
        find("layers/q_conv2d/bq/quantizer").keras_path,
        "q_conv2d/q_conv2d_bq/fixed_point_quantizer_kbi_1"
    );
    assert!(objects.iter().all(|o| o.group != "optimizer"));

    // A Sequential: no input layer group, variables named under the model.
    let s = archive("seq");
    let groups: Vec<&str> = s.objects.iter().map(|o| o.path.as_str()).collect();
    assert!(!groups.contains(&"layers/input_layer"), "{groups:?}");
    assert_eq!(s.objects[0].name.as_deref(), Some("sequential"));
    let r = Reference::load("seq");
    assert!(r.variables[0].path.starts_with("sequential/q_dense/"));
    let own = ["kernel", "bias", "beta", "ebops"];
    for prefix in ["sequential/", ""] {
        // The model's name may be left out.
        let names: Vec<String> = own
            .iter()
            .map(|v| format!("{prefix}q_dense_1/{v}"))
            .collect();
        let got = s.variable_paths(&names).unwrap();
        assert_eq!(got[0].0, names[0]);
        assert_eq!(got[0].1, s.weight("layers/q_dense_1/vars/0").unwrap());
        assert_eq!(got[3].1, s.weight("layers/q_dense_1/vars/3").unwrap());
    }
}

/// The layout `from_variables` builds from the config and the variables is the one Keras wrote:
/// the same datasets (paths, shapes, values) and the same objects with the same names.
#[test]
fn from_variables_lays_out_as_keras() {
    for name in MODELS {
        let keras = archive(name);
        let r = Reference::load(name);
        let ours = KerasArchive::from_variables(keras.config.clone(), &r.arrays()).unwrap();
        let set = |a: &KerasArchive| {
            a.objects
                .iter()
                .map(|o| (o.path.clone(), o.name.clone()))
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(set(&ours), set(&keras), "{name}: objects");
        let paths = |a: &KerasArchive| {
            a.weights
                .iter()
                .map(|w| w.0.clone())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(paths(&ours), paths(&keras), "{name}: datasets");
        for (path, array) in &ours.weights {
            let k = keras.weight(path).unwrap();
            assert_eq!(array.shape, k.shape, "{name}: {path}");
            assert_eq!(array.data.to_f64(), k.data.to_f64(), "{name}: {path}");
        }
        let meta: serde_json::Value = serde_json::from_str(&ours.metadata).unwrap();
        assert_eq!(meta["keras_version"], "3.15.1");
        assert_eq!(meta["date_saved"].as_str().unwrap().len(), 19);
    }
}

#[test]
fn from_variables_round_trips() {
    for name in MODELS {
        let r = Reference::load(name);
        let config = archive(name).config;
        let ours = KerasArchive::from_variables(config, &r.arrays()).unwrap();
        let bytes = ours.to_bytes().unwrap();
        assert_eq!(
            bytes,
            ours.to_bytes().unwrap(),
            "{name}: to_bytes is deterministic"
        );
        let back = KerasArchive::from_bytes(&bytes).unwrap();
        // The same archive; the file lists groups by name.
        assert_eq!(sorted(back.clone()), sorted(ours), "{name}");
        assert_variables(&back, &r);
        // ebops as given (uint32), not as the torch backend stored it.
        let names: Vec<String> = r.all().iter().map(|v| v.path.clone()).collect();
        for (path, a) in back.variable_paths(&names).unwrap() {
            if path.ends_with("/ebops") {
                assert!(matches!(a.data, ArrayData::U32(_)), "{path}");
            }
        }
    }
}

#[test]
fn model_variables_alone() {
    // Without the optimizer's variables: no optimizer group, the model's still map.
    let r = Reference::load("mlp");
    let vars: Vec<(String, Array)> = r
        .variables
        .iter()
        .map(|v| (v.path.clone(), v.array()))
        .collect();
    let a = KerasArchive::from_variables(archive("mlp").config, &vars).unwrap();
    assert!(a.objects.iter().all(|o| o.path != "optimizer"));
    assert_eq!(a.weights.len(), r.variables.len());
    let back = KerasArchive::from_bytes(&a.to_bytes().unwrap()).unwrap();
    let names: Vec<&str> = r.variables.iter().map(|v| v.path.as_str()).collect();
    for (want, (_, got)) in r.variables.iter().zip(back.variable_paths(&names).unwrap()) {
        assert_same(want, got);
    }
    // Asking the hgq2 archive for the model's variables only leaves the optimizer out.
    assert_eq!(
        archive("mlp").variable_paths(&names).unwrap().len(),
        names.len()
    );
}

#[test]
fn read_write_read_is_identity() {
    for name in MODELS {
        let a = archive(name);
        let b = KerasArchive::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn sequential_config_skips_the_input_layer() {
    let config = r#"{"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer"}},
        {"class_name": "QDense", "config": {"name": "a"}},
        {"class_name": "QDense", "config": {"name": "b"}}]}}"#;
    let f32s = |n: usize| Array::new(vec![n], ArrayData::F32(vec![0.5; n])).unwrap();
    let vars = vec![
        ("a/kernel".to_string(), f32s(2)),
        ("b/kernel".to_string(), f32s(3)),
        ("b/b_iq/float_point_quantizer_3/m".to_string(), f32s(1)),
    ];
    let a = KerasArchive::from_variables(config.into(), &vars).unwrap();
    let paths: Vec<&str> = a.weights.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "layers/q_dense/vars/0",
            "layers/q_dense_1/vars/0",
            "layers/q_dense_1/iq/quantizer/vars/0"
        ]
    );
    let groups: Vec<&str> = a.objects.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(
        groups,
        [
            "",
            "layers/q_dense",
            "layers/q_dense_1",
            "layers/q_dense_1/iq",
            "layers/q_dense_1/iq/quantizer"
        ]
    );
}
