//! A key repeated in a JSON object: one rule everywhere, the last one wins, as Python's
//! `json.loads` keeps it (the key stays where it first appeared, with the last value). The
//! generic tree, its lookups and every typed reader agree, nested objects included.
mod common;
use hgq_config::{
    Constraint, InitValue, KerasModel, Params, Place, PyValue, QType, QuantizerConfig,
};

/// What Python's `json.dumps(json.loads(text))` writes, for the texts below.
fn python_round_trip(text: &str) -> String {
    PyValue::parse(text).unwrap().to_json()
}

#[test]
fn pyvalue_keeps_the_last_value_at_the_first_place() {
    let v = PyValue::parse(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
    assert_eq!(v.get("a"), Some(&PyValue::Int(3)));
    assert_eq!(v.get("b"), Some(&PyValue::Int(2)));
    // json.dumps(json.loads(...)) in Python gives exactly this.
    assert_eq!(v.to_json(), r#"{"a": 3, "b": 2}"#);
    let PyValue::Dict(d) = &v else { panic!() };
    assert_eq!(d.len(), 2);
}

#[test]
fn pyvalue_nested_duplicates() {
    let text = r#"{"x": {"a": 1, "a": 2}, "y": [{"k": 1, "k": {"z": 0, "z": 5}}], "x": {"a": 3, "b": 4, "a": 5}}"#;
    let v = PyValue::parse(text).unwrap();
    let x = v.get("x").unwrap();
    assert_eq!(x.get("a"), Some(&PyValue::Int(5)));
    assert_eq!(x.get("b"), Some(&PyValue::Int(4)));
    let Some(PyValue::List(y)) = v.get("y") else {
        panic!()
    };
    assert_eq!(y[0].get("k").unwrap().get("z"), Some(&PyValue::Int(5)));
    assert_eq!(
        v.to_json(),
        r#"{"x": {"a": 5, "b": 4}, "y": [{"k": {"z": 5}}]}"#
    );
    // serde_json (with `preserve_order`) reads it the same way.
    let j: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(PyValue::from(&j), v);
}

#[test]
fn pyvalue_many_keys_with_duplicates() {
    // Enough keys that lookups during parsing go through an index.
    let mut parts: Vec<String> = (0..40).map(|j| format!(r#""k{j}": {j}"#)).collect();
    parts.push(r#""k3": "last""#.into());
    parts.push(r#""k39": null"#.into());
    parts.push(r#""k0": 0.5"#.into());
    let v = PyValue::parse(&format!("{{{}}}", parts.join(", "))).unwrap();
    let PyValue::Dict(d) = &v else { panic!() };
    assert_eq!(d.len(), 40);
    assert_eq!(d[0], ("k0".into(), PyValue::Float(0.5)));
    assert_eq!(d[3], ("k3".into(), PyValue::str("last")));
    assert_eq!(d[39], ("k39".into(), PyValue::Null));
    assert_eq!(v.get("k7"), Some(&PyValue::Int(7)));
}

#[test]
fn pyvalue_get_on_a_hand_built_dict_takes_the_last() {
    let v = PyValue::Dict(vec![
        ("a".into(), PyValue::Int(1)),
        ("a".into(), PyValue::Int(2)),
    ]);
    assert_eq!(v.get("a"), Some(&PyValue::Int(2)));
}

#[test]
fn typed_config_and_pyvalue_agree() {
    let json = common::json_of("config/kbi/weight");
    // b0 twice at the top level, max_value twice inside the constraint, ir twice (a dict,
    // then null) and br twice (null, then a dict).
    let text = json
        .replacen(r#""i0": 2"#, r#""i0": 2, "b0": 5"#, 1)
        .replacen(
            r#""max_value": 23.0"#,
            r#""max_value": 23.0, "max_value": 12.0"#,
            1,
        )
        .replacen(
            r#""ir": null"#,
            r#""ir": {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.5}, "registered_name": null}, "ir": null"#,
            1,
        )
        .replacen(r#""br": "#, r#""br": null, "br": "#, 1);
    assert_ne!(text, json);
    let c = QuantizerConfig::from_json(&text).unwrap();
    let Params::Kbi(p) = &c.params else { panic!() };
    assert_eq!(p.b0, InitValue::Int(5));
    assert_eq!(
        p.bc,
        Some(Constraint::MinMax {
            min_value: 0.0,
            max_value: 12.0
        })
    );
    assert_eq!(p.ir, None);
    assert!(p.br.is_some());

    // The generic tree sees the same values.
    let v = PyValue::parse(&text).unwrap();
    let cfg = v.get("config").unwrap();
    assert_eq!(cfg.get("b0"), Some(&PyValue::Int(5)));
    assert_eq!(
        cfg.get("bc")
            .unwrap()
            .get("config")
            .unwrap()
            .get("max_value"),
        Some(&PyValue::Float(12.0))
    );
    assert_eq!(cfg.get("ir"), Some(&PyValue::Null));
    assert!(matches!(cfg.get("br"), Some(PyValue::Dict(_))));

    // Both write what Python writes after reading the text.
    assert_eq!(c.to_json(), python_round_trip(&text));
    assert_eq!(
        c,
        QuantizerConfig::builder(QType::Kbi, Place::Weight)
            .b0(5)
            .bc(Constraint::MinMax {
                min_value: 0.0,
                max_value: 12.0
            })
            .build()
            .unwrap()
    );
}

#[test]
fn duplicate_envelope_keys() {
    // The envelope's own keys: the last class name and the last config win.
    let json = common::json_of("config/kbi/weight");
    let other = QuantizerConfig::builder(QType::Kif, Place::Datalane)
        .f0(3)
        .build()
        .unwrap();
    let other_cfg = other.to_value().get("config").unwrap().to_json();
    let text = json.replacen(
        r#""registered_name": "hgq>QuantizerConfig"}"#,
        &format!(r#""registered_name": "hgq>QuantizerConfig", "config": {other_cfg}}}"#),
        1,
    );
    assert_eq!(text.len(), json.len() + other_cfg.len() + 12);
    assert_eq!(QuantizerConfig::from_json(&text).unwrap(), other);
}

#[test]
fn keras_model_finds_only_the_last() {
    let json = common::json_of("model/qdense_mlp");
    let kq = QuantizerConfig::builder(QType::Kbi, Place::Weight)
        .b0(4)
        .build()
        .unwrap();
    // The first QDense gets a second kq_conf at its end.
    let text = json.replacen(
        r#""parallelization_factor": 1}"#,
        &format!(
            r#""parallelization_factor": 1, "kq_conf": {}}}"#,
            kq.to_json()
        ),
        1,
    );
    assert_ne!(text, json);
    let m = KerasModel::from_json(&text).unwrap();
    assert_eq!(m.quantizers.len(), 6);
    let keys: Vec<String> = m
        .quantizers
        .iter()
        .map(|f| format!("{} {}", f.layer_path(), f.key))
        .collect();
    assert_eq!(keys[1], "sequential/q_dense kq_conf");
    assert_eq!(m.quantizers[1].config, kq);
    assert_eq!(
        m.quantizers[1].json_path(),
        "$.config.layers[1].config.kq_conf"
    );
    // Written back as Python writes it: one kq_conf, at its first place, the last value.
    let back = m.to_json();
    assert_eq!(back, python_round_trip(&text));
    assert_eq!(back.matches(r#""kq_conf""#).count(), 2);
    assert!(back.contains(r#""b0": 4"#));

    // A hand-built tree with the key twice: the walk takes the last one too.
    let mut root = PyValue::parse(&json).unwrap();
    let PyValue::Dict(top) = &mut root else {
        panic!()
    };
    let PyValue::Dict(cfg) = &mut top[2].1 else {
        panic!()
    };
    let PyValue::List(layers) = &mut cfg[3].1 else {
        panic!()
    };
    let PyValue::Dict(layer) = &mut layers[1] else {
        panic!()
    };
    let PyValue::Dict(lc) = &mut layer[2].1 else {
        panic!()
    };
    lc.push(("kq_conf".into(), kq.to_value()));
    let found = hgq_config::find_quantizers(&root).unwrap();
    assert_eq!(found.len(), 6);
    assert_eq!(found.iter().filter(|f| f.config == kq).count(), 1);
}
