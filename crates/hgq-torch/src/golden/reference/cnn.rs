//! The `cnn` family: Sequential models of convolution, pooling, Flatten and QDense layers
//! (`cnn.json`, `gen_cnn.py`), each built layer by layer from the document's description.
use std::collections::BTreeSet;

use hgq_config::{Place, QuantizerConfig};
use hgq_core::CallMode;
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

use super::{
    CNN_KINDS, Checked, Compare, array, call, cases_of, check_terms, close, coverage, ensure,
    no_grad_expected, run_cases, str_, u64_, usizes,
};
use crate::layers::{Activation, Flatten, Padding, PoolKind, QConv, QDense, QPool, Sequential};

/// `cnn.json`'s models: per case a training step (outputs bit for bit, EBOPs per layer, the
/// loss terms, every gradient, the input's included, the variables after: the WRAP integer bits
/// tracked), `trace_minmax` over two batches, inference (see the [module docs](super)). The
/// document must have at least 5 cases and every kind of [`CNN_KINDS`].
pub fn cnn_models(doc: &Value, device: Device) -> Checked {
    let cases = match cases_of(doc, "cnn") {
        Ok(c) => c,
        Err(e) => return failed_document(e),
    };
    let mut kinds = BTreeSet::new();
    let mut cmp = Compare::new(device);
    let mut checked = run_cases(
        "cnn",
        cases,
        |case, _, cmp| {
            for l in array(&case["layers"], "layers")? {
                kinds.insert(str_(&l["kind"], "layer kind")?.to_string());
            }
            model_case(case, cmp)
        },
        &mut cmp,
    );
    checked.document = coverage(cases.len(), 5, &kinds, CNN_KINDS);
    checked
}

/// `cnn.json`'s Keras JSON: per case, what we write for the model is hgq2's `model.to_json()`
/// byte for byte; the model read from hgq2's JSON writes it back unchanged and, with hgq2's
/// variables after tracing, gives hgq2's inference outputs (bit for bit on the CPU).
pub fn cnn_keras_json(doc: &Value, device: Device) -> Checked {
    let cases = match cases_of(doc, "cnn") {
        Ok(c) => c,
        Err(e) => return failed_document(e),
    };
    let mut cmp = Compare::new(device);
    run_cases("cnn", cases, |case, _, cmp| json_case(case, cmp), &mut cmp)
}

fn failed_document(e: String) -> Checked {
    Checked {
        family: "cnn".into(),
        cases: Vec::new(),
        document: Err(e),
        tolerated: 0,
    }
}

fn padding(v: &Value) -> Result<Padding, String> {
    match v.as_str() {
        Some("valid") => Ok(Padding::Valid),
        Some("same") => Ok(Padding::Same),
        Some("causal") => Ok(Padding::Causal),
        p => Err(format!("padding {p:?}")),
    }
}

fn activation(v: &Value) -> Result<Activation, String> {
    match v.as_str() {
        Some("relu") => Ok(Activation::Relu),
        Some("linear") => Ok(Activation::Linear),
        a => Err(format!("activation {a:?}")),
    }
}

fn bool_(v: &Value, what: &str) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("{what}: not a boolean"))
}

