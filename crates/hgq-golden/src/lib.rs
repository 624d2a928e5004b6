//! The golden-vector checker shared by `cargo test` and `cargo xtask golden`.
//!
//! Each family file (`{"meta", "family", "cases"}`, see `tests/data/golden/README.md`) is run
//! through hgq-core (or another [`Backend`]) and compared, strictly:
//!
//! - forward values bit for bit (NaN equals NaN; `ap_fixed`, firmware without a negative zero,
//!   as numbers);
//! - gradients, every element, within a [`GradTolerance`] (by default 1e-5 relative plus 1e-6
//!   absolute; a backend that sums in another order, such as torch on CUDA, passes a looser one
//!   through [`Options`] and [`check_with_options`]);
//! - every quantity the reference wrote must be there: a training call of the `layers` family
//!   without `grad`, a null or missing property (`bits`, `fbits`, `min`, `max`, `epsilon`), a
//!   missing key of a case are errors ([`GoldenError::Format`]);
//! - a minifloat element may differ only where float32 `log2` rounds up to an integer just
//!   below a power of two (SPEC 8's log2 boundary), only by giving the value of the other
//!   exponent there, and only for at most [`boundary_cap`] elements of a case
//!   (see [`minifloat_with_exponent`]);
//! - a golden set (a directory) must hold a file for every family of [`FAMILIES`] unless its
//!   `manifest.json` declares the family absent with a reason ([`Manifest`], [`plan`]).
use serde_json::Value;
use std::fmt;
use std::path::Path;
use thiserror::Error;

pub mod backend;
mod boundary;
mod families;
pub mod json;
mod set;

pub use backend::{Backend, CoreBackend, FixedFnOut, LayerOut, LayerUnderTest, VarInfo};

pub use boundary::{boundary_cap, minifloat_with_exponent};
pub use families::{BACKEND_FAMILIES, FAMILIES};
pub use set::{MANIFEST, Manifest, Presence, plan};

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
    /// The family's file is missing and the set's `manifest.json` does not declare it absent.
    #[error("{path}: missing, and {MANIFEST} of the set does not declare {family:?} absent")]
    Missing {
        /// The file that should be there.
        path: String,
        /// The family.
        family: String,
    },
    /// The family's file is missing because the set's `manifest.json` declares it absent.
    #[error("{family:?} is absent from {dir} on purpose ({MANIFEST}): {reason}")]
    Absent {
        /// The set.
        dir: String,
        /// The family.
        family: String,
        /// The manifest's reason.
        reason: String,
    },
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
    /// Elements that differ only at the float32 log2 boundary (minifloat), each giving the
    /// value of the other exponent there, at most [`boundary_cap`] per case.
    pub boundary: usize,
    /// Gradient elements outside the default [`GradTolerance`] but within the one the check
    /// ran with ([`Options::grad`]); 0 under the default.
    pub tolerated: usize,
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
        if self.tolerated > 0 {
            write!(f, " grad-tolerated={}", self.tolerated)?;
        }
        Ok(())
    }
}

/// How close a gradient must be to the reference's: `|got - want| <= abs + rel * |want|`
/// (computed in f64); NaN only equals NaN and infinities only themselves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradTolerance {
    /// Relative part.
    pub rel: f64,
    /// Absolute part.
    pub abs: f64,
}

impl GradTolerance {
    /// The default: 1e-5 relative plus 1e-6 absolute (float32 sums of a few terms in another
    /// order than the reference's).
    pub const DEFAULT: GradTolerance = GradTolerance {
        rel: 1e-5,
        abs: 1e-6,
    };

    /// Whether `got` is close enough to `want`.
    pub fn accepts(&self, got: f32, want: f32) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if !got.is_finite() || !want.is_finite() {
            return got == want;
        }
        ((got as f64) - (want as f64)).abs() <= self.abs + self.rel * (want as f64).abs()
    }
}

impl Default for GradTolerance {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a check compares.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    /// The gradient tolerance, applied to every gradient element of every family (values are
    /// always compared bit for bit).
    pub grad: GradTolerance,
}

/// Checks family `family` from `dir/<family>.json` on hgq-core.
pub fn check(dir: &Path, family: &str) -> Result<Report, GoldenError> {
    check_with(dir, family, &CoreBackend)
}

/// Checks family `family` from `dir/<family>.json`, running the quantizers on `backend`
/// (families other than [`BACKEND_FAMILIES`] always run on hgq-core), with the default
/// [`Options`].
pub fn check_with(dir: &Path, family: &str, backend: &dyn Backend) -> Result<Report, GoldenError> {
    check_with_options(dir, family, backend, &Options::default())
}

/// [`check_with`] under `options` (a gradient tolerance other than the default).
///
/// A missing file is [`GoldenError::Absent`] when the set's `manifest.json` declares the family
/// absent and [`GoldenError::Missing`] otherwise.
pub fn check_with_options(
    dir: &Path,
    family: &str,
    backend: &dyn Backend,
    options: &Options,
) -> Result<Report, GoldenError> {
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
    if !path.exists() {
        let manifest = Manifest::read(dir)?;
        return Err(match manifest.absent.iter().any(|a| a == family) {
            true => GoldenError::Absent {
                dir: dir.display().to_string(),
                family: family.to_string(),
                reason: manifest.reason,
            },
            false => GoldenError::Missing {
                path: p,
                family: family.to_string(),
            },
        });
    }
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
            .ok_or_else(|| GoldenError::Format {
                path: p.clone(),
                why: format!("case {n}: missing string \"name\""),
            })?
            .to_string();
        let mut c = families::Case::new(&name, options.grad);
        (f.1)(case, &mut c, backend).map_err(|why| GoldenError::Format {
            path: p.clone(),
            why: format!("case {n} ({name}): {why}"),
        })?;
        report.cases += 1;
        report.boundary += c.boundary.len();
        report.tolerated += c.tolerated;
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

/// The default gradient comparison ([`GradTolerance::DEFAULT`]): within 1e-5 relative plus
/// 1e-6 absolute; non-finite values exactly.
pub fn close_grad(got: f32, want: f32) -> bool {
    GradTolerance::DEFAULT.accepts(got, want)
}
mod config;
mod layers;
