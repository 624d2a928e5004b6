//! The fixed-point layer quantizers KBI and KIF (SPEC 4).
use super::{
    Constraint, Grads, Props, Quantizer, Regularizer, VarDtype, Variable, check_input, check_k, rc,
    rc1, widen,
};
use crate::error::{CoreError, Result};
use crate::mapper::{Axes, BitwidthMapper, DefaultBitwidthMapper};
use crate::minimal_i;
use crate::modes::{CallMode, OverflowMode, RoundMode, check_modes};
use crate::real::{Element, Real};
use crate::shape::{TensorRef, check_len};
use crate::stateless::{FixedGrads, FixedPoint, Stochastic};

/// What KBI and KIF share: modes, WRAP tracking, mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedSpec {
    /// Rounding mode.
    pub round: RoundMode,
    /// Overflow mode.
    pub overflow: OverflowMode,
    /// How fast the integer bits of a WRAP quantizer decay per training step (`inf`: they
    /// follow each batch; the reference's default for weights).
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

/// Which parametrization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Kbi,
    Kif,
}

/// The state both parametrizations share.
#[derive(Debug, Clone)]
struct Base<C> {
    param: Param,
    spec: FixedSpec,
    mapper: DefaultBitwidthMapper,
    built: Option<Vec<Option<usize>>>,
    bw_shape: Vec<usize>,
    vars: Vec<Variable<C>>,
}

// Variable slots: k, then (b, i) for KBI or (i, f) for KIF, then i_decay_speed for WRAP.
const K: usize = 0;

impl<C: Real> Base<C> {
    fn new(param: Param, spec: FixedSpec) -> Result<Self> {
        check_modes(spec.round, spec.overflow)?;
        Ok(Base {
            param,
            mapper: DefaultBitwidthMapper::new(spec.axes.clone()),
            spec,
            built: None,
            bw_shape: Vec::new(),
            vars: Vec::new(),
        })
    }

    fn wrap(&self) -> bool {
        self.spec.overflow == OverflowMode::Wrap
    }

    fn slot(&self, name: &str) -> usize {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .expect("built variable")
    }

    fn var(&self, name: &str) -> &[C] {
        &self.vars[self.slot(name)].value
    }

    /// (k, i, f) as used: rounded raw values.
    fn kif(&self) -> (Vec<C>, Vec<C>, Vec<C>) {
        let k = self.vars[K].value.clone();
        match self.param {
            Param::Kbi => {
                let b = rc(self.var("b"));
                let i = rc(self.var("i"));
                let f = b.iter().zip(&i).map(|(&b, &i)| b - i).collect();
                (k, i, f)
            }
            Param::Kif => (k, rc(self.var("i")), rc(self.var("f"))),
        }
    }

    /// b as used: KBI `rc(b)`, KIF `relu(i + f)`.
    fn b(&self) -> Vec<C> {
        match self.param {
            Param::Kbi => rc(self.var("b")),
            Param::Kif => {
                let (_, i, f) = self.kif();
                i.iter()
                    .zip(&f)
                    .map(|(&i, &f)| (i + f).maximum(C::ZERO))
                    .collect()
            }
        }
    }

    /// The noise of a call: S_ modes in training with seeded stochastic rounding, keyed by the
    /// seed and the step counter kept in `seed_generator_state` (so a saved and reloaded
    /// quantizer continues the same sequence).
    fn noise(&self, mode: CallMode) -> Stochastic {
        match (self.spec.stochastic, mode, self.seed_slot()) {
            (Stochastic::Seeded(s), CallMode::Training, Some(slot)) => {
                let step = self.vars[slot].value[1].to_f64() as u64;
                Stochastic::Seeded(crate::ops::uniform_seed(s, step))
            }
            _ => Stochastic::Reference,
        }
    }

    fn seed_slot(&self) -> Option<usize> {
        self.vars
            .iter()
            .position(|v| v.name == "seed_generator_state")
    }

    /// The full quantizer `Q` (zeroing where `k + i + f <= 0` outside training).
    fn q(&self, mode: CallMode) -> Result<FixedPoint> {
        Ok(FixedPoint::new(self.spec.round, self.spec.overflow)?
            .with_stochastic(self.noise(mode))
            .with_zero_mask(true))
    }

