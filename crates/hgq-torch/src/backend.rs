//! hgq-core's [`Backend`] on tch tensors: what the quantizer logic of hgq-core needs, with
//! gradients through autograd.
//!
//! The fixed-point pass runs hgq-core's fused kernel inside a C++ autograd function on the CPU
//! (float32, and float16/bfloat16 through float32), and the same formulas as torch operations
//! elsewhere (CUDA, float64: [`crate::ops`]); both check the bit widths as hgq-core does and
//! return the same errors. Variables live in a [`VarStore`](tch::nn::VarStore) as float32.
use std::sync::Mutex;

use hgq_core::mapper::Axes;
use hgq_core::quantizer::{
    Backend, BitWidthArith, BwOp, Constraint, HostVar, OperandOf, Regularizer, Store, TrackRule,
    VarInit, Variable,
};
use hgq_core::shape::check_broadcast;
use hgq_core::{CoreError, DefaultBitwidthMapper, FixedPoint, TensorRef};
use tch::{Device, Kind, Tensor, nn};

use crate::{Result, TorchError, host};

/// A quantizer variable in a `VarStore`: a float32 tensor, and what the CPU pass knows of it.
#[derive(Debug)]
pub struct TchVar {
    tensor: Tensor,
    /// `k` as the CPU pass reads it (see [`TchVar::for_pass`]).
    uniform: Mutex<Option<Uniform>>,
    /// The values as last read or written here, with the state they belong to: the logic
    /// reads back what it wrote (the seed counter of S_ modes, every call) without a read
    /// from the device.
    known: Mutex<Option<Known>>,
}

/// A variable's values as of one state of the variable (see [`Uniform::key`]).
#[derive(Debug)]
struct Known {
    key: (usize, i64),
    values: Vec<f32>,
}

/// Whether a variable holds one value everywhere, as of one state of the variable.
#[derive(Debug)]
struct Uniform {
    /// The variable's memory and version counter (bumped by every in-place write through
    /// libtorch: a `VarStore` load, a tracing pass, `fill_`, `copy_`).
    key: (usize, i64),
    /// The value as a one-element tensor of the variable's rank, when uniform.
    one: Option<Tensor>,
}

impl TchVar {
    fn new(tensor: Tensor) -> TchVar {
        TchVar {
            tensor,
            uniform: Mutex::new(None),
            known: Mutex::new(None),
        }
    }

    /// The tensor (in the `VarStore`).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The state key of [`Uniform::key`], where libtorch has a version counter.
    fn key(&self) -> Option<(usize, i64)> {
        let version = self.tensor.f_internal_version().ok()?;
        Some((self.tensor.data_ptr() as usize, version))
    }

    /// The values, from what was last read or written here if the variable has not changed
    /// since (else read, and kept).
    fn values(&self) -> Result<Vec<f32>> {
        // A poisoned lock only means a panic elsewhere; the key decides what is valid.
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let key = self.key();
        if let (Some(k), Some(c)) = (key, known.as_ref())
            && c.key == k
        {
            return Ok(c.values.clone());
        }
        let values = host::values(&self.tensor)?;
        *known = key.map(|key| Known {
            key,
            values: values.clone(),
        });
        Ok(values)
    }

    /// Notes `values` as the variable's values now (just written).
    fn wrote(&self, values: &[f32]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        *known = self.key().map(|key| Known {
            key,
            values: values.to_vec(),
        });
    }

    /// The variable for a CPU pass that takes no gradient from it: one value of its rank when
    /// every element holds it (`k` is k0 everywhere, the usual case), so that a pass over
    /// per-element bit widths does not read an x-sized tensor through memory for it. Looked
    /// at again whenever the variable's version counter moves.
    fn for_pass(&self) -> Tensor {
        let t = &self.tensor;
        // Off the host (a device, or a rehearsed CUDA step) the pass reads the tensor.
        if !host::on_host(t) || t.numel() <= 1 {
            return t.shallow_clone();
        }
        let Some(key) = self.key() else {
            return t.shallow_clone();
        };
        // A poisoned lock only means another thread panicked while holding it; the cache
        // is rebuilt below when its key does not match.
        let mut cache = self.uniform.lock().unwrap_or_else(|e| e.into_inner());
        if cache.as_ref().is_none_or(|c| c.key != key) {
            let one = host::values(t).ok().and_then(|v| {
                let first = *v.first()?;
                // Bitwise: -0.0 and 0.0 (or NaNs) must not be merged.
                v.iter().all(|x| x.to_bits() == first.to_bits()).then(|| {
                    Tensor::from_slice(&[first])
                        .reshape(vec![1i64; t.dim()])
                        .to_kind(t.kind())
                })
            });
            *cache = Some(Uniform { key, one });
        }
        match cache.as_ref().and_then(|c| c.one.as_ref()) {
            Some(one) => one.shallow_clone(),
            None => t.shallow_clone(),
        }
    }
}

