//! JSON exactly as Python's `json` module reads and writes it.
//!
//! Python's JSON differs from strict JSON in three ways that matter here: the bare tokens
//! `Infinity`, `-Infinity` and `NaN` are numbers, ints and floats are different types (`8` is
//! not `8.0`), and floats are written in `repr` form (`1e-08`, `0.0`, `1.5e+20`). [`PyValue`]
//! keeps all of that, so [`PyValue::parse`] followed by [`PyValue::to_json`] gives back the
//! exact bytes that `json.dumps` (default separators `", "` and `": "`, `ensure_ascii=True`)
//! wrote.
//!
//! ```
//! use hgq_config::pyjson::PyValue;
//! let s = r#"{"b0": 8, "l1": 1e-08, "i_decay_speed": Infinity, "k0": true}"#;
//! let v = PyValue::parse(s).unwrap();
//! assert_eq!(v.get("b0"), Some(&PyValue::Int(8)));
//! assert_eq!(v.to_json(), s);
//! ```
use crate::error::{ConfigError, Result};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A JSON value with Python's types: ints and floats apart, dicts in insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `null` (`None`).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer token (no `.`, `e` or `E`).
    Int(i64),
    /// A float token, including `Infinity`, `-Infinity` and `NaN`.
    Float(f64),
    /// A string.
    Str(String),
    /// A list (Python tuples are written as lists too).
    List(Vec<PyValue>),
    /// A dict, keys in order.
    Dict(Vec<(String, PyValue)>),
}

/// Deepest nesting [`PyValue::parse`] accepts (Python's own limit is about 1000).
pub const MAX_DEPTH: usize = 512;

impl PyValue {
    /// Parses text as Python's `json.loads` does (strict mode: no raw control characters in
    /// strings).
    ///
    /// A key repeated in an object is kept once, as a Python dict keeps it: at the place where
    /// it first appeared, with the last value (`{"a": 1, "b": 2, "a": 3}` reads as
    /// `{"a": 3, "b": 2}`). Every reader in this crate sees that one value, and
    /// [`PyValue::to_json`] writes what `json.dumps(json.loads(text))` writes.
    ///
    /// ```
    /// use hgq_config::PyValue;
    /// let v = PyValue::parse(r#"{"a": 1, "b": {"c": 2, "c": 3}, "a": 4}"#).unwrap();
    /// assert_eq!(v.get("a"), Some(&PyValue::Int(4)));
    /// assert_eq!(v.to_json(), r#"{"a": 4, "b": {"c": 3}}"#);
    /// ```
    pub fn parse(text: &str) -> Result<PyValue> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parses bytes that should hold UTF-8 JSON text.
    pub fn parse_bytes(bytes: &[u8]) -> Result<PyValue> {
        let mut p = Parser { b: bytes, pos: 0 };
        p.ws();
        let v = p.value(0)?;
        p.ws();
        if p.pos != p.b.len() {
            return Err(p.err("extra data after the value"));
        }
        Ok(v)
    }