    /// Rounding only (WRAP without saturation).
    fn round_only(&self, mode: CallMode) -> Result<FixedPoint> {
        Ok(FixedPoint::new(self.spec.round, OverflowMode::Wrap)?.with_stochastic(self.noise(mode)))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        input_shape: &[Option<usize>],
        kbi_b0: f64,
        i0: f64,
        f0: f64,
        spec_c: [Option<Constraint>; 2],
        spec_r: [Option<Regularizer>; 2],
        k0: f64,
    ) -> Result<()> {
        let bw = self.mapper.bw_shape(input_shape)?;
        let mut k = Variable::new("k", &bw, k0, false);
        k.dtype = VarDtype::U8;
        let i_trainable = !self.wrap();
        let mut vars = vec![k];
        match self.param {
            Param::Kbi => {
                let mut b = Variable::new("b", &bw, kbi_b0, true);
                b.constraint = spec_c[0];
                b.regularizer = spec_r[0];
                let mut i = Variable::new("i", &bw, i0, i_trainable);
                i.constraint = spec_c[1];
                i.regularizer = spec_r[1];
                vars.push(b);
                vars.push(i);
            }
            Param::Kif => {
                let mut i = Variable::new("i", &bw, i0, i_trainable);
                i.constraint = spec_c[0];
                i.regularizer = spec_r[0];
                let mut f = Variable::new("f", &bw, f0, true);
                f.constraint = spec_c[1];
                f.regularizer = spec_r[1];
                vars.push(i);
                vars.push(f);
            }
        }
        if self.wrap() {
            vars.push(Variable::new(
                "i_decay_speed",
                &[],
                self.spec.i_decay_speed,
                false,
            ));
        }
        if self.spec.round.is_stochastic() {
            // The reference keeps a Keras SeedGenerator here: [seed, counter].
            let mut g = Variable::new("seed_generator_state", &[2], 0.0, false);
            g.dtype = VarDtype::I32;
            if let Stochastic::Seeded(s) = self.spec.stochastic {
                g.value[0] = C::from_f64(s as f64);
            }
            vars.push(g);
        }
        self.vars = vars;
        self.bw_shape = bw;
        self.built = Some(input_shape.to_vec());
        Ok(())
    }

    /// WRAP tracking reads max |x|; non-finite values would poison the integer bits.
    fn check_finite<T: Element<C = C>>(x: &[T]) -> Result<()> {
        if let Some(v) = x.iter().map(|v| v.to_c()).find(|v| !v.to_f64().is_finite()) {
            return Err(CoreError::InvalidParameter {
                name: "x",
                value: v.to_f64(),
                why: "a WRAP quantizer tracking its integer bits needs finite inputs",
            });
        }
        Ok(())
    }

    fn i_constraint(&self) -> Option<Constraint> {
        self.vars[self.slot("i")].constraint
    }

    fn decay(&self) -> C {
        self.var("i_decay_speed")[0]
    }

    fn call<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<Grads<C>> {
        check_input(&self.built, x.shape)?;
        check_len("y", y.len(), x.shape)?;
        let train = mode == CallMode::Training;
        let result = if self.wrap() && self.spec.trainable {
            match (self.param, mode) {
                (_, CallMode::Training) | (_, CallMode::Tracing) => {
                    Self::check_finite(x.data)?;
                    self.wrap_track(x, mode, dy, y, dx)
                }
                (Param::Kbi, CallMode::Inference)
                    if self.spec.is_weight && self.spec.round.deterministic() == RoundMode::Rnd =>
                {
                    let (k, i, f) = self.kif();
                    self.run(self.round_only(mode)?, x, (&k, &i, &f), true, None, y, None)
                }
                (Param::Kif, CallMode::Inference) if self.spec.is_weight => {
                    let (k, i, f) = self.kif();
                    self.run(self.round_only(mode)?, x, (&k, &i, &f), true, None, y, None)
                }
                _ => self.generic(x, mode, dy, y, dx),
            }
        } else {
            self.generic(x, mode, dy, y, dx)
        };
        if let (true, Stochastic::Seeded(_), Some(slot)) =
            (train, self.spec.stochastic, self.seed_slot())
        {
            let v = &mut self.vars[slot].value[1];
            *v = *v + C::ONE;
        }
        result
    }

