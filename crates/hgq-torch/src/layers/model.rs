//! What a model of layers does over all of its layers, whatever its shape (a
//! [`super::Sequential`] chain or a [`super::Functional`] graph): EBOPs, beta, constraints,
//! regularization, variables by Keras path, and tracing with the state restored on an error.
use hgq_core::CallMode;
use tch::Tensor;

use super::Layer;
use crate::{Result, TorchError};

/// The total EBOPs of the last training or tracing call (the layers' uint32 values summed).
pub(crate) fn ebops(layers: &[Box<dyn Layer>]) -> u64 {
    layers.iter().map(|l| l.ebops() as u64).sum()
}

/// Sets every layer's `beta` (layers without EBOPs are left as they are).
pub(crate) fn set_beta(layers: &[Box<dyn Layer>], beta: f64) -> Result<()> {
    super::check_beta(beta)?;
    for l in layers.iter().filter(|l| l.beta().is_some()) {
        l.set_beta(beta)?;
    }
    Ok(())
}

/// Applies every constraint (after an optimizer step).
pub(crate) fn apply_constraints(layers: &[Box<dyn Layer>]) -> Result<()> {
    layers.iter().try_for_each(|l| l.apply_constraints())
}

/// Whether any layer has a regularizer.
pub(crate) fn has_regularization(layers: &[Box<dyn Layer>]) -> bool {
    layers.iter().any(|l| l.has_regularization())
}

/// The regularization losses, summed.
pub(crate) fn regularization_loss(layers: &[Box<dyn Layer>]) -> Result<Tensor> {
    let mut total = Tensor::from(0.0f32);
    for l in layers.iter().filter(|l| l.has_regularization()) {
        total = total.f_add(&l.regularization_loss()?)?;
    }
    Ok(total)
}

/// Every variable with its Keras path.
pub(crate) fn keras_variables(layers: &[Box<dyn Layer>]) -> Vec<(String, Tensor)> {
    layers.iter().flat_map(|l| l.keras_variables()).collect()
}

/// hgq2's `trace_minmax`: resets the WRAP tracking, runs `batches` batches through `run` in
/// tracing mode, and returns the EBOPs after it. No batch is an error (tracing nothing would
/// leave every WRAP quantizer without integer bits); on an error every variable and every
/// kept EBOPs value is as before the call.
pub(crate) fn trace<B>(
    layers: &[Box<dyn Layer>],
    batches: &[B],
    run: impl Fn(&B, CallMode) -> Result<()>,
) -> Result<u64> {
    if batches.is_empty() {
        return Err(TorchError::Invalid {
            what: "trace_minmax batches",
            why: "none given: give it the data whose ranges to record".into(),
        });
    }
    // Errors a device found before (`deferred`) are reported before anything changes.
    crate::deferred::check()?;
    let saved: Vec<(Tensor, Tensor)> = keras_variables(layers)
        .into_iter()
        .map(|(_, t)| (t.detach().copy(), t))
        .collect();
    let kept: Vec<u32> = layers.iter().map(|l| l.ebops()).collect();
    let traced = tch::no_grad(|| -> Result<()> {
        for l in layers {
            l.reset_trace()?;
        }
        batches.iter().try_for_each(|b| run(b, CallMode::Tracing))?;
        // What the device found while tracing (non-finite data, bad bit widths).
        crate::deferred::check()
    });
    if let Err(e) = traced {
        tch::no_grad(|| -> Result<()> {
            for (copy, var) in &saved {
                var.shallow_clone().f_copy_(copy)?;
            }
            Ok(())
        })?;
        for (l, e) in layers.iter().zip(kept) {
            l.restore_ebops(e);
        }
        return Err(e);
    }
    Ok(ebops(layers))
}

/// Sets every variable from `tensors`, named by Keras variable paths. All or nothing: a
/// variable without a tensor, a tensor of another shape, a non-finite value, or a tensor no
/// variable takes (beside hgq2's `.../ebops` and `.../beta` bookkeeping) is an error before
/// any variable changes.
pub(crate) fn load_keras_variables(
    layers: &[Box<dyn Layer>],
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let vars = keras_variables(layers);
    let mut pairs = Vec::with_capacity(vars.len());
    for (path, var) in &vars {
        let Some((_, t)) = tensors.iter().find(|(n, _)| n == path) else {
            return Err(TorchError::Invalid {
                what: "Keras variables",
                why: format!("no tensor for {path}"),
            });
        };
        if t.size() != var.size() {
            return Err(TorchError::Invalid {
                what: "Keras variables",
                why: format!(
                    "{path}: shape {:?} for a variable of {:?}",
                    t.size(),
                    var.size()
                ),
            });
        }
        let finite =
            tch::no_grad(|| -> Result<bool> { Ok(bool::try_from(t.f_isfinite()?.f_all()?)?) })?;
        if !finite {
            return Err(TorchError::NonFinite("a Keras variable's tensor"));
        }
        pairs.push((var, t));
    }
    let bookkeeping = |n: &str| n.ends_with("/ebops") || n.ends_with("/beta");
    if let Some((n, _)) = tensors
        .iter()
        .find(|(n, _)| !bookkeeping(n) && !vars.iter().any(|(p, _)| p == n))
    {
        return Err(TorchError::Invalid {
            what: "Keras variables",
            why: format!("{n}: no variable of this model has that path"),
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (var, t) in pairs {
            let src = t.f_to_device(var.device())?.f_to_kind(var.kind())?;
            var.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })
}
