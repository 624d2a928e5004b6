//! The JSON lines xtask reads from the project's binaries and prints itself, through
//! serde_json (a small, well-kept crate; xtask's only dependency).
pub use serde_json::Value;

/// Parses one JSON value.
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// An object with these keys in this order.
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
