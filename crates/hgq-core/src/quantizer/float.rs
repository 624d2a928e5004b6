//! The minifloat layer quantizer (SPEC 8), written once over a [`Backend`].
use super::backend::{Arith, Backend, BitWidthArith, Operand};
use super::constraint::{Constraint, Regularizer};
use super::{Layout, Props, Store, VarInit, VarName, Variable, check_input, check_real};
use crate::mapper::Axes;
use crate::modes::CallMode;

/// `FloatPointQuantizer(m0, e0, e00, mc, ec, e0c, mr, er, e0r)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatSpec {
    /// Initial mantissa bits (sign excluded).
    pub m0: f64,
    /// Initial exponent bits (sign included).
    pub e0: f64,
    /// Initial exponent offset.
    pub e00: f64,
    /// Constraint of m (reference default `Min(-1)`).
    pub mc: Option<Constraint>,
    /// Constraint of e (reference default `NonNeg`).
    pub ec: Option<Constraint>,
    /// Constraint of e0.
    pub e0c: Option<Constraint>,
    /// Regularizer of m.
    pub mr: Option<Regularizer>,
    /// Regularizer of e.
    pub er: Option<Regularizer>,
    /// Regularizer of e0.
    pub e0r: Option<Regularizer>,
    /// Which axes share a bit width.
    pub axes: Axes,
    /// Whether the layer trains (Keras' `trainable`): if not, `m`, `e`, `e0` get no gradient.
    pub trainable: bool,
}

impl FloatSpec {
    /// Sets the axes that share a bit width.
    pub fn with_axes(mut self, axes: Axes) -> Self {
        self.axes = axes;
        self
    }

    /// A spec with the reference's defaults.
    pub fn new(m0: f64, e0: f64, e00: f64) -> Self {
        FloatSpec {
            m0,
            e0,
            e00,
            mc: Some(Constraint::Min(-1.0)),
            ec: Some(Constraint::NonNeg),
            e0c: None,
            mr: None,
            er: None,
            e0r: None,
            axes: Axes::Homogeneous(vec![]),
            trainable: true,
        }
    }
}

/// The minifloat quantizer: `m`, `e`, `e0` trainable, used rounded half to even.
#[derive(Debug)]
pub struct FloatQuantizer<V> {
    spec: FloatSpec,
    layout: Layout,
    vars: Vec<Variable<V>>,
}

impl<V> FloatQuantizer<V> {
    /// Validates `spec` and creates the variables `m`, `e`, `e0` for inputs of `input_shape`
    /// in `store`.
    pub fn new<S: Store<Var = V>>(
        store: &mut S,
        spec: FloatSpec,
        input_shape: &[Option<usize>],
    ) -> Result<Self, S::Error> {
        let layout = Layout::new(&spec.axes, input_shape)?;
        let s = &spec;
        let mut inits = Vec::new();
        for (name, v0, c, r) in [
            (VarName::M, s.m0, s.mc, s.mr),
            (VarName::E, s.e0, s.ec, s.er),
            (VarName::E0, s.e00, s.e0c, s.e0r),
        ] {
            check_real(name.as_str(), v0, |v| !v.is_nan(), "must be a number")?;
            super::check_constraint(name, c)?;
            super::check_regularizer(name, r)?;
            inits.push(VarInit::new(name, &layout.bw_shape, v0, s.trainable).rules(c, r));
        }
        let vars = super::make_vars(store, inits)?;
        Ok(FloatQuantizer { spec, layout, vars })
    }

    /// The spec.
    pub fn spec(&self) -> &FloatSpec {
        &self.spec
    }

    /// The input shape it was built for and the bit-width shape.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The variables `m`, `e`, `e0`.
    pub fn variables(&self) -> &[Variable<V>] {
        &self.vars
    }

    /// The variables, to set values.
    pub fn variables_mut(&mut self) -> &mut [Variable<V>] {
        &mut self.vars
    }

    /// Quantizes `x`; the same in every mode. Gradients: `dx = dy` and SPEC 8's surrogates for
    /// `m`, `e`, `e0` (zero where they are not finite, e.g. for infinite inputs).
    pub fn forward<B: Backend<Var = V>>(
        &self,
        b: &B,
        x: &B::Tensor,
        _mode: CallMode,
    ) -> Result<B::Tensor, B::Error> {
        check_input(&self.layout.input_shape, &b.shape(x)?)?;
        let [m, e, e0] = [&self.vars[0], &self.vars[1], &self.vars[2]];
        b.minifloat(x, [Operand::Var(m), Operand::Var(e), Operand::Var(e0)])
    }

    /// `(m, e, e0)` as used: `rc` of the raw values.
    #[allow(clippy::type_complexity)]
    pub fn mee0<B: BitWidthArith<Var = V>>(
        &self,
        b: &B,
    ) -> Result<(B::Bw, B::Bw, B::Bw), B::Error> {
        Ok((
            b.bw_rc(&self.vars[0])?,
            b.bw_rc(&self.vars[1])?,
            b.bw_rc(&self.vars[2])?,
        ))
    }

    /// `bits = m + e + 1`.
    pub fn bits<B: BitWidthArith<Var = V>>(&self, b: &B) -> Result<B::Bw, B::Error> {
        let a = Arith(b);
        let (m, e, _) = self.mee0(b)?;
        a.add_c(&a.add(&m, &e)?, 1.0)
    }

    /// bits, fbits, min, max and epsilon of the current bit widths.
    pub fn props<B: BitWidthArith<Var = V>>(&self, b: &B) -> Result<Props<B::Bw>, B::Error> {
        let a = Arith(b);
        let (m, e, e0) = self.mee0(b)?;
        let bits = a.add_c(&a.add(&m, &e)?, 1.0)?;
        let half = a.exp2(&a.add_c(&e, -1.0)?)?;
        let neg_m = a.mul_c(&m, -1.0)?;
        let p_neg_m = a.exp2(&neg_m)?;
        // 2^(half + e0 - 1) * (2 - 2^-m)
        let top = a.exp2(&a.add_c(&a.add(&half, &e0)?, -1.0)?)?;
        let max = a.mul(&top, &a.add_c(&a.mul_c(&p_neg_m, -1.0)?, 2.0)?)?;
        // 2^(-half + e0 + 1) * 2^-m
        let low = a.add_c(&a.add(&a.mul_c(&half, -1.0)?, &e0)?, 1.0)?;
        let epsilon = a.mul(&a.exp2(&low)?, &p_neg_m)?;
        Ok(Props {
            fbits: a.mul_c(&bits, 1.0)?,
            bits,
            min: a.mul_c(&max, -1.0)?,
            max,
            epsilon,
        })
    }
}
