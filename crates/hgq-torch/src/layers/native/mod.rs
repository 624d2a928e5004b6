//! The training step of a [`Sequential`] without autograd, on the CPU.
//!
//! A step of the small networks HGQ trains is a few hundred tiny tensor operations through
//! autograd; their dispatch, not their arithmetic, is the step's time. Here the same step is
//! plain loops over the `VarStore`'s memory: per layer the quantizers' fused passes
//! (hgq-core's kernels, kept for their backward: [`SavedPass`]), one matrix product forward
//! and two backward (libtorch's MKL on Intel, else tiles in registers; narrow ones in plain
//! loops), a convolution's windows gathered into the product's rows and its input's gradient
//! scattered back, poolings, the EBOPs and their gradients through the bit widths ([`Dual`]:
//! the quantizer logic's own arithmetic, differentiated), the cross
//! entropy, the regularizers, then Keras' Adam and the constraints in place. The quantizer
//! logic is the one every backend runs (hgq-core's `Quantizer` on its CPU backend, variables
//! read where the `VarStore` keeps them), so values are those of the autograd step up to the
//! order of float32 sums in the matrix products.
use std::sync::Arc;

use hgq_core::quantizer::{Backend, Constraint, Cpu, Dual, Grads, SavedPass};
use hgq_core::shape::{broadcast_to, sum_to};
use hgq_core::{CallMode, Path, TensorRef, scratch};
use tch::{Device, Kind, Tensor};

use super::reshape::check_dims;
use super::{Ebops, Flatten, Named, QBase, QConv, QDense, QPool, Reshape, Sequential};
use crate::backend::TchVar;
use crate::optim::{Adam, HostGrad};
use crate::{Result, TorchError, host};

mod direct;
mod gemm;
mod kernel;
mod loss;
mod pool;
mod sparse;
mod windows;

pub(crate) use gemm::{Operand, product};

use kernel::{KernelLayer, KernelPass};
use loss::{Labels, cross_entropy};
use pool::{PoolLayer, PoolPass};

/// The native step's layers for `model` on these tensors, or why it cannot run on them: made
/// once per step, for the choice of path and for the step itself.
pub(crate) struct Plan<'m>(Vec<Native<'m>>);

/// [`Plan`] of a step of `model` on `x` and `labels`.
pub(crate) fn prepare<'m>(
    model: &'m Sequential,
    x: &Tensor,
    labels: &Tensor,
) -> std::result::Result<Plan<'m>, String> {
    if !host::is_plain(x) {
        return Err("the input is not a contiguous float32 CPU tensor".into());
    }
    if labels.device() != Device::Cpu || labels.kind() != Kind::Int64 || !labels.is_contiguous() {
        return Err("the labels are not a contiguous int64 CPU tensor".into());
    }
    plan(model).map(Plan)
}

