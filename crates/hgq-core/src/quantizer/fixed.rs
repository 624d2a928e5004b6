//! The fixed-point layer quantizers KBI and KIF (SPEC 4), written once over a [`Backend`].
//!
//! Where each piece of the logic stands:
//! - the pass a call runs (mode dispatch): [`FixedQuantizer::forward`];
//! - WRAP integer-bit tracking and `i_decay_speed`, and tracing: `FixedQuantizer::track` (the
//!   new state) and `commit` (written after the pass succeeded);
//! - `props`: [`FixedQuantizer::props`];
//! - noise and seeds: `FixedQuantizer::noise` (the seed of a call from the quantizer's seed and
//!   its call counter);
//! - the KBI chain rule (`f = rc(b) - rc(i)`): [`BitWidths::KbiRaw`] in the fused pass;
//! - constraints and regularizers: [`super::Quantizer`], over every quantizer's variables.
use super::backend::{Arith, Backend, BitWidthArith, Operand};
use super::constraint::{Constraint, Regularizer};
use super::{
    Layout, Props, Store, VarDtype, VarInit, VarName, Variable, check_input, check_k, check_real,
    rc1,
};
use crate::error::{CoreError, Result};
use crate::mapper::Axes;
use crate::minimal_i;
use crate::modes::{CallMode, OverflowMode, RoundMode, check_modes};
use crate::real::Real;
use crate::stateless::{BitWidths, FixedPoint, Stochastic};

/// What KBI and KIF share: modes, WRAP tracking, mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedSpec {
    /// Rounding mode.
    pub round: RoundMode,
    /// Overflow mode.
    pub overflow: OverflowMode,
    /// How fast the integer bits of a WRAP quantizer decay per training step (`inf`: they
    /// follow each batch; the reference's default for weights). Not NaN.
    pub i_decay_speed: f64,
    /// Whether the quantizer holds weights (changes the inference of WRAP quantizers).
    pub is_weight: bool,
    /// Which axes share a bit width.
    pub axes: Axes,
    /// S_ modes in training: seeded stochastic rounding, or the reference's (none).
    pub stochastic: Stochastic,
    /// Whether the layer trains (and, for WRAP, tracks its integer bits).
    pub trainable: bool,
}

impl FixedSpec {
    /// The reference's defaults: `i_decay_speed = inf`, not a weight, `homogeneous_axis=()`
    /// (every element its own bit width, so every input dimension must be known; use
    /// `Axes::Homogeneous(vec![0])` for inputs with a batch axis), stochastic rounding seeded
    /// with 0.
    pub fn new(round: RoundMode, overflow: OverflowMode) -> Self {
        FixedSpec {
            round,
            overflow,
            i_decay_speed: f64::INFINITY,
            is_weight: false,
            axes: Axes::Homogeneous(vec![]),
            stochastic: Stochastic::Seeded(0),
            trainable: true,
        }
    }

    fn validate(&self) -> Result<()> {
        check_modes(self.round, self.overflow)?;
        if self.i_decay_speed.is_nan() {
            return Err(CoreError::InvalidParameter {
                name: "i_decay_speed",
                value: self.i_decay_speed,
                why: "must be a number (inf: the integer bits follow each batch)",
            });
        }
        Ok(())
    }
}

/// `FixedPointQuantizerKBI(k0, b0, i0, round_mode, overflow_mode, bc, ic, br, ir, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct KbiSpec {
    /// Keep-negative (0 or 1).
    pub k0: f64,
    /// Initial bits (sign excluded), >= 0.
    pub b0: f64,
    /// Initial integer bits.
    pub i0: f64,
    /// Constraint of b (reference default `MinMax(0, 12)`).
    pub bc: Option<Constraint>,
    /// Constraint of i.
    pub ic: Option<Constraint>,
    /// Regularizer of b.
    pub br: Option<Regularizer>,
    /// Regularizer of i.
    pub ir: Option<Regularizer>,
    /// Modes and the rest.
    pub fixed: FixedSpec,
}

impl KbiSpec {
    /// Sets the axes that share a bit width.
    pub fn with_axes(mut self, axes: Axes) -> Self {
        self.fixed.axes = axes;
        self
    }

    /// A spec with the reference's defaults for the rest.
    pub fn new(k0: f64, b0: f64, i0: f64, round: RoundMode, overflow: OverflowMode) -> Self {
        KbiSpec {
            k0,
            b0,
            i0,
            bc: Some(Constraint::MinMax {
                min: 0.0,
                max: 12.0,
            }),
            ic: None,
            br: None,
            ir: None,
            fixed: FixedSpec::new(round, overflow),
        }
    }
}

