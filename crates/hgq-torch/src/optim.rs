//! Keras' Adam on a [`VarStore`](tch::nn::VarStore): the update hgq2 trains with, in one
//! native pass per step.
//!
//! tch's `nn::Adam` is libtorch's `torch::optim::Adam`: about ten tensor operations per
//! variable and step, each a trip through libtorch's dispatcher. A quantized network has many
//! small variables (every quantizer's bit widths), so for the small models HGQ targets that
//! dispatch cost exceeds the arithmetic many times over. [`Adam`] updates float32 CPU
//! variables in a plain loop over their memory (one pass per variable, no dispatch), and other
//! variables (CUDA, other float kinds) with the same formula as tensor operations.
//!
//! The formula is Keras 3's `Adam` (what hgq2 uses), not torch's: `epsilon` is added to
//! `sqrt(v)` before the bias correction, which is folded into the step size:
//!
//! ```text
//! t     = iterations + 1
//! alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
//! m    += (g - m) * (1 - beta_1)
//! v    += (g^2 - v) * (1 - beta_2)
//! var  -= (m * alpha) / (sqrt(v) + epsilon)
//! ```
//!
//! The moments `m` and `v` are flushed to zero when they fall below the smallest normal number
//! of their kind, as TensorFlow's and XLA's CPU runtimes (where hgq2 trains) flush subnormals.
//! Without it the first moment of a weight whose gradient stays zero (a dead unit, a pruned
//! weight) decays into the subnormal range and stays there (`m - 0.1 m` rounds back to `m`),
//! and on many CPUs every arithmetic operation on a subnormal takes a slow microcode path.
//!
//! ```no_run
//! use hgq_torch::optim::{Adam, AdamConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let w = vs.root().var("w", &[4], nn::Init::Const(1.0));
//! let mut opt = Adam::new(&vs, AdamConfig::default().learning_rate(3e-3))?;
//! let loss = (&w * &w).sum(Kind::Float);
//! opt.backward_step(&loss)?;
//! # Ok::<(), hgq_torch::TorchError>(())
//! ```
use std::sync::{Arc, Mutex};

use hgq_core::Real;
use hgq_core::fold::all_finite;
use hgq_core::quantizer::Constraint;
use rayon::prelude::*;
use tch::{Tensor, nn};

use crate::{Result, TorchError, host};

/// Adam's hyper-parameters; defaults as Keras (`learning_rate` 1e-3, `beta_1` 0.9, `beta_2`
/// 0.999, `epsilon` 1e-7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// The step size.
    pub learning_rate: f64,
    /// Decay of the first moment.
    pub beta_1: f64,
    /// Decay of the second moment.
    pub beta_2: f64,
    /// Added to `sqrt(v)`.
    pub epsilon: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            learning_rate: 1e-3,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }
}

impl AdamConfig {
    /// With the step size `lr`.
    pub fn learning_rate(mut self, lr: f64) -> Self {
        self.learning_rate = lr;
        self
    }

    fn check(&self) -> Result<()> {
        let ok = self.learning_rate.is_finite()
            && self.learning_rate >= 0.0
            && (0.0..1.0).contains(&self.beta_1)
            && (0.0..1.0).contains(&self.beta_2)
            && self.epsilon.is_finite()
            && self.epsilon > 0.0;
        if ok {
            Ok(())
        } else {
            Err(TorchError::Invalid {
                what: "Adam configuration",
                why: format!("{self:?} (needs lr >= 0, betas in [0, 1), epsilon > 0, all finite)"),
            })
        }
    }
}

/// A gradient for [`Adam::step_host`]: a variable of the store, its gradient (row-major) and
/// the constraint to apply after its update.
#[derive(Debug)]
pub(crate) struct HostGrad<'a> {
    pub var: &'a Tensor,
    pub grad: &'a [f32],
    pub constraint: Option<Constraint>,
}

/// One variable with its moments.
#[derive(Debug)]
struct Slot {
    var: Tensor,
    m: Tensor,
    v: Tensor,
    /// `var`'s memory as last seen: how [`Adam::step_host`] finds a variable's slot.
    ptr: usize,
}

impl Slot {
    fn new(var: &Tensor) -> Self {
        let z = || tch::no_grad(|| var.zeros_like()).contiguous();
        Slot {
            var: var.shallow_clone(),
            m: z(),
            v: z(),
            ptr: var.data_ptr() as usize,
        }
    }

