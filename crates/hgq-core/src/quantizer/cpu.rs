//! hgq-core's CPU buffers as a [`Backend`], and [`CpuQuantizer`], the layer quantizers on it.
//!
//! There is no autograd here: a training call is given its upstream gradient `dy` up front,
//! and the fused pass that computes the output also computes `dx` and the gradients of the
//! variable operands ([`FixedPoint::forward_backward`]); the backend collects them by variable.
use std::borrow::Cow;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::Arc;

use super::backend::{Backend, BitWidthArith, BwOp, Operand, OperandOf};
use super::constraint::{Constraint, Regularizer};
use super::fixed::TrackRule;
use super::{Props, Quantizer, QuantizerSpec, Store, VarInit, VarName, Variable};
use crate::error::{CoreError, Result};
use crate::kernels::{Path, Upstream};
use crate::mapper::{Axes, DefaultBitwidthMapper};
use crate::modes::CallMode;
use crate::real::{Element, Real};
use crate::shape::{TensorRef, check_len};
use crate::stateless::{FixedGrads, FixedPoint, minifloat_call};

/// A tensor of the CPU backend: row-major data (borrowed or owned) and its shape.
#[derive(Debug, Clone)]
pub struct CpuTensor<'a, T: Clone> {
    /// Row-major elements.
    pub data: Cow<'a, [T]>,
    /// Dimensions.
    pub shape: Vec<usize>,
}

impl<'a, T: Clone> CpuTensor<'a, T> {
    /// A tensor that borrows `x`.
    pub fn borrowed(x: TensorRef<'a, T>) -> Self {
        CpuTensor {
            data: Cow::Borrowed(x.data),
            shape: x.shape.to_vec(),
        }
    }

    fn as_ref(&self) -> TensorRef<'_, T> {
        TensorRef {
            data: &self.data,
            shape: &self.shape,
        }
    }
}

/// Gradients a training call gives the trainable variables, each in its variable's shape;
/// `None` for variables the quantizer does not have or does not train.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads<C> {
    /// d/db (KBI).
    pub b: Option<Vec<C>>,
    /// d/di (KBI, KIF; not under WRAP, where the data sets `i`).
    pub i: Option<Vec<C>>,
    /// d/df (KIF).
    pub f: Option<Vec<C>>,
    /// d/dm (minifloat).
    pub m: Option<Vec<C>>,
    /// d/de (minifloat).
    pub e: Option<Vec<C>>,
    /// d/de0 (minifloat).
    pub e0: Option<Vec<C>>,
}

impl<C> Default for Grads<C> {
    fn default() -> Self {
        Grads {
            b: None,
            i: None,
            f: None,
            m: None,
            e: None,
            e0: None,
        }
    }
}

impl<C> Grads<C> {
    pub(super) fn slot(&mut self, name: VarName) -> Option<&mut Option<Vec<C>>> {
        match name {
            VarName::B => Some(&mut self.b),
            VarName::I => Some(&mut self.i),
            VarName::F => Some(&mut self.f),
            VarName::M => Some(&mut self.m),
            VarName::E => Some(&mut self.e),
            VarName::E0 => Some(&mut self.e0),
            _ => None,
        }
    }

    /// Takes a variable's gradient out, if it has one.
    pub fn take(&mut self, name: VarName) -> Option<Vec<C>> {
        self.slot(name).and_then(Option::take)
    }

    /// Puts a variable's gradient in (replacing any); a variable no gradient is kept for
    /// (`k`, state) gets it back as the error.
    pub fn put(&mut self, name: VarName, g: Vec<C>) -> std::result::Result<(), Vec<C>> {
        match self.slot(name) {
            Some(slot) => {
                *slot = Some(g);
                Ok(())
            }
            None => Err(g),
        }
    }

    /// The gradient of a variable, if it has one.
    pub fn get(&self, name: VarName) -> Option<&[C]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, g)| g)
    }

    /// The gradients there are, by variable.
    pub fn iter(&self) -> impl Iterator<Item = (VarName, &[C])> {
        [
            (VarName::B, &self.b),
            (VarName::I, &self.i),
            (VarName::F, &self.f),
            (VarName::M, &self.m),
            (VarName::E, &self.e),
            (VarName::E0, &self.e0),
        ]
        .into_iter()
        .filter_map(|(n, g)| g.as_deref().map(|g| (n, g)))
    }
}

/// Creates CPU variables: row-major `Vec`s of the compute type.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuStore<C>(std::marker::PhantomData<C>);

impl<C: Real> Store for CpuStore<C> {
    type Var = Vec<C>;
    type Error = CoreError;
    fn var(&mut self, init: &VarInit) -> Result<Vec<C>> {
        let n = init.len();
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| CoreError::TooLarge {
            what: "variable",
            shape: init.shape.clone(),
            max: super::MAX_BW_ELEMENTS,
        })?;
        v.extend((0..n).map(|j| C::from_f64(init.value_at(j))));
        Ok(v)
    }
}

