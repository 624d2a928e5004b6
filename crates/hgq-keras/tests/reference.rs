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

/// A merge layer's input quantizers: hgq2 keeps them in a `MultipleQuantizers` sub-layer
/// (`self._iq`, group `iq`) as a tuple of `Quantizer`s, which Keras saves as a container:
/// `quantizers/quantizer`, `quantizers/quantizer_1`, ... by position, not by name.
#[test]
fn merge_layers_layout() {
    let a = archive("residual");
    let objects = a.saved_objects().unwrap();
    let find = |g: &str| {
        objects
            .iter()
            .find(|o| o.group == g)
            .unwrap_or_else(|| panic!("no group {g}"))
    };
    assert_eq!(find("layers/q_add").keras_path, "q_add");
    assert_eq!(find("layers/q_add").variables.len(), 2); // beta, ebops
    assert_eq!(
        find("layers/q_add/iq").keras_path,
        "q_add/multiple_quantizers"
    );
    assert!(find("layers/q_add/iq").variables.is_empty());
    assert_eq!(
        find("layers/q_add/iq/quantizers/quantizer").keras_path,
        "q_add/multiple_quantizers/quantizer"
    );
    assert_eq!(
        find("layers/q_add/iq/quantizers/quantizer/quantizer").keras_path,
        "q_add/multiple_quantizers/quantizer/fixed_point_quantizer_kif_2"
    );
    assert_eq!(
        find("layers/q_add/iq/quantizers/quantizer_1/quantizer").keras_path,
        "q_add/multiple_quantizers/quantizer_1/fixed_point_quantizer_kif_3"
    );
    // `quantizers` itself is a container, not a saved object.
    assert!(objects.iter().all(|o| !o.group.ends_with("/quantizers")));
    let names: Vec<&str> = find("layers/q_add/iq/quantizers/quantizer_1/quantizer")
        .variables
        .iter()
        .map(|v| v.0)
        .collect();
    assert_eq!(names.len(), 4); // f, k, i, i_decay_speed

    // Later merges: the sub-layers' names count on (`multiple_quantizers_4`, `quantizer_8`),
    // their groups do not; three inputs make `quantizer_2`.
    let m = archive("merges");
    let objects = m.saved_objects().unwrap();
    let find = |g: &str| {
        objects
            .iter()
            .find(|o| o.group == g)
            .unwrap_or_else(|| panic!("no group {g}"))
    };
    for (layer, n) in [
        ("q_subtract", 2),
        ("q_multiply", 2),
        ("q_maximum", 2),
        ("q_minimum", 2),
        ("q_average_pow2", 3),
    ] {
        let iq = find(&format!("layers/{layer}/iq"));
        assert!(
            iq.keras_path
                .starts_with(&format!("{layer}/multiple_quantizers")),
            "{}",
            iq.keras_path
        );
        let count = objects
            .iter()
            .filter(|o| {
                o.group
                    .strip_prefix(&format!("layers/{layer}/iq/quantizers/"))
                    .is_some_and(|r| !r.contains('/'))
            })
            .count();
        assert_eq!(count, n, "{layer}");
    }
    assert_eq!(
        find("layers/q_average_pow2/iq/quantizers/quantizer_2/quantizer").keras_path,
        "q_average_pow2/multiple_quantizers_4/quantizer_10/fixed_point_quantizer_kif_12"
    );
}

/// `QBatchNormalization`'s own variables, in Keras' order: `bn_gamma`, `bn_beta` (trainable),
/// `moving_mean`, `moving_variance`, then hgq2's `beta`, `ebops`; its quantizers `iq`, `kq`, `bq`.
#[test]
fn batch_normalization_layout() {
    let a = archive("bn");
    let r = Reference::load("bn");
    let own: Vec<&RefVar> = r
        .variables
        .iter()
        .filter(|v| {
            v.path
                .strip_prefix("q_batch_normalization/")
                .is_some_and(|rest| !rest.contains('/'))
        })
        .collect();
    let leaves: Vec<&str> = own
        .iter()
        .map(|v| v.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        leaves,
        [
            "bn_gamma",
            "bn_beta",
            "moving_mean",
            "moving_variance",
            "beta",
            "ebops"
        ]
    );
    for (i, v) in own.iter().enumerate() {
        let got = a
            .weight(&format!("layers/q_batch_normalization/vars/{i}"))
            .unwrap();
        assert_same(v, got);
    }
    let objects = a.saved_objects().unwrap();
    for (attr, sub) in [("iq", "kif_1"), ("kq", "kbi_2"), ("bq", "kbi_3")] {
        let o = objects
            .iter()
            .find(|o| o.group == format!("layers/q_batch_normalization/{attr}/quantizer"))
            .unwrap();
        assert_eq!(
            o.keras_path,
            format!(
                "q_batch_normalization/q_batch_normalization_{attr}/fixed_point_quantizer_{sub}"
            )
        );
    }
    // Running statistics: a variance stays positive through the training call.
    let var = own[3];
    assert!(var.values.iter().all(|&v| v > 0.0));
}

