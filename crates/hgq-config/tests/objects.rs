//! Constraints, regularizers, initializers and mappers round-trip inside a configuration;
//! quantizers are found in whole models, including `Quantizer` layers.
mod common;
use hgq_config::{
    BitwidthMapperConfig, ConfigError, Constraint, InitValue, Initializer, KerasModel, Num, Place,
    QType, QuantizerConfig, Regularizer,
};
use hgq_core::mapper::Axes;
use rstest::rstest;

#[rstest]
#[case(Constraint::MinMax { min_value: -1.5, max_value: 1e20 })]
#[case(Constraint::Min(-1.0))]
#[case(Constraint::Max(8.0))]
#[case(Constraint::Constant(0.0))]
#[case(Constraint::NonNeg)]
fn constraints_round_trip(#[case] c: Constraint) {
    let q = QuantizerConfig::builder(QType::Float, Place::Datalane)
        .mc(c)
        .ec(None)
        .build()
        .unwrap();
    let json = q.to_json();
    assert!(json.contains(r#""ec": null"#));
    let back = QuantizerConfig::from_json(&json).unwrap();
    assert_eq!(back, q);
    assert_eq!(back.to_json(), json);
}

#[rstest]
#[case(Regularizer::MonoL1(1e-8), r#""l1": 1e-08"#)]
#[case(Regularizer::L1(0.01), r#""module": "keras.regularizers", "class_name": "L1", "config": {"l1": 0.01}, "registered_name": null"#)]
#[case(Regularizer::L2(2.5e-5), r#""l2": 2.5e-05"#)]
#[case(Regularizer::L1L2 { l1: 0.0, l2: 1.0 }, r#"{"l1": 0.0, "l2": 1.0}"#)]
fn regularizers_round_trip(#[case] r: Regularizer, #[case] text: &str) {
    let q = QuantizerConfig::builder(QType::Kbi, Place::Bias)
        .ir(r)
        .build()
        .unwrap();
    let json = q.to_json();
    assert!(json.contains(text), "{json}");
    let back = QuantizerConfig::from_json(&json).unwrap();
    assert_eq!(back, q);
    assert_eq!(back.to_json(), json);
}

#[test]
fn initializers_as_initial_values() {
    let q = QuantizerConfig::builder(QType::Kif, Place::Weight)
        .k0(Initializer::Ones)
        .i0(Initializer::Constant(Num::Int(3)))
        .f0(Initializer::Constant(Num::Float(4.5)))
        .i_decay_speed(Initializer::Zeros)
        .build()
        .unwrap();
    let json = q.to_json();
    assert!(json.contains(
        r#""i0": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 3}, "registered_name": null}"#
    ));
    assert!(json.contains(r#""f0": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 4.5}"#));
    let back = QuantizerConfig::from_json(&json).unwrap();
    assert_eq!(back, q);
    assert_eq!(back.to_json(), json);
    let hgq_config::Params::Kif(p) = &back.params else {
        panic!()
    };
    assert_eq!(
        p.f0,
        InitValue::Initializer(Initializer::Constant(Num::Float(4.5)))
    );
    assert_eq!(p.f0.as_f64(), 4.5);
    assert_eq!(p.k0.as_f64(), 1.0);
}

#[test]
fn explicit_mapper() {
    let mut m = BitwidthMapperConfig::new(Axes::Heterogeneous(vec![-1])).unwrap();
    let q = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .bw_mapper(m.clone())
        .build()
        .unwrap();
    let json = q.to_json();
    assert!(json.contains(r#""bw_mapper": {"module": "hgq.quantizer.internal.base", "class_name": "DefaultBitwidthMapper", "config": {"heterogeneous_axis": [-1], "homogeneous_axis": null, "_shape_inferenced": false}"#));
    assert_eq!(QuantizerConfig::from_json(&json).unwrap(), q);
    m.infer(2).unwrap();
    assert_eq!(m.heterogeneous_axis, Some(vec![1]));
    assert_eq!(m.homogeneous_axis, Some(vec![0]));
    let r = BitwidthMapperConfig::new(Axes::Homogeneous(vec![3]))
        .unwrap()
        .infer(2);
    assert!(
        matches!(&r, Err(ConfigError::Value { msg, .. }) if msg.contains("invalid axis 3")),
        "{r:?}"
    );
}

#[test]
fn quantizer_layers_inside_a_model_and_keras_file_config() {
    let layer = common::json_of("layer/quantizer_kbi_weight");
    let dense = common::json_of("model/qdense_mlp");
    // A Functional-style document as in a `.keras` file's config.json, holding a Quantizer
    // layer next to the whole Sequential model.
    let text = format!(
        r#"{{"module": "keras", "class_name": "Functional", "config": {{"name": "outer", "trainable": true, "layers": [{layer}, {dense}]}}, "registered_name": null, "build_config": {{"input_shape": null}}, "compile_config": {{"optimizer": "adam", "loss": "mse", "metrics": null}}}}"#
    );
    let m = KerasModel::from_json(&text).unwrap();
    let paths: Vec<String> = m
        .quantizers
        .iter()
        .map(|f| format!("{} {}", f.layer_path(), f.key))
        .collect();
    assert_eq!(
        paths,
        [
            "outer/quantizer config",
            "outer/sequential/q_dense iq_conf",
            "outer/sequential/q_dense kq_conf",
            "outer/sequential/q_dense bq_conf",
            "outer/sequential/q_dense_1 iq_conf",
            "outer/sequential/q_dense_1 kq_conf",
            "outer/sequential/q_dense_1 bq_conf",
        ]
    );
    assert_eq!(
        m.quantizers[0].json_path(),
        "$.config.layers[0].config.config"
    );
    assert_eq!(
        m.quantizers[6].json_path(),
        "$.config.layers[1].config.layers[2].config.bq_conf"
    );
    assert_eq!(m.to_json(), text);

    // Edits are written back.
    let mut m = m;
    m.quantizers[0].config = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(4)
        .build()
        .unwrap();
    let edited = m.to_json();
    assert!(edited.contains(r#""b0": 4"#));
    assert_eq!(
        KerasModel::from_json(&edited).unwrap().quantizers[0].config,
        m.quantizers[0].config
    );
}
