//! The `config` family: Keras JSON read, resolved and written back byte for byte.
//!
//! Each case's `json` is parsed twice: as a plain Python-JSON tree ([`PyValue`]) and as typed
//! hgq-config objects. Both must write the exact input bytes; every quantizer configuration
//! in it must resolve to the parameters its JSON states; and when the `python` expression is a
//! plain constructor call without overrides, the typed builder must give the same bytes
//! (the defaults table).
use crate::families::Case;
use hgq_config::{
    BitwidthMapperConfig, Constraint, Flavor, InitValue, KerasModel, Params, Place, PyValue, QType,
    QuantizerConfig, QuantizerLayer, Regularizer, find_quantizers,
};
use serde_json::Value;

pub(crate) fn config(c: &Value, case: &mut Case, _: &dyn crate::Backend) -> Result<(), String> {
    let json = c
        .get("json")
        .and_then(Value::as_str)
        .ok_or("missing json")?;
    let python = c.get("python").and_then(Value::as_str).unwrap_or("");
    let tree = match PyValue::parse(json) {
        Ok(t) => t,
        Err(e) => {
            case.fail(format!("parse: {e}"));
            return Ok(());
        }
    };
    if tree.to_json() != json {
        case.fail("the generic tree does not write the input bytes back".into());
    }
    let class = match tree.get("class_name") {
        Some(PyValue::Str(s)) => s.as_str(),
        _ => "",
    };
    // Typed read and write-back.
    let typed = match class {
        "QuantizerConfig" | "HardTanhConfig" | "HardSigmoidConfig" => {
            QuantizerConfig::from_json(json).map(|q| q.to_json())
        }
        "Quantizer" => QuantizerLayer::from_json(json).map(|q| q.to_json()),
        "DefaultBitwidthMapper" => BitwidthMapperConfig::from_json(json).map(|m| m.to_json()),
        _ => KerasModel::from_json(json).map(|m| m.to_json()),
    };
    match typed {
        Ok(back) if back == json => {}
        Ok(back) => case.fail(format!(
            "written back differs at byte {}",
            first_diff(&back, json)
        )),
        Err(e) => case.fail(format!("typed read: {e}")),
    }
    if class == "DefaultBitwidthMapper" {
        check_mapper(&tree, case);
    }
    // Every quantizer configuration resolves to what its JSON says.
    match find_quantizers(&tree) {
        Ok(found) => {
            if found.is_empty() && class != "DefaultBitwidthMapper" {
                case.fail("no quantizer configuration found".into());
            }
            for f in &found {
                let Some(raw) = get(&tree, &f.location) else {
                    case.fail(format!("{}: location not found", f.json_path()));
                    continue;
                };
                check_resolved(&f.config, raw, &f.json_path(), case);
            }
        }
        Err(e) => case.fail(format!("extract: {e}")),
    }
    // The defaults table: a bare constructor call must build the same bytes.
    if let Some(built) = build_plain(python) {
        match built {
            Ok(q) => {
                let want = match class {
                    "Quantizer" => tree
                        .get("config")
                        .and_then(|c| c.get("config"))
                        .map(PyValue::to_json),
                    _ => Some(json.to_string()),
                };
                if want.as_deref() != Some(q.to_json().as_str()) {
                    case.fail(format!("builder for `{python}` writes different bytes"));
                }
            }
            Err(e) => case.fail(format!("builder for `{python}`: {e}")),
        }
    }
    Ok(())
}

