//! The whole-model writer against the reference's own `model.to_json()` output
//! (`tests/data/models/*.json`, made by `tests/data/models/make_models.py`).
use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
use hgq_config::{ConfigError, KerasModel, Place, QType, QuantizerConfig, extract_quantizers};
use hgq_core::{OverflowMode, RoundMode};

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `keras.Input((64,)); QDense(32, activation='relu'); QDense(10)`.
fn demo() -> DenseModelSpec {
    DenseModelSpec::new(64)
        .layer(QDenseSpec::new(32).activation(Activation::Relu))
        .layer(QDenseSpec::new(10))
}

/// See `named()` in `make_models.py`.
fn named() -> DenseModelSpec {
    DenseModelSpec::new(16)
        .name("mlp")
        .input_name("features")
        .layer(
            QDenseSpec::new(8)
                .name("hidden")
                .activation(Activation::Tanh)
                .beta0(3e-6),
        )
        .layer(QDenseSpec::new(4).name("logits").use_bias(false))
}

/// See `quantizers()` in `make_models.py`.
fn quantizers() -> DenseModelSpec {
    let iq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(3)
        .f0(4)
        .build()
        .unwrap();
    let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6)
        .i0(1)
        .build()
        .unwrap();
    let bq = QuantizerConfig::builder(QType::Kif, Place::Bias)
        .i0(1)
        .f0(7)
        .overflow_mode(OverflowMode::Sat)
        .build()
        .unwrap();
    let oq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(4)
        .f0(3)
        .round_mode(RoundMode::Trn)
        .build()
        .unwrap();
    DenseModelSpec::new(20)
        .layer(
            QDenseSpec::new(12)
                .activation(Activation::Relu)
                .iq(iq)
                .kq(kq)
                .bq(bq)
                .beta0(0.0),
        )
        .layer(
            QDenseSpec::new(6)
                .activation(Activation::Sigmoid)
                .oq(oq)
                .enable_ebops(false)
                .parallelization_factor(3),
        )
        .layer(QDenseSpec::new(3).iq(None).ebops_factor(0.5).beta0(2.5e-4))
}

/// See `mixed()` in `make_models.py`.
fn mixed() -> DenseModelSpec {
    let kq = QuantizerConfig::builder(QType::Kif, Place::Weight)
        .f0(5)
        .build()
        .unwrap();
    let iq = QuantizerConfig::builder(QType::Kbi, Place::Datalane)
        .b0(6)
        .i0(3)
        .build()
        .unwrap();
    let oq = QuantizerConfig::builder(QType::Kbi, Place::Datalane)
        .b0(5)
        .build()
        .unwrap();
    DenseModelSpec::new(7)
        .name("m2")
        .input_name("xin")
        .layer(QDenseSpec::new(5))
        .layer(
            QDenseSpec::new(5)
                .name("mid")
                .activation(Activation::Gelu)
                .kq(kq)
                .iq(iq)
                .use_bias(false),
        )
        .layer(
            QDenseSpec::new(3)
                .activation(Activation::Softmax)
                .iq(None)
                .trainable(false)
                .oq(oq),
        )
}

fn cases() -> [(&'static str, DenseModelSpec); 4] {
    [
        ("demo", demo()),
        ("named", named()),
        ("quantizers", quantizers()),
        ("mixed", mixed()),
    ]
}

#[test]
fn writes_the_reference_bytes() {
    for (name, spec) in cases() {
        let ours = spec.to_json().unwrap();
        assert_eq!(ours, reference(name), "{name}");
    }
}

#[test]
fn demo_constructor_is_the_demo() {
    assert_eq!(DenseModelSpec::demo(), demo());
    assert_eq!(DenseModelSpec::demo().to_json().unwrap(), reference("demo"));
}

#[test]
fn reads_the_reference_back() {
    for (name, spec) in cases() {
        let text = reference(name);
        let read = DenseModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read.to_json().unwrap(), text, "{name}");
        if name == "named" {
            // `bq` of a layer without a bias is not written: it reads as the default.
            assert_eq!(read.layers[1].bq, QDenseSpec::new(1).bq);
        }
        assert_eq!(read, spec, "{name}");
    }
}

#[test]
fn default_quantizers_are_the_builders_defaults() {
    let d = QDenseSpec::new(1);
    let b = |p| QuantizerConfig::builder_default(p).build().unwrap();
    assert_eq!(d.iq, Some(b(Place::Datalane)));
    assert_eq!(d.kq, b(Place::Weight));
    assert_eq!(d.bq, b(Place::Bias));
}