    /// The text `json.dumps` writes for this value.
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    /// Appends this value's JSON text to `out`.
    pub fn write(&self, out: &mut String) {
        match self {
            PyValue::Null => out.push_str("null"),
            PyValue::Bool(true) => out.push_str("true"),
            PyValue::Bool(false) => out.push_str("false"),
            PyValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            PyValue::Float(f) => write_float(*f, out),
            PyValue::Str(s) => write_str(s, out),
            PyValue::List(l) => {
                out.push('[');
                for (j, v) in l.iter().enumerate() {
                    if j > 0 {
                        out.push_str(", ");
                    }
                    v.write(out);
                }
                out.push(']');
            }
            PyValue::Dict(d) => {
                out.push('{');
                for (j, (k, v)) in d.iter().enumerate() {
                    if j > 0 {
                        out.push_str(", ");
                    }
                    write_str(k, out);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value under `key` when this is a dict holding it.
    ///
    /// A dict from [`PyValue::parse`] holds each key once (see there); in one built by hand
    /// with a key repeated, the last one wins, as everywhere in this crate.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(d) => d.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The Python type name of this value, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::Null => "null",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "string",
            PyValue::List(_) => "list",
            PyValue::Dict(_) => "dict",
        }
    }

    /// A string value.
    pub fn str(s: impl Into<String>) -> PyValue {
        PyValue::Str(s.into())
    }
}

impl std::fmt::Display for PyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl From<&serde_json::Value> for PyValue {
    /// From a `serde_json` value: integers that fit `i64` stay ints, other numbers are floats.
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value as J;
        match v {
            J::Null => PyValue::Null,
            J::Bool(b) => PyValue::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => PyValue::Int(i),
                None => PyValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => PyValue::Str(s.clone()),
            J::Array(a) => PyValue::List(a.iter().map(PyValue::from).collect()),
            J::Object(o) => PyValue::Dict(o.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
        }
    }
}

impl TryFrom<&PyValue> for serde_json::Value {
    type Error = ConfigError;
    /// To a `serde_json` value; non-finite floats have no JSON form there and are an error.
    ///
    /// ```
    /// use hgq_config::PyValue;
    /// let v = PyValue::parse(r#"{"b0": 8, "l1": 1e-08}"#).unwrap();
    /// let j = serde_json::Value::try_from(&v).unwrap();
    /// assert_eq!(j["b0"], 8);
    /// assert_eq!(PyValue::from(&j), v);
    /// assert!(serde_json::Value::try_from(&PyValue::Float(f64::INFINITY)).is_err());
    /// ```
    fn try_from(v: &PyValue) -> Result<Self> {
        use serde_json::Value as J;
        Ok(match v {
            PyValue::Null => J::Null,
            PyValue::Bool(b) => J::Bool(*b),
            PyValue::Int(i) => J::from(*i),
            PyValue::Float(f) => {
                J::Number(
                    serde_json::Number::from_f64(*f).ok_or_else(|| ConfigError::Value {
                        path: "$".into(),
                        msg: format!("{} has no serde_json form", float_repr(*f)),
                    })?,
                )
            }
            PyValue::Str(s) => J::String(s.clone()),
            PyValue::List(l) => J::Array(l.iter().map(J::try_from).collect::<Result<_>>()?),
            PyValue::Dict(d) => J::Object(
                d.iter()
                    .map(|(k, v)| Ok((k.clone(), J::try_from(v)?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in `[-4, 16)` (always with a `.`), else as `1e-08` / `1.5e+20`.
/// Non-finite values are written as JSON does: `Infinity`, `-Infinity`, `NaN`.
///
/// ```
/// use hgq_config::pyjson::float_repr;
/// assert_eq!(float_repr(1e-8), "1e-08");
/// assert_eq!(float_repr(23.0), "23.0");
/// assert_eq!(float_repr(1.5e20), "1.5e+20");
/// assert_eq!(float_repr(1e16), "1e+16");
/// assert_eq!(float_repr(1e15), "1000000000000000.0");
/// assert_eq!(float_repr(0.0001), "0.0001");
/// assert_eq!(float_repr(-0.0), "-0.0");
/// assert_eq!(float_repr(f64::INFINITY), "Infinity");
/// ```
pub fn float_repr(f: f64) -> String {
    let mut s = String::new();
    write_float(f, &mut s);
    s
}

fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if f.is_sign_negative() {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digit count; among the strings of that
    // length Python's repr takes the one nearest the exact value, ties to even, which is
    // Rust's exact formatting at that precision (it rounds half to even).
    let a = f.abs();
    let shortest = format!("{a:e}");
    let n = shortest
        .split_once('e')
        .map_or(1, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let nearest = format!("{a:.*e}", n.saturating_sub(1));
    let e = if nearest.parse::<f64>() == Ok(a) {
        nearest
    } else {
        shortest
    };
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let nd = digits.len() as i32;
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else {
        let decpt = exp + 1;
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if decpt >= nd {
            out.push_str(&digits);
            for _ in 0..(decpt - nd) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    }
}

/// A string as `json.dumps` writes it with `ensure_ascii=True`.
fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Dicts up to this size are searched for a repeated key; larger ones get an index.
const LINEAR_KEYS: usize = 16;

/// Adds `k: v` to a dict being parsed as Python's dict does: a key already there keeps its
/// place and takes the new value.
fn insert_last_wins(
    d: &mut Vec<(String, PyValue)>,
    index: &mut HashMap<String, usize>,
    k: String,
    v: PyValue,
) {
    if d.len() < LINEAR_KEYS {
        match d.iter_mut().find(|(e, _)| *e == k) {
            Some(slot) => slot.1 = v,
            None => d.push((k, v)),
        }
        return;
    }
    if index.is_empty() {
        index.extend(d.iter().enumerate().map(|(j, (e, _))| (e.clone(), j)));
    }
    match index.get(&k) {
        Some(&j) => d[j].1 = v,
        None => {
            index.insert(k.clone(), d.len());
            d.push((k, v));
        }
    }
}

/// The entries of a dict that a lookup can see: for a key repeated (only in a dict built
/// by hand; [`PyValue::parse`] keeps each key once), the last one.
pub(crate) fn visible_entries(d: &[(String, PyValue)]) -> impl Iterator<Item = &(String, PyValue)> {
    let last: Option<HashMap<&str, usize>> = (d.len() > LINEAR_KEYS).then(|| {
        d.iter()
            .enumerate()
            .map(|(j, (k, _))| (k.as_str(), j))
            .collect()
    });
    d.iter().enumerate().filter_map(move |(j, e)| {
        let shadowed = match &last {
            Some(m) => m.get(e.0.as_str()) != Some(&j),
            None => d[j + 1..].iter().any(|(k, _)| *k == e.0),
        };
        (!shadowed).then_some(e)
    })
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> ConfigError {
        ConfigError::Syntax {
            offset: self.pos,
            msg: msg.to_string(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.b[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<PyValue> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.b.get(self.pos) {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => {
                self.pos += 1;
                let mut d = Vec::new();
                let mut index = HashMap::new();
                self.ws();
                if self.eat("}") {
                    return Ok(PyValue::Dict(d));
                }
                loop {
                    self.ws();
                    if self.b.get(self.pos) != Some(&b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let k = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return Err(self.err("expected ':'"));
                    }
                    self.ws();
                    let v = self.value(depth + 1)?;
                    insert_last_wins(&mut d, &mut index, k, v);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(PyValue::Dict(d));
                    }
                    return Err(self.err("expected ',' or '}'"));
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut l = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(PyValue::List(l));
                }
                loop {
                    self.ws();
                    l.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(PyValue::List(l));
                    }
                    return Err(self.err("expected ',' or ']'"));
                }
            }
            Some(b'"') => Ok(PyValue::Str(self.string()?)),
            Some(_) => {
                if self.eat("null") {
                    Ok(PyValue::Null)
                } else if self.eat("true") {
                    Ok(PyValue::Bool(true))
                } else if self.eat("false") {
                    Ok(PyValue::Bool(false))
                } else if self.eat("NaN") {
                    Ok(PyValue::Float(f64::NAN))
                } else if self.eat("Infinity") {
                    Ok(PyValue::Float(f64::INFINITY))
                } else if self.eat("-Infinity") {
                    Ok(PyValue::Float(f64::NEG_INFINITY))
                } else {
                    self.number()
                }
            }
        }
    }

    /// A number as Python's scanner reads it: `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`.
    fn number(&mut self) -> Result<PyValue> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let s = p.pos;
            while p.b.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos - s
        };
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => {
                self.pos = start;
                return Err(self.err("expected a value"));
            }
        }
        let mut float = false;
        if self.b.get(self.pos) == Some(&b'.')
            && self.b.get(self.pos + 1).is_some_and(u8::is_ascii_digit)
        {
            self.pos += 1;
            digits(self);
            float = true;
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                self.pos = save;
            } else {
                float = true;
            }
        }
        // The token is ASCII by construction.
        let tok = std::str::from_utf8(&self.b[start..self.pos]).unwrap_or("");
        if float {
            tok.parse::<f64>()
                .map(PyValue::Float)
                .map_err(|_| self.err("bad float"))
        } else {
            tok.parse::<i64>().map(PyValue::Int).map_err(|_| {
                let mut e = self.err("integer out of the 64-bit range");
                if let ConfigError::Syntax { offset, .. } = &mut e {
                    *offset = start;
                }
                e
            })
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let h = self
            .b
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.err("truncated \\u escape"))?;
        let s = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        let v = u32::from_str_radix(s, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            let run = self.pos;
            while let Some(&c) = self.b.get(self.pos) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let chunk =
                std::str::from_utf8(&self.b[run..self.pos]).map_err(|e| ConfigError::Syntax {
                    offset: run + e.valid_up_to(),
                    msg: "invalid UTF-8 in a string".into(),
                })?;
            out.push_str(chunk);
            match self.b.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = *self
                        .b
                        .get(self.pos)
                        .ok_or_else(|| self.err("unterminated string"))?;
                    self.pos += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if !self.eat("\\u") {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(cp)
                                    .ok_or_else(|| self.err("lone surrogate in \\u escape"))?,
                            );
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)] // exact binary values on purpose
    fn floats_like_python_repr() {
        for (f, s) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.01, "0.01"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.00012345, "0.00012345"),
            (1.2345e-5, "1.2345e-05"),
            (123456789.125, "123456789.125"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
            // A tie between two shortest strings: Python takes the even digit.
            (-1960381212894135.25, "-1960381212894135.2"),
            (111659285584252.125, "111659285584252.12"),
            (-23.0, "-23.0"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(float_repr(f), s, "{f:e}");
        }
    }

    #[test]
    fn ints_and_floats_apart() {
        let v = PyValue::parse("[8, 8.0, -0.0, 1E5, -Infinity, NaN, 0]").unwrap();
        assert_eq!(v.to_json(), "[8, 8.0, -0.0, 100000.0, -Infinity, NaN, 0]");
    }

    #[test]
    fn strings_ensure_ascii() {
        let v = PyValue::parse(r#""a\"\\\/\n\u00e9\ud83d\ude00\u007f""#).unwrap();
        assert_eq!(v, PyValue::str("a\"\\/\né😀\u{7f}"));
        assert_eq!(v.to_json(), r#""a\"\\/\n\u00e9\ud83d\ude00\u007f""#);
    }

    #[test]
    fn visible_entries_drop_the_shadowed() {
        for n in [3usize, LINEAR_KEYS + 5] {
            let mut d: Vec<(String, PyValue)> = (0..n)
                .map(|j| (format!("k{j}"), PyValue::Int(j as i64)))
                .collect();
            d.push(("k1".into(), PyValue::Null));
            d.push(("k0".into(), PyValue::Bool(true)));
            let seen: Vec<_> = visible_entries(&d).cloned().collect();
            assert_eq!(seen.len(), n, "{n}");
            assert_eq!(seen[0], ("k2".into(), PyValue::Int(2)));
            assert_eq!(seen[n - 2], ("k1".into(), PyValue::Null));
            assert_eq!(seen[n - 1], ("k0".into(), PyValue::Bool(true)));
        }
    }

    #[test]
    fn rejects() {
        for s in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "Infinit",
            "\"\u{1}\"",
            "[1] 2",
            "\"\\ud800\"",
            "99999999999999999999",
            "{1: 2}",
            "nul",
        ] {
            assert!(PyValue::parse(s).is_err(), "{s:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(PyValue::parse(&deep).is_err());
    }
}