fn first_diff(a: &str, b: &str) -> usize {
    a.bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn get<'a>(v: &'a PyValue, loc: &[hgq_config::PathSeg]) -> Option<&'a PyValue> {
    let mut v = v;
    for seg in loc {
        v = match (v, seg) {
            (PyValue::Dict(_), hgq_config::PathSeg::Key(k)) => v.get(k)?,
            (PyValue::List(l), hgq_config::PathSeg::Index(i)) => l.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// `QuantizerConfig('q', 'place')`, `QuantizerConfig('dummy')`, `HardSigmoidConfig()`,
/// `HardTanhConfig(symmetric=True|False)`, optionally wrapped in `Quantizer(...)`: the
/// configuration the typed builder gives for it. `None` for anything else.
fn build_plain(python: &str) -> Option<hgq_config::Result<QuantizerConfig>> {
    let mut s = python.trim();
    if let Some(rest) = s.strip_prefix("Quantizer(") {
        s = rest.split_once(')').map(|(a, _)| a)?;
        s = s.trim();
        if !s.starts_with("QuantizerConfig(") {
            return None;
        }
        // Quantizer(QuantizerConfig(...)) loses the closing paren above.
        let owned = format!("{s})");
        return build_plain(&owned);
    }
    let (func, args) = s.strip_suffix(')')?.split_once('(')?;
    let args: Vec<&str> = args
        .split(',')
        .map(|a| a.trim().trim_matches('\''))
        .filter(|a| !a.is_empty())
        .collect();
    match func {
        "HardSigmoidConfig" if args.is_empty() => Some(QuantizerConfig::hard_sigmoid().build()),
        "HardTanhConfig" => match args.as_slice() {
            [] | ["symmetric=False"] => Some(QuantizerConfig::hard_tanh(false).build()),
            ["symmetric=True"] => Some(QuantizerConfig::hard_tanh(true).build()),
            _ => None,
        },
        "QuantizerConfig" => {
            if args.iter().any(|a| a.contains('=')) {
                return None;
            }
            let q = args.first().copied().unwrap_or("default");
            let place: Place = match args.get(1) {
                Some(p) => p.parse().ok()?,
                None => Place::Datalane,
            };
            let q = match q {
                "kbi" => Some(QType::Kbi),
                "kif" => Some(QType::Kif),
                "float" => Some(QType::Float),
                "dummy" => Some(QType::Dummy),
                "default" => None,
                _ => return None,
            };
            Some(match q {
                Some(q) => QuantizerConfig::builder(q, place).build(),
                None => QuantizerConfig::builder_default(place).build(),
            })
        }
        _ => None,
    }
}

/// Compares a number in the JSON with a resolved one (same type, same value; NaN = NaN).
fn num_eq(raw: Option<&PyValue>, got: f64) -> bool {
    match raw {
        Some(PyValue::Int(i)) => *i as f64 == got,
        Some(PyValue::Float(f)) => f.to_bits() == got.to_bits() || (f.is_nan() && got.is_nan()),
        Some(PyValue::Bool(b)) => (*b as u8 as f64) == got,
        Some(d @ PyValue::Dict(_)) => match (d.get("class_name"), d.get("config")) {
            (Some(PyValue::Str(c)), Some(cfg)) if c == "Constant" => num_eq(cfg.get("value"), got),
            (Some(PyValue::Str(c)), _) if c == "Zeros" => got == 0.0,
            (Some(PyValue::Str(c)), _) if c == "Ones" => got == 1.0,
            _ => false,
        },
        _ => false,
    }
}

fn constraint_eq(raw: Option<&PyValue>, got: &Option<Constraint>) -> bool {
    let cfg = |k: &str| raw.and_then(|r| r.get("config")).and_then(|c| c.get(k));
    let class = match raw.and_then(|r| r.get("class_name")) {
        Some(PyValue::Str(s)) => s.as_str(),
        _ => "",
    };
    match got {
        None => matches!(raw, Some(PyValue::Null)),
        Some(Constraint::MinMax {
            min_value,
            max_value,
        }) => {
            class == "MinMax"
                && num_eq(cfg("min_value"), *min_value)
                && num_eq(cfg("max_value"), *max_value)
        }
        Some(Constraint::Min(v)) => class == "Min" && num_eq(cfg("min_value"), *v),
        Some(Constraint::Max(v)) => class == "Max" && num_eq(cfg("max_value"), *v),
        Some(Constraint::Constant(v)) => class == "Constant" && num_eq(cfg("value"), *v),
        Some(Constraint::NonNeg) => class == "NonNeg",
    }
}

fn regularizer_eq(raw: Option<&PyValue>, got: &Option<Regularizer>) -> bool {
    let cfg = |k: &str| raw.and_then(|r| r.get("config")).and_then(|c| c.get(k));
    let class = match raw.and_then(|r| r.get("class_name")) {
        Some(PyValue::Str(s)) => s.as_str(),
        _ => "",
    };
    match got {
        None => matches!(raw, Some(PyValue::Null)),
        Some(Regularizer::MonoL1(l)) => class == "MonoL1" && num_eq(cfg("l1"), *l),
        Some(Regularizer::L1(l)) => class == "L1" && num_eq(cfg("l1"), *l),
        Some(Regularizer::L2(l)) => class == "L2" && num_eq(cfg("l2"), *l),
        Some(Regularizer::L1L2 { l1, l2 }) => {
            class == "L1L2" && num_eq(cfg("l1"), *l1) && num_eq(cfg("l2"), *l2)
        }
    }
}

fn axes_eq(raw: Option<&PyValue>, got: &Option<Vec<i64>>) -> bool {
    match (raw, got) {
        (Some(PyValue::Null), None) => true,
        (Some(PyValue::List(l)), Some(g)) => {
            l.len() == g.len() && l.iter().zip(g).all(|(a, b)| *a == PyValue::Int(*b))
        }
        _ => false,
    }
}

/// The resolved parameters against the JSON they came from. Keys a HardTanh/HardSigmoid
/// config does not write are checked against the values the class fixes.
fn check_resolved(q: &QuantizerConfig, raw: &PyValue, at: &str, case: &mut Case) {
    let Some(cfg) = raw.get("config") else {
        case.fail(format!("{at}: no config"));
        return;
    };
    let mut bad = |what: &str| case.fail(format!("{at}: {what} differs from the JSON"));
    let k = |key: &str| cfg.get(key);
    let s = |key: &str| match cfg.get(key) {
        Some(PyValue::Str(s)) => s.to_ascii_lowercase(),
        _ => String::new(),
    };
    if s("q_type") != q.q_type().as_str() {
        bad("q_type");
    }
    if s("place") != q.place.as_str() {
        bad("place");
    }
    let opt_num = |raw: Option<&PyValue>, v: Option<f64>| match v {
        None => matches!(raw, Some(PyValue::Null)),
        Some(v) => num_eq(raw, v),
    };
    if !opt_num(k("scaler"), q.scaler) {
        bad("scaler");
    }
    if !opt_num(k("qnoise_factor"), q.qnoise_factor) {
        bad("qnoise_factor");
    }
    // Values the flavour fixes (absent from its JSON).
    let (fk0, fi0, fic, fover, faffine) = match q.flavor {
        Flavor::Plain => (None, None, None, None, None),
        Flavor::HardTanh { symmetric } => (
            Some(1.0),
            Some(0.0),
            Some(Constraint::Constant(0.0)),
            Some(if symmetric { "sat_sym" } else { "sat" }),
            None,
        ),
        Flavor::HardSigmoid => (
            Some(1.0),
            Some(1.0),
            Some(Constraint::Constant(1.0)),
            Some("sat"),
            Some((0.25, 0.5)),
        ),
    };
    if q.flavor == Flavor::Plain {
        let ok = match (k("affine"), q.affine) {
            (Some(PyValue::Null), None) => true,
            (Some(PyValue::List(l)), Some((a, b))) if l.len() == 2 => {
                num_eq(l.first(), a) && num_eq(l.get(1), b)
            }
            _ => false,
        };
        if !ok {
            bad("affine");
        }
    } else if q.affine != faffine {
        bad("affine (fixed by the class)");
    }
    let init = |key: &str, v: &InitValue, fixed: Option<f64>| match fixed {
        Some(f) => v.as_f64() == f,
        None => num_eq(k(key), v.as_f64()),
    };
    let mode = |key: &str, v: &str, fixed: Option<&str>| match fixed {
        Some(f) => v.eq_ignore_ascii_case(f),
        None => s(key) == v.to_ascii_lowercase(),
    };
    let common = match &q.params {
        Params::Kbi(p) => {
            for (key, v, fixed) in [
                ("k0", &p.k0, fk0),
                ("b0", &p.b0, None),
                ("i0", &p.i0, fi0),
                ("i_decay_speed", &p.i_decay_speed, None),
            ] {
                if !init(key, v, fixed) {
                    bad(key);
                }
            }
            if !mode("round_mode", p.round_mode.as_str(), None) {
                bad("round_mode");
            }
            if !mode("overflow_mode", p.overflow_mode.as_str(), fover) {
                bad("overflow_mode");
            }
            if !constraint_eq(k("bc"), &p.bc) {
                bad("bc");
            }
            let ic_ok = match fic {
                Some(c) => p.ic == Some(c),
                None => constraint_eq(k("ic"), &p.ic),
            };
            if !ic_ok {
                bad("ic");
            }
            if !regularizer_eq(k("br"), &p.br) {
                bad("br");
            }
            if !regularizer_eq(k("ir"), &p.ir) {
                bad("ir");
            }
            Some(&p.common)
        }
        Params::Kif(p) => {
            for (key, v, fixed) in [
                ("k0", &p.k0, fk0),
                ("i0", &p.i0, fi0),
                ("f0", &p.f0, None),
                ("i_decay_speed", &p.i_decay_speed, None),
            ] {
                if !init(key, v, fixed) {
                    bad(key);
                }
            }
            if !mode("round_mode", p.round_mode.as_str(), None) {
                bad("round_mode");
            }
            if !mode("overflow_mode", p.overflow_mode.as_str(), fover) {
                bad("overflow_mode");
            }
            let ic_ok = match fic {
                Some(c) => p.ic == Some(c),
                None => constraint_eq(k("ic"), &p.ic),
            };
            if !ic_ok {
                bad("ic");
            }
            if !constraint_eq(k("fc"), &p.fc) {
                bad("fc");
            }
            if !regularizer_eq(k("ir"), &p.ir) {
                bad("ir");
            }
            if !regularizer_eq(k("fr"), &p.fr) {
                bad("fr");
            }
            Some(&p.common)
        }
        Params::Float(p) => {
            for (key, v) in [("m0", &p.m0), ("e0", &p.e0), ("e00", &p.e00)] {
                if !init(key, v, None) {
                    bad(key);
                }
            }
            for (key, c) in [("mc", &p.mc), ("ec", &p.ec), ("e0c", &p.e0c)] {
                if !constraint_eq(k(key), c) {
                    bad(key);
                }
            }
            for (key, r) in [("mr", &p.mr), ("er", &p.er), ("e0r", &p.e0r)] {
                if !regularizer_eq(k(key), r) {
                    bad(key);
                }
            }
            Some(&p.common)
        }
        Params::Dummy => None,
    };
    if let Some(c) = common {
        if !axes_eq(k("homogeneous_axis"), &c.homogeneous_axis) {
            bad("homogeneous_axis");
        }
        if !axes_eq(k("heterogeneous_axis"), &c.heterogeneous_axis) {
            bad("heterogeneous_axis");
        }
        if k("trainable") != Some(&PyValue::Bool(c.trainable)) {
            bad("trainable");
        }
        if k("is_weight") != Some(&PyValue::Bool(c.is_weight)) {
            bad("is_weight");
        }
        let mapper_ok = match &c.bw_mapper {
            None => matches!(k("bw_mapper"), Some(PyValue::Null)),
            Some(m) => k("bw_mapper") == Some(&m.to_value()),
        };
        if !mapper_ok {
            bad("bw_mapper");
        }
    }
}

fn check_mapper(tree: &PyValue, case: &mut Case) {
    let m = match BitwidthMapperConfig::from_value(tree) {
        Ok(m) => m,
        Err(e) => {
            case.fail(format!("mapper: {e}"));
            return;
        }
    };
    let cfg = tree.get("config");
    let k = |key: &str| cfg.and_then(|c| c.get(key));
    if !axes_eq(k("heterogeneous_axis"), &m.heterogeneous_axis)
        || !axes_eq(k("homogeneous_axis"), &m.homogeneous_axis)
        || k("_shape_inferenced") != Some(&PyValue::Bool(m.shape_inferenced))
    {
        case.fail("mapper: resolved axes differ from the JSON".into());
    }
}
