//! The typed configurations implement serde's `Serialize` / `Deserialize` (the form in the
//! crate documentation, "Serde"), so that they fit in a user's own training configuration;
//! non-finite floats round-trip instead of becoming `null`, and reading checks what reading
//! the Keras JSON checks.
use hgq_config::{
    BitwidthMapperConfig, Constraint, DTypePolicy, Flavor, InitValue, Initializer, Num, Params,
    Place, QType, QuantizerConfig, QuantizerLayer, Regularizer,
};
use hgq_core::mapper::Axes;
use hgq_core::{OverflowMode, RoundMode};
use serde::{Deserialize, Serialize};

fn round_trip<T>(v: &T) -> T
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let text = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    // Through a `serde_json::Value` too (another path through serde).
    let value = serde_json::to_value(v).unwrap();
    let again: T = serde_json::from_value(value).unwrap();
    assert_eq!(serde_json::to_string(&again).unwrap(), text);
    back
}

fn configs() -> Vec<QuantizerConfig> {
    let mut out = Vec::new();
    for q in [QType::Kbi, QType::Kif, QType::Float, QType::Dummy] {
        for p in Place::ALL {
            out.push(QuantizerConfig::builder(q, p).build().unwrap());
        }
    }
    for p in Place::ALL {
        out.push(QuantizerConfig::builder_default(p).build().unwrap());
    }
    out.push(QuantizerConfig::hard_tanh(false).build().unwrap());
    out.push(QuantizerConfig::hard_tanh(true).build().unwrap());
    out.push(QuantizerConfig::hard_sigmoid().build().unwrap());
    out.push(
        QuantizerConfig::hard_tanh(true)
            .q_type(QType::Kbi)
            .b0(5)
            .build()
            .unwrap(),
    );
    out.push(
        QuantizerConfig::builder(QType::Kif, Place::Datalane)
            .scaler(0.5)
            .qnoise_factor(0.25)
            .affine(2.0, -1.0)
            .k0(Initializer::Ones)
            .i0(Initializer::Constant(Num::Int(3)))
            .f0(Initializer::Constant(Num::Float(4.5)))
            .i_decay_speed(-0.5)
            .round_mode(RoundMode::SRndConv)
            .overflow_mode(OverflowMode::Sat)
            .ic(Constraint::Constant(2.0))
            .fc(Constraint::MinMax {
                min_value: f64::NEG_INFINITY,
                max_value: 1e20,
            })
            .ir(Regularizer::L1L2 { l1: 0.0, l2: 1.0 })
            .fr(None)
            .heterogeneous_axis([-1])
            .build()
            .unwrap(),
    );
    out.push(
        QuantizerConfig::builder(QType::Kbi, Place::Weight)
            .k0(false)
            .b0(6.5)
            .i_decay_speed(Initializer::Zeros)
            .bc(Constraint::Min(-1.0))
            .ic(Constraint::Max(f64::INFINITY))
            .br(Regularizer::L1(0.01))
            .ir(Regularizer::L2(2.5e-5))
            .bw_mapper(BitwidthMapperConfig::new(Axes::Heterogeneous(vec![-1])).unwrap())
            .trainable(false)
            .build()
            .unwrap(),
    );
    out.push(
        QuantizerConfig::builder(QType::Float, Place::Datalane)
            .m0(3)
            .e0(Initializer::Constant(Num::Int(5)))
            .e00(-2.0)
            .mc(Constraint::NonNeg)
            .e0r(Regularizer::MonoL1(1e-6))
            .homogeneous_axis([0, 1])
            .build()
            .unwrap(),
    );
    out
}

#[test]
fn configs_round_trip_through_serde_json() {
    let all = configs();
    assert_eq!(all.len(), 27);
    for c in all {
        let back = round_trip(&c);
        assert_eq!(back, c, "{}", serde_json::to_string(&c).unwrap());
        // The Keras JSON is untouched by the detour.
        assert_eq!(back.to_json(), c.to_json());
    }
}

