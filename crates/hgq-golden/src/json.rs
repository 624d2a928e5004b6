//! Reading the golden JSON: numbers, and the strings "NaN", "Infinity", "-Infinity".
use crate::Dtype;
use serde_json::Value;

/// Parses JSON text.
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// One float (number or non-finite string).
pub fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("bad number {n}")),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(format!("bad float string {s:?}")),
        },
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        _ => Err(format!("expected a float, got {v}")),
    }
}

/// `obj[key]` as a flat f32 array (a scalar becomes one element).
pub fn f32s(obj: &Value, key: &str) -> Result<Vec<f32>, String> {
    let v = obj.get(key).ok_or_else(|| format!("missing key {key:?}"))?;
    match v {
        Value::Array(a) => a.iter().map(|e| float(e).map(|f| f as f32)).collect(),
        other => Ok(vec![float(other)? as f32]),
    }
}

/// `obj[key]` as a flat array of values that `dtype` holds exactly, as f64 (a value it does not
/// hold is an error: the reference wrote values of its dtype).
pub fn typed(obj: &Value, key: &str, dtype: Dtype) -> Result<Vec<f64>, String> {
    let v = obj.get(key).ok_or_else(|| format!("missing key {key:?}"))?;
    let a = v
        .as_array()
        .ok_or_else(|| format!("{key:?} is not an array"))?
        .iter()
        .map(float)
        .collect::<Result<Vec<f64>, String>>()?;
    if let Some((j, v)) = a.iter().enumerate().find(|(_, v)| !dtype.holds(**v)) {
        return Err(format!("{key}[{j}] = {v:e} is not a {dtype} value"));
    }
    Ok(a)
}

/// The case's `"dtype"`: float32 when absent; an unknown name or a non-string is an error.
pub fn dtype(obj: &Value) -> Result<Dtype, String> {
    match obj.get("dtype") {
        None => Ok(Dtype::F32),
        Some(Value::String(s)) => Dtype::from_name(s).ok_or_else(|| {
            format!(
                "unknown dtype {s:?}; known: {}",
                Dtype::ALL.map(Dtype::name).join(", ")
            )
        }),
        Some(other) => Err(format!("\"dtype\" is {other}, not a string")),
    }
}

/// `obj[key]` as a string.
pub fn str_<'a>(obj: &'a Value, key: &str) -> Result<&'a str, String> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string {key:?}"))
}

/// `obj[key]` as a bool.
pub fn bool_(obj: &Value, key: &str) -> Result<bool, String> {
    obj.get(key)
        .and_then(Value::as_bool)
        .ok_or_else(|| format!("missing bool {key:?}"))
}

/// `obj[key]` as a shape.
pub fn shape(obj: &Value, key: &str) -> Result<Vec<usize>, String> {
    obj.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("missing shape {key:?}"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| format!("bad dim {d}"))
        })
        .collect()
}
