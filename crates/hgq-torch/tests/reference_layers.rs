//! QDense models and the Quantizer layer against hgq2 itself: the values of
//! `tests/data/reference/layers.json`, made by `tests/data/reference/gen.py` running hgq2 0.2.0.
//! Per QDense model: a training step (outputs bit for bit, EBOPs, the loss terms, every
//! gradient, the WRAP integer bits tracked), `trace_minmax` over two batches (integer bits and
//! EBOPs) and inference; per Quantizer layer: `scaler`, `qnoise_factor`, `affine` in training
//! (values and gradients) and inference.
mod common;

use common::reference::{close, same, tensor};
use hgq_torch::hgq_config::{Place, QType, QuantizerConfig};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, QDense, Sequential};
use hgq_torch::quantizer::Quantizer;
use serde_json::Value;
use tch::{Device, Kind, nn};

fn data() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/reference/layers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("layers.json")).expect("JSON")
}

/// The model of a case, every variable set to hgq2's initial values.
fn model(vs: &nn::VarStore, case: &Value) -> Sequential {
    let n = |k: &str| case[k].as_u64().expect("a size") as usize;
    let act = match case["activation"].as_str() {
        Some("relu") => Activation::Relu,
        _ => Activation::Linear,
    };
    let betas: Vec<f64> = case["betas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .collect();
    let mut m = Sequential::new();
    m.add(
        &vs.root(),
        QDense::builder(n("n_in"), n("hidden"))
            .activation(act)
            .beta(betas[0]),
    )
    .unwrap();
    m.add(
        &vs.root(),
        QDense::builder(n("hidden"), n("n_out")).beta(betas[1]),
    )
    .unwrap();
    set_state(&m, &case["initial"]);
    m
}

fn set_state(m: &Sequential, state: &Value) {
    tch::no_grad(|| {
        for (path, t) in m.keras_variables() {
            let v = &state[path.as_str()];
            assert!(!v.is_null(), "hgq2 has no {path}");
            let shape: Vec<i64> = t.size();
            t.shallow_clone()
                .copy_(&tensor(&v["value"], &shape).to_kind(t.kind()));
        }
    });
}

fn check_state(m: &Sequential, state: &Value, what: &str) {
    for (path, t) in m.keras_variables() {
        same(
            &t,
            &state[path.as_str()]["value"],
            &format!("{what}: {path}"),
        );
    }
}

#[test]
fn qdense_models_match_hgq2() {
    let d = data();
    let cases = d["qdense"].as_array().unwrap();
    assert!(cases.len() >= 2);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs, case);
        let n_in = case["n_in"].as_i64().unwrap();
        let n_out = case["n_out"].as_i64().unwrap();
        let calls = case["calls"].as_array().unwrap();

        // A training step.
        let c = &calls[0];
        assert_eq!(c["mode"], "training");
        let x = tensor(&c["x"], &[-1, n_in]);
        let dy = tensor(&c["dy"], &[-1, n_out]);
        let out = m.forward(&x, CallMode::Training).unwrap();
        same(&out.y, &c["y"], &format!("{name}: training y"));
        let ebops: Vec<u64> = m.layers().iter().map(|l| l.ebops() as u64).collect();
        let want: Vec<u64> = c["ebops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_u64().unwrap())
            .collect();
        assert_eq!(ebops, want, "{name}: EBOPs");
        let reg = m.regularization_loss().unwrap();
        let terms = out.ebops_loss.double_value(&[]) + reg.double_value(&[]);
        let want_terms: f64 = c["losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_f64().unwrap())
            .sum();
        assert!(
            (terms - want_terms).abs() <= 1e-6 * want_terms.abs().max(1.0),
            "{name}: EBOPs and regularization terms {terms} != {want_terms}"
        );
        let loss = (&out.y * &dy).sum(Kind::Float) + &out.ebops_loss + reg;
        loss.backward();
        let mut checked = 0;
        for (path, t) in m.keras_variables() {
            let want = &c["grads"][path.as_str()];
            if want.is_null() {
                // Not trainable in hgq2: no gradient here either.
                assert!(
                    !t.requires_grad() || !t.grad().defined(),
                    "{name}: {path} has a gradient hgq2 does not"
                );
                continue;
            }
            close(&t.grad(), want, &format!("{name}: grad of {path}"));
            checked += 1;
        }
        assert_eq!(checked, c["grads"].as_object().unwrap().len(), "{name}");
        check_state(&m, &c["state_after"], &format!("{name}: after training"));

        // trace_minmax over two batches.
        let c = &calls[1];
        assert_eq!(c["mode"], "trace_minmax");
        let xt = tensor(&c["x"], &[-1, n_in]);
        let batch = c["batch_size"].as_i64().unwrap();
        let batches = xt.split(batch, 0);
        let total = m.trace_minmax(&batches).unwrap();
        assert_eq!(
            total,
            c["ebops_total"].as_u64().unwrap(),
            "{name}: traced EBOPs"
        );
        check_state(&m, &c["state_after"], &format!("{name}: after tracing"));

        // Inference.
        let c = &calls[2];
        let x = tensor(&c["x"], &[-1, n_in]);
        let y = m.forward(&x, CallMode::Inference).unwrap().y;
        same(&y, &c["y"], &format!("{name}: inference y"));
        check_state(&m, &c["state_after"], &format!("{name}: after inference"));
    }
}

#[test]
fn scaler_qnoise_and_affine_match_hgq2() {
    let d = data();
    let cases = d["quantizer"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let conf = &case["config"];
        let mut b = QuantizerConfig::builder(QType::Kif, Place::Datalane);
        if let Some(s) = conf["scaler"].as_f64() {
            b = b.scaler(s);
        }
        if let Some(q) = conf["qnoise_factor"].as_f64() {
            b = b.qnoise_factor(q);
        }
        if let Some(a) = conf["affine"].as_array() {
            b = b.affine(a[0].as_f64().unwrap(), a[1].as_f64().unwrap());
        }
        let shape: Vec<i64> = case["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let built: Vec<Option<usize>> = shape.iter().map(|&d| Some(d as usize)).collect();
        let vs = nn::VarStore::new(Device::Cpu);
        let q = Quantizer::from_config(&vs.root(), &b.build().unwrap(), &built).unwrap();
        tch::no_grad(|| {
            for (n, t) in q.variables() {
                let v = &case["initial"][n.as_str()];
                assert!(!v.is_null(), "{name}: hgq2 has no {n:?}");
                t.shallow_clone()
                    .copy_(&tensor(&v["value"], &t.size()).to_kind(t.kind()));
            }
        });
        for c in case["calls"].as_array().unwrap() {
            let training = c["mode"] == "training";
            let mode = if training {
                CallMode::Training
            } else {
                CallMode::Inference
            };
            let x = tensor(&c["x"], &shape).set_requires_grad(true);
            let y = q.forward(&x, mode).unwrap();
            same(&y, &c["y"], &format!("{name}: {} y", c["mode"]));
            if training {
                let dy = tensor(&c["dy"], &shape);
                (&y * dy).sum(Kind::Float).backward();
                close(&x.grad(), &c["grads"]["x"], &format!("{name}: grad of x"));
                for (n, t) in q.variables() {
                    let want = &c["grads"][n.as_str()];
                    if !want.is_null() {
                        close(&t.grad(), want, &format!("{name}: grad of {n:?}"));
                    }
                }
            }
            for (n, t) in q.variables() {
                same(
                    &t,
                    &c["state_after"][n.as_str()],
                    &format!("{name}: {} {n:?} after", c["mode"]),
                );
            }
        }
    }
}