#[test]
fn quantizers_are_found_with_their_layer_paths() {
    let text = reference("quantizers");
    let km = quantizers().to_keras_model().unwrap();
    assert_eq!(km.to_json(), text);
    assert_eq!(KerasModel::from_json(&text).unwrap(), km);
    let found: Vec<(String, String, String)> = extract_quantizers(&text)
        .unwrap()
        .into_iter()
        .map(|q| (q.layer_path(), q.key.clone(), q.json_path()))
        .collect();
    let want = [
        (
            "functional/q_dense",
            "iq_conf",
            "$.config.layers[1].config.iq_conf",
        ),
        (
            "functional/q_dense",
            "kq_conf",
            "$.config.layers[1].config.kq_conf",
        ),
        (
            "functional/q_dense",
            "bq_conf",
            "$.config.layers[1].config.bq_conf",
        ),
        (
            "functional/q_dense_1",
            "oq_conf",
            "$.config.layers[2].config.oq_conf",
        ),
        (
            "functional/q_dense_1",
            "iq_conf",
            "$.config.layers[2].config.iq_conf",
        ),
        (
            "functional/q_dense_1",
            "kq_conf",
            "$.config.layers[2].config.kq_conf",
        ),
        (
            "functional/q_dense_1",
            "bq_conf",
            "$.config.layers[2].config.bq_conf",
        ),
        (
            "functional/q_dense_2",
            "kq_conf",
            "$.config.layers[3].config.kq_conf",
        ),
        (
            "functional/q_dense_2",
            "bq_conf",
            "$.config.layers[3].config.bq_conf",
        ),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(found, want);
    // The configurations are the ones the model was built with.
    assert_eq!(
        km.quantizers[0].config,
        quantizers().layers[0].iq.clone().unwrap()
    );
    assert_eq!(
        km.quantizers[3].config,
        quantizers().layers[1].oq.clone().unwrap()
    );

    // Edited through `KerasModel`, read back through the typed reader.
    let mut km = km;
    let f0_5 = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .f0(5)
        .build()
        .unwrap();
    km.quantizers[0].config = f0_5.clone();
    let read = DenseModelSpec::from_json(&km.to_json()).unwrap();
    assert_eq!(read.layers[0].iq, Some(f0_5));
}

#[test]
fn auto_names_skip_named_layers() {
    let m = DenseModelSpec::new(4)
        .layer(QDenseSpec::new(3))
        .layer(QDenseSpec::new(3).name("mid"))
        .layer(QDenseSpec::new(2));
    assert_eq!(m.layer_names().unwrap(), ["q_dense", "mid", "q_dense_1"]);
    let read = DenseModelSpec::from_json(&m.to_json().unwrap()).unwrap();
    assert_eq!(read, m);
}

fn err_path(m: &DenseModelSpec) -> String {
    let e = m.to_json().unwrap_err();
    assert!(matches!(e, ConfigError::Value { .. }), "{e}");
    e.path().unwrap().to_string()
}

#[test]
fn refuses_what_keras_would_not_load() {
    let one = |l: QDenseSpec| DenseModelSpec::new(4).layer(l);
    assert_eq!(err_path(&DenseModelSpec::new(4)), "$.config.layers");
    assert_eq!(
        err_path(&DenseModelSpec::new(0).layer(QDenseSpec::new(1))),
        "$.config.layers[0].config.batch_shape[1]"
    );
    assert_eq!(
        err_path(&one(QDenseSpec::new(0))),
        "$.config.layers[1].config.units"
    );
    assert_eq!(
        err_path(&one(QDenseSpec::new(usize::MAX))),
        "$.config.layers[1].config.units"
    );
    assert_eq!(
        err_path(&one(QDenseSpec::new(1).name(""))),
        "$.config.layers[1].config.name"
    );
    assert_eq!(
        err_path(&one(QDenseSpec::new(1).name("a/b"))),
        "$.config.layers[1].config.name"
    );
    assert_eq!(
        err_path(&one(QDenseSpec::new(1).name("input_layer"))),
        "$.config.layers[1].config.name"
    );
    assert_eq!(err_path(&one(QDenseSpec::new(1)).name("")), "$.config.name");
    let dup = DenseModelSpec::new(4)
        .layer(QDenseSpec::new(2).name("q_dense_1"))
        .layer(QDenseSpec::new(2))
        .layer(QDenseSpec::new(2));
    assert_eq!(err_path(&dup), "$.config.layers[3].config.name");
    assert_eq!(
        err_path(&one(QDenseSpec::new(1).iq(None).enable_ebops(true))),
        "$.config.layers[1].config.enable_ebops"
    );
}

#[test]
fn reading_refuses_other_documents() {
    let demo = reference("demo");
    let path = |text: &str| {
        DenseModelSpec::from_json(text)
            .unwrap_err()
            .path()
            .map(str::to_string)
    };
    // Another initializer.
    let t = demo.replacen("GlorotUniform", "HeUniform", 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.kernel_initializer.class_name")
    );
    // An unknown activation.
    let t = demo.replacen(r#""activation": "relu""#, r#""activation": "foo""#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.activation")
    );
    // A graph that is not a chain.
    let t = demo.replacen(
        r#""keras_history": ["q_dense", 0, 0]"#,
        r#""keras_history": ["input_layer", 0, 0]"#,
        1,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[2].inbound_nodes[0].args[0].config.keras_history[0]")
    );
    // An int where the reference writes a float.
    let t = demo.replacen(r#""ebops_factor": 1.0"#, r#""ebops_factor": 1"#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.ebops_factor")
    );
    // A key too many, a key missing.
    let t = demo.replacen(r#", "compile_config": {}"#, "", 1);
    assert_eq!(path(&t).as_deref(), Some("$.compile_config"));
    let t = demo.replacen(r#""units": 32, "#, "", 1);
    assert_eq!(path(&t).as_deref(), Some("$.config.layers[1].config"));
    // Not a model at all.
    let r = DenseModelSpec::from_json("[]");
    assert!(
        matches!(
            &r,
            Err(ConfigError::Type {
                path,
                expected: "dict",
                found: "list",
            }) if path == "$"
        ),
        "{r:?}"
    );
    let r = DenseModelSpec::from_json("{");
    assert!(
        matches!(r, Err(ConfigError::Syntax { offset: 1, .. })),
        "{r:?}"
    );
    let t = demo.replacen(
        r#""batch_shape": [null, 64]"#,
        r#""batch_shape": [null, -1]"#,
        1,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[0].config.batch_shape[1]")
    );
}

#[test]
fn activation_names() {
    for a in Activation::ALL {
        assert_eq!(a.as_str().parse::<Activation>().unwrap(), a);
        assert_eq!(a.to_string(), a.as_str());
    }
}
