//! Shared by the integration tests: the golden `config.json` cases.
use hgq_config::PyValue;

/// One golden case: name, Python expression, exact JSON.
pub struct GoldenCase {
    pub name: String,
    #[allow(dead_code)]
    pub python: String,
    pub json: String,
}

/// Every case of `tests/data/golden/config.json`.
pub fn cases() -> Vec<GoldenCase> {
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
            GoldenCase {
                name: s("name"),
                python: s("python"),
                json: s("json"),
            }
        })
        .collect()
}

/// The JSON of the case named `name`.
#[allow(dead_code)]
pub fn json_of(name: &str) -> String {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .json
}