/// A variable whose values the CPU backends ([`Cpu`], [`DualArith`](super::DualArith)) read and
/// write as host memory: hgq-core's own `Vec`s, or another crate's storage (hgq-torch's
/// tensors in a `VarStore`, for a training step that runs without autograd).
pub trait HostVar<C> {
    /// The values, row-major; an error if they are not in host memory as `C`.
    fn host(&self) -> Result<&[C]>;
    /// The values to write in place; an error if they are not in host memory as `C`.
    fn host_mut(&mut self) -> Result<&mut [C]>;
    /// Another handle to the same memory, which a [`SavedPass`] keeps for its backward instead
    /// of a copy of the values, with their [`HostVar::version`] at the forward; `None` (the
    /// default, and hgq-core's `Vec`s): the pass keeps a copy.
    fn share(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
    /// A count that every write to the values moves (a shared handle's backward checks it);
    /// `None` where there is none.
    fn version(&self) -> Option<i64> {
        None
    }
}

impl<C> HostVar<C> for Vec<C> {
    fn host(&self) -> Result<&[C]> {
        Ok(self)
    }
    fn host_mut(&mut self) -> Result<&mut [C]> {
        Ok(self)
    }
}

/// What a training call collects.
#[derive(Debug)]
struct Collected<T: Element> {
    dx: Option<Vec<T>>,
    grads: Grads<T::C>,
}

/// hgq-core's CPU buffers as a backend, for one call: inputs of element type `T`, variables of
/// `T::C` in `V` (hgq-core's `Vec`s, or any [`HostVar`]). With an upstream gradient (a training
/// call) every pass also computes `dx` and the gradients of the trainable variables it reads.
#[derive(Debug)]
pub struct Cpu<'a, T: Element, V = Vec<<T as Element>::C>> {
    dy: Option<&'a [T]>,
    path: Path,
    collected: RefCell<Collected<T>>,
    /// `Some`: the passes without upstream are kept for a later backward.
    saved: Option<RefCell<Vec<SavedPass<T, V>>>>,
    /// An input the caller shares: a pass that reads exactly these values keeps a handle to
    /// them, not a copy ([`Quantizer::forward_saved_shared`]).
    shared_input: Option<Arc<Vec<T>>>,
    var: std::marker::PhantomData<fn(&V)>,
}

/// One pass kept by a recording [`Cpu`] for a backward later (when the upstream gradient is
/// known, as in a network): the values it read, so that changes of the variables after the
/// forward (an optimizer step) do not reach it, as with autograd's saved tensors. Variables
/// whose storage can be shared ([`HostVar::share`]) are kept as handles with their version,
/// and a backward after a write to them is an error (as autograd's); others are copied.
#[derive(Debug, Clone)]
pub struct SavedPass<T: Element, V = Vec<<T as Element>::C>> {
    kind: SavedKind,
    x: SavedInput<T>,
    shape: Vec<usize>,
    /// Fixed point: k, then the two bit-width operands; minifloat: m, e, e0 as used.
    params: Vec<SavedParam<T::C, V>>,
}

/// The input a pass read: a copy, or the caller's shared values (the same memory).
#[derive(Debug, Clone)]
enum SavedInput<T> {
    Copy(Vec<T>),
    Shared(Arc<Vec<T>>),
}

