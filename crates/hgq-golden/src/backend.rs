//! What runs the quantizers under test: hgq-core here ([`CoreBackend`]); hgq-torch implements
//! the same traits for its tensors and autograd (`hgq-torch`'s `golden` feature), so one
//! checker proves both.
use crate::Dtype;
use half::{bf16, f16};
use hgq_config::convert::QuantizerSpec;
use hgq_core::quantizer::{CpuQuantizer, Props};
use hgq_core::{CallMode, Element, FixedGrads, FixedPoint, Real, TensorRef};

/// The outputs of one `fixed_fn` case.
#[derive(Debug, Clone, Default)]
pub struct FixedFnOut {
    /// `Q(x, k, i, f)` from the pass that also computed the gradients.
    pub y: Vec<f32>,
    /// `Q(x, k, i, f)` from a forward-only pass, where the backend has one apart.
    pub y_forward: Option<Vec<f32>>,
    /// `d(sum(dy * y)) / dx`.
    pub dx: Vec<f32>,
    /// ... `/ di` (same shape as x).
    pub di: Vec<f32>,
    /// ... `/ df`.
    pub df: Vec<f32>,
}

/// The inputs of a `fixed_fn` case of any [`Dtype`]: every value one the dtype holds exactly,
/// as f64 (which holds every value of every dtype).
#[derive(Debug, Clone, Copy)]
pub struct TypedInputs<'a> {
    /// The element type of every input, the bit widths included.
    pub dtype: Dtype,
    /// The shape of every input.
    pub shape: &'a [usize],
    /// The input.
    pub x: &'a [f64],
    /// Sign bits.
    pub k: &'a [f64],
    /// Integer bits.
    pub i: &'a [f64],
    /// Fractional bits.
    pub f: &'a [f64],
    /// Training or inference.
    pub training: bool,
    /// The upstream gradient.
    pub dy: &'a [f64],
}

/// The outputs of a `fixed_fn` case of any [`Dtype`], as f64: `y` and `dx` values of the dtype;
/// `di` and `df` as the backend computed them (hgq-core: in float32 for float16 and bfloat16,
/// the bit widths' compute type; the checker rounds them to the dtype).
#[derive(Debug, Clone, Default)]
pub struct TypedOut {
    /// `Q(x, k, i, f)` from the pass that also computed the gradients.
    pub y: Vec<f64>,
    /// `Q(x, k, i, f)` from a forward-only pass, where the backend has one apart.
    pub y_forward: Option<Vec<f64>>,
    /// `d(sum(dy * y)) / dx`.
    pub dx: Vec<f64>,
    /// ... `/ di`.
    pub di: Vec<f64>,
    /// ... `/ df`.
    pub df: Vec<f64>,
}

/// A variable of a layer quantizer: name, shape and whether it trains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarInfo {
    /// Its name (`k`, `b`, `i`, `f`, `i_decay_speed`, `m`, `e`, `e0`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Whether an optimizer trains it.
    pub trainable: bool,
}

/// The outputs of one call of a layer quantizer.
#[derive(Debug, Clone, Default)]
pub struct LayerOut {
    /// The output.
    pub y: Vec<f32>,
    /// `d(sum(dy * y)) / dx` (training only).
    pub dx: Option<Vec<f32>>,
    /// The gradients of the trainable raw variables (training only).
    pub grads: Vec<(String, Vec<f32>)>,
}

/// A built layer quantizer under test.
pub trait LayerUnderTest {
    /// Its variables.
    fn variables(&self) -> Vec<VarInfo>;
    /// Sets a variable's values.
    fn set(&mut self, name: &str, values: &[f32]) -> Result<(), String>;
    /// A variable's values.
    fn get(&self, name: &str) -> Option<Vec<f32>>;
    /// bits, fbits, min, max, epsilon (bit-width shape).
    fn props(&self) -> Result<Props<Vec<f32>>, String>;
    /// One call with input `x` of `shape`; in training also the gradients for upstream `dy`.
    fn call(
        &mut self,
        x: &[f32],
        shape: &[usize],
        mode: CallMode,
        dy: &[f32],
    ) -> Result<LayerOut, String>;
}

