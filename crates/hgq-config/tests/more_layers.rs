//! hgq2's `QEinsumDense`, `QEinsumDenseBatchnorm`, `QBatchNormDense`, `QUnaryFunctionLUT`
//! and `QSoftmax` against the reference's own `model.to_json()` output
//! (`tests/data/models/{einsum,einsum_free,bn_dense,einsum_bn,lut,softmax,graph_more,
//! seq_more}.json`, made by `tests/data/models/make_models.py`), the einsum shapes, and the
//! errors on what hgq2 or Keras refuse.
use hgq_config::model_json::{Activation, QDenseSpec};
use hgq_config::sequential::{
    ChainModelSpec, FlattenSpec, GraphModelSpec, LayerSpec, QBatchNormDenseSpec,
    QEinsumDenseBatchnormSpec, QEinsumDenseSpec, QMergeSpec, QSoftmaxSpec, QUnaryFunctionLUTSpec,
    einsum_norm_shapes, einsum_shapes,
};
use hgq_config::{ConfigError, InitValue, Params, Place, QType, QuantizerConfig};
use hgq_core::{OverflowMode, RoundMode};

fn reference(name: &str) -> String {
    let path = format!(
        "{}/tests/data/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn default_q(place: Place) -> QuantizerConfig {
    QuantizerConfig::builder_default(place).build().unwrap()
}

fn kif(place: Place, i0: i64, f0: i64) -> QuantizerConfig {
    QuantizerConfig::builder(QType::Kif, place)
        .i0(i0)
        .f0(f0)
        .build()
        .unwrap()
}

/// See `einsum()` in `make_models.py`.
fn einsum() -> ChainModelSpec {
    let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(6)
        .i0(1)
        .build()
        .unwrap();
    ChainModelSpec::new([4, 6])
        .layer(
            QEinsumDenseSpec::new("abc,cd->abd", [4, 5])
                .bias_axes("d")
                .activation(Activation::Relu),
        )
        .layer(
            QEinsumDenseSpec::new("...b,bc->...c", [3])
                .kq(kq)
                .parallelization_factor(2),
        )
        .layer(
            QEinsumDenseSpec::new("abc,cde->abde", [4, 2, 2])
                .bias_axes("de")
                .iq(kif(Place::Datalane, 3, 4))
                .oq(default_q(Place::Datalane))
                .beta0(2e-5),
        )
        .layer(
            QEinsumDenseSpec::new("abcd,bcde->ae", [3])
                .bias_axes("e")
                .iq(None)
                .name("reduce"),
        )
        .layer(QDenseSpec::new(2))
}

/// See `einsum_free()`.
fn einsum_free() -> ChainModelSpec {
    ChainModelSpec::new([3, 4, 6])
        .layer(
            QEinsumDenseSpec::new("ab...,bc->ac...", [5])
                .bias_axes("c")
                .ebops_factor(0.5),
        )
        .layer(
            QEinsumDenseSpec::new("abcd,de->abce", [None, None, Some(2)])
                .bias_axes("e")
                .trainable(false),
        )
}

/// See `bn_dense()`.
fn bn_dense() -> ChainModelSpec {
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
    ChainModelSpec::new([10])
        .layer(QBatchNormDenseSpec::new(8).activation(Activation::Relu))
        .layer(
            QBatchNormDenseSpec::new(4)
                .scale(false)
                .momentum(0.9)
                .epsilon(1e-5)
                .synchronized(true)
                .kq(kq)
                .bq(bq)
                .oq(default_q(Place::Datalane))
                .name("bnd"),
        )
        .layer(QDenseSpec::new(3))
}

/// See `einsum_bn()`, as it reads back: hgq2 does not write the normalization's arguments.
fn einsum_bn() -> ChainModelSpec {
    ChainModelSpec::new([4, 6])
        .layer(
            QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d").activation(Activation::Relu),
        )
        .layer(
            QEinsumDenseBatchnormSpec::new("...c,cde->...de", [3, 2], "de")
                .oq(default_q(Place::Datalane)),
        )
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(2))
}

/// See `lut()`.
fn lut() -> ChainModelSpec {
    ChainModelSpec::new([8])
        .layer(QDenseSpec::new(8))
        .layer(QUnaryFunctionLUTSpec::new(Activation::Tanh))
        .layer(QDenseSpec::new(4))
        .layer(
            QUnaryFunctionLUTSpec::new(Activation::Sigmoid)
                .iq(None)
                .beta0(0.0),
        )
        .layer(QDenseSpec::new(4).iq(None))
        .layer(
            QUnaryFunctionLUTSpec::new(Activation::Silu)
                .allow_heterogeneous_input(false)
                .allow_heterogeneous_table(false)
                .oq(kif(Place::Datalane, 1, 5))
                .override_oq_k0_to_0()
                .name("act"),
        )
        .layer(
            QUnaryFunctionLUTSpec::new(None)
                .oq(None)
                // hgq2 keeps EBOPs on without the output quantizer.
                .enable_ebops(true)
                .ebops_factor(0.5),
        )
}

