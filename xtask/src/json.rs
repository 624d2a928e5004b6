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

/// One JSON object a program printed on a line, read field by field; the errors name the
/// program and the line.
pub struct Row<'a> {
    value: Value,
    line: &'a str,
    who: &'a str,
}

impl<'a> Row<'a> {
    /// The object on `line`, which `who` printed; `None` for a line that does not start an
    /// object (a program's other output).
    pub fn read(line: &'a str, who: &'a str) -> Result<Option<Self>, String> {
        if !line.starts_with('{') {
            return Ok(None);
        }
        let value = parse(line).map_err(|e| format!("{who} printed {line:?}, not JSON: {e}"))?;
        Ok(Some(Row { value, line, who }))
    }

    fn missing(&self, key: &str) -> String {
        format!("{} printed {:?}: no {key}", self.who, self.line)
    }

    /// The field `key`.
    pub fn get(&self, key: &str) -> &Value {
        &self.value[key]
    }

    /// A string field.
    pub fn text(&self, key: &str) -> Result<String, String> {
        self.get(key)
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.missing(key))
    }

    /// A number field.
    pub fn num(&self, key: &str) -> Result<f64, String> {
        self.get(key).as_f64().ok_or_else(|| self.missing(key))
    }

    /// A non-negative integer field.
    pub fn int(&self, key: &str) -> Result<u64, String> {
        self.get(key).as_u64().ok_or_else(|| self.missing(key))
    }
}