impl<T> SavedInput<T> {
    fn data(&self) -> &[T] {
        match self {
            SavedInput::Copy(v) => v,
            SavedInput::Shared(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum SavedKind {
    Fixed { q: FixedPoint, training: bool },
    Float { path: Path },
    Identity,
}

/// A parameter a pass read: its values, shape, and the trainable variable it is (if one).
#[derive(Debug, Clone)]
struct SavedParam<C, V> {
    values: SavedValues<C, V>,
    shape: Vec<usize>,
    var: Option<VarName>,
}

/// A saved parameter's values: a copy, or a handle to the variable's memory and the version
/// the values had when the pass read them.
#[derive(Debug, Clone)]
enum SavedValues<C, V> {
    Copy(Vec<C>),
    Shared { var: V, version: i64 },
}

impl<C: Copy, V: HostVar<C>> SavedParam<C, V> {
    fn of(o: &Operand<'_, V, Vec<C>>) -> Result<Self> {
        Ok(match o {
            Operand::Var(v) => {
                let shared = v.value.share().zip(v.value.version());
                SavedParam {
                    values: match shared {
                        Some((var, version)) => SavedValues::Shared { var, version },
                        None => SavedValues::Copy(v.value.host()?.to_vec()),
                    },
                    shape: v.shape.clone(),
                    var: v.trainable.then_some(v.name),
                }
            }
            Operand::Bw(d, s) => SavedParam {
                values: SavedValues::Copy(d.to_vec()),
                shape: s.to_vec(),
                var: None,
            },
        })
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as the forward read them; an error if the variable was written since.
    fn tensor(&self) -> Result<TensorRef<'_, C>> {
        let values = match &self.values {
            SavedValues::Copy(v) => v.as_slice(),
            SavedValues::Shared { var, version } => {
                if var.version() != Some(*version) {
                    return Err(CoreError::Unsupported(
                        "a backward after a write to a variable its forward read (an optimizer \
                         step or another call in between): run the backward first",
                    ));
                }
                var.host()?
            }
        };
        TensorRef::new(values, &self.shape)
    }
}

impl<T: Element, V> SavedPass<T, V> {
    /// The input the pass read (x), row-major.
    pub fn input(&self) -> &[T] {
        self.x.data()
    }

    /// Drops the pass, its copy of the input (if it made one) given back to
    /// [`crate::scratch`] for the next pass of its size on this thread.
    pub fn recycle(self) {
        if let SavedInput::Copy(v) = self.x {
            crate::scratch::give(v);
        }
    }
}

impl<T: Element, V: HostVar<T::C>> SavedPass<T, V> {
    /// `dx` into `dx` and the gradients of the trainable variables the pass read, for
    /// upstream `dy` (x's shape).
    pub fn backward(&self, dy: &[T], dx: &mut [T]) -> Result<Grads<T::C>> {
        check_len("dy", dy.len(), &self.shape)?;
        check_len("dx", dx.len(), &self.shape)?;
        let x = TensorRef::new(self.x.data(), &self.shape)?;
        // Every gradient buffer is written whole by the pass: recycled, not zeroed.
        let buffer = |p: &SavedParam<T::C, V>| crate::scratch::reals::<T::C>(p.len());
        // Each parameter's gradient, beside the parameters it is of.
        let (grads, params): (Vec<Vec<T::C>>, &[_]) = match self.kind {
            SavedKind::Identity => {
                dx.copy_from_slice(dy);
                return Ok(Grads::default());
            }
            SavedKind::Fixed { q, training } => {
                let [k, p1, p2] = &self.params[..] else {
                    return Err(CoreError::Unsupported(
                        "a saved fixed-point pass needs k, i, f",
                    ));
                };
                let (mut d1, mut d2) = (buffer(p1), buffer(p2));
                let grads = FixedGrads {
                    dx,
                    di: &mut d1,
                    df: &mut d2,
                };
                let t = [k.tensor()?, p1.tensor()?, p2.tensor()?];
                q.backward(x, t[0], t[1], t[2], training, Upstream::Each(dy), grads)?;
                (vec![d1, d2], &self.params[1..])
            }
            SavedKind::Float { path } => {
                let [m, e, e0] = &self.params[..] else {
                    return Err(CoreError::Unsupported(
                        "a saved minifloat pass needs m, e, e0",
                    ));
                };
                let mut g: [Vec<T::C>; 3] = [buffer(m), buffer(e), buffer(e0)];
                let [g0, g1, g2] = &mut g;
                // Gradients alone: the output was the forward's.
                minifloat_call(
                    x,
                    [m.tensor()?, e.tensor()?, e0.tensor()?],
                    Some(Upstream::Each(dy)),
                    None,
                    Some((dx, [g0, g1, g2])),
                    path,
                )?;
                (g.into(), &self.params[..])
            }
        };
        let mut out = Grads::default();
        for (p, g) in params.iter().zip(grads) {
            match p.var.and_then(|n| out.slot(n)) {
                Some(Some(acc)) => {
                    acc.iter_mut().zip(&g).for_each(|(a, &b)| *a = *a + b);
                    crate::scratch::give(g);
                }
                Some(slot) => *slot = Some(g),
                // A parameter that is not trained (WRAP's `i`): its gradient goes.
                None => crate::scratch::give(g),
            }
        }
        Ok(out)
    }
}

impl<'a, T: Element, V: HostVar<T::C>> Cpu<'a, T, V> {
    /// A backend without gradients.
    pub fn new() -> Self {
        Cpu {
            dy: None,
            path: Path::Simd,
            collected: RefCell::new(Collected {
                dx: None,
                grads: Grads::default(),
            }),
            saved: None,
            shared_input: None,
            var: std::marker::PhantomData,
        }
    }

    /// A backend that keeps each pass it runs without upstream ([`SavedPass`]), for a
    /// backward once the upstream gradient is known ([`Cpu::take_saved`]).
    pub fn recording(mut self) -> Self {
        self.saved = Some(RefCell::new(Vec::new()));
        self
    }

    /// The passes kept so far (none unless [`Cpu::recording`]).
    pub fn take_saved(&self) -> Vec<SavedPass<T, V>> {
        self.saved
            .as_ref()
            .map(|s| std::mem::take(&mut *s.borrow_mut()))
            .unwrap_or_default()
    }

    fn save(&self, kind: SavedKind, x: &CpuTensor<'_, T>, params: Vec<SavedParam<T::C, V>>) {
        if let Some(s) = &self.saved {
            s.borrow_mut().push(SavedPass {
                kind,
                x: match &self.shared_input {
                    // The caller's values themselves (same memory, same length): no copy.
                    Some(a)
                        if std::ptr::eq(a.as_ptr(), x.data.as_ptr()) && a.len() == x.data.len() =>
                    {
                        SavedInput::Shared(Arc::clone(a))
                    }
                    _ => {
                        let mut copy = crate::scratch::elements(x.data.len());
                        crate::team::copy(&mut copy, &x.data);
                        SavedInput::Copy(copy)
                    }
                },
                shape: x.shape.clone(),
                params,
            });
        }
    }

    /// A backend whose passes also compute the gradients for upstream `dy` (x's shape).
    pub fn with_upstream(dy: &'a [T]) -> Self {
        Cpu {
            dy: Some(dy),
            ..Cpu::new()
        }
    }

    /// Runs the passes on `path` (the scalar path is the reference of the SIMD ones).
    pub fn with_path(mut self, path: Path) -> Self {
        self.path = path;
        self
    }

    /// `dx` and the variables' gradients of the passes so far.
    pub fn take_grads(&self) -> (Option<Vec<T>>, Grads<T::C>) {
        let mut c = self.collected.borrow_mut();
        (c.dx.take(), std::mem::take(&mut c.grads))
    }

    fn operand<'o>(&self, o: &'o Operand<'o, V, Vec<T::C>>) -> Result<TensorRef<'o, T::C>> {
        match o {
            Operand::Var(v) => TensorRef::new(v.value.host()?, &v.shape),
            Operand::Bw(d, s) => TensorRef::new(d, s),
        }
    }

    /// Stores a pass's gradients: `dx`, and each trainable variable operand's.
    fn collect(&self, dx: Vec<T>, ops: &[&Operand<'_, V, Vec<T::C>>], grads: Vec<Vec<T::C>>) {
        let mut c = self.collected.borrow_mut();
        c.dx = Some(dx);
        for (o, g) in ops.iter().zip(grads) {
            if let Operand::Var(v) = o
                && v.trainable
                && let Some(slot) = c.grads.slot(v.name)
            {
                match slot {
                    Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, &b)| *a = *a + b),
                    None => *slot = Some(g),
                }
            }
        }
    }

    fn upstream(&self, n: usize) -> Result<Option<&'a [T]>> {
        match self.dy {
            Some(dy) if dy.len() != n => Err(CoreError::Length {
                what: "dy",
                len: dy.len(),
                shape: vec![n],
                expected: n,
            }),
            other => Ok(other),
        }
    }
}

impl<T: Element, V: HostVar<T::C>> Default for Cpu<'_, T, V> {
    fn default() -> Self {
        Cpu::new()
    }
}

/// A reduction over the dimensions `reduce` of `x`, keeping them.
fn reduce_mapper(reduce: &[usize], shape: &[usize]) -> Result<DefaultBitwidthMapper> {
    let mut m = DefaultBitwidthMapper::new(Axes::Homogeneous(
        reduce.iter().map(|&d| d as isize).collect(),
    ));
    let known: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
    m.build(&known)?;
    Ok(m)
}

/// `x` in the compute type: borrowed where `T` is it, a widened copy otherwise (f16, bf16), so
/// that the folds and reductions over it are made once per float kind, not per backend.
fn widen<T: Element>(x: &[T]) -> Cow<'_, [T::C]> {
    match T::as_c(x) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(x.iter().map(|v| v.to_c()).collect()),
    }
}

