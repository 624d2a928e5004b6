//! Keras' `Flatten` and `Reshape`.
use super::{product, value_err};
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::DTypePolicy;
use crate::pyjson::PyValue;

/// Keras' `Flatten()` (channels last): `(batch, a, b, ...)` becomes `(batch, a * b * ...)`.
///
/// ```
/// use hgq_config::sequential::FlattenSpec;
/// let f = FlattenSpec::new().name("flat");
/// assert_eq!(f.name.as_deref(), Some("flat"));
/// assert!(f.trainable);
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FlattenSpec {
    /// The layer name; `None` takes Keras' automatic name (`flatten`, `flatten_1`, ...).
    pub name: Option<String>,
    /// `trainable` as written (it changes nothing in a layer without weights).
    pub trainable: bool,
}

impl FlattenSpec {
    /// `Flatten()`: unnamed, trainable.
    pub fn new() -> Self {
        FlattenSpec {
            name: None,
            trainable: true,
        }
    }

    spec_setters!(name, trainable);

    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            ("data_format", PyValue::str("channels_last")),
        ])
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        Ok(FlattenSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            trainable: c.req("trainable")?.bool()?,
        })
    }
}

/// Keras' `Reshape(target_shape)`: the shape without batch becomes `target_shape`, in which
/// one size may be `-1` (the size that holds the rest).
///
/// ```
/// use hgq_config::sequential::ReshapeSpec;
/// let r = ReshapeSpec::new([-1, 3]);
/// assert_eq!(r.target_shape, [-1, 3]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReshapeSpec {
    /// The layer name; `None` takes Keras' automatic name (`reshape`, `reshape_1`, ...).
    pub name: Option<String>,
    /// The output shape without batch, as given (at most one `-1`), written as given.
    pub target_shape: Vec<i64>,
    /// `trainable` as written (it changes nothing in a layer without weights).
    pub trainable: bool,
}

impl ReshapeSpec {
    /// `Reshape(target_shape)`: unnamed, trainable.
    pub fn new(target_shape: impl Into<Vec<i64>>) -> Self {
        ReshapeSpec {
            name: None,
            target_shape: target_shape.into(),
            trainable: true,
        }
    }

    spec_setters!(name, trainable);

    /// The output shape (without batch) for an input of `input`: `target_shape` with its
    /// `-1` resolved. Errors name `{at}.config.target_shape` (or one of its sizes).
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        let path = format!("{at}.config.target_shape");
        if self.target_shape.is_empty() {
            return Err(value_err(path, "an empty target shape"));
        }
        let mut unknown = None;
        let mut known = Vec::with_capacity(self.target_shape.len());
        for (i, &t) in self.target_shape.iter().enumerate() {
            match (t, unknown) {
                (-1, None) => unknown = Some(i),
                (-1, Some(_)) => {
                    return Err(value_err(format!("{path}[{i}]"), "a second -1"));
                }
                _ => match usize::try_from(t) {
                    Ok(n) if n > 0 => known.push(n),
                    _ => {
                        return Err(value_err(
                            format!("{path}[{i}]"),
                            format!("size {t} (a positive size or one -1)"),
                        ));
                    }
                },
            }
        }
        let too_big = || value_err(path.clone(), "too many values");
        let n_in = product(input).ok_or_else(too_big)?;
        let n_known = product(&known).ok_or_else(too_big)?;
        let fits = match unknown {
            None => n_in == n_known,
            Some(_) => n_in % n_known == 0,
        };
        if !fits {
            return Err(value_err(
                path.clone(),
                format!(
                    "{input:?} ({n_in} values) cannot be reshaped to {:?}",
                    self.target_shape
                ),
            ));
        }
        Ok(self
            .target_shape
            .iter()
            .map(|&t| if t == -1 { n_in / n_known } else { t as usize })
            .collect())
    }

    pub(crate) fn config_value(&self, name: &str) -> PyValue {
        dict([
            ("name", PyValue::str(name)),
            ("trainable", PyValue::Bool(self.trainable)),
            ("dtype", DTypePolicy::default().to_value()),
            (
                "target_shape",
                PyValue::List(self.target_shape.iter().map(|&t| PyValue::Int(t)).collect()),
            ),
        ])
    }

    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        Ok(ReshapeSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            target_shape: c.req("target_shape")?.ints()?,
            trainable: c.req("trainable")?.bool()?,
        })
    }
}
