//! The `graph` and `more` families: functional graphs built from hgq2's own model JSON
//! (`graph.json` from `gen_graph.py`, `more.json` from `gen_more.py`).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use hgq_core::CallMode;
use serde_json::Value;
use tch::{Device, Kind, Tensor, nn};

use super::cnn::first_difference;
use super::{
    Checked, Compare, GRAPH_KINDS, MORE_KINDS, array, call, cases_of, check_terms, close, coverage,
    ensure, loss_terms, no_grad_expected, run_cases, str_, u64_,
};
use crate::layers::{Functional, MergeOp, QMerge};

/// `graph.json`'s graphs (residual blocks, the merge layers, two inputs and two outputs,
/// QBatchNormalization after dense and convolution layers): per case the model built from
/// hgq2's JSON (written back byte for byte), a training step (outputs bit for bit, EBOPs per
/// layer, the loss terms, every gradient, the inputs' too, the variables after: WRAP integer
/// bits, moving statistics), `trace_minmax` over two batches, inference (see the
/// [module docs](super)). The document must have at least 5 cases and every kind of
/// [`GRAPH_KINDS`].
pub fn graph(doc: &Value, device: Device) -> Checked {
    graphs("graph", doc, device, 5, GRAPH_KINDS)
}

/// `more.json`'s graphs of QEinsumDense, QBatchNormDense, QEinsumDenseBatchnorm,
/// QUnaryFunctionLUT and QSoftmax, checked as [`graph`]'s. The document must have every kind
/// of [`MORE_KINDS`].
pub fn more(doc: &Value, device: Device) -> Checked {
    graphs("more", doc, device, 1, MORE_KINDS)
}

fn graphs(family: &str, doc: &Value, device: Device, min: usize, want: &[&str]) -> Checked {
    let cases = match cases_of(doc, "graph") {
        Ok(c) => c,
        Err(e) => {
            return Checked {
                family: family.into(),
                cases: Vec::new(),
                document: Err(e),
                tolerated: 0,
            };
        }
    };
    let mut kinds = BTreeSet::new();
    let mut cmp = Compare::new(device);
    let mut checked = run_cases(
        family,
        cases,
        |case, _, cmp| check_case(case, &mut kinds, cmp),
        &mut cmp,
    );
    checked.document = coverage(cases.len(), min, &kinds, want);
    checked
}

/// Keras numbers the inner layers of quantizers (`quantizer_2`, `fixed_point_quantizer_kif_5`)
/// by one counter per class over the model, in the order the layers were built: a model built
/// in Python in call order and the same model built from its JSON number them differently.
/// The canonical form keeps the layer names and replaces each numbered inner name by its rank
/// among its siblings of the same class (`quantizer#0`, `quantizer#1` under one merge layer).
fn canonical(paths: &[&str]) -> HashMap<String, String> {
    let numbered = |c: &str| -> Option<(String, u64)> {
        for base in [
            "multiple_quantizers",
            "quantizer",
            "fixed_point_quantizer_kif",
            "fixed_point_quantizer_kbi",
            "float_point_quantizer",
            "dummy_quantizer",
        ] {
            if c == base {
                return Some((base.into(), 0));
            }
            if let Some(n) = c.strip_prefix(base).and_then(|r| r.strip_prefix('_'))
                && let Ok(n) = n.parse::<u64>()
            {
                return Some((base.into(), n + 1));
            }
        }
        None
    };
    let parts: Vec<Vec<&str>> = paths.iter().map(|p| p.split('/').collect()).collect();
    let depth = parts.iter().map(Vec::len).max().unwrap_or(0);
    let mut canon: Vec<Vec<String>> = vec![Vec::new(); paths.len()];
    for d in 0..depth {
        // The numbers of each class under each (canonical) parent.
        let mut siblings: BTreeMap<(Vec<String>, String), BTreeSet<u64>> = BTreeMap::new();
        for (k, p) in parts.iter().enumerate() {
            if let Some((base, n)) = p.get(d).and_then(|c| numbered(c)) {
                siblings
                    .entry((canon[k].clone(), base))
                    .or_default()
                    .insert(n);
            }
        }
        for (k, p) in parts.iter().enumerate() {
            let Some(c) = p.get(d) else { continue };
            let next = match numbered(c) {
                Some((base, n)) => {
                    let set = &siblings[&(canon[k].clone(), base.clone())];
                    let rank = set.iter().position(|&m| m == n).unwrap_or(0);
                    format!("{base}#{rank}")
                }
                None => c.to_string(),
            };
            canon[k].push(next);
        }
    }
    paths
        .iter()
        .zip(canon)
        .map(|(p, c)| (p.to_string(), c.join("/")))
        .collect()
}