/// `FixedPointQuantizerKIF(k0, i0, f0, round_mode, overflow_mode, ic, fc, ir, fr, ...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct KifSpec {
    /// Keep-negative (0 or 1).
    pub k0: f64,
    /// Initial integer bits.
    pub i0: f64,
    /// Initial fractional bits (`i0 + f0 >= 0`).
    pub f0: f64,
    /// Constraint of i.
    pub ic: Option<Constraint>,
    /// Constraint of f.
    pub fc: Option<Constraint>,
    /// Regularizer of i.
    pub ir: Option<Regularizer>,
    /// Regularizer of f.
    pub fr: Option<Regularizer>,
    /// Modes and the rest.
    pub fixed: FixedSpec,
}

impl KifSpec {
    /// Sets the axes that share a bit width.
    ///
    /// ```
    /// use hgq_core::{mapper::Axes, quantizer::KifSpec, OverflowMode, RoundMode};
    /// let spec = KifSpec::new(1.0, 2.0, 4.0, RoundMode::Rnd, OverflowMode::Sat).with_axes(Axes::Homogeneous(vec![0]));
    /// assert_eq!(spec.fixed.axes, Axes::Homogeneous(vec![0]));
    /// ```
    pub fn with_axes(mut self, axes: Axes) -> Self {
        self.fixed.axes = axes;
        self
    }

    /// A spec with the reference's defaults for the rest.
    pub fn new(k0: f64, i0: f64, f0: f64, round: RoundMode, overflow: OverflowMode) -> Self {
        KifSpec {
            k0,
            i0,
            f0,
            ic: None,
            fc: None,
            ir: None,
            fr: None,
            fixed: FixedSpec::new(round, overflow),
        }
    }
}

/// Which parametrization a [`FixedQuantizer`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `k, b, i`: `f = b - i`.
    Kbi,
    /// `k, i, f`: `b = relu(i + f)`.
    Kif,
}

/// The spec of a [`FixedQuantizer`]: KBI or KIF.
#[derive(Debug, Clone, PartialEq)]
pub enum FixedKind {
    /// KBI.
    Kbi(KbiSpec),
    /// KIF.
    Kif(KifSpec),
}

impl FixedKind {
    /// The modes and the rest.
    pub fn fixed(&self) -> &FixedSpec {
        match self {
            FixedKind::Kbi(s) => &s.fixed,
            FixedKind::Kif(s) => &s.fixed,
        }
    }

    /// KBI or KIF.
    pub fn param(&self) -> Param {
        match self {
            FixedKind::Kbi(_) => Param::Kbi,
            FixedKind::Kif(_) => Param::Kif,
        }
    }
}

/// A fixed-point layer quantizer (KBI or KIF), its variables in a backend's storage `V`.
///
/// Variables, in order: `k` (not trainable), then `b`, `i` (KBI) or `i`, `f` (KIF), then
/// `i_decay_speed` (WRAP) and `seed_generator_state` (S_ modes). Under WRAP `i` is not
/// trained: the data sets it.
#[derive(Debug)]
pub struct FixedQuantizer<V> {
    kind: FixedKind,
    layout: Layout,
    vars: Vec<Variable<V>>,
    /// This process's maxima of a training call's tracking under [`crate::sync::defer`],
    /// until [`FixedQuantizer::finish_tracking`] makes them the integer bits.
    pending: Option<Vec<f64>>,
}

/// What a pass reads: `q`, its operands, whether it runs as in training.
struct Pass<'a, V, W> {
    q: FixedPoint,
    k: Operand<'a, V, W>,
    p: [Operand<'a, V, W>; 2],
    training: bool,
}

/// State a call changes, written only after everything else succeeded.
enum Commit<W> {
    /// The new integer bits and, tracing, the new `k`.
    Bits { i: W, k: Option<W> },
    /// This process's maxima, the integer bits left to [`FixedQuantizer::finish_tracking`].
    Pending(Vec<f64>),
}

/// WRAP tracking's update of the integer bits of one bit width (SPEC 4, hgq2's tracking in
/// `call` and in `trace_minmax`), from the absolute maximum `a` of the data it covers, the raw
/// `i`, the other raw bit width `p` (KBI's `b`, KIF's `f`) and the decay per step.
///
/// ```
/// use hgq_core::quantizer::{Param, TrackRule};
/// let rule = TrackRule { param: Param::Kif, symmetric: false, training: true, constraint: None };
/// // |x| up to 3 with 2 fractional bits needs 2 integer bits; the old 5 decay to 4.
/// assert_eq!(rule.apply(3.0f32, 5.0, 2.0, 1.0), (4.0, 4.0));
/// // Data that is not finite leaves the bits as they were.
/// assert_eq!(rule.apply(f32::INFINITY, 5.0, 2.0, 1.0), (5.0, 5.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackRule {
    /// KBI (the integer bits the data needs given `b`) or KIF (given `f`).
    pub param: Param,
    /// A symmetric overflow mode (the sign takes no value of its own).
    pub symmetric: bool,
    /// Training (the old bits decay, never below what the data needs) or tracing (never below
    /// the old bits rounded).
    pub training: bool,
    /// `i`'s constraint, where the reference applies it.
    pub constraint: Option<Constraint>,
}

