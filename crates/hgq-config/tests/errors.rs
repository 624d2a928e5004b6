//! Bad input gives a `ConfigError` naming the JSON path, never a panic.
mod common;
use hgq_config::{
    ConfigError, Constraint, KerasModel, Place, QType, QuantizerConfig, QuantizerLayer,
};
use hgq_core::OverflowMode;
use rstest::rstest;

fn kbi_weight() -> String {
    common::json_of("config/kbi/weight")
}

fn err_of(json: &str) -> ConfigError {
    QuantizerConfig::from_json(json).expect_err("should be refused")
}

#[rstest]
#[case::wrong_type(
    r#""min_value": 0.0"#,
    r#""min_value": "0""#,
    "$.config.bc.config.min_value"
)]
#[case::bool_not_number(
    r#""min_value": 0.0"#,
    r#""min_value": true"#,
    "$.config.bc.config.min_value"
)]
#[case::unknown_constraint(r#""class_name": "MinMax""#, r#""class_name": "Clip""#, "$.config.bc")]
#[case::unknown_regularizer(r#""class_name": "MonoL1""#, r#""class_name": "L3""#, "$.config.br")]
#[case::wrong_module(
    r#""module": "hgq.constraints""#,
    r#""module": "keras.constraints""#,
    "$.config.bc"
)]
#[case::missing_key(r#""b0": 8, "#, "", "$.config")]
#[case::unknown_key(r#""b0": 8, "#, r#""b0": 8, "f0": 3, "#, "$.config")]
#[case::bad_round_mode(
    r#""round_mode": "RND""#,
    r#""round_mode": "ROUND""#,
    "$.config.round_mode"
)]
#[case::bad_overflow(
    r#""overflow_mode": "SAT_SYM""#,
    r#""overflow_mode": 3"#,
    "$.config.overflow_mode"
)]
#[case::k0_range(r#""k0": true"#, r#""k0": 2"#, "$.config.k0")]
#[case::k0_type(r#""k0": true"#, r#""k0": null"#, "$.config.k0")]
#[case::qnoise_range(
    r#""qnoise_factor": null"#,
    r#""qnoise_factor": 1.5"#,
    "$.config.qnoise_factor"
)]
#[case::scaler_zero(r#""scaler": null"#, r#""scaler": 0"#, "$.config.scaler")]
#[case::affine_len(r#""affine": null"#, r#""affine": [1.0]"#, "$.config.affine")]
#[case::affine_zero(r#""affine": null"#, r#""affine": [0.0, 1.0]"#, "$.config.affine[0]")]
#[case::axes_type(
    r#""homogeneous_axis": []"#,
    r#""homogeneous_axis": [0.5]"#,
    "$.config.homogeneous_axis[0]"
)]
#[case::q_type(r#""q_type": "kbi""#, r#""q_type": "int""#, "$.config.q_type")]
#[case::place(r#""place": "weight""#, r#""place": "kernel""#, "$.config.place")]
#[case::class(
    r#""class_name": "QuantizerConfig""#,
    r#""class_name": "QConfig""#,
    "$"
)]
#[case::registered(
    r#""registered_name": "hgq>QuantizerConfig""#,
    r#""registered_name": null"#,
    "$"
)]
#[case::mapper(r#""bw_mapper": null"#, r#""bw_mapper": {"module": "hgq.quantizer.internal.base", "class_name": "DefaultBitwidthMapper", "config": {"heterogeneous_axis": null, "homogeneous_axis": null, "_shape_inferenced": false}, "registered_name": "hgq>DefaultBitwidthMapper"}"#, "$.config.bw_mapper.config.heterogeneous_axis")]
fn refused_with_path(#[case] from: &str, #[case] to: &str, #[case] path: &str) {
    let json = kbi_weight();
    assert!(json.contains(from), "{from}");
    let e = err_of(&json.replacen(from, to, 1));
    assert_eq!(e.path(), Some(path), "{e}");
}

#[test]
fn syntax_errors() {
    let json = kbi_weight();
    for bad in [&json[..json.len() - 1], "", "{\"a\": Inf}", "[NaN, ]"] {
        assert!(matches!(err_of(bad), ConfigError::Syntax { .. }), "{bad}");
    }
    // A dict where a dict is needed, at the root.
    assert_eq!(err_of("[]").path(), Some("$"));
}

#[test]
fn hard_tanh_refuses_fixed_keys() {
    let json = common::json_of("config/hardtanh");
    let with_k0 = json.replacen(r#""f0": 6"#, r#""k0": true, "f0": 6"#, 1);
    let e = err_of(&with_k0);
    assert!(
        matches!(&e, ConfigError::UnknownKey { key, .. } if key == "k0"),
        "{e}"
    );
    for b in [
        QuantizerConfig::hard_tanh(false).k0(1),
        QuantizerConfig::hard_tanh(false).ic(Constraint::Constant(2.0)),
        QuantizerConfig::hard_tanh(false).overflow_mode(OverflowMode::Wrap),
        QuantizerConfig::hard_sigmoid().affine(1.0, 0.0),
        QuantizerConfig::hard_tanh(false).q_type(QType::Float),
    ] {
        assert!(b.build().is_err());
    }
    // i0 is dropped, as the reference pops it.
    let c = QuantizerConfig::hard_tanh(false).i0(5).build().unwrap();
    assert_eq!(c, QuantizerConfig::hard_tanh(false).build().unwrap());
}

#[test]
fn builder_rules() {
    let b = || QuantizerConfig::builder(QType::Float, Place::Weight);
    assert!(matches!(
        b().b0(3).build(),
        Err(ConfigError::Override { key, .. }) if key == "b0"
    ));
    assert!(
        b().homogeneous_axis([0])
            .heterogeneous_axis([1])
            .build()
            .is_err()
    );
    assert!(b().scaler(0.0).build().is_err());
    assert!(b().qnoise_factor(-0.1).build().is_err());
    assert!(b().affine(0.0, 1.0).build().is_err());
    assert!(
        QuantizerConfig::builder(QType::Dummy, Place::Datalane)
            .b0(3)
            .build()
            .is_err()
    );
    // Giving one axis list clears the other.
    let c = QuantizerConfig::builder(QType::Float, Place::Bias)
        .heterogeneous_axis([1])
        .build()
        .unwrap();
    let common = c.params.common().unwrap();
    assert_eq!(common.homogeneous_axis, None);
    assert_eq!(common.heterogeneous_axis, Some(vec![1]));
}

#[test]
fn errors_in_a_model_name_the_full_path() {
    let json = common::json_of("model/qdense_mlp");
    let bad = json.replacen(r#""l1": 1e-08"#, r#""l1": "x""#, 1);
    let e = KerasModel::from_json(&bad).unwrap_err();
    assert_eq!(
        e.path(),
        Some("$.config.layers[1].config.iq_conf.config.ir.config.l1")
    );
}

#[test]
fn layer_errors() {
    let json = common::json_of("layer/quantizer_kbi_weight");
    let bad = json.replacen(r#""input_shape": [8, 4]"#, r#""input_shape": [8, "4"]"#, 1);
    let e = QuantizerLayer::from_json(&bad).unwrap_err();
    assert_eq!(e.path(), Some("$.build_config.input_shape[1]"));
    let bad = json.replacen(r#""name": "float32""#, r#""name": 32"#, 1);
    let e = QuantizerLayer::from_json(&bad).unwrap_err();
    assert_eq!(e.path(), Some("$.config.dtype.config.name"));
}