/// Runs the `fixed_fn` and `layers` families.
pub trait Backend {
    /// Its name in reports (`core`, `torch`).
    fn name(&self) -> &'static str;
    /// One `fixed_fn` case: every input of `shape`.
    #[allow(clippy::too_many_arguments)]
    fn fixed_fn(
        &self,
        q: FixedPoint,
        shape: &[usize],
        x: &[f32],
        k: &[f32],
        i: &[f32],
        f: &[f32],
        training: bool,
        dy: &[f32],
    ) -> Result<FixedFnOut, String>;
    /// One `fixed_fn` case in its dtype (every input a tensor of `inputs.dtype`), or `None`
    /// when this backend does not run that dtype: the checker then counts the case as skipped
    /// and says so in its report. The default runs none.
    fn fixed_fn_typed(
        &self,
        q: FixedPoint,
        inputs: &TypedInputs<'_>,
    ) -> Result<Option<TypedOut>, String> {
        let _ = (q, inputs);
        Ok(None)
    }
    /// A layer quantizer of `spec` built for `input_shape`.
    fn layer(
        &self,
        spec: &QuantizerSpec,
        input_shape: &[usize],
    ) -> Result<Box<dyn LayerUnderTest>, String>;
}

/// hgq-core's kernels and layer quantizers.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreBackend;

fn t<'a>(d: &'a [f32], s: &'a [usize]) -> Result<TensorRef<'a, f32>, String> {
    TensorRef::new(d, s).map_err(|e| e.to_string())
}

impl Backend for CoreBackend {
    fn name(&self) -> &'static str {
        "core"
    }

    fn fixed_fn(
        &self,
        q: FixedPoint,
        s: &[usize],
        x: &[f32],
        k: &[f32],
        i: &[f32],
        f: &[f32],
        training: bool,
        dy: &[f32],
    ) -> Result<FixedFnOut, String> {
        let n = x.len();
        let mut o = FixedFnOut {
            y: vec![0.0; n],
            y_forward: Some(vec![0.0; n]),
            dx: vec![0.0; n],
            di: vec![0.0; n],
            df: vec![0.0; n],
        };
        q.forward_backward(
            t(x, s)?,
            t(k, s)?,
            t(i, s)?,
            t(f, s)?,
            training,
            dy,
            &mut o.y,
            FixedGrads {
                dx: &mut o.dx,
                di: &mut o.di,
                df: &mut o.df,
            },
        )
        .map_err(|e| e.to_string())?;
        let yf = o.y_forward.as_mut().expect("set above");
        q.forward(t(x, s)?, t(k, s)?, t(i, s)?, t(f, s)?, training, yf)
            .map_err(|e| e.to_string())?;
        Ok(o)
    }

    fn fixed_fn_typed(
        &self,
        q: FixedPoint,
        inputs: &TypedInputs<'_>,
    ) -> Result<Option<TypedOut>, String> {
        match inputs.dtype {
            Dtype::F32 => core_typed::<f32>(q, inputs),
            Dtype::F64 => core_typed::<f64>(q, inputs),
            Dtype::F16 => core_typed::<f16>(q, inputs),
            Dtype::Bf16 => core_typed::<bf16>(q, inputs),
        }
        .map(Some)
    }

    fn layer(
        &self,
        spec: &QuantizerSpec,
        input_shape: &[usize],
    ) -> Result<Box<dyn LayerUnderTest>, String> {
        if *spec == QuantizerSpec::Dummy {
            return Err("the layers family has no dummy quantizer".into());
        }
        let input: Vec<Option<usize>> = input_shape.iter().copied().map(Some).collect();
        let q = CpuQuantizer::<f32>::new(spec.clone(), &input).map_err(|e| e.to_string())?;
        Ok(Box::new(q))
    }
}

/// A value the element type `T` holds (checked by the caller), in `T`.
pub(crate) fn to_elem<T: Element>(v: f64) -> T {
    T::from_c(T::C::from_f64(v))
}

/// A value of `T`, exactly, as f64.
pub(crate) fn of_elem<T: Element>(v: T) -> f64 {
    v.to_c().to_f64()
}

