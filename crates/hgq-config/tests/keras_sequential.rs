//! Keras `Sequential` documents of chains against the reference's own `model.to_json()` output
//! (`tests/data/models/seq_*.json`, made by `tests/data/models/make_models.py`).
use hgq_config::model_json::{Activation, QDenseSpec};
use hgq_config::sequential::{
    ChainModelSpec, FlattenSpec, GraphModelSpec, LayerSpec, Padding, QBatchNormSpec, QConvSpec,
    QMergeSpec, QPoolSpec, ReshapeSpec,
};
use hgq_config::{ConfigError, PyValue};

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// See `seq_mlp()` in `make_models.py`.
fn seq_mlp() -> ChainModelSpec {
    ChainModelSpec::new([16])
        .name("sequential")
        .layer(QDenseSpec::new(8).activation(Activation::Relu))
        .layer(QBatchNormSpec::new())
        .layer(QDenseSpec::new(4))
}

/// See `seq_cnn()` in `make_models.py`.
fn seq_cnn() -> ChainModelSpec {
    ChainModelSpec::new([64])
        .name("digits_seq")
        .input_name("pixels")
        .layer(ReshapeSpec::new([8, 8, 1]))
        .layer(QConvSpec::new(4, [3, 3]).activation(Activation::Relu))
        .layer(QPoolSpec::max([2, 2]))
        .layer(
            QConvSpec::new(2, [2, 2])
                .padding(Padding::Same)
                .use_bias(false),
        )
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(10))
}