impl TrackRule {
    /// The new integer bits and the integer bits a pass reads (`rc` of the new ones); where
    /// `a` or the new bits are not finite (data or bit widths that a pass refuses), the raw
    /// `i` as it was.
    #[inline]
    pub fn apply<C: Real>(&self, a: C, i: C, p: C, decay: C) -> (C, C) {
        match (self.param, self.training) {
            (Param::Kbi, true) => self.apply_as::<C, true, true>(a, i, p, decay),
            (Param::Kbi, false) => self.apply_as::<C, true, false>(a, i, p, decay),
            (Param::Kif, true) => self.apply_as::<C, false, true>(a, i, p, decay),
            (Param::Kif, false) => self.apply_as::<C, false, false>(a, i, p, decay),
        }
    }

    /// [`TrackRule::apply`] with the parametrization (`KBI`) and the mode (`TRAIN`) fixed by
    /// the caller, for loops over many bit widths (one per weight) that should not choose per
    /// element; `self.param` and `self.training` are not read.
    #[inline(always)]
    pub fn apply_as<C: Real, const KBI: bool, const TRAIN: bool>(
        &self,
        a: C,
        i: C,
        p: C,
        decay: C,
    ) -> (C, C) {
        if !a.is_finite() {
            return (i, rc1(i));
        }
        let con = |v: C| self.constraint.map_or(v, |c| c.one(v));
        let sym = self.symmetric;
        let v = match (KBI, TRAIN) {
            (true, true) => con((i - decay).maximum(minimal_i::xb(a, rc1(p), sym))),
            (true, false) => con(rc1(i).maximum(minimal_i::xb(a, rc1(p), sym))),
            // The reference applies no constraint in training.
            (false, true) => (i - decay).maximum(minimal_i::xf(a, rc1(p), sym)),
            (false, false) => rc1(i).maximum(con(minimal_i::xf(a, rc1(p), sym))),
        };
        if !v.is_finite() {
            return (i, rc1(i));
        }
        (v, rc1(v))
    }

    /// [`TrackRule::apply`] over equally long `absmax`, `i` and `p` (one element per bit
    /// width), with `decay` one value or as many: the new integer bits and those a pass reads,
    /// in one loop whose choices (parametrization, mode) are made once. The host side of
    /// [`Backend::track_bw`](super::Backend::track_bw) for every backend whose values are on
    /// the host.
    ///
    /// ```
    /// use hgq_core::quantizer::{Param, TrackRule};
    /// let rule = TrackRule { param: Param::Kif, symmetric: false, training: true, constraint: None };
    /// let (i, used) = rule.apply_all(&[3.0f32, 0.5], &[5.0, 5.0], &[2.0, 2.0], &[1.0])?;
    /// assert_eq!((i, used), (vec![4.0, 4.0], vec![4.0, 4.0]));
    /// # Ok::<(), hgq_core::CoreError>(())
    /// ```
    pub fn apply_all<C: Real>(
        &self,
        absmax: &[C],
        i: &[C],
        p: &[C],
        decay: &[C],
    ) -> Result<(Vec<C>, Vec<C>)> {
        let n = i.len();
        for (what, len) in [("absmax", absmax.len()), ("p", p.len())] {
            if len != n {
                return Err(CoreError::Length {
                    what,
                    len,
                    shape: vec![n],
                    expected: n,
                });
            }
        }
        if decay.len() != 1 && decay.len() != n {
            return Err(CoreError::Broadcast {
                from: vec![decay.len()],
                to: vec![n],
            });
        }
        let (a, p) = (absmax, p);
        Ok(match (self.param, self.training) {
            (Param::Kbi, true) => self.apply_loop::<C, true, true>(a, i, p, decay),
            (Param::Kbi, false) => self.apply_loop::<C, true, false>(a, i, p, decay),
            (Param::Kif, true) => self.apply_loop::<C, false, true>(a, i, p, decay),
            (Param::Kif, false) => self.apply_loop::<C, false, false>(a, i, p, decay),
        })
    }

