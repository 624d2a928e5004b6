//! The chain-model writer against the reference's own `model.to_json()` output
//! (`tests/data/models/*.json`, made by `tests/data/models/make_models.py`).
use hgq_config::model_json::{Activation, DenseModelSpec, QDenseSpec};
use hgq_config::sequential::{
    ChainModelSpec, FlattenSpec, LayerSpec, Padding, PoolWindow, QConvSpec, QPoolSpec, ReshapeSpec,
};
use hgq_config::{ConfigError, Place, QType, QuantizerConfig};
use hgq_core::RoundMode;

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (a) See `cnn2d()` in `make_models.py`.
fn cnn2d() -> ChainModelSpec {
    ChainModelSpec::new([6, 6, 2])
        .layer(QConvSpec::new(3, [3, 3]).activation(Activation::Relu))
        .layer(QPoolSpec::max([2, 2]))
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(4))
}

/// (b) See `cnn2d_same()`.
fn cnn2d_same() -> ChainModelSpec {
    ChainModelSpec::new([7, 5, 2])
        .layer(
            QConvSpec::new(4, [2, 3])
                .strides([2, 1])
                .padding(Padding::Same)
                .use_bias(false)
                .beta0(2e-5),
        )
        .layer(QPoolSpec::average([2, 2]).strides([1, 1]))
        .layer(QPoolSpec::global_max(2))
        .layer(QDenseSpec::new(3))
}

/// (c) See `cnn1d()`.
fn cnn1d() -> ChainModelSpec {
    ChainModelSpec::new([10, 3])
        .layer(
            QConvSpec::new(4, [3])
                .dilation_rate([2])
                .activation(Activation::Relu)
                .name("c1"),
        )
        .layer(QPoolSpec::average([2]))
        .layer(QConvSpec::new(2, [2]).strides([2]).padding(Padding::Same))
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(3))
}

/// (d) See `causal()`.
fn causal() -> ChainModelSpec {
    ChainModelSpec::new([9, 2])
        .layer(QConvSpec::new(3, [3]).padding(Padding::Causal))
        .layer(QPoolSpec::max([3]).strides([2]).padding(Padding::Same))
        .layer(QPoolSpec::global_average(1))
        .layer(QDenseSpec::new(2))
}

/// (e) See `grouped()`.
fn grouped() -> ChainModelSpec {
    let iq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(3)
        .f0(4)
        .build()
        .unwrap();
    let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6)
        .build()
        .unwrap();
    let oq = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .i0(4)
        .f0(3)
        .round_mode(RoundMode::Trn)
        .build()
        .unwrap();
    let default_oq = QuantizerConfig::builder_default(Place::Datalane)
        .build()
        .unwrap();
    ChainModelSpec::new([5, 5, 4])
        .name("grouped")
        .input_name("img")
        .layer(
            QConvSpec::new(4, [2, 2])
                .groups(2)
                .activation(Activation::Tanh)
                .iq(iq)
                .kq(kq)
                .oq(oq)
                .parallelization_factor(4)
                .name("gconv"),
        )
        .layer(
            QPoolSpec::max([2, 2])
                .padding(Padding::Same)
                .iq(None)
                .oq(default_oq),
        )
        .layer(
            QPoolSpec::global_average(2)
                .keepdims(true)
                .ebops_factor(0.5)
                .trainable(false)
                .beta0(0.0),
        )
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(2).iq(None))
}

/// (f) See `nd_dense()`.
fn nd_dense() -> ChainModelSpec {
    ChainModelSpec::new([4, 8])
        .layer(QDenseSpec::new(5))
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(2))
}

/// (g) See `digits()`.
fn digits() -> ChainModelSpec {
    ChainModelSpec::new([64])
        .layer(ReshapeSpec::new([8, 8, 1]))
        .layer(QConvSpec::new(4, [3, 3]).activation(Activation::Relu))
        .layer(QPoolSpec::max([2, 2]))
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(10))
}

