//! The graph-model writer against the reference's own `model.to_json()` output
//! (`tests/data/models/graph_*.json`, made by `tests/data/models/make_models.py`), and the
//! chain files read as graphs.
use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
use hgq_config::sequential::{
    ChainModelSpec, FlattenSpec, GraphModelSpec, LayerSpec, MergeOp, NodeSpec, Padding,
    QBatchNormSpec, QConvSpec, QMergeSpec, QPoolSpec,
};
use hgq_config::{Place, QType, QuantizerConfig};
use hgq_core::{OverflowMode, RoundMode};

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn default_oq() -> QuantizerConfig {
    QuantizerConfig::builder_default(Place::Datalane)
        .build()
        .unwrap()
}

/// (a) See `graph_residual()` in `make_models.py`.
fn graph_residual() -> GraphModelSpec {
    GraphModelSpec::new()
        .input("input_layer", [8])
        .node(
            QDenseSpec::new(8).activation(Activation::Relu),
            ["input_layer"],
        )
        .node(QDenseSpec::new(8), ["q_dense"])
        .node(QMergeSpec::add(), ["input_layer", "q_dense_1"])
        .node(QDenseSpec::new(3), ["q_add"])
        .output("q_dense_2")
}

/// (b) See `graph_ops()`.
fn graph_ops() -> GraphModelSpec {
    let iq_a = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(3)
        .f0(4)
        .build()
        .unwrap();
    let iq_b = QuantizerConfig::builder(QType::Kbi, Place::Datalane)
        .b0(6)
        .i0(2)
        .build()
        .unwrap();
    let iq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(1)
        .f0(5)
        .round_mode(RoundMode::Trn)
        .build()
        .unwrap();
    let ab = ["q_dense", "q_dense_1"];
    GraphModelSpec::new()
        .name("ops")
        .input("input_layer", [6])
        .node(
            QDenseSpec::new(5).activation(Activation::Relu),
            ["input_layer"],
        )
        .node(QDenseSpec::new(5), ["input_layer"])
        .node(QMergeSpec::subtract().iq_per_input([iq_a, iq_b]), ab)
        .node(QMergeSpec::multiply().beta0(2e-5).ebops_factor(0.5), ab)
        .node(QMergeSpec::maximum().iq(None), ab)
        .node(
            QMergeSpec::minimum().iq(iq).oq(default_oq()).name("lowest"),
            ab,
        )
        .node(
            QMergeSpec::add(),
            ["q_subtract", "q_multiply", "q_maximum", "lowest"],
        )
        .node(QDenseSpec::new(2), ["q_add"])
        .output("q_dense_2")
}

/// (c) See `graph_two_inputs()`: Keras lists the merges before the dense layers.
fn graph_two_inputs() -> GraphModelSpec {
    GraphModelSpec::new()
        .name("two_in")
        .input("xa", [4])
        .input("xb", [4])
        .node(QMergeSpec::add(), ["xa", "xb"])
        .node(QMergeSpec::multiply(), ["xa", "xb"])
        .node(QDenseSpec::new(3), ["q_add"])
        .node(QDenseSpec::new(2), ["q_multiply"])
        .node(
            QMergeSpec::average_pow2()
                .iq(None)
                .oq(default_oq())
                .trainable(false),
            ["xa", "xb"],
        )
        .output("q_dense")
        .output("q_dense_1")
        .output("q_average_pow2")
}

/// (d) See `graph_bn_dense()`.
fn graph_bn_dense() -> GraphModelSpec {
    GraphModelSpec::new()
        .input("input_layer", [10])
        .node(QDenseSpec::new(8), ["input_layer"])
        .node(QBatchNormSpec::new(), ["q_dense"])
        .node(
            QDenseSpec::new(4).activation(Activation::Relu),
            ["q_batch_normalization"],
        )
        .node(QDenseSpec::new(3), ["q_dense_1"])
        .output("q_dense_2")
}