    /// The loop of [`TrackRule::apply_all`], the rule inlined in it.
    fn apply_loop<C: Real, const KBI: bool, const TRAIN: bool>(
        &self,
        a: &[C],
        i: &[C],
        p: &[C],
        decay: &[C],
    ) -> (Vec<C>, Vec<C>) {
        let n = i.len();
        // Written whole below (zeroing costs less than a capacity check per push).
        let (mut new_i, mut used) = (vec![C::ZERO; n], vec![C::ZERO; n]);
        let out = new_i.iter_mut().zip(used.iter_mut());
        let ins = a.iter().zip(i).zip(p);
        match decay {
            [d] => out.zip(ins).for_each(|((v, u), ((&a, &i), &p))| {
                (*v, *u) = self.apply_as::<C, KBI, TRAIN>(a, i, p, *d);
            }),
            _ => out
                .zip(ins.zip(decay))
                .for_each(|((v, u), (((&a, &i), &p), &d))| {
                    (*v, *u) = self.apply_as::<C, KBI, TRAIN>(a, i, p, d);
                }),
        }
        (new_i, used)
    }
}

impl<V> FixedQuantizer<V> {
    /// Validates `kind` (modes, k0 in {0, 1}, initial bit widths, `i_decay_speed`, constraint
    /// and regularizer values) and creates the variables for inputs of `input_shape` (`None`:
    /// any size, e.g. the batch) in `store`.
    pub fn new<S: Store<Var = V>>(
        store: &mut S,
        kind: FixedKind,
        input_shape: &[Option<usize>],
    ) -> std::result::Result<Self, S::Error> {
        let fixed = kind.fixed().clone();
        fixed.validate()?;
        let (k0, p1, p2) = match &kind {
            FixedKind::Kbi(s) => {
                check_real("b0", s.b0, |v| v >= 0.0, "must be a number >= 0")?;
                check_real("i0", s.i0, |v| !v.is_nan(), "must be a number")?;
                (
                    s.k0,
                    (VarName::B, s.b0, s.bc, s.br),
                    (VarName::I, s.i0, s.ic, s.ir),
                )
            }
            FixedKind::Kif(s) => {
                let b0 = s.i0 + s.f0;
                check_real("i0+f0", b0, |v| v >= 0.0, "must be a number >= 0")?;
                (
                    s.k0,
                    (VarName::I, s.i0, s.ic, s.ir),
                    (VarName::F, s.f0, s.fc, s.fr),
                )
            }
        };
        check_k(k0)?;
        let layout = Layout::new(&fixed.axes, input_shape)?;
        let wrap = fixed.overflow == OverflowMode::Wrap;
        let shape = layout.bw_shape.clone();
        let mut inits = vec![VarInit::new(VarName::K, &shape, k0, false).dtype(VarDtype::U8)];
        for (name, v0, c, r) in [p1, p2] {
            super::check_constraint(name, c)?;
            super::check_regularizer(name, r)?;
            // i is not trained under WRAP: the data sets it (tracking).
            let trainable = fixed.trainable && !(wrap && name == VarName::I);
            inits.push(VarInit::new(name, &shape, v0, trainable).rules(c, r));
        }
        if wrap {
            let d = fixed.i_decay_speed;
            inits.push(VarInit::new(VarName::IDecaySpeed, &[], d, false));
        }
        if fixed.round.is_stochastic() {
            // The reference keeps a Keras SeedGenerator here: [seed, calls].
            let seed = match fixed.stochastic {
                Stochastic::Seeded(s) => s as f64,
                Stochastic::Reference => 0.0,
            };
            let init = VarInit::new(VarName::SeedState, &[2], 0.0, false).dtype(VarDtype::I32);
            inits.push(init.values(vec![seed, 0.0]));
        }
        let vars = super::make_vars(store, inits)?;
        Ok(FixedQuantizer {
            kind,
            layout,
            vars,
            pending: None,
        })
    }

    /// The spec.
    pub fn kind(&self) -> &FixedKind {
        &self.kind
    }

    /// KBI or KIF.
    pub fn param(&self) -> Param {
        self.kind.param()
    }

    /// The modes and the rest.
    pub fn spec(&self) -> &FixedSpec {
        self.kind.fixed()
    }

    /// The input shape it was built for and the bit-width shape.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The variables (see the type's documentation for the order).
    pub fn variables(&self) -> &[Variable<V>] {
        &self.vars
    }

    /// The variables, to set values (loading weights).
    pub fn variables_mut(&mut self) -> &mut [Variable<V>] {
        &mut self.vars
    }

    /// A variable by name.
    pub fn variable(&self, name: VarName) -> Option<&Variable<V>> {
        self.vars.iter().find(|v| v.name == name)
    }