    /// Moves the moments to the variable's device (a `VarStore` moved between steps).
    fn follow_device(&mut self) -> Result<()> {
        if self.m.device() != self.var.device() {
            self.m = self.m.f_to_device(self.var.device())?;
            self.v = self.v.f_to_device(self.var.device())?;
        }
        Ok(())
    }

    /// Keras' update on host memory, the variable's version counter moved; `false` (nothing
    /// done) where the variable or its moments are not contiguous float32 CPU tensors or `g`
    /// is not the variable's length.
    fn update_host(&self, g: &[f32], c: Coeffs, cons: Option<Constraint>) -> bool {
        // SAFETY: var, m and v are distinct allocations (m, v made by the optimizer) that
        // nothing else touches during the step; g is only read. A graph that saved var sees
        // the write through the version counter moved below.
        let plain = unsafe {
            (
                host::slice_mut(&self.var),
                host::slice_mut(&self.m),
                host::slice_mut(&self.v),
            )
        };
        match plain {
            (Some(p), Some(m), Some(v)) if p.len() == g.len() => {
                update(p, m, v, g, c, Bounds::of(cons));
                // Constraints that are no clip, after the loop.
                if let Some(k) = cons.filter(|k| k.clip_bounds().is_none()) {
                    k.apply(p);
                }
                crate::bridge::bump_version(&self.var);
                true
            }
            _ => false,
        }
    }
}

/// A clip after the update, `v.maximum(lo).minimum(hi)` with torch's NaN rule: the
/// constraints that are clips ([`Constraint::MinMax`], `Min`, `Max`; no constraint is the
/// clip to the infinities, which leaves every value as it is) applied in the update's loop.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    lo: f32,
    hi: f32,
}

impl Bounds {
    fn of(c: Option<Constraint>) -> Self {
        let (lo, hi) = c
            .and_then(|c| c.clip_bounds())
            .unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        Bounds {
            lo: lo as f32,
            hi: hi as f32,
        }
    }

    #[inline(always)]
    fn clip(self, v: f32) -> f32 {
        Real::minimum(Real::maximum(v, self.lo), self.hi)
    }
}

/// The step's constants, in float32 as Keras computes them for float32 variables (also for
/// variables of other kinds: one set per step).
#[derive(Debug, Clone, Copy)]
struct Coeffs {
    alpha: f32,
    c1: f32,
    c2: f32,
    eps: f32,
}

/// Keras' Adam over the trainable variables of a [`VarStore`](tch::nn::VarStore) (see the module
/// docs).
///
/// Variables added to the store after the optimizer was built join at the next step, as
/// with tch's optimizers.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    store: Arc<Mutex<nn::Variables>>,
    slots: Vec<Slot>,
    iterations: u64,
}

impl Adam {
    /// Adam over `vs`'s trainable variables.
    pub fn new(vs: &nn::VarStore, config: AdamConfig) -> Result<Self> {
        config.check()?;
        let mut a = Adam {
            config,
            store: vs.variables_.clone(),
            slots: Vec::new(),
            iterations: 0,
        };
        a.add_missing();
        Ok(a)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamConfig {
        self.config
    }

    /// Sets the step size (a schedule calls this between steps).
    pub fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        let c = self.config.learning_rate(lr);
        c.check()?;
        self.config = c;
        Ok(())
    }