/// A layer of the native step.
enum Native<'a> {
    Kernel(KernelLayer<'a>),
    Pool(PoolLayer<'a>),
}

/// What a layer's forward keeps for its backward.
enum NativePass {
    // Boxed: passes of hundreds of bytes, moved into the step's list.
    Kernel(Box<KernelPass>),
    Pool(Box<PoolPass>),
}

impl<'a> Native<'a> {
    fn base(&self) -> &'a QBase {
        match self {
            Native::Kernel(l) => l.base,
            Native::Pool(l) => l.base,
        }
    }

    /// The layer's quantizers (no list made: asked for every step).
    fn quantizers(&self) -> impl Iterator<Item = &'a Named> {
        let q = match self {
            Native::Kernel(l) => l.quantizers(),
            Native::Pool(l) => {
                let [iq] = l.quantizers();
                [iq, None, None]
            }
        };
        q.into_iter().flatten()
    }

    /// The layer's training forward (its EBOPs after it: [`Self::ebops`]).
    fn forward(&self, x: Input<'_>, batch: usize) -> Result<NativePass> {
        Ok(match self {
            Native::Kernel(l) => NativePass::Kernel(Box::new(l.forward(x, batch)?)),
            Native::Pool(l) => NativePass::Pool(Box::new(l.forward(x, batch)?)),
        })
    }

    /// The layer's EBOPs from its quantizers' bit widths now (its input quantizer's tracking
    /// finished), kept in `p` for the backward.
    fn ebops(&self, p: &mut NativePass) -> Result<f32> {
        match (self, p) {
            (Native::Kernel(l), NativePass::Kernel(p)) => l.ebops(p),
            (Native::Pool(l), NativePass::Pool(p)) => l.ebops(p),
            _ => Err(TorchError::Kernel(
                "a layer's EBOPs given another layer's pass".into(),
            )),
        }
    }

    /// The layer's backward of the data loss for upstream `da`: `dx`, and where its
    /// quantizers' variables start in `grads` (every trainable variable's gradient pushed).
    fn backward(
        &self,
        p: &NativePass,
        da: Vec<f32>,
        grads: &mut Vec<VarGrad>,
    ) -> Result<(Vec<f32>, Starts)> {
        match (self, p) {
            (Native::Kernel(l), NativePass::Kernel(p)) => l.backward(p, da, grads),
            (Native::Pool(l), NativePass::Pool(p)) => {
                let (dx, at) = l.backward(p, da, grads)?;
                Ok((dx, [at, None, None]))
            }
            _ => Err(TorchError::Kernel(
                "a layer's backward given another layer's pass".into(),
            )),
        }
    }

    /// Adds the EBOPs' (times beta) and the regularizers' gradients to those of the layer's
    /// quantizers' variables (starting at `at` in `grads`); the regularization losses to
    /// `reg`.
    fn extra_grads(
        &self,
        p: &NativePass,
        at: Starts,
        grads: &mut [VarGrad],
        reg: &mut f32,
    ) -> Result<()> {
        match (self, p) {
            (Native::Kernel(l), NativePass::Kernel(p)) => l.extra_grads(p, at, grads, reg),
            (Native::Pool(l), NativePass::Pool(p)) => l.extra_grads(p, at[0], grads, reg),
            _ => Err(TorchError::Kernel(
                "a layer's gradients given another layer's pass".into(),
            )),
        }
    }

    /// Applies the constraints of the variables Adam did not update (and constrain) on host
    /// memory: those that are not trained (WRAP's `i`, set by the data).
    fn constrain_untrained(&self) -> Result<()> {
        let cpu = Cpu::<f32, TchVar>::new();
        for q in self.quantizers() {
            let mut inner = q.q.lock();
            for v in inner.variables_mut().iter_mut().filter(|v| !v.trainable) {
                if let Some(c) = v.constraint {
                    cpu.constrain(&mut v.value, c)?;
                }
            }
        }
        Ok(())
    }
}

impl NativePass {
    /// The layer's output (after its activation).
    fn output(&self) -> &Arc<Vec<f32>> {
        match self {
            NativePass::Kernel(p) => &p.a,
            NativePass::Pool(p) => &p.a,
        }
    }

    fn recycle(self) {
        match self {
            NativePass::Kernel(p) => (*p).recycle(),
            NativePass::Pool(p) => (*p).recycle(),
        }
    }
}

/// The model's layers as the native step runs them, or why it cannot: `QDense`, `QConv` of
/// one group, `QPool`, each with its input quantizer, no
/// output quantizer, plain EBOPs, its weights and quantizer variables float32 on the CPU; the
/// `Reshape` and `Flatten` between them are the same memory (channels last), left out. The
/// last layer gives one row of logits per sample.
fn plan(model: &Sequential) -> std::result::Result<Vec<Native<'_>>, String> {
    let mut plan = Vec::new();
    for l in model.layers() {
        let name = l.name();
        // Every loop below takes rows of at least one value.
        if l.input_dims().contains(&0) || l.output_dims().contains(&0) {
            return Err(format!("{name} has an empty dimension"));
        }
        let native = if let Some(d) = l.downcast_ref::<QDense>() {
            Native::Kernel(KernelLayer::dense(d))
        } else if let Some(c) = l.downcast_ref::<QConv>() {
            if c.groups() != 1 {
                return Err(format!("{name} has {} groups", c.groups()));
            }
            Native::Kernel(KernelLayer::conv(c).map_err(|e| e.to_string())?)
        } else if let Some(p) = l.downcast_ref::<QPool>() {
            Native::Pool(PoolLayer::new(p).map_err(|e| e.to_string())?)
        } else if l.downcast_ref::<Reshape>().is_some() || l.downcast_ref::<Flatten>().is_some() {
            continue;
        } else {
            return Err(format!("{name} is a layer the native step does not run"));
        };
        check_layer(&native, name)?;
        plan.push(native);
    }
    if plan.is_empty() {
        return Err("the model has no quantized layer".into());
    }
    match model.layers().last().map(|l| l.output_dims()) {
        Some(d) if d.len() == 1 => Ok(plan),
        d => Err(format!("the model's output {d:?} is not one row of logits")),
    }
}

