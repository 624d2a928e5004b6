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
//! - a case of `fixed_fn` or `float_fn` is computed in its `"dtype"` ([`Dtype`]: `float32` when
//!   the key is absent, `float64`, `float16`, `bfloat16`; another name is an error), every value
//!   of it read exactly (one the dtype does not hold is an error) and run in that element type:
//!   values bit for bit as that type; float64 gradients (`grad.f` too) as float32's; a
//!   float16/bfloat16 gradient rounded to the type first (hgq-core computes them in float32,
//!   the reference op by op in the type) and then within [`Dtype::grad_tolerance`] (2 ulps of
//!   the type at the bottom of a binade, `2^-(p-2)` relative for `p` significand bits, plus the
//!   type's smallest normal absolute, where the reference's subnormal intermediates lose bits),
//!   or the looser [`Options`] tolerance if that is looser;
//! - a backend that does not run a dtype ([`Backend::fixed_fn_typed`] giving `None`) has those
//!   cases counted as skipped ([`Report::skipped`], printed in the report's line), not as checked;
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

pub use backend::{
    Backend, CoreBackend, FixedFnOut, LayerOut, LayerUnderTest, TypedInputs, TypedOut, VarInfo,
};

pub use boundary::{boundary_cap, minifloat_with_exponent};
pub use families::{BACKEND_FAMILIES, FAMILIES, TORCH_FAMILIES, torch_only};
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
    /// Cases not checked because the backend does not run their dtype (not counted in
    /// `cases`).
    pub skipped: usize,
    /// Why, once per reason (e.g. `float16 on torch`).
    pub skipped_why: Vec<String>,
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
        if self.skipped > 0 {
            write!(
                f,
                " skipped={} ({})",
                self.skipped,
                self.skipped_why.join("; ")
            )?;
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
        self.accepts_f64(got as f64, want as f64)
    }

    /// [`GradTolerance::accepts`] for values of any dtype, held exactly by f64.
    pub fn accepts_f64(&self, got: f64, want: f64) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if !got.is_finite() || !want.is_finite() {
            return got == want;
        }
        (got - want).abs() <= self.abs + self.rel * want.abs()
    }

    /// The looser of the two in each part.
    pub fn max(self, other: GradTolerance) -> GradTolerance {
        GradTolerance {
            rel: self.rel.max(other.rel),
            abs: self.abs.max(other.abs),
        }
    }
}

/// The element type a case of `fixed_fn` or `float_fn` was computed in by the reference (its
/// `"dtype"` key; `float32` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `float32` (the default).
    F32,
    /// `float64`.
    F64,
    /// `float16` (IEEE binary16).
    F16,
    /// `bfloat16`.
    Bf16,
}

impl Dtype {
    /// Every dtype, in the order of the golden files.
    pub const ALL: [Dtype; 4] = [Dtype::F32, Dtype::F64, Dtype::F16, Dtype::Bf16];

    /// The name the golden files use (torch's).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }

    /// The dtype named `name`.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Significand bits, the leading one included (24, 53, 11, 8).
    pub fn digits(self) -> u32 {
        match self {
            Dtype::F32 => 24,
            Dtype::F64 => 53,
            Dtype::F16 => 11,
            Dtype::Bf16 => 8,
        }
    }

    /// Whether hgq-core computes this type in a wider one (float16, bfloat16: in float32).
    pub fn is_narrow(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::Bf16)
    }

    /// `v` rounded to this type (to nearest even), as f64.
    pub fn round(self, v: f64) -> f64 {
        match self {
            Dtype::F32 => v as f32 as f64,
            Dtype::F64 => v,
            Dtype::F16 => half::f16::from_f64(v).to_f64(),
            Dtype::Bf16 => half::bf16::from_f64(v).to_f64(),
        }
    }

    /// Whether this type holds `v` exactly (NaN and the infinities included).
    pub fn holds(self, v: f64) -> bool {
        v.is_nan() || self.round(v).to_bits() == v.to_bits()
    }

    /// The bits of `v` (held by this type) in this type's width, for reports.
    pub fn bits(self, v: f64) -> String {
        match self {
            Dtype::F32 => format!("{:08x}", (v as f32).to_bits()),
            Dtype::F64 => format!("{:016x}", v.to_bits()),
            Dtype::F16 => format!("{:04x}", half::f16::from_f64(v).to_bits()),
            Dtype::Bf16 => format!("{:04x}", half::bf16::from_f64(v).to_bits()),
        }
    }

    /// The gradient tolerance of this type's cases: [`GradTolerance::DEFAULT`] for float32 and
    /// float64; for float16 and bfloat16 (compared after rounding ours to the type) `2^-(p-2)`
    /// relative (2 ulps at the bottom of a binade; the reference rounds every operation of its
    /// backward to the type, hgq-core once) plus the type's smallest normal absolute (below it
    /// the reference's intermediates are subnormal and lose bits): 2^-9 and 2^-14 for float16,
    /// 2^-6 and 2^-126 for bfloat16.
    pub fn grad_tolerance(self) -> GradTolerance {
        match self {
            Dtype::F32 | Dtype::F64 => GradTolerance::DEFAULT,
            Dtype::F16 => GradTolerance {
                rel: 2f64.powi(-9),
                abs: 2f64.powi(-14),
            },
            Dtype::Bf16 => GradTolerance {
                rel: 2f64.powi(-6),
                abs: 2f64.powi(-126),
            },
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
        if let Some(why) = c.skipped {
            report.skipped += 1;
            if !report.skipped_why.contains(&why) {
                report.skipped_why.push(why);
            }
            continue;
        }
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
