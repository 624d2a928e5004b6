//! The stateless quantizers: fixed point (SPEC 1-3) and minifloat (SPEC 8), one fused pass each.
use crate::entry::{self, Call, GradsOut};
use crate::error::{CoreError, Result};
use crate::kernels::buffers::Buffers;
use crate::kernels::check::{Check, find_bad};
use crate::kernels::op::ElemOp;
use crate::kernels::pass;
use crate::kernels::plan::Plan;
use crate::kernels::{Par, Path, Upstream};
use crate::modes::{OverflowMode, RoundMode, check_modes};
use crate::ops::{Args, FixedOp, FloatOp, WithFixedOp, with_fixed_op};
use crate::real::{Element, Real};
use crate::shape::{TensorRef, align, broadcast, check_len, reduce_sum};
use crate::wide::{self, Width};

/// What S_RND / S_RND_CONV do in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stochastic {
    /// As the reference: no noise, S_RND rounds as RND (and S_RND_CONV as RND_CONV).
    #[default]
    Reference,
    /// Unbiased stochastic rounding `floor(v + u)`, `u ~ U[0, 1)` from a counter-based
    /// generator keyed by this seed and the element index: reproducible for any thread count.
    Seeded(u64),
}

/// What [`FixedPoint`] expects of its `i` and `f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BitWidths {
    /// Integers (what firmware has); anything else is an error.
    #[default]
    Integer,
    /// Raw trainable values, rounded half to even inside the pass with a straight-through
    /// gradient: the layer quantizers' `round(v) + (v - stop_gradient(v))`, fused, so a training
    /// step does not round its bit-width variables in separate passes. Non-finite values are
    /// errors; the gradients are those of the rounded values (straight through).
    RoundHalfEven,
    /// KBI's raw trainable `b` and `i` in place of `i` and `f` (one shape): the pass uses
    /// `i = rc(i)` and `f = rc(b) - rc(i)` (integers; non-finite raw values are errors) and
    /// returns the gradients autograd forms through those operations: `db = df` and
    /// `di = di - df` (i's two uses). The KBI chain rule, here once for every backend. Formed
    /// per element inside the pass (no copies of the bit widths).
    KbiRaw,
}

impl BitWidths {
    /// The names and rules of the three bit-width operands (k and the two this rule reads), as
    /// a pass checks them and names them in its errors.
    fn checks(self) -> [(&'static str, Check); 3] {
        match self {
            BitWidths::Integer => [
                ("k", Check::ZeroOne),
                ("i", Check::Integer),
                ("f", Check::Integer),
            ],
            BitWidths::RoundHalfEven => [
                ("k", Check::ZeroOne),
                ("i", Check::Finite),
                ("f", Check::Finite),
            ],
            BitWidths::KbiRaw => [
                ("k", Check::ZeroOne),
                ("b", Check::Finite),
                ("i", Check::Finite),
            ],
        }
    }
}

/// What a [`FixedPoint`] pass learned about its bit widths, for a later pass over the same
/// ones: what the forward of an autograd node hands its backward.
///
/// A pass over bit widths as large as x checks every element (k is 0 or 1, i and f pass their
/// rule). Where every k, i, f also lies in a small range, it takes a shorter path that forms
/// the powers of two from exponent bits alone, and returns [`Screen::InRange`]. A backward
/// given that (by [`FixedPoint::with_screen`]) neither checks again nor looks at the range.
///
/// ```
/// use hgq_core::{BitWidths, FixedGrads, FixedPoint, RoundMode, OverflowMode, Screen, TensorRef, Upstream};
/// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat)
///     .unwrap()
///     .with_bit_widths(BitWidths::RoundHalfEven);
/// let s = [2];
/// let x = TensorRef::new(&[0.3f32, -5.0], &s).unwrap();
/// let (k, i, f) = ([1.0f32; 2], [1.2f32, 0.0], [2.0f32, 3.4]);
/// let (k, i, f) = (TensorRef::new(&k, &s).unwrap(), TensorRef::new(&i, &s).unwrap(), TensorRef::new(&f, &s).unwrap());
/// let mut y = [0.0f32; 2];
/// let screen = q.forward(x, k, i, f, true, &mut y).unwrap();
/// assert_eq!(screen, Screen::InRange);
/// let (mut dx, mut di, mut df) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
/// let grads = FixedGrads { dx: &mut dx, di: &mut di, df: &mut df };
/// q.with_screen(screen).backward(x, k, i, f, true, Upstream::Same(1.0), grads).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Screen {
    /// Nothing is known: a pass checks every bit width (bad ones are errors).
    #[default]
    Unknown,
    /// Every k is 0 or 1 and every i, f passes the quantizer's [`BitWidths`] rule and lies in
    /// `[-100, 100]`. Given to a pass, it takes this as known for bit widths as large as x:
    /// no check, no error. If it is not true (the bit widths changed since), that pass's
    /// outputs are unspecified values; nothing else goes wrong.
    InRange,
}