/// The CPU backend of hgq-core on a `VarStore`'s memory (a training step without autograd):
/// contiguous float32 CPU variables only, others are an error.
impl HostVar<f32> for TchVar {
    fn host(&self) -> hgq_core::Result<&[f32]> {
        host::slice(&self.tensor).ok_or(NOT_HOST)
    }

    fn host_mut(&mut self) -> hgq_core::Result<&mut [f32]> {
        // SAFETY: the step that asks holds the quantizer's lock (`&mut self`), and libtorch
        // does not run on these tensors during it; the version counter moves before the write,
        // so a graph that saved the variable refuses its backward, and `for_pass`'s cache
        // is rebuilt.
        let s = unsafe { host::slice_mut(&self.tensor) }.ok_or(NOT_HOST)?;
        crate::bridge::bump_version(&self.tensor);
        Ok(s)
    }

    /// The same tensor (a native step's saved passes read the `VarStore`'s memory at their
    /// backward instead of a copy made at the forward).
    fn share(&self) -> Option<Self> {
        Some(TchVar::new(self.tensor.shallow_clone()))
    }

    /// libtorch's version counter, which every in-place write moves (`host_mut` and Adam's
    /// host update move it too).
    fn version(&self) -> Option<i64> {
        self.tensor.f_internal_version().ok()
    }
}

const NOT_HOST: CoreError =
    CoreError::Unsupported("a variable that is not a contiguous float32 CPU tensor");

/// Creates variables under a `VarStore` path.
#[derive(Debug)]
pub struct TchStore<'a> {
    path: &'a nn::Path<'a>,
}

impl<'a> TchStore<'a> {
    /// Variables under `path`.
    pub fn new(path: &'a nn::Path<'a>) -> Self {
        TchStore { path }
    }
}

fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

impl Store for TchStore<'_> {
    type Var = TchVar;
    type Error = TorchError;
    fn var(&mut self, init: &VarInit) -> Result<TchVar> {
        let name = init.name.as_str();
        let shape = dims(&init.shape);
        let t = if init.trainable {
            self.path
                .f_var(name, &shape, nn::Init::Const(init.value_at(0)))?
        } else {
            self.path.f_zeros_no_train(name, &shape)?
        };
        if !init.trainable || init.values.len() > 1 {
            let values: Vec<f32> = (0..init.len()).map(|j| init.value_at(j) as f32).collect();
            let v = Tensor::f_from_slice(&values)?
                .f_reshape(&shape)?
                .f_to_device(t.device())?;
            tch::no_grad(|| t.shallow_clone().f_copy_(&v))?;
        }
        Ok(TchVar::new(t))
    }
}

/// hgq-core's backend on tch tensors (any device; variables in float32).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tch;

/// The float kinds a quantizer takes.
pub(crate) fn float_kind(what: &'static str, t: &Tensor) -> Result<Kind> {
    let kind = t.f_kind()?;
    match kind {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(kind),
        kind => Err(TorchError::Kind { what, kind }),
    }
}

/// `x`'s shape with the dimensions `reduce` kept as 1.
fn kept(x: &Tensor, reduce: &[usize]) -> Vec<i64> {
    let mut s = x.size();
    for &d in reduce {
        if let Some(v) = s.get_mut(d) {
            *v = 1;
        }
    }
    s
}

fn usize_shape(t: &Tensor) -> Vec<usize> {
    t.size().iter().map(|&d| d as usize).collect()
}

