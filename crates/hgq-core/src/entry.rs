//! One call's tensors ([`Call`]) and the entries that send a generic call to the kernels'
//! instantiations.
//!
//! The kernels are instantiated for `f32` and `f64` only, by the non-generic functions here,
//! so they are compiled once, in this crate: a crate that calls `FixedPoint::forward::<f32>`
//! compiles a type test and a call, not the kernels again (release builds do not share generic
//! instances between crates). `f16`/`bf16` run the `f32` kernels on widened copies and round
//! once when stored, the same bits as kernels of their own would give.
use crate::error::Result;
use crate::kernels::{Path, Upstream};
use crate::real::{Element, Real};
use crate::shape::TensorRef;
use crate::stateless::{FixedPoint, Screen};
use std::any::TypeId;

/// The tensors of one quantizer pass: x, the three parameters (broadcast to x), the upstream
/// gradient, and the outputs to write (`G` parameter gradients).
pub(crate) struct Call<'a, T: Element, const G: usize> {
    pub x: TensorRef<'a, T>,
    pub p: [TensorRef<'a, T::C>; 3],
    pub dy: Option<Upstream<'a, T>>,
    pub y: Option<&'a mut [T]>,
    pub grads: Option<GradsOut<'a, T, G>>,
}

/// Where a pass writes its gradients: x's and the `G` parameters'.
pub(crate) type GradsOut<'a, T, const G: usize> = (&'a mut [T], [&'a mut [<T as Element>::C]; G]);

/// A [`Widened`] call's gradient buffers.
type GradsBuf<U, const G: usize> = (Vec<U>, [Vec<<U as Element>::C>; G]);

impl<'a, T: Element, const G: usize> Call<'a, T, G> {
    /// The same call, its outputs lent for a shorter time (to keep them for a second pass).
    pub fn reborrow(&mut self) -> Call<'_, T, G> {
        Call {
            x: self.x,
            p: self.p,
            dy: self.dy,
            y: self.y.as_deref_mut(),
            grads: self
                .grads
                .as_mut()
                .map(|(dx, g)| (&mut **dx, g.each_mut().map(|g| &mut **g))),
        }
    }

    /// The call as one of `U`, when `T` is `U` (else the call back, unmoved: a few pointers).
    #[allow(clippy::result_large_err)]
    fn cast<U: Element>(self) -> std::result::Result<Call<'a, U, G>, Self> {
        if TypeId::of::<T>() != TypeId::of::<U>() {
            return Err(self);
        }
        // SAFETY: T and U are the same type (so are T::C and U::C, T's associated type):
        // every cast below is of a slice to a slice of its own type.
        unsafe {
            Ok(Call {
                x: TensorRef {
                    data: same(self.x.data),
                    shape: self.x.shape,
                },
                p: self.p.map(|t| TensorRef {
                    data: same(t.data),
                    shape: t.shape,
                }),
                dy: self.dy.map(|d| match d {
                    Upstream::Each(d) => Upstream::Each(same(d)),
                    Upstream::Same(v) => Upstream::Same(same(std::slice::from_ref(&v))[0]),
                }),
                y: self.y.map(|y| same_mut(y)),
                grads: self
                    .grads
                    .map(|(dx, g)| (same_mut(dx), g.map(|g| same_mut(g)))),
            })
        }
    }

    /// Copies of the inputs in `U` (exact where `U` holds `T`), with outputs of the same
    /// lengths, for a pass in `U` whose results [`Widened::store`] rounds back to `T` once.
    pub fn widen<U: Element>(&self) -> Widened<U, G> {
        let to_u = |v: T| U::from_c(U::C::from_f64(v.to_c().to_f64()));
        let to_uc = |v: T::C| U::C::from_f64(v.to_f64());
        Widened {
            x: self.x.data.iter().map(|&v| to_u(v)).collect(),
            shape: self.x.shape.to_vec(),
            p: self.p.map(|t| t.data.iter().map(|&v| to_uc(v)).collect()),
            p_shapes: self.p.map(|t| t.shape.to_vec()),
            dy: self.dy.map(|d| match d {
                Upstream::Each(d) => Ok(d.iter().map(|&v| to_u(v)).collect()),
                Upstream::Same(v) => Err(to_u(v)),
            }),
            y: self.y.as_ref().map(|y| vec![U::default(); y.len()]),
            grads: self.grads.as_ref().map(|(dx, g)| {
                (
                    vec![U::default(); dx.len()],
                    std::array::from_fn(|q| vec![U::C::from_f64(0.0); g[q].len()]),
                )
            }),
        }
    }
}

