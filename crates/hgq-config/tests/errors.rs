//! Bad input gives a `ConfigError` naming the JSON path, never a panic.
mod common;
use hgq_config::{
    ConfigError, Constraint, KerasModel, Place, QType, QuantizerConfig, QuantizerLayer, Regularizer,
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
    for (b, want) in [
        (QuantizerConfig::hard_tanh(false).k0(1), "k0"),
        (
            QuantizerConfig::hard_tanh(false).ic(Constraint::Constant(2.0)),
            "ic",
        ),
        (
            QuantizerConfig::hard_tanh(false).overflow_mode(OverflowMode::Wrap),
            "overflow_mode",
        ),
        (QuantizerConfig::hard_sigmoid().affine(1.0, 0.0), "affine"),
        // The k0 the flavor fixes is no parameter of a float quantizer.
        (QuantizerConfig::hard_tanh(false).q_type(QType::Float), "k0"),
    ] {
        let r = b.build();
        assert!(
            matches!(&r, Err(ConfigError::Override { key, .. }) if key == want),
            "{want}: {r:?}"
        );
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
    for (r, want) in [
        (
            b().homogeneous_axis([0]).heterogeneous_axis([1]).build(),
            "homogeneous_axis",
        ),
        (b().scaler(0.0).build(), "scaler"),
        (b().qnoise_factor(-0.1).build(), "qnoise_factor"),
        (b().affine(0.0, 1.0).build(), "affine"),
        (
            QuantizerConfig::builder(QType::Dummy, Place::Datalane)
                .b0(3)
                .build(),
            "b0",
        ),
    ] {
        assert!(
            matches!(&r, Err(ConfigError::Override { key, .. }) if key == want),
            "{want}: {r:?}"
        );
    }
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

/// The default `bc` and `br` envelopes of `config/kbi/weight`, as written.
fn envelope_of(key: &str) -> String {
    match key {
        "bc" => Constraint::MinMax {
            min_value: 0.0,
            max_value: 23.0,
        }
        .to_value()
        .to_json(),
        "br" => Regularizer::MonoL1(1e-8).to_value().to_json(),
        k => k.to_string(),
    }
}

/// Values that mean nothing are refused when the JSON is read, naming where they are.
/// `from` is replaced by `to` in `config/kbi/weight` (`bc` / `br`: their whole envelope).
#[rstest]
#[case::decay_nan(
    r#""i_decay_speed": Infinity"#,
    r#""i_decay_speed": NaN"#,
    "$.config.i_decay_speed"
)]
#[case::decay_nan_initializer(
    r#""i_decay_speed": Infinity"#,
    r#""i_decay_speed": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": NaN}, "registered_name": null}"#,
    "$.config.i_decay_speed.config.value"
)]
#[case::scaler_nan(r#""scaler": null"#, r#""scaler": NaN"#, "$.config.scaler")]
#[case::scaler_inf(r#""scaler": null"#, r#""scaler": Infinity"#, "$.config.scaler")]
#[case::scaler_neg_inf(r#""scaler": null"#, r#""scaler": -Infinity"#, "$.config.scaler")]
#[case::scaler_zero_float(r#""scaler": null"#, r#""scaler": -0.0"#, "$.config.scaler")]
#[case::qnoise_nan(
    r#""qnoise_factor": null"#,
    r#""qnoise_factor": NaN"#,
    "$.config.qnoise_factor"
)]
#[case::qnoise_negative(
    r#""qnoise_factor": null"#,
    r#""qnoise_factor": -0.5"#,
    "$.config.qnoise_factor"
)]
#[case::qnoise_inf(
    r#""qnoise_factor": null"#,
    r#""qnoise_factor": Infinity"#,
    "$.config.qnoise_factor"
)]
#[case::affine_scale_inf(
    r#""affine": null"#,
    r#""affine": [Infinity, 0.0]"#,
    "$.config.affine[0]"
)]
#[case::affine_scale_nan(r#""affine": null"#, r#""affine": [NaN, 0.0]"#, "$.config.affine[0]")]
#[case::affine_shift_nan(r#""affine": null"#, r#""affine": [1.0, NaN]"#, "$.config.affine[1]")]
#[case::affine_shift_inf(
    r#""affine": null"#,
    r#""affine": [1.0, -Infinity]"#,
    "$.config.affine[1]"
)]
#[case::minmax_min_nan(
    r#""min_value": 0.0"#,
    r#""min_value": NaN"#,
    "$.config.bc.config.min_value"
)]
#[case::minmax_max_nan(
    r#""max_value": 23.0"#,
    r#""max_value": NaN"#,
    "$.config.bc.config.max_value"
)]
#[case::min_nan("bc", Constraint::Min(f64::NAN).to_value().to_json(), "$.config.bc.config.min_value")]
#[case::max_nan("bc", Constraint::Max(f64::NAN).to_value().to_json(), "$.config.bc.config.max_value")]
#[case::constant_nan("bc", Constraint::Constant(f64::NAN).to_value().to_json(), "$.config.bc.config.value")]
#[case::constant_inf("bc", Constraint::Constant(f64::INFINITY).to_value().to_json(), "$.config.bc.config.value")]
#[case::l1_nan(r#""l1": 1e-08"#, r#""l1": NaN"#, "$.config.br.config.l1")]
#[case::l1_inf(r#""l1": 1e-08"#, r#""l1": Infinity"#, "$.config.br.config.l1")]
#[case::l1_neg_inf(r#""l1": 1e-08"#, r#""l1": -Infinity"#, "$.config.br.config.l1")]
#[case::l2_inf("br", Regularizer::L2(f64::INFINITY).to_value().to_json(), "$.config.br.config.l2")]
#[case::l1l2_nan(
    "br",
    Regularizer::L1L2 { l1: 0.0, l2: f64::NAN }.to_value().to_json(),
    "$.config.br.config.l2"
)]
#[case::k0_two(r#""k0": true"#, r#""k0": 2"#, "$.config.k0")]
#[case::k0_half(r#""k0": true"#, r#""k0": 0.5"#, "$.config.k0")]
#[case::k0_nan(r#""k0": true"#, r#""k0": NaN"#, "$.config.k0")]
#[case::k0_initializer(
    r#""k0": true"#,
    r#""k0": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 2}, "registered_name": null}"#,
    "$.config.k0.config.value"
)]
#[case::b0_nan(r#""b0": 8"#, r#""b0": NaN"#, "$.config.b0")]
#[case::i0_nan(r#""i0": 2"#, r#""i0": NaN"#, "$.config.i0")]
#[case::b0_nan_initializer(
    r#""b0": 8"#,
    r#""b0": {"module": "keras.initializers", "class_name": "Constant", "config": {"value": NaN}, "registered_name": null}"#,
    "$.config.b0.config.value"
)]
fn meaningless_values_refused_at_load(
    #[case] from: &str,
    #[case] to: impl AsRef<str>,
    #[case] path: &str,
) {
    let json = kbi_weight();
    let from = envelope_of(from);
    assert!(json.contains(&from), "{from}");
    let e = err_of(&json.replacen(&from, to.as_ref(), 1));
    assert!(matches!(e, ConfigError::Value { .. }), "{e}");
    assert_eq!(e.path(), Some(path), "{e}");
}