/// The gradients one fused pass writes: `dx` in x's shape, `di` and `df` in the shapes of `i`
/// and `f` (summed over the dims they broadcast along).
#[derive(Debug)]
pub struct FixedGrads<'a, T: Element> {
    /// d/dx, x-shaped.
    pub dx: &'a mut [T],
    /// d/di, i-shaped.
    pub di: &'a mut [T::C],
    /// d/df, f-shaped.
    pub df: &'a mut [T::C],
}

/// The stateless fixed-point quantizer `Q(x, k, i, f)` of SPEC 3 for a (round, overflow) pair.
///
/// In inference the result equals `ap_fixed<k+i+f, k+i, AP_<round>, AP_<overflow>>`.
///
/// ```
/// use hgq_core::{FixedPoint, RoundMode, OverflowMode, TensorRef};
/// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
/// let x = [0.3f32, -5.0, 1.7];
/// let (k, i, f) = ([1.0f32], [1.0f32], [2.0f32]); // 1 sign, 1 integer, 2 fractional bits
/// let mut y = [0.0f32; 3];
/// let s = [1];
/// q.forward(TensorRef::new(&x, &[3]).unwrap(), TensorRef::new(&k, &s).unwrap(),
///           TensorRef::new(&i, &s).unwrap(), TensorRef::new(&f, &s).unwrap(), false, &mut y).unwrap();
/// assert_eq!(y, [0.25, -2.0, 1.75]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    round: RoundMode,
    overflow: OverflowMode,
    stochastic: Stochastic,
    path: Path,
    par: Par,
    zero_mask: bool,
    bit_widths: BitWidths,
    screen: Screen,
    /// KBI's chain rule inside the pass ([`FixedPoint::call`] sets it for one call).
    chain: bool,
}

impl FixedPoint {
    /// A quantizer for the modes; WRAP_SM needs RND-like rounding.
    pub fn new(round: RoundMode, overflow: OverflowMode) -> Result<Self> {
        check_modes(round, overflow)?;
        Ok(FixedPoint {
            round,
            overflow,
            stochastic: Stochastic::Reference,
            path: Path::Simd,
            par: Par::default(),
            zero_mask: false,
            bit_widths: BitWidths::Integer,
            screen: Screen::Unknown,
            chain: false,
        })
    }

    /// Sets what `i` and `f` are: integers (the default) or raw values rounded in the pass.
    ///
    /// ```
    /// use hgq_core::{BitWidths, FixedPoint, RoundMode, OverflowMode, TensorRef};
    /// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    /// let s = [1];
    /// let x = TensorRef::new(&[0.3f32, -5.0, 1.7], &[3]).unwrap();
    /// let k = TensorRef::new(&[1.0f32], &s).unwrap();
    /// let i = TensorRef::new(&[0.6f32], &s).unwrap(); // used as 1 (half to even)
    /// let f = TensorRef::new(&[2.5f32], &s).unwrap(); // used as 2
    /// let mut y = [0.0f32; 3];
    /// assert!(q.forward(x, k, i, f, false, &mut y).is_err()); // not integers
    /// let q = q.with_bit_widths(BitWidths::RoundHalfEven);
    /// q.forward(x, k, i, f, false, &mut y).unwrap();
    /// assert_eq!(y, [0.25, -2.0, 1.75]);
    /// ```
    pub fn with_bit_widths(mut self, b: BitWidths) -> Self {
        self.bit_widths = b;
        self
    }

