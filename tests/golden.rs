//! Every golden family of every set under `tests/data/` (the reference's vectors, seed 0, and
//! any other set made with `gen.py --seed N`) must check with zero mismatches. A set must hold
//! every family unless its `manifest.json` declares the family absent (`golden-wide`: ap_fixed
//! only); a missing, undeclared family fails.
use hgq_golden::Presence;
use std::path::{Path, PathBuf};

fn sets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/data")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("golden"))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden sets under {}", root.display());
    v
}

fn check(family: &str) {
    let mut checked = 0;
    for dir in sets() {
        let plan = hgq_golden::plan(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        match &plan.iter().find(|(f, _)| *f == family).expect("a family").1 {
            Presence::Present => {}
            Presence::Absent(_) => continue,
            Presence::Missing => panic!(
                "{}: no {family}.json, and its manifest.json does not declare it absent",
                dir.display()
            ),
        }
        let r =
            hgq_golden::check(&dir, family).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for d in r.details.iter().take(20) {
            eprintln!("{d}");
        }
        assert!(r.cases > 0, "{}: no cases", dir.display());
        assert_eq!(r.mismatches, 0, "{}: {r}", dir.display());
        checked += 1;
    }
    assert!(checked > 0, "no set has {family}.json");
}

/// Every set's manifest is well formed and every family is there or declared absent.
#[test]
fn every_set_is_complete() {
    for dir in sets() {
        let plan = hgq_golden::plan(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (family, presence) in plan {
            assert_ne!(
                presence,
                Presence::Missing,
                "{}: {family}.json missing and not declared absent",
                dir.display()
            );
        }
    }
}

#[test]
fn fixed_fn() {
    check("fixed_fn");
}

#[test]
fn ap_fixed() {
    check("ap_fixed");
}

#[test]
fn float_fn() {
    check("float_fn");
}

#[test]
fn minimal_i() {
    check("minimal_i");
}

#[test]
fn layers() {
    check("layers");
}

#[test]
fn config() {
    check("config");
}

/// The checker must fail on a corrupted set: flip one output of each value family.
#[test]
fn checker_detects_a_wrong_value() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    let tmp = std::env::temp_dir().join(format!("hgq-golden-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for family in ["fixed_fn", "ap_fixed", "layers"] {
        let text = std::fs::read_to_string(src.join(format!("{family}.json"))).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let case = &mut v["cases"][0];
        let y = if family == "layers" {
            &mut case["calls"][0]["y"]
        } else {
            &mut case["y"]
        };
        let first = y[0].as_f64().unwrap_or(0.0);
        y[0] = serde_json::json!(first + 0.125);
        std::fs::write(tmp.join(format!("{family}.json")), v.to_string()).unwrap();
        let r = hgq_golden::check(&tmp, family).unwrap();
        assert_eq!(r.mismatches, 1, "{family}: a changed output must be found");
    }
    assert!(
        matches!(
            hgq_golden::check(&tmp, "float_fn"),
            Err(hgq_golden::GoldenError::Missing { .. })
        ),
        "a missing file is an error"
    );
    let float_fn = hgq_golden::plan(&tmp).unwrap()[2].clone();
    assert_eq!(float_fn, ("float_fn", Presence::Missing));
    std::fs::remove_dir_all(&tmp).ok();
}