/// (e) See `graph_bn_conv()`.
fn graph_bn_conv() -> GraphModelSpec {
    GraphModelSpec::new()
        .input("input_layer", [6, 6, 2])
        .node(
            QConvSpec::new(4, [3, 3]).padding(Padding::Same),
            ["input_layer"],
        )
        .node(QBatchNormSpec::new(), ["q_conv2d"])
        .node(
            QConvSpec::new(4, [3, 3])
                .padding(Padding::Same)
                .activation(Activation::Relu),
            ["q_batch_normalization"],
        )
        .node(QMergeSpec::add(), ["q_conv2d", "q_conv2d_1"])
        .node(QPoolSpec::global_average(2), ["q_add"])
        .node(QDenseSpec::new(3), ["q_global_average_pooling2d"])
        .output("q_dense")
}

/// (f) See `graph_bn_custom()`.
fn graph_bn_custom() -> GraphModelSpec {
    let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6)
        .i0(1)
        .build()
        .unwrap();
    let bq = QuantizerConfig::builder(QType::Kif, Place::Bias)
        .i0(2)
        .f0(6)
        .overflow_mode(OverflowMode::Sat)
        .build()
        .unwrap();
    GraphModelSpec::new()
        .input("input_layer", [4, 3])
        .node(
            QBatchNormSpec::new()
                .momentum(0.9)
                .epsilon(1e-5)
                .center(false)
                .kq(kq)
                .bq(bq)
                .oq(default_oq())
                .name("bn"),
            ["input_layer"],
        )
        .node(
            QBatchNormSpec::new()
                .axis(1)
                .scale(false)
                .iq(None)
                .beta0(0.0)
                .trainable(false),
            ["bn"],
        )
        .node(FlattenSpec::new(), ["q_batch_normalization"])
        .node(QDenseSpec::new(2), ["flatten"])
        .output("q_dense")
}

fn cases() -> Vec<(&'static str, GraphModelSpec)> {
    vec![
        ("graph_residual", graph_residual()),
        ("graph_ops", graph_ops()),
        ("graph_two_inputs", graph_two_inputs()),
        ("graph_bn_dense", graph_bn_dense()),
        ("graph_bn_conv", graph_bn_conv()),
        ("graph_bn_custom", graph_bn_custom()),
    ]
}

const CHAIN_FILES: [&str; 12] = [
    "demo",
    "named",
    "quantizers",
    "mixed",
    "cnn2d",
    "cnn2d_same",
    "cnn1d",
    "causal",
    "grouped",
    "nd_dense",
    "digits",
    "misc",
];

#[test]
fn writes_the_reference_bytes() {
    for (name, spec) in cases() {
        let ours = spec.to_json().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ours, reference(name), "{name}");
    }
}

#[test]
fn reads_the_reference_back() {
    for (name, spec) in cases() {
        let text = reference(name);
        let read = GraphModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read, spec, "{name}");
        assert_eq!(read.to_json().unwrap(), text, "{name}");
    }
}

#[test]
fn some_graphs_are_chains() {
    for (name, graph) in cases() {
        let chain = ChainModelSpec::from_json(&reference(name));
        if name.starts_with("graph_bn_") && name != "graph_bn_conv" {
            // QBatchNormalization in a chain.
            let chain = chain.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(GraphModelSpec::from(chain), graph, "{name}");
        } else {
            assert!(chain.is_err(), "{name}");
        }
    }
}

#[test]
fn chains_are_graphs() {
    for name in CHAIN_FILES {
        let text = reference(name);
        let chain = ChainModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let graph = GraphModelSpec::from(chain.clone());
        assert_eq!(graph.to_json().unwrap(), chain.to_json().unwrap(), "{name}");
        assert_eq!(graph.to_json().unwrap(), text, "{name}");
        // The graph reader reads a chain file as the same graph.
        assert_eq!(GraphModelSpec::from_json(&text).unwrap(), graph, "{name}");
        assert_eq!(graph.layer_names().unwrap(), chain.layer_names().unwrap());
        assert_eq!(
            graph.output_shapes().unwrap(),
            chain.output_shapes().unwrap()
        );
    }
    // A DenseModelSpec through its chain.
    let dense = DenseModelSpec::demo();
    let graph = GraphModelSpec::from(ChainModelSpec::from(dense.clone()));
    assert_eq!(graph.to_json().unwrap(), dense.to_json().unwrap());
    assert_eq!(graph.nodes[1].inbound, ["q_dense"]);
}