    /// Steps taken (Keras' `iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    fn add_missing(&mut self) {
        let vars = self.store.lock().unwrap_or_else(|p| p.into_inner());
        for v in vars.trainable_variables.iter().skip(self.slots.len()) {
            self.slots.push(Slot::new(&v.tensor));
        }
    }

    /// Drops every trainable variable's gradient (PyTorch's `zero_grad(set_to_none=True)`):
    /// the next backward pass then stores its gradients instead of adding them into zeros,
    /// which saves one tensor operation per variable and step.
    pub fn zero_grad(&mut self) {
        self.add_missing();
        for s in &self.slots {
            crate::bridge::clear_grad(&s.var);
        }
    }

    /// One Adam step with the current gradients (variables without one are left alone).
    ///
    /// All or nothing: a gradient that is not finite (it would poison the moments for good),
    /// or one whose shape or device is not its variable's, is an error before anything
    /// changes, and the step is counted only once every variable is updated. Moments follow
    /// their variable to its device (a `VarStore` moved between steps). Every variable written
    /// has its version counter moved, as torch's optimizers do, so a graph built on the old
    /// values refuses its backward instead of running on the new ones.
    pub fn step(&mut self) -> Result<()> {
        self.add_missing();
        let grads: Vec<Tensor> = self.slots.iter().map(|s| s.var.grad()).collect();
        for (s, g) in self.slots.iter().zip(&grads) {
            if !g.defined() {
                continue;
            }
            if g.size() != s.var.size() || g.device() != s.var.device() {
                return Err(TorchError::Invalid {
                    what: "gradient",
                    why: format!(
                        "shape {:?} on {:?} for a variable of shape {:?} on {:?}",
                        g.size(),
                        g.device(),
                        s.var.size(),
                        s.var.device()
                    ),
                });
            }
        }
        let defined = || grads.iter().filter(|g| g.defined());
        if !host_finite(defined())? {
            return Err(TorchError::NonFinite("a gradient given to Adam"));
        }
        // Gradients on a device: checked there, the update kept only where all are finite,
        // and the error seen when the host next looks (`deferred::check`).
        let ok = device_finite(defined())?;
        if let Some(ok) = &ok {
            let failed = tch::no_grad(|| ok.f_logical_not())?;
            crate::deferred::defer(crate::deferred::Check::AdamGradient, &failed)?;
        }
        for s in &mut self.slots {
            s.follow_device()?;
        }
        let c = self.coeffs(self.iterations + 1);
        for (s, g) in self.slots.iter().zip(&grads) {
            if !g.defined() {
                continue;
            }
            if !host::slice(g).is_some_and(|gs| s.update_host(gs, c, None)) {
                update_ops(s, g, c, ok.as_ref())?;
            }
        }
        self.iterations += 1;
        Ok(())
    }

    /// One Adam step with gradients computed without autograd (a native training step):
    /// `grads` pairs variables of the store with their gradients (the variable's element
    /// count, row-major) and the constraint applied after the update (as Keras' optimizers
    /// apply a variable's constraint: in the same pass here); variables not named are left
    /// alone. All or nothing, as [`Adam::step`]; every variable and its moments must be
    /// contiguous float32 CPU tensors.
    pub(crate) fn step_host(&mut self, grads: &[HostGrad<'_>]) -> Result<()> {
        self.add_missing();
        let mut at = Vec::with_capacity(grads.len());
        for HostGrad { var, grad: g, .. } in grads {
            let j = match self.slot_of(var) {
                Some(j) => j,
                None => {
                    // Memory replaced since the slot was made (`set_data`): look again.
                    for s in &mut self.slots {
                        s.ptr = s.var.data_ptr() as usize;
                    }
                    self.slot_of(var).ok_or_else(|| TorchError::Invalid {
                        what: "gradient",
                        why: format!(
                            "for a variable of shape {:?} that this optimizer does not hold",
                            var.size()
                        ),
                    })?
                }
            };
            let s = &mut self.slots[j];
            s.follow_device()?;
            let plain = [&s.var, &s.m, &s.v].iter().all(|t| host::is_plain(t));
            let n = host::slice(&s.var).map_or(0, <[f32]>::len);
            if !plain || n != g.len() {
                return Err(TorchError::Invalid {
                    what: "gradient",
                    why: format!(
                        "{} values for a variable of shape {:?} on {:?} ({})",
                        g.len(),
                        s.var.size(),
                        s.var.device(),
                        if plain {
                            "other length"
                        } else {
                            "not a contiguous float32 CPU tensor"
                        }
                    ),
                });
            }
            if !all_finite(g) {
                return Err(TorchError::NonFinite("a gradient given to Adam"));
            }
            at.push(j);
        }
        let c = self.coeffs(self.iterations + 1);
        for (&j, g) in at.iter().zip(grads) {
            // Plain memory of g's length (checked above): always the host update.
            self.slots[j].update_host(g.grad, c, g.constraint);
        }
        self.iterations += 1;
        Ok(())
    }

    fn slot_of(&self, var: &Tensor) -> Option<usize> {
        let p = var.data_ptr() as usize;
        self.slots.iter().position(|s| s.ptr == p)
    }

    /// `zero_grad`, `loss.backward()`, `step`: one training step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        self.zero_grad();
        loss.f_backward()?;
        self.step()
    }

    /// The constants of step `t` (1 for the first).
    fn coeffs(&self, t: u64) -> Coeffs {
        let c = &self.config;
        let t = t as f32;
        let (b1, b2) = (c.beta_1 as f32, c.beta_2 as f32);
        let (p1, p2) = (b1.powf(t), b2.powf(t));
        Coeffs {
            alpha: c.learning_rate as f32 * (1.0 - p2).sqrt() / (1.0 - p1),
            c1: (1.0 - c.beta_1) as f32,
            c2: (1.0 - c.beta_2) as f32,
            eps: c.epsilon as f32,
        }
    }
}