    fn var(&self, name: VarName) -> &Variable<V> {
        // Every name asked for below is created by `new` for this kind and modes.
        match self.vars.iter().find(|v| v.name == name) {
            Some(v) => v,
            None => unreachable!("variable {name:?} is created by FixedQuantizer::new"),
        }
    }

    fn var_mut(&mut self, name: VarName) -> &mut Variable<V> {
        match self.vars.iter_mut().find(|v| v.name == name) {
            Some(v) => v,
            None => unreachable!("variable {name:?} is created by FixedQuantizer::new"),
        }
    }

    fn wraps(&self) -> bool {
        self.spec().overflow == OverflowMode::Wrap
    }

    /// The first raw variable (KBI: `b`; KIF: `i`) and the second (KBI: `i`; KIF: `f`).
    fn raw(&self) -> [&Variable<V>; 2] {
        match self.param() {
            Param::Kbi => [self.var(VarName::B), self.var(VarName::I)],
            Param::Kif => [self.var(VarName::I), self.var(VarName::F)],
        }
    }

    /// How the fused pass reads the raw variables: KBI's `b`, `i` (it forms `i = rc(i)`,
    /// `f = rc(b) - rc(i)` and their gradients itself) or KIF's `i`, `f` (rounded half to
    /// even, straight through).
    fn raw_form(&self) -> BitWidths {
        match self.param() {
            Param::Kbi => BitWidths::KbiRaw,
            Param::Kif => BitWidths::RoundHalfEven,
        }
    }

    /// The noise of a call: S_ modes in training with seeded stochastic rounding, keyed by the
    /// seed and the call counter kept in `seed_generator_state` (so a saved and reloaded
    /// quantizer continues the same sequence).
    fn noise<B: Backend<Var = V>>(
        &self,
        b: &B,
        mode: CallMode,
    ) -> std::result::Result<Stochastic, B::Error> {
        let state = self.vars.iter().find(|v| v.name == VarName::SeedState);
        match (self.spec().stochastic, mode, state) {
            (Stochastic::Seeded(s), CallMode::Training, Some(v)) => {
                let calls = b.read(&v.value)?.get(1).map_or(0.0, |c| c.to_f64());
                Ok(Stochastic::Seeded(crate::ops::uniform_seed(
                    s,
                    calls as u64,
                )))
            }
            _ => Ok(Stochastic::Reference),
        }
    }

    /// Quantizes `x` (its shape as built, any size on `None` axes) in `mode`. Training and
    /// tracing of a trainable WRAP quantizer update the integer bits (and, tracing, `k`) from
    /// the data; a training call of a seeded S_ mode advances the call counter. On an error
    /// nothing changes.
    pub fn forward<B: Backend<Var = V>>(
        &mut self,
        b: &B,
        x: &B::Tensor,
        mode: CallMode,
    ) -> std::result::Result<B::Tensor, B::Error> {
        let shape = b.shape(x)?;
        check_input(&self.layout.input_shape, &shape)?;
        let spec = self.spec().clone();
        let noise = self.noise(b, mode)?;
        let q = FixedPoint::new(spec.round, spec.overflow)?.with_stochastic(noise);
        // Rounding alone: WRAP in training, where it does not wrap.
        let round_only = FixedPoint::new(spec.round, OverflowMode::Wrap)?.with_stochastic(noise);
        let [p1, p2] = self.raw();
        let k = Operand::Var(self.var(VarName::K));
        let weight_inference = match self.param() {
            Param::Kbi => spec.is_weight && spec.round.deterministic() == RoundMode::Rnd,
            Param::Kif => spec.is_weight,
        };
        let tracks = self.wraps() && spec.trainable;
        let empty = shape.contains(&0);
        let (y, commit) = match mode {
            CallMode::Training | CallMode::Tracing if tracks && !empty => self.track(b, x, mode)?,
            CallMode::Inference if tracks && weight_inference => {
                let pass = Pass {
                    q: round_only.with_bit_widths(self.raw_form()),
                    k,
                    p: [Operand::Var(p1), Operand::Var(p2)],
                    training: true,
                };
                (run(b, x, pass)?, None)
            }
            _ => {
                let pass = Pass {
                    q: q.with_bit_widths(self.raw_form()).with_zero_mask(true),
                    k,
                    p: [Operand::Var(p1), Operand::Var(p2)],
                    training: mode == CallMode::Training,
                };
                (run(b, x, pass)?, None)
            }
        };
        if let Some(c) = commit {
            self.commit(b, c)?;
        }
        if let (CallMode::Training, Stochastic::Seeded(_)) = (mode, spec.stochastic)
            && let Some(v) = self.vars.iter_mut().find(|v| v.name == VarName::SeedState)
        {
            let mut s = b.read(&v.value)?;
            if let Some(c) = s.get_mut(1) {
                *c = *c + B::C::ONE;
            }
            b.write(&mut v.value, &s)?;
        }
        Ok(y)
    }