#[test]
fn the_form() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .build()
        .unwrap();
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        concat!(
            r#"{"flavor":"Plain","place":"weight","scaler":null,"qnoise_factor":null,"affine":null,"#,
            r#""params":{"q_type":"kbi","k0":true,"b0":8,"i0":2,"round_mode":"RND","overflow_mode":"SAT_SYM","#,
            r#""bc":{"MinMax":{"min_value":0.0,"max_value":23.0}},"ic":null,"br":{"MonoL1":1e-8},"ir":null,"#,
            r#""i_decay_speed":"Infinity","#,
            r#""common":{"homogeneous_axis":[],"heterogeneous_axis":null,"bw_mapper":null,"trainable":true,"is_weight":true}}}"#
        )
    );
    let t = QuantizerConfig::hard_tanh(true).build().unwrap();
    let s = serde_json::to_string(&t).unwrap();
    assert!(
        s.starts_with(r#"{"flavor":{"HardTanh":{"symmetric":true}},"place":"datalane""#),
        "{s}"
    );
    assert!(s.contains(r#""ic":{"Constant":0.0}"#), "{s}");
    let d = QuantizerConfig::dummy();
    assert_eq!(
        serde_json::to_string(&d).unwrap(),
        r#"{"flavor":"Plain","place":"datalane","scaler":null,"qnoise_factor":null,"affine":null,"params":{"q_type":"dummy"}}"#
    );
    let k = QuantizerConfig::builder(QType::Kif, Place::Weight)
        .k0(Initializer::Ones)
        .i0(Initializer::Constant(Num::Float(2.5)))
        .build()
        .unwrap();
    let s = serde_json::to_string(&k).unwrap();
    assert!(
        s.contains(r#""k0":"Ones","i0":{"Constant":2.5},"f0":6,"#),
        "{s}"
    );
}

#[test]
fn non_finite_values_are_not_null() {
    let mut c = QuantizerConfig::builder(QType::Kbi, Place::Datalane)
        .i_decay_speed(f64::NEG_INFINITY)
        .bc(Constraint::MinMax {
            min_value: f64::NEG_INFINITY,
            max_value: f64::INFINITY,
        })
        .build()
        .unwrap();
    let s = serde_json::to_string(&c).unwrap();
    assert!(
        !s.contains("null,\"max_value\"") && !s.contains(":null}"),
        "{s}"
    );
    assert!(s.contains(r#""i_decay_speed":"-Infinity""#), "{s}");
    assert!(
        s.contains(r#"{"MinMax":{"min_value":"-Infinity","max_value":"Infinity"}}"#),
        "{s}"
    );
    assert_eq!(round_trip(&c), c);

    // Values that mean nothing are written faithfully, and refused when read.
    let Params::Kbi(p) = &mut c.params else {
        panic!()
    };
    p.i_decay_speed = InitValue::Float(f64::NAN);
    let s = serde_json::to_string(&c).unwrap();
    assert!(s.contains(r#""i_decay_speed":"NaN""#), "{s}");
    let e = serde_json::from_str::<QuantizerConfig>(&s).unwrap_err();
    assert!(e.to_string().contains("$.config.i_decay_speed"), "{e}");
    c.scaler = Some(f64::INFINITY);
    let s = serde_json::to_string(&c).unwrap();
    assert!(s.contains(r#""scaler":"Infinity""#), "{s}");
    let e = serde_json::from_str::<QuantizerConfig>(&s).unwrap_err();
    assert!(e.to_string().contains("$.config.scaler"), "{e}");
}

#[test]
fn other_spellings_of_non_finite_floats() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .build()
        .unwrap();
    let s = serde_json::to_string(&c).unwrap();
    for (spelling, want) in [("inf", f64::INFINITY), ("-inf", f64::NEG_INFINITY)] {
        let t = s.replace(r#""Infinity""#, &format!("\"{spelling}\""));
        let back: QuantizerConfig = serde_json::from_str(&t).unwrap();
        let Params::Kbi(p) = &back.params else {
            panic!()
        };
        assert_eq!(p.i_decay_speed, InitValue::Float(want));
    }
    // A format with its own infinity (TOML's `inf`, YAML's `.inf`) hands serde an f64.
    use serde::de::IntoDeserializer;
    use serde::de::value::Error;
    let d: serde::de::value::F64Deserializer<Error> = f64::INFINITY.into_deserializer();
    assert_eq!(
        InitValue::deserialize(d).unwrap(),
        InitValue::Float(f64::INFINITY)
    );
    // Any other string is not a number.
    let t = s.replace(r#""Infinity""#, r#""1.5""#);
    let e = serde_json::from_str::<QuantizerConfig>(&t).unwrap_err();
    assert!(
        e.to_string().contains(r#"invalid value: string "1.5""#),
        "{e}"
    );
}

#[test]
fn optional_fields_may_be_left_out() {
    // What a TOML file gives (it has no null): the `None`s left out; `flavor` defaults to
    // `Plain`.
    let text = r#"{"place": "weight", "params": {"q_type": "kbi", "k0": true, "b0": 8, "i0": 2,
        "round_mode": "rnd", "overflow_mode": "sat_sym",
        "bc": {"MinMax": {"min_value": 0, "max_value": 23}}, "br": {"MonoL1": 1e-8},
        "i_decay_speed": "Infinity",
        "common": {"homogeneous_axis": [], "trainable": true, "is_weight": true}}}"#;
    let c: QuantizerConfig = serde_json::from_str(text).unwrap();
    assert_eq!(
        c,
        QuantizerConfig::builder(QType::Kbi, Place::Weight)
            .build()
            .unwrap()
    );
}

#[test]
fn reading_checks_what_the_keras_reader_checks() {
    let c = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .build()
        .unwrap();
    let s = serde_json::to_string(&c).unwrap();
    for (from, to, says) in [
        (r#""scaler":null"#, r#""scaler":0.0"#, "$.config.scaler"),
        (
            r#""qnoise_factor":null"#,
            r#""qnoise_factor":1.5"#,
            "$.config.qnoise_factor",
        ),
        (
            r#""affine":null"#,
            r#""affine":[1.0,"NaN"]"#,
            "$.config.affine[1]",
        ),
        (r#""k0":true"#, r#""k0":2"#, "$.config.k0"),
        (r#""b0":8"#, r#""b0":"NaN""#, "$.config.b0"),
        (r#""min_value":0.0"#, r#""min_value":"NaN""#, "min_value"),
        (
            r#""MonoL1":1e-8"#,
            r#""MonoL1":"Infinity""#,
            "$.config.br.config.l1",
        ),
        (
            r#""is_weight":true"#,
            r#""is_weight":true,"x":1"#,
            "unknown field `x`",
        ),
        (r#""b0":8"#, r#""b0":8,"f0":1"#, "unknown field `f0`"),
        (
            r#""q_type":"kbi""#,
            r#""q_type":"int""#,
            "unknown variant `int`",
        ),
        (r#""place":"weight""#, r#""place":"kernel""#, "kernel"),
        (r#""round_mode":"RND""#, r#""round_mode":"ROUND""#, "ROUND"),
        (
            r#""bw_mapper":null"#,
            r#""bw_mapper":{"heterogeneous_axis":null,"homogeneous_axis":null,"shape_inferenced":false}"#,
            "exactly one",
        ),
    ] {
        assert!(s.contains(from), "{from}");
        let e = serde_json::from_str::<QuantizerConfig>(&s.replacen(from, to, 1))
            .expect_err(to)
            .to_string();
        assert!(e.contains(says), "{to}: {e}");
    }
    // HardTanh / HardSigmoid fix some values; the serde form must keep them.
    let t = QuantizerConfig::hard_tanh(false).build().unwrap();
    let s = serde_json::to_string(&t).unwrap();
    for (from, to, says) in [
        (r#""k0":1"#, r#""k0":0"#, "$.config.k0"),
        (
            r#""overflow_mode":"SAT""#,
            r#""overflow_mode":"WRAP""#,
            "overflow_mode",
        ),
        (
            r#""affine":null"#,
            r#""affine":[1.0,0.0]"#,
            "$.config.affine",
        ),
        (r#""q_type":"kif""#, r#""q_type":"float""#, "unknown field"),
    ] {
        assert!(s.contains(from), "{from} in {s}");
        let e = serde_json::from_str::<QuantizerConfig>(&s.replacen(from, to, 1))
            .expect_err(to)
            .to_string();
        assert!(e.contains(says), "{to}: {e}");
    }
}

#[test]
fn parts_round_trip() {
    for c in [
        Constraint::MinMax {
            min_value: -1.5,
            max_value: f64::INFINITY,
        },
        Constraint::Min(f64::NEG_INFINITY),
        Constraint::Max(8.0),
        Constraint::Constant(0.0),
        Constraint::NonNeg,
    ] {
        assert_eq!(round_trip(&c), c);
    }
    for r in [
        Regularizer::MonoL1(1e-8),
        Regularizer::L1(0.0),
        Regularizer::L2(2.5e-5),
        Regularizer::L1L2 { l1: 1.0, l2: 2.0 },
    ] {
        assert_eq!(round_trip(&r), r);
    }
    for v in [
        InitValue::Bool(true),
        InitValue::Int(-3),
        InitValue::Float(8.0),
        InitValue::Float(-0.0),
        InitValue::Float(f64::INFINITY),
        InitValue::Initializer(Initializer::Zeros),
        InitValue::Initializer(Initializer::Constant(Num::Float(f64::NEG_INFINITY))),
        InitValue::Initializer(Initializer::Constant(Num::Int(7))),
    ] {
        let back = round_trip(&v);
        assert_eq!(back, v);
        assert_eq!(back.as_f64().to_bits(), v.as_f64().to_bits());
    }
    let nan = round_trip(&InitValue::Float(f64::NAN));
    assert!(matches!(nan, InitValue::Float(f) if f.is_nan()));
    for p in Place::ALL {
        assert_eq!(round_trip(&p), p);
    }
    for q in [QType::Kbi, QType::Kif, QType::Float, QType::Dummy] {
        assert_eq!(round_trip(&q), q);
    }
    assert_eq!(
        serde_json::from_str::<Place>(r#""WEIGHT""#).unwrap(),
        Place::Weight
    );
    for f in [
        Flavor::Plain,
        Flavor::HardTanh { symmetric: true },
        Flavor::HardSigmoid,
    ] {
        assert_eq!(round_trip(&f), f);
    }
    let mut m = BitwidthMapperConfig::new(Axes::Homogeneous(vec![0])).unwrap();
    assert_eq!(round_trip(&m), m);
    m.infer(3).unwrap();
    assert_eq!(round_trip(&m), m);
    let e = serde_json::from_str::<BitwidthMapperConfig>(
        r#"{"heterogeneous_axis":[1],"homogeneous_axis":[0],"shape_inferenced":false}"#,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("exactly one of heterogeneous_axis and homogeneous_axis"),
        "{e}"
    );
    let layer = QuantizerLayer::new("q", configs().remove(0)).built_on([None, Some(4)]);
    assert_eq!(round_trip(&layer), layer);
    assert_eq!(round_trip(&DTypePolicy::default()), DTypePolicy::default());
}

/// A user's own training configuration, holding quantizer configurations.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Training {
    epochs: u32,
    learning_rate: f64,
    input_quantizer: QuantizerConfig,
    kernel_quantizer: QuantizerConfig,
    output_quantizer: Option<QuantizerConfig>,
    layers: Vec<QuantizerConfig>,
}

#[test]
fn embedded_in_a_user_struct() {
    let t = Training {
        epochs: 200,
        learning_rate: 3e-3,
        input_quantizer: QuantizerConfig::builder(QType::Kif, Place::Datalane)
            .f0(3)
            .build()
            .unwrap(),
        kernel_quantizer: QuantizerConfig::builder(QType::Kbi, Place::Weight)
            .b0(4)
            .build()
            .unwrap(),
        output_quantizer: None,
        layers: configs(),
    };
    let text = serde_json::to_string_pretty(&t).unwrap();
    let back: Training = serde_json::from_str(&text).unwrap();
    assert_eq!(back, t);
    // An invalid quantizer inside fails the whole read, saying where.
    let bad = text.replacen(r#""f0": 3"#, r#""f0": "NaN""#, 1);
    let e = serde_json::from_str::<Training>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("$.config.f0"), "{e}");
}
