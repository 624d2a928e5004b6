//! Typed reading of a [`PyValue`] tree, every step tracking its JSON path.
use crate::error::{ConfigError, Result};
use crate::pyjson::{PyValue, float_repr};

/// A value and the JSON path where it was found.
#[derive(Debug, Clone)]
pub(crate) struct At<'a> {
    pub v: &'a PyValue,
    pub path: String,
}

impl<'a> At<'a> {
    pub fn root(v: &'a PyValue) -> Self {
        At {
            v,
            path: "$".into(),
        }
    }

    pub fn new(v: &'a PyValue, path: impl Into<String>) -> Self {
        At {
            v,
            path: path.into(),
        }
    }

    pub fn type_err(&self, expected: &'static str) -> ConfigError {
        ConfigError::Type {
            path: self.path.clone(),
            expected,
            found: self.v.type_name(),
        }
    }

    pub fn value_err(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    pub fn dict(&self) -> Result<Dict<'a>> {
        match self.v {
            PyValue::Dict(d) => Ok(Dict {
                entries: d,
                path: self.path.clone(),
                used: vec![false; d.len()],
            }),
            _ => Err(self.type_err("dict")),
        }
    }

    pub fn list(&self) -> Result<Vec<At<'a>>> {
        match self.v {
            PyValue::List(l) => Ok(l
                .iter()
                .enumerate()
                .map(|(j, v)| At::new(v, format!("{}[{j}]", self.path)))
                .collect()),
            _ => Err(self.type_err("list")),
        }
    }

    pub fn str(&self) -> Result<&'a str> {
        match self.v {
            PyValue::Str(s) => Ok(s),
            _ => Err(self.type_err("string")),
        }
    }

    pub fn bool(&self) -> Result<bool> {
        match self.v {
            PyValue::Bool(b) => Ok(*b),
            _ => Err(self.type_err("bool")),
        }
    }

    pub fn int(&self) -> Result<i64> {
        match self.v {
            PyValue::Int(i) => Ok(*i),
            _ => Err(self.type_err("int")),
        }
    }

    /// A number that Python passes through `float()` (an int is accepted).
    pub fn float(&self) -> Result<f64> {
        match self.v {
            PyValue::Int(i) => Ok(*i as f64),
            PyValue::Float(f) => Ok(*f),
            _ => Err(self.type_err("number")),
        }
    }

    /// A number that is not NaN (infinities are numbers).
    pub fn number(&self) -> Result<f64> {
        let f = self.float()?;
        if f.is_nan() {
            return Err(self.value_err("must be a number, not NaN"));
        }
        Ok(f)
    }

    /// A finite number.
    pub fn finite(&self) -> Result<f64> {
        let f = self.float()?;
        if !f.is_finite() {
            return Err(self.value_err(format!("must be finite, not {}", float_repr(f))));
        }
        Ok(f)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.v, PyValue::Null)
    }

    /// `None` for `null`, else `f(self)`.
    pub fn nullable<T>(&self, f: impl FnOnce(&At<'a>) -> Result<T>) -> Result<Option<T>> {
        if self.is_null() {
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    /// A list of ints (a Python tuple of axes).
    pub fn ints(&self) -> Result<Vec<i64>> {
        self.list()?.iter().map(At::int).collect()
    }
}

/// A dict being read: keys are looked up by name, and [`Dict::finish`] refuses the rest.
pub(crate) struct Dict<'a> {
    entries: &'a [(String, PyValue)],
    pub path: String,
    used: Vec<bool>,
}

impl<'a> Dict<'a> {
    /// The value under `key` (the last one when repeated, as Python keeps), if any.
    pub fn opt(&mut self, key: &str) -> Option<At<'a>> {
        let mut found = None;
        for (j, (k, v)) in self.entries.iter().enumerate() {
            if k == key {
                self.used[j] = true;
                found = Some(v);
            }
        }
        found.map(|v| At::new(v, format!("{}.{key}", self.path)))
    }

    /// The value under `key`; missing is an error.
    pub fn req(&mut self, key: &str) -> Result<At<'a>> {
        self.opt(key).ok_or_else(|| ConfigError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        })
    }

    /// Whether `key` is present (without marking it read).
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Errors on the first key not read.
    pub fn finish(self) -> Result<()> {
        match self.used.iter().position(|u| !u) {
            Some(j) => Err(ConfigError::UnknownKey {
                path: self.path,
                key: self.entries[j].0.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A Keras object envelope `{"module", "class_name", "config", "registered_name"}` being read.
pub(crate) struct Envelope<'a> {
    pub path: String,
    pub module: &'a str,
    pub class_name: &'a str,
    pub registered_name: Option<&'a str>,
    pub config: At<'a>,
    /// The envelope dict, for extra keys (`build_config`, `compile_config`).
    pub rest: Dict<'a>,
}

impl<'a> Envelope<'a> {
    pub fn read(at: &At<'a>) -> Result<Envelope<'a>> {
        let mut d = at.dict()?;
        let module = d.req("module")?.str()?;
        let class_name = d.req("class_name")?.str()?;
        let config = d.req("config")?;
        let registered_name = d.req("registered_name")?.nullable(|a| a.str())?;
        Ok(Envelope {
            path: at.path.clone(),
            module,
            class_name,
            registered_name,
            config,
            rest: d,
        })
    }

    pub fn unknown(&self) -> ConfigError {
        ConfigError::UnknownClass {
            path: self.path.clone(),
            class_name: format!("{}.{}", self.module, self.class_name),
        }
    }

    /// Checks module and registered name for a class of `module` (`hgq>Class` when `hgq`).
    pub fn expect(&self, module: &str, hgq: bool) -> Result<()> {
        let reg_ok = if hgq {
            self.registered_name
                .is_some_and(|r| r.strip_prefix("hgq>") == Some(self.class_name))
        } else {
            self.registered_name.is_none()
        };
        if self.module != module || !reg_ok {
            return Err(ConfigError::UnknownClass {
                path: self.path.clone(),
                class_name: format!(
                    "{}.{} (registered as {:?})",
                    self.module, self.class_name, self.registered_name
                ),
            });
        }
        Ok(())
    }

    /// Errors on extra envelope keys.
    pub fn finish(self) -> Result<()> {
        self.rest.finish()
    }
}

/// Builds `{"module", "class_name", "config", "registered_name"}`.
pub(crate) fn envelope(module: &str, class_name: &str, config: PyValue, hgq: bool) -> PyValue {
    PyValue::Dict(vec![
        ("module".into(), PyValue::str(module)),
        ("class_name".into(), PyValue::str(class_name)),
        ("config".into(), config),
        (
            "registered_name".into(),
            if hgq {
                PyValue::Str(format!("hgq>{class_name}"))
            } else {
                PyValue::Null
            },
        ),
    ])
}

/// A dict from key/value pairs.
pub(crate) fn dict<const N: usize>(items: [(&str, PyValue); N]) -> PyValue {
    PyValue::Dict(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `null` or the value.
pub(crate) fn opt<T>(v: &Option<T>, f: impl FnOnce(&T) -> PyValue) -> PyValue {
    v.as_ref().map_or(PyValue::Null, f)
}

/// A list of ints.
pub(crate) fn ints(v: &[i64]) -> PyValue {
    PyValue::List(v.iter().map(|&i| PyValue::Int(i)).collect())
}