    /// What `i` and `f` are taken to be.
    pub fn bit_widths(&self) -> BitWidths {
        self.bit_widths
    }

    /// Sets what is known of the bit widths of the next passes: the [`Screen`] that a forward
    /// over the same bit widths returned (meant for one backward: a quantizer whose bit widths
    /// train should not keep [`Screen::InRange`]).
    pub fn with_screen(mut self, s: Screen) -> Self {
        self.screen = s;
        self
    }

    /// Sets what S_ modes do in training.
    pub fn with_stochastic(mut self, s: Stochastic) -> Self {
        self.stochastic = s;
        self
    }

    /// Chooses the code path (the scalar path is the reference that SIMD is tested against).
    pub fn with_path(mut self, path: Path) -> Self {
        self.path = path;
        self
    }

    /// Sets how many threads a pass may use (separate from the SIMD level, [`Path`]); the
    /// results are the same bits whatever the choice.
    pub fn with_par(mut self, par: Par) -> Self {
        self.par = par;
        self
    }

    /// How many threads a pass may use.
    pub fn par(&self) -> Par {
        self.par
    }

    /// Outside training, output 0 where `k + i + f <= 0` (what the layer quantizers do: a
    /// value with no bits is absent in firmware). Fused into the same pass.
    pub fn with_zero_mask(mut self, on: bool) -> Self {
        self.zero_mask = on;
        self
    }

    /// What S_ modes do in training.
    pub fn stochastic(&self) -> Stochastic {
        self.stochastic
    }

    /// Whether outputs without bits are zeroed outside training ([`FixedPoint::with_zero_mask`]).
    pub fn zero_mask(&self) -> bool {
        self.zero_mask
    }

    /// Checks bit widths as a pass over them does (`k` 0 or 1, `i` and `f` by the
    /// [`BitWidths`] rule, KBI's raw `b` and `i` (given as `i` and `f`) finite; given one length
    /// each, also that float64 holds the type, KBI's after forming `i` and `f`,
    /// [`CoreError::TooWide`]), with the error such a pass
    /// returns: for backends that run the pass another way and must refuse the same values in
    /// the same words.
    pub fn check_bit_widths<C: Real>(&self, k: &[C], i: &[C], f: &[C]) -> Result<()> {
        let [ck, ci, cf] = self.bit_widths.checks();
        first_bad([(ck.0, k, ck.1), (ci.0, i, ci.1), (cf.0, f, cf.1)])?;
        let (iu, fu);
        let (i, f) = match self.bit_widths {
            BitWidths::Integer | BitWidths::RoundHalfEven => (i, f),
            BitWidths::KbiRaw => {
                // KBI's raw b and i (here `i` and `f`): the type is that of the formed ones.
                let rc = crate::quantizer::rc1::<C>;
                iu = f.iter().map(|&v| rc(v)).collect::<Vec<C>>();
                fu = i
                    .iter()
                    .zip(&iu)
                    .map(|(&b, &i)| rc(b) - i)
                    .collect::<Vec<C>>();
                (&iu[..], &fu[..])
            }
        };
        if k.len() == i.len() && i.len() == f.len() {
            let rule = match self.bit_widths {
                BitWidths::RoundHalfEven => BitWidths::RoundHalfEven,
                _ => BitWidths::Integer,
            };
            let s = [k.len()];
            wide::width(
                [
                    TensorRef { data: k, shape: &s },
                    TensorRef { data: i, shape: &s },
                    TensorRef { data: f, shape: &s },
                ],
                &s,
                rule,
            )?;
        }
        Ok(())
    }

    /// The rounding mode.
    pub fn round_mode(&self) -> RoundMode {
        self.round
    }

    /// The overflow mode.
    pub fn overflow_mode(&self) -> OverflowMode {
        self.overflow
    }

    /// `y = Q(x, k, i, f)`. `k`, `i`, `f` broadcast to x (numpy rules). `k` must be 0 or 1 and
    /// `i`, `f` integers (the layer quantizers round them); NaN or infinite bit widths are
    /// errors. NaN in x gives NaN; +-inf saturates in SAT modes and gives NaN with WRAP, as in
    /// the reference. Returns what the pass learned of the bit widths ([`Screen`]).
    pub fn forward<T: Element>(
        &self,
        x: TensorRef<'_, T>,
        k: TensorRef<'_, T::C>,
        i: TensorRef<'_, T::C>,
        f: TensorRef<'_, T::C>,
        training: bool,
        y: &mut [T],
    ) -> Result<Screen> {
        self.call(x, [k, i, f], training, None, Some(y), None)
    }