/// Our variables by hgq2's paths (through the canonical forms of both).
fn by_hgq2_path(m: &Functional, state: &Value) -> Result<Vec<(String, Tensor)>, String> {
    let ours = m.keras_variables();
    let our_paths: Vec<&str> = ours.iter().map(|(p, _)| p.as_str()).collect();
    let theirs: Vec<&str> = state
        .as_object()
        .ok_or("the variables: not an object")?
        .keys()
        .map(String::as_str)
        .filter(|k| !k.ends_with("/ebops") && !k.ends_with("/beta"))
        .collect();
    ensure!(
        our_paths.len() == theirs.len(),
        "variables: ours {}, hgq2's {}",
        our_paths.len(),
        theirs.len()
    );
    let (co, ct) = (canonical(&our_paths), canonical(&theirs));
    let back: HashMap<&String, &str> = ct.iter().map(|(p, c)| (c, p.as_str())).collect();
    ours.into_iter()
        .map(|(p, t)| {
            let c = &co[&p];
            let theirs = back
                .get(c)
                .ok_or_else(|| format!("hgq2 has no variable for {p} ({c})"))?;
            Ok((theirs.to_string(), t))
        })
        .collect()
}

fn set_state(vars: &[(String, Tensor)], state: &Value, cmp: &Compare) -> Result<(), String> {
    for (path, t) in vars {
        let value = cmp.tensor(&state[path.as_str()]["value"], &t.size(), path)?;
        tch::no_grad(|| t.shallow_clone().f_copy_(&value.to_kind(t.kind())))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

fn check_state(
    vars: &[(String, Tensor)],
    state: &Value,
    what: &str,
    cmp: &mut Compare,
) -> Result<(), String> {
    for (path, t) in vars {
        cmp.same(
            t,
            &state[path.as_str()]["value"],
            &format!("{what}: {path}"),
        )?;
    }
    Ok(())
}

fn check_ebops(m: &Functional, want: &Value, what: &str) -> Result<(), String> {
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

fn shapes(m: &Functional) -> Vec<Vec<i64>> {
    m.inputs()
        .iter()
        .map(|(_, d)| {
            std::iter::once(-1)
                .chain(d.iter().map(|&d| d as i64))
                .collect()
        })
        .collect()
}

fn inputs(v: &Value, shapes: &[Vec<i64>], cmp: &Compare) -> Result<Vec<Tensor>, String> {
    let xs = array(v, "x")?;
    ensure!(
        xs.len() == shapes.len(),
        "inputs: {} given, the model has {}",
        xs.len(),
        shapes.len()
    );
    xs.iter()
        .zip(shapes)
        .enumerate()
        .map(|(k, (x, s))| cmp.tensor(x, s, &format!("x{k}")))
        .collect()
}

/// One case of a reference file: built from hgq2's JSON (written back byte for byte), a
/// training step, `trace_minmax`, inference, each compared with hgq2's values; the layers'
/// kinds are added to `kinds`.
fn check_case(case: &Value, kinds: &mut BTreeSet<String>, cmp: &mut Compare) -> Result<(), String> {
    let json = str_(&case["model_json"], "model_json")?;
    let vs = nn::VarStore::new(cmp.device());
    let m = Functional::from_keras_json(&vs.root(), json)
        .map_err(|e| format!("reading hgq2's JSON: {e}"))?;
    let again = m.to_keras_json().map_err(|e| e.to_string())?;
    ensure!(
        again == json,
        "JSON written back differs: {}",
        first_difference(&again, json)
    );
    let layers = array(&case["layers"], "layers")?;
    for (l, want) in m.layers().iter().zip(layers) {
        let name = str_(&want["name"], "layer name")?;
        ensure!(
            l.name() == name,
            "layer order: {} (ours) != {name} (hgq2)",
            l.name()
        );
        kinds.insert(str_(&want["kind"], "layer kind")?.to_string());
    }
    let vars = by_hgq2_path(&m, &case["initial"])?;
    set_state(&vars, &case["initial"], cmp)?;
    let shapes = shapes(&m);
    let calls = array(&case["calls"], "calls")?;
    let err = |e: crate::TorchError| e.to_string();

    // A training step.
    let c = call(calls, 0, "training")?;
    let xs: Vec<Tensor> = inputs(&c["x"], &shapes, cmp)?
        .into_iter()
        .map(|x| x.set_requires_grad(true))
        .collect();
    // hgq2 adds a QAveragePow2's EBOPs term to the loss twice (its class wraps the call
    // QAdd's class already wrapped, see gen_graph.py): the same loss here is twice beta.
    let doubled: Vec<_> = m
        .layers()
        .iter()
        .filter(|l| {
            l.downcast_ref::<QMerge>()
                .is_some_and(|q| q.op() == MergeOp::AveragePow2)
        })
        .collect();
    let beta =
        |l: &dyn crate::layers::Layer| l.beta().ok_or_else(|| format!("{}: no beta", l.name()));
    for l in &doubled {
        l.set_beta(2.0 * beta(l.as_ref())?).map_err(err)?;
    }
    let refs: Vec<&Tensor> = xs.iter().collect();
    let out = m.forward(&refs, CallMode::Training).map_err(err);
    for l in &doubled {
        l.set_beta(beta(l.as_ref())? / 2.0).map_err(err)?;
    }
    let out = out?;
    let outs = array(&c["y"], "y")?;
    ensure!(
        out.ys.len() == outs.len(),
        "outputs: {} (ours) != {} (hgq2)",
        out.ys.len(),
        outs.len()
    );
    for (k, (y, want)) in out.ys.iter().zip(outs).enumerate() {
        cmp.same(y, want, &format!("training y{k}"))?;
    }
    check_ebops(&m, &c["ebops"], "training")?;
    let reg = m.regularization_loss().map_err(err)?;
    check_terms(&out.ebops_loss, &reg, loss_terms(&c["losses"], "losses")?)?;
    let mut loss = &out.ebops_loss + reg;
    let dys = array(&c["dy"], "dy")?;
    ensure!(
        dys.len() == out.ys.len(),
        "dy: {} for {} outputs",
        dys.len(),
        out.ys.len()
    );
    for (k, (y, dy)) in out.ys.iter().zip(dys).enumerate() {
        loss += (y * cmp.tensor(dy, &y.size(), &format!("dy{k}"))?).sum(Kind::Float);
    }
    loss.backward();
    for (k, x) in xs.iter().enumerate() {
        close(
            &x.grad(),
            &c["grads"][format!("x{k}").as_str()],
            &format!("grad of x{k}"),
        )?;
    }
    let mut checked = xs.len();
    for (path, t) in &vars {
        let want = &c["grads"][path.as_str()];
        if want.is_null() {
            no_grad_expected(t, path)?;
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
    check_state(&vars, &c["state_after"], "after training", cmp)?;

    // trace_minmax over two batches.
    let c = call(calls, 1, "trace_minmax")?;
    let all = inputs(&c["x"], &shapes, cmp)?;
    let n = u64_(&c["batch_size"], "batch_size")? as i64;
    let batches: Vec<Vec<Tensor>> = (0..2)
        .map(|b| all.iter().map(|x| x.narrow(0, b * n, n)).collect())
        .collect();
    let total = m.trace_minmax(&batches).map_err(err)?;
    let want = u64_(&c["ebops_total"], "ebops_total")?;
    ensure!(total == want, "traced EBOPs: {total} != {want}");
    check_ebops(&m, &c["ebops"], "tracing")?;
    check_state(&vars, &c["state_after"], "after tracing", cmp)?;

    // Inference.
    let c = call(calls, 2, "inference")?;
    let xs = inputs(&c["x"], &shapes, cmp)?;
    let refs: Vec<&Tensor> = xs.iter().collect();
    let out = m.forward(&refs, CallMode::Inference).map_err(err)?;
    for (k, (y, want)) in out.ys.iter().zip(array(&c["y"], "y")?).enumerate() {
        cmp.same(y, want, &format!("inference y{k}"))?;
    }
    check_state(&vars, &c["state_after"], "after inference", cmp)
}