/// A reduction of `x` over the dimensions `reduce` (kept), as float32 values on the host.
fn reduce_on_host(
    what: &'static str,
    x: &Tensor,
    reduce: &[usize],
    on_host: impl Fn(&DefaultBitwidthMapper, TensorRef<'_, f32>) -> hgq_core::Result<Vec<f32>>,
    on_device: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    if let Some(d) = host::slice(x) {
        let shape = usize_shape(x);
        let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(
            reduce.iter().map(|&a| a as isize).collect(),
        ));
        let known: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
        m.build(&known)?;
        return Ok(on_host(&m, TensorRef::new(d, &shape)?)?);
    }
    let r = on_device(x)?;
    let r = if reduce.is_empty() {
        r
    } else {
        let dims: Vec<i64> = reduce.iter().map(|&a| a as i64).collect();
        r.f_amax(dims.as_slice(), true)?
    };
    host::read_f32(&r, what)
}

impl Tch {
    /// A variable operand as the pass reads it; constant values as a tensor on `device`.
    fn operand(o: &OperandOf<'_, Self>, device: Device, for_k: bool) -> Result<Tensor> {
        match o {
            hgq_core::quantizer::Operand::Var(v) => Ok(if for_k {
                v.value.for_pass()
            } else {
                v.value.tensor.shallow_clone()
            }),
            hgq_core::quantizer::Operand::Bw(t, s) => {
                let t = t.f_reshape(dims(s).as_slice())?;
                if t.device() != device {
                    return Err(TorchError::Device {
                        what: "bit widths",
                        expected: device,
                        got: t.device(),
                    });
                }
                Ok(t)
            }
        }
    }
}

impl BitWidthArith for Tch {
    type C = f32;
    type Var = TchVar;
    type Bw = Tensor;
    type Error = TorchError;

    fn bw(&self, v: &Variable<TchVar>) -> Result<Tensor> {
        Ok(v.value.tensor.shallow_clone())
    }

    fn bw_const(&self, value: f64, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::f_full(
            dims(shape).as_slice(),
            value,
            (Kind::Float, Device::Cpu),
        )?)
    }

    fn bw_op(&self, op: BwOp<'_, Tensor>) -> Result<Tensor> {
        Ok(match op {
            BwOp::RoundSte(a) => crate::quantizer::rc(a),
            BwOp::Add(a, b) => a.f_add(b)?,
            BwOp::Sub(a, b) => a.f_sub(b)?,
            BwOp::Mul(a, b) => a.f_mul(b)?,
            BwOp::AddScalar(a, c) => a.f_add_scalar(c)?,
            BwOp::MulScalar(a, c) => a.f_mul_scalar(c)?,
            BwOp::Exp2(a) => a.f_exp2()?,
            BwOp::Relu(a) => a.f_relu()?,
            BwOp::Positive(a) => a.f_gt(0.0)?.f_to_kind(Kind::Float)?,
            BwOp::Maximum(a, b) => crate::ops::maximum(&a.f_detach()?, &b.f_detach()?)?,
        })
    }

    fn regularize(&self, r: Regularizer, v: &Variable<TchVar>) -> Result<Tensor> {
        let t = &v.value.tensor;
        Ok(match r {
            Regularizer::MonoL1(l) => t.f_sum(Kind::Float)?.f_mul_scalar(l)?,
            Regularizer::L1(l) => t.f_abs()?.f_sum(Kind::Float)?.f_mul_scalar(l)?,
            Regularizer::L2(l) => t.f_square()?.f_sum(Kind::Float)?.f_mul_scalar(l)?,
        })
    }
}

impl Backend for Tch {
    type Tensor = Tensor;

    fn shape(&self, x: &Tensor) -> Result<Vec<usize>> {
        float_kind("x", x)?;
        Ok(usize_shape(x))
    }

    fn all_finite(&self, x: &Tensor) -> Result<bool> {
        match host::slice(x) {
            Some(d) => Ok(d.iter().all(|v| v.is_finite())),
            None => host::read_bool(&x.f_isfinite()?.f_all()?, "finiteness of x"),
        }
    }

    fn absmax(&self, x: &Tensor, reduce: &[usize]) -> Result<Vec<f32>> {
        reduce_on_host(
            "absolute maximum",
            x,
            reduce,
            |m, t| Ok(m.absmax(t)?.0),
            |x| Ok(x.f_detach()?.f_abs()?),
        )
    }

