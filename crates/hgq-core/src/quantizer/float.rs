//! The minifloat layer quantizer (SPEC 8).
use super::{Constraint, Grads, Props, Quantizer, Regularizer, Variable, check_input, rc};
use crate::error::{CoreError, Result};
use crate::kernels::{Path, Upstream};
use crate::mapper::{Axes, BitwidthMapper, DefaultBitwidthMapper};
use crate::modes::CallMode;
use crate::real::{Element, Real};
use crate::shape::{TensorRef, check_len};
use crate::stateless::minifloat_call;

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
        }
    }
}

/// The minifloat quantizer: `m`, `e`, `e0` trainable, used rounded half to even.
#[derive(Debug, Clone)]
pub struct FloatPointQuantizer<C> {
    spec: FloatSpec,
    mapper: DefaultBitwidthMapper,
    built: Option<Vec<Option<usize>>>,
    bw_shape: Vec<usize>,
    vars: Vec<Variable<C>>,
}

impl<C: Real> FloatPointQuantizer<C> {
    /// A quantizer for the spec.
    pub fn new(spec: FloatSpec) -> Result<Self> {
        Ok(FloatPointQuantizer {
            mapper: DefaultBitwidthMapper::new(spec.axes.clone()),
            spec,
            built: None,
            bw_shape: Vec::new(),
            vars: Vec::new(),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &FloatSpec {
        &self.spec
    }

    /// `(m, e, e0)` as used.
    pub fn mee0(&self) -> (Vec<C>, Vec<C>, Vec<C>) {
        (
            rc(&self.vars[0].value),
            rc(&self.vars[1].value),
            rc(&self.vars[2].value),
        )
    }

    #[allow(clippy::type_complexity)]
    fn call<T: Element<C = C>>(
        &self,
        x: TensorRef<'_, T>,
        dy: Option<&[T]>,
        y: &mut [T],
        dx: Option<&mut [T]>,
    ) -> Result<Grads<C>> {
        check_input(&self.built, x.shape)?;
        let (m, e, e0) = self.mee0();
        let s = &self.bw_shape;
        let p = [
            TensorRef::new(&m, s)?,
            TensorRef::new(&e, s)?,
            TensorRef::new(&e0, s)?,
        ];
        match (dy, dx) {
            (Some(dy), Some(dx)) => {
                let n = m.len();
                let (mut gm, mut ge, mut ge0) =
                    (vec![C::ZERO; n], vec![C::ZERO; n], vec![C::ZERO; n]);
                minifloat_call(
                    x,
                    p,
                    Some(Upstream::Each(dy)),
                    Some(y),
                    Some((dx, [&mut gm, &mut ge, &mut ge0])),
                    Path::Simd,
                )?;
                Ok(Grads {
                    vars: vec![("m", gm), ("e", ge), ("e0", ge0)],
                })
            }
            _ => {
                minifloat_call(x, p, None, Some(y), None, Path::Simd)?;
                Ok(Grads::default())
            }
        }
    }
}

impl<C: Real> Quantizer<C> for FloatPointQuantizer<C> {
    fn build(&mut self, input_shape: &[Option<usize>]) -> Result<()> {
        let bw = self.mapper.bw_shape(input_shape)?;
        let s = &self.spec;
        let mk = |name, init, c, r| {
            let mut v = Variable::new(name, &bw, init, true);
            v.constraint = c;
            v.regularizer = r;
            v
        };
        self.vars = vec![
            mk("m", s.m0, s.mc, s.mr),
            mk("e", s.e0, s.ec, s.er),
            mk("e0", s.e00, s.e0c, s.e0r),
        ];
        self.bw_shape = bw;
        self.built = Some(input_shape.to_vec());
        Ok(())
    }
    fn variables(&self) -> &[Variable<C>] {
        &self.vars
    }
    fn variables_mut(&mut self) -> &mut [Variable<C>] {
        &mut self.vars
    }
    fn forward<T: Element<C = C>>(
        &mut self,
        x: TensorRef<'_, T>,
        _mode: CallMode,
        y: &mut [T],
    ) -> Result<()> {
        self.call(x, None, y, None).map(|_| ())
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
        self.call(x, Some(dy), y, Some(dx))
    }
    fn props(&self) -> Result<Props<C>> {
        if self.built.is_none() {
            return Err(CoreError::NotBuilt);
        }
        let (m, e, e0) = self.mee0();
        let two = C::ONE + C::ONE;
        let mut p = Props {
            bits: vec![],
            fbits: vec![],
            min: vec![],
            max: vec![],
            epsilon: vec![],
        };
        for j in 0..m.len() {
            let (m, e, e0) = (m[j], e[j], e0[j]);
            let bits = m + e + C::ONE;
            let h = (e - C::ONE).exp2();
            let max = (h + e0 - C::ONE).exp2() * (two - (-m).exp2());
            p.bits.push(bits);
            p.fbits.push(bits);
            p.max.push(max);
            p.min.push(-max);
            p.epsilon.push((-h + e0 + C::ONE).exp2() * (-m).exp2());
        }
        Ok(p)
    }
}
