//! `.keras` archives of models (hgq-keras): every variable in Keras' order, with hgq2's
//! bookkeeping (`beta`, `ebops`) that an archive holds and Keras expects.
use std::path::Path;

use hgq_keras::{Array, ArrayData, KerasArchive};
use tch::{Kind, Tensor};

use super::Layer;
use crate::{Result, TorchError};

fn archive_err(e: hgq_keras::Error) -> TorchError {
    TorchError::Invalid {
        what: "Keras archive",
        why: e.to_string(),
    }
}

/// Keras does not save a `SeedGenerator`'s state (stochastic rounding's seed and call count):
/// neither does an archive here; a model opened from one starts its seed state afresh, as
/// hgq2's does.
fn is_seed_state(path: &str) -> bool {
    path.ends_with("/seed_generator/seed_generator_state")
}

/// Each layer's variables in Keras' order (`model.variables`) as an archive holds them: the
/// layer's own (trainable first), `beta` and `ebops` for a layer with EBOPs (after its own
/// non-trainable ones, or before them: [`Layer::bookkeeping_before_state`]), then each
/// quantizer's (trainable first, in the order they were made; no seed state), with the
/// bookkeeping as tensors.
pub(crate) fn ordered_variables(layers: &[Box<dyn Layer>]) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for l in layers {
        let quantizers = l.quantizers();
        let prefixes: Vec<String> = quantizers
            .iter()
            .map(|q| format!("{}/", q.keras_path))
            .collect();
        let vars = l.keras_variables();
        let own = vars
            .iter()
            .filter(|(p, _)| !prefixes.iter().any(|q| p.starts_with(q.as_str())));
        let (train, rest): (Vec<_>, Vec<_>) = own.partition(|(_, t)| t.requires_grad());
        let clone = |v: Vec<&(String, Tensor)>| {
            v.into_iter()
                .map(|(p, t)| (p.clone(), t.shallow_clone()))
                .collect::<Vec<_>>()
        };
        let mut book = l.bookkeeping().into_iter().map(|(path, beta, ebops)| {
            [
                (format!("{path}/beta"), Tensor::from(beta as f32)),
                (
                    format!("{path}/ebops"),
                    Tensor::from(ebops as i64).to_kind(Kind::Int64),
                ),
            ]
        });
        // The layer's own first; its sublayers' after its quantizers.
        let bookkeeping: Vec<(String, Tensor)> = book.next().into_iter().flatten().collect();
        let inner: Vec<(String, Tensor)> = book.flatten().collect();
        out.extend(clone(train));
        if l.bookkeeping_before_state() {
            out.extend(bookkeeping);
            out.extend(clone(rest));
        } else {
            out.extend(clone(rest));
            out.extend(bookkeeping);
        }
        for q in quantizers {
            let qv = q.q.variables();
            let (train, rest): (Vec<_>, Vec<_>) = qv.iter().partition(|(_, t)| t.requires_grad());
            for (n, t) in train.into_iter().chain(rest) {
                let path = super::variable_path(&q.keras_path, *n);
                if !is_seed_state(&path) {
                    out.push((path, t.shallow_clone()));
                }
            }
        }
        out.extend(inner);
    }
    out
}

/// A tensor as an archive array (its own element type; `ebops` as hgq2 declares it, uint32).
fn to_array(path: &str, t: &Tensor) -> Result<Array> {
    let t = t
        .f_detach()?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?;
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.f_view([-1])?;
    let data = if path.ends_with("/ebops") {
        let v: Vec<i64> = Vec::try_from(&flat)?;
        ArrayData::U32(
            v.into_iter()
                .map(|e| e.clamp(0, u32::MAX as i64) as u32)
                .collect(),
        )
    } else {
        match t.kind() {
            Kind::Float => ArrayData::F32(Vec::try_from(&flat)?),
            Kind::Double => ArrayData::F64(Vec::try_from(&flat)?),
            Kind::Uint8 => ArrayData::U8(Vec::try_from(&flat)?),
            Kind::Int => ArrayData::I32(Vec::try_from(&flat)?),
            Kind::Int64 => ArrayData::I64(Vec::try_from(&flat)?),
            k => {
                return Err(TorchError::Kind {
                    what: "a variable saved to a Keras archive",
                    kind: k,
                });
            }
        }
    };
    Array::new(shape, data).map_err(archive_err)
}