    /// The output and all gradients for upstream `dy` in one pass (and the [`Screen`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<T: Element>(
        &self,
        x: TensorRef<'_, T>,
        k: TensorRef<'_, T::C>,
        i: TensorRef<'_, T::C>,
        f: TensorRef<'_, T::C>,
        training: bool,
        dy: &[T],
        y: &mut [T],
        grads: FixedGrads<'_, T>,
    ) -> Result<Screen> {
        let FixedGrads { dx, di, df } = grads;
        let dy = Some(Upstream::Each(dy));
        self.call(x, [k, i, f], training, dy, Some(y), Some((dx, [di, df])))
    }

    /// The gradients alone for upstream `dy` (per element, or one value for all elements: the
    /// gradient of a sum): the same bits as [`FixedPoint::forward_backward`] without storing
    /// the output, one pass that reads x, the bit widths and `dy` and writes only gradients
    /// (what an autograd backward needs). Returns the [`Screen`] as [`FixedPoint::forward`].
    ///
    /// ```
    /// use hgq_core::{FixedGrads, FixedPoint, RoundMode, OverflowMode, TensorRef, Upstream};
    /// let q = FixedPoint::new(RoundMode::Rnd, OverflowMode::Sat).unwrap();
    /// let s = [1];
    /// let x = TensorRef::new(&[0.3f32, -5.0, 1.7], &[3]).unwrap();
    /// let k = TensorRef::new(&[1.0f32], &s).unwrap();
    /// let i = TensorRef::new(&[1.0f32], &s).unwrap();
    /// let f = TensorRef::new(&[2.0f32], &s).unwrap();
    /// let (mut dx, mut di, mut df) = ([0.0f32; 3], [0.0f32], [0.0f32]);
    /// let grads = FixedGrads { dx: &mut dx, di: &mut di, df: &mut df };
    /// // The gradient of sum(y): one upstream value for every element.
    /// q.backward(x, k, i, f, true, Upstream::Same(1.0), grads).unwrap();
    /// assert_eq!(dx, [1.0, 0.0, 1.0]); // -5 is clipped: no gradient reaches x
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        &self,
        x: TensorRef<'_, T>,
        k: TensorRef<'_, T::C>,
        i: TensorRef<'_, T::C>,
        f: TensorRef<'_, T::C>,
        training: bool,
        dy: Upstream<'_, T>,
        grads: FixedGrads<'_, T>,
    ) -> Result<Screen> {
        let FixedGrads { dx, di, df } = grads;
        self.call(x, [k, i, f], training, Some(dy), None, Some((dx, [di, df])))
    }

    #[allow(clippy::type_complexity)]
    fn call<T: Element>(
        &self,
        x: TensorRef<'_, T>,
        p: [TensorRef<'_, T::C>; 3],
        training: bool,
        dy: Option<Upstream<'_, T>>,
        y: Option<&mut [T]>,
        grads: Option<(&mut [T], [&mut [T::C]; 2])>,
    ) -> Result<Screen> {
        let mut call = Call { x, p, dy, y, grads };
        if self.bit_widths != BitWidths::KbiRaw {
            return self.call_checked(training, call);
        }
        // KBI's raw `b` and `i`: the pass forms `i = rc(i)`, `f = rc(b) - rc(i)` per element and
        // returns their gradients in b's and i's buffers; autograd's through those operations
        // are `db = df` and `di = di + -df` (i's two uses), formed after any reduction, as
        // autograd forms them ([`kbi_chain`]).
        let [_, b, i] = p;
        check_len("b", b.data.len(), b.shape)?;
        check_len("i", i.data.len(), i.shape)?;
        if b.shape != i.shape {
            return Err(CoreError::Broadcast {
                from: i.shape.to_vec(),
                to: b.shape.to_vec(),
            });
        }
        // Element-wise bit widths (as many as x, more than one: their gradients are stored,
        // not summed) take the rule inside the pass, per element: the same operations on the
        // same values, without a second pass over both gradients.
        let chain = call.grads.is_some() && b.data.len() == call.x.data.len() && b.data.len() > 1;
        if chain {
            let q = FixedPoint { chain, ..*self };
            return q.call_checked(training, call);
        }
        let screen = self.call_checked(training, call.reborrow())?;
        kbi_chain(call.grads);
        Ok(screen)
    }

    /// The pass in the compute type where it holds the types, in float64 where not.
    fn call_checked<T: Element>(&self, training: bool, mut call: Call<'_, T, 2>) -> Result<Screen> {
        let p = call.p;
        let x = call.x;
        // Bit widths smaller than x are looked at before the pass (cheap); ones as large as x
        // after it, only where the pass did not find them all normal (its screen includes the
        // width), so that the per-element hot path reads them once.
        let small = p
            .iter()
            .all(|t| t.data.len().saturating_mul(4) <= x.data.len());
        let known = self.screen == Screen::InRange;
        if small && !known && wide::width(p, x.shape, self.bit_widths)? == Width::Wide {
            return self.call_wide(training, call);
        }
        let screen = entry::fixed(self, training, call.reborrow())?;
        if small || known || screen == Screen::InRange {
            return Ok(screen);
        }
        match wide::width(p, x.shape, self.bit_widths)? {
            Width::Narrow => Ok(screen),
            Width::Wide => self.call_wide(training, call),
        }
    }

    /// The pass in float64, its results rounded to `T` once: for types wider than `T::C`
    /// holds (see [`crate::wide`]).
    fn call_wide<T: Element>(&self, training: bool, mut call: Call<'_, T, 2>) -> Result<Screen> {
        // KBI's chain rule after the pass, on the gradients as stored (in `T::C`), as the
        // narrow pass rounds them.
        let q = FixedPoint {
            chain: false,
            ..self.with_screen(Screen::Unknown)
        };
        entry::fixed_in_f64(&q, training, call.reborrow())?;
        if self.chain {
            kbi_chain(call.grads);
        }
        // A wide pass vouches for nothing: a later pass over the same bit widths checks them.
        Ok(Screen::Unknown)
    }

    /// The body of [`FixedPoint::call`] for one element type.
    pub(crate) fn call_impl<T: Element>(
        &self,
        training: bool,
        call: Call<'_, T, 2>,
    ) -> Result<Screen> {
        let Call { x, p, dy, y, grads } = call;
        let seed = match self.stochastic {
            Stochastic::Seeded(s) if training => Some(s),
            _ => None,
        };
        let round = crate::kernels::fixed::round_id(self.round, seed.is_some());
        let overflow = crate::kernels::fixed::overflow_id(self.overflow);
        let (grads_x, grads_p) = match grads {
            Some((dx, [di, df])) => (Some(dx), Some([di, df])),
            None => (None, None),
        };
        let checks = self.bit_widths.checks();
        let run = Runner {
            x,
            p,
            dy,
            y,
            gx: grads_x,
            gp: grads_p.map(|[a, b]| [None, Some(a), Some(b)]),
            path: self.path,
            par: self.par,
            checks,
            known_normal: self.screen == Screen::InRange,
        };
        let (mask, seed) = (self.zero_mask && !training, seed.unwrap_or(0));
        let args = Args::new(round, seed, mask, self.bit_widths, self.chain);
        self.par
            .install(|| with_fixed_op(run, overflow, training, args))
            .map(|normal| {
                if normal {
                    Screen::InRange
                } else {
                    Screen::Unknown
                }
            })
    }
}