#[rstest]
#[case::kif_f0("config/kif/datalane", r#""f0": 6"#, r#""f0": NaN"#, "$.config.f0")]
#[case::kif_decay(
    "config/kif/datalane",
    r#""i_decay_speed": 0.01"#,
    r#""i_decay_speed": NaN"#,
    "$.config.i_decay_speed"
)]
#[case::float_m0("config/float/weight", r#""m0": 2"#, r#""m0": NaN"#, "$.config.m0")]
#[case::float_e0("config/float/weight", r#""e0": 4"#, r#""e0": NaN"#, "$.config.e0")]
#[case::float_e00("config/float/weight", r#""e00": 0"#, r#""e00": NaN"#, "$.config.e00")]
#[case::float_reg(
    "config/float/weight",
    r#""l1": 1e-08"#,
    r#""l1": NaN"#,
    "$.config.mr.config.l1"
)]
#[case::hardtanh_decay(
    "config/hardtanh",
    r#""i_decay_speed": 0.01"#,
    r#""i_decay_speed": NaN"#,
    "$.config.i_decay_speed"
)]
#[case::hardtanh_scaler(
    "config/hardtanh",
    r#""scaler": null"#,
    r#""scaler": Infinity"#,
    "$.config.scaler"
)]
fn meaningless_values_in_other_types(
    #[case] case: &str,
    #[case] from: &str,
    #[case] to: &str,
    #[case] path: &str,
) {
    let json = common::json_of(case);
    assert!(json.contains(from), "{from}");
    let e = err_of(&json.replacen(from, to, 1));
    assert!(matches!(e, ConfigError::Value { .. }), "{e}");
    assert_eq!(e.path(), Some(path), "{e}");
}