/// A vector of `n` values, `fill(start, part)` writing the part of them from `start` whole:
/// over the team's threads in parts where this thread leads one and `n` is long (the bit
/// widths of a kernel: per-element formulas, the same bits on any thread), else here; at the
/// CPU's widest vectors ([`crate::simd`]) either way.
fn build<C: Copy + Send + Sync>(
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<C>]) + Sync,
) -> Vec<C> {
    let mut out = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if let Some(len) = crate::team::split_len(n) {
        let parts: Vec<_> = spare.chunks_mut(len).enumerate().collect();
        crate::team::for_each_item(parts, |(j, part)| {
            crate::simd::widest(|| fill(j * len, part))
        });
    } else {
        crate::simd::widest(|| fill(0, spare));
    }
    // SAFETY: `fill` wrote each part whole (every caller below writes one value per slot),
    // so the first `n` values are initialized.
    unsafe { out.set_len(n) };
    out
}

/// `f` of each element (generic, not a `dyn Fn`: the loop is inlined and vectorizes).
pub(super) fn map<C: Copy + Send + Sync>(a: &[C], f: impl Fn(C) -> C + Sync) -> Vec<C> {
    build(a.len(), |start, part| {
        for (o, &v) in part.iter_mut().zip(&a[start..]) {
            o.write(f(v));
        }
    })
}

/// `a op b` with a length-1 operand broadcast.
pub(super) fn zip<C: Copy + Send + Sync>(
    a: &[C],
    b: &[C],
    f: impl Fn(C, C) -> C + Sync,
) -> Result<Vec<C>> {
    match (a.len(), b.len()) {
        (n, m) if n == m => Ok(build(n, |start, part| {
            for ((o, &a), &b) in part.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                o.write(f(a, b));
            }
        })),
        (1, _) => Ok(map(b, |b| f(a[0], b))),
        (_, 1) => Ok(map(a, |a| f(a, b[0]))),
        (n, m) => Err(CoreError::Broadcast {
            from: vec![m],
            to: vec![n],
        }),
    }
}

impl<'a, T: Element, V: HostVar<T::C>> BitWidthArith for Cpu<'a, T, V> {
    type C = T::C;
    type Var = V;
    type Bw = Vec<T::C>;
    type Error = CoreError;

    fn bw(&self, v: &Variable<V>) -> Result<Vec<T::C>> {
        Ok(v.value.host()?.to_vec())
    }

    fn bw_rc(&self, v: &Variable<V>) -> Result<Vec<T::C>> {
        Ok(map(v.value.host()?, super::rc1))
    }

    fn bw_const(&self, value: f64, shape: &[usize]) -> Result<Vec<T::C>> {
        Ok(vec![T::C::from_f64(value); crate::shape::numel(shape)?])
    }

    fn bw_op(&self, op: BwOp<'_, Vec<T::C>>) -> Result<Vec<T::C>> {
        Ok(match op {
            BwOp::RoundSte(a) => map(a, super::rc1),
            BwOp::Add(a, b) => zip(a, b, |a, b| a + b)?,
            BwOp::Sub(a, b) => zip(a, b, |a, b| a - b)?,
            BwOp::Mul(a, b) => zip(a, b, |a, b| a * b)?,
            BwOp::AddScalar(a, c) => map(a, |v| v + T::C::from_f64(c)),
            BwOp::MulScalar(a, c) => map(a, |v| v * T::C::from_f64(c)),
            BwOp::Exp2(a) => map(a, |v| v.exp2()),
            BwOp::Relu(a) => map(a, |v| v.maximum(T::C::ZERO)),
            BwOp::Positive(a) => map(a, |v| {
                if v > T::C::ZERO {
                    T::C::ONE
                } else {
                    T::C::ZERO
                }
            }),
            BwOp::Maximum(a, b) => zip(a, b, Real::maximum)?,
        })
    }

    fn regularize(&self, r: Regularizer, v: &Variable<V>) -> Result<Vec<T::C>> {
        Ok(vec![T::C::from_f64(r.loss(v.value.host()?))])
    }
}

impl<'a, T: Element, V: HostVar<T::C>> Backend for Cpu<'a, T, V> {
    type Tensor = CpuTensor<'a, T>;

    fn shape(&self, x: &Self::Tensor) -> Result<Vec<usize>> {
        check_len("x", x.data.len(), &x.shape)?;
        Ok(x.shape.clone())
    }

    fn all_finite(&self, x: &Self::Tensor) -> Result<bool> {
        Ok(crate::fold::all_finite(&widen(&x.data)))
    }