#[test]
fn layer_names_and_shapes() {
    let g = graph_ops();
    assert_eq!(
        g.layer_names().unwrap(),
        [
            "q_dense",
            "q_dense_1",
            "q_subtract",
            "q_multiply",
            "q_maximum",
            "lowest",
            "q_add",
            "q_dense_2"
        ]
    );
    let g = graph_bn_conv();
    assert_eq!(
        g.output_shapes().unwrap(),
        [
            vec![6, 6, 4],
            vec![6, 6, 4],
            vec![6, 6, 4],
            vec![6, 6, 4],
            vec![4],
            vec![3]
        ]
    );
    // Every merge class's automatic name, and QBatchNormalization's.
    let mut g = GraphModelSpec::new().input("x", [3]);
    for op in MergeOp::ALL {
        g = g.node(QMergeSpec::new(op), ["x", "x"]);
    }
    let g = g
        .node(QBatchNormSpec::new(), ["q_add"])
        .node(QBatchNormSpec::new(), ["q_batch_normalization"]);
    assert_eq!(
        g.layer_names().unwrap(),
        [
            "q_add",
            "q_subtract",
            "q_multiply",
            "q_maximum",
            "q_minimum",
            "q_average_pow2",
            "q_batch_normalization",
            "q_batch_normalization_1"
        ]
    );
}

#[test]
fn quantizers_of_merge_layers() {
    let km = graph_ops().to_keras_model().unwrap();
    let sub: Vec<_> = km
        .quantizers
        .iter()
        .filter(|q| q.layer_path() == "ops/q_subtract")
        .collect();
    assert_eq!(sub.len(), 2);
    assert_eq!(sub[0].key, "[0]");
    assert_eq!(sub[1].json_path(), "$.config.layers[3].config.iq_confs[1]");
    assert_eq!(sub[1].config.q_type(), QType::Kbi);
    // QMaximum without input quantizers has none.
    assert!(
        !km.quantizers
            .iter()
            .any(|q| q.layer_path() == "ops/q_maximum")
    );
    // One config for both inputs of `lowest`, and its output quantizer.
    let lowest: Vec<_> = km
        .quantizers
        .iter()
        .filter(|q| q.layer_path() == "ops/lowest")
        .map(|q| q.key.as_str())
        .collect();
    assert_eq!(lowest, ["oq_conf", "[0]", "[1]"]);
    // QBatchNormalization: iq, kq, bq.
    let km = graph_bn_dense().to_keras_model().unwrap();
    let bn: Vec<_> = km
        .quantizers
        .iter()
        .filter(|q| q.layer_path() == "functional/q_batch_normalization")
        .map(|q| q.key.as_str())
        .collect();
    assert_eq!(bn, ["iq_conf", "kq_conf", "bq_conf"]);
}