#[test]
fn meaningless_values_in_a_model_name_the_full_path() {
    let json = common::json_of("model/qdense_mlp");
    // The first `Infinity` is the first layer's kernel quantizer's decay.
    let bad = json.replacen(r#""i_decay_speed": Infinity"#, r#""i_decay_speed": NaN"#, 1);
    let e = KerasModel::from_json(&bad).unwrap_err();
    assert_eq!(
        e.path(),
        Some("$.config.layers[1].config.kq_conf.config.i_decay_speed"),
        "{e}"
    );
    let bad = json.replacen(r#""scaler": null"#, r#""scaler": NaN"#, 1);
    let e = KerasModel::from_json(&bad).unwrap_err();
    assert_eq!(
        e.path(),
        Some("$.config.layers[1].config.iq_conf.config.scaler"),
        "{e}"
    );
    let dense = hgq_config::DenseModelSpec::demo().to_json().unwrap();
    let bad = dense.replacen(
        r#""min_value": 0.0, "max_value": 23.0"#,
        r#""min_value": 0.0, "max_value": NaN"#,
        1,
    );
    let e = hgq_config::DenseModelSpec::from_json(&bad).unwrap_err();
    assert_eq!(
        e.path(),
        Some("$.config.layers[1].config.kq_conf.config.bc.config.max_value"),
        "{e}"
    );
}

#[test]
fn meaningful_non_finite_values_are_read() {
    let json = kbi_weight();
    // A negative decay turns tracing on in inference; an infinite one is the weights'
    // default; constraints may be open on one side.
    for (from, to) in [
        (r#""i_decay_speed": Infinity"#, r#""i_decay_speed": -0.5"#),
        (
            r#""i_decay_speed": Infinity"#,
            r#""i_decay_speed": -Infinity"#,
        ),
        (r#""max_value": 23.0"#, r#""max_value": Infinity"#),
        (r#""min_value": 0.0"#, r#""min_value": -Infinity"#),
        (r#""qnoise_factor": null"#, r#""qnoise_factor": 0.0"#),
        (r#""qnoise_factor": null"#, r#""qnoise_factor": 1.0"#),
        (r#""k0": true"#, r#""k0": 0.0"#),
        (r#""scaler": null"#, r#""scaler": -2.5"#),
    ] {
        let text = json.replacen(from, to, 1);
        let c = QuantizerConfig::from_json(&text).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_eq!(c.to_json(), text);
    }
}

#[test]
fn builder_refuses_meaningless_values() {
    let b = || QuantizerConfig::builder(QType::Kbi, Place::Weight);
    for (bad, key) in [
        (b().scaler(f64::NAN), "scaler"),
        (b().scaler(f64::INFINITY), "scaler"),
        (b().affine(f64::INFINITY, 0.0), "affine"),
        (b().affine(1.0, f64::NAN), "affine"),
        (b().qnoise_factor(f64::NAN), "qnoise_factor"),
    ] {
        let e = bad.build().unwrap_err();
        assert!(
            matches!(&e, ConfigError::Override { key: k, .. } if k == key),
            "{e}"
        );
    }
    let e = b().i_decay_speed(f64::NAN).build().unwrap_err();
    assert_eq!(e.path(), Some("$.config.i_decay_speed"), "{e}");
    let e = b()
        .bc(Constraint::MinMax {
            min_value: f64::NAN,
            max_value: 1.0,
        })
        .build()
        .unwrap_err();
    assert_eq!(e.path(), Some("$.config.bc.config.min_value"), "{e}");
    let e = b().br(Regularizer::L1(f64::INFINITY)).build().unwrap_err();
    assert_eq!(e.path(), Some("$.config.br.config.l1"), "{e}");
    assert!(b().i_decay_speed(-1.0).build().is_ok());
}

#[test]
fn from_core_refuses_what_reading_refuses() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .build()
        .unwrap();
    let mut core = c.to_core().unwrap();
    let hgq_config::QuantizerSpec::Kbi(s) = &mut core.spec else {
        panic!()
    };
    s.fixed.i_decay_speed = f64::NAN;
    let e = QuantizerConfig::from_core(&core, Place::Weight).unwrap_err();
    assert_eq!(e.path(), Some("$.config.i_decay_speed"), "{e}");
}