    fn absmax(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<T::C>> {
        let m = reduce_mapper(reduce, &x.shape)?;
        let c = widen(&x.data);
        Ok(m.absmax(TensorRef::new(&c, &x.shape)?)?.0)
    }

    fn any_negative(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<bool>> {
        let m = reduce_mapper(reduce, &x.shape)?;
        let c = widen(&x.data);
        Ok(m.any_negative(TensorRef::new(&c, &x.shape)?)?.0)
    }

    fn identity(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        match self.upstream(x.data.len())? {
            Some(dy) => self.collect(dy.to_vec(), &[], Vec::new()),
            None => self.save(SavedKind::Identity, x, Vec::new()),
        }
        Ok(CpuTensor {
            data: Cow::Owned(x.data.to_vec()),
            shape: x.shape.clone(),
        })
    }

    fn read(&self, v: &V) -> Result<Vec<T::C>> {
        Ok(v.host()?.to_vec())
    }

    fn write(&self, v: &mut V, values: &[T::C]) -> Result<()> {
        let v = v.host_mut()?;
        if v.len() != values.len() {
            return Err(CoreError::Length {
                what: "variable values",
                len: values.len(),
                shape: vec![v.len()],
                expected: v.len(),
            });
        }
        v.copy_from_slice(values);
        Ok(())
    }

    fn constrain(&self, v: &mut V, c: Constraint) -> Result<()> {
        c.apply(v.host_mut()?);
        Ok(())
    }

    fn require_finite(&self, x: &Self::Tensor, err: CoreError) -> Result<()> {
        if self.all_finite(x)? {
            Ok(())
        } else {
            Err(err)
        }
    }

    fn absmax_bw(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<T::C>> {
        self.absmax(x, reduce)
    }

    fn any_negative_bw(&self, x: &Self::Tensor, reduce: &[usize]) -> Result<Vec<T::C>> {
        Ok(self
            .any_negative(x, reduce)?
            .into_iter()
            .map(|n| if n { T::C::ONE } else { T::C::ZERO })
            .collect())
    }

    fn snapshot(&self, v: &V) -> Result<Vec<T::C>> {
        self.read(v)
    }

    fn bw_host(&self, w: &Vec<T::C>) -> Result<Vec<T::C>> {
        Ok(w.clone())
    }

    fn bw_from_host(&self, values: &[T::C], shape: &[usize]) -> Result<Vec<T::C>> {
        check_len("bit-width values", values.len(), shape)?;
        Ok(values.to_vec())
    }

    fn track_bw(
        &self,
        rule: TrackRule,
        absmax: &Vec<T::C>,
        i: &Vec<T::C>,
        p: &Vec<T::C>,
        decay: &Vec<T::C>,
    ) -> Result<(Vec<T::C>, Vec<T::C>)> {
        rule.apply_all(absmax, i, p, decay)
    }

    fn assign(&self, v: &mut V, values: &Vec<T::C>) -> Result<()> {
        self.write(v, values)
    }

    fn fixed(
        &self,
        q: &FixedPoint,
        x: &Self::Tensor,
        k: OperandOf<'_, Self>,
        p: [OperandOf<'_, Self>; 2],
        training: bool,
    ) -> Result<Self::Tensor> {
        let q = q.with_path(self.path);
        let xr = x.as_ref();
        let (kt, it, ft) = (
            self.operand(&k)?,
            self.operand(&p[0])?,
            self.operand(&p[1])?,
        );
        let n = x.data.len();
        // Written whole by the pass: recycled, not zeroed.
        let mut y = crate::scratch::elements::<T>(n);
        match self.upstream(n)? {
            None => {
                q.forward(xr, kt, it, ft, training, &mut y)?;
                let params = [&k, &p[0], &p[1]]
                    .into_iter()
                    .map(SavedParam::of)
                    .collect::<Result<_>>()?;
                self.save(SavedKind::Fixed { q, training }, x, params);
            }
            Some(dy) => {
                let mut dx = vec![T::default(); n];
                let (mut di, mut df) = (
                    vec![T::C::ZERO; it.data.len()],
                    vec![T::C::ZERO; ft.data.len()],
                );
                let grads = FixedGrads {
                    dx: &mut dx,
                    di: &mut di,
                    df: &mut df,
                };
                q.forward_backward(xr, kt, it, ft, training, dy, &mut y, grads)?;
                self.collect(dx, &[&p[0], &p[1]], vec![di, df]);
            }
        }
        Ok(CpuTensor {
            data: Cow::Owned(y),
            shape: x.shape.clone(),
        })
    }

    fn minifloat(&self, x: &Self::Tensor, p: [OperandOf<'_, Self>; 3]) -> Result<Self::Tensor> {
        // The pass reads integer bit widths: the variables as used, `rc(raw)`.
        let used: Vec<Vec<T::C>> = p
            .iter()
            .map(|o| {
                Ok(self
                    .operand(o)?
                    .data
                    .iter()
                    .map(|&v| super::rc1(v))
                    .collect())
            })
            .collect::<Result<_>>()?;
        let shapes: Vec<&[usize]> = p
            .iter()
            .map(|o| match o {
                Operand::Var(v) => v.shape.as_slice(),
                Operand::Bw(_, s) => s,
            })
            .collect();
        let pt = [
            TensorRef::new(&used[0], shapes[0])?,
            TensorRef::new(&used[1], shapes[1])?,
            TensorRef::new(&used[2], shapes[2])?,
        ];
        let n = x.data.len();
        let mut y = vec![T::default(); n];
        match self.upstream(n)? {
            None => {
                minifloat_call(x.as_ref(), pt, None, Some(&mut y), None, self.path)?;
                let params = (0..3)
                    .map(|j| SavedParam {
                        values: SavedValues::Copy(used[j].clone()),
                        shape: shapes[j].to_vec(),
                        var: match &p[j] {
                            Operand::Var(v) if v.trainable => Some(v.name),
                            _ => None,
                        },
                    })
                    .collect();
                self.save(SavedKind::Float { path: self.path }, x, params);
            }
            Some(dy) => {
                let mut dx = vec![T::default(); n];
                let mut g: [Vec<T::C>; 3] =
                    std::array::from_fn(|j| vec![T::C::ZERO; used[j].len()]);
                let [g0, g1, g2] = &mut g;
                minifloat_call(
                    x.as_ref(),
                    pt,
                    Some(Upstream::Each(dy)),
                    Some(&mut y),
                    Some((&mut dx, [g0, g1, g2])),
                    self.path,
                )?;
                let [g0, g1, g2] = g;
                self.collect(dx, &[&p[0], &p[1], &p[2]], vec![g0, g1, g2]);
            }
        }
        Ok(CpuTensor {
            data: Cow::Owned(y),
            shape: x.shape.clone(),
        })
    }
}

/// The CPU backend's calls on a quantizer of any host variables ([`HostVar`]): what
/// [`CpuQuantizer`] runs on its `Vec`s, and what a native training step runs on variables kept
/// elsewhere (hgq-torch's `VarStore`).
impl<V> Quantizer<V> {
    /// [`CpuQuantizer::forward_saved`] on this quantizer's variables, its passes on `path`:
    /// the output (x's shape, row-major) and the pass kept for the backward.
    pub fn forward_saved<T: Element>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        path: Path,
    ) -> Result<(Vec<T>, SavedPass<T, V>)>
    where
        V: HostVar<T::C>,
    {
        self.forward_one_saved(Cpu::new().with_path(path).recording(), x, mode)
    }

    /// The forward on recording backend `b`, which must keep exactly one pass.
    fn forward_one_saved<T: Element>(
        &mut self,
        b: Cpu<'_, T, V>,
        x: TensorRef<'_, T>,
        mode: CallMode,
    ) -> Result<(Vec<T>, SavedPass<T, V>)>
    where
        V: HostVar<T::C>,
    {
        let out = self.forward(&b, &CpuTensor::borrowed(x), mode)?;
        let mut saved = b.take_saved();
        let (Some(pass), true) = (saved.pop(), saved.is_empty()) else {
            return Err(CoreError::Unsupported(
                "a quantizer call that is not one pass cannot be saved for a backward",
            ));
        };
        Ok((out.data.into_owned(), pass))
    }

    /// [`Quantizer::forward_saved`] on values the caller shares (`x`, of shape `shape`): a
    /// pass that reads them as given keeps a handle to them instead of a copy (a network's
    /// activation, which the layer below keeps too).
    pub fn forward_saved_shared<T: Element>(
        &mut self,
        x: &Arc<Vec<T>>,
        shape: &[usize],
        mode: CallMode,
        path: Path,
    ) -> Result<(Vec<T>, SavedPass<T, V>)>
    where
        V: HostVar<T::C>,
    {
        let mut b = Cpu::<T, V>::new().with_path(path).recording();
        b.shared_input = Some(Arc::clone(x));
        self.forward_one_saved(b, TensorRef::new(x, shape)?, mode)
    }

    /// `bits` with their derivatives ([`DualArith`](super::DualArith)): the values, and through
    /// [`Quantizer::trainable_grads`] of [`Dual::backward`](super::Dual::backward) the
    /// gradients that a loss on them gives the trainable variables.
    pub fn bits_dual<C: Real>(&self) -> Result<super::Dual<C>>
    where
        V: HostVar<C>,
    {
        self.bits(&super::DualArith::<C, V>::new())
    }

    /// The gradients of the regularization loss with respect to the trainable variables
    /// (empty without regularizers).
    pub fn regularization_grads<C: Real>(&self) -> Result<Grads<C>>
    where
        V: HostVar<C>,
    {
        match self.regularization_loss(&super::DualArith::<C, V>::new())? {
            Some(loss) => Ok(self.trainable_grads(loss.backward(&[C::ONE])?)),
            None => Ok(Grads::default()),
        }
    }

    /// The regularization loss ([`Quantizer::regularization_loss`]'s value; `None` without
    /// regularizers), its gradient added in place into `grads` for the trainable variables:
    /// the values of that loss's [`Quantizer::add_trainable_grads`] with upstream 1 (up to the
    /// sign of a zero), in one pass per regularizer and no gradient array of its own.
    pub fn regularization_loss_and_grads<C: Real>(&self, grads: &mut Grads<C>) -> Result<Option<C>>
    where
        V: HostVar<C>,
    {
        let regularized = || self.variables().iter().filter(|v| v.regularizer.is_some());
        // Every length checked before anything is added: an error leaves `grads` as it was.
        for v in regularized() {
            let n = v.value.host()?.len();
            if let Some(Some(g)) = grads.slot(v.name)
                && v.trainable
                && g.len() != n
            {
                return Err(CoreError::Length {
                    what: "gradient of a regularized variable",
                    len: g.len(),
                    shape: vec![n],
                    expected: n,
                });
            }
        }
        let mut total: Option<C> = None;
        for v in regularized() {
            let (Some(r), values) = (v.regularizer, v.value.host()?) else {
                continue;
            };
            // Summed in the order and type of `regularization_loss`'s dual numbers.
            let loss = C::from_f64(r.loss(values));
            total = Some(total.map_or(loss, |t| t + loss));
            if let (true, Some(slot)) = (v.trainable, grads.slot(v.name)) {
                let g = slot.get_or_insert_with(|| vec![C::ZERO; values.len()]);
                r.add_grad(values, 1.0, g);
            }
        }
        Ok(total)
    }

    /// Adds the gradients of `sum(upstream * dual)` with respect to the trainable variables
    /// into `grads` ([`Dual::backward_add`](super::Dual::backward_add)): a training step's
    /// terms of one variable summed in place.
    pub fn add_trainable_grads<C: Real>(
        &self,
        dual: &super::Dual<C>,
        upstream: &[C],
        grads: &mut Grads<C>,
    ) -> Result<()> {
        dual.backward_add(upstream, grads, |name| self.trains(name))
    }

    /// Whether the quantizer has a trainable variable of this name (the variables whose
    /// gradients [`Dual::backward_add`](super::Dual::backward_add) and
    /// [`Dual::backward_add_rows`](super::Dual::backward_add_rows) are wanted for).
    pub fn trains(&self, name: VarName) -> bool {
        self.variable(name).is_some_and(|v| v.trainable)
    }

    /// Gradients by variable (what [`Dual::backward`](super::Dual::backward) returns), those of
    /// trainable variables kept.
    pub fn trainable_grads<C>(&self, grads: Vec<(VarName, Vec<C>)>) -> Grads<C> {
        let mut out = Grads::default();
        for (name, g) in grads {
            let trains = self.variable(name).is_some_and(|v| v.trainable);
            if let (true, Some(slot)) = (trains, out.slot(name)) {
                *slot = Some(g);
            }
        }
        out
    }
}

/// A layer quantizer on hgq-core's CPU buffers: [`Quantizer`]'s logic with [`Cpu`], variables
/// as `Vec<C>`.
///
/// ```
/// use hgq_core::quantizer::{CpuQuantizer, KbiSpec, QuantizerSpec};
/// use hgq_core::{CallMode, OverflowMode, RoundMode, TensorRef};
/// // One bit width per element of a 2-vector: 1 sign bit, 3 bits, 1 integer bit.
/// let spec = KbiSpec::new(1.0, 3.0, 1.0, RoundMode::Rnd, OverflowMode::Sat);
/// let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kbi(spec), &[Some(2)])?;
/// let x = TensorRef::new(&[0.3f32, -7.0], &[2])?;
/// let (mut y, mut dx) = ([0.0f32; 2], [0.0f32; 2]);
/// let grads = q.forward_backward(x, &[1.0, 1.0], &mut y, &mut dx)?;
/// assert_eq!(y, [0.25, -2.0]);
/// assert_eq!(dx, [1.0, 0.0]); // -7 saturates: no gradient reaches x
/// assert_eq!(grads.b.map(|g| g.len()), Some(2));
/// # Ok::<(), hgq_core::CoreError>(())
/// ```
#[derive(Debug)]
pub struct CpuQuantizer<C: Real> {
    q: Quantizer<Vec<C>>,
    path: Path,
}

impl<C: Real + Element<C = C>> CpuQuantizer<C> {
    /// Validates `spec` and makes the quantizer for inputs of `input_shape` (`None`: any
    /// size, e.g. the batch).
    pub fn new(spec: QuantizerSpec, input_shape: &[Option<usize>]) -> Result<Self> {
        Ok(CpuQuantizer {
            q: Quantizer::new(&mut CpuStore::<C>::default(), &spec, input_shape)?,
            path: Path::Simd,
        })
    }

    /// Runs the passes on `path` (the scalar path is the reference of the SIMD ones).
    pub fn with_path(mut self, path: Path) -> Self {
        self.path = path;
        self
    }

    /// The logic, generic over backends.
    pub fn inner(&self) -> &Quantizer<Vec<C>> {
        &self.q
    }

    /// The logic, generic over backends.
    pub fn inner_mut(&mut self) -> &mut Quantizer<Vec<C>> {
        &mut self.q
    }

    /// Where its bit widths sit relative to its input (none for the dummy).
    pub fn layout(&self) -> Option<&super::Layout> {
        self.q.layout()
    }

    /// The variables.
    pub fn variables(&self) -> &[Variable<Vec<C>>] {
        self.q.variables()
    }

    /// The variables, to set values (an optimizer step, loading weights).
    pub fn variables_mut(&mut self) -> &mut [Variable<Vec<C>>] {
        self.q.variables_mut()
    }

    /// A variable by name.
    pub fn variable(&self, name: VarName) -> Option<&Variable<Vec<C>>> {
        self.q.variable(name)
    }

    fn backend<'a, T: Element<C = C>>(&self, dy: Option<&'a [T]>) -> Cpu<'a, T> {
        let b = match dy {
            Some(dy) => Cpu::with_upstream(dy),
            None => Cpu::new(),
        };
        b.with_path(self.path)
    }

    /// Quantizes `x` in `mode` into `y`; training and tracing may update WRAP state (never
    /// on an error).
    pub fn forward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        y: &mut [T],
    ) -> Result<()> {
        check_len("y", y.len(), x.shape)?;
        let b = self.backend::<T>(None);
        let out = self.q.forward(&b, &CpuTensor::borrowed(x), mode)?;
        y.copy_from_slice(&out.data);
        Ok(())
    }

    /// A call whose backward comes later, as in a network (where `dy` is known only after the
    /// layers above ran): the output into `y` and what [`SavedPass::backward`] needs. The state
    /// moves as in [`CpuQuantizer::forward`]; the backward gives the bits of
    /// [`CpuQuantizer::forward_backward`].
    ///
    /// ```
    /// use hgq_core::quantizer::{CpuQuantizer, KifSpec, QuantizerSpec};
    /// use hgq_core::{mapper::Axes, CallMode, OverflowMode, RoundMode, TensorRef};
    /// let spec = KifSpec::new(1.0, 2.0, 2.0, RoundMode::Rnd, OverflowMode::Sat)
    ///     .with_axes(Axes::Homogeneous(vec![0]));
    /// let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Kif(spec), &[None, Some(2)])?;
    /// let x = [0.3f32, -9.0];
    /// let mut y = [0.0f32; 2];
    /// let saved = q.forward_saved(TensorRef::new(&x, &[1, 2])?, CallMode::Training, &mut y)?;
    /// assert_eq!(y, [0.25, -4.0]);
    /// let mut dx = [0.0f32; 2];
    /// let grads = saved.backward(&[1.0, 1.0], &mut dx)?;
    /// assert_eq!(dx, [1.0, 0.0]); // -9 saturates: no gradient reaches it
    /// assert!(grads.f.is_some() && grads.i.is_some());
    /// # Ok::<(), hgq_core::CoreError>(())
    /// ```
    pub fn forward_saved<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        y: &mut [T],
    ) -> Result<SavedPass<T>> {
        check_len("y", y.len(), x.shape)?;
        let (out, pass) = self.q.forward_saved(x, mode, self.path)?;
        y.copy_from_slice(&out);
        Ok(pass)
    }