    /// `Q(x, k, i, f)` with the gradients mapped to the raw variables.
    fn generic<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<Grads<C>> {
        let (k, i, f) = self.kif();
        let train = mode == CallMode::Training;
        let (gi, gf) = self.run_grads(self.q(mode)?, x, (&k, &i, &f), train, dy, y, dx)?;
        Ok(self.map_grads(gi, gf))
    }

    /// Maps d/di and d/df of `Q` to the trainable raw variables.
    fn map_grads(&self, gi: Option<Vec<C>>, gf: Option<Vec<C>>) -> Grads<C> {
        let (Some(gi), Some(gf)) = (gi, gf) else {
            return Grads::default();
        };
        if !self.spec.trainable {
            return Grads::default();
        }
        let i_trainable = self.vars[self.slot("i")].trainable;
        let mut vars = Vec::new();
        match self.param {
            Param::Kbi => {
                // f = b - i: b gets d/df, i gets d/di - d/df.
                vars.push(("b", gf.clone()));
                if i_trainable {
                    vars.push(("i", gi.iter().zip(&gf).map(|(&a, &b)| a - b).collect()));
                }
            }
            Param::Kif => {
                if i_trainable {
                    vars.push(("i", gi));
                }
                vars.push(("f", gf));
            }
        }
        Grads { vars }
    }