    fn any_negative(&self, x: &Tensor, reduce: &[usize]) -> Result<Vec<bool>> {
        let v = reduce_on_host(
            "sign flags",
            x,
            reduce,
            |m, t| {
                Ok(m.any_negative(t)?
                    .0
                    .into_iter()
                    .map(|b| if b { 1.0 } else { 0.0 })
                    .collect())
            },
            |x| Ok(x.f_detach()?.f_lt(0.0)?.f_to_kind(Kind::Float)?),
        )?;
        Ok(v.into_iter().map(|v| v > 0.0).collect())
    }

    fn identity(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.shallow_clone())
    }

    fn read(&self, v: &TchVar) -> Result<Vec<f32>> {
        v.values()
    }

    fn write(&self, v: &mut TchVar, values: &[f32]) -> Result<()> {
        let t = &v.tensor;
        if values.len() != t.numel() {
            return Err(CoreError::Length {
                what: "variable values",
                len: values.len(),
                shape: usize_shape(t),
                expected: t.numel(),
            }
            .into());
        }
        let src = host::upload(values, t)?;
        // In place through libtorch: the version counter moves, so a graph that saved the
        // variable refuses a backward over the old values.
        tch::no_grad(|| t.shallow_clone().f_copy_(&src))?;
        v.wrote(values);
        Ok(())
    }

    fn constrain(&self, v: &mut TchVar, c: Constraint) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let mut t = v.tensor.shallow_clone();
            match c {
                Constraint::MinMax { min, max } => {
                    let _ = t.f_clamp_(min, max)?;
                }
                Constraint::Min(m) => {
                    let _ = t.f_clamp_min_(m)?;
                }
                Constraint::Max(m) => {
                    let _ = t.f_clamp_max_(m)?;
                }
                Constraint::Constant(value) => {
                    let _ = t.f_fill_(value)?;
                }
                Constraint::NonNeg => {
                    let keep = t.f_ge(0.0)?.f_to_kind(t.kind())?;
                    let _ = t.f_mul_(&keep)?;
                }
            }
            Ok(())
        })
    }

    fn require_finite(&self, x: &Tensor, err: CoreError) -> Result<()> {
        if host::on_host(x) {
            return if self.all_finite(x)? {
                Ok(())
            } else {
                Err(err.into())
            };
        }
        // On a device: checked when the host next looks (`deferred::check`); `track_bw`
        // keeps the integer bits where the data was not finite.
        let failed = tch::no_grad(|| x.f_isfinite()?.f_all()?.f_logical_not())?;
        crate::deferred::defer(crate::deferred::Check::TrackingInput, &failed)
    }

    fn absmax_bw(&self, x: &Tensor, reduce: &[usize]) -> Result<Tensor> {
        if host::slice(x).is_some() {
            let v = self.absmax(x, reduce)?;
            return Ok(Tensor::f_from_slice(&v)?.f_reshape(kept(x, reduce).as_slice())?);
        }
        tch::no_grad(|| {
            let a = x.f_detach()?.f_abs()?.f_to_kind(Kind::Float)?;
            Ok(if reduce.is_empty() {
                a
            } else {
                let dims: Vec<i64> = reduce.iter().map(|&d| d as i64).collect();
                a.f_amax(dims.as_slice(), true)?
            })
        })
    }

    fn any_negative_bw(&self, x: &Tensor, reduce: &[usize]) -> Result<Tensor> {
        if host::slice(x).is_some() {
            let v: Vec<f32> = self
                .any_negative(x, reduce)?
                .into_iter()
                .map(|n| if n { 1.0 } else { 0.0 })
                .collect();
            return Ok(Tensor::f_from_slice(&v)?.f_reshape(kept(x, reduce).as_slice())?);
        }
        tch::no_grad(|| {
            let n = x.f_detach()?.f_lt(0.0)?.f_to_kind(Kind::Float)?;
            Ok(if reduce.is_empty() {
                n
            } else {
                let dims: Vec<i64> = reduce.iter().map(|&d| d as i64).collect();
                n.f_amax(dims.as_slice(), true)?
            })
        })
    }

    fn snapshot(&self, v: &TchVar) -> Result<Tensor> {
        Ok(v.tensor.f_detach_copy()?)
    }

    fn bw_host(&self, w: &Tensor) -> Result<Vec<f32>> {
        host::read_f32(w, "bit widths for a collective")
    }

    fn bw_from_host(&self, values: &[f32], shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::f_from_slice(values)?.f_reshape(dims(shape).as_slice())?)
    }

    fn track_bw(
        &self,
        rule: TrackRule,
        absmax: &Tensor,
        i: &Tensor,
        p: &Tensor,
        decay: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        // Host values: hgq-core's loop (one pass, where the torch operations are about 25
        // calls, each with its own dispatch and output, per quantizer call).
        if let (Some(a), Some(iv), Some(pv), Some(d)) = (
            host::slice(absmax),
            host::slice(i),
            host::slice(p),
            host::slice(decay),
        ) && a.len() == iv.len()
            && pv.len() == iv.len()
        {
            let (new_i, used) = rule.apply_all(a, iv, pv, d)?;
            let shape = i.size();
            let tensor = |v: &[f32]| -> Result<Tensor> {
                Ok(Tensor::f_from_slice(v)?.f_reshape(shape.as_slice())?)
            };
            return Ok((tensor(&new_i)?, tensor(&used)?));
        }
        tch::no_grad(|| crate::ops::track_ops(rule, absmax, i, p, decay))
    }

    fn max_over_processes(&self, w: Tensor, shape: &[usize]) -> Result<Tensor> {
        let Some(sync) = hgq_core::sync::current() else {
            return Ok(w);
        };
        let group = sync
            .as_any()
            .and_then(|a| a.downcast_ref::<crate::distributed::ProcessGroup>());
        if let Some(g) = group
            && let Some(t) = g.max_on_device(&w)?
        {
            return Ok(t);
        }
        // Elsewhere through host values (exact: float32 in float64 and back).
        let mut v: Vec<f64> = self.bw_host(&w)?.into_iter().map(f64::from).collect();
        sync.max(&mut v).map_err(CoreError::Collective)?;
        let v: Vec<f32> = v.into_iter().map(|v| v as f32).collect();
        host::upload(&v, &w.f_reshape(dims(shape).as_slice())?)
    }

    fn assign(&self, v: &mut TchVar, values: &Tensor) -> Result<()> {
        let t = &v.tensor;
        if values.numel() != t.numel() {
            return Err(CoreError::Length {
                what: "variable values",
                len: values.numel(),
                shape: usize_shape(t),
                expected: t.numel(),
            }
            .into());
        }
        let src = values
            .f_reshape(t.size())?
            .f_to_device(t.device())?
            .f_to_kind(t.kind())?;
        // In place through libtorch (the version counter moves, as in `write`).
        tch::no_grad(|| t.shallow_clone().f_copy_(&src))?;
        Ok(())
    }

    fn fixed(
        &self,
        q: &FixedPoint,
        x: &Tensor,
        k: OperandOf<'_, Self>,
        p: [OperandOf<'_, Self>; 2],
        training: bool,
    ) -> Result<Tensor> {
        let kind = float_kind("x", x)?;
        let device = x.device();
        let xs = usize_shape(x);
        let k = Self::operand(&k, device, true)?;
        let [p1, p2] = [
            Self::operand(&p[0], device, false)?,
            Self::operand(&p[1], device, false)?,
        ];
        for t in [&k, &p1, &p2] {
            check_broadcast(&usize_shape(t), &xs)?;
        }
        crate::quantize(q, x, kind, [&k, &p1, &p2], training)
    }

    fn minifloat(&self, x: &Tensor, p: [OperandOf<'_, Self>; 3]) -> Result<Tensor> {
        float_kind("x", x)?;
        let device = x.device();
        let xs = usize_shape(x);
        let [m, e, e0] = [
            Self::operand(&p[0], device, false)?,
            Self::operand(&p[1], device, false)?,
            Self::operand(&p[2], device, false)?,
        ];
        for t in [&m, &e, &e0] {
            check_broadcast(&usize_shape(t), &xs)?;
            if t.device() != device {
                return Err(TorchError::Device {
                    what: "minifloat bit widths",
                    expected: device,
                    got: t.device(),
                });
            }
        }
        crate::ops::minifloat_ops(x, [&m, &e, &e0])
    }
}