    /// Training and tracing of a trainable WRAP quantizer: the rounded input, and the integer
    /// bits (and, tracing, `k`) the data asks for. Everything it reads and forms stays in the
    /// backend's bit-width values (a device backend reads nothing back for it).
    #[allow(clippy::type_complexity)]
    fn track<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
        mode: CallMode,
    ) -> std::result::Result<(B::Tensor, Option<Commit<B::Bw>>), B::Error> {
        // Non-finite inputs would poison the integer bits for good.
        let not_finite = CoreError::InvalidParameter {
            name: "x",
            value: f64::NAN,
            why: "a WRAP quantizer tracking its integer bits needs finite inputs",
        };
        b.require_finite(x, not_finite)?;
        let a = Arith(b);
        let spec = self.spec();
        let train = mode == CallMode::Training;
        let round_only =
            FixedPoint::new(spec.round, OverflowMode::Wrap)?.with_stochastic(self.noise(b, mode)?);
        let rule = self.track_rule(mode);
        let i_raw = b.snapshot(&self.var(VarName::I).value)?;
        let decay = self.decay(b)?;
        let bw = self.layout.bw_shape.as_slice();
        let k = Operand::Var(self.var(VarName::K));
        let k_var = self.var(VarName::K);
        match self.param() {
            Param::Kbi => {
                let bvar = self.var(VarName::B);
                let b_raw = b.snapshot(&bvar.value)?;
                let absmax = self.absmax_bw(b, x)?;
                let (new_i, i_used) = b.track_bw(rule, &absmax, &i_raw, &b_raw, &decay)?;
                let y = if train {
                    // f = rc(b) - i_used: the pass forms it from raw b (its gradient reaches b).
                    let pass = Pass {
                        q: round_only.with_bit_widths(BitWidths::KbiRaw),
                        k,
                        p: [Operand::Var(bvar), Operand::Bw(&i_used, bw)],
                        training: true,
                    };
                    run(b, x, pass)?
                } else {
                    // Tracing: f = b - i_new (unrounded), as the reference.
                    let f = a.sub(&a.round(&b_raw)?, &new_i)?;
                    let pass = Pass {
                        q: round_only,
                        k,
                        p: [Operand::Bw(&i_used, bw), Operand::Bw(&f, bw)],
                        training: true,
                    };
                    run(b, x, pass)?
                };
                let k_new = if train {
                    None
                } else {
                    // k := 1 where the traced output has a negative value and b > 0.
                    let neg = self.any_k_bw(b, &y)?;
                    let signed = a.mul(&neg, &a.positive(&a.round(&b_raw)?)?)?;
                    Some(a.maximum(&b.snapshot(&k_var.value)?, &signed)?)
                };
                Ok((y, Some(Commit::Bits { i: new_i, k: k_new })))
            }
            Param::Kif => {
                let fvar = self.var(VarName::F);
                // The raw i as it is now (the variable changes afterwards); the pass rounds it.
                let pass = Pass {
                    q: round_only.with_bit_widths(BitWidths::RoundHalfEven),
                    k,
                    p: [Operand::Bw(&i_raw, bw), Operand::Var(fvar)],
                    training: true,
                };
                let y = run(b, x, pass)?;
                if train && crate::sync::deferring() {
                    // The output does not depend on the bits the processes agree on: this
                    // process's maxima wait for the others' (`sync::defer`).
                    let local = b.absmax(&y, &self.layout.homogeneous)?;
                    let m = local.into_iter().map(Real::to_f64).collect();
                    return Ok((y, Some(Commit::Pending(m))));
                }
                // The integer bits of the rounded input (as the reference).
                let absmax = self.absmax_bw(b, &y)?;
                let f_raw = b.snapshot(&fvar.value)?;
                let (new_i, _) = b.track_bw(rule, &absmax, &i_raw, &f_raw, &decay)?;
                let k_new = if train {
                    None
                } else {
                    let neg = self.any_k_bw(b, &y)?;
                    Some(a.maximum(&b.snapshot(&k_var.value)?, &neg)?)
                };
                Ok((y, Some(Commit::Bits { i: new_i, k: k_new })))
            }
        }
    }

    /// How tracking in `mode` updates the integer bits.
    fn track_rule(&self, mode: CallMode) -> TrackRule {
        TrackRule {
            param: self.param(),
            symmetric: self.spec().overflow.is_symmetric(),
            training: mode == CallMode::Training,
            constraint: self.var(VarName::I).constraint,
        }
    }

    /// The integer bits' decay per step (WRAP's `i_decay_speed`; none: infinite).
    fn decay<B: Backend<Var = V>>(&self, b: &B) -> std::result::Result<B::Bw, B::Error> {
        match self.vars.iter().find(|v| v.name == VarName::IDecaySpeed) {
            Some(d) => b.snapshot(&d.value),
            None => b.bw_const(f64::INFINITY, &[1]),
        }
    }

    /// The maxima of the data that a training call under [`crate::sync::defer`] saw on this
    /// process (one per bit width, row-major), whose reduction over the processes
    /// [`Self::finish_tracking`] waits for; `None` when no call left any.
    pub fn pending_maxima(&self) -> Option<&[f64]> {
        self.pending.as_deref()
    }

    /// Completes the tracking of a training call made under [`crate::sync::defer`]: `maxima`,
    /// its [`Self::pending_maxima`] reduced over the processes, become the integer bits as the
    /// call would have set them had it reduced them itself (nothing else it read has changed
    /// since: no call has run in between). With no pending maxima, or another number of them,
    /// an error, and nothing changes.
    pub fn finish_tracking<B: Backend<Var = V>>(
        &mut self,
        b: &B,
        maxima: &[f64],
    ) -> std::result::Result<(), B::Error> {
        let Some(pending) = &self.pending else {
            return Err(CoreError::Unsupported(
                "finish_tracking: no training call left pending maxima (sync::defer)",
            )
            .into());
        };
        let shape = self.layout.bw_shape.clone();
        if maxima.len() != pending.len() {
            return Err(CoreError::Length {
                what: "reduced tracking maxima",
                len: maxima.len(),
                expected: pending.len(),
                shape,
            }
            .into());
        }
        let values: Vec<B::C> = maxima.iter().map(|&v| B::C::from_f64(v)).collect();
        let absmax = b.bw_from_host(&values, &shape)?;
        let i_raw = b.snapshot(&self.var(VarName::I).value)?;
        let f_raw = b.snapshot(&self.var(VarName::F).value)?;
        let decay = self.decay(b)?;
        let rule = self.track_rule(CallMode::Training);
        let (new_i, _) = b.track_bw(rule, &absmax, &i_raw, &f_raw, &decay)?;
        self.commit(b, Commit::Bits { i: new_i, k: None })
    }

    /// [`FixedQuantizer::absmax`] as bit-width values, over the data-parallel processes as it
    /// (where the backend's values live, if it can).
    fn absmax_bw<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
    ) -> std::result::Result<B::Bw, B::Error> {
        check_input(&self.layout.input_shape, &b.shape(x)?)?;
        let m = b.absmax_bw(x, &self.layout.homogeneous)?;
        b.max_over_processes(m, &self.layout.bw_shape)
    }

    /// [`FixedQuantizer::any_k`] as bit-width values (1 or 0), over the processes as it.
    fn any_k_bw<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
    ) -> std::result::Result<B::Bw, B::Error> {
        check_input(&self.layout.input_shape, &b.shape(x)?)?;
        let m = b.any_negative_bw(x, &self.layout.homogeneous)?;
        b.max_over_processes(m, &self.layout.bw_shape)
    }

    /// hgq2's `get_minimal_i`: the integer bits `x` needs with the current `b` (KBI) or `f`
    /// (KIF), one value per bit width (the largest over the elements that share it).
    pub fn minimal_i<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
    ) -> std::result::Result<Vec<B::C>, B::Error> {
        let sym = self.spec().overflow.is_symmetric();
        let absmax = self.absmax(b, x)?;
        Ok(match self.param() {
            Param::Kbi => {
                let bu = b.read(&self.var(VarName::B).value)?;
                absmax
                    .iter()
                    .zip(bu)
                    .map(|(&a, bv)| minimal_i::xb(a, rc1(bv), sym))
                    .collect()
            }
            Param::Kif => {
                let fu = b.read(&self.var(VarName::F).value)?;
                absmax
                    .iter()
                    .zip(fu)
                    .map(|(&a, fv)| minimal_i::xf(a, rc1(fv), sym))
                    .collect()
            }
        })
    }

    /// `max |x|` over the elements that share each bit width (x's shape checked first); with
    /// data-parallel processes, over all of their data.
    fn absmax<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
    ) -> std::result::Result<Vec<B::C>, B::Error> {
        check_input(&self.layout.input_shape, &b.shape(x)?)?;
        Ok(crate::sync::max_over_processes(
            b.absmax(x, &self.layout.homogeneous)?,
        )?)
    }

    /// hgq2's `get_any_k`: whether any element of `x` that shares a bit width is negative (so
    /// the type needs a sign bit there), one value per bit width.
    pub fn any_k<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
    ) -> std::result::Result<Vec<bool>, B::Error> {
        check_input(&self.layout.input_shape, &b.shape(x)?)?;
        Ok(crate::sync::any_over_processes(
            b.any_negative(x, &self.layout.homogeneous)?,
        )?)
    }

    fn commit<B: Backend<Var = V>>(
        &mut self,
        b: &B,
        c: Commit<B::Bw>,
    ) -> std::result::Result<(), B::Error> {
        match c {
            Commit::Bits { i, k } => {
                b.assign(&mut self.var_mut(VarName::I).value, &i)?;
                if let Some(k) = k {
                    b.assign(&mut self.var_mut(VarName::K).value, &k)?;
                }
                self.pending = None;
            }
            Commit::Pending(m) => self.pending = Some(m),
        }
        Ok(())
    }

    /// Resets a WRAP quantizer before tracing (`i := -1e9`, `k := 0`), as hgq2's
    /// `trace_minmax` does; no-op for other quantizers.
    pub fn reset_trace<B: Backend<Var = V>>(&mut self, b: &B) -> std::result::Result<(), B::Error> {
        if !(self.wraps() && self.spec().trainable) {
            return Ok(());
        }
        let n = self.layout.bw_len();
        b.write(
            &mut self.var_mut(VarName::I).value,
            &vec![B::C::from_f64(-1e9); n],
        )?;
        b.write(&mut self.var_mut(VarName::K).value, &vec![B::C::ZERO; n])
    }

    /// `(k, i, f)` as used: `i = rc(i)`, `f = rc(f)` (KIF) or `rc(b) - rc(i)` (KBI).
    #[allow(clippy::type_complexity)]
    pub fn kif<B: BitWidthArith<Var = V>>(
        &self,
        b: &B,
    ) -> std::result::Result<(B::Bw, B::Bw, B::Bw), B::Error> {
        let a = Arith(b);
        let k = b.bw(self.var(VarName::K))?;
        let [p1, p2] = self.raw();
        let (r1, r2) = (b.bw_rc(p1)?, b.bw_rc(p2)?);
        Ok(match self.param() {
            Param::Kbi => {
                let f = a.sub(&r1, &r2)?;
                (k, r2, f)
            }
            Param::Kif => (k, r1, r2),
        })
    }

    /// `b` as used: KBI `rc(b)`, KIF `relu(i + f)`.
    pub fn b<B: BitWidthArith<Var = V>>(&self, b: &B) -> std::result::Result<B::Bw, B::Error> {
        let a = Arith(b);
        match self.param() {
            Param::Kbi => b.bw_rc(self.var(VarName::B)),
            Param::Kif => {
                let (_, i, f) = self.kif(b)?;
                a.relu(&a.add(&i, &f)?)
            }
        }
    }

    /// `bits`: `b + k` for SAT, else `b` (what EBOPs use), without the other properties.
    pub fn bits<B: BitWidthArith<Var = V>>(&self, b: &B) -> std::result::Result<B::Bw, B::Error> {
        let bb = self.b(b)?;
        if self.spec().overflow == OverflowMode::Sat {
            Arith(b).add(&bb, &b.bw(self.var(VarName::K))?)
        } else {
            Ok(bb)
        }
    }

    /// bits, fbits, min, max and epsilon of the current bit widths (bit-width shape).
    pub fn props<B: BitWidthArith<Var = V>>(
        &self,
        b: &B,
    ) -> std::result::Result<Props<B::Bw>, B::Error> {
        let a = Arith(b);
        let (k, i, f) = self.kif(b)?;
        let bb = self.b(b)?;
        let o = self.spec().overflow;
        let fbits = if o == OverflowMode::Wrap {
            a.add(&bb, &a.mul(&k, &a.positive(&bb)?)?)?
        } else {
            a.add(&bb, &k)?
        };
        let bits = if o == OverflowMode::Sat {
            a.add(&bb, &k)?
        } else {
            bb
        };
        let pi = a.exp2(&i)?;
        let pf = a.exp2(&a.mul_c(&f, -1.0)?)?;
        let max = a.sub(&pi, &pf)?;
        let min = if o.is_symmetric() {
            a.mul_c(&a.mul(&k, &max)?, -1.0)?
        } else {
            a.mul_c(&a.mul(&k, &pi)?, -1.0)?
        };
        Ok(Props {
            bits,
            fbits,
            min,
            max,
            epsilon: pf,
        })
    }
}

fn run<'a, B: Backend>(
    b: &B,
    x: &B::Tensor,
    pass: Pass<'a, B::Var, B::Bw>,
) -> std::result::Result<B::Tensor, B::Error> {
    b.fixed(&pass.q, x, pass.k, pass.p, pass.training)
}