/// See `misc()`.
fn misc() -> ChainModelSpec {
    ChainModelSpec::new([8, 8, 1])
        .layer(
            QConvSpec::new(2, [3, 3])
                .dilation_rate([2, 1])
                .padding(Padding::Same)
                .parallelization_factor(8),
        )
        .layer(QConvSpec::new(3, [3, 3]).strides([2, 2]))
        .layer(ReshapeSpec::new([-1, 3]).name("rows"))
        .layer(QDenseSpec::new(4).parallelization_factor(2))
        .layer(QDenseSpec::new(2))
        .layer(FlattenSpec::new().name("flat"))
        .layer(ReshapeSpec::new([6, 3]))
        // `parallelization_factor=3` in Python: hgq2 does not write it for pooling.
        .layer(QPoolSpec::global_average(1))
        .layer(QDenseSpec::new(1))
}

fn cases() -> Vec<(&'static str, ChainModelSpec)> {
    vec![
        ("cnn2d", cnn2d()),
        ("cnn2d_same", cnn2d_same()),
        ("cnn1d", cnn1d()),
        ("causal", causal()),
        ("grouped", grouped()),
        ("nd_dense", nd_dense()),
        ("digits", digits()),
        ("misc", misc()),
    ]
}

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
        let read = ChainModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read, spec, "{name}");
        assert_eq!(read.to_json().unwrap(), text, "{name}");
    }
}

#[test]
fn dense_models_are_chains() {
    for name in ["demo", "named", "quantizers", "mixed"] {
        let text = reference(name);
        let dense = DenseModelSpec::from_json(&text).unwrap();
        let chain = ChainModelSpec::from(dense.clone());
        assert_eq!(chain.to_json().unwrap(), text, "{name}");
        assert_eq!(ChainModelSpec::from_json(&text).unwrap(), chain, "{name}");
        assert_eq!(DenseModelSpec::try_from(chain).unwrap(), dense, "{name}");
    }
    // A CNN is not a DenseModelSpec; a QDense chain on a 3-D input neither.
    let e = DenseModelSpec::from_json(&reference("digits")).unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[1].class_name"));
    let e = DenseModelSpec::from_json(&reference("nd_dense")).unwrap_err();
    assert_eq!(e.path(), Some("$.config.layers[0].config.batch_shape"));
}

#[test]
fn output_shapes_are_keras_shapes() {
    let s = |m: ChainModelSpec| m.output_shapes().unwrap();
    assert_eq!(
        s(cnn2d_same()),
        [vec![4, 5, 4], vec![3, 4, 4], vec![4], vec![3]]
    );
    assert_eq!(
        s(cnn1d()),
        [vec![6, 4], vec![3, 4], vec![2, 2], vec![4], vec![3]]
    );
    assert_eq!(s(causal()), [vec![9, 3], vec![5, 3], vec![3], vec![2]]);
    assert_eq!(
        s(grouped()),
        [
            vec![4, 4, 4],
            vec![2, 2, 4],
            vec![1, 1, 4],
            vec![4],
            vec![2]
        ]
    );
    assert_eq!(s(nd_dense()), [vec![4, 5], vec![20], vec![2]]);
    assert_eq!(s(misc())[2], [9, 3]);
    // Valid padding with strides: floor((n - d (k - 1) - 1) / s) + 1.
    let m = ChainModelSpec::new([11, 9, 1]).layer(QConvSpec::new(1, [3, 4]).strides([3, 2]));
    assert_eq!(s(m), [vec![3, 3, 1]]);
    let m = ChainModelSpec::new([11, 1]).layer(QConvSpec::new(1, [3]).dilation_rate([4]));
    assert_eq!(s(m), [vec![3, 1]]);
    // Same padding: ceil(n / s); a pooling window larger than the input is fine there.
    let m = ChainModelSpec::new([5, 1])
        .layer(QPoolSpec::average([7]).strides([2]).padding(Padding::Same));
    assert_eq!(s(m), [vec![3, 1]]);
}

