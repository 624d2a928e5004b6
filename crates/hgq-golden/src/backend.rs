//! What runs the quantizers under test: hgq-core here ([`CoreBackend`]); hgq-torch implements
//! the same traits for its tensors and autograd (`hgq-torch`'s `golden` feature), so one
//! checker proves both.
use hgq_config::convert::QuantizerSpec;
use hgq_core::quantizer::{CpuQuantizer, Props};
use hgq_core::{CallMode, FixedGrads, FixedPoint, TensorRef};

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
