//! Every case of the golden `config.json`: read, written back byte for byte.
mod common;
use hgq_config::{BitwidthMapperConfig, KerasModel, PyValue, QuantizerConfig, QuantizerLayer};

#[test]
fn generic_round_trip() {
    for c in common::cases() {
        let v = PyValue::parse(&c.json).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(v.to_json(), c.json, "{}", c.name);
    }
}

#[test]
fn typed_round_trip() {
    let cases = common::cases();
    assert_eq!(cases.len(), 23);
    for c in cases {
        let (name, json) = (&c.name, &c.json);
        let back = if name.starts_with("config/") {
            QuantizerConfig::from_json(json).map(|c| c.to_json())
        } else if name.starts_with("layer/") {
            QuantizerLayer::from_json(json).map(|c| c.to_json())
        } else if name.starts_with("mapper/") {
            BitwidthMapperConfig::from_json(json).map(|c| c.to_json())
        } else {
            KerasModel::from_json(json).map(|m| m.to_json())
        };
        let back = back.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&back, json, "{name}");
    }
}
