//! Property test: Keras model documents with one value changed (a dimension to 0, -1 or 2^36,
//! a mode or an equation to another string, a list shortened or lengthened, a flag flipped)
//! never make `Functional::from_keras_json` or the built model's forward, backward and export
//! panic: each is built and runs, or is a `TorchError`.
//!
//! The documents are hgq2's own (`tests/data/reference`: every layer kind this crate builds,
//! in graphs, chains and merges); the mutations are drawn from a fixed seed, so a failure names
//! a case that reruns the same way (`HGQ_MUTATIONS=N` draws more per document).
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::Rng;
use hgq_config::PyValue;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::Functional;
use tch::{Device, Kind, Tensor, nn};

/// A step from a value to one inside it.
#[derive(Clone, Copy)]
enum Step {
    Key(usize),
    Index(usize),
}

/// The paths of every value in `v` (the root first).
fn paths(v: &PyValue, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(at.clone());
    match v {
        PyValue::List(items) => items.iter().enumerate().for_each(|(i, item)| {
            at.push(Step::Index(i));
            paths(item, at, out);
            at.pop();
        }),
        PyValue::Dict(entries) => entries.iter().enumerate().for_each(|(i, (_, item))| {
            at.push(Step::Key(i));
            paths(item, at, out);
            at.pop();
        }),
        _ => {}
    }
}

fn at<'a>(v: &'a mut PyValue, path: &[Step]) -> &'a mut PyValue {
    path.iter().fold(v, |v, s| match (v, s) {
        (PyValue::List(items), Step::Index(i)) => &mut items[*i],
        (PyValue::Dict(entries), Step::Key(i)) => &mut entries[*i].1,
        _ => unreachable!("paths come from the same tree"),
    })
}

/// Every string in `v`: the pool a string is swapped for (another mode, class, name, axis).
fn strings(v: &PyValue, out: &mut Vec<String>) {
    match v {
        PyValue::Str(s) => out.push(s.clone()),
        PyValue::List(items) => items.iter().for_each(|i| strings(i, out)),
        PyValue::Dict(entries) => entries.iter().for_each(|(_, i)| strings(i, out)),
        _ => {}
    }
}

/// One change of the value at a random path; a description of it.
fn mutate(doc: &mut PyValue, pool: &[String], rng: &mut Rng) -> String {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = &all[rng.below(all.len())];
    let v = at(doc, path);
    let before = v.to_json();
    let before = &before[..before.len().min(60)];
    match v {
        PyValue::Int(n) => {
            let n = *n;
            let choices = [
                0,
                -1,
                1,
                2,
                n - 1,
                n + 1,
                2 * n,
                -n,
                1 << 36,
                i64::MAX,
                i64::MIN,
            ];
            *v = PyValue::Int(choices[rng.below(choices.len())]);
        }
        PyValue::Float(f) => {
            let f = *f;
            let choices = [0.0, -1.0, -f, f64::NAN, f64::INFINITY, 1e30, 0.5];
            *v = PyValue::Float(choices[rng.below(choices.len())]);
        }
        PyValue::Bool(b) => *v = PyValue::Bool(!*b),
        PyValue::Str(s) => {
            *v = PyValue::Str(match rng.below(3) {
                0 => pool[rng.below(pool.len())].clone(),
                1 => s.chars().rev().collect(),
                _ => s.chars().skip(1).collect(),
            })
        }
        PyValue::List(items) if !items.is_empty() => match rng.below(3) {
            0 => {
                items.remove(rng.below(items.len()));
            }
            1 => {
                let i = rng.below(items.len());
                items.insert(i, items[i].clone());
            }
            _ => items.clear(),
        },
        PyValue::Dict(entries) if !entries.is_empty() => {
            entries.remove(rng.below(entries.len()));
        }
        PyValue::Null => *v = PyValue::Int(rng.below(4) as i64),
        _ => *v = PyValue::Null,
    }
    format!("{before} -> {}", &v.to_json()[..v.to_json().len().min(60)])
}

/// Builds the model `json` describes and, where it builds, runs it in every mode, backward
/// from its outputs, and writes it back; `Err` where any step panicked.
fn exercise(json: &str) -> Result<(), String> {
    let run = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let Ok(model) = Functional::from_keras_json(&vs.root(), json) else {
            return;
        };
        let Ok(_) = model.to_keras_json() else { return };
        // Inputs of a size the test can hold (a mutation may have asked for 2^36 elements).
        let shapes: Vec<Vec<i64>> = model
            .inputs()
            .iter()
            .map(|(_, d)| {
                std::iter::once(2)
                    .chain(d.iter().map(|&n| n as i64))
                    .collect()
            })
            .collect();
        if shapes.iter().any(|s| s.iter().product::<i64>() > 1 << 20) {
            return;
        }
        let xs: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)))
            .collect();
        let xs: Vec<&Tensor> = xs.iter().collect();
        for mode in [CallMode::Training, CallMode::Inference, CallMode::Tracing] {
            let Ok(out) = model.forward(&xs, mode) else {
                continue;
            };
            if mode == CallMode::Training {
                let loss = out.ys.iter().fold(out.ebops_loss.shallow_clone(), |a, y| {
                    a + y.sum(Kind::Float)
                });
                if loss.requires_grad() {
                    let _ = loss.f_backward();
                }
            }
        }
        let _ = model.apply_constraints();
        let _ = model.regularization_loss();
    };
    catch_unwind(AssertUnwindSafe(run)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// hgq2's model documents from the reference files: `(name, model_json)`.
fn documents() -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/reference");
    let mut out = Vec::new();
    for (file, key) in [
        ("graph.json", "graph"),
        ("more.json", "graph"),
        ("cnn.json", "cnn"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("reference file");
        let doc = PyValue::parse(&text).expect("reference JSON");
        let Some(PyValue::List(models)) = doc.get(key) else {
            panic!("{file}: no list {key:?}");
        };
        for m in models {
            if let (Some(PyValue::Str(name)), Some(PyValue::Str(json))) =
                (m.get("name"), m.get("model_json"))
            {
                out.push((name.clone(), json.clone()));
            }
        }
    }
    out
}

#[test]
fn mutated_model_documents_never_panic() {
    let per_doc: usize = std::env::var("HGQ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let docs = documents();
    assert!(docs.len() >= 20, "{} documents", docs.len());
    let mut failures = Vec::new();
    let mut built = 0;
    for (d, (name, json)) in docs.iter().enumerate() {
        let original = PyValue::parse(json).expect("hgq2's JSON");
        // The original builds: the mutations start from a working model.
        assert!(exercise(json).is_ok(), "{name} itself panics");
        let mut pool = Vec::new();
        strings(&original, &mut pool);
        for k in 0..per_doc {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((d as u64) << 32 | k as u64));
            let mut doc = original.clone();
            let what = mutate(&mut doc, &pool, &mut rng);
            let text = doc.to_json();
            let vs = nn::VarStore::new(Device::Cpu);
            built += usize::from(Functional::from_keras_json(&vs.root(), &text).is_ok());
            if let Err(msg) = exercise(&text) {
                failures.push(format!("{name} #{k}: {what}: {msg}"));
            }
        }
    }
    eprintln!(
        "{} documents, {} mutations, {built} built",
        docs.len(),
        docs.len() * per_doc
    );
    assert!(
        failures.is_empty(),
        "{} panics:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