fn cases() -> [(&'static str, ChainModelSpec); 2] {
    [("seq_mlp", seq_mlp()), ("seq_cnn", seq_cnn())]
}

fn err_path(e: ConfigError) -> String {
    e.path()
        .unwrap_or_else(|| panic!("no path: {e}"))
        .to_string()
}

#[test]
fn writes_the_reference_bytes() {
    for (name, m) in cases() {
        assert_eq!(
            m.to_keras_sequential_json().unwrap(),
            reference(name),
            "{name}"
        );
    }
}

#[test]
fn reads_the_reference() {
    for (name, m) in cases() {
        let text = reference(name);
        assert_eq!(
            ChainModelSpec::from_keras_sequential_json(&text).unwrap(),
            m,
            "{name}"
        );
        // `from_json` takes both forms, and writes the functional one.
        let read = ChainModelSpec::from_json(&text).unwrap();
        assert_eq!(read, m, "{name}");
        let functional = read.to_json().unwrap();
        assert!(functional.starts_with(r#"{"module": "keras.src.models.functional""#));
        assert_eq!(ChainModelSpec::from_json(&functional).unwrap(), m);
        // A graph reader takes it as the chain's graph.
        assert_eq!(
            GraphModelSpec::from_json(&text).unwrap(),
            GraphModelSpec::from(m.clone()),
            "{name}"
        );
    }
}

/// Each layer of the Sequential is the functional model's layer without `name` and
/// `inbound_nodes`: the same `config`, the same `build_config`.
#[test]
fn layers_are_the_functional_ones() {
    for (name, m) in cases() {
        let seq = PyValue::parse(&reference(name)).unwrap();
        let fun = m.to_value().unwrap();
        let layers = |v: &PyValue| match v.get("config").and_then(|c| c.get("layers")) {
            Some(PyValue::List(l)) => l.clone(),
            _ => panic!("no layers"),
        };
        let (s, f) = (layers(&seq), layers(&fun));
        assert_eq!(s.len(), f.len());
        for (a, b) in s.iter().zip(&f) {
            assert_eq!(a.get("config"), b.get("config"), "{name}");
            assert_eq!(a.get("build_config"), b.get("build_config"), "{name}");
            assert_eq!(a.get("name"), None);
            assert_eq!(a.get("inbound_nodes"), None);
            assert!(b.get("inbound_nodes").is_some());
        }
    }
}

#[test]
fn refuses_what_it_does_not_write() {
    let text = reference("seq_mlp");
    let path = |t: &str| err_path(ChainModelSpec::from_keras_sequential_json(t).unwrap_err());

    // A key a layer's config does not have here.
    let t = text.replacen(r#""units": 8"#, r#""units": 8, "lora_rank": null"#, 1);
    assert_eq!(path(&t), "$.config.layers[1].config.lora_rank");
    // Another value.
    let t = text.replacen(r#""momentum": 0.99"#, r#""momentum": 0.9"#, 1);
    assert!(t != text);
    assert_eq!(
        ChainModelSpec::from_keras_sequential_json(&t)
            .unwrap()
            .layers
            .len(),
        3,
        "a momentum of one's own is read"
    );
    let t = text.replacen(
        r#""build_config": {"input_shape": [null, 8]}"#,
        r#""build_config": {"input_shape": [null, 9]}"#,
        1,
    );
    assert_eq!(path(&t), "$.config.layers[2].build_config.input_shape[1]");
    // The model's own keys.
    let t = text.replacen(r#""trainable": true"#, r#""trainable": false"#, 1);
    assert_eq!(path(&t), "$.config.trainable");
    let t = text.replacen(
        r#""build_input_shape": [null, 16]"#,
        r#""build_input_shape": [null, 17]"#,
        1,
    );
    assert_eq!(path(&t), "$.config.build_input_shape[1]");
    // A layer entry with a functional model's keys.
    let t = text.replacen(
        r#""registered_name": "hgq>QDense", "build_config": {"input_shape": [null, 16]}}"#,
        r#""registered_name": "hgq>QDense", "build_config": {"input_shape": [null, 16]}, "name": "q_dense"}"#,
        1,
    );
    assert_eq!(path(&t), "$.config.layers[1].name");

    // Built by calling it on a batch of 3: a fixed batch size.
    let t = text.replace("[null, ", "[3, ");
    assert_eq!(path(&t), "$.config.layers[0].config.batch_shape[0]");

    // Never built: no InputLayer, no shapes.
    let mut v = PyValue::parse(&text).unwrap();
    if let PyValue::Dict(top) = &mut v {
        for (k, c) in top.iter_mut() {
            if k == "config"
                && let PyValue::Dict(c) = c
            {
                c.retain(|(k, _)| k != "build_input_shape");
                for (k, l) in c.iter_mut() {
                    if k == "layers"
                        && let PyValue::List(l) = l
                    {
                        l.remove(0);
                    }
                }
            }
        }
    }
    let e = ChainModelSpec::from_keras_sequential_value(&v).unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[0].class_name"));
    assert!(e.to_string().contains("not built"), "{e}");

    // What `model.save` writes in config.json beside `to_json()`: shared-object marks and a
    // compile configuration. Errors here: the caller strips them (hgq-torch's `load_keras`).
    let t = text.replacen(
        r#""registered_name": null}, "layers""#,
        r#""registered_name": null, "shared_object_id": 140116185442256}, "layers""#,
        1,
    );
    assert_eq!(path(&t), "$.config.dtype.shared_object_id");
    let t = text.replacen(
        r#""compile_config": {}"#,
        r#""compile_config": {"loss": "mse"}"#,
        1,
    );
    assert_eq!(path(&t), "$.compile_config.loss");

    // A functional document is not a Sequential.
    let functional = seq_mlp().to_json().unwrap();
    assert_eq!(path(&functional), "$.class_name");
    // Nor is this.
    assert!(ChainModelSpec::from_keras_sequential_json("[]").is_err());
    let t = text.replacen(r#""layers": ["#, r#""layers": [], "x": ["#, 1);
    assert_eq!(path(&t), "$.config.layers");
}

/// hgq2's merge layers take a list of inputs: a Sequential cannot hold one.
#[test]
fn no_merge_layers() {
    let m = ChainModelSpec::new([4]).layer(QMergeSpec::add());
    assert!(matches!(
        m.to_keras_sequential_json().unwrap_err().path(),
        Some("$.config.layers[1].class_name")
    ));
    // The functional form has it (`QAdd()([x])`); as a Sequential document it is refused.
    let text = ChainModelSpec::new([4])
        .name("sequential")
        .layer(QDenseSpec::new(4))
        .to_keras_sequential_json()
        .unwrap();
    let t = text.replacen(r#""class_name": "QDense""#, r#""class_name": "QAdd""#, 1);
    let e = ChainModelSpec::from_keras_sequential_json(&t).unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[1].class_name"));
    assert!(e.to_string().contains("QAdd"), "{e}");
}

/// Any chain of the layers a Sequential holds is written and read back, names included.
#[test]
fn round_trips() {
    let m = ChainModelSpec::new([10, 3])
        .name("net")
        .input_name("x")
        .layer(QConvSpec::new(4, [3]).name("c1"))
        .layer(QBatchNormSpec::new().center(false))
        .layer(QPoolSpec::average([2]))
        .layer(QPoolSpec::global_max(1))
        .layer(QDenseSpec::new(2).name("out"));
    let json = m.to_keras_sequential_json().unwrap();
    assert_eq!(
        ChainModelSpec::from_keras_sequential_json(&json).unwrap(),
        m
    );
    assert!(matches!(
        ChainModelSpec::from_json(&json).unwrap().layers[1],
        LayerSpec::QBatchNorm(_)
    ));
    // Validation as for the functional form.
    let bad = ChainModelSpec::new([2, 2, 1]).layer(QConvSpec::new(4, [3, 3]));
    assert_eq!(
        bad.to_keras_sequential_json().unwrap_err().path(),
        Some("$.config.layers[1].config.kernel_size[0]")
    );
}
