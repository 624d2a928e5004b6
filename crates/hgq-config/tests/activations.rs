//! Keras' own `Activation` and `ReLU` layers between hgq2 layers, against the reference's own
//! `model.to_json()` output (`tests/data/models/act_*.json`, `graph_act.json`,
//! `seq_act.json`, made by `tests/data/models/make_models.py`).
use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
use hgq_config::sequential::{
    ActivationSpec, ChainModelSpec, FlattenSpec, GraphModelSpec, KERAS_LAYERS_MODULE, LayerSpec,
    QConvSpec, QMergeSpec, QPoolSpec, ReluSpec,
};
use hgq_config::{ConfigError, PyValue};

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// See `act_chain()` in `make_models.py`.
fn act_chain() -> ChainModelSpec {
    ChainModelSpec::new([16])
        .layer(QDenseSpec::new(8))
        .layer(ActivationSpec::new(Activation::Relu))
        .layer(QDenseSpec::new(4))
        .layer(ReluSpec::new())
        .layer(QDenseSpec::new(2))
}

/// See `act_cnn()`.
fn act_cnn() -> ChainModelSpec {
    ChainModelSpec::new([6, 6, 2])
        .layer(QConvSpec::new(3, [3, 3]))
        .layer(ReluSpec::new())
        .layer(QPoolSpec::max([2, 2]))
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(4))
        .layer(ActivationSpec::new(Activation::Relu).name("act"))
        .layer(ReluSpec::new().max_value(6.0).name("relu6"))
        .layer(ActivationSpec::new(None))
}

/// See `graph_act()`: the nodes in Keras' order (the `swish` branch from the input is
/// listed after `re_lu`).
fn graph_act() -> GraphModelSpec {
    GraphModelSpec::new()
        .input("input_layer", [8])
        .node(QDenseSpec::new(8), ["input_layer"])
        .node(
            ReluSpec::new().negative_slope(0.125).threshold(0.5),
            ["q_dense"],
        )
        .node(ActivationSpec::new(Activation::Silu), ["input_layer"])
        .node(QDenseSpec::new(8), ["re_lu"])
        .node(QMergeSpec::add(), ["activation", "q_dense_1"])
        .node(ActivationSpec::new(Activation::Tanh), ["q_add"])
        .node(QDenseSpec::new(3), ["activation_1"])
        .node(ActivationSpec::new(Activation::Softmax), ["q_dense_2"])
        .output("activation_2")
}

/// See `seq_act()`: `act_chain()` as a Keras Sequential.
fn seq_act() -> ChainModelSpec {
    act_chain().name("sequential")
}