#[test]
fn keras_order_and_sort_nodes() {
    // Keras lists `b` (depth 1) after `d1` (depth 2): an input that only feeds a late layer.
    let g = GraphModelSpec::new()
        .input("a", [4])
        .input("b", [4])
        .node(QDenseSpec::new(4).name("d1"), ["a"])
        .node(QDenseSpec::new(4).name("d2"), ["d1"])
        .node(QMergeSpec::add(), ["d2", "b"])
        .output("q_add");
    let json = g.to_json().unwrap();
    let at = |s: &str| {
        json.find(&format!(r#""name": "{s}", "inbound_nodes""#))
            .unwrap()
    };
    assert!(at("a") < at("d1") && at("d1") < at("d2") && at("d2") < at("b"));
    assert!(at("b") < at("q_add"));
    assert_eq!(GraphModelSpec::from_json(&json).unwrap(), g);
    // Errors after the order is known name the written position: `q_add` is layers[4].
    let bad = g
        .clone()
        .node(QDenseSpec::new(2).iq(None).enable_ebops(true), ["q_add"]);
    let bad = GraphModelSpec {
        outputs: vec!["q_dense".into()],
        ..bad
    };
    assert_eq!(
        bad.validate().unwrap_err().path(),
        Some("$.config.layers[5].config.enable_ebops")
    );

    // Two-input model (c) given in creation order: Keras lists the merges first.
    let mut c = graph_two_inputs();
    let creation = [0, 2, 1, 3, 4].map(|j| c.nodes[j].clone());
    c.nodes = creation.to_vec();
    let e = c.validate().unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[3].name"));
    assert!(
        e.to_string().contains("Keras lists `q_multiply` here"),
        "{e}"
    );
    c.sort_nodes().unwrap();
    assert_eq!(c, graph_two_inputs());

    // Sorting keeps automatic names that would change: the merge's inputs are unnamed
    // layers given after it.
    let mut g = GraphModelSpec::new()
        .input("x", [4])
        .node(QMergeSpec::add(), ["q_dense", "q_dense_1"])
        .node(QDenseSpec::new(4), ["x"])
        .node(QDenseSpec::new(4), ["x"])
        .output("q_add");
    assert!(g.validate().is_err());
    g.sort_nodes().unwrap();
    g.validate().unwrap();
    assert_eq!(g.nodes[2].inbound, ["q_dense", "q_dense_1"]);
    assert_eq!(g.layer_names().unwrap(), ["q_dense", "q_dense_1", "q_add"]);
    assert!(g.nodes.iter().all(|n| n.layer.name().is_none()));
    // Without names, the merge first: Keras walks from the output, meeting `q_dense_1`
    // first.
    let mut g = GraphModelSpec::new()
        .input("x", [4])
        .node(QDenseSpec::new(4), ["x"])
        .node(QDenseSpec::new(4), ["x"])
        .node(QMergeSpec::add(), ["q_dense_1", "q_dense"])
        .output("q_add");
    g.sort_nodes().unwrap();
    assert_eq!(
        g.layer_names().unwrap(),
        ["q_dense_1", "q_dense", "q_add"],
        "named to keep the references"
    );
    assert_eq!(g.nodes[0].layer.name(), Some("q_dense_1"));
}

fn err(g: &GraphModelSpec) -> (String, String) {
    let e = g.validate().unwrap_err();
    assert_eq!(g.to_json().unwrap_err(), e, "to_json and validate disagree");
    (e.path().unwrap_or("").to_string(), e.to_string())
}

#[test]
fn refuses_bad_graphs() {
    let base = graph_residual;
    let arg0 = "inbound_nodes[0].args[0].config.keras_history[0]";

    // An unknown name, on a single-input layer and on a merge input.
    let mut g = base();
    g.nodes[1].inbound = vec!["q_dens".into()];
    let (p, m) = err(&g);
    assert_eq!(p, format!("$.config.layers[2].{arg0}"));
    assert!(m.contains("no input or layer named `q_dens`"), "{m}");
    let mut g = base();
    g.nodes[2].inbound[1] = "nope".into();
    assert_eq!(
        err(&g).0,
        "$.config.layers[3].inbound_nodes[0].args[0][1].config.keras_history[0]"
    );

    // A forward reference, a layer on its own output, a cycle.
    let mut g = base();
    g.nodes[1].inbound = vec!["q_add".into()];
    let (p, m) = err(&g);
    assert_eq!(p, format!("$.config.layers[2].{arg0}"));
    assert!(m.contains("comes after this layer"), "{m}");
    let mut g = base();
    g.nodes[1].inbound = vec!["q_dense_1".into()];
    assert!(err(&g).1.contains("takes its own output"));
    let mut g = base();
    g.nodes[0].inbound = vec!["q_add".into()];
    assert!(g.validate().is_err());
    let e = g.sort_nodes().unwrap_err();
    assert!(e.to_string().contains("part of a cycle"), "{e}");

    // The number of inputs.
    let mut g = base();
    g.nodes[0].inbound.push("input_layer".into());
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.layers[1].inbound_nodes[0].args");
    assert!(m.contains("QDense takes one input, not 2"), "{m}");
    let mut g = base();
    g.nodes[2].layer = QMergeSpec::subtract().into();
    g.nodes[2].inbound.push("q_dense".into());
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.layers[3].inbound_nodes[0].args[0]");
    assert!(m.contains("exactly 2 inputs, not 3"), "{m}");
    let mut g = base();
    g.nodes[2].inbound.clear();
    assert_eq!(err(&g).0, "$.config.layers[3].inbound_nodes[0].args[0]");
    let mut g = base();
    g.nodes[2].layer = QMergeSpec::add()
        .iq_per_input([default_oq(), default_oq(), default_oq()])
        .into();
    assert_eq!(err(&g).0, "$.config.layers[3].config.iq_confs");

    // Outputs: an input, an unknown name (one of several), none.
    let mut g = base();
    g.outputs = vec!["input_layer".into()];
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.output_layers[0]");
    assert!(m.contains("is an input"), "{m}");
    assert_eq!(
        err(&base().output("q_dense_9")).0,
        "$.config.output_layers[1][0]"
    );
    let mut g = base();
    g.outputs.clear();
    assert_eq!(err(&g).0, "$.config.output_layers");

    // Unused inputs and layers.
    let g = base().input("spare", [2]);
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.input_layers[1]");
    assert!(m.contains("input `spare` is not used"), "{m}");
    let g = base().node(QDenseSpec::new(2), ["q_add"]);
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.layers[5].name");
    assert!(m.contains("`q_dense_3` is not used by any output"), "{m}");

    // Nothing at all.
    assert_eq!(err(&GraphModelSpec::new()).0, "$.config.input_layers");
    assert_eq!(
        err(&GraphModelSpec::new().input("x", [2])).0,
        "$.config.layers"
    );

    // Names.
    let g = base().node(QDenseSpec::new(3).name("input_layer"), ["q_add"]);
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.layers[5].config.name");
    assert!(m.contains("used twice"), "{m}");
    let mut g = base().input("input_layer", [8]);
    g.outputs.push("q_dense".into());
    assert_eq!(err(&g).0, "$.config.layers[1].config.name");

    // Shapes: merge inputs that differ, a BatchNormalization axis out of range, an empty
    // input shape.
    let mut g = base();
    g.nodes[1].layer = QDenseSpec::new(7).into();
    let (p, m) = err(&g);
    assert_eq!(p, "$.config.layers[3].build_config.input_shape[1]");
    assert!(m.contains("does not match input 0"), "{m}");
    for axis in [0, 2, -2] {
        let g = graph_bn_dense();
        let mut g2 = g.clone();
        g2.nodes[1].layer = QBatchNormSpec::new().axis(axis).into();
        assert_eq!(err(&g2).0, "$.config.layers[2].config.axis", "axis {axis}");
    }
    let mut g = graph_bn_custom();
    g.nodes[1].layer = QBatchNormSpec::new().axis(2).into();
    g.validate().unwrap();
    g.nodes[1].layer = QBatchNormSpec::new().axis(-3).into();
    assert_eq!(err(&g).0, "$.config.layers[2].config.axis");
    let mut g = base();
    g.inputs[0].shape.clear();
    assert_eq!(err(&g).0, "$.config.layers[0].config.batch_shape");
    // Geometry as in a chain.
    let mut g = graph_bn_conv();
    g.nodes[2].layer = QConvSpec::new(4, [9, 3]).into();
    assert_eq!(err(&g).0, "$.config.layers[3].config.kernel_size[0]");

    // EBOPs without input quantizers, on a merge and on a BatchNormalization.
    let mut g = base();
    g.nodes[2].layer = QMergeSpec::add().iq(None).enable_ebops(true).into();
    assert_eq!(err(&g).0, "$.config.layers[3].config.enable_ebops");
    let mut g = graph_bn_dense();
    g.nodes[1].layer = QBatchNormSpec::new().iq(None).enable_ebops(true).into();
    assert_eq!(err(&g).0, "$.config.layers[2].config.enable_ebops");
}

#[test]
fn reading_refuses_other_documents() {
    let text = reference("graph_two_inputs");
    // `keras.Model([inp], [out])` writes lists of one: not described.
    let one = reference("graph_residual");
    let lists = one.replace(
        r#""input_layers": ["input_layer", 0, 0]"#,
        r#""input_layers": [["input_layer", 0, 0]]"#,
    );
    assert_eq!(
        GraphModelSpec::from_json(&lists).unwrap_err().path(),
        Some("$.config.input_layers[0]")
    );
    // A shape that is not Keras'.
    let bad = text.replacen(
        r#""build_config": {"input_shape": [[null, 4], [null, 4]]}"#,
        r#""build_config": {"input_shape": [[null, 4], [null, 5]]}"#,
        1,
    );
    assert_eq!(
        GraphModelSpec::from_json(&bad).unwrap_err().path(),
        Some("$.config.layers[2].build_config.input_shape[1][1]")
    );
    // A second call of a layer (a shared layer).
    let v = hgq_config::PyValue::parse(&one).unwrap();
    let hgq_config::PyValue::Dict(mut root) = v else {
        panic!()
    };
    let hgq_config::PyValue::Dict(config) = &mut root[2].1 else {
        panic!()
    };
    let hgq_config::PyValue::List(layers) = &mut config[2].1 else {
        panic!()
    };
    let hgq_config::PyValue::Dict(l) = &mut layers[4] else {
        panic!()
    };
    let hgq_config::PyValue::List(calls) = &mut l[6].1 else {
        panic!()
    };
    calls.push(calls[0].clone());
    let shared = hgq_config::PyValue::Dict(root).to_json();
    assert_eq!(
        GraphModelSpec::from_json(&shared).unwrap_err().path(),
        Some("$.config.layers[4].inbound_nodes[1]")
    );
    // An unknown class, and a key the class does not have.
    let bad = text.replacen(r#""class_name": "QMultiply""#, r#""class_name": "QDot""#, 1);
    assert_eq!(
        GraphModelSpec::from_json(&bad).unwrap_err().path(),
        Some("$.config.layers[3]")
    );
    let bad = reference("graph_bn_dense").replacen(r#""renorm": false"#, r#""renorm": true"#, 1);
    assert_eq!(
        GraphModelSpec::from_json(&bad).unwrap_err().path(),
        Some("$.config.layers[2].config.renorm")
    );
    // An output the reader finds but the graph does not use as written.
    let bad = text.replacen(
        r#"["q_average_pow2", 0, 0]]"#,
        r#"["q_average_pow3", 0, 0]]"#,
        1,
    );
    assert_eq!(
        GraphModelSpec::from_json(&bad).unwrap_err().path(),
        Some("$.config.output_layers[2][0]")
    );
}

#[test]
fn merges_and_batch_norm_in_chains() {
    // QBatchNormalization and a one-input merge are chain layers too.
    let chain = ChainModelSpec::new([5])
        .layer(QDenseSpec::new(4))
        .layer(QBatchNormSpec::new())
        .layer(QMergeSpec::add())
        .layer(QDenseSpec::new(2));
    let json = chain.to_json().unwrap();
    assert!(json.contains(r#""iq_confs": [{"#));
    assert!(json.contains(r#""kwargs": {"mask": null}"#));
    assert!(json.contains(r#""build_config": {"input_shape": [[null, 4]]}, "name": "q_add""#));
    assert_eq!(ChainModelSpec::from_json(&json).unwrap(), chain);
    let graph = GraphModelSpec::from(chain.clone());
    assert_eq!(graph.to_json().unwrap(), json);
    assert_eq!(GraphModelSpec::from_json(&json).unwrap(), graph);
    // QSubtract takes two inputs: not in a chain.
    let bad = ChainModelSpec::new([5]).layer(QMergeSpec::subtract());
    assert_eq!(
        bad.to_json().unwrap_err().path(),
        Some("$.config.layers[1].inbound_nodes[0].args[0]")
    );
    let LayerSpec::QMerge(m) = &chain.layers[2] else {
        panic!()
    };
    assert_eq!(m.iq.as_ref().map(Vec::len), Some(1));
    // NodeSpec builds what GraphModelSpec::node appends.
    assert_eq!(
        graph.nodes[2],
        NodeSpec::new(QMergeSpec::add(), ["q_batch_normalization"])
    );
}