/// See `softmax()`.
fn softmax() -> ChainModelSpec {
    let inv_iq = QuantizerConfig::builder(QType::Kbi, Place::Datalane)
        .b0(7)
        .build()
        .unwrap();
    ChainModelSpec::new([4, 6])
        .layer(QDenseSpec::new(6))
        .layer(QSoftmaxSpec::new())
        .layer(
            QSoftmaxSpec::new()
                .axis(1)
                .stable(false)
                .iq(default_q(Place::Datalane))
                .name("col_softmax"),
        )
        .layer(
            QSoftmaxSpec::new()
                .axes([1, 2])
                .allow_heterogeneous_table(true)
                .input_scaler(0.5)
                .parallelization_factor(2)
                .exp_oq(kif(Place::Table, 1, 7))
                .inv_iq(inv_iq)
                .oq(default_q(Place::Datalane))
                .enable_ebops(false)
                .beta0(0.0),
        )
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(3))
        .layer(QSoftmaxSpec::new().axis(-1).trainable(false))
}

/// See `graph_more()`.
fn graph_more() -> GraphModelSpec {
    GraphModelSpec::new()
        .input("input_layer", [4, 6])
        .node(
            QEinsumDenseSpec::new("abc,cd->abd", [4, 6]).bias_axes("d"),
            ["input_layer"],
        )
        .node(QSoftmaxSpec::new(), ["q_einsum_dense"])
        .node(
            QUnaryFunctionLUTSpec::new(Activation::Tanh),
            ["input_layer"],
        )
        .node(QMergeSpec::add(), ["q_softmax", "q_unary_function_lut"])
        .node(
            QEinsumDenseBatchnormSpec::new("abc,cb->ab", [4], "b"),
            ["q_add"],
        )
        .output("q_einsum_dense_batchnorm")
        .output("q_unary_function_lut")
}

/// See `seq_more()` (a Keras `Sequential`).
fn seq_more() -> ChainModelSpec {
    ChainModelSpec::new([4, 6])
        .name("sequential")
        .layer(QEinsumDenseSpec::new("abc,cd->abd", [4, 5]).bias_axes("d"))
        .layer(QUnaryFunctionLUTSpec::new(Activation::Tanh))
        .layer(QSoftmaxSpec::new())
        .layer(FlattenSpec::new())
        .layer(QBatchNormDenseSpec::new(3))
}

fn chains() -> Vec<(&'static str, ChainModelSpec)> {
    vec![
        ("einsum", einsum()),
        ("einsum_free", einsum_free()),
        ("bn_dense", bn_dense()),
        ("einsum_bn", einsum_bn()),
        ("lut", lut()),
        ("softmax", softmax()),
    ]
}

#[test]
fn chains_write_the_reference_bytes() {
    for (name, spec) in chains() {
        let ours = spec.to_json().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ours, reference(name), "{name}");
        // The same model as a graph writes the same.
        assert_eq!(
            GraphModelSpec::from(spec).to_json().unwrap(),
            reference(name),
            "{name}"
        );
    }
}

#[test]
fn chains_read_the_reference_back() {
    for (name, spec) in chains() {
        let text = reference(name);
        let read = ChainModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(read, spec, "{name}");
        assert_eq!(read.to_json().unwrap(), text, "{name}");
        let graph = GraphModelSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(graph, GraphModelSpec::from(spec), "{name}");
    }
}

#[test]
fn graph_more_both_ways() {
    let g = graph_more();
    let text = reference("graph_more");
    assert_eq!(g.to_json().unwrap(), text);
    let read = GraphModelSpec::from_json(&text).unwrap();
    assert_eq!(read, g);
    assert_eq!(read.to_json().unwrap(), text);
    assert!(text.contains(
        r#""name": "q_softmax", "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"shape": [null, 4, 6], "dtype": "float32", "keras_history": ["q_einsum_dense", 0, 0]}}], "kwargs": {"mask": null}}]"#
    ));
    assert_eq!(
        g.output_shapes().unwrap(),
        [vec![4, 6], vec![4, 6], vec![4, 6], vec![4, 6], vec![4]]
    );
    assert!(ChainModelSpec::from_json(&text).is_err());
}