    #[allow(clippy::too_many_arguments)]
    fn run<T: Element<C = C>>(
        &self,
        q: FixedPoint,
        x: TensorRef<'_, T>,
        kif: (&[C], &[C], &[C]),
        training: bool,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<Grads<C>> {
        let (gi, gf) = self.run_grads(q, x, kif, training, dy, y, dx)?;
        Ok(self.map_grads(gi, gf))
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn run_grads<T: Element<C = C>>(
        &self,
        q: FixedPoint,
        x: TensorRef<'_, T>,
        (k, i, f): (&[C], &[C], &[C]),
        training: bool,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<(Option<Vec<C>>, Option<Vec<C>>)> {
        let s = &self.bw_shape;
        let (k, i, f) = (
            TensorRef::new(k, s)?,
            TensorRef::new(i, s)?,
            TensorRef::new(f, s)?,
        );
        match (dy, dx) {
            (Some(dy), Some(dx)) => {
                let n = self.bw_shape.iter().product();
                let (mut gi, mut gf) = (vec![C::ZERO; n], vec![C::ZERO; n]);
                q.forward_backward(
                    x,
                    k,
                    i,
                    f,
                    training,
                    dy,
                    y,
                    FixedGrads {
                        dx,
                        di: &mut gi,
                        df: &mut gf,
                    },
                )?;
                Ok((Some(gi), Some(gf)))
            }
            _ => {
                q.forward(x, k, i, f, training, y)?;
                Ok((None, None))
            }
        }
    }

    /// Training and tracing of a trainable WRAP quantizer: update `i` (and `k` when tracing)
    /// from the data, return the rounded input.
    fn wrap_track<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        mode: CallMode,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<Grads<C>> {
        let sym = self.spec.overflow.is_symmetric();
        let train = mode == CallMode::Training;
        let islot = self.slot("i");
        let i_raw = self.vars[islot].value.clone();
        let ic = self.i_constraint();
        let (k, _, _) = self.kif();
        match self.param {
            Param::Kbi => {
                let b = self.b();
                let xc = widen(x.data);
                let (absmax, _) = self.mapper.absmax(TensorRef::new(&xc, x.shape)?)?;
                let mi: Vec<C> = absmax
                    .iter()
                    .zip(&b)
                    .map(|(&a, &b)| minimal_i::xb(a, b, sym))
                    .collect();
                let new_i: Vec<C> = if train {
                    let d = self.decay();
                    i_raw
                        .iter()
                        .zip(&mi)
                        .map(|(&r, &m)| {
                            ic.map_or((r - d).maximum(m), |c| c.one((r - d).maximum(m)))
                        })
                        .collect()
                } else {
                    i_raw
                        .iter()
                        .zip(&mi)
                        .map(|(&r, &m)| {
                            let v = rc1(r).maximum(m);
                            ic.map_or(v, |c| c.one(v))
                        })
                        .collect()
                };
                // f = b - rc(i_new) in training; b - i_new when tracing (as the reference).
                let f: Vec<C> = if train {
                    b.iter().zip(&new_i).map(|(&b, &i)| b - rc1(i)).collect()
                } else {
                    b.iter().zip(&new_i).map(|(&b, &i)| b - i).collect()
                };
                let i_used: Vec<C> = new_i.iter().map(|v| rc1(*v)).collect();
                let out = self.run_grads(
                    self.round_only(mode)?,
                    x,
                    (&k, &i_used, &f),
                    true,
                    dy,
                    y,
                    dx,
                )?;
                if !train {
                    let b = self.b();
                    let yc = widen(y);
                    let (neg, _) = self.mapper.any_negative(TensorRef::new(&yc, x.shape)?)?;
                    let kv = &mut self.vars[K].value;
                    for ((kv, n), b) in kv.iter_mut().zip(neg).zip(&b) {
                        if n && *b > C::ZERO {
                            *kv = C::ONE;
                        }
                    }
                }
                self.vars[islot].value = new_i;
                Ok(self.map_grads(out.0, out.1))
            }
            Param::Kif => {
                let f = rc(self.var("f"));
                let i_now = rc(&i_raw);
                let out =
                    self.run_grads(self.round_only(mode)?, x, (&k, &i_now, &f), true, dy, y, dx)?;
                let yc = widen(y);
                let (absmax, _) = self.mapper.absmax(TensorRef::new(&yc, x.shape)?)?;
                let mi: Vec<C> = absmax
                    .iter()
                    .zip(&f)
                    .map(|(&a, &f)| minimal_i::xf(a, f, sym))
                    .collect();
                let new_i: Vec<C> = if train {
                    // The reference applies no constraint here.
                    let d = self.decay();
                    i_raw
                        .iter()
                        .zip(&mi)
                        .map(|(&r, &m)| (r - d).maximum(m))
                        .collect()
                } else {
                    let (neg, _) = self.mapper.any_negative(TensorRef::new(&yc, x.shape)?)?;
                    for (kv, n) in self.vars[K].value.iter_mut().zip(neg) {
                        if n {
                            *kv = C::ONE;
                        }
                    }
                    i_raw
                        .iter()
                        .zip(&mi)
                        .map(|(&r, &m)| rc1(r).maximum(ic.map_or(m, |c| c.one(m))))
                        .collect()
                };
                self.vars[islot].value = new_i;
                Ok(self.map_grads(out.0, out.1))
            }
        }
    }

    fn props(&self) -> Result<Props<C>> {
        if self.built.is_none() {
            return Err(CoreError::NotBuilt);
        }
        let (k, i, f) = self.kif();
        let b = self.b();
        let o = self.spec.overflow;
        let n = k.len();
        let mut p = Props {
            bits: vec![],
            fbits: vec![],
            min: vec![],
            max: vec![],
            epsilon: vec![],
        };
        for j in 0..n {
            let (k, i, f, b) = (k[j], i[j], f[j], b[j]);
            p.bits.push(if o == OverflowMode::Sat { b + k } else { b });
            p.fbits.push(if o == OverflowMode::Wrap {
                b + k * if b > C::ZERO { C::ONE } else { C::ZERO }
            } else {
                b + k
            });
            let (pi, pf) = (i.exp2(), (-f).exp2());
            p.min.push(if o.is_symmetric() {
                -k * (pi - pf)
            } else {
                -k * pi
            });
            p.max.push(pi - pf);
            p.epsilon.push(pf);
        }
        Ok(p)
    }
}

macro_rules! fixed_quantizer {
    ($name:ident, $spec:ident, $param:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name<C> {
            spec: $spec,
            base: Base<C>,
        }

        impl<C: Real> $name<C> {
            /// The spec (initial values, constraints, modes).
            pub fn spec(&self) -> &$spec {
                &self.spec
            }

            /// The bit-width shape (after `build`).
            pub fn bw_shape(&self) -> &[usize] {
                &self.base.bw_shape
            }

            /// `(k, i, f)` as used, each in the bit-width shape.
            pub fn kif(&self) -> (Vec<C>, Vec<C>, Vec<C>) {
                self.base.kif()
            }

            /// Resets a WRAP quantizer before tracing (`i := -1e9`, `k := 0`), as hgq2's
            /// `trace_minmax` does.
            pub fn reset_trace(&mut self) {
                if self.base.wrap() && self.base.spec.trainable && self.base.built.is_some() {
                    let is = self.base.slot("i");
                    self.base.vars[is].value.fill(C::from_f64(-1e9));
                    self.base.vars[K].value.fill(C::ZERO);
                }
            }
        }

        impl<C: Real> Quantizer<C> for $name<C> {
            fn build(&mut self, input_shape: &[Option<usize>]) -> Result<()> {
                self.build_vars(input_shape)
            }
            fn variables(&self) -> &[Variable<C>] {
                &self.base.vars
            }
            fn variables_mut(&mut self) -> &mut [Variable<C>] {
                &mut self.base.vars
            }
            fn forward<T: Element<C = C>>(
                &mut self,
                x: TensorRef<'_, T>,
                mode: CallMode,
                y: &mut [T],
            ) -> Result<()> {
                self.base.call(x, mode, None, y, None).map(|_| ())
            }
            fn forward_backward<T: Element<C = C>>(
                &mut self,
                x: TensorRef<'_, T>,
                dy: &[T],
                y: &mut [T],
                dx: &mut [T],
            ) -> Result<Grads<C>> {
                check_len("dy", dy.len(), x.shape)?;
                check_len("dx", dx.len(), x.shape)?;
                self.base.call(x, CallMode::Training, Some(dy), y, Some(dx))
            }
            fn props(&self) -> Result<Props<C>> {
                self.base.props()
            }
        }
    };
}

fixed_quantizer!(
    FixedPointQuantizerKBI,
    KbiSpec,
    Param::Kbi,
    "Fixed point parametrized by keep-negative, bits and integer bits (`f = b - i`)."
);
fixed_quantizer!(
    FixedPointQuantizerKIF,
    KifSpec,
    Param::Kif,
    "Fixed point parametrized by keep-negative, integer and fractional bits (`b = relu(i + f)`)."
);

impl<C: Real> FixedPointQuantizerKBI<C> {
    /// Validates the spec (k0 in {0, 1}, b0 >= 0, modes compatible).
    pub fn new(spec: KbiSpec) -> Result<Self> {
        check_k(spec.k0)?;
        if spec.b0.is_nan() || spec.b0 < 0.0 {
            return Err(CoreError::InvalidParameter {
                name: "b0",
                value: spec.b0,
                why: "must be non-negative",
            });
        }
        let base = Base::new(Param::Kbi, spec.fixed.clone())?;
        Ok(FixedPointQuantizerKBI { spec, base })
    }

    fn build_vars(&mut self, input_shape: &[Option<usize>]) -> Result<()> {
        let s = &self.spec;
        self.base.build(
            input_shape,
            s.b0,
            s.i0,
            0.0,
            [s.bc, s.ic],
            [s.br, s.ir],
            s.k0,
        )
    }
}

impl<C: Real> FixedPointQuantizerKIF<C> {
    /// Validates the spec (k0 in {0, 1}, i0 + f0 >= 0, modes compatible).
    pub fn new(spec: KifSpec) -> Result<Self> {
        check_k(spec.k0)?;
        if (spec.i0 + spec.f0).is_nan() || spec.i0 + spec.f0 < 0.0 {
            return Err(CoreError::InvalidParameter {
                name: "i0+f0",
                value: spec.i0 + spec.f0,
                why: "must be non-negative",
            });
        }
        let base = Base::new(Param::Kif, spec.fixed.clone())?;
        Ok(FixedPointQuantizerKIF { spec, base })
    }

    fn build_vars(&mut self, input_shape: &[Option<usize>]) -> Result<()> {
        let s = &self.spec;
        self.base.build(
            input_shape,
            0.0,
            s.i0,
            s.f0,
            [s.ic, s.fc],
            [s.ir, s.fr],
            s.k0,
        )
    }
}
