//! The fixed-point layer quantizers KBI and KIF on tensors (SPEC 4).
//!
//! The raw parameters live in a [`VarStore`](tch::nn::VarStore); the bit widths used are
//! `rc(raw)` (round half to even, straight-through gradient), and the quantization itself is
//! [`crate::fixed_quantize`]: hgq-core's fused kernel on CPU, torch ops elsewhere. The WRAP
//! integer-bit tracking reduces `x` on its device and computes the minimal integer bits of
//! the (small) bit-width tensor with hgq-core's `minimal_i`, so the state is the reference's
//! bit for bit.
use hgq_core::quantizer::{Constraint, FixedSpec, KbiSpec, KifSpec, Regularizer};
use hgq_core::{
    BitWidths, BitwidthMapper, CallMode, DefaultBitwidthMapper, FixedPoint, OverflowMode, Real,
    RoundMode, Stochastic, TensorRef, minimal_i,
};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor, nn};

use super::{Props, Var, bw_layout, rc, rc1, to_f32_vec};
use crate::host;
use crate::{Result, TorchError};

/// KBI (`b`, `i` raw) or KIF (`i`, `f` raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `k, b, i`: `f = b - i`.
    Kbi,
    /// `k, i, f`: `b = relu(i + f)`.
    Kif,
}

/// A trainable fixed-point quantizer (KBI or KIF) whose parameters live in a `VarStore`.
#[derive(Debug)]
pub struct FixedQuantizer {
    param: Param,
    spec: FixedSpec,
    bw_shape: Vec<i64>,
    input_shape: Vec<Option<usize>>,
    homogeneous: Vec<i64>,
    /// Reduces over the homogeneous axes on the host (WRAP tracking of CPU tensors).
    mapper: DefaultBitwidthMapper,
    k: Var,
    /// KBI: `b`; KIF: `i`.
    p1: Var,
    /// KBI: `i`; KIF: `f`.
    p2: Var,
    i_decay_speed: Option<Var>,
    /// `[seed, calls]` of seeded stochastic rounding (S_ modes).
    seed_state: Option<Var>,
    /// `k` as the CPU pass reads it (see [`FixedQuantizer::k_for_pass`]).
    k_one: Mutex<Option<KOne>>,
}

/// Whether `k` holds one value everywhere, as of one state of the variable.
#[derive(Debug)]
struct KOne {
    /// The variable's memory and version counter (bumped by every in-place write through
    /// libtorch: a `VarStore` load, a tracing pass, `fill_`, `copy_`).
    key: (usize, i64),
    /// `k` as a one-element tensor of `k`'s rank, when uniform.
    one: Option<Tensor>,
}

impl FixedQuantizer {
    /// A KBI quantizer for inputs of `input_shape` (`None`: the batch or another axis of
    /// unknown size), its variables `k`, `b`, `i` (and `i_decay_speed` for WRAP) in `path`.
    pub fn new_kbi(path: &nn::Path, spec: &KbiSpec, input_shape: &[Option<usize>]) -> Result<Self> {
        // hgq-core's constructor validates the spec (modes, k0, initial bit widths).
        hgq_core::quantizer::FixedPointQuantizerKBI::<f32>::new(spec.clone())?;
        Self::build(
            path,
            Param::Kbi,
            spec.fixed.clone(),
            spec.k0,
            [
                ("b", spec.b0, spec.bc, spec.br),
                ("i", spec.i0, spec.ic, spec.ir),
            ],
            input_shape,
        )
    }

    /// A KIF quantizer for inputs of `input_shape`, its variables `k`, `i`, `f` (and
    /// `i_decay_speed` for WRAP) in `path`.
    pub fn new_kif(path: &nn::Path, spec: &KifSpec, input_shape: &[Option<usize>]) -> Result<Self> {
        // hgq-core's constructor validates the spec (modes, k0, initial bit widths).
        hgq_core::quantizer::FixedPointQuantizerKIF::<f32>::new(spec.clone())?;
        Self::build(
            path,
            Param::Kif,
            spec.fixed.clone(),
            spec.k0,
            [
                ("i", spec.i0, spec.ic, spec.ir),
                ("f", spec.f0, spec.fc, spec.fr),
            ],
            input_shape,
        )
    }

