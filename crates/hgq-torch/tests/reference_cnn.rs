//! Convolution, pooling and Flatten layers against hgq2 itself: the values of
//! `tests/data/reference/cnn.json`, made by `tests/data/reference/gen_cnn.py` running hgq2
//! 0.2.0 on Keras' torch backend. Per model (QConv1D/2D with strides, `same`/`causal`
//! padding, dilation and groups; max/average pools, windowed and global; Flatten; QDense on
//! their outputs): a training step (outputs bit for bit, EBOPs per layer, the loss terms,
//! every gradient, the input's included, the WRAP integer bits tracked), `trace_minmax` over
//! two batches, inference; and the Keras JSON hgq2 wrote, written again by us byte for byte.
mod common;

use common::reference::{close, same, tensor};
use hgq_torch::hgq_config::{Place, QuantizerConfig};
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Activation, Flatten, Padding, PoolKind, QConv, QDense, QPool, Sequential};
use serde_json::Value;
use tch::{Device, Kind, nn};

fn data() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/reference/cnn.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("cnn.json")).expect("JSON")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|n| n.as_u64().expect("a size") as usize)
        .collect()
}

fn padding(v: &Value) -> Padding {
    match v.as_str() {
        Some("valid") => Padding::Valid,
        Some("same") => Padding::Same,
        Some("causal") => Padding::Causal,
        p => panic!("padding {p:?}"),
    }
}

fn activation(v: &Value) -> Activation {
    match v.as_str() {
        Some("relu") => Activation::Relu,
        Some("linear") => Activation::Linear,
        a => panic!("activation {a:?}"),
    }
}

/// The model a case describes, built layer by layer (each on the previous output's shape).
fn model(vs: &nn::VarStore, case: &Value) -> Sequential {
    let mut m = Sequential::new();
    let mut dims = usizes(&case["input_shape"]);
    for l in case["layers"].as_array().unwrap() {
        let kind = l["kind"].as_str().unwrap();
        let name = l["name"].as_str().unwrap();
        let beta = l["beta0"].as_f64().unwrap_or(0.0);
        // No input quantizer (hgq2's `enable_iq=False`; its EBOPs are off with it).
        let no_iq = l["enable_iq"] == false;
        // hgq2's parallelization factor as resolved (QDense and the convolutions).
        let pf = l["parallelization_factor"].as_u64().map(|p| p as usize);
        // hgq2's EBOPs switches (absent: the defaults, on and 1).
        let (ebops_on, factor) = (
            l["enable_ebops"].as_bool().unwrap_or(true),
            l["ebops_factor"].as_f64().unwrap_or(1.0),
        );
        // hgq2's default output quantizer where the layer has one (`enable_oq`).
        let oq = l["enable_oq"].as_bool().unwrap_or(false).then(|| {
            QuantizerConfig::builder_default(Place::Datalane)
                .build()
                .unwrap()
        });
        let root = vs.root();
        let added = match kind {
            "QConv1D" | "QConv2D" => {
                let k = usizes(&l["kernel_size"]);
                let filters = l["filters"].as_u64().unwrap() as usize;
                let b = if kind == "QConv1D" {
                    QConv::builder_1d([dims[0], dims[1]], filters, k[0])
                } else {
                    QConv::builder_2d([dims[0], dims[1], dims[2]], filters, [k[0], k[1]])
                };
                let b = b
                    .strides(&usizes(&l["strides"]))
                    .padding(padding(&l["padding"]))
                    .dilation(&usizes(&l["dilation_rate"]))
                    .groups(l["groups"].as_u64().unwrap() as usize)
                    .activation(activation(&l["activation"]))
                    .use_bias(l["use_bias"].as_bool().unwrap())
                    .beta(beta)
                    .enable_ebops(ebops_on)
                    .ebops_factor(factor)
                    .name(name);
                let b = match pf {
                    Some(p) => b.parallelization_factor(p),
                    None => b,
                };
                let b = if no_iq { b.no_iq() } else { b };
                m.add(&root, if let Some(c) = oq { b.oq(c) } else { b })
            }
            "QDense" => {
                let b =
                    QDense::builder(*dims.last().unwrap(), l["units"].as_u64().unwrap() as usize)
                        .input_dims(&dims)
                        .activation(activation(&l["activation"]))
                        .use_bias(l["use_bias"].as_bool().unwrap())
                        .beta(beta)
                        .enable_ebops(ebops_on)
                        .ebops_factor(factor)
                        .name(name);
                let b = match pf {
                    Some(p) => b.parallelization_factor(p),
                    None => b,
                };
                let b = if no_iq { b.no_iq() } else { b };
                m.add(&root, if let Some(c) = oq { b.oq(c) } else { b })
            }
            "Flatten" => m.add(&root, Flatten::new(&dims).unwrap().with_name(name)),
            pool => {
                let kind = if pool.contains("Max") {
                    PoolKind::Max
                } else {
                    PoolKind::Average
                };
                let b = if pool.starts_with("QGlobal") {
                    QPool::global(kind, &dims)
                } else {
                    let p = usizes(&l["pool_size"]);
                    let b = match p.len() {
                        1 => QPool::builder_1d(kind, [dims[0], dims[1]], p[0]),
                        _ => QPool::builder_2d(kind, [dims[0], dims[1], dims[2]], [p[0], p[1]]),
                    };
                    b.strides(&usizes(&l["strides"]))
                        .padding(padding(&l["padding"]))
                };
                let b = b
                    .beta(beta)
                    .enable_ebops(ebops_on)
                    .ebops_factor(factor)
                    .name(name);
                let b = if no_iq { b.no_iq() } else { b };
                m.add(&root, if let Some(c) = oq { b.oq(c) } else { b })
            }
        };
        let added = added.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            added.output_dims(),
            usizes(&l["output_shape"]),
            "{name}: output shape"
        );
        dims = added.output_dims();
    }
    set_state(&m, &case["initial"]);
    m
}

