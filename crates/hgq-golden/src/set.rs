//! A golden set: a directory with one file per family, and an optional `manifest.json` that
//! declares families absent on purpose.
//!
//! ```json
//! {"absent": ["fixed_fn", "float_fn"], "reason": "why the set has no such files"}
//! ```
//!
//! Both keys are required when the file exists, and no other key is allowed; every name must
//! be a family of [`FAMILIES`], named once, and without a file in the set (a declared-absent
//! family that has a file is a contradiction, an error). A set without a manifest must hold
//! every family.
use crate::{FAMILIES, GoldenError};
use serde_json::Value;
use std::path::Path;

/// The manifest's file name in a set.
pub const MANIFEST: &str = "manifest.json";

/// A set's `manifest.json` (the default, no absent family, when there is none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The families the set leaves out on purpose.
    pub absent: Vec<String>,
    /// Why (empty only when nothing is absent).
    pub reason: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`, or gives the empty manifest when there is none. Checks the
    /// layout and the family names (not the files: see [`plan`]).
    pub fn read(dir: &Path) -> Result<Manifest, GoldenError> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Ok(Manifest::default());
        }
        let p = path.display().to_string();
        let format = |why: String| GoldenError::Format {
            path: p.clone(),
            why,
        };
        let text = std::fs::read_to_string(&path).map_err(|source| GoldenError::Io {
            path: p.clone(),
            source,
        })?;
        let v = crate::json::parse(&text).map_err(format)?;
        let obj = v
            .as_object()
            .ok_or_else(|| format("not a JSON object".into()))?;
        if let Some(k) = obj
            .keys()
            .find(|k| !["absent", "reason"].contains(&k.as_str()))
        {
            return Err(format(format!(
                "unknown key {k:?} (a manifest has \"absent\" and \"reason\")"
            )));
        }
        let absent = obj
            .get("absent")
            .and_then(Value::as_array)
            .ok_or_else(|| format("missing array \"absent\"".into()))?
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format(format!("\"absent\" holds {a}, not a family name")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reason = obj
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| format("missing non-empty string \"reason\"".into()))?
            .to_string();
        for (j, a) in absent.iter().enumerate() {
            if !FAMILIES.iter().any(|f| f.0 == a) {
                return Err(format(format!(
                    "\"absent\" names {a:?}, not a family; known: {}",
                    FAMILIES.iter().map(|f| f.0).collect::<Vec<_>>().join(", ")
                )));
            }
            if absent[..j].contains(a) {
                return Err(format(format!("\"absent\" names {a:?} twice")));
            }
        }
        Ok(Manifest { absent, reason })
    }
}

/// Whether a set has a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Its file is there: check it.
    Present,
    /// No file, declared absent by the manifest (with its reason): skip it.
    Absent(String),
    /// No file and not declared absent: a failure.
    Missing,
}

/// Every family of [`FAMILIES`], in order, with its presence in the set `dir`. An error when
/// the manifest is malformed or declares absent a family whose file is there.
pub fn plan(dir: &Path) -> Result<Vec<(&'static str, Presence)>, GoldenError> {
    if !dir.is_dir() {
        return Err(GoldenError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let manifest = Manifest::read(dir)?;
    FAMILIES
        .iter()
        .map(|&(family, _)| {
            let file = dir.join(format!("{family}.json")).exists();
            let declared = manifest.absent.iter().any(|a| a == family);
            let presence = match (file, declared) {
                (true, false) => Presence::Present,
                (false, true) => Presence::Absent(manifest.reason.clone()),
                (false, false) => Presence::Missing,
                (true, true) => {
                    return Err(GoldenError::Format {
                        path: dir.join(MANIFEST).display().to_string(),
                        why: format!("declares {family:?} absent, but {family}.json is there"),
                    });
                }
            };
            Ok((family, presence))
        })
        .collect()
}