/// A merge layer's quantizers are placed by the order the variables name them, whatever their
/// automatic names are (hgq-torch counts names its own way), as long as the names follow one
/// another.
#[test]
fn merge_quantizers_by_position() {
    let config = archive("residual").config;
    let rename = |p: &str| {
        p.replace(
            "q_add/multiple_quantizers/quantizer_1/",
            "q_add/multiple_quantizers_7/quantizer_13/",
        )
        .replace(
            "q_add/multiple_quantizers/quantizer/",
            "q_add/multiple_quantizers_7/quantizer_12/",
        )
    };
    let r = Reference::load("residual");
    let vars: Vec<(String, Array)> = r
        .arrays()
        .into_iter()
        .map(|(p, a)| (rename(&p), a))
        .collect();
    assert!(vars.iter().any(|(p, _)| p.contains("quantizer_13/")));
    let ours = KerasArchive::from_variables(config.clone(), &vars).unwrap();
    let keras = archive("residual");
    // The layout hgq2 wrote, the same values (ebops given as uint32 where torch stored int64).
    assert_eq!(ours.weights.len(), keras.weights.len());
    for (path, array) in &ours.weights {
        let k = keras.weight(path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(array.shape, k.shape, "{path}");
        assert_eq!(array.data.to_f64(), k.data.to_f64(), "{path}");
    }
    let names: Vec<String> = vars.iter().map(|v| v.0.clone()).collect();
    let back = KerasArchive::from_bytes(&ours.to_bytes().unwrap()).unwrap();
    for ((want, _), (got, _)) in vars.iter().zip(back.variable_paths(&names).unwrap()) {
        assert_eq!(want, &got);
    }
    let group_of = |a: &KerasArchive, name: &str| {
        a.objects
            .iter()
            .find(|o| o.name.as_deref() == Some(name))
            .map(|o| o.path.clone())
    };
    assert_eq!(
        group_of(&ours, "quantizer_13").as_deref(),
        Some("layers/q_add/iq/quantizers/quantizer_1")
    );
    assert_eq!(
        group_of(&ours, "multiple_quantizers_7").as_deref(),
        Some("layers/q_add/iq")
    );

    // Names that do not follow one another: a quantizer in between without variables, or
    // the variables out of order. An error, not a quantizer in the wrong place.
    for (a, b) in [
        ("quantizer_12", "quantizer_14"),
        ("quantizer_13", "quantizer_12"),
    ] {
        let vars: Vec<(String, Array)> = r
            .arrays()
            .into_iter()
            .map(|(p, arr)| {
                let p = p
                    .replace(
                        "multiple_quantizers/quantizer_1/",
                        &format!("multiple_quantizers/{b}/"),
                    )
                    .replace(
                        "multiple_quantizers/quantizer/",
                        &format!("multiple_quantizers/{a}/"),
                    );
                (p, arr)
            })
            .collect();
        let e = KerasArchive::from_variables(config.clone(), &vars).unwrap_err();
        assert!(e.to_string().contains("are named"), "{e}");
    }
    // Something else than a `Quantizer` in a `MultipleQuantizers`.
    let vars: Vec<(String, Array)> = r
        .arrays()
        .into_iter()
        .map(|(p, arr)| {
            (
                p.replace(
                    "multiple_quantizers/quantizer/",
                    "multiple_quantizers/thing/",
                ),
                arr,
            )
        })
        .collect();
    let e = KerasArchive::from_variables(config, &vars).unwrap_err();
    assert!(e.to_string().contains("not `thing`"), "{e}");
}

/// A merge layer in a `Sequential` chain (`QAdd()([x])`: one input, one quantizer).
#[test]
fn one_input_merge_in_a_sequential() {
    let config = r#"{"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input_layer"}},
        {"class_name": "QAdd", "config": {"name": "q_add"}}]}}"#;
    let f32s = |n: usize| Array::new(vec![n], ArrayData::F32(vec![0.5; n])).unwrap();
    let vars = vec![
        ("sequential/q_add/beta".to_string(), f32s(1)),
        (
            "sequential/q_add/multiple_quantizers/quantizer/fixed_point_quantizer_kif/f"
                .to_string(),
            f32s(3),
        ),
    ];
    let a = KerasArchive::from_variables(config.into(), &vars).unwrap();
    let paths: Vec<&str> = a.weights.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "layers/q_add/vars/0",
            "layers/q_add/iq/quantizers/quantizer/quantizer/vars/0"
        ]
    );
    let groups: Vec<(&str, &str)> = a
        .objects
        .iter()
        .map(|o| (o.path.as_str(), o.name.as_deref().unwrap()))
        .collect();
    assert_eq!(
        groups,
        [
            ("", "sequential"),
            ("layers/q_add", "q_add"),
            ("layers/q_add/iq", "multiple_quantizers"),
            ("layers/q_add/iq/quantizers/quantizer", "quantizer"),
            (
                "layers/q_add/iq/quantizers/quantizer/quantizer",
                "fixed_point_quantizer_kif"
            )
        ]
    );
}

/// Sub-layers' automatic names count on over a Python session: an archive saved after other
/// models were made holds `fixed_point_quantizer_kif_6` where a fresh session (and hgq-torch)
/// says `fixed_point_quantizer_kif_4`. Objects are found by their place, as Keras finds them.
#[test]
fn found_by_place_not_by_auto_name() {
    for name in ["residual", "merges", "bn", "seq"] {
        let mut a = archive(name);
        let layers: Vec<String> = a
            .objects
            .iter()
            .filter(|o| o.path.matches('/').count() <= 1)
            .map(|o| o.path.clone())
            .collect();
        // Every sub-layer renamed as a later session would name it.
        for o in a.objects.iter_mut().filter(|o| !layers.contains(&o.path)) {
            let n = o.name.take().unwrap();
            o.name = Some(format!("{n}_5"));
        }
        let a = KerasArchive::from_bytes(&a.to_bytes().unwrap()).unwrap();
        let r = Reference::load(name);
        assert!(
            r.variables
                .iter()
                .filter(|v| v.path.matches('/').count() > 1)
                .all(|v| {
                    let object = v.path.rsplit_once('/').unwrap().0;
                    a.saved_objects()
                        .unwrap()
                        .iter()
                        .all(|o| o.keras_path != object)
                }),
            "{name}: the sub-layers' names differ"
        );
        assert_variables(&a, &r);
    }
}