#[test]
fn parallelization_factors_as_hgq2_resolves_them() {
    let pf = |json: &str, layer: usize| {
        let v = hgq_config::PyValue::parse(json).unwrap();
        let PyValue::List(layers) = v.get("config").unwrap().get("layers").unwrap().clone() else {
            panic!()
        };
        layers[layer]
            .get("config")
            .unwrap()
            .get("parallelization_factor")
            .cloned()
    };
    use hgq_config::PyValue;
    // Convolutions: the number of output positions; QDense: the product of the output's
    // sizes between batch and the last axis; pooling: not written.
    let json = reference("misc");
    assert_eq!(pf(&json, 1), Some(PyValue::Int(8))); // given
    assert_eq!(pf(&json, 2), Some(PyValue::Int(9))); // 3 x 3 outputs
    assert_eq!(pf(&json, 4), Some(PyValue::Int(2))); // given
    assert_eq!(pf(&json, 5), Some(PyValue::Int(9))); // (9, 2) output
    assert_eq!(pf(&json, 8), None);
    assert_eq!(pf(&reference("nd_dense"), 1), Some(PyValue::Int(4)));
    assert_eq!(pf(&reference("causal"), 1), Some(PyValue::Int(9)));
    // Read back: automatic values are -1, others kept.
    let read = ChainModelSpec::from_json(&json).unwrap();
    let pfs: Vec<Option<i64>> = read
        .layers
        .iter()
        .map(|l| match l {
            LayerSpec::QDense(d) => Some(d.parallelization_factor),
            LayerSpec::QConv(c) => Some(c.parallelization_factor),
            _ => None,
        })
        .collect();
    assert_eq!(
        pfs,
        [
            Some(8),
            Some(-1),
            None,
            Some(2),
            Some(-1),
            None,
            None,
            None,
            Some(-1)
        ]
    );
    // A convolution's 0 is automatic too (hgq2: `<= 0`); it reads back as -1.
    let m = ChainModelSpec::new([4, 1]).layer(QConvSpec::new(1, [2]).parallelization_factor(0));
    assert!(
        m.to_json()
            .unwrap()
            .contains(r#""parallelization_factor": 3}"#)
    );
}

#[test]
fn auto_names_per_class_skip_named_layers() {
    let m = ChainModelSpec::new([12, 12, 2])
        .layer(QConvSpec::new(2, [3, 3]).name("first"))
        .layer(QConvSpec::new(2, [3, 3]))
        .layer(QConvSpec::new(2, [3, 3]))
        .layer(QPoolSpec::max([2, 2]))
        .layer(QPoolSpec::average([2, 2]))
        .layer(QPoolSpec::global_max(2).keepdims(true))
        .layer(FlattenSpec::new())
        .layer(ReshapeSpec::new([2, 1]))
        .layer(QConvSpec::new(2, [1]))
        .layer(QPoolSpec::max([1]))
        .layer(QPoolSpec::average([1]))
        .layer(QPoolSpec::global_average(1))
        .layer(QDenseSpec::new(2))
        .layer(ReshapeSpec::new([2, 1]).name("reshape_1"))
        .layer(QPoolSpec::global_max(1))
        .layer(QDenseSpec::new(1));
    assert_eq!(
        m.layer_names().unwrap(),
        [
            "first",
            "q_conv2d",
            "q_conv2d_1",
            "q_max_pooling2d",
            "q_average_pooling2d",
            "q_global_max_pooling2d",
            "flatten",
            "reshape",
            "q_conv1d",
            "q_max_pooling1d",
            "q_average_pooling1d",
            "q_global_average_pooling1d",
            "q_dense",
            "reshape_1",
            "q_global_max_pooling1d",
            "q_dense_1",
        ]
    );
    // Read back: names equal to the automatic ones are `None`, `reshape_1` too (it is the
    // name the unnamed layer would get there: one unnamed Reshape before it); the same
    // document either way.
    let json = m.to_json().unwrap();
    let read = ChainModelSpec::from_json(&json).unwrap();
    assert_eq!(read.layers[13].name(), None);
    let mut unnamed = m.clone();
    unnamed.layers[13] = ReshapeSpec::new([2, 1]).into();
    assert_eq!(read, unnamed);
    assert_eq!(unnamed.to_json().unwrap(), json);
    // A name that is not the automatic one is kept, and does not count.
    let m = ChainModelSpec::new([4])
        .layer(FlattenSpec::new().name("flatten_1"))
        .layer(FlattenSpec::new());
    assert_eq!(m.layer_names().unwrap(), ["flatten_1", "flatten"]);
    assert_eq!(ChainModelSpec::from_json(&m.to_json().unwrap()).unwrap(), m);
}

fn err_path(m: &ChainModelSpec) -> String {
    let e = m.to_json().unwrap_err();
    assert!(matches!(e, ConfigError::Value { .. }), "{e}");
    e.path().unwrap().to_string()
}

#[test]
fn refuses_geometry_keras_refuses() {
    let on = |shape: &[usize], l: LayerSpec| ChainModelSpec::new(shape).layer(l);
    let conv = |f, k: &[usize]| QConvSpec::new(f, k);
    let cases: Vec<(ChainModelSpec, &str)> = vec![
        (ChainModelSpec::new([4]), "$.config.layers"),
        (
            on(&[], QDenseSpec::new(1).into()),
            "$.config.layers[0].config.batch_shape",
        ),
        (
            on(&[3, 0], QDenseSpec::new(1).into()),
            "$.config.layers[0].config.batch_shape[2]",
        ),
        // Kernel larger than the input with valid padding (dilation counts).
        (
            on(&[6, 2, 1], conv(1, &[3, 3]).into()),
            "$.config.layers[1].config.kernel_size[1]",
        ),
        (
            on(&[6, 1], conv(1, &[3]).dilation_rate([3]).into()),
            "$.config.layers[1].config.kernel_size[0]",
        ),
        // Zero sizes.
        (
            on(&[6, 1], conv(0, &[3]).into()),
            "$.config.layers[1].config.filters",
        ),
        (
            on(&[6, 6, 1], conv(1, &[3, 0]).into()),
            "$.config.layers[1].config.kernel_size[1]",
        ),
        (
            on(&[6, 6, 1], conv(1, &[3, 3]).strides([1, 0]).into()),
            "$.config.layers[1].config.strides[1]",
        ),
        (
            on(&[6, 1], conv(1, &[3]).groups(0).into()),
            "$.config.layers[1].config.groups",
        ),
        (
            on(&[6, 1], QPoolSpec::max([0]).into()),
            "$.config.layers[1].config.pool_size[0]",
        ),
        // Groups.
        (
            on(&[6, 4], conv(3, &[3]).groups(2).into()),
            "$.config.layers[1].config.filters",
        ),
        (
            on(&[6, 3], conv(4, &[3]).groups(2).into()),
            "$.config.layers[1].config.groups",
        ),
        // Strides and dilation both above 1.
        (
            on(
                &[9, 9, 1],
                conv(1, &[3, 3])
                    .strides([2, 1])
                    .dilation_rate([1, 2])
                    .into(),
            ),
            "$.config.layers[1].config.dilation_rate",
        ),
        // Lists of the wrong length, ranks not written.
        (
            on(&[9, 9, 1], conv(1, &[3, 3]).strides([2]).into()),
            "$.config.layers[1].config.strides",
        ),
        (
            on(&[9, 9, 9, 1], conv(1, &[3, 3, 3]).into()),
            "$.config.layers[1].config.kernel_size",
        ),
        (
            on(&[9, 9, 9, 1], QPoolSpec::global_max(3).into()),
            "$.config.layers[1].class_name",
        ),
        // Padding.
        (
            on(&[9, 9, 1], conv(1, &[3, 3]).padding(Padding::Causal).into()),
            "$.config.layers[1].config.padding",
        ),
        (
            on(&[9, 1], QPoolSpec::max([2]).padding(Padding::Causal).into()),
            "$.config.layers[1].config.padding",
        ),
        // Input of the wrong rank.
        (
            on(&[9, 9, 1], conv(1, &[3]).into()),
            "$.config.layers[1].build_config.input_shape",
        ),
        (
            on(&[9], QPoolSpec::global_average(1).into()),
            "$.config.layers[1].build_config.input_shape",
        ),
        // Pooling window larger than the input.
        (
            on(&[3, 1], QPoolSpec::average([4]).into()),
            "$.config.layers[1].config.pool_size[0]",
        ),
        // Reshape.
        (
            on(&[6], ReshapeSpec::new([4, 2]).into()),
            "$.config.layers[1].config.target_shape",
        ),
        (
            on(&[6], ReshapeSpec::new([-1, 4]).into()),
            "$.config.layers[1].config.target_shape",
        ),
        (
            on(&[6], ReshapeSpec::new([-1, -1]).into()),
            "$.config.layers[1].config.target_shape[1]",
        ),
        (
            on(&[6], ReshapeSpec::new([0, 6]).into()),
            "$.config.layers[1].config.target_shape[0]",
        ),
        (
            on(&[6], ReshapeSpec::new(Vec::new()).into()),
            "$.config.layers[1].config.target_shape",
        ),
        // EBOPs without an input quantizer, names.
        (
            on(&[6, 1], conv(1, &[3]).iq(None).enable_ebops(true).into()),
            "$.config.layers[1].config.enable_ebops",
        ),
        (
            on(
                &[6, 1],
                QPoolSpec::max([2]).iq(None).enable_ebops(true).into(),
            ),
            "$.config.layers[1].config.enable_ebops",
        ),
        (
            on(&[6, 1], FlattenSpec::new().name("input_layer").into()),
            "$.config.layers[1].config.name",
        ),
        (
            ChainModelSpec::new([6, 1])
                .layer(FlattenSpec::new().name("q_dense"))
                .layer(QDenseSpec::new(1)),
            "$.config.layers[2].config.name",
        ),
    ];
    for (m, want) in cases {
        assert_eq!(err_path(&m), want, "{m:?}");
    }
    // A later layer's geometry: the conv of the digits CNN on a smaller image.
    let mut m = digits();
    m.input_shape = vec![4];
    m.layers[0] = ReshapeSpec::new([2, 2, 1]).into();
    assert_eq!(err_path(&m), "$.config.layers[2].config.kernel_size[0]");
}

#[test]
fn reading_refuses_other_documents() {
    let path = |text: &str| {
        ChainModelSpec::from_json(text)
            .unwrap_err()
            .path()
            .map(str::to_string)
    };
    let cnn = reference("cnn2d");
    // A class this module does not describe.
    let t = cnn.replacen(
        r#""class_name": "Flatten""#,
        r#""class_name": "Dropout""#,
        1,
    );
    let e = ChainModelSpec::from_json(&t).unwrap_err();
    assert!(
        matches!(&e, ConfigError::UnknownClass { path, class_name } if path == "$.config.layers[3]" && class_name == "Dropout"),
        "{e:?}"
    );
    // A kernel size of the wrong length for the class.
    let t = cnn.replacen(r#""kernel_size": [3, 3]"#, r#""kernel_size": [3]"#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.kernel_size")
    );
    // An unknown padding, a padding that does not fit.
    let t = cnn.replacen(r#""padding": "valid""#, r#""padding": "full""#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.padding")
    );
    let t = cnn.replacen(r#""padding": "valid""#, r#""padding": "causal""#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.padding")
    );
    // Channels first.
    let t = cnn.replacen(r#""channels_last""#, r#""channels_first""#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.data_format")
    );
    // A tensor shape other than the one Keras computes.
    let t = cnn.replacen(
        r#""shape": [null, 4, 4, 3]"#,
        r#""shape": [null, 4, 4, 2]"#,
        1,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[2].inbound_nodes[0].args[0].config.shape[3]")
    );
    // Geometry Keras refuses, found on reading.
    let t = cnn.replacen(
        r#""batch_shape": [null, 6, 6, 2]"#,
        r#""batch_shape": [null, 2, 6, 2]"#,
        1,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.kernel_size[0]")
    );
    // A pooling layer does not write parallelization_factor.
    let t = cnn.replacen(
        r#""data_format": "channels_last", "enable_ebops""#,
        r#""data_format": "channels_last", "parallelization_factor": 4, "enable_ebops""#,
        2,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[2].config.parallelization_factor")
    );
    // keepdims missing, a Reshape with a build_config.
    let t = reference("causal").replacen(r#""keepdims": false, "#, "", 1);
    assert_eq!(path(&t).as_deref(), Some("$.config.layers[3].config"));
    let t = reference("digits").replacen(
        r#""registered_name": null, "name": "reshape""#,
        r#""registered_name": null, "build_config": {"input_shape": [null, 64]}, "name": "reshape""#,
        1,
    );
    assert_eq!(path(&t).as_deref(), Some("$.config.layers[1].build_config"));
    // A QConv1D padded causally is a conv, but not a pooling.
    let t = reference("causal").replacen(r#""padding": "same""#, r#""padding": "causal""#, 1);
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[2].config.padding")
    );
    // A negative target size.
    let t = reference("digits").replacen(
        r#""target_shape": [8, 8, 1]"#,
        r#""target_shape": [8, -8, -1]"#,
        1,
    );
    assert_eq!(
        path(&t).as_deref(),
        Some("$.config.layers[1].config.target_shape[1]")
    );
}

#[test]
fn quantizers_are_found_with_their_layer_paths() {
    let km = grouped().to_keras_model().unwrap();
    assert_eq!(km.to_json(), reference("grouped"));
    let found: Vec<(String, String)> = km
        .quantizers
        .iter()
        .map(|q| (q.layer_path(), q.key.clone()))
        .collect();
    let want = [
        ("grouped/gconv", "oq_conf"),
        ("grouped/gconv", "iq_conf"),
        ("grouped/gconv", "kq_conf"),
        ("grouped/gconv", "bq_conf"),
        ("grouped/q_max_pooling2d", "oq_conf"),
        ("grouped/q_global_average_pooling2d", "iq_conf"),
        ("grouped/q_dense", "kq_conf"),
        ("grouped/q_dense", "bq_conf"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(found, want);
    let LayerSpec::QConv(c) = &grouped().layers[0] else {
        panic!()
    };
    assert_eq!(km.quantizers[2].config, c.kq);
}

#[test]
fn pooling_windows() {
    let read = ChainModelSpec::from_json(&reference("cnn2d_same")).unwrap();
    let LayerSpec::QPool(p) = &read.layers[1] else {
        panic!()
    };
    assert_eq!(
        p.window,
        PoolWindow::Local {
            pool_size: vec![2, 2],
            strides: Some(vec![1, 1]),
            padding: Padding::Valid
        }
    );
    // Strides equal to the pool size read as `None`.
    let read = ChainModelSpec::from_json(&reference("cnn2d")).unwrap();
    let LayerSpec::QPool(p) = &read.layers[1] else {
        panic!()
    };
    assert!(matches!(p.window, PoolWindow::Local { strides: None, .. }));
    assert_eq!(p.class_name(), Some("QMaxPooling2D"));
}
