//! The golden-vector checker shared by `cargo test` and `cargo xtask golden`.
//!
//! Each family file (`{"meta", "family", "cases"}`, see `tests/data/golden/README.md`) is run
//! through hgq-core and compared: forward values bit for bit (NaN equals NaN), gradients within
//! 1e-5 relative or 1e-6 absolute. Minifloat elements whose exponent is decided by float32
//! `log2` rounding up just below a power of two (SPEC 8) are named and counted apart.
use serde_json::Value;
use std::fmt;
use std::path::Path;
use thiserror::Error;

pub mod backend;
mod families;
pub mod json;

pub use backend::{Backend, CoreBackend, FixedFnOut, LayerOut, LayerUnderTest, VarInfo};

pub use families::{BACKEND_FAMILIES, FAMILIES};

/// Why a family could not be checked at all.
#[derive(Debug, Error)]
pub enum GoldenError {
    /// The file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not JSON or not the expected layout.
    #[error("{path}: not understood: {why}")]
    Format {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// No such family.
    #[error("unknown family {0:?}; known: {1}")]
    UnknownFamily(String, String),
}

/// The result of checking one family.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// The family name.
    pub family: String,
    /// Cases checked.
    pub cases: usize,
    /// Cases with at least one mismatch.
    pub mismatches: usize,
    /// Elements that differ only at the float32 log2 boundary (minifloat).
    pub boundary: usize,
    /// A line for each mismatch (and each boundary element).
    pub details: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: cases={} mismatches={}",
            self.family, self.cases, self.mismatches
        )?;
        if self.boundary > 0 {
            write!(f, " log2-boundary={}", self.boundary)?;
        }
        Ok(())
    }
}

/// Checks family `family` from `dir/<family>.json` on hgq-core.
pub fn check(dir: &Path, family: &str) -> Result<Report, GoldenError> {
    check_with(dir, family, &CoreBackend)
}

/// Checks family `family` from `dir/<family>.json`, running the quantizers on `backend`
/// (families other than [`BACKEND_FAMILIES`] always run on hgq-core).
pub fn check_with(dir: &Path, family: &str, backend: &dyn Backend) -> Result<Report, GoldenError> {
    let f = FAMILIES
        .iter()
        .find(|(name, _)| *name == family)
        .ok_or_else(|| {
            GoldenError::UnknownFamily(
                family.to_string(),
                FAMILIES.iter().map(|f| f.0).collect::<Vec<_>>().join(", "),
            )
        })?;
    let path = dir.join(format!("{family}.json"));
    let p = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| GoldenError::Io {
        path: p.clone(),
        source,
    })?;
    let v: Value = json::parse(&text).map_err(|why| GoldenError::Format {
        path: p.clone(),
        why,
    })?;
    if v.get("family").and_then(Value::as_str) != Some(family) {
        return Err(GoldenError::Format {
            path: p,
            why: format!("\"family\" is not {family:?}"),
        });
    }
    let cases = v
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| GoldenError::Format {
            path: p.clone(),
            why: "no \"cases\" array".into(),
        })?;
    let mut report = Report {
        family: family.to_string(),
        ..Default::default()
    };
    for (n, case) in cases.iter().enumerate() {
        let name = case
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let mut c = families::Case::new(&name);
        (f.1)(case, &mut c, backend).map_err(|why| GoldenError::Format {
            path: p.clone(),
            why: format!("case {n} ({name}): {why}"),
        })?;
        report.cases += 1;
        report.boundary += c.boundary;
        if c.mismatches > 0 {
            report.mismatches += 1;
        }
        report.details.append(&mut c.details);
    }
    Ok(report)
}

/// The value comparison: the same bits, any NaN equal to any NaN.
pub fn same_value(got: f32, want: f32) -> bool {
    (got.is_nan() && want.is_nan()) || got.to_bits() == want.to_bits()
}

/// The gradient comparison: within 1e-5 relative or 1e-6 absolute; non-finite values exactly.
pub fn close_grad(got: f32, want: f32) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    if !got.is_finite() || !want.is_finite() {
        return got == want;
    }
    ((got as f64) - (want as f64)).abs() <= 1e-6 + 1e-5 * (want as f64).abs()
}
mod config;
mod layers;