/// What every layer of the native step needs.
fn check_layer(l: &Native<'_>, name: &str) -> std::result::Result<(), String> {
    let base = l.base();
    if base.oq.is_some() {
        return Err(format!("{name} has an output quantizer"));
    }
    if base.iq.is_none() {
        return Err(format!("{name} has no input quantizer"));
    }
    if !base.enable_ebops || base.ebops_factor != 1.0 {
        return Err(format!(
            "{name} has its EBOPs off or scaled (enable_ebops, ebops_factor)"
        ));
    }
    if let Native::Kernel(k) = l {
        if !base.trainable {
            return Err(format!("{name} is frozen (trainable=False)"));
        }
        if !k.weights().all(host::is_plain) {
            return Err(format!(
                "{name}'s kernel or bias is not contiguous float32 CPU"
            ));
        }
    }
    for q in l.quantizers() {
        if !q.q.is_bare() {
            return Err(format!(
                "{} has a scaler, noise factor or affine map",
                q.keras_path
            ));
        }
        let inner = q.q.lock();
        if !inner
            .variables()
            .iter()
            .all(|v| host::is_plain(v.value.tensor()))
        {
            return Err(format!("{}'s variables are not float32 CPU", q.keras_path));
        }
    }
    Ok(())
}

/// A quantizer's pass kept for the backward: its variables as handles to the `VarStore`'s
/// memory (unchanged until Adam's update, after every backward).
type Pass = SavedPass<f32, TchVar>;

/// A quantizer's pass on `x` (its shape `shape`), kept for the backward.
fn quantize(q: &Named, x: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Pass)> {
    Ok(q.q
        .lock()
        .forward_saved(TensorRef::new(x, shape)?, CallMode::Training, Path::Simd)?)
}

