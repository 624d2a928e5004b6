//! The identity quantizer (SPEC 9).
use super::backend::{Backend, BitWidthArith};
use super::{Props, check_input};
use crate::modes::CallMode;
use crate::real::Real;

/// Passes values through: `bits = 0`, `min/max = -/+1e9`, `epsilon = 1e-7` (Keras' epsilon), as
/// scalars.
///
/// ```
/// use hgq_core::quantizer::{CpuQuantizer, DummyQuantizer, QuantizerSpec};
/// use hgq_core::{CallMode, TensorRef};
/// let mut q = CpuQuantizer::<f32>::new(QuantizerSpec::Dummy, &[None, Some(2)])?;
/// let x = [0.3f32, -7.25];
/// let mut y = [0.0f32; 2];
/// q.forward(TensorRef::new(&x, &[1, 2])?, CallMode::Inference, &mut y)?;
/// assert_eq!(y, x);
/// assert_eq!(q.props()?.max, [1e9]);
/// # Ok::<(), hgq_core::CoreError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DummyQuantizer {
    input_shape: Vec<Option<usize>>,
    /// Report the float16 range (+-3e4) as the reference does for a float16 dtype policy.
    pub float16: bool,
}

impl DummyQuantizer {
    /// A dummy quantizer for inputs of `input_shape`.
    pub fn new(input_shape: &[Option<usize>]) -> Self {
        DummyQuantizer {
            input_shape: input_shape.to_vec(),
            float16: false,
        }
    }

    /// The input shape it was built for.
    pub fn input_shape(&self) -> &[Option<usize>] {
        &self.input_shape
    }

    /// `x` itself, in every mode (the gradient passes straight through).
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        x: &B::Tensor,
        _mode: CallMode,
    ) -> Result<B::Tensor, B::Error> {
        check_input(&self.input_shape, &b.shape(x)?)?;
        b.identity(x)
    }

    /// `bits = 0`.
    pub fn bits<B: BitWidthArith>(&self, b: &B) -> Result<B::Bw, B::Error> {
        b.bw_const(0.0, &[])
    }

    /// The reference's properties, as scalars.
    pub fn props<B: BitWidthArith>(&self, b: &B) -> Result<Props<B::Bw>, B::Error> {
        let big = if self.float16 { 3e4 } else { 1e9 };
        Ok(Props {
            bits: b.bw_const(0.0, &[])?,
            fbits: b.bw_const(0.0, &[])?,
            min: b.bw_const(-big, &[])?,
            max: b.bw_const(big, &[])?,
            epsilon: b.bw_const(<B::C as Real>::EPS_K.to_f64(), &[])?,
        })
    }
}