/// hgq-core's `FixedPoint::forward_backward::<T>` and `forward::<T>` on a typed case.
pub(crate) fn core_typed<T: Element>(
    q: FixedPoint,
    a: &TypedInputs<'_>,
) -> Result<TypedOut, String> {
    let el = |v: &[f64]| v.iter().map(|&v| to_elem::<T>(v)).collect::<Vec<T>>();
    let c = |v: &[f64]| v.iter().map(|&v| T::C::from_f64(v)).collect::<Vec<T::C>>();
    let (x, dy, k, i, f) = (el(a.x), el(a.dy), c(a.k), c(a.i), c(a.f));
    let n = x.len();
    let (mut y, mut dx) = (vec![T::default(); n], vec![T::default(); n]);
    let (mut di, mut df) = (vec![T::C::ZERO; n], vec![T::C::ZERO; n]);
    let s = a.shape;
    let err = |e: hgq_core::CoreError| e.to_string();
    let (tx, tk, ti, tf) = (
        TensorRef::new(&x, s).map_err(err)?,
        TensorRef::new(&k, s).map_err(err)?,
        TensorRef::new(&i, s).map_err(err)?,
        TensorRef::new(&f, s).map_err(err)?,
    );
    q.forward_backward(
        tx,
        tk,
        ti,
        tf,
        a.training,
        &dy,
        &mut y,
        FixedGrads {
            dx: &mut dx,
            di: &mut di,
            df: &mut df,
        },
    )
    .map_err(err)?;
    let mut yf = vec![T::default(); n];
    q.forward(tx, tk, ti, tf, a.training, &mut yf)
        .map_err(err)?;
    let wide = |v: &[T]| v.iter().map(|&v| of_elem(v)).collect();
    let wide_c = |v: &[T::C]| v.iter().map(|&v| v.to_f64()).collect();
    Ok(TypedOut {
        y: wide(&y),
        y_forward: Some(wide(&yf)),
        dx: wide(&dx),
        di: wide_c(&di),
        df: wide_c(&df),
    })
}

impl LayerUnderTest for CpuQuantizer<f32> {
    fn variables(&self) -> Vec<VarInfo> {
        CpuQuantizer::variables(self)
            .iter()
            .map(|v| VarInfo {
                name: v.name.as_str().to_string(),
                shape: v.shape.clone(),
                trainable: v.trainable,
            })
            .collect()
    }

    fn set(&mut self, name: &str, values: &[f32]) -> Result<(), String> {
        let v = self
            .variables_mut()
            .iter_mut()
            .find(|v| v.name.as_str() == name)
            .ok_or_else(|| format!("no variable {name:?}"))?;
        if v.value.len() != values.len() {
            return Err(format!(
                "variable {name}: {} values, got {}",
                v.value.len(),
                values.len()
            ));
        }
        v.value.copy_from_slice(values);
        Ok(())
    }

    fn get(&self, name: &str) -> Option<Vec<f32>> {
        CpuQuantizer::variables(self)
            .iter()
            .find(|v| v.name.as_str() == name)
            .map(|v| v.value.clone())
    }

    fn props(&self) -> Result<Props<Vec<f32>>, String> {
        CpuQuantizer::props(self).map_err(|e| e.to_string())
    }

    fn call(
        &mut self,
        x: &[f32],
        shape: &[usize],
        mode: CallMode,
        dy: &[f32],
    ) -> Result<LayerOut, String> {
        let xt = t(x, shape)?;
        let mut y = vec![0.0f32; x.len()];
        if mode == CallMode::Training {
            let mut dx = vec![0.0f32; x.len()];
            let g = self
                .forward_backward(xt, dy, &mut y, &mut dx)
                .map_err(|e| e.to_string())?;
            Ok(LayerOut {
                y,
                dx: Some(dx),
                grads: g
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.to_vec()))
                    .collect(),
            })
        } else {
            self.forward(xt, mode, &mut y).map_err(|e| e.to_string())?;
            Ok(LayerOut {
                y,
                dx: None,
                grads: Vec::new(),
            })
        }
    }
}