/// A layer's input: the step's batch (the pass that keeps it copies it), or the output of the
/// layer below, which its pass keeps as it is (the layer below keeps it too).
#[derive(Clone, Copy)]
enum Input<'a> {
    Batch(&'a [f32]),
    Below(&'a Arc<Vec<f32>>),
}

/// The input quantizer's pass on a layer's input `x` (its shape `shape`), kept for the
/// backward.
fn quantize_input(q: &Named, x: Input<'_>, shape: &[usize]) -> Result<(Vec<f32>, Pass)> {
    match x {
        Input::Batch(x) => quantize(q, x, shape),
        Input::Below(a) => {
            Ok(q.q
                .lock()
                .forward_saved_shared(a, shape, CallMode::Training, Path::Simd)?)
        }
    }
}

/// A quantizer's bit widths with their derivatives (the dual in the bit-width shape, that
/// shape) and, where the EBOPs read them in a larger shape, broadcast to it.
struct Bits {
    broadcast: Option<Vec<f32>>,
    dual: Dual<f32>,
    bw_shape: Vec<usize>,
}

impl Bits {
    /// The values in the shape the EBOPs read.
    fn full(&self) -> &[f32] {
        self.broadcast.as_deref().unwrap_or(&self.dual.value)
    }

    /// `d`, a gradient in the EBOPs' shape `from`, summed to the bit-width shape.
    fn reduce(&self, d: Vec<f32>, from: &[usize]) -> Result<Vec<f32>> {
        if self.broadcast.is_none() {
            return Ok(d);
        }
        Ok(sum_to(&d, from, &self.bw_shape)?)
    }
}

fn bits(q: &Named, shape: &[usize]) -> Result<Bits> {
    let inner = q.q.lock();
    let dual = inner.bits_dual::<f32>()?;
    let bw_shape = inner
        .layout()
        .map(|l| l.bw_shape.clone())
        .unwrap_or_default();
    // Same element count: the same shape (it broadcasts to `shape`), nothing to copy.
    let broadcast = if dual.value.len() == shape.iter().product::<usize>() {
        hgq_core::shape::check_broadcast(&bw_shape, shape)?;
        None
    } else {
        Some(broadcast_to(&dual.value, &bw_shape, shape)?)
    };
    Ok(Bits {
        broadcast,
        dual,
        bw_shape,
    })
}

/// An upstream gradient of a quantizer's bit widths: one value each, or one per row of a
/// kernel (the same value for every weight of the row).
enum Upstream {
    Each(Vec<f32>),
    Rows(Vec<f32>),
}

/// A trainable variable, its gradient and the constraint Adam applies after its update.
type VarGrad = (Tensor, Vec<f32>, Option<Constraint>);

/// A quantizer's trainable variables with its pass's gradients `g` (zeros where it gives none),
/// pushed to `grads`; returns where they start.
fn pass_grads(q: &Named, mut g: Grads<f32>, grads: &mut Vec<VarGrad>) -> usize {
    let at = grads.len();
    let inner = q.q.lock();
    for v in inner.variables().iter().filter(|v| v.trainable) {
        let grad = g
            .take(v.name)
            .unwrap_or_else(|| vec![0.0f32; v.shape.iter().product()]);
        grads.push((v.value.tensor().shallow_clone(), grad, v.constraint));
    }
    at
}

/// Adds to a quantizer's variables' gradients (`grads` from `at`, as [`pass_grads`] pushed
/// them) the EBOPs' through its bit widths (`bits` and their upstream) and its regularizers'
/// (their loss added to `reg`), summed in place in this order.
fn extra_grads(
    q: &Named,
    ebops: Option<(&Bits, Upstream)>,
    grads: &mut [VarGrad],
    at: usize,
    reg: &mut f32,
) -> Result<()> {
    let inner = q.q.lock();
    let trained = || inner.variables().iter().filter(|v| v.trainable);
    let mine = grads
        .get_mut(at..at + trained().count())
        .ok_or_else(|| TorchError::Kernel("a quantizer's gradients out of place".into()))?;
    let mut g = Grads::default();
    for (v, (_, grad, _)) in trained().zip(mine.iter_mut()) {
        g.put(v.name, std::mem::take(grad))
            .map_err(|_| TorchError::Kernel(format!("{:?} has no gradient", v.name)))?;
    }
    match ebops {
        Some((bits, Upstream::Each(up))) => inner.add_trainable_grads(&bits.dual, &up, &mut g)?,
        Some((bits, Upstream::Rows(rows))) => {
            bits.dual
                .backward_add_rows(&rows, &mut g, |name| inner.trains(name))?
        }
        None => {}
    }
    if let Some(loss) = inner.regularization_loss_and_grads(&mut g)? {
        *reg += loss;
    }
    for (v, (_, grad, _)) in trained().zip(mine.iter_mut()) {
        *grad = g
            .take(v.name)
            .unwrap_or_else(|| vec![0.0f32; v.shape.iter().product()]);
    }
    Ok(())
}

/// Values per input sample of a layer.
fn sample(base: &QBase) -> usize {
    base.input_dims.iter().product()
}

/// The shape of `batch` inputs of a layer.
fn input_shape(base: &QBase, batch: usize) -> Vec<usize> {
    std::iter::once(batch)
        .chain(base.input_dims.iter().copied())
        .collect()
}

/// A tensor the support check passed that is no longer plain memory.
fn not_plain(what: &str) -> TorchError {
    TorchError::Invalid {
        what: "native training step",
        why: format!("{what} is not a contiguous float32 CPU tensor"),
    }
}

/// One native step of `plan` ([`prepare`]d for these tensors): forward, loss, backward, Adam,
/// constraints. Returns the total loss (cross entropy + EBOPs + regularization) and the
/// correct predictions.
pub(super) fn step(
    model: &Sequential,
    plan: Plan<'_>,
    x: &Tensor,
    labels: &Tensor,
    opt: &mut Adam,
) -> Result<(f32, i64)> {
    // The step's passes are tens of microseconds each: on several threads they split over a
    // team that spins for the step's length (and a moment after, for the next step), not
    // over rayon's workers, which sleep between them.
    let _team = hgq_core::team::session(rayon::current_num_threads());
    forward_backward(model, plan, x, labels)?
        .finish(None)?
        .apply(opt)
}

/// A native step's forward and backward of the data loss, its update not applied yet:
/// data-parallel training averages these gradients over the ranks, and reduces the integer
/// bits the layers' quantizers tracked ([`Self::pending_maxima`]) in the same collective, before
/// [`Self::finish`] adds what is the same on every rank (the EBOPs' and regularizers' terms,
/// from bit widths that need those integer bits).
pub(crate) struct Gradients<'m> {
    layers: Vec<Native<'m>>,
    /// Each layer's pass, with where its quantizers' variables start in `grads`.
    passes: Vec<(NativePass, Starts)>,
    /// Every trainable variable with its gradient.
    grads: Vec<VarGrad>,
    ce: f32,
    correct: i64,
}

