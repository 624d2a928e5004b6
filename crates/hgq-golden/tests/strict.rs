//! The checker is strict: a copy of the seed-0 golden set, corrupted in one way at a time, must
//! give a mismatch or an error each time (and the `hgq-golden` binary a non-zero exit), while
//! the untouched copy passes.
use hgq_golden::{GoldenError, GradTolerance, Options, Presence, Report};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A copy of `tests/data/golden` (its JSON files) in a fresh temporary directory, removed on
/// drop.
struct TempSet(PathBuf);

impl TempSet {
    /// The whole set.
    fn new() -> TempSet {
        TempSet::only(&[])
    }

    /// The files of `families` alone (all of them when empty).
    fn only(families: &[&str]) -> TempSet {
        static N: AtomicUsize = AtomicUsize::new(0);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden");
        let dir = std::env::temp_dir().join(format!(
            "hgq-golden-strict-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let family = p.file_stem().unwrap().to_str().unwrap();
            if p.extension().is_some_and(|x| x == "json")
                && (families.is_empty() || families.contains(&family))
            {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        TempSet(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Rewrites `family.json` after `f` changed it.
    fn edit(&self, family: &str, f: impl FnOnce(&mut Value)) {
        let p = self.0.join(format!("{family}.json"));
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    }

    fn remove(&self, family: &str) {
        std::fs::remove_file(self.0.join(format!("{family}.json"))).unwrap();
    }

    fn manifest(&self, text: &str) {
        std::fs::write(self.0.join("manifest.json"), text).unwrap();
    }

    fn check(&self, family: &str) -> Result<Report, GoldenError> {
        hgq_golden::check(&self.0, family)
    }

    /// The binary's exit status and output on this set.
    fn run_binary(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_hgq-golden"))
            .arg(&self.0)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for TempSet {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn f32_of(v: &Value) -> Option<f32> {
    v.as_f64().map(|f| f as f32)
}

/// Whether a case is one of float32 (no `"dtype"`: the cases these helpers pick from).
fn is_f32(case: &Value) -> bool {
    case.get("dtype").is_none()
}

/// The first (case, element) of `cases[*][key]` (a path of keys into the case) whose value
/// satisfies `pick`, among the float32 cases.
fn find(v: &Value, key: &[&str], pick: impl Fn(f32) -> bool) -> (usize, usize) {
    for (c, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        if !is_f32(case) {
            continue;
        }
        let a = key.iter().fold(case, |v, k| &v[*k]);
        if let Some(j) = a
            .as_array()
            .and_then(|a| a.iter().position(|e| f32_of(e).is_some_and(&pick)))
        {
            return (c, j);
        }
    }
    panic!("no element of {key:?} qualifies");
}

/// The element of largest magnitude of `cases[*][key]`, among the float32 cases.
fn largest(v: &Value, key: &[&str]) -> (usize, usize) {
    let mut best = (0, 0, 0f32);
    for (c, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        if !is_f32(case) {
            continue;
        }
        let a = key.iter().fold(case, |v, k| &v[*k]);
        for (j, e) in a.as_array().unwrap().iter().enumerate() {
            if let Some(w) = f32_of(e).filter(|w| w.is_finite() && w.abs() > best.2.abs()) {
                best = (c, j, w);
            }
        }
    }
    assert!(best.2 != 0.0, "{key:?} all zero");
    (best.0, best.1)
}

fn at<'a>(v: &'a mut Value, c: usize, key: &[&str], j: usize) -> &'a mut Value {
    let case = &mut v["cases"][c];
    &mut key.iter().fold(case, |v, k| &mut v[*k])[j]
}

/// The next float32 above.
fn ulp_up(w: f32) -> f32 {
    f32::from_bits(w.to_bits() + 1)
}

fn assert_one_mismatch(r: &Report, what: &str) {
    assert_eq!(r.mismatches, 1, "{what}: {r}\n{}", r.details.join("\n"));
}

#[test]
fn the_untouched_copy_passes() {
    let set = TempSet::new();
    // Rewriting through serde_json keeps every value.
    set.edit("fixed_fn", |_| {});
    set.edit("layers", |_| {});
    for (family, presence) in hgq_golden::plan(set.path()).unwrap() {
        assert_eq!(presence, Presence::Present, "{family}");
        let r = set.check(family).unwrap();
        assert!(r.cases > 0 && r.mismatches == 0, "{r}");
    }
    let (ok, out) = set.run_binary();
    assert!(ok, "{out}");
    // Every family: the torch-only ones named as such after the set's.
    for family in hgq_golden::TORCH_FAMILIES {
        assert!(out.contains(&hgq_golden::torch_only(family)), "{out}");
    }
}

/// The families of hgq2's layer models (hgq-torch's alone) asked of the core binary: each named
/// as torch-only with how to run it, none checked, and no failure, alone or beside a family of
/// the set (which is checked as usual).
#[test]
fn torch_only_families_are_named_not_failed() {
    let set = TempSet::only(&["minimal_i"]);
    let run = |families: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hgq-golden"));
        cmd.arg(set.path());
        for f in families {
            cmd.args(["--family", f]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    for family in hgq_golden::TORCH_FAMILIES {
        let (ok, out) = run(&[family]);
        assert!(ok, "{out}");
        assert!(out.contains(&hgq_golden::torch_only(family)), "{out}");
        assert!(out.contains("golden: cases=0 mismatches=0"), "{out}");
    }
    let (ok, out) = run(&["minimal_i", "more"]);
    assert!(ok, "{out}");
    assert!(out.contains("minimal_i: cases=4 mismatches=0"), "{out}");
    assert!(out.contains(&hgq_golden::torch_only("more")), "{out}");
    // An unknown family still fails.
    let (ok, out) = run(&["nonesuch"]);
    assert!(!ok, "{out}");
}

#[test]
fn a_forward_value_one_ulp_off_is_found() {
    let set = TempSet::new();
    for family in ["fixed_fn", "ap_fixed", "float_fn", "minimal_i"] {
        set.edit(family, |v| {
            let (c, j) = find(v, &["y"], |w| w.is_finite() && w != 0.0);
            let e = at(v, c, &["y"], j);
            *e = json!(ulp_up(f32_of(e).unwrap()) as f64);
        });
        assert_one_mismatch(&set.check(family).unwrap(), family);
    }
    // A layer quantizer's inference output (call 1).
    set.edit("layers", |v| {
        let y = v["cases"][5]["calls"][1]["y"].as_array_mut().unwrap();
        let e = y
            .iter_mut()
            .find(|e| f32_of(e).is_some_and(|w| w > 0.0))
            .unwrap();
        *e = json!(ulp_up(f32_of(e).unwrap()) as f64);
    });
    assert_one_mismatch(&set.check("layers").unwrap(), "layers");
    let (ok, out) = set.run_binary();
    assert!(!ok, "the binary must fail:\n{out}");
}

#[test]
fn a_gradient_off_by_1e_3_relative_is_found() {
    for (family, key) in [
        ("fixed_fn", &["grad", "x"][..]),
        ("fixed_fn", &["grad", "f"][..]),
        ("float_fn", &["grad", "m"][..]),
        ("float_fn", &["grad", "e0"][..]),
    ] {
        let set = TempSet::new();
        set.edit(family, |v| {
            let (c, j) = largest(v, key);
            let e = at(v, c, key, j);
            *e = json!((f32_of(e).unwrap() * 1.001) as f64);
        });
        assert_one_mismatch(&set.check(family).unwrap(), &format!("{key:?}"));
    }
    // A layer quantizer's bit-width gradient (a sum over the elements that share it).
    let set = TempSet::new();
    set.edit("layers", |v| {
        let g = &mut v["cases"][0]["calls"][0]["grad"];
        let name = g
            .as_object()
            .unwrap()
            .keys()
            .find(|k| *k != "x")
            .unwrap()
            .clone();
        let a = g[&name].as_array_mut().unwrap();
        let j = (0..a.len())
            .max_by(|&p, &q| {
                let (p, q) = (f32_of(&a[p]).unwrap(), f32_of(&a[q]).unwrap());
                p.abs().total_cmp(&q.abs())
            })
            .unwrap();
        let w = f32_of(&a[j]).unwrap();
        assert!(w.abs() > 1e-2, "{name}: {w}");
        a[j] = json!((w * 1.001) as f64);
    });
    assert_one_mismatch(&set.check("layers").unwrap(), "layers grad");
    let (ok, out) = set.run_binary();
    assert!(!ok, "the binary must fail:\n{out}");
}

/// The tolerance of [`Options`] applies to every element (not only to the few the report lists).
#[test]
fn a_looser_tolerance_applies_to_every_element() {
    let set = TempSet::new();
    // Twelve gradient elements of one case 1e-3 relative off (more than the 5 lines a report
    // lists per quantity).
    let mut changed = 0;
    set.edit("fixed_fn", |v| {
        let g = v["cases"][1]["grad"]["x"].as_array_mut().unwrap();
        for e in g.iter_mut() {
            let w = f32_of(e).unwrap();
            if w.abs() > 1e-2 && changed < 12 {
                *e = json!((w * 1.001) as f64);
                changed += 1;
            }
        }
    });
    assert_eq!(changed, 12);
    let core = hgq_golden::CoreBackend;
    let strict = set.check("fixed_fn").unwrap();
    assert_one_mismatch(&strict, "strict");
    let loose = Options {
        grad: GradTolerance {
            rel: 1e-2,
            abs: 1e-6,
        },
    };
    // hgq-core runs each fixed_fn case as called, on the scalar path, at every SIMD level
    // this CPU has and in float64: each run's twelve are counted.
    let runs = 3 + hgq_core::kernels::SimdLevel::available().len();
    let r = hgq_golden::check_with_options(set.path(), "fixed_fn", &core, &loose).unwrap();
    assert_eq!((r.mismatches, r.tolerated), (0, 12 * runs), "{r}");
    // The thirteenth, 10% off, is outside even the looser tolerance: found though it comes after
    // the twelve.
    set.edit("fixed_fn", |v| {
        let g = v["cases"][1]["grad"]["x"].as_array_mut().unwrap();
        let mut seen = 0;
        for e in g.iter_mut() {
            let w = f32_of(e).unwrap();
            if w.abs() > 1e-2 {
                seen += 1;
                if seen == 13 {
                    *e = json!((w * 1.1) as f64);
                }
            }
        }
        assert!(seen >= 13);
    });
    let r = hgq_golden::check_with_options(set.path(), "fixed_fn", &core, &loose).unwrap();
    assert_eq!((r.mismatches, r.tolerated), (1, 12 * runs), "{r}");
}

#[test]
fn a_negative_zero_for_a_positive_one_is_found() {
    let set = TempSet::new();
    for family in ["fixed_fn", "minimal_i"] {
        set.edit(family, |v| {
            let (c, j) = find(v, &["y"], |w| w.to_bits() == 0);
            *at(v, c, &["y"], j) = json!(-0.0f64);
        });
        assert_one_mismatch(&set.check(family).unwrap(), family);
    }
    set.edit("layers", |v| {
        for case in v["cases"].as_array_mut().unwrap() {
            for call in case["calls"].as_array_mut().unwrap() {
                let y = call["y"].as_array_mut().unwrap();
                if let Some(e) = y.iter_mut().find(|e| f32_of(e).unwrap().to_bits() == 0) {
                    *e = json!(-0.0f64);
                    return;
                }
            }
        }
        panic!("no +0.0 output in layers");
    });
    assert_one_mismatch(&set.check("layers").unwrap(), "layers");
    // ap_fixed compares numbers (the firmware has no negative zero): -0.0 for +0.0 is no
    // mismatch there, by design.
    set.edit("ap_fixed", |v| {
        let (c, j) = find(v, &["y"], |w| w.to_bits() == 0);
        *at(v, c, &["y"], j) = json!(-0.0f64);
    });
    assert_eq!(set.check("ap_fixed").unwrap().mismatches, 0);
    let (ok, out) = set.run_binary();
    assert!(!ok, "the binary must fail:\n{out}");
}

/// Each edit alone must make the family an error whose message contains `why`.
fn assert_error(family: &str, why: &str, edit: impl FnOnce(&mut Value)) {
    let set = TempSet::only(&[family]);
    set.edit(family, edit);
    match set.check(family) {
        Err(GoldenError::Format { why: w, .. }) if w.contains(why) => {}
        other => panic!("{family}: expected an error with {why:?}, got {other:?}"),
    }
}

/// The first training call of the first case whose quantizer trains bit widths.
fn training_call(v: &mut Value) -> &mut Value {
    &mut v["cases"][0]["calls"][0]
}

#[test]
fn a_missing_key_is_an_error() {
    assert_error("fixed_fn", "missing key \"dy\"", |v| {
        v["cases"][3].as_object_mut().unwrap().remove("dy");
    });
    assert_error("fixed_fn", "missing grad", |v| {
        v["cases"][0].as_object_mut().unwrap().remove("grad");
    });
    assert_error("float_fn", "missing key \"e0\"", |v| {
        v["cases"][5]["grad"].as_object_mut().unwrap().remove("e0");
    });
    assert_error("ap_fixed", "missing key \"y\"", |v| {
        v["cases"][7].as_object_mut().unwrap().remove("y");
    });
    assert_error("minimal_i", "missing", |v| {
        v["cases"][0].as_object_mut().unwrap().remove("symmetric");
    });
    assert_error("layers", "missing grad in training call 0", |v| {
        assert_eq!(training_call(v)["training"], json!(true));
        training_call(v).as_object_mut().unwrap().remove("grad");
    });
    assert_error("layers", "grad has no \"x\"", |v| {
        training_call(v)["grad"]
            .as_object_mut()
            .unwrap()
            .remove("x");
    });
    assert_error("layers", "grad in call 1, which does not train", |v| {
        let g = training_call(v)["grad"].clone();
        assert_eq!(v["cases"][0]["calls"][1]["training"], json!(false));
        v["cases"][0]["calls"][1]["grad"] = g;
    });
    assert_error("layers", "property \"epsilon\" is missing or null", |v| {
        v["cases"][4]["initial_props"]["epsilon"] = Value::Null;
    });
    assert_error("layers", "property \"min\" is missing or null", |v| {
        v["cases"][9]["calls"][2]["props_after"]
            .as_object_mut()
            .unwrap()
            .remove("min");
    });
    assert_error("layers", "missing state_after", |v| {
        v["cases"][2]["calls"][3]
            .as_object_mut()
            .unwrap()
            .remove("state_after");
    });
    assert_error("layers", "missing bool \"trainable\"", |v| {
        let s = v["cases"][0]["initial_state"].as_object_mut().unwrap();
        s.values_mut()
            .next()
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("trainable");
    });
    assert_error("layers", "missing bool \"is_weight\"", |v| {
        v["cases"][0]["quantizer"]
            .as_object_mut()
            .unwrap()
            .remove("is_weight");
    });
    assert_error("config", "missing json", |v| {
        v["cases"][0].as_object_mut().unwrap().remove("json");
    });
    assert_error("fixed_fn", "missing string \"name\"", |v| {
        v["cases"][0].as_object_mut().unwrap().remove("name");
    });

    // A trained variable's gradient left out by the reference is a mismatch.
    let set = TempSet::new();
    set.edit("layers", |v| {
        let g = training_call(v)["grad"].as_object_mut().unwrap();
        let name = g.keys().find(|k| *k != "x").unwrap().clone();
        g.remove(&name);
    });
    assert_one_mismatch(&set.check("layers").unwrap(), "a left-out gradient");
    let (ok, out) = set.run_binary();
    assert!(!ok, "the binary must fail:\n{out}");
}

#[test]
fn a_missing_family_file_fails_unless_declared_absent() {
    let set = TempSet::new();
    set.remove("float_fn");
    let plan = hgq_golden::plan(set.path()).unwrap();
    assert!(plan.contains(&("float_fn", Presence::Missing)), "{plan:?}");
    assert!(matches!(
        set.check("float_fn"),
        Err(GoldenError::Missing { .. })
    ));
    let (ok, out) = set.run_binary();
    assert!(!ok && out.contains("float_fn: error:"), "{out}");

    // Declared absent, with a reason: skipped, and the rest passes.
    set.manifest(r#"{"absent": ["float_fn"], "reason": "a test"}"#);
    let plan = hgq_golden::plan(set.path()).unwrap();
    assert!(
        plan.contains(&("float_fn", Presence::Absent("a test".into()))),
        "{plan:?}"
    );
    assert!(matches!(
        set.check("float_fn"),
        Err(GoldenError::Absent { .. })
    ));
    let (ok, out) = set.run_binary();
    assert!(ok && out.contains("float_fn: absent"), "{out}");

    // Malformed manifests, and the words of each one's error.
    for (bad, why) in [
        (
            r#"{"absent": ["float_fn"]}"#,
            r#"missing non-empty string "reason""#,
        ),
        (
            r#"{"absent": ["float_fn"], "reason": " "}"#,
            r#"missing non-empty string "reason""#,
        ),
        (
            r#"{"absent": ["float"], "reason": "a typo"}"#,
            r#""absent" names "float", not a family"#,
        ),
        (
            r#"{"absent": ["float_fn", "float_fn"], "reason": "twice"}"#,
            r#""absent" names "float_fn" twice"#,
        ),
        (
            r#"{"absent": ["float_fn"], "reason": "x", "comment": "unknown key"}"#,
            r#"unknown key "comment""#,
        ),
        (
            r#"{"absent": "float_fn", "reason": "not a list"}"#,
            r#"missing array "absent""#,
        ),
        (r#"["float_fn"]"#, "not a JSON object"),
        // Declared absent, but the file is there.
        (
            r#"{"absent": ["float_fn", "layers"], "reason": "a contradiction"}"#,
            r#"declares "layers" absent, but layers.json is there"#,
        ),
    ] {
        set.manifest(bad);
        let r = hgq_golden::plan(set.path());
        assert!(
            matches!(&r, Err(GoldenError::Format { why: w, .. }) if w.contains(why)),
            "{bad}: {r:?}"
        );
        let (ok, out) = set.run_binary();
        assert!(!ok, "{bad}: the binary must fail:\n{out}");
    }
}

/// The golden-wide set declares every family but ap_fixed absent.
#[test]
fn the_wide_set_declares_its_absent_families() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden-wide");
    for (family, presence) in hgq_golden::plan(&dir).unwrap() {
        match family {
            "ap_fixed" => assert_eq!(presence, Presence::Present),
            _ => assert!(matches!(presence, Presence::Absent(_)), "{family}"),
        }
    }
}

/// The log2-boundary excuse: only at boundary elements, only for the other exponent's value, and
/// at most `boundary_cap(n)` per case.
#[test]
fn the_log2_boundary_excuse_is_narrow() {
    use hgq_golden::{boundary_cap, minifloat_with_exponent};
    // 23 mantissa bits, exponents -15..=15: just below 2^k the float32 exponent k rounds the
    // significand up to 2^k, the exact one (k - 1) keeps x.
    let (m, e, e0, g) = (23.0f32, 5.0f32, 0.0f32, 0.75f32);
    let mut boundary: Vec<(f32, [f32; 5])> = Vec::new();
    for k in 2..15 {
        for sign in [1.0f32, -1.0] {
            let x = sign * f32::from_bits(2f32.powi(k).to_bits() - 1);
            if !hgq_core::log2_boundary(x) {
                continue;
            }
            let float_e = (x.abs() + 1e-7).log2().floor();
            assert_eq!(float_e, k as f32);
            let exact = minifloat_with_exponent(x, m, e, e0, g, float_e - 1.0);
            let ours = minifloat_with_exponent(x, m, e, e0, g, float_e);
            // Independent of the formula: the exact exponent keeps x, float32's gives 2^k.
            assert_eq!(exact[0], x);
            assert_eq!(ours[0], sign * 2f32.powi(k));
            boundary.push((x, exact));
        }
    }
    assert!(boundary.len() >= 4, "{} boundary inputs", boundary.len());

    let n = 200;
    assert_eq!(boundary_cap(n), 2);
    // A float_fn case of n elements: ordinary inputs, then `nb` boundary ones at the front
    // whose reference is the exact exponent's result; `wrong` spoils the first reference value.
    let case = |nb: usize, wrong: bool| -> Value {
        let mut x: Vec<f32> = (0..n).map(|j| (j as f32 - 100.0) * 0.37).collect();
        for (j, (b, _)) in boundary.iter().take(nb).enumerate() {
            x[j] = *b;
        }
        let (mv, ev, e0v, dy) = (vec![m; n], vec![e; n], vec![e0; n], vec![g; n]);
        let mut out = [(); 5].map(|_| vec![0f32; n]);
        let [y, dx, dm, de, de0] = &mut out;
        let s = [n];
        let t = |d| hgq_core::TensorRef::new(d, &s).unwrap();
        hgq_core::minifloat_backward(
            t(&x),
            t(&mv),
            t(&ev),
            t(&e0v),
            &dy,
            y,
            hgq_core::FloatGrads { dx, dm, de, de0 },
        )
        .unwrap();
        for (j, (_, exact)) in boundary.iter().take(nb).enumerate() {
            for q in 0..5 {
                out[q][j] = exact[q];
            }
        }
        if wrong {
            // One ulp up would be float32's exponent's value: one down is neither.
            out[0][0] = f32::from_bits(out[0][0].to_bits() - 1);
        }
        let f = |v: &[f32]| json!(v.iter().map(|&a| a as f64).collect::<Vec<_>>());
        json!({
            "name": format!("boundary/{nb}/{wrong}"), "shape": [n],
            "x": f(&x), "m": f(&mv), "e": f(&ev), "e0": f(&e0v), "dy": f(&dy), "y": f(&out[0]),
            "grad": {"x": f(&out[1]), "m": f(&out[2]), "e": f(&out[3]), "e0": f(&out[4])},
        })
    };
    let set = TempSet::new();
    set.edit("float_fn", |v| {
        v["cases"] = json!([
            case(0, false),
            case(2, false),
            case(3, false),
            case(1, true)
        ]);
    });
    let r = set.check("float_fn").unwrap();
    let details = r.details.join("\n");
    // Cases 0 and 1 pass (1 with two excused elements); 2 excuses three, over the cap; 3's
    // reference is neither exponent's value.
    assert_eq!(r.cases, 4);
    assert_eq!(r.mismatches, 2, "{r}\n{details}");
    assert!(
        details.contains("boundary/3/false: 3 of 200 elements differ"),
        "{details}"
    );
    assert!(details.contains("boundary/1/true: y[0]"), "{details}");
    for d in r
        .details
        .iter()
        .filter(|d| d.starts_with("boundary/2/false"))
    {
        assert!(d.contains("(float32 log2 boundary"), "{d}");
    }
    // Excused elements: 2 and 3 (the spoiled one's gradients are the same for both exponents).
    assert_eq!(r.boundary, 5, "{r}\n{details}");
}

/// The first case of `dtype` and its first element of `key` whose value satisfies `pick`
/// (values as f64, which holds every dtype's).
fn find_typed(v: &Value, dtype: &str, key: &[&str], pick: impl Fn(f64) -> bool) -> (usize, usize) {
    for (c, case) in v["cases"].as_array().unwrap().iter().enumerate() {
        if case.get("dtype").and_then(Value::as_str) != Some(dtype) {
            continue;
        }
        let a = key.iter().fold(case, |v, k| &v[*k]);
        if let Some(j) = a
            .as_array()
            .and_then(|a| a.iter().position(|e| e.as_f64().is_some_and(&pick)))
        {
            return (c, j);
        }
    }
    panic!("no {dtype} element of {key:?} qualifies");
}

/// The next value of `dtype` above the finite, non-zero `w` (one ulp of that type).
fn ulp_up_typed(dtype: &str, w: f64) -> f64 {
    let up = |bits: u64| bits + 1;
    match dtype {
        "float64" => f64::from_bits(up(w.to_bits())),
        "float16" => {
            let h = half::f16::from_f64(w);
            half::f16::from_bits(up(h.to_bits() as u64) as u16).to_f64()
        }
        "bfloat16" => {
            let h = half::bf16::from_f64(w);
            half::bf16::from_bits(up(h.to_bits() as u64) as u16).to_f64()
        }
        other => panic!("{other}"),
    }
}

const TYPED: [&str; 3] = ["float64", "float16", "bfloat16"];

/// Both families hold cases of every dtype, and they pass.
#[test]
fn the_dtype_cases_are_there_and_pass() {
    let set = TempSet::only(&["fixed_fn", "float_fn"]);
    for family in ["fixed_fn", "float_fn"] {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(set.path().join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        for dtype in TYPED {
            let n = v["cases"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["dtype"] == json!(dtype))
                .count();
            assert!(n >= 12, "{family}: {n} {dtype} cases");
        }
        let r = set.check(family).unwrap();
        assert!(r.mismatches == 0 && r.skipped == 0, "{r}");
    }
}

#[test]
fn a_typed_forward_value_one_ulp_off_is_found() {
    for family in ["fixed_fn", "float_fn"] {
        for dtype in TYPED {
            let set = TempSet::only(&[family]);
            set.edit(family, |v| {
                let (c, j) = find_typed(v, dtype, &["y"], |w| w.is_finite() && w != 0.0);
                let e = at(v, c, &["y"], j);
                *e = json!(ulp_up_typed(dtype, e.as_f64().unwrap()));
            });
            let r = set.check(family).unwrap();
            assert_one_mismatch(&r, &format!("{family} {dtype}"));
            let d = r.details.join("\n");
            assert!(d.contains(&format!("({dtype} bits")), "{d}");
        }
    }
}

/// A float64 `grad.f` (compared for float64, unlike hgq-core's float64 run of the float32
/// cases) 1e-3 relative off, and a float16/bfloat16 gradient outside its type's tolerance
/// (16 ulps) are found; one ulp of a float16 gradient of magnitude >= 1 is within it.
#[test]
fn a_typed_gradient_off_is_found() {
    let big = |w: f64| w.is_finite() && w.abs() >= 1.0;
    let set = TempSet::only(&["fixed_fn"]);
    set.edit("fixed_fn", |v| {
        let (c, j) = find_typed(v, "float64", &["grad", "f"], big);
        let e = at(v, c, &["grad", "f"], j);
        *e = json!(e.as_f64().unwrap() * 1.001);
    });
    assert_one_mismatch(&set.check("fixed_fn").unwrap(), "float64 grad.f");
    for (family, dtype, key) in [
        ("fixed_fn", "float16", &["grad", "i"][..]),
        ("fixed_fn", "bfloat16", &["grad", "f"][..]),
        ("float_fn", "float16", &["grad", "m"][..]),
        ("float_fn", "bfloat16", &["grad", "e"][..]),
    ] {
        let set = TempSet::only(&[family]);
        set.edit(family, |v| {
            let (c, j) = find_typed(v, dtype, key, big);
            let e = at(v, c, key, j);
            let mut w = e.as_f64().unwrap();
            for _ in 0..16 {
                w = ulp_up_typed(dtype, w);
            }
            *e = json!(w);
        });
        assert_one_mismatch(&set.check(family).unwrap(), &format!("{dtype} {key:?}"));
    }
    let set = TempSet::only(&["fixed_fn"]);
    set.edit("fixed_fn", |v| {
        let (c, j) = find_typed(v, "float16", &["grad", "i"], big);
        let e = at(v, c, &["grad", "i"], j);
        *e = json!(ulp_up_typed("float16", e.as_f64().unwrap()));
    });
    let r = set.check("fixed_fn").unwrap();
    assert_eq!(r.mismatches, 0, "{r}\n{}", r.details.join("\n"));
}

#[test]
fn an_unknown_dtype_or_a_value_the_dtype_does_not_hold_is_an_error() {
    let typed_case = |v: &Value, dtype: &str| {
        v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["dtype"] == json!(dtype))
            .unwrap()
    };
    for family in ["fixed_fn", "float_fn"] {
        assert_error(family, "unknown dtype \"float8\"", |v| {
            v["cases"][0]["dtype"] = json!("float8");
        });
        assert_error(family, "\"dtype\" is 16, not a string", |v| {
            v["cases"][0]["dtype"] = json!(16);
        });
        assert_error(family, "x[0] = 1e-1 is not a float16 value", |v| {
            let c = typed_case(v, "float16");
            v["cases"][c]["x"][0] = json!(0.1);
        });
        assert_error(family, "is not a bfloat16 value", |v| {
            let c = typed_case(v, "bfloat16");
            v["cases"][c]["dy"][1] = json!(1.0 + 2f64.powi(-12));
        });
        assert_error(family, "is not a float16 value", |v| {
            let c = typed_case(v, "float16");
            v["cases"][c]["grad"]["x"][2] = json!(1.0 + 2f64.powi(-20));
        });
    }
    // A float32 case marked float16 whose values float16 does not hold.
    assert_error("fixed_fn", "is not a float16 value", |v| {
        v["cases"][0]["dtype"] = json!("float16");
    });
}

/// A backend without typed runs (the trait's default): the dtype cases are skipped, counted and
/// named in the report's line, not checked and not silently dropped.
#[test]
fn a_backend_without_a_dtype_reports_its_cases_skipped() {
    struct NoTyped;
    impl hgq_golden::Backend for NoTyped {
        fn name(&self) -> &'static str {
            "no-typed"
        }
        fn fixed_fn(
            &self,
            q: hgq_core::FixedPoint,
            shape: &[usize],
            x: &[f32],
            k: &[f32],
            i: &[f32],
            f: &[f32],
            training: bool,
            dy: &[f32],
        ) -> Result<hgq_golden::FixedFnOut, String> {
            hgq_golden::CoreBackend.fixed_fn(q, shape, x, k, i, f, training, dy)
        }
        fn layer(
            &self,
            spec: &hgq_config::convert::QuantizerSpec,
            input_shape: &[usize],
        ) -> Result<Box<dyn hgq_golden::LayerUnderTest>, String> {
            hgq_golden::CoreBackend.layer(spec, input_shape)
        }
    }
    let set = TempSet::only(&["fixed_fn"]);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(set.path().join("fixed_fn.json")).unwrap())
            .unwrap();
    let cases = v["cases"].as_array().unwrap();
    let typed = cases.iter().filter(|c| !is_f32(c)).count();
    let r = hgq_golden::check_with(set.path(), "fixed_fn", &NoTyped).unwrap();
    assert_eq!((r.cases, r.skipped), (cases.len() - typed, typed), "{r}");
    assert_eq!(r.mismatches, 0, "{r}");
    let line = r.to_string();
    assert!(
        line.contains(&format!(
            "skipped={typed} (float64 on no-typed; float16 on no-typed; bfloat16 on no-typed)"
        )),
        "{line}"
    );
}