/// KBI's chain rule on a pass's gradients of the `i` and `f` it formed, in b's and i's
/// buffers: `db = df`, `di = di + -df` (autograd's through `i = rc(i)`, `f = rc(b) - rc(i)`).
fn kbi_chain<T: Element>(grads: Option<GradsOut<'_, T, 2>>) {
    if let Some((_, [db, di])) = grads {
        crate::simd::widest(|| {
            for (db, di) in db.iter_mut().zip(di.iter_mut()) {
                let (gi, gf) = (*db, *di);
                *db = gf;
                *di = gi + -gf;
            }
        });
    }
}

/// The minifloat quantizer of SPEC 8 with `m` mantissa bits (sign excluded), `e` exponent bits
/// and exponent offset `e0`, broadcast to x.
///
/// ```
/// use hgq_core::{minifloat, TensorRef};
/// let x = [1.3f32, 100.0];
/// let (m, e, e0) = ([2.0f32], [3.0f32], [0.0f32]);
/// let s = [1];
/// let mut y = [0.0f32; 2];
/// minifloat(TensorRef::new(&x, &[2]).unwrap(), TensorRef::new(&m, &s).unwrap(),
///           TensorRef::new(&e, &s).unwrap(), TensorRef::new(&e0, &s).unwrap(), &mut y).unwrap();
/// assert_eq!(y, [1.25, 14.0]); // 14 = (2 - 2^-2) * 2^3, the largest value
/// ```
pub fn minifloat<T: Element>(
    x: TensorRef<'_, T>,
    m: TensorRef<'_, T::C>,
    e: TensorRef<'_, T::C>,
    e0: TensorRef<'_, T::C>,
    y: &mut [T],
) -> Result<()> {
    minifloat_call(x, [m, e, e0], None, Some(y), None, Path::Simd)
}