/// Whether every value of every tensor in host memory is finite (plain float32 memory by a
/// pass over it; tensors on a device are left to [`device_finite`]).
fn host_finite<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Result<bool> {
    for g in ts {
        let finite = match host::slice(g) {
            Some(d) => all_finite(d),
            None if host::on_host(g) => bool::try_from(g.f_isfinite()?.f_all()?)?,
            None => true,
        };
        if !finite {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every value of the tensors on a device is finite, as a boolean tensor on the first
/// one's device (none without such tensors): computed there, not read here.
fn device_finite<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> Result<Option<Tensor>> {
    let mut flags: Vec<Tensor> = Vec::new();
    for g in ts {
        if !host::on_host(g) {
            let flag = g.f_isfinite()?.f_all()?.f_reshape([1])?;
            // One device for the stack (variables may live on several).
            let to = flags.first().map_or(flag.device(), Tensor::device);
            flags.push(flag.f_to_device(to)?);
        }
    }
    if flags.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::f_cat(&flags, 0)?.f_all()?))
}

/// Keras' update on raw memory, in Keras' order of operations, then the clip `b`; large
/// variables in blocks over the current rayon pool's threads (elementwise: the same bits).
fn update(var: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Coeffs, b: Bounds) {
    // Inside a team session (the native step): from the size on that hgq-core's passes split
    // at, in the team's blocks (`team::block_len`), which a faster thread takes more of (one
    // block per thread left the leader waiting for the other a tenth of its step at h512/b64
    // on two CPUs). Outside one, rayon's workers take blocks of the same size.
    const BLOCK: usize = hgq_core::team::BLOCK;
    if let Some(len) = hgq_core::team::split_len(var.len()) {
        let blocks: Vec<_> = var
            .chunks_mut(len)
            .zip(m.chunks_mut(len))
            .zip(v.chunks_mut(len))
            .zip(g.chunks(len))
            .collect();
        hgq_core::team::for_each_item(blocks, |(((p, m), v), g)| update_block(p, m, v, g, c, b));
    } else if var.len() >= 4 * BLOCK && rayon::current_num_threads() > 1 {
        var.par_chunks_mut(BLOCK)
            .zip(m.par_chunks_mut(BLOCK))
            .zip(v.par_chunks_mut(BLOCK))
            .zip(g.par_chunks(BLOCK))
            .for_each(|(((p, m), v), g)| update_block(p, m, v, g, c, b));
    } else {
        update_block(var, m, v, g, c, b);
    }
}

/// [`update_loop`] at the CPU's widest vectors: AVX-512 has twice AVX2's square roots and
/// divisions per instruction (where the variables are in cache; beyond it the update waits on
/// memory either way). Both are correctly rounded on every width, so the same bits.
fn update_block(var: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Coeffs, b: Bounds) {
    crate::simd::widest(|| update_loop(var, m, v, g, c, b))
}

#[inline(always)]
fn update_loop(var: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: Coeffs, b: Bounds) {
    // A select, not a branch: the loop stays vectorized.
    let flush = |x: f32| if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
    for (((p, m), v), &g) in var.iter_mut().zip(m).zip(v).zip(g) {
        *m = flush(*m + (g - *m) * c.c1);
        *v = flush(*v + (g * g - *v) * c.c2);
        *p = b.clip(*p - (*m * c.alpha) / (v.sqrt() + c.eps));
    }
}

/// The smallest positive normal number of a float kind (the moments' flush threshold).
fn smallest_normal(kind: tch::Kind) -> f64 {
    match kind {
        tch::Kind::Double => f64::MIN_POSITIVE,
        tch::Kind::Half => 6.103_515_625e-5,
        _ => f64::from(f32::MIN_POSITIVE),
    }
}

/// The same update as tensor operations (CUDA, other float kinds).
/// Keras' update as torch operations on the variable's device; with `ok` (a boolean on a
/// device), kept only where it is true (a step whose gradients were not all finite leaves the
/// variable and its moments as they were).
fn update_ops(s: &Slot, g: &Tensor, c: Coeffs, ok: Option<&Tensor>) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        let g = g.f_to_kind(s.m.kind())?;
        let m = &s.m + (&g - &s.m) * c.c1 as f64;
        let v = &s.v + (&g * &g - &s.v) * c.c2 as f64;
        let tiny = smallest_normal(m.kind());
        let flush = |t: Tensor| -> Result<Tensor> {
            let below = t.f_abs()?.f_lt(tiny)?;
            Ok(t.f_masked_fill(&below, 0.0)?)
        };
        let (m, v) = (flush(m)?, flush(v)?);
        let step = (&m * c.alpha as f64) / (v.f_sqrt()? + c.eps as f64);
        let var = s.var.f_sub(&step.f_to_kind(s.var.kind())?)?;
        let keep = |new: Tensor, old: &Tensor| -> Result<()> {
            let new = match ok {
                Some(ok) => new.f_where_self(&ok.f_to_device(old.device())?, old)?,
                None => new,
            };
            old.shallow_clone().f_copy_(&new)?;
            Ok(())
        };
        keep(m, &s.m)?;
        keep(v, &s.v)?;
        keep(var, &s.var)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A variable's length (not a multiple of any vector width), gradients and constants
    /// whose updates move every value.
    fn sample() -> (usize, Vec<f32>, Coeffs) {
        let n = 1037;
        let g = (0..n)
            .map(|j| ((j * 7919) % 201) as f32 * 0.013 - 1.3)
            .collect();
        let c = Coeffs {
            alpha: 3e-1,
            c1: 0.1,
            c2: 0.001,
            eps: 1e-7,
        };
        (n, g, c)
    }

    /// `sin(j k)` for `j` in `0..n`.
    fn wave(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|j| (j as f32 * k).sin()).collect()
    }

    /// The AVX2 and AVX-512 builds of the update give the bits of the plain one (the AVX-512
    /// one where the CPU has it).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_updates_are_the_plain_update() {
        let (n, g, c) = sample();
        let init = |k: f32| wave(n, k);
        let bounds = Bounds::of(Some(Constraint::MinMax {
            min: -0.5,
            max: 0.7,
        }));
        let start = (
            init(0.3),
            init(0.1),
            init(0.2).iter().map(|x| x * x).collect(),
        );
        /// An update of (p, m, v) in place.
        type Update<'a> = dyn Fn(&mut [f32], &mut [f32], &mut [f32]) + 'a;
        let run = |f: &Update<'_>| {
            let (mut p, mut m, mut v): (Vec<f32>, Vec<f32>, Vec<f32>) = start.clone();
            for _ in 0..3 {
                f(&mut p, &mut m, &mut v);
            }
            [p, m, v].map(|x| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>())
        };
        let plain = run(&|p, m, v| update_loop(p, m, v, &g, c, bounds));
        for level in crate::simd::Level::ALL
            .into_iter()
            .filter(|l| l.available())
        {
            let at = run(&|p, m, v| {
                let ran = crate::simd::at(level, || update_loop(p, m, v, &g, c, bounds));
                assert!(ran.is_ok(), "{level:?}");
            });
            assert_eq!(at, plain, "{level:?}");
        }
    }

    /// The update (on this CPU's widest build) gives the bits of the plain one, and a
    /// constraint in the update's loop the bits of the plain update followed by the
    /// constraint.
    #[test]
    fn update_paths_agree() {
        let (n, g, c) = sample();
        let init = |k: f32| wave(n, k);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let none = Bounds::of(None);
        for cons in [
            None,
            Some(Constraint::MinMax {
                min: -0.5,
                max: 0.7,
            }),
            Some(Constraint::Min(0.0)),
            Some(Constraint::Max(0.1)),
        ] {
            let (mut p1, mut m1, mut v1) = (
                init(0.3),
                init(0.1),
                init(0.2).iter().map(|x| x * x).collect(),
            );
            let (mut p2, mut m2, mut v2) = (p1.clone(), m1.clone(), Vec::clone(&v1));
            for _ in 0..3 {
                update(&mut p1, &mut m1, &mut v1, &g, c, Bounds::of(cons));
                update_loop(&mut p2, &mut m2, &mut v2, &g, c, none);
                if let Some(k) = cons {
                    k.apply(&mut p2);
                }
            }
            assert_eq!(bits(&p1), bits(&p2), "{cons:?}");
            assert_eq!(bits(&m1), bits(&m2), "{cons:?}");
            assert_eq!(bits(&v1), bits(&v2), "{cons:?}");
            // The clip did move values (the case is not vacuous).
            if cons.is_some() {
                let mut p3 = init(0.3);
                let (mut m3, mut v3): (Vec<f32>, Vec<f32>) =
                    (init(0.1), init(0.2).iter().map(|x| x * x).collect());
                for _ in 0..3 {
                    update_loop(&mut p3, &mut m3, &mut v3, &g, c, none);
                }
                assert_ne!(bits(&p1), bits(&p3), "{cons:?}");
            }
        }
    }

    /// Host tensors of any kind are checked at once; tensors on a device (here rehearsed) give
    /// one flag on the device, not read.
    #[test]
    fn finiteness_of_device_and_host_gradients() -> Result<()> {
        let ok64 = Tensor::from_slice(&[1.0f64, -2.0]);
        let nan64 = Tensor::from_slice(&[1.0f64, f64::NAN]);
        let inf32 = Tensor::from_slice(&[f32::INFINITY]);
        let ok32 = Tensor::from_slice(&[3.0f32]);
        assert!(host_finite([&ok64, &ok32, &ok64])?);
        assert!(!host_finite([&ok64, &nan64])?);
        assert!(!host_finite([&ok32, &inf32, &ok64])?);
        assert!(!host_finite([&nan64.f_neg()?, &ok32])?);
        assert!(host_finite(std::iter::empty())?);
        assert!(device_finite([&ok64, &nan64])?.is_none());
        let route = crate::cuda::Route::TorchOps;
        let (flags, reads) = crate::cuda::rehearse(route, || -> Result<_> {
            Ok((
                host_finite([&nan64, &inf32])?,
                device_finite([&ok64, &ok32])?,
                device_finite([&ok32, &inf32, &ok64])?,
            ))
        });
        let (host, ok, bad) = flags?;
        assert!(host, "rehearsed tensors are not host memory");
        assert_eq!(reads.total(), 0);
        assert!(bool::try_from(ok.expect("a flag"))?);
        assert!(!bool::try_from(bad.expect("a flag"))?);
        Ok(())
    }

    /// Moments that fall below the smallest normal float32 become zero, on the host loop and
    /// the tensor operations alike; the others are the plain formula's.
    #[test]
    fn subnormal_moments_flush_to_zero() -> Result<()> {
        let c = Coeffs {
            alpha: 1e-3,
            c1: 0.1,
            c2: 0.001,
            eps: 1e-7,
        };
        let tiny = f32::MIN_POSITIVE;
        // m: stuck subnormals (4 ulp: 0.1 m rounds to 0), normals that decay below the
        // threshold, normals that stay; v: g^2 subnormal, normal.
        let m0 = [
            4.0 * f32::from_bits(1),
            1.05 * tiny,
            3.0 * tiny,
            0.25,
            -1.05 * tiny,
            0.0,
        ];
        let v0 = [0.0, 0.0, 1e-4, 0.5, 1.0 * tiny, 0.0];
        let g = [0.0, 0.0, 0.0, 0.1, 0.0, 1e-20];
        let plain = |m: f32, v: f32, g: f32| (m + (g - m) * c.c1, v + (g * g - v) * c.c2);
        let host = Slot::new(&Tensor::from_slice(&[0.5f32; 6]));
        let ops = Slot::new(&Tensor::from_slice(&[0.5f32; 6]));
        for s in [&host, &ops] {
            s.m.shallow_clone().copy_(&Tensor::from_slice(&m0));
            s.v.shallow_clone().copy_(&Tensor::from_slice(&v0));
        }
        assert!(host.update_host(&g, c, None));
        update_ops(&ops, &Tensor::from_slice(&g), c, None)?;
        for s in [&host, &ops] {
            let m: Vec<f32> = Vec::try_from(&s.m)?;
            let v: Vec<f32> = Vec::try_from(&s.v)?;
            for j in 0..6 {
                let (pm, pv) = plain(m0[j], v0[j], g[j]);
                let want = |x: f32| if x.abs() < tiny { 0.0 } else { x };
                assert_eq!(m[j].to_bits(), want(pm).to_bits(), "m[{j}]");
                assert_eq!(v[j].to_bits(), want(pv).to_bits(), "v[{j}]");
            }
            assert!(m.iter().chain(&v).all(|x| !x.is_subnormal()));
        }
        // The cases above do reach the subnormal range without the flush.
        assert!(plain(m0[0], 0.0, 0.0).0.is_subnormal());
        assert!(plain(m0[1], 0.0, 0.0).0.is_subnormal());
        assert!(plain(0.0, 0.0, g[5]).1.is_subnormal());
        assert_eq!(
            Vec::<f32>::try_from(&host.var)?,
            Vec::<f32>::try_from(&ops.var)?
        );
        Ok(())
    }
}