fn chains() -> [(&'static str, ChainModelSpec); 2] {
    [("act_chain", act_chain()), ("act_cnn", act_cnn())]
}

fn err_path(e: ConfigError) -> String {
    e.path()
        .unwrap_or_else(|| panic!("no path: {e}"))
        .to_string()
}

#[test]
fn writes_the_reference_bytes() {
    for (name, m) in chains() {
        assert_eq!(m.to_json().unwrap(), reference(name), "{name}");
        // The same bytes through the graph of the chain.
        assert_eq!(
            GraphModelSpec::from(m).to_json().unwrap(),
            reference(name),
            "{name}"
        );
    }
    assert_eq!(graph_act().to_json().unwrap(), reference("graph_act"));
    assert_eq!(
        seq_act().to_keras_sequential_json().unwrap(),
        reference("seq_act")
    );
}

#[test]
fn reads_the_reference_back() {
    for (name, m) in chains() {
        let text = reference(name);
        assert_eq!(ChainModelSpec::from_json(&text).unwrap(), m, "{name}");
        assert_eq!(
            GraphModelSpec::from_json(&text).unwrap(),
            GraphModelSpec::from(m),
            "{name}"
        );
    }
    let text = reference("graph_act");
    let g = GraphModelSpec::from_json(&text).unwrap();
    assert_eq!(g, graph_act());
    assert_eq!(g.to_json().unwrap(), text);
    // Not a chain: the input feeds two layers.
    assert!(ChainModelSpec::from_json(&text).is_err());

    let text = reference("seq_act");
    assert_eq!(
        ChainModelSpec::from_keras_sequential_json(&text).unwrap(),
        seq_act()
    );
    assert_eq!(ChainModelSpec::from_json(&text).unwrap(), seq_act());
    assert_eq!(
        GraphModelSpec::from_json(&text).unwrap(),
        GraphModelSpec::from(seq_act())
    );
    // The Sequential's layers are the functional ones'.
    let functional = seq_act().to_json().unwrap();
    assert_eq!(
        functional,
        reference("act_chain").replace(r#""name": "functional""#, r#""name": "sequential""#)
    );
}

#[test]
fn names_classes_and_shapes() {
    assert_eq!(
        act_chain().layer_names().unwrap(),
        ["q_dense", "activation", "q_dense_1", "re_lu", "q_dense_2"]
    );
    // Named layers do not count: the last Activation is `activation`.
    assert_eq!(
        act_cnn().layer_names().unwrap(),
        [
            "q_conv2d",
            "re_lu",
            "q_max_pooling2d",
            "flatten",
            "q_dense",
            "act",
            "relu6",
            "activation"
        ]
    );
    assert_eq!(
        act_cnn().output_shapes().unwrap(),
        [
            vec![4, 4, 3],
            vec![4, 4, 3],
            vec![2, 2, 3],
            vec![12],
            vec![4],
            vec![4],
            vec![4],
            vec![4]
        ]
    );
    assert_eq!(
        graph_act().layer_names().unwrap(),
        [
            "q_dense",
            "re_lu",
            "activation",
            "q_dense_1",
            "q_add",
            "activation_1",
            "q_dense_2",
            "activation_2"
        ]
    );
    let a = LayerSpec::from(ActivationSpec::new(Activation::Relu));
    let r = LayerSpec::from(ReluSpec::new());
    assert_eq!(
        (a.class_name(), a.module(), a.auto_name_prefix()),
        (Some("Activation"), KERAS_LAYERS_MODULE, Some("activation"))
    );
    assert_eq!(
        (r.class_name(), r.module(), r.auto_name_prefix()),
        (Some("ReLU"), KERAS_LAYERS_MODULE, Some("re_lu"))
    );
    // A name equal to the automatic one reads as unnamed; another is kept.
    let m = ChainModelSpec::new([3])
        .layer(ReluSpec::new().name("re_lu"))
        .layer(ActivationSpec::new(Activation::Tanh).name("activation_1"))
        .layer(ActivationSpec::new(Activation::Sigmoid));
    assert_eq!(
        m.layer_names().unwrap(),
        ["re_lu", "activation_1", "activation"]
    );
    let read = ChainModelSpec::from_json(&m.to_json().unwrap()).unwrap();
    assert_eq!(read.layers[0].name(), None);
    assert_eq!(read.layers[1].name(), Some("activation_1"));
    // Used twice.
    let m = ChainModelSpec::new([3])
        .layer(ReluSpec::new())
        .layer(ReluSpec::new().name("re_lu"));
    assert_eq!(
        err_path(m.to_json().unwrap_err()),
        "$.config.layers[2].config.name"
    );
}

/// No quantizers, no EBOPs, no build_config; not a QDense chain.
#[test]
fn what_is_written() {
    let km = act_chain().to_keras_model().unwrap();
    // iq, kq, bq of each of the three QDense layers only.
    assert_eq!(km.quantizers.len(), 9);
    assert!(
        km.quantizers
            .iter()
            .all(|q| q.layer_path().starts_with("functional/q_dense"))
    );
    let v = PyValue::parse(&reference("act_cnn")).unwrap();
    let Some(PyValue::List(layers)) = v.get("config").and_then(|c| c.get("layers")) else {
        panic!("no layers")
    };
    for l in layers {
        let class = match l.get("class_name") {
            Some(PyValue::Str(s)) => s.as_str(),
            _ => panic!(),
        };
        let keras_own = matches!(class, "Activation" | "ReLU");
        assert_eq!(
            l.get("build_config").is_none(),
            keras_own || class == "InputLayer"
        );
        if keras_own {
            assert_eq!(l.get("registered_name"), Some(&PyValue::Null));
            assert_eq!(
                l.get("module"),
                Some(&PyValue::Str(KERAS_LAYERS_MODULE.into()))
            );
        }
    }
    // Every activation the crate names, and swish as silu.
    for a in Activation::ALL {
        let m = ChainModelSpec::new([2]).layer(ActivationSpec::new(a));
        let json = m.to_json().unwrap();
        assert!(json.contains(&format!(r#""activation": "{}"}}"#, a.as_str())));
        assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
    }
    // Floats as Python writes them.
    let m = ChainModelSpec::new([2]).layer(
        ReluSpec::new()
            .max_value(1e-7)
            .negative_slope(0.1)
            .threshold(1e20),
    );
    let json = m.to_json().unwrap();
    assert!(
        json.contains(r#""max_value": 1e-07, "negative_slope": 0.1, "threshold": 1e+20}"#),
        "{json}"
    );
    assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
    // A chain with them is not a chain of QDense layers.
    let e = DenseModelSpec::try_from(act_chain()).unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[2].class_name"));
}

#[test]
fn refuses_bad_values() {
    let text = reference("act_chain");
    let read = |t: &str| err_path(ChainModelSpec::from_json(t).unwrap_err());

    // An activation this crate does not name.
    let t = text.replacen(r#""activation": "relu""#, r#""activation": "relu7""#, 1);
    assert_eq!(read(&t), "$.config.layers[2].config.activation");
    assert!(
        ChainModelSpec::from_json(&t)
            .unwrap_err()
            .to_string()
            .contains("unknown activation `relu7`")
    );
    let t = text.replacen(r#""activation": "relu""#, r#""activation": 3"#, 1);
    assert_eq!(read(&t), "$.config.layers[2].config.activation");
    // Missing and extra keys.
    let t = text.replacen(r#", "activation": "relu""#, "", 1);
    assert_eq!(read(&t), "$.config.layers[2].config");
    let t = text.replacen(
        r#""threshold": 0.0}"#,
        r#""threshold": 0.0, "alpha": 1.0}"#,
        1,
    );
    assert_eq!(read(&t), "$.config.layers[4].config.alpha");
    // A build_config Keras does not write for these layers.
    let t = text.replacen(
        r#""activation": "relu"}, "registered_name": null, "name""#,
        r#""activation": "relu"}, "registered_name": null, "build_config": {"input_shape": [null, 8]}, "name""#,
        1,
    );
    assert_eq!(read(&t), "$.config.layers[2].build_config");

    // ReLU values: NaN, negative, an int, a string.
    let relu = |key: &str, value: &str| {
        let from = format!(
            r#""{key}": {}"#,
            if key == "max_value" { "null" } else { "0.0" }
        );
        let t = text.replacen(&from, &format!(r#""{key}": {value}"#), 1);
        assert_ne!(t, text);
        read(&t)
    };
    for key in ["max_value", "negative_slope", "threshold"] {
        let path = format!("$.config.layers[4].config.{key}");
        assert_eq!(relu(key, "NaN"), path);
        assert_eq!(relu(key, "-0.5"), path);
        assert_eq!(relu(key, "\"6\""), path);
        // `ReLU(max_value=6)` writes 6: not described here.
        assert_eq!(relu(key, "6"), path);
    }
    // A float is read.
    let t = text.replacen(r#""max_value": null"#, r#""max_value": 6.0"#, 1);
    let m = ChainModelSpec::from_json(&t).unwrap();
    assert_eq!(m.layers[3], ReluSpec::new().max_value(6.0).into());
}

#[test]
fn refuses_bad_specs() {
    let path = |r: ReluSpec| {
        err_path(
            ChainModelSpec::new([4])
                .layer(QDenseSpec::new(2))
                .layer(r)
                .to_json()
                .unwrap_err(),
        )
    };
    assert_eq!(
        path(ReluSpec::new().negative_slope(f64::NAN)),
        "$.config.layers[2].config.negative_slope"
    );
    assert_eq!(
        path(ReluSpec::new().max_value(-1.0)),
        "$.config.layers[2].config.max_value"
    );
    assert_eq!(
        path(ReluSpec::new().threshold(-1e-9)),
        "$.config.layers[2].config.threshold"
    );
    // In a graph, at the node's place; in a Sequential, at the layer's.
    let g = GraphModelSpec::new()
        .input("x", [3])
        .node(ReluSpec::new().max_value(f64::NAN), ["x"])
        .output("re_lu");
    assert_eq!(
        err_path(g.to_json().unwrap_err()),
        "$.config.layers[1].config.max_value"
    );
    let m = ChainModelSpec::new([3]).layer(ReluSpec::new().threshold(f64::NAN));
    assert_eq!(
        err_path(m.to_keras_sequential_json().unwrap_err()),
        "$.config.layers[1].config.threshold"
    );
    // An activation layer takes one input in a graph.
    let g = GraphModelSpec::new()
        .input("x", [3])
        .input("y", [3])
        .node(ActivationSpec::new(Activation::Relu), ["x", "y"])
        .output("activation");
    assert_eq!(
        err_path(g.to_json().unwrap_err()),
        "$.config.layers[2].inbound_nodes[0].args"
    );
    // Infinities are what Keras takes.
    let ok = ChainModelSpec::new([3]).layer(
        ReluSpec::new()
            .max_value(f64::INFINITY)
            .negative_slope(0.0)
            .threshold(0.0),
    );
    let json = ok.to_json().unwrap();
    assert!(json.contains(r#""max_value": Infinity"#), "{json}");
    assert_eq!(ChainModelSpec::from_json(&json).unwrap(), ok);
}