#[test]
fn seq_more_both_ways() {
    let m = seq_more();
    let text = reference("seq_more");
    assert_eq!(m.to_keras_sequential_json().unwrap(), text);
    let read = ChainModelSpec::from_keras_sequential_json(&text).unwrap();
    assert_eq!(read, m);
    assert_eq!(ChainModelSpec::from_json(&text).unwrap(), m);
    assert_eq!(
        m.layer_names().unwrap(),
        [
            "q_einsum_dense",
            "q_unary_function_lut",
            "q_softmax",
            "flatten",
            "q_batch_norm_dense"
        ]
    );
}

#[test]
fn output_shapes() {
    let cases: [(ChainModelSpec, Vec<Vec<usize>>); 6] = [
        (
            einsum(),
            vec![vec![4, 5], vec![4, 3], vec![4, 2, 2], vec![3], vec![2]],
        ),
        (einsum_free(), vec![vec![5, 4, 6], vec![5, 4, 2]]),
        (bn_dense(), vec![vec![8], vec![4], vec![3]]),
        (
            einsum_bn(),
            vec![vec![4, 5], vec![4, 3, 2], vec![24], vec![2]],
        ),
        (
            lut(),
            vec![
                vec![8],
                vec![8],
                vec![4],
                vec![4],
                vec![4],
                vec![4],
                vec![4],
            ],
        ),
        (
            softmax(),
            vec![
                vec![4, 6],
                vec![4, 6],
                vec![4, 6],
                vec![4, 6],
                vec![24],
                vec![3],
                vec![3],
            ],
        ),
    ];
    for (m, want) in cases {
        assert_eq!(m.output_shapes().unwrap(), want, "{:?}", m.layer_names());
    }
}

#[test]
fn names_and_classes() {
    let names = einsum().layer_names().unwrap();
    assert_eq!(
        names,
        [
            "q_einsum_dense",
            "q_einsum_dense_1",
            "q_einsum_dense_2",
            "reduce",
            "q_dense"
        ]
    );
    let classes: Vec<_> = lut()
        .layers
        .iter()
        .chain(&softmax().layers)
        .chain(&bn_dense().layers)
        .chain(&einsum_bn().layers)
        .map(|l| (l.class_name().unwrap(), l.module()))
        .collect();
    assert!(classes.contains(&("QUnaryFunctionLUT", "hgq.layers.activation")));
    assert!(classes.contains(&("QSoftmax", "hgq.layers.softmax")));
    assert!(classes.contains(&("QBatchNormDense", "hgq.layers.core.dense")));
    assert!(classes.contains(&("QEinsumDenseBatchnorm", "hgq.layers.einsum_dense_batchnorm")));
}