/// [`minifloat`] on a chosen code path (the scalar path is the reference of the SIMD ones).
pub fn minifloat_with_path<T: Element>(
    x: TensorRef<'_, T>,
    m: TensorRef<'_, T::C>,
    e: TensorRef<'_, T::C>,
    e0: TensorRef<'_, T::C>,
    y: &mut [T],
    path: Path,
) -> Result<()> {
    minifloat_call(x, [m, e, e0], None, Some(y), None, path)
}

/// [`minifloat_backward`] on a chosen code path.
#[allow(clippy::too_many_arguments)]
pub fn minifloat_backward_with_path<T: Element>(
    x: TensorRef<'_, T>,
    m: TensorRef<'_, T::C>,
    e: TensorRef<'_, T::C>,
    e0: TensorRef<'_, T::C>,
    dy: &[T],
    y: &mut [T],
    grads: FloatGrads<'_, T>,
    path: Path,
) -> Result<()> {
    let FloatGrads { dx, dm, de, de0 } = grads;
    minifloat_call(
        x,
        [m, e, e0],
        Some(Upstream::Each(dy)),
        Some(y),
        Some((dx, [dm, de, de0])),
        path,
    )
}

/// Gradients of the minifloat quantizer, each in its parameter's shape.
#[derive(Debug)]
pub struct FloatGrads<'a, T: Element> {
    /// d/dx, x-shaped.
    pub dx: &'a mut [T],
    /// d/dm.
    pub dm: &'a mut [T::C],
    /// d/de.
    pub de: &'a mut [T::C],
    /// d/de0.
    pub de0: &'a mut [T::C],
}

/// The minifloat output and its surrogate gradients for upstream `dy`, in one pass.
pub fn minifloat_backward<T: Element>(
    x: TensorRef<'_, T>,
    m: TensorRef<'_, T::C>,
    e: TensorRef<'_, T::C>,
    e0: TensorRef<'_, T::C>,
    dy: &[T],
    y: &mut [T],
    grads: FloatGrads<'_, T>,
) -> Result<()> {
    let FloatGrads { dx, dm, de, de0 } = grads;
    minifloat_call(
        x,
        [m, e, e0],
        Some(Upstream::Each(dy)),
        Some(y),
        Some((dx, [dm, de, de0])),
        Path::Simd,
    )
}

