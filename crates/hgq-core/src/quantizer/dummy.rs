//! The identity quantizer (SPEC 9).
use super::{Grads, Props, Quantizer, Variable};
use crate::error::{CoreError, Result};
use crate::modes::CallMode;
use crate::real::{Element, Real};
use crate::shape::{TensorRef, check_len};

/// Passes values through: `bits = 0`, `min/max = -/+1e9`, `epsilon = 1e-7`.
#[derive(Debug, Clone, Default)]
pub struct DummyQuantizer<C> {
    vars: Vec<Variable<C>>,
    /// Report the float16 range (+-3e4) as the reference does for a float16 dtype policy.
    pub float16: bool,
}

impl<C: Real> DummyQuantizer<C> {
    /// A dummy quantizer.
    pub fn new() -> Self {
        DummyQuantizer {
            vars: Vec::new(),
            float16: false,
        }
    }
}

impl<C: Real> Quantizer<C> for DummyQuantizer<C> {
    fn build(&mut self, _input_shape: &[Option<usize>]) -> Result<()> {
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
        check_len("y", y.len(), x.shape)?;
        y.copy_from_slice(x.data);
        Ok(())
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
        if y.len() != x.data.len() {
            return Err(CoreError::Length {
                what: "y",
                len: y.len(),
                shape: x.shape.to_vec(),
                expected: x.data.len(),
            });
        }
        y.copy_from_slice(x.data);
        dx.copy_from_slice(dy);
        Ok(Grads::default())
    }
    fn props(&self) -> Result<Props<C>> {
        let big = C::from_f64(if self.float16 { 3e4 } else { 1e9 });
        Ok(Props {
            bits: vec![C::ZERO],
            fbits: vec![C::ZERO],
            min: vec![-big],
            max: vec![big],
            epsilon: vec![C::EPS_K],
        })
    }
}