/// Where a layer's quantizers' variables start in a step's gradients (in
/// [`Native::quantizers`]' places: input, kernel, bias).
type Starts = [Option<usize>; 3];

/// A native step's gradients, whole: what [`Gradients::finish`] gives.
pub(crate) struct Update<'m> {
    layers: Vec<Native<'m>>,
    grads: Vec<VarGrad>,
    loss: f32,
    correct: i64,
}

/// The forward (state moves as in a training call, but for the integer bits a data-parallel
/// step's quantizers leave pending: [`hgq_core::sync::defer`]) and the backward of the data
/// loss of a native step of `model` through `plan` ([`prepare`]d for these tensors).
pub(crate) fn forward_backward<'m>(
    model: &'m Sequential,
    plan: Plan<'m>,
    x: &Tensor,
    labels: &Tensor,
) -> Result<Gradients<'m>> {
    let layers = plan.0;
    let size = x.size();
    let batch = size.first().copied().unwrap_or(0) as usize;
    if batch == 0 {
        return Err(TorchError::Invalid {
            what: "training batch",
            why: format!("shape {size:?}: no rows"),
        });
    }
    if labels.size() != [batch as i64] {
        return Err(TorchError::Invalid {
            what: "labels",
            why: format!("shape {:?} for a batch of {batch}", labels.size()),
        });
    }
    let (Some(first), Some(last)) = (model.layers().first(), model.layers().last()) else {
        return Err(TorchError::Unsupported(
            "the native training step: a model without layers".into(),
        ));
    };
    // Checked before any state moves (the layers' inputs and outputs fit each other: the
    // model checked them as they were added).
    check_dims(&size, first.input_dims())?;
    let classes = last.output_dims().iter().product();
    let labels = Labels::new(&Vec::try_from(labels)?, classes)?;
    let x = host::slice(x).ok_or_else(|| not_plain("the input"))?;
    let mut passes: Vec<NativePass> = Vec::with_capacity(layers.len());
    {
        // Data-parallel: the input quantizers' tracking waits, to be reduced over the
        // processes with the gradients, not in a collective per layer.
        let _defer = hgq_core::sync::defer();
        for l in &layers {
            // Each layer reads the output the layer below keeps for its backward.
            let input = passes
                .last()
                .map_or(Input::Batch(x), |p| Input::Below(p.output()));
            passes.push(l.forward(input, batch)?);
        }
    }
    let logits = passes.last().map_or(x, |p| &p.output()[..]);
    let (ce, mut da, correct) = cross_entropy(logits, &labels)?;
    let mut grads = Vec::new();
    let mut starts = vec![[None; 3]; layers.len()];
    for ((l, p), at) in layers.iter().zip(&passes).zip(&mut starts).rev() {
        (da, *at) = l.backward(p, da, &mut grads)?;
    }
    scratch::give(da);
    Ok(Gradients {
        layers,
        passes: passes.into_iter().zip(starts).collect(),
        grads,
        ce,
        correct,
    })
}

impl<'m> Gradients<'m> {
    /// Every trainable variable with its gradient.
    pub(crate) fn grads_mut(&mut self) -> impl Iterator<Item = (&Tensor, &mut Vec<f32>)> {
        self.grads.iter_mut().map(|(var, grad, _)| (&*var, grad))
    }

    /// This process's maxima that the layers' quantizers left for the processes to reduce
    /// ([`hgq_core::sync::defer`]), in the layers' order; empty where none did.
    pub(crate) fn pending_maxima(&self) -> Vec<f64> {
        pending(&self.layers).0
    }

    /// The step's gradients, whole: the layers' tracking finished with `maxima` (their
    /// [`Self::pending_maxima`] reduced over the processes; `None`: reduced here through the
    /// sync installed on this thread, if any), then each layer's bit widths and EBOPs, and the
    /// EBOPs' (times beta) and regularizers' gradients added to the variables' in place.
    pub(crate) fn finish(self, maxima: Option<&[f64]>) -> Result<Update<'m>> {
        let Gradients {
            layers,
            mut passes,
            mut grads,
            ce,
            correct,
        } = self;
        finish_tracking(&layers, maxima)?;
        let mut total = 0.0f32;
        for (l, (p, _)) in layers.iter().zip(&mut passes) {
            let e = l.ebops(p)?;
            let base = l.base();
            total += e * base.beta.get() as f32;
            *base.ebops.borrow_mut() = Ebops::Value(super::ebops_u32(f64::from(e)));
        }
        // As the backward ran: last layer first.
        let mut reg = 0.0f32;
        for (l, (p, at)) in layers.iter().zip(&passes).rev() {
            l.extra_grads(p, *at, &mut grads, &mut reg)?;
        }
        // Last layer first: each layer's output is free once the layer above dropped its pass.
        for (p, _) in passes.into_iter().rev() {
            p.recycle();
        }
        Ok(Update {
            layers,
            grads,
            loss: ce + total + reg,
            correct,
        })
    }
}