#[allow(clippy::type_complexity)]
pub(crate) fn minifloat_call<T: Element>(
    x: TensorRef<'_, T>,
    p: [TensorRef<'_, T::C>; 3],
    dy: Option<Upstream<'_, T>>,
    y: Option<&mut [T]>,
    grads: Option<(&mut [T], [&mut [T::C]; 3])>,
    path: Path,
) -> Result<()> {
    let call = Call { x, p, dy, y, grads };
    entry::float(call, path)
}

/// The body of [`minifloat_call`] for one element type.
pub(crate) fn minifloat_impl<T: Element>(call: Call<'_, T, 3>, path: Path) -> Result<()> {
    let Call { x, p, dy, y, grads } = call;
    let (gx, gp) = match grads {
        Some((dx, [a, b, c])) => (Some(dx), Some([Some(a), Some(b), Some(c)])),
        None => (None, None),
    };
    Runner {
        x,
        p,
        dy,
        y,
        gx,
        gp,
        path,
        par: Par::default(),
        checks: [
            ("m", Check::Integer),
            ("e", Check::Integer),
            ("e0", Check::Integer),
        ],
        known_normal: false,
    }
    .call(FloatOp)
    .map(|_| ())
}

/// The first value, in parameter order, that breaks its parameter's rule.
fn first_bad<C: Real>(params: [(&'static str, &[C], Check); 3]) -> Result<()> {
    for (name, data, rule) in params {
        if let Some(j) = find_bad(data, rule) {
            return Err(bad_param(name, rule, data[j].to_f64()));
        }
    }
    Ok(())
}

/// Checks minifloat bit widths as the minifloat pass does (`m`, `e`, `e0`: the values it reads,
/// finite integers), with its error.
pub fn check_minifloat_bit_widths<C: Real>(m: &[C], e: &[C], e0: &[C]) -> Result<()> {
    first_bad([
        ("m", m, Check::Integer),
        ("e", e, Check::Integer),
        ("e0", e0, Check::Integer),
    ])
}

/// The error for a parameter value that breaks its rule.
fn bad_param(name: &'static str, rule: Check, value: f64) -> CoreError {
    match rule {
        Check::ZeroOne => CoreError::InvalidK(value),
        Check::Finite => CoreError::InvalidParameter {
            name,
            value,
            why: "bit widths must be finite",
        },
        _ => CoreError::InvalidParameter {
            name,
            value,
            why: if name.starts_with('e') || name == "m" {
                "minifloat bit widths must be finite integers"
            } else {
                "bit widths must be finite integers"
            },
        },
    }
}

/// Validates shapes, broadcasts the three parameters to one bit-width shape, runs an op and
/// reduces the parameter gradients back to each parameter's own shape.
struct Runner<'a, 'b, T: Element> {
    x: TensorRef<'a, T>,
    p: [TensorRef<'a, T::C>; 3],
    dy: Option<Upstream<'a, T>>,
    y: Option<&'b mut [T]>,
    gx: Option<&'b mut [T]>,
    gp: Option<[Option<&'b mut [T::C]>; 3]>,
    path: Path,
    par: Par,
    /// The parameters' names and rules.
    checks: [(&'static str, Check); 3],
    /// Per-element parameters are known to be normal (`Screen::InRange`).
    known_normal: bool,
}

/// A [`Runner`]'s result: whether the per-element parameters were all normal.
type Normal = bool;

impl<T: Element> WithFixedOp for Runner<'_, '_, T> {
    type Output = Result<Normal>;
    fn call<const R: u8, const O: u8, const TRAIN: bool>(
        self,
        op: FixedOp<R, O, TRAIN>,
    ) -> Result<Normal> {
        self.run(op)
    }
}

impl<T: Element> Runner<'_, '_, T> {
    fn call<Op: ElemOp<T::C>>(self, op: Op) -> Result<Normal> {
        self.run(op)
    }

    fn run<Op: ElemOp<T::C>>(self, op: Op) -> Result<Normal> {
        let Runner {
            x,
            p,
            dy,
            y,
            gx,
            gp,
            path,
            par,
            checks,
            known_normal,
        } = self;
        let xs = x.shape;
        check_len("x", x.data.len(), xs)?;
        match &y {
            Some(y) => check_len("y", y.len(), xs)?,
            None if dy.is_none() => {
                return Err(CoreError::Unsupported("a forward pass needs a y buffer"));
            }
            None => {}
        }
        let mut shapes = Vec::with_capacity(3);
        for t in &p {
            check_len("bit width", t.data.len(), t.shape)?;
            shapes.push(align(t.shape, xs)?);
        }
        // The common bit-width shape: full wherever any parameter is.
        let common: Vec<usize> = (0..xs.len())
            .map(|d| shapes.iter().map(|s| s[d]).max().unwrap_or(1))
            .collect();
        let plan = Plan::new(xs, &common);
        let grad = dy.is_some();
        // A one-value parameter beside x-sized ones (a uniform k, say) is read from a
        // segment's worth of copies instead of an x-sized copy: one stream less through
        // memory. Not where it has a gradient to reduce, nor where the op derives broadcast
        // parameters before the pass (then nothing is x-sized).
        let wants_grad = |q: usize| grad && gp.as_ref().is_some_and(|g| g[q].is_some());
        let same: [bool; 3] = std::array::from_fn(|q| {
            p[q].data.len() == 1
                && shapes[q] != common
                && !plan.derives_upfront(Op::PRECOMPUTE)
                && !(wants_grad(q) && Op::HAS_GRAD[q])
        });
        let owned: Vec<Option<Vec<T::C>>> = (0..3)
            .map(|q| {
                if same[q] {
                    Some(plan.splat(p[q].data[0]))
                } else {
                    (shapes[q] != common).then(|| broadcast(p[q].data, &shapes[q], &common))
                }
            })
            .collect();
        let pv: [&[T::C]; 3] = std::array::from_fn(|q| owned[q].as_deref().unwrap_or(p[q].data));
        if let Some(Upstream::Each(d)) = dy {
            check_len("dy", d.len(), xs)?;
        }
        let gx = match gx {
            Some(g) => {
                check_len("dx", g.len(), xs)?;
                Some(g)
            }
            None => None,
        };
        if grad && gx.is_none() {
            return Err(CoreError::Unsupported(
                "an upstream gradient needs a dx buffer",
            ));
        }
        // Parameter gradients whose shape is the common one are written in place; the others
        // go through a buffer of the common shape and are summed down afterwards.
        let mut bufs: [Vec<T::C>; 3] = Default::default();
        let mut later: [Option<&mut [T::C]>; 3] = [None, None, None];
        let mut pass: Vec<&mut [T::C]> = Vec::with_capacity(3);
        let dsts = if grad {
            gp.unwrap_or_default()
        } else {
            Default::default()
        };
        for (q, (d, b)) in dsts.into_iter().zip(bufs.iter_mut()).enumerate() {
            match d {
                Some(d) => {
                    check_len("bit-width gradient", d.len(), p[q].shape)?;
                    if same[q] {
                        // No gradient (`Op::HAS_GRAD`), so none to reduce.
                        d.fill(T::C::ZERO);
                        pass.push(&mut []);
                    } else if shapes[q] == common {
                        pass.push(d);
                    } else {
                        *b = vec![T::C::ZERO; plan.bw_len];
                        later[q] = Some(d);
                        pass.push(b.as_mut_slice());
                    }
                }
                None => pass.push(&mut []),
            }
        }
        let gp = if grad {
            let mut it = pass.into_iter();
            Some(std::array::from_fn(|_| it.next().expect("three")))
        } else {
            None
        };
        // Small (broadcast) parameters are checked here; parameters as large as x are checked
        // inside the pass, segment by segment, so that they are read from memory once.
        let upfront = plan.bw_len.saturating_mul(4) <= plan.len || plan.len == 0;
        let check_now = |q: usize| -> Result<()> {
            let (name, rule) = checks[q];
            match find_bad(p[q].data, rule) {
                None => Ok(()),
                Some(j) => Err(bad_param(name, rule, p[q].data[j].to_f64())),
            }
        };
        if upfront {
            for q in 0..3 {
                check_now(q)?;
            }
        }
        let kinds = if upfront {
            [Check::Any; 3]
        } else {
            checks.map(|c| c.1)
        };
        let verdict = pass::run(
            op,
            &plan,
            Buffers {
                x: x.data,
                p: pv,
                same,
                dy,
                y,
                gx,
                gp,
            },
            path,
            par,
            kinds,
            known_normal,
        );
        if !verdict.passed {
            // Report the first bad value in parameter order, whatever the thread split.
            for q in 0..3 {
                check_now(q)?;
            }
        }
        for (q, dst) in later.iter_mut().enumerate() {
            if let Some(dst) = dst {
                reduce_sum(&bufs[q], &common, dst, &shapes[q]);
            }
        }
        // An empty x looks at no bit width (beyond the up-front checks): nothing to vouch for.
        Ok(verdict.normal && plan.len > 0)
    }
}