    /// A training call with gradients for upstream `dy`: the output into `y`, `dx`, and the
    /// gradients of every trainable variable.
    pub fn forward_backward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        dy: &[T],
        y: &mut [T],
        dx: &mut [T],
    ) -> Result<Grads<C>> {
        check_len("y", y.len(), x.shape)?;
        check_len("dy", dy.len(), x.shape)?;
        check_len("dx", dx.len(), x.shape)?;
        let b = self.backend(Some(dy));
        let out = self
            .q
            .forward(&b, &CpuTensor::borrowed(x), CallMode::Training)?;
        let (dxv, grads) = b.take_grads();
        y.copy_from_slice(&out.data);
        match dxv {
            Some(d) => dx.copy_from_slice(&d),
            None => dx.copy_from_slice(dy),
        }
        Ok(grads)
    }

    /// The gradients of `sum(upstream * bits)` with respect to the trainable variables (what
    /// EBOPs give the bit widths in a native training step), from the same logic as `bits`
    /// ([`DualArith`](super::DualArith)). `upstream` has the bit-width shape (one value for the
    /// dummy).
    pub fn bits_backward(&self, upstream: &[C]) -> Result<Grads<C>> {
        let bits = self.q.bits_dual::<C>()?;
        Ok(self.q.trainable_grads(bits.backward(upstream)?))
    }

    /// The gradients of the regularization loss with respect to the trainable variables
    /// (empty without regularizers).
    pub fn regularization_backward(&self) -> Result<Grads<C>> {
        self.q.regularization_grads()
    }

    /// bits, fbits, min, max, epsilon (bit-width shape; scalars for the dummy).
    pub fn props(&self) -> Result<Props<Vec<C>>> {
        self.q.props(&self.backend::<C>(None))
    }

    /// Applies each variable's constraint (call after an optimizer step).
    pub fn apply_constraints(&mut self) -> Result<()> {
        let b = self.backend::<C>(None);
        self.q.apply_constraints(&b)
    }

    /// The sum of the regularizers' losses.
    pub fn regularization_loss(&self) -> f64 {
        self.variables()
            .iter()
            .filter_map(|v| v.regularizer.map(|r| r.loss(&v.value)))
            .sum()
    }

    /// Adds `scale * d(regularization loss)` to the matching gradients.
    pub fn add_regularization_grads(&self, scale: f64, grads: &mut Grads<C>) {
        for v in self.variables() {
            if let (Some(r), Some(Some(g))) = (v.regularizer, grads.slot(v.name)) {
                r.add_grad(&v.value, scale, g);
            }
        }
    }

    /// Resets WRAP tracking before a tracing pass (`i := -1e9`, `k := 0`).
    pub fn reset_trace(&mut self) -> Result<()> {
        let b = self.backend::<C>(None);
        self.q.reset_trace(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit-width arithmetic split over a team (long operands) gives the values of the
    /// plain per-element loops, at every length around the split and its parts.
    #[test]
    fn maps_and_zips_on_a_team_are_the_plain_loops() {
        let _l = crate::team::tests::lead();
        let _s = crate::team::session(2).expect("a session on a free team");
        assert_eq!(crate::team::width(), 2);
        let t = crate::kernels::TEAM_MIN;
        for n in [1, 7, t - 1, t, 3 * t + 5, (1 << 16) + 17] {
            let a: Vec<f32> = (0..n).map(|j| (j as f32 * 0.37).sin() * 9.0).collect();
            let b: Vec<f32> = (0..n).map(|j| (j as f32 * 0.11).cos() * 5.0).collect();
            let f = |v: f32| (v * 1.5).exp2() - v;
            assert_eq!(
                map(&a, f),
                a.iter().map(|&v| f(v)).collect::<Vec<_>>(),
                "{n}"
            );
            let g = |x: f32, y: f32| x * y + x;
            let plain: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| g(x, y)).collect();
            assert_eq!(zip(&a, &b, g).unwrap(), plain, "{n}");
            let first: Vec<f32> = b.iter().map(|&y| g(a[0], y)).collect();
            assert_eq!(zip(&a[..1], &b, g).unwrap(), first, "{n}");
            let last: Vec<f32> = a.iter().map(|&x| g(x, b[0])).collect();
            assert_eq!(zip(&a, &b[..1], g).unwrap(), last, "{n}");
        }
        assert!(zip(&[1.0f32, 2.0], &[1.0, 2.0, 3.0], |x, y| x + y).is_err());
    }
}