impl Update<'_> {
    /// Adam's update with the constraints, then those of the variables Adam does not update.
    /// Returns the total loss (cross entropy + EBOPs + regularization) and the correct
    /// predictions.
    pub(crate) fn apply(self, opt: &mut Adam) -> Result<(f32, i64)> {
        let Update {
            layers,
            grads,
            loss,
            correct,
        } = self;
        let refs: Vec<HostGrad<'_>> = grads
            .iter()
            .map(|(var, grad, constraint)| HostGrad {
                var,
                grad,
                constraint: *constraint,
            })
            .collect();
        opt.step_host(&refs)?;
        drop(refs);
        for l in &layers {
            l.constrain_untrained()?;
        }
        // The next step's gradients of the same sizes.
        for (_, grad, _) in grads {
            scratch::give(grad);
        }
        Ok((loss, correct))
    }
}

/// The maxima the layers' quantizers left pending ([`hgq_core::sync::defer`]), in the layers'
/// order, and the quantizers that left them with how many each.
fn pending<'a>(layers: &[Native<'a>]) -> (Vec<f64>, Vec<(&'a Named, usize)>) {
    let mut maxima = Vec::new();
    let mut from = Vec::new();
    for q in layers.iter().flat_map(Native::quantizers) {
        if let Some(m) = q.q.lock().pending_maxima() {
            maxima.extend_from_slice(m);
            from.push((q, m.len()));
        }
    }
    (maxima, from)
}

/// Finishes the tracking that the layers' quantizers left pending in the forward
/// ([`hgq_core::sync::defer`]) with `maxima`, their maxima in the layers' order reduced over the
/// processes; `None`: reduced here, in one collective of the sync installed on this thread
/// (none: this process's own).
fn finish_tracking(layers: &[Native<'_>], maxima: Option<&[f64]>) -> Result<()> {
    let (mut local, pending) = pending(layers);
    let reduced = match maxima {
        Some(m) if m.len() != local.len() => {
            return Err(TorchError::Invalid {
                what: "reduced tracking maxima",
                why: format!("{} values for {} pending", m.len(), local.len()),
            });
        }
        Some(m) => m,
        None if pending.is_empty() => return Ok(()),
        None => {
            if let Some(sync) = hgq_core::sync::current() {
                sync.max(&mut local)
                    .map_err(hgq_core::CoreError::Collective)?;
            }
            &local
        }
    };
    let cpu = Cpu::<f32, TchVar>::new();
    let mut at = 0;
    for (q, n) in pending {
        q.q.lock().finish_tracking(&cpu, &reduced[at..at + n])?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hgq_config::keras::Regularizer;
    use hgq_config::{Place, QType, QuantizerConfig};
    use hgq_core::quantizer::VarName;
    use hgq_core::{OverflowMode, RoundMode};
    use tch::nn;

    use super::*;
    use crate::layers::{Activation, Padding, PoolKind, QDenseBuilder};

    /// The layers of each case: (in, units, activation, what to change of the defaults).
    fn case(n: usize) -> Vec<QDenseBuilder> {
        let relu = |b: QDenseBuilder| b.activation(Activation::Relu);
        let conf = |t, p| QuantizerConfig::builder(t, p);
        match n {
            // The demo's layers: hgq2's defaults.
            0 => vec![relu(QDense::builder(12, 16)), QDense::builder(16, 5)],
            // KIF SAT weights with regularizers, a per-tensor KBI input, minifloat bias,
            // a large beta (EBOPs gradients matter).
            1 => vec![
                relu(QDense::builder(12, 8))
                    .beta(1e-2)
                    .kq(conf(QType::Kif, Place::Weight)
                        .overflow_mode(OverflowMode::Sat)
                        .fr(Regularizer::L1(1e-3))
                        .ir(Regularizer::L2(1e-3))
                        .build()
                        .unwrap())
                    .iq(conf(QType::Kbi, Place::Datalane)
                        .heterogeneous_axis([])
                        .round_mode(RoundMode::Rnd)
                        .build()
                        .unwrap())
                    .bq(conf(QType::Float, Place::Bias)
                        .heterogeneous_axis([0])
                        .build()
                        .unwrap()),
                QDense::builder(8, 3).beta(1e-3),
            ],
            // No bias, a dummy input quantizer, three layers.
            _ => vec![
                relu(QDense::builder(12, 8).use_bias(false)).iq(conf(
                    QType::Dummy,
                    Place::Datalane,
                )
                .build()
                .unwrap()),
                relu(QDense::builder(8, 8)),
                QDense::builder(8, 4).use_bias(false),
            ],
        }
    }

    /// Case `n`'s model and the shape of one input sample: the dense cases of [`case`], then
    /// convolutions and poolings (the CNN demo's layers; 1-D with `same` padding, strides, an
    /// average pooling and a parallelization factor; 2-D dilated over three channels, no
    /// bias, a strided max pooling with padding), dense layers over particles with a global
    /// average (Deep Sets), a global maximum.
    fn model_of_case(n: usize, vs: &nn::VarStore) -> Result<(Sequential, Vec<i64>)> {
        let root = vs.root();
        let mut m = Sequential::new();
        let relu = Activation::Relu;
        let input = match n {
            0..=2 => {
                for l in case(n) {
                    m.add(&root, l)?;
                }
                vec![12]
            }
            3 => {
                m.add(&root, Reshape::new(&[64], &[8, 8, 1])?)?;
                m.add(
                    &root,
                    QConv::builder_2d([8, 8, 1], 8, [3, 3]).activation(relu),
                )?;
                m.add(&root, QPool::builder_2d(PoolKind::Max, [6, 6, 8], [2, 2]))?;
                m.add(&root, Flatten::new(&[3, 3, 8])?)?;
                m.add(&root, QDense::builder(72, 10))?;
                vec![64]
            }
            4 => {
                let conv = QConv::builder_1d([9, 2], 4, 3)
                    .padding(Padding::Same)
                    .strides(&[2])
                    .parallelization_factor(2)
                    .beta(1e-2)
                    .activation(relu);
                m.add(&root, conv)?;
                let pool = QPool::builder_1d(PoolKind::Average, [5, 4], 2)
                    .padding(Padding::Same)
                    .beta(1e-2);
                m.add(&root, pool)?;
                m.add(&root, Flatten::new(&[3, 4])?)?;
                m.add(&root, QDense::builder(12, 3).beta(1e-2))?;
                vec![9, 2]
            }
            6 => {
                // Deep Sets: dense layers over each of 8 particles, a global average.
                let dense = |i: usize, o: usize| {
                    QDense::builder(i, o)
                        .input_dims(&[8, i])
                        .activation(relu)
                        .beta(1e-2)
                };
                m.add(&root, dense(3, 16))?;
                m.add(&root, dense(16, 8).parallelization_factor(2))?;
                m.add(&root, QPool::global(PoolKind::Average, &[8, 8]).beta(1e-2))?;
                m.add(&root, QDense::builder(8, 5).beta(1e-2))?;
                vec![8, 3]
            }
            7 => {
                // A global maximum (equal maxima share the gradient) after a convolution.
                let conv = QConv::builder_2d([4, 5, 2], 3, [2, 2]).activation(relu);
                m.add(&root, conv)?;
                m.add(&root, QPool::global(PoolKind::Max, &[3, 4, 3]))?;
                m.add(&root, QDense::builder(3, 4))?;
                vec![4, 5, 2]
            }
            _ => {
                let conv = QConv::builder_2d([6, 7, 3], 5, [2, 3])
                    .padding(Padding::Same)
                    .dilation(&[2, 1])
                    .use_bias(false)
                    .beta(1e-3)
                    .activation(relu);
                m.add(&root, conv)?;
                let pool = QPool::builder_2d(PoolKind::Max, [6, 7, 5], [2, 2])
                    .strides(&[1, 2])
                    .padding(Padding::Same);
                m.add(&root, pool)?;
                m.add(&root, Flatten::new(&[6, 4, 5])?)?;
                m.add(&root, QDense::builder(120, 4))?;
                vec![6, 7, 3]
            }
        };
        Ok((m, input))
    }

    fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn restore(vs: &nn::VarStore, s: &[(String, Tensor)]) {
        let vars = vs.variables();
        tch::no_grad(|| {
            for (n, t) in s {
                vars[n].shallow_clone().copy_(t);
            }
        });
    }

    /// A saved pass reads the `VarStore`'s memory at its backward (no copy): the gradients
    /// of a backward right after the forward, and an error, not gradients of other values,
    /// once a variable the pass read was written in between.
    #[test]
    fn saved_passes_refuse_a_backward_after_a_write() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Sequential::new();
        for l in case(0) {
            model.add(&vs.root(), l)?;
        }
        let layer = model.layer::<QDense>(0).expect("a dense layer");
        let kernel = host::slice(&layer.kernel).ok_or_else(|| not_plain("the kernel"))?;
        let shape = [layer.in_features, layer.units];
        let n = kernel.len();
        let (_, pass) = quantize(&layer.kq, kernel, &shape)?;
        let mut dx = vec![0.0f32; n];
        let grads = pass.backward(&vec![1.0; n], &mut dx)?;
        assert!(grads.b.is_some() && grads.i.is_some());
        let b = {
            let inner = layer.kq.q.lock();
            let v = inner.variables().iter().find(|v| v.name == VarName::B);
            v.map(|v| v.value.tensor().shallow_clone())
        }
        .expect("a KBI quantizer has b");
        let _ = tch::no_grad(|| b.shallow_clone().f_add_scalar_(1.0))?;
        let before = dx.clone();
        assert!(pass.backward(&vec![1.0; n], &mut dx).is_err());
        assert_eq!(dx, before, "a refused backward writes nothing");
        Ok(())
    }

    /// The native forward moves the state as the autograd forward does (bit for bit), gives
    /// the loss and every trainable variable the gradient autograd gives (float32 sums in
    /// another order: a relative tolerance), and nothing else.
    #[test]
    fn native_gradients_are_autograds() -> Result<()> {
        // Outputs left partly unwritten would hold NaN.
        hgq_core::scratch::poison();
        for n in 0..8 {
            tch::manual_seed(n as i64);
            let vs = nn::VarStore::new(Device::Cpu);
            let (model, input) = model_of_case(n, &vs)?;
            let classes = model.layers().last().unwrap().output_dims()[0] as i64;
            let shape: Vec<i64> = std::iter::once(32).chain(input).collect();
            let x = Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu)) * 6.0 - 3.0;
            let labels = Tensor::randint(classes, [32], (Kind::Int64, Device::Cpu));
            let before = snapshot(&vs);

            let out = model.forward(&x, CallMode::Training)?;
            let mut loss = out.y.cross_entropy_for_logits(&labels) + &out.ebops_loss;
            if model.has_regularization() {
                loss += model.regularization_loss()?;
            }
            loss.backward();
            let after_autograd = snapshot(&vs);
            let ebops_autograd = model.ebops();

            restore(&vs, &before);
            let layers = plan(&model).map_err(TorchError::Unsupported)?;
            let g = forward_backward(&model, Plan(layers), &x, &labels)?.finish(None)?;
            let after_native = snapshot(&vs);
            for ((name, a), (_, b)) in after_autograd.iter().zip(&after_native) {
                assert!(a.equal(b), "case {n}: {name} after the forward");
            }
            assert_eq!(model.ebops(), ebops_autograd, "case {n}: EBOPs");
            let l = loss.double_value(&[]);
            assert!(
                (f64::from(g.loss) - l).abs() <= 1e-6 * l.abs(),
                "case {n}: loss {} against {l}",
                g.loss
            );

            let trainable = vs.trainable_variables();
            assert_eq!(
                g.grads.len(),
                trainable.len(),
                "case {n}: one gradient each"
            );
            for (t, gn, _) in &g.grads {
                let name = vs
                    .variables()
                    .into_iter()
                    .find(|(_, v)| v.data_ptr() == t.data_ptr())
                    .map(|(n, _)| n)
                    .unwrap();
                let ga = Vec::<f32>::try_from(t.grad().flatten(0, -1)).unwrap();
                let scale = ga.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                for (j, (a, b)) in ga.iter().zip(gn).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale,
                        "case {n}: d {name}[{j}]: autograd {a}, native {b}"
                    );
                }
            }
        }
        Ok(())
    }
}