/// A [`Call`]'s inputs and outputs copied into another element type `U`.
pub(crate) struct Widened<U: Element, const G: usize> {
    x: Vec<U>,
    shape: Vec<usize>,
    p: [Vec<U::C>; 3],
    p_shapes: [Vec<usize>; 3],
    dy: Option<std::result::Result<Vec<U>, U>>,
    y: Option<Vec<U>>,
    grads: Option<GradsBuf<U, G>>,
}

impl<U: Element, const G: usize> Widened<U, G> {
    /// The call over the copies.
    pub fn call(&mut self) -> Call<'_, U, G> {
        let p = &self.p;
        let s = &self.p_shapes;
        Call {
            x: TensorRef {
                data: &self.x,
                shape: &self.shape,
            },
            p: std::array::from_fn(|q| TensorRef {
                data: &p[q],
                shape: &s[q],
            }),
            dy: self.dy.as_ref().map(|d| match d {
                Ok(d) => Upstream::Each(d.as_slice()),
                Err(v) => Upstream::Same(*v),
            }),
            y: self.y.as_deref_mut(),
            grads: self
                .grads
                .as_mut()
                .map(|(dx, g)| (dx.as_mut_slice(), g.each_mut().map(|g| g.as_mut_slice()))),
        }
    }

    /// Stores the results into `into`'s outputs, each rounded once to its type.
    pub fn store<T: Element>(self, into: Call<'_, T, G>) {
        let to_t = |v: U| T::from_c(T::C::from_f64(v.to_c().to_f64()));
        if let (Some(y), Some(src)) = (into.y, &self.y) {
            y.iter_mut().zip(src).for_each(|(d, &s)| *d = to_t(s));
        }
        if let (Some((dx, g)), Some((sdx, sg))) = (into.grads, &self.grads) {
            dx.iter_mut().zip(sdx).for_each(|(d, &s)| *d = to_t(s));
            for (g, sg) in g.into_iter().zip(sg) {
                g.iter_mut()
                    .zip(sg)
                    .for_each(|(d, &s)| *d = T::C::from_f64(s.to_f64()));
            }
        }
    }
}

/// `s` as a slice of `U`.
///
/// # Safety
/// `T` and `U` are the same type.
unsafe fn same<T, U>(s: &[T]) -> &[U] {
    // SAFETY: the caller's promise; the length and lifetime are kept.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// `s` as a mutable slice of `U`.
///
/// # Safety
/// `T` and `U` are the same type.
unsafe fn same_mut<T, U>(s: &mut [T]) -> &mut [U] {
    // SAFETY: the caller's promise; the length and lifetime are kept.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// The fixed-point pass for any element type.
pub(crate) fn fixed<T: Element>(
    q: &FixedPoint,
    training: bool,
    call: Call<'_, T, 2>,
) -> Result<Screen> {
    let call = match call.cast::<f32>() {
        Ok(c) => return fixed_f32(q, training, c),
        Err(c) => c,
    };
    let call = match call.cast::<f64>() {
        Ok(c) => return fixed_f64(q, training, c),
        Err(c) => c,
    };
    let mut w = call.widen::<f32>();
    let screen = fixed_f32(q, training, w.call())?;
    w.store(call);
    Ok(screen)
}

/// The fixed-point pass in float64 for any element type, its results rounded to `T` once.
pub(crate) fn fixed_in_f64<T: Element>(
    q: &FixedPoint,
    training: bool,
    call: Call<'_, T, 2>,
) -> Result<Screen> {
    let call = match call.cast::<f64>() {
        Ok(c) => return fixed_f64(q, training, c),
        Err(c) => c,
    };
    let mut w = call.widen::<f64>();
    let screen = fixed_f64(q, training, w.call())?;
    w.store(call);
    Ok(screen)
}

fn fixed_f32(q: &FixedPoint, training: bool, call: Call<'_, f32, 2>) -> Result<Screen> {
    q.call_impl(training, call)
}

fn fixed_f64(q: &FixedPoint, training: bool, call: Call<'_, f64, 2>) -> Result<Screen> {
    q.call_impl(training, call)
}

/// The minifloat pass for any element type.
pub(crate) fn float<T: Element>(call: Call<'_, T, 3>, path: Path) -> Result<()> {
    let call = match call.cast::<f32>() {
        Ok(c) => return float_f32(c, path),
        Err(c) => c,
    };
    let call = match call.cast::<f64>() {
        Ok(c) => return float_f64(c, path),
        Err(c) => c,
    };
    let mut w = call.widen::<f32>();
    float_f32(w.call(), path)?;
    w.store(call);
    Ok(())
}

fn float_f32(call: Call<'_, f32, 3>, path: Path) -> Result<()> {
    crate::stateless::minifloat_impl(call, path)
}

fn float_f64(call: Call<'_, f64, 3>, path: Path) -> Result<()> {
    crate::stateless::minifloat_impl(call, path)
}