fn set_state(m: &Sequential, state: &Value) {
    let mut n = 0;
    tch::no_grad(|| {
        for (path, t) in m.keras_variables() {
            let v = &state[path.as_str()];
            assert!(!v.is_null(), "hgq2 has no {path}");
            let shape: Vec<i64> = t.size();
            assert_eq!(
                usizes(&v["shape"]),
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                "{path}"
            );
            t.shallow_clone()
                .copy_(&tensor(&v["value"], &shape).to_kind(t.kind()));
            n += 1;
        }
    });
    // Every variable hgq2 has (beside its EBOPs and beta bookkeeping) is one of ours.
    let theirs = state
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.ends_with("/ebops") && !k.ends_with("/beta"))
        .count();
    assert_eq!(n, theirs, "variables: ours {n}, hgq2's {theirs}");
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

fn check_ebops(m: &Sequential, want: &Value, what: &str) {
    for (l, w) in m.layers().iter().zip(want.as_array().unwrap()) {
        let want = w.as_u64().unwrap_or(0);
        assert_eq!(l.ebops() as u64, want, "{what}: EBOPs of {}", l.name());
    }
}

fn batch_shape(case: &Value) -> Vec<i64> {
    std::iter::once(-1)
        .chain(usizes(&case["input_shape"]).iter().map(|&d| d as i64))
        .collect()
}

#[test]
fn cnn_models_match_hgq2() {
    let d = data();
    let cases = d["cnn"].as_array().unwrap();
    assert!(cases.len() >= 5, "{} cases", cases.len());
    let mut kinds = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        for l in case["layers"].as_array().unwrap() {
            kinds.insert(l["kind"].as_str().unwrap().to_string());
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs, case);
        let shape = batch_shape(case);
        let out_dims: Vec<i64> = std::iter::once(-1)
            .chain(
                m.layers()
                    .last()
                    .unwrap()
                    .output_dims()
                    .iter()
                    .map(|&d| d as i64),
            )
            .collect();
        let calls = case["calls"].as_array().unwrap();

        // A training step: values, EBOPs, loss terms, gradients (the input's too), state.
        let c = &calls[0];
        assert_eq!(c["mode"], "training");
        let x = tensor(&c["x"], &shape).set_requires_grad(true);
        let dy = tensor(&c["dy"], &out_dims);
        let out = m.forward(&x, CallMode::Training).unwrap();
        same(&out.y, &c["y"], &format!("{name}: training y"));
        check_ebops(&m, &c["ebops"], &format!("{name}: training"));
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
        close(&x.grad(), &c["grads"]["x"], &format!("{name}: grad of x"));
        let mut checked = 1;
        for (path, t) in m.keras_variables() {
            let want = &c["grads"][path.as_str()];
            if want.is_null() {
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
        let xt = tensor(&c["x"], &shape);
        let batches = xt.split(c["batch_size"].as_i64().unwrap(), 0);
        let total = m.trace_minmax(&batches).unwrap();
        assert_eq!(
            total,
            c["ebops_total"].as_u64().unwrap(),
            "{name}: traced EBOPs"
        );
        check_ebops(&m, &c["ebops"], &format!("{name}: tracing"));
        check_state(&m, &c["state_after"], &format!("{name}: after tracing"));

        // Inference.
        let c = &calls[2];
        assert_eq!(c["mode"], "inference");
        let y = m
            .forward(&tensor(&c["x"], &shape), CallMode::Inference)
            .unwrap()
            .y;
        same(&y, &c["y"], &format!("{name}: inference y"));
        check_state(&m, &c["state_after"], &format!("{name}: after inference"));
    }
    // The set covers every layer kind built here.
    for k in [
        "QConv1D",
        "QConv2D",
        "QMaxPooling1D",
        "QMaxPooling2D",
        "QAveragePooling1D",
        "QAveragePooling2D",
        "QGlobalMaxPooling2D",
        "QGlobalAveragePooling1D",
        "QGlobalAveragePooling2D",
        "Flatten",
        "QDense",
    ] {
        assert!(kinds.contains(k), "no case has a {k}");
    }
}

/// The Keras JSON: what we write for each model is hgq2's `model.to_json()` byte for byte;
/// the model read from hgq2's JSON writes it back unchanged and, with hgq2's variables after
/// tracing, gives hgq2's inference outputs bit for bit.
#[test]
fn cnn_keras_json_is_hgq2s() {
    let d = data();
    for case in d["cnn"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let want = case["model_json"].as_str().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = model(&vs, case);
        assert_eq!(m.to_keras_json().unwrap(), want, "{name}: our JSON");

        let vs = nn::VarStore::new(Device::Cpu);
        let read = Sequential::from_keras_json(&vs.root(), want).unwrap();
        assert_eq!(
            read.to_keras_json().unwrap(),
            want,
            "{name}: read and written"
        );
        let calls = case["calls"].as_array().unwrap();
        set_state(&read, &calls[1]["state_after"]);
        let c = &calls[2];
        let y = read
            .forward(&tensor(&c["x"], &batch_shape(case)), CallMode::Inference)
            .unwrap()
            .y;
        same(&y, &c["y"], &format!("{name}: inference of the model read"));
    }
}