    #[allow(clippy::type_complexity)]
    fn build(
        path: &nn::Path,
        param: Param,
        spec: FixedSpec,
        k0: f64,
        vars: [(&'static str, f64, Option<Constraint>, Option<Regularizer>); 2],
        input_shape: &[Option<usize>],
    ) -> Result<Self> {
        let (bw_shape, homogeneous, mapper) = bw_layout(&spec.axes, input_shape)?;
        let wrap = spec.overflow == OverflowMode::Wrap;
        let k = Var::new(path, "k", &bw_shape, k0, false, None, None);
        let mk =
            |(name, v0, c, r): (&'static str, f64, Option<Constraint>, Option<Regularizer>)| {
                // i is not trained under WRAP: the data sets it (tracking).
                let trainable = spec.trainable && !(wrap && name == "i");
                Var::new(path, name, &bw_shape, v0, trainable, c, r)
            };
        let [v1, v2] = vars;
        let p1 = mk(v1);
        let p2 = mk(v2);
        let i_decay_speed = wrap.then(|| {
            Var::new(
                path,
                "i_decay_speed",
                &[],
                spec.i_decay_speed,
                false,
                None,
                None,
            )
        });
        // The reference keeps a Keras SeedGenerator for S_ modes: `[seed, calls]`.
        let seed_state = spec.round.is_stochastic().then(|| {
            let v = Var::new(path, "seed_generator_state", &[2], 0.0, false, None, None);
            if let Stochastic::Seeded(s) = spec.stochastic {
                let _ = tch::no_grad(|| v.value().get(0).fill_(s as f64));
            }
            v
        });
        Ok(FixedQuantizer {
            param,
            spec,
            bw_shape,
            input_shape: input_shape.to_vec(),
            homogeneous,
            mapper,
            k,
            p1,
            p2,
            i_decay_speed,
            seed_state,
            k_one: Mutex::new(None),
        })
    }

    /// KBI or KIF.
    pub fn param(&self) -> Param {
        self.param
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &FixedSpec {
        &self.spec
    }

    /// The bit-width shape.
    pub fn bw_shape(&self) -> &[i64] {
        &self.bw_shape
    }

    /// The input shape it was built for.
    pub fn input_shape(&self) -> &[Option<usize>] {
        &self.input_shape
    }

    pub(crate) fn vars(&self) -> Vec<&Var> {
        let mut v = vec![&self.k, &self.p1, &self.p2];
        v.extend(self.i_decay_speed.as_ref());
        v.extend(self.seed_state.as_ref());
        v
    }

    fn i_var(&self) -> &Var {
        match self.param {
            Param::Kbi => &self.p2,
            Param::Kif => &self.p1,
        }
    }

    fn wrap(&self) -> bool {
        self.spec.overflow == OverflowMode::Wrap
    }

    /// `(k, i, f)` as used: `rc` of the raw values (differentiable).
    pub fn kif(&self) -> (Tensor, Tensor, Tensor) {
        let k = self.k.value().shallow_clone();
        match self.param {
            Param::Kbi => {
                let b = rc(self.p1.value());
                let i = rc(self.p2.value());
                let f = &b - &i;
                (k, i, f)
            }
            Param::Kif => (k, rc(self.p1.value()), rc(self.p2.value())),
        }
    }

    /// `b` as used: KBI `rc(b)`, KIF `relu(i + f)`.
    pub fn b(&self) -> Tensor {
        match self.param {
            Param::Kbi => rc(self.p1.value()),
            Param::Kif => {
                let (_, i, f) = self.kif();
                (i + f).relu()
            }
        }
    }

    fn noise(&self, mode: CallMode) -> Result<Stochastic> {
        match (self.spec.stochastic, mode, &self.seed_state) {
            (Stochastic::Seeded(s), CallMode::Training, Some(state)) => {
                let step = state.value().double_value(&[1]) as u64;
                Ok(Stochastic::Seeded(uniform_seed(s, step)))
            }
            _ => Ok(Stochastic::Reference),
        }
    }

    fn q(&self, mode: CallMode) -> Result<FixedPoint> {
        Ok(FixedPoint::new(self.spec.round, self.spec.overflow)?
            .with_stochastic(self.noise(mode)?)
            .with_zero_mask(true))
    }

    fn round_only(&self, mode: CallMode) -> Result<FixedPoint> {
        Ok(
            FixedPoint::new(self.spec.round, OverflowMode::Wrap)?
                .with_stochastic(self.noise(mode)?),
        )
    }

    /// Quantizes `x` (its shape as built, any size on `None` axes). Training and tracing of a
    /// trainable WRAP quantizer update the integer bits (and, tracing, `k`) from the data.
    pub fn forward(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        super::check_input(x, &self.input_shape)?;
        let y = if self.wrap() && self.spec.trainable {
            match (self.param, mode) {
                (_, CallMode::Training | CallMode::Tracing) => self.wrap_track(x, mode)?,
                (Param::Kbi, CallMode::Inference)
                    if self.spec.is_weight && self.spec.round.deterministic() == RoundMode::Rnd =>
                {
                    let (k, b, i) = (self.k.value(), self.p1.value(), self.p2.value());
                    crate::quantize_kbi(&self.round_only(mode)?, x, k, b, i, true)?
                }
                (Param::Kif, CallMode::Inference) if self.spec.is_weight => {
                    let (k, i, f) = self.kif();
                    crate::quantize_any(&self.round_only(mode)?, x, &k, &i, &f, true)?
                }
                _ => self.generic(x, mode)?,
            }
        } else {
            self.generic(x, mode)?
        };
        if let (CallMode::Training, Stochastic::Seeded(_), Some(state)) =
            (mode, self.spec.stochastic, &self.seed_state)
        {
            tch::no_grad(|| {
                let _ = state.value().get(1).g_add_scalar_(1.0);
            });
        }
        Ok(y)
    }

    /// `k` for the quantization pass: on the CPU, one value of `k`'s rank when every element
    /// holds it (k0 everywhere, the usual case), so that the fused pass does not read an
    /// x-sized `k` through memory for per-element bit widths (one stream of five forward,
    /// seven backward). Looked at again whenever the variable's version counter moves;
    /// otherwise `k` itself. `k` has no gradient, so the results are the same bits.
    fn k_for_pass(&self) -> Tensor {
        let k = self.k.value();
        if k.device() != Device::Cpu || k.numel() <= 1 {
            return k.shallow_clone();
        }
        let Ok(version) = k.f_internal_version() else {
            return k.shallow_clone();
        };
        let key = (k.data_ptr() as usize, version);
        // A poisoned lock only means another thread panicked while holding it; the cache
        // is rebuilt below when its key does not match.
        let mut cache = self.k_one.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_none_or(|c| c.key != key) {
            let one = host::values(k).ok().and_then(|v| {
                let first = *v.first()?;
                // Bitwise: -0.0 and 0.0 (or NaNs) must not be merged.
                v.iter().all(|x| x.to_bits() == first.to_bits()).then(|| {
                    Tensor::from_slice(&[first])
                        .reshape(vec![1i64; k.dim()])
                        .to_kind(k.kind())
                })
            });
            *cache = Some(KOne { key, one });
        }
        match cache.as_ref().and_then(|c| c.one.as_ref()) {
            Some(one) => one.shallow_clone(),
            None => k.shallow_clone(),
        }
    }

    fn generic(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        let training = mode == CallMode::Training;
        match self.param {
            // The raw i, f go straight in: the pass rounds them itself (no rounding ops on
            // tensors as large as the bit widths, no autograd nodes for them).
            Param::Kif => {
                let q = self.q(mode)?.with_bit_widths(BitWidths::RoundHalfEven);
                let (k, i, f) = (self.k_for_pass(), self.p1.value(), self.p2.value());
                crate::quantize_any(&q, x, &k, i, f, training)
            }
            // Likewise raw b, i: the pass forms i = rc(i), f = rc(b) - rc(i) and their
            // gradients itself on CPU.
            Param::Kbi => {
                let (k, b, i) = (self.k_for_pass(), self.p1.value(), self.p2.value());
                crate::quantize_kbi(&self.q(mode)?, x, &k, b, i, training)
            }
        }
    }

    /// `max |v|` over the homogeneous axes (keeping dims), as float32 values on the CPU.
    fn absmax(&self, v: &Tensor) -> Result<Vec<f32>> {
        if let Some(d) = host::slice(v) {
            let shape: Vec<usize> = v.size().iter().map(|&n| n as usize).collect();
            return Ok(self.mapper.absmax(TensorRef::new(d, &shape)?)?.0);
        }
        let a = v.f_abs()?;
        let a = if self.homogeneous.is_empty() {
            a
        } else {
            a.f_amax(self.homogeneous.as_slice(), true)?
        };
        to_f32_vec(&a)
    }

    /// `any(v < 0)` over the homogeneous axes.
    fn any_negative(&self, v: &Tensor) -> Result<Vec<bool>> {
        if let Some(d) = host::slice(v) {
            let shape: Vec<usize> = v.size().iter().map(|&n| n as usize).collect();
            return Ok(self.mapper.any_negative(TensorRef::new(d, &shape)?)?.0);
        }
        let n = v.f_lt(0.0)?.f_to_kind(Kind::Float)?;
        let n = if self.homogeneous.is_empty() {
            n
        } else {
            n.f_amax(self.homogeneous.as_slice(), true)?
        };
        Ok(to_f32_vec(&n)?.into_iter().map(|v| v > 0.0).collect())
    }

    /// Whether every value of `x` is finite.
    fn all_finite(x: &Tensor) -> Result<bool> {
        match host::slice(x) {
            Some(d) => Ok(d.iter().all(|v| v.is_finite())),
            None => Ok(bool::try_from(x.f_isfinite()?.f_all()?)?),
        }
    }

    fn set(&self, var: &Var, values: &[f32]) -> Result<()> {
        let t = Tensor::f_from_slice(values)?
            .f_reshape(var.value().size())?
            .f_to_device(var.value().device())?;
        tch::no_grad(|| var.value().shallow_clone().f_copy_(&t))?;
        Ok(())
    }

    /// Stores the tracked integer bits of a training step. The pass read a copy of `i` (no
    /// saved tensor aliases the variable), so a float32 CPU variable is written in place.
    fn store_i(&self, values: &[f32]) -> Result<()> {
        let var = self.i_var();
        let t = var.value();
        // SAFETY: no slice of the variable is alive here and no autograd graph saved it.
        match unsafe { host::slice_mut(t) } {
            Some(d) if d.len() == values.len() => {
                d.copy_from_slice(values);
                Ok(())
            }
            _ => self.set(var, values),
        }
    }

    /// `values` (bit-width shape) as a tensor on `device`.
    fn bw_tensor(&self, values: &[f32], device: tch::Device) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(values)?
            .f_reshape(self.bw_shape.as_slice())?
            .f_to_device(device)?)
    }

    fn wrap_track(&self, x: &Tensor, mode: CallMode) -> Result<Tensor> {
        // Non-finite inputs would poison the integer bits for good.
        if !Self::all_finite(x)? {
            return Err(TorchError::NonFinite(
                "a WRAP quantizer tracking its integer bits needs finite inputs",
            ));
        }
        let sym = self.spec.overflow.is_symmetric();
        let train = mode == CallMode::Training;
        let ivar = self.i_var();
        let i_raw = host::values(ivar.value())?;
        let ic = ivar.constraint;
        let decay = match &self.i_decay_speed {
            Some(d) => host::values(d.value())?
                .first()
                .copied()
                .unwrap_or(f32::INFINITY),
            None => f32::INFINITY,
        };
        let k = &self.k_for_pass();
        let dev = k.device();
        let con = |v: f32| ic.map_or(v, |c| c.one(v));
        match self.param {
            Param::Kbi => {
                // b as used: rc(b).
                let bv: Vec<f32> = host::values(self.p1.value())?
                    .into_iter()
                    .map(rc1)
                    .collect();
                let absmax = self.absmax(x)?;
                let new_i: Vec<f32> = i_raw
                    .iter()
                    .zip(absmax.iter().zip(&bv))
                    .map(|(&r, (&a, &b))| {
                        let m = minimal_i::xb(a, b, sym);
                        if train {
                            con(Real::maximum(r - decay, m))
                        } else {
                            con(Real::maximum(rc1(r), m))
                        }
                    })
                    .collect();
                let i_used: Vec<f32> = new_i.iter().map(|&v| rc1(v)).collect();
                let y = if train {
                    // f = rc(b) - rc(i_used) = rc(b) - i_used: the pass forms it from raw b.
                    let i_used_t = self.bw_tensor(&i_used, dev)?;
                    let b = self.p1.value();
                    crate::quantize_kbi(&self.round_only(mode)?, x, k, b, &i_used_t, true)?
                } else {
                    // Tracing: f = b - i_new (unrounded), as the reference.
                    let f = self.b() - self.bw_tensor(&new_i, dev)?;
                    let i_used_t = self.bw_tensor(&i_used, dev)?;
                    crate::quantize_any(&self.round_only(mode)?, x, k, &i_used_t, &f, true)?
                };
                if train {
                    self.store_i(&new_i)?;
                } else {
                    let neg = self.any_negative(&y)?;
                    let mut kv = to_f32_vec(self.k.value())?;
                    for ((kv, n), b) in kv.iter_mut().zip(neg).zip(&bv) {
                        if n && *b > 0.0 {
                            *kv = 1.0;
                        }
                    }
                    self.set(&self.k, &kv)?;
                    self.set(ivar, &new_i)?;
                }
                Ok(y)
            }
            Param::Kif => {
                // A copy of the raw i (the variable changes below) and the raw f: the pass
                // rounds both.
                let i_now = self.bw_tensor(&i_raw, dev)?;
                let q = self
                    .round_only(mode)?
                    .with_bit_widths(BitWidths::RoundHalfEven);
                let y = crate::quantize_any(&q, x, k, &i_now, self.p2.value(), true)?;
                let fv: Vec<f32> = host::values(self.p2.value())?
                    .into_iter()
                    .map(rc1)
                    .collect();
                let yd = y.detach();
                let absmax = self.absmax(&yd)?;
                let mi = absmax
                    .iter()
                    .zip(&fv)
                    .map(|(&a, &f)| minimal_i::xf(a, f, sym));
                if train {
                    // The reference applies no constraint here.
                    let new_i: Vec<f32> = i_raw
                        .iter()
                        .zip(mi)
                        .map(|(&r, m)| Real::maximum(r - decay, m))
                        .collect();
                    self.store_i(&new_i)?;
                } else {
                    let neg = self.any_negative(&yd)?;
                    let mut kv = to_f32_vec(self.k.value())?;
                    for (kv, n) in kv.iter_mut().zip(neg) {
                        if n {
                            *kv = 1.0;
                        }
                    }
                    self.set(&self.k, &kv)?;
                    let new_i: Vec<f32> = i_raw
                        .iter()
                        .zip(mi)
                        .map(|(&r, m)| Real::maximum(rc1(r), con(m)))
                        .collect();
                    self.set(ivar, &new_i)?;
                }
                Ok(y)
            }
        }
    }

    /// `bits` alone (`b + k` for SAT, else `b`), differentiable: what EBOPs need, without
    /// the other properties' operations.
    pub fn bits(&self) -> Tensor {
        let b = self.b();
        if self.spec.overflow == OverflowMode::Sat {
            b + self.k.value()
        } else {
            b
        }
    }

    /// Bits, fbits, min, max and epsilon of the current parameters (bit-width shape),
    /// differentiable.
    pub fn props(&self) -> Props {
        let (k, i, f) = self.kif();
        let b = self.b();
        let o = self.spec.overflow;
        let bits = if o == OverflowMode::Sat {
            &b + &k
        } else {
            b.shallow_clone()
        };
        let fbits = if o == OverflowMode::Wrap {
            &b + &k * b.gt(0.0).to_kind(Kind::Float)
        } else {
            &b + &k
        };
        let (pi, pf) = (i.exp2(), f.neg().exp2());
        let min = if o.is_symmetric() {
            -(&k * (&pi - &pf))
        } else {
            -(&k * &pi)
        };
        Props {
            bits,
            fbits,
            min,
            max: &pi - &pf,
            epsilon: pf,
        }
    }

    /// Resets the WRAP tracking before a tracing pass (hgq2's `trace_minmax`: `i := -1e9`,
    /// `k := 0`); no-op for other quantizers.
    pub fn reset_trace(&self) {
        if self.wrap() && self.spec.trainable {
            tch::no_grad(|| {
                let _ = self.i_var().value().shallow_clone().fill_(-1e9);
                let _ = self.k.value().shallow_clone().fill_(0.0);
            });
        }
    }
}

/// The seed of one training step from a quantizer's seed and its step counter: the same
/// mixing as hgq-core's layer quantizers, so both continue the same sequence.
fn uniform_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed.wrapping_add(step.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 33)
}
