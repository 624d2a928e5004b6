//! Every case of the golden `config.json`: read, written back byte for byte.
use hgq_config::{BitwidthMapperConfig, KerasModel, PyValue, QuantizerConfig, QuantizerLayer};

pub fn cases() -> Vec<(String, String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/golden/config.json"
    );
    let text = std::fs::read_to_string(path).expect("golden config.json");
    let v = PyValue::parse(&text).expect("parse golden file");
    let Some(PyValue::List(cases)) = v.get("cases") else {
        panic!("no cases")
    };
    cases
        .iter()
        .map(|c| {
            let s = |k| match c.get(k) {
                Some(PyValue::Str(s)) => s.clone(),
                _ => panic!("case without {k}"),
            };
            (s("name"), s("python"), s("json"))
        })
        .collect()
}

#[test]
fn generic_round_trip() {
    for (name, _, json) in cases() {
        let v = PyValue::parse(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.to_json(), json, "{name}");
    }
}

#[test]
fn typed_round_trip() {
    let cases = cases();
    assert_eq!(cases.len(), 23);
    for (name, _, json) in cases {
        let back = if name.starts_with("config/") {
            QuantizerConfig::from_json(&json).map(|c| c.to_json())
        } else if name.starts_with("layer/") {
            QuantizerLayer::from_json(&json).map(|c| c.to_json())
        } else if name.starts_with("mapper/") {
            BitwidthMapperConfig::from_json(&json).map(|c| c.to_json())
        } else {
            KerasModel::from_json(&json).map(|m| {
                assert_eq!(m.quantizers.len(), 6, "{name}");
                m.to_json()
            })
        };
        let back = back.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, json, "{name}");
    }
}