#[test]
fn automatic_parallelization_factors() {
    let json = einsum().to_json().unwrap();
    // 4 (the free axis b), 2 (given), 4, 1 (everything summed), then QDense's 1.
    let factors: Vec<_> = json
        .match_indices(r#""parallelization_factor": "#)
        .map(|(i, m)| &json[i + m.len()..i + m.len() + 1])
        .collect();
    assert_eq!(factors, ["4", "2", "4", "1", "1"]);
    let read = ChainModelSpec::from_json(&json).unwrap();
    let LayerSpec::QEinsumDense(l) = &read.layers[0] else {
        panic!()
    };
    assert_eq!(l.parallelization_factor, -1);
    // The right-elided einsum: n_parallel is the elided axes' (4 x 6).
    assert!(reference("einsum_free").contains(r#""parallelization_factor": 24}"#));
    // QSoftmax writes its factor as given.
    assert!(reference("softmax").contains(r#""input_scaler": 1.0, "parallelization_factor": -1}"#));
}

#[test]
fn einsum_bn_drops_the_normalization_arguments() {
    // As made in Python: normalize_axes, momentum, epsilon, center, scale given.
    let python = ChainModelSpec::new([4, 6])
        .layer(
            QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d").activation(Activation::Relu),
        )
        .layer(
            QEinsumDenseBatchnormSpec::new("...c,cde->...de", [3, 2], "de")
                .normalize_axes("e")
                .momentum(0.9)
                .epsilon(1e-5)
                .center(false)
                .scale(false)
                .oq(default_q(Place::Datalane)),
        )
        .layer(FlattenSpec::new())
        .layer(QDenseSpec::new(2));
    assert_eq!(python.to_json().unwrap(), reference("einsum_bn"));
    assert_ne!(python, einsum_bn());
    let LayerSpec::QEinsumDenseBatchnorm(l) = &python.layers[1] else {
        panic!()
    };
    assert_eq!(l.effective_normalize_axes(), Some("e"));
    let n = l.norm_shapes(&[4, 5]).unwrap();
    assert_eq!(n.norm, [2]);
    assert_eq!(n.offset_cast, [2]);
    assert_eq!(n.reduction_axes, [0, 1, 2]);
    assert_eq!(n.fused_kernel_equation, "cde,e->cde");
    let LayerSpec::QEinsumDenseBatchnorm(l) = &einsum_bn().layers[1] else {
        panic!()
    };
    assert_eq!(l.effective_normalize_axes(), Some("de"));
    let n = l.norm_shapes(&[4, 5]).unwrap();
    assert_eq!(n.norm, [3, 2]);
    assert_eq!(n.reduction_axes, [0, 1]);
}

#[test]
fn einsum_shapes_of_several_equations() {
    let s = einsum_shapes("ab,bc->ac", None, &[6], &[Some(5)]).unwrap();
    assert_eq!(
        (s.kernel, s.bias, s.output, s.n_parallel),
        (vec![6, 5], None, vec![5], 1)
    );

    let s = einsum_shapes("abc,cd->abd", Some("d"), &[4, 6], &[Some(4), Some(5)]).unwrap();
    assert_eq!(
        (s.kernel, s.bias, s.output, s.n_parallel),
        (vec![6, 5], Some(vec![5]), vec![4, 5], 4)
    );

    let s = einsum_shapes("abc,cd->abd", Some("bd"), &[4, 6], &[Some(4), Some(5)]).unwrap();
    assert_eq!((s.bias, s.output), (Some(vec![4, 5]), vec![4, 5]));
    let s = einsum_shapes("abc,cd->abd", Some("b"), &[4, 6], &[Some(4), Some(5)]).unwrap();
    assert_eq!(s.bias, Some(vec![4, 1]));

    let s = einsum_shapes("...b,bc->...c", None, &[3, 4, 6], &[Some(5)]).unwrap();
    // Keras 3.15 reverses the axes under a leading `...` in its output shape.
    assert_eq!(s.keras_output, [Some(4), Some(3), Some(5)]);
    assert_eq!(
        (s.kernel, s.bias, s.output, s.n_parallel),
        (vec![6, 5], None, vec![3, 4, 5], 12)
    );
    let s = einsum_shapes("...b,bc->...c", Some("c"), &[6], &[Some(5)]).unwrap();
    assert_eq!(
        (s.bias, s.output, s.n_parallel),
        (Some(vec![5]), vec![5], 1)
    );

    let s = einsum_shapes(
        "abc,cde->abde",
        Some("de"),
        &[4, 6],
        &[Some(4), Some(5), Some(2)],
    )
    .unwrap();
    assert_eq!(
        (s.kernel, s.bias, s.output),
        (vec![6, 5, 2], Some(vec![5, 2]), vec![4, 5, 2])
    );

    // Right-elided: the bias broadcasts over the trailing axes.
    let s = einsum_shapes("ab...,bc->ac...", Some("c"), &[3, 4, 6], &[Some(5)]).unwrap();
    assert_eq!(
        (s.kernel, s.bias, s.output, s.n_parallel),
        (vec![3, 5], Some(vec![5, 1, 1]), vec![5, 4, 6], 24)
    );

    // Contractions over several axes; a kernel axis both input and output.
    let s = einsum_shapes("abc,bcd->ad", Some("d"), &[4, 6], &[Some(5)]).unwrap();
    assert_eq!(
        (s.kernel, s.output, s.n_parallel),
        (vec![4, 6, 5], vec![5], 1)
    );
    let s = einsum_shapes("abc,cb->ab", None, &[4, 6], &[Some(4)]).unwrap();
    assert_eq!((s.kernel, s.output, s.n_parallel), (vec![6, 4], vec![4], 1));
    let s = einsum_shapes("abc,d->abcd", None, &[4, 6], &[Some(4), Some(6), Some(3)]).unwrap();
    assert_eq!(
        (s.kernel, s.output, s.n_parallel),
        (vec![3], vec![4, 6, 3], 24)
    );
    // Only the axes under `...` beside the batch.
    let s = einsum_shapes("ab...,b->a...", None, &[3, 4, 6], &[]).unwrap();
    assert_eq!(
        (s.kernel, s.output, s.n_parallel),
        (vec![3], vec![4, 6], 24)
    );
    // An input axis summed away without the kernel.
    let s = einsum_shapes("abc,cd->ad", None, &[4, 6], &[Some(5)]).unwrap();
    assert_eq!((s.kernel, s.output, s.n_parallel), (vec![6, 5], vec![5], 1));
    // Upper-case letters.
    let s = einsum_shapes("aBc,cD->aBD", None, &[4, 6], &[Some(4), Some(5)]).unwrap();
    assert_eq!(s.kernel, [6, 5]);
}

#[test]
fn bad_einsum_equations() {
    let bad = |eq: &str, bias: Option<&str>, input: &[usize], out: &[Option<usize>]| {
        einsum_shapes(eq, bias, input, out)
            .err()
            .unwrap_or_else(|| panic!("{eq} was accepted"))
    };
    let eq = Some("$.config.equation");
    for e in [
        "abc,cd",
        "abc->abd",
        "abc,cd->abd,x",
        "abc,cd->abd...",
        "abc,cd->abd ",
        "...,cd->...d",
        "a...,ab->a...",
        "...bc,cd->bd",
        "abc,c1->ab",
        "a0c,cd->abd",
        "abc,cd->abdd",
        "abb,bd->abd",
        "abc,ccd->abd",
    ] {
        let err = einsum_shapes(e, None, &[4, 6], &[Some(4), Some(5)])
            .err()
            .unwrap_or_else(|| panic!("{e} was accepted"));
        assert_eq!(err.path(), eq, "{e}: {err}");
    }
    // A kernel or output letter found nowhere else.
    assert_eq!(
        bad("abc,ce->abd", None, &[4, 6], &[Some(4), Some(5)]).path(),
        eq
    );
    assert_eq!(bad("abc,cd->ab", None, &[4, 6], &[Some(4)]).path(), eq);
    // The batch axis moved, summed or in the kernel.
    assert_eq!(
        bad("abc,cd->bad", None, &[4, 6], &[None, Some(5)]).path(),
        eq
    );
    assert_eq!(bad("abc,cd->bd", None, &[4, 6], &[Some(5)]).path(), eq);
    assert_eq!(
        bad("abc,acd->abd", None, &[4, 6], &[Some(4), Some(5)]).path(),
        eq
    );
    // No output axis beside the batch.
    assert_eq!(bad("abc,bc->a", None, &[4, 6], &[]).path(), eq);
    // The input's rank.
    let input = Some("$.build_config.input_shape");
    assert_eq!(bad("ab,bc->ac", None, &[4, 6], &[Some(5)]).path(), input);
    assert_eq!(
        bad("abcd,de->abce", None, &[4, 6], &[Some(4), Some(6), Some(5)]).path(),
        input
    );
    assert_eq!(
        bad("...bcd,de->...bce", None, &[6], &[Some(4), Some(5)]).path(),
        input
    );
    // output_shape: length, a size that is not the input's, 0, None on a kernel axis.
    let out = |k: usize| format!("$.config.output_shape[{k}]");
    assert_eq!(
        bad("abc,cd->abd", None, &[4, 6], &[Some(5)]).path(),
        Some("$.config.output_shape")
    );
    assert_eq!(
        bad("abc,cd->abd", None, &[4, 6], &[Some(4), Some(5), Some(3)]).path(),
        Some("$.config.output_shape")
    );
    let e = bad("abc,cd->abd", None, &[4, 6], &[Some(3), Some(5)]);
    assert_eq!(e.path(), Some(out(0).as_str()));
    assert!(e.to_string().contains("of size 4, not 3"), "{e}");
    assert_eq!(
        bad("abc,cd->abd", None, &[4, 6], &[Some(4), Some(0)]).path(),
        Some(out(1).as_str())
    );
    assert_eq!(
        bad("abc,cd->abd", None, &[4, 6], &[Some(4), None]).path(),
        Some(out(1).as_str())
    );
    assert_eq!(
        bad("...b,bc->...c", None, &[4, 6], &[None]).path(),
        Some(out(0).as_str())
    );
    // bias_axes: not an output axis, empty, the batch, a None size.
    let bias = Some("$.config.bias_axes");
    assert_eq!(
        bad("abc,cd->abd", Some("e"), &[4, 6], &[Some(4), Some(5)]).path(),
        bias
    );
    assert_eq!(
        bad("abc,cd->abd", Some(""), &[4, 6], &[Some(4), Some(5)]).path(),
        bias
    );
    assert_eq!(
        bad("abc,cd->abd", Some("a"), &[4, 6], &[Some(4), Some(5)]).path(),
        bias
    );
    assert_eq!(
        bad("abc,cd->abd", Some("bd"), &[4, 6], &[None, Some(5)]).path(),
        Some(out(0).as_str())
    );
}

#[test]
fn einsum_norm_shapes_check_the_axes() {
    let n =
        einsum_norm_shapes("abc,cde->abde", "ed", &[4, 6], &[Some(4), Some(5), Some(2)]).unwrap();
    assert_eq!(n.normalize_axes, "de");
    assert_eq!((n.norm, n.offset_cast), (vec![5, 2], vec![5, 2]));
    assert_eq!(n.reduction_axes, [0, 1]);
    assert_eq!(n.fused_kernel_equation, "cde,de->cde");
    let n = einsum_norm_shapes("ab...,bc->ac...", "c", &[3, 4, 6], &[Some(5)]).unwrap();
    assert_eq!((n.norm, n.offset_cast), (vec![5], vec![5, 1, 1]));
    assert_eq!(n.reduction_axes, [0, 2, 3]);
    for bad in ["b", "x", ""] {
        let e = einsum_norm_shapes("abc,cd->abd", bad, &[4, 6], &[Some(4), Some(5)]).unwrap_err();
        assert_eq!(e.path(), Some("$.config.normalize_axes"), "{bad}: {e}");
    }
}

/// The error of `spec.to_json()` for a chain on `input` of one layer.
fn layer_err(input: &[usize], layer: impl Into<LayerSpec>) -> ConfigError {
    ChainModelSpec::new(input)
        .layer(layer)
        .to_json()
        .expect_err("accepted")
}

fn assert_at(e: &ConfigError, path: &str) {
    assert_eq!(e.path(), Some(path), "{e}");
    let key = path.rsplit('.').next().unwrap();
    let key = key.split('[').next().unwrap();
    assert!(e.to_string().contains(key), "{e}");
}

#[test]
fn errors_name_the_key() {
    let at = "$.config.layers[1].config";
    // A bad equation, a bias axis that is not an output axis.
    let e = layer_err(&[4, 6], QEinsumDenseSpec::new("abc,ce->abd", [4, 5]));
    assert_at(&e, &format!("{at}.equation"));
    let e = layer_err(
        &[4, 6],
        QEinsumDenseSpec::new("abc,cd->abd", [4, 5]).bias_axes("x"),
    );
    assert_at(&e, &format!("{at}.bias_axes"));
    let e = layer_err(&[4], QEinsumDenseSpec::new("abc,cd->abd", [4, 5]));
    assert_at(&e, "$.config.layers[1].build_config.input_shape");
    // EBOPs without an input quantizer.
    let e = layer_err(
        &[4, 6],
        QEinsumDenseSpec::new("abc,cd->abd", [4, 5])
            .iq(None)
            .enable_ebops(true),
    );
    assert_at(&e, &format!("{at}.enable_ebops"));

    // A normalized axis that is not a kernel axis; a bias axis that is not one (hgq2 loads
    // the layer with normalize_axes = bias_axes); no bias.
    let e = layer_err(
        &[4, 6],
        QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "bd").normalize_axes("b"),
    );
    assert_at(&e, &format!("{at}.normalize_axes"));
    assert!(e.to_string().contains("kernel axes `cd`"), "{e}");
    let e = layer_err(
        &[4, 6],
        QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "bd").normalize_axes("d"),
    );
    assert_at(&e, &format!("{at}.bias_axes"));
    let e = layer_err(
        &[4, 6],
        QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d").normalize_axes("e"),
    );
    assert_at(&e, &format!("{at}.normalize_axes"));
    let mut no_bias = QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d");
    no_bias.dense.bias_axes = None;
    assert_at(&layer_err(&[4, 6], no_bias), &format!("{at}.bias_axes"));

    // softmax / log_softmax in a LUT.
    for a in [Activation::Softmax, Activation::LogSoftmax] {
        let e = layer_err(&[4], QUnaryFunctionLUTSpec::new(a));
        assert_at(&e, &format!("{at}.activation"));
    }
    // A dummy input quantizer hgq2 would add keys to.
    let mut l = QUnaryFunctionLUTSpec::new(Activation::Tanh).allow_heterogeneous_input(false);
    l.iq = Some(QuantizerConfig::dummy());
    assert_at(&layer_err(&[4], l), &format!("{at}.iq_conf"));

    // Units of 0 in a QBatchNormDense, no bias.
    assert_at(
        &layer_err(&[4], QBatchNormDenseSpec::new(0)),
        &format!("{at}.units"),
    );
    let mut l = QBatchNormDenseSpec::new(3);
    l.dense.use_bias = false;
    assert_at(&layer_err(&[4], l), &format!("{at}.use_bias"));

    // QSoftmax axes: out of range, the batch, twice; a float table output.
    let e = layer_err(&[4, 6], QSoftmaxSpec::new().axis(3));
    assert_at(&e, &format!("{at}.axes[0]"));
    let e = layer_err(&[4, 6], QSoftmaxSpec::new().axes([1, -3]));
    assert_at(&e, &format!("{at}.axes[1]"));
    let e = layer_err(&[4, 6], QSoftmaxSpec::new().axes([2, -1]));
    assert_at(&e, &format!("{at}.axes"));
    let e = layer_err(&[4, 6], QSoftmaxSpec::new().axes([]));
    assert_at(&e, &format!("{at}.axes"));
    let float = QuantizerConfig::builder(QType::Float, Place::Table)
        .build()
        .unwrap();
    let e = layer_err(&[4, 6], QSoftmaxSpec::new().exp_oq(float));
    assert_at(&e, &format!("{at}.exp_oq_conf"));
}

#[test]
fn unknown_sizes_only_on_outputs() {
    // A None size feeding another layer, or with an output quantizer.
    let free = QEinsumDenseSpec::new("abc,cd->abd", [None, Some(5)]);
    let m = ChainModelSpec::new([4, 6]).layer(free.clone());
    assert_eq!(m.output_shapes().unwrap(), [vec![4, 5]]);
    m.to_json().unwrap();
    let e = m.clone().layer(QDenseSpec::new(2)).to_json().unwrap_err();
    assert_at(&e, "$.config.layers[1].config.output_shape[0]");
    let e = ChainModelSpec::new([4, 6])
        .layer(free.clone().oq(default_q(Place::Datalane)))
        .to_json()
        .unwrap_err();
    assert_at(&e, "$.config.layers[1].config.output_shape[0]");
    let g = GraphModelSpec::new()
        .input("x", [4, 6])
        .node(free, ["x"])
        .node(QSoftmaxSpec::new(), ["q_einsum_dense"])
        .output("q_softmax");
    assert_at(
        &g.to_json().unwrap_err(),
        "$.config.layers[1].config.output_shape[0]",
    );
}

#[test]
fn keras_reversed_ellipsis_only_on_outputs() {
    // Keras gives `...b,bc->...c` on (batch, 3, 4, 6) the output shape (batch, 4, 3, 5):
    // a layer after it would be built for that.
    let e = QEinsumDenseSpec::new("...b,bc->...c", [5]);
    let m = ChainModelSpec::new([3, 4, 6]).layer(e.clone());
    assert_eq!(m.output_shapes().unwrap(), [vec![3, 4, 5]]);
    m.to_json().unwrap();
    let err = m.clone().layer(QDenseSpec::new(2)).to_json().unwrap_err();
    assert_at(&err, "$.config.layers[1].config.equation");
    assert!(err.to_string().contains("[4, 3, 5]"), "{err}");
    let err = ChainModelSpec::new([3, 4, 6])
        .layer(e.clone().oq(default_q(Place::Datalane)))
        .to_json()
        .unwrap_err();
    assert_at(&err, "$.config.layers[1].config.equation");
    // Equal sizes reversed are the same shape.
    ChainModelSpec::new([4, 4, 6])
        .layer(e.clone())
        .layer(QDenseSpec::new(2))
        .to_json()
        .unwrap();
    // One axis under `...` beside the batch is not reversed.
    ChainModelSpec::new([4, 6])
        .layer(e)
        .layer(QDenseSpec::new(2))
        .to_json()
        .unwrap();
}

#[test]
fn reading_refuses_what_is_not_described() {
    let text = reference("bn_dense");
    // Non-default initializers, regularizer, constraint of the normalization.
    let edits = [
        (
            r#""bn_gamma_initializer": {"module": "keras.initializers", "class_name": "Ones""#,
            r#""bn_gamma_initializer": {"module": "keras.initializers", "class_name": "Zeros""#,
            "bn_gamma_initializer",
        ),
        (
            r#""moving_mean_initializer": {"module": "keras.initializers", "class_name": "Zeros""#,
            r#""moving_mean_initializer": {"module": "keras.initializers", "class_name": "Ones""#,
            "moving_mean_initializer",
        ),
        (
            r#""moving_variance_initializer": {"module": "keras.initializers", "class_name": "Ones""#,
            r#""moving_variance_initializer": {"module": "keras.initializers", "class_name": "Zeros""#,
            "moving_variance_initializer",
        ),
        (
            r#""bn_gamma_regularizer": null"#,
            r#""bn_gamma_regularizer": 1"#,
            "bn_gamma_regularizer",
        ),
        (
            r#""bn_gamma_constraint": null"#,
            r#""bn_gamma_constraint": 1"#,
            "bn_gamma_constraint",
        ),
        (r#""epsilon": 0.001"#, r#""epsilon": 1"#, "epsilon"),
        (r#""use_bias": true"#, r#""use_bias": false"#, "use_bias"),
        (r#""units": 8"#, r#""units": 0"#, "units"),
    ];
    for (from, to, key) in edits {
        assert!(text.contains(from), "{from}");
        let e = ChainModelSpec::from_json(&text.replacen(from, to, 1)).unwrap_err();
        assert_at(&e, &format!("$.config.layers[1].config.{key}"));
    }

    let text = reference("softmax");
    let e = ChainModelSpec::from_json(&text.replacen(
        r#""input_scaler": 1.0"#,
        r#""input_scaler": 1"#,
        1,
    ))
    .unwrap_err();
    assert_at(&e, "$.config.layers[2].config.input_scaler");
    // A table output quantizer hgq2 would have changed.
    let e = ChainModelSpec::from_json(&text.replacen(
        r#""round_mode": "RND_CONV""#,
        r#""round_mode": "RND""#,
        1,
    ))
    .unwrap_err();
    assert_eq!(
        e.path(),
        Some("$.config.layers[2].config.exp_oq_conf.config.round_mode"),
        "{e}"
    );
    let e = ChainModelSpec::from_json(&text.replacen(r#""axes": [2]"#, r#""axes": [0]"#, 1))
        .unwrap_err();
    assert_at(&e, "$.config.layers[2].config.axes[0]");

    let text = reference("lut");
    let e = ChainModelSpec::from_json(&text.replacen(
        r#""activation": "tanh""#,
        r#""activation": "softmax""#,
        1,
    ))
    .unwrap_err();
    assert_at(&e, "$.config.layers[2].config.activation");

    let text = reference("einsum");
    let e = ChainModelSpec::from_json(&text.replacen(
        r#""equation": "abc,cd->abd""#,
        r#""equation": "abc,cd->abx""#,
        1,
    ))
    .unwrap_err();
    assert_at(&e, "$.config.layers[1].config.equation");
    let e = ChainModelSpec::from_json(&text.replacen(
        r#""output_shape": [4, 5]"#,
        r#""output_shape": [4, 0]"#,
        1,
    ))
    .unwrap_err();
    assert_at(&e, "$.config.layers[1].config.output_shape[1]");
}

#[test]
fn forced_table_configs() {
    // QSoftmax's table outputs: k0 = 0 (the int), SAT, RND_CONV; its table inputs one bit
    // width per element without allow_heterogeneous_table.
    let s = QSoftmaxSpec::new().exp_oq(kif(Place::Table, 1, 7));
    let Params::Kif(p) = &s.exp_oq.params else {
        panic!()
    };
    assert_eq!(p.k0, InitValue::Int(0));
    assert_eq!(
        (p.round_mode, p.overflow_mode),
        (RoundMode::RndConv, OverflowMode::Sat)
    );
    let common = s.exp_iq.params.common().unwrap();
    assert_eq!(
        (&common.homogeneous_axis, &common.heterogeneous_axis),
        (&None, &Some(vec![]))
    );
    // allow_heterogeneous_table(true) gives the default table inputs back.
    let h = QSoftmaxSpec::new().allow_heterogeneous_table(true);
    assert_eq!(h.exp_iq, default_q(Place::Datalane));
    assert_eq!(h.inv_iq, default_q(Place::Datalane));

    // Fields set directly are changed when written.
    let mut raw = QSoftmaxSpec::new();
    raw.inv_oq = default_q(Place::Table);
    let m = ChainModelSpec::new([4]).layer(raw.clone());
    assert_eq!(
        m.to_json().unwrap(),
        ChainModelSpec::new([4])
            .layer(QSoftmaxSpec::new())
            .to_json()
            .unwrap()
    );
    assert_eq!(raw.with_forced_configs().unwrap(), QSoftmaxSpec::new());

    // The LUT's override_oq_k0_to_0 writes k0 = false (the bool).
    let l = QUnaryFunctionLUTSpec::new(Activation::Tanh).override_oq_k0_to_0();
    let Params::Kbi(p) = &l.oq.as_ref().unwrap().params else {
        panic!()
    };
    assert_eq!(p.k0, InitValue::Bool(false));
    let mut raw = QUnaryFunctionLUTSpec::new(Activation::Tanh);
    raw.allow_heterogeneous_input = false;
    let forced = raw.clone().with_forced_configs().unwrap();
    assert_eq!(
        forced,
        QUnaryFunctionLUTSpec::new(Activation::Tanh).allow_heterogeneous_input(false)
    );
    assert_eq!(
        QUnaryFunctionLUTSpec::new(Activation::Tanh)
            .allow_heterogeneous_input(false)
            .allow_heterogeneous_input(true),
        QUnaryFunctionLUTSpec::new(Activation::Tanh)
    );
}

#[test]
fn quantizers_of_the_new_layers() {
    let km = softmax().to_keras_model().unwrap();
    let keys: Vec<_> = km
        .quantizers
        .iter()
        .filter(|q| q.layer_path() == "functional/col_softmax")
        .map(|q| q.key.as_str())
        .collect();
    // Not stable: no exp_iq_conf.
    assert_eq!(
        keys,
        ["iq_conf", "exp_oq_conf", "inv_oq_conf", "inv_iq_conf"]
    );
    assert_eq!(km.to_json(), reference("softmax"));
    let km = einsum().to_keras_model().unwrap();
    assert_eq!(km.quantizers[0].layer_path(), "functional/q_einsum_dense");
    assert_eq!(
        km.quantizers
            .iter()
            .map(|q| q.key.as_str())
            .take(3)
            .collect::<Vec<_>>(),
        ["iq_conf", "kq_conf", "bq_conf"]
    );
}