/// The model a case describes, built layer by layer (each on the previous output's shape), with
/// hgq2's initial variables.
fn model(vs: &nn::VarStore, case: &Value, cmp: &Compare) -> Result<Sequential, String> {
    let mut m = Sequential::new();
    let mut dims = usizes(&case["input_shape"], "input_shape")?;
    for l in array(&case["layers"], "layers")? {
        let kind = str_(&l["kind"], "layer kind")?;
        let name = str_(&l["name"], "layer name")?;
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
        let oq = match l["enable_oq"].as_bool().unwrap_or(false) {
            true => Some(
                QuantizerConfig::builder_default(Place::Datalane)
                    .build()
                    .map_err(|e| format!("{name}: output quantizer: {e}"))?,
            ),
            false => None,
        };
        let root = vs.root();
        let what = |key: &str| format!("{name}: {key}");
        let added = match kind {
            "QConv1D" | "QConv2D" => {
                let k = usizes(&l["kernel_size"], &what("kernel_size"))?;
                let filters = u64_(&l["filters"], &what("filters"))? as usize;
                ensure!(
                    dims.len() == k.len() + 1 && dims.len() >= 2,
                    "{name}: input {dims:?} for a kernel {k:?}"
                );
                let b = if kind == "QConv1D" {
                    QConv::builder_1d([dims[0], dims[1]], filters, k[0])
                } else {
                    QConv::builder_2d([dims[0], dims[1], dims[2]], filters, [k[0], k[1]])
                };
                let b = b
                    .strides(&usizes(&l["strides"], &what("strides"))?)
                    .padding(padding(&l["padding"])?)
                    .dilation(&usizes(&l["dilation_rate"], &what("dilation_rate"))?)
                    .groups(u64_(&l["groups"], &what("groups"))? as usize)
                    .activation(activation(&l["activation"])?)
                    .use_bias(bool_(&l["use_bias"], &what("use_bias"))?)
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
                let last = *dims.last().ok_or_else(|| format!("{name}: no input"))?;
                let b = QDense::builder(last, u64_(&l["units"], &what("units"))? as usize)
                    .input_dims(&dims)
                    .activation(activation(&l["activation"])?)
                    .use_bias(bool_(&l["use_bias"], &what("use_bias"))?)
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
            "Flatten" => m.add(
                &root,
                Flatten::new(&dims)
                    .map_err(|e| format!("{name}: {e}"))?
                    .with_name(name),
            ),
            pool => {
                let kind = if pool.contains("Max") {
                    PoolKind::Max
                } else {
                    PoolKind::Average
                };
                let b = if pool.starts_with("QGlobal") {
                    QPool::global(kind, &dims)
                } else {
                    let p = usizes(&l["pool_size"], &what("pool_size"))?;
                    ensure!(
                        dims.len() == p.len() + 1 && dims.len() >= 2,
                        "{name}: input {dims:?} for a pool {p:?}"
                    );
                    let b = match p.len() {
                        1 => QPool::builder_1d(kind, [dims[0], dims[1]], p[0]),
                        _ => QPool::builder_2d(kind, [dims[0], dims[1], dims[2]], [p[0], p[1]]),
                    };
                    b.strides(&usizes(&l["strides"], &what("strides"))?)
                        .padding(padding(&l["padding"])?)
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
        let added = added.map_err(|e| format!("{name}: {e}"))?;
        let want = usizes(&l["output_shape"], &what("output_shape"))?;
        ensure!(
            added.output_dims() == want,
            "{name}: output shape {:?} != {want:?}",
            added.output_dims()
        );
        dims = added.output_dims();
    }
    set_state(&m, &case["initial"], cmp)?;
    Ok(m)
}

/// hgq2's variables (`state`: path -> `{shape, value}`) into ours; every variable hgq2 has
/// (beside its EBOPs and beta bookkeeping) must be one of ours.
fn set_state(m: &Sequential, state: &Value, cmp: &Compare) -> Result<(), String> {
    let mut n = 0;
    for (path, t) in m.keras_variables() {
        let v = &state[path.as_str()];
        ensure!(!v.is_null(), "hgq2 has no {path}");
        let shape: Vec<i64> = t.size();
        let theirs = usizes(&v["shape"], &path)?;
        ensure!(
            theirs.iter().map(|&d| d as i64).eq(shape.iter().copied()),
            "{path}: shape {shape:?} (ours) != {theirs:?} (hgq2)"
        );
        let value = cmp.tensor(&v["value"], &shape, &path)?;
        tch::no_grad(|| t.shallow_clone().f_copy_(&value.to_kind(t.kind())))
            .map_err(|e| format!("{path}: {e}"))?;
        n += 1;
    }
    let theirs = state
        .as_object()
        .ok_or("the variables: not an object")?
        .keys()
        .filter(|k| !k.ends_with("/ebops") && !k.ends_with("/beta"))
        .count();
    ensure!(n == theirs, "variables: ours {n}, hgq2's {theirs}");
    Ok(())
}

fn check_state(m: &Sequential, state: &Value, what: &str, cmp: &mut Compare) -> Result<(), String> {
    for (path, t) in m.keras_variables() {
        cmp.same(
            &t,
            &state[path.as_str()]["value"],
            &format!("{what}: {path}"),
        )?;
    }
    Ok(())
}

fn check_ebops(m: &Sequential, want: &Value, what: &str) -> Result<(), String> {
    for (l, w) in m.layers().iter().zip(array(want, "ebops")?) {
        let (ours, want) = (l.ebops() as u64, w.as_u64().unwrap_or(0));
        ensure!(
            ours == want,
            "{what}: EBOPs of {}: {ours} != {want}",
            l.name()
        );
    }
    Ok(())
}

fn batch_shape(case: &Value) -> Result<Vec<i64>, String> {
    Ok(std::iter::once(-1)
        .chain(
            usizes(&case["input_shape"], "input_shape")?
                .iter()
                .map(|&d| d as i64),
        )
        .collect())
}

/// One model: a training step, `trace_minmax`, inference.
fn model_case(case: &Value, cmp: &mut Compare) -> Result<(), String> {
    let vs = nn::VarStore::new(cmp.device());
    let m = model(&vs, case, cmp)?;
    let shape = batch_shape(case)?;
    let last = m.layers().last().ok_or("no layers")?;
    let out_dims: Vec<i64> = std::iter::once(-1)
        .chain(last.output_dims().iter().map(|&d| d as i64))
        .collect();
    let calls = array(&case["calls"], "calls")?;
    let err = |e: crate::TorchError| e.to_string();

    // A training step: values, EBOPs, loss terms, gradients (the input's too), state.
    let c = call(calls, 0, "training")?;
    let x = cmp.tensor(&c["x"], &shape, "x")?.set_requires_grad(true);
    let dy = cmp.tensor(&c["dy"], &out_dims, "dy")?;
    let out = m.forward(&x, CallMode::Training).map_err(err)?;
    cmp.same(&out.y, &c["y"], "training y")?;
    check_ebops(&m, &c["ebops"], "training")?;
    let reg = m.regularization_loss().map_err(err)?;
    check_terms(
        &out.ebops_loss,
        &reg,
        super::loss_terms(&c["losses"], "losses")?,
    )?;
    let loss = (&out.y * &dy).sum(Kind::Float) + &out.ebops_loss + reg;
    loss.backward();
    close(&x.grad(), &c["grads"]["x"], "grad of x")?;
    let mut checked = 1;
    for (path, t) in m.keras_variables() {
        let want = &c["grads"][path.as_str()];
        if want.is_null() {
            no_grad_expected(&t, &path)?;
            continue;
        }
        close(&t.grad(), want, &format!("grad of {path}"))?;
        checked += 1;
    }
    let theirs = c["grads"].as_object().map_or(0, |g| g.len());
    ensure!(
        checked == theirs,
        "gradients: {checked} checked, hgq2 has {theirs}"
    );
    check_state(&m, &c["state_after"], "after training", cmp)?;

    // trace_minmax over two batches.
    let c = call(calls, 1, "trace_minmax")?;
    let xt = cmp.tensor(&c["x"], &shape, "x")?;
    let batches = xt.split(u64_(&c["batch_size"], "batch_size")? as i64, 0);
    let total = m.trace_minmax(&batches).map_err(err)?;
    let want = u64_(&c["ebops_total"], "ebops_total")?;
    ensure!(total == want, "traced EBOPs: {total} != {want}");
    check_ebops(&m, &c["ebops"], "tracing")?;
    check_state(&m, &c["state_after"], "after tracing", cmp)?;

    // Inference.
    let c = call(calls, 2, "inference")?;
    let y = m
        .forward(&cmp.tensor(&c["x"], &shape, "x")?, CallMode::Inference)
        .map_err(err)?
        .y;
    cmp.same(&y, &c["y"], "inference y")?;
    check_state(&m, &c["state_after"], "after inference", cmp)
}

/// One model's Keras JSON: ours is hgq2's; hgq2's read and written back is unchanged; the
/// model read, with hgq2's variables after tracing, infers as hgq2's.
fn json_case(case: &Value, cmp: &mut Compare) -> Result<(), String> {
    let want = str_(&case["model_json"], "model_json")?;
    let vs = nn::VarStore::new(cmp.device());
    let m = model(&vs, case, cmp)?;
    let ours = m.to_keras_json().map_err(|e| e.to_string())?;
    ensure!(
        ours == want,
        "our JSON is not hgq2's: {}",
        first_difference(&ours, want)
    );

    let vs = nn::VarStore::new(cmp.device());
    let read = Sequential::from_keras_json(&vs.root(), want)
        .map_err(|e| format!("reading hgq2's JSON: {e}"))?;
    let again = read.to_keras_json().map_err(|e| e.to_string())?;
    ensure!(
        again == want,
        "hgq2's JSON read and written differs: {}",
        first_difference(&again, want)
    );
    let calls = array(&case["calls"], "calls")?;
    set_state(&read, &call(calls, 1, "trace_minmax")?["state_after"], cmp)?;
    let c = call(calls, 2, "inference")?;
    let x: Tensor = cmp.tensor(&c["x"], &batch_shape(case)?, "x")?;
    let y = read
        .forward(&x, CallMode::Inference)
        .map_err(|e| e.to_string())?
        .y;
    cmp.same(&y, &c["y"], "inference of the model read")
}

/// Where two texts first differ: the byte offset and a few characters of each from there.
pub(super) fn first_difference(ours: &str, want: &str) -> String {
    let at = ours
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(want.len()));
    let around = |s: &str| -> String { s[s.floor_char_boundary(at)..].chars().take(40).collect() };
    format!(
        "byte {at} (lengths {} and {}): ours {:?}, hgq2's {:?}",
        ours.len(),
        want.len(),
        around(ours),
        around(want)
    )
}