/// An archive array as a float64 tensor of its shape (loading converts it to the variable's
/// kind).
fn to_tensor(a: &Array) -> Result<Tensor> {
    let shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&a.data.to_f64()).f_reshape(shape.as_slice())?)
}

/// Writes `layers` with the model JSON `config` to a `.keras` archive at `path`.
pub(crate) fn save(layers: &[Box<dyn Layer>], config: String, path: &Path) -> Result<()> {
    let vars: Vec<(String, Array)> = ordered_variables(layers)
        .iter()
        .map(|(p, t)| Ok((p.clone(), to_array(p, t)?)))
        .collect::<Result<_>>()?;
    KerasArchive::from_variables(config, &vars)
        .and_then(|a| a.write(path))
        .map_err(archive_err)
}

/// Keras' saving marks objects that several configurations share (a constraint, a dtype
/// policy) with a `shared_object_id` beside their full configuration: not part of what
/// `model.to_json()` writes, so left out.
fn strip_shared_ids(v: &mut hgq_config::PyValue) {
    match v {
        hgq_config::PyValue::Dict(entries) => {
            entries.retain(|(k, _)| k != "shared_object_id");
            entries.iter_mut().for_each(|(_, v)| strip_shared_ids(v));
        }
        hgq_config::PyValue::List(items) => items.iter_mut().for_each(strip_shared_ids),
        _ => {}
    }
}

/// An archive's model JSON, as the models' readers take it: the compile configuration (an
/// optimizer's, which is not restored here) and the shared-object marks left out.
pub(crate) fn read(path: &Path) -> Result<(KerasArchive, String)> {
    let archive = KerasArchive::read(path).map_err(archive_err)?;
    let mut v = hgq_config::PyValue::parse(&archive.config)?;
    strip_shared_ids(&mut v);
    if let hgq_config::PyValue::Dict(entries) = &mut v
        && let Some((_, c)) = entries.iter_mut().find(|(k, _)| k == "compile_config")
    {
        *c = hgq_config::PyValue::Dict(Vec::new());
    }
    let json = v.to_json();
    Ok((archive, json))
}

/// Sets every variable of `layers` from `archive` (all or nothing), then each layer's `beta`
/// and kept EBOPs from the archive's bookkeeping.
pub(crate) fn load(layers: &[Box<dyn Layer>], archive: &KerasArchive) -> Result<()> {
    let names: Vec<String> = ordered_variables(layers)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let arrays = archive.variable_paths(&names).map_err(archive_err)?;
    let mut tensors: Vec<(String, Tensor)> = arrays
        .iter()
        .map(|(p, a)| Ok((p.clone(), to_tensor(a)?)))
        .collect::<Result<_>>()?;
    // Seed states are not in archives: they stay as the model was built.
    tensors.extend(
        super::model::keras_variables(layers)
            .into_iter()
            .filter(|(p, _)| is_seed_state(p))
            .map(|(p, t)| (p, t.detach().copy())),
    );
    let scalar = |path: &str, what: &str| {
        let p = format!("{path}/{what}");
        arrays
            .iter()
            .find(|(n, _)| *n == p)
            .and_then(|(_, a)| a.data.to_f64().first().copied())
    };
    // Checked before anything changes.
    let mut book = Vec::new();
    for l in layers {
        for (path, _, _) in l.bookkeeping() {
            let beta = scalar(&path, "beta");
            if let Some(b) = beta {
                super::check_beta(b)?;
            }
            let ebops = scalar(&path, "ebops").map(super::ebops_u32);
            book.push((l, path, beta, ebops));
        }
    }
    super::model::load_keras_variables(layers, &tensors)?;
    for (l, path, beta, ebops) in book {
        l.restore_bookkeeping(&path, beta, ebops)?;
    }
    Ok(())
}
